//! What the payment service does with the order service's events: an order that is
//! cancelled or expires is closed here, and whatever was captured for it is refunded in
//! full (once: the inbox makes redeliveries no-ops, and a refund never exceeds what is
//! left).

use common::contracts::EventType;
use common::events::{Envelope, EventHandler};
use futures::future::BoxFuture;
use sqlx::PgConnection;

use crate::AppState;
use crate::repository;

pub struct OrderEvents {
    pub state: AppState,
}

fn closes(event_type: &str) -> bool {
    matches!(EventType::parse(event_type), Some(EventType::OrderCancelled | EventType::OrderExpired))
}

impl EventHandler for OrderEvents {
    fn wants(&self, event_type: &str) -> bool {
        closes(event_type)
    }

    fn handle<'a>(&'a self, tx: &'a mut PgConnection, event: &'a Envelope) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            if closes(&event.event_type) {
                let refunds = repository::close_order(tx, event.aggregate_id).await?;
                if !refunds.is_empty() {
                    tracing::info!(order_id = %event.aggregate_id, count = refunds.len(), "refunding a closed order");
                }
            }
            Ok(())
        })
    }

    fn after_commit<'a>(&'a self, event: &'a Envelope) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if closes(&event.event_type) {
                crate::jobs::carry_out_pending_refunds(&self.state).await;
            }
        })
    }
}
