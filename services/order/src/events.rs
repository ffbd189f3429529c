//! What the order service does with the payment service's events:
//! - a successful payment pays the order (`order.paid`, on which the product service
//!   commits the reservation); a failed one leaves the order payable;
//! - a refund is added to the order's `refunded_total`; refunded in full, a `paid` order
//!   is cancelled (`order.cancelled`: its units go back in stock, and the payment service
//!   finds nothing left to refund) and a `shipped` or `delivered` one becomes `refunded`.
//!   A partial refund, or one of an order cancelled already, moves nothing.

use common::contracts::{EventType, PaymentRefunded, PaymentSettled};
use common::events::{Envelope, EventHandler};
use futures::future::BoxFuture;
use serde::Deserialize as _;
use sqlx::PgConnection;
use uuid::Uuid;

use common::money::Money;

use crate::domain::{Action, Order, OrderStatus, StatusChanged};
use crate::live::Live;
use crate::repository::{self, Cause};

/// What this service reads of a `payment.succeeded` or `payment.refunded`.
#[derive(Debug)]
struct PaymentEvent {
    kind: EventType,
    payment_id: Uuid,
    order_id: Uuid,
    /// `payment.refunded`: everything the payment has refunded so far.
    refunded_total: Option<Money>,
}

impl PaymentEvent {
    /// The event, if it is one that can move an order.
    fn read(event: &Envelope) -> anyhow::Result<Option<Self>> {
        Ok(match EventType::parse(&event.event_type) {
            Some(kind @ EventType::PaymentSucceeded) => {
                let settled = PaymentSettled::deserialize(&event.data)?;
                Some(Self { kind, payment_id: settled.payment_id, order_id: settled.order_id, refunded_total: None })
            }
            Some(kind @ EventType::PaymentRefunded) => {
                let refunded = PaymentRefunded::deserialize(&event.data)?;
                let (payment_id, order_id) = (refunded.payment_id, refunded.order_id);
                Some(Self { kind, payment_id, order_id, refunded_total: Some(refunded.refunded_total) })
            }
            _ => None,
        })
    }
}

/// What a payment event does to its order, if anything.
fn action_for(payment: &PaymentEvent, order: &Order) -> Option<Action> {
    match (payment.kind, payment.refunded_total) {
        (EventType::PaymentSucceeded, _) => Some(Action::Pay),
        (EventType::PaymentRefunded, Some(refunded)) if refunded.amount() >= order.total.amount() => {
            match order.status {
                OrderStatus::Paid => Some(Action::Cancel),
                OrderStatus::Shipped | OrderStatus::Delivered => Some(Action::Refund),
                _ => None,
            }
        }
        _ => None,
    }
}

fn moves_orders(event_type: &str) -> bool {
    matches!(EventType::parse(event_type), Some(EventType::PaymentSucceeded | EventType::PaymentRefunded))
}

pub struct PaymentEvents {
    pub live: Live,
}

impl EventHandler for PaymentEvents {
    fn wants(&self, event_type: &str) -> bool {
        moves_orders(event_type)
    }

    fn handle<'a>(&'a self, tx: &'a mut PgConnection, event: &'a Envelope) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let Some(payment) = PaymentEvent::read(event)? else { return Ok(()) };
            if let Some((user_id, change)) = self.move_for(tx, event, &payment).await? {
                // Told to the owner's sockets once the move is visible.
                let live = self.live.clone();
                common::events::on_commit(async move { live.publish(user_id, change).await }).await;
            }
            Ok(())
        })
    }
}

impl PaymentEvents {
    /// Moves the order as the payment event says, if it says anything: its owner and the
    /// change, or `None` when nothing moved.
    async fn move_for(
        &self,
        tx: &mut PgConnection,
        event: &Envelope,
        payment: &PaymentEvent,
    ) -> anyhow::Result<Option<(Uuid, StatusChanged)>> {
        if payment.kind == EventType::PaymentSucceeded {
            // The usual case in one statement: an unpaid order is paid.
            let cause = Cause { reason: None, payment_id: Some(payment.payment_id) };
            let paid =
                repository::move_from(tx, payment.order_id, OrderStatus::PendingPayment, Action::Pay, cause).await?;
            if paid.is_some() {
                return Ok(paid);
            }
        }
        let order = match payment.refunded_total {
            Some(refunded) => repository::record_refunded(tx, payment.order_id, refunded).await?,
            None => repository::find_order_in(tx, payment.order_id).await?,
        };
        let Some(order) = order else {
            tracing::warn!(order_id = %payment.order_id, event = event.event_type, "a payment event for an unknown order");
            return Ok(None);
        };
        let Some(action) = action_for(payment, &order) else { return Ok(None) };
        match order.status.transition(action) {
            Ok(_) => {
                let reason = (action == Action::Cancel).then_some("refunded");
                let cause = Cause { reason, payment_id: Some(payment.payment_id) };
                let moved = repository::move_order(tx, &order, action, cause).await?;
                Ok(Some((moved.user_id, StatusChanged::of(&moved))))
            }
            // Paid already (the same payment again), or cancelled or expired first:
            // the payment service refunds a payment for a cancelled order.
            Err(illegal) => {
                tracing::info!(order_id = %order.id, status = illegal.from.as_str(), "payment for an order that can't be paid now");
                Ok(None)
            }
        }
    }
}
