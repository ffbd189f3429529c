//! What the product service does with other services' events: an order's fate settles
//! its reservation (paid: the units are sold; cancelled or expired: they go back on sale).

use common::contracts::EventType;
use common::events::{Envelope, EventHandler};
use futures::future::BoxFuture;
use sqlx::PgConnection;

use crate::domain::Product;
use crate::domain::ReservationEvent;
use crate::repository;
use crate::steps::cache::{CatalogCache, Change};

pub struct OrderEvents {
    pub catalog: CatalogCache,
    pub db: sqlx::PgPool,
}

fn reservation_event(event_type: &str) -> Option<ReservationEvent> {
    match EventType::parse(event_type)? {
        EventType::OrderPaid => Some(ReservationEvent::Paid),
        EventType::OrderCancelled | EventType::OrderExpired => Some(ReservationEvent::Ended),
        _ => None,
    }
}

impl EventHandler for OrderEvents {
    fn wants(&self, event_type: &str) -> bool {
        reservation_event(event_type).is_some()
    }

    fn handle<'a>(&'a self, tx: &'a mut PgConnection, event: &'a Envelope) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            if let Some(what) = reservation_event(&event.event_type) {
                repository::settle_reservation(tx, event.aggregate_id, what).await?;
            }
            Ok(())
        })
    }

    fn after_commit<'a>(&'a self, event: &'a Envelope) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if reservation_event(&event.event_type) == Some(ReservationEvent::Ended) {
                match repository::reservation_products(&self.db, event.aggregate_id).await {
                    Ok(products) => {
                        // Units came back: a product may be listed as in stock again.
                        let products: Vec<(Product, Change)> = products
                            .into_iter()
                            .map(|(product, deleted)| (product, if deleted { Change::Deleted } else { Change::Listed }))
                            .collect();
                        self.catalog.written(&products).await;
                    }
                    Err(err) => tracing::warn!(error = %err, "could not refresh restocked products in the cache"),
                }
            }
        })
    }
}
