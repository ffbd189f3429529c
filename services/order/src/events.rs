//! What the order service does with the payment service's events: a successful payment
//! pays the order (`order.paid`, on which the product service commits the reservation).
//! A failed payment leaves the order payable; a refund changes nothing here (the order
//! was cancelled first).

use common::events::{Envelope, EventHandler};
use futures::future::BoxFuture;
use serde::Deserialize;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::domain::{Action, OrderStatus, StatusChanged};
use crate::live::Live;
use crate::repository::{self, Cause};

/// The topic the payment service publishes to.
pub const PAYMENT_TOPIC: &str = "payment.events";

/// The part of a `payment.*` event this service reads.
#[derive(Debug, Deserialize)]
struct PaymentEvent {
    payment_id: Uuid,
    order_id: Uuid,
}

pub struct PaymentEvents {
    pub db: sqlx::PgPool,
    pub live: Live,
}

impl EventHandler for PaymentEvents {
    fn wants(&self, event_type: &str) -> bool {
        event_type == "payment.succeeded"
    }

    fn handle<'a>(&'a self, tx: &'a mut PgConnection, event: &'a Envelope) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            if event.event_type != "payment.succeeded" {
                return Ok(());
            }
            let payment: PaymentEvent = serde_json::from_value(event.data.clone())?;
            let Some(order) = repository::find_order_in(tx, payment.order_id).await? else {
                tracing::warn!(order_id = %payment.order_id, "a payment succeeded for an unknown order");
                return Ok(());
            };
            match order.status.transition(Action::Pay) {
                Ok(_) => {
                    let cause = Cause { reason: None, payment_id: Some(payment.payment_id) };
                    repository::move_order(tx, &order, Action::Pay, cause).await?;
                }
                // Paid already (the same payment again), or cancelled or expired first:
                // the payment service refunds a payment for a cancelled order.
                Err(illegal) => {
                    tracing::info!(order_id = %order.id, status = illegal.from.as_str(), "payment for an order that can't be paid now");
                }
            }
            Ok(())
        })
    }

    fn after_commit<'a>(&'a self, event: &'a Envelope) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if event.event_type != "payment.succeeded" {
                return;
            }
            let Ok(payment) = serde_json::from_value::<PaymentEvent>(event.data.clone()) else { return };
            match repository::find_order(&self.db, payment.order_id).await {
                Ok(Some(order)) if order.status == OrderStatus::Paid => {
                    self.live.publish(order.user_id, StatusChanged::of(&order)).await;
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "could not read a paid order to announce it"),
            }
        })
    }
}
