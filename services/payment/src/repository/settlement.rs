//! Settling an attempt with the provider's answer and its `payment.succeeded` or
//! `payment.failed`, under the order's lock.

use std::borrow::Cow;

use common::contracts::{EventType, PaymentSettled};
use common::events;
use common::money::Money;
use sqlx::PgConnection;
use uuid::Uuid;

use super::*;
use crate::domain::{Outcome, Payment, PaymentStatus};
use crate::error::Error;

/// Serialises what happens to one order's payments: settling a charge, closing the order.
pub(super) async fn lock_order(tx: &mut PgConnection, order_id: Uuid) -> Result<(), Error> {
    sqlx::query!(
        "SELECT pg_advisory_xact_lock(hashtextextended('payments-order:' || $1::text, 0))",
        order_id.to_string()
    )
    .execute(tx)
    .await?;
    Ok(())
}

/// Settles an attempt (of `order_id`) with the provider's outcome, with its event; a
/// charge for an order that was closed meanwhile is refunded in full in the same
/// transaction. Returns the payment as it now is (as another settler left it, if one came
/// first) and the refunds to carry out once committed.
///
/// Three statements when nothing is in the way: the order's lock, the guarded move (which
/// also tells whether the order was closed: its snapshot is taken after the lock), the event.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql", %payment_id))]
pub async fn settle(
    tx: &mut PgConnection,
    payment_id: Uuid,
    order_id: Uuid,
    outcome: &Outcome,
) -> Result<(Payment, Vec<Uuid>), Error> {
    lock_order(tx, order_id).await?;
    let from = PaymentStatus::Processing;
    let status =
        from.transition(outcome.action()).map_err(|e| Error::Database(sqlx::Error::Protocol(e.to_string())))?;
    let code = match outcome {
        Outcome::Succeeded => None,
        Outcome::Declined(code) => Some(code.as_str()),
    };
    let moved = sqlx::query!(
        r#"UPDATE payments.payments SET status = $2, failure_code = $3, updated_at = clock_timestamp()
           WHERE id = $1 AND status = $4
           RETURNING id, order_id, user_id, amount AS "amount: Money", currency,
                     status AS "status: PaymentStatus", failure_code, refunded AS "refunded: Money", created_at,
                     EXISTS (SELECT 1 FROM payments.closed_orders c WHERE c.order_id = payments.order_id)
                       AS "closed!""#,
        payment_id,
        status.as_str(),
        code,
        from.as_str()
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(moved) = moved else {
        // Settled by someone else first (or gone): as they left it.
        let current = load(tx, payment_id, false).await?.ok_or(Error::NotFound)?;
        return Ok((current.payment, Vec::new()));
    };
    let closed = moved.closed;
    let payment = Stored::from(PaymentRow {
        id: moved.id,
        order_id: moved.order_id,
        user_id: moved.user_id,
        amount: moved.amount,
        currency: moved.currency,
        status: moved.status,
        failure_code: moved.failure_code,
        refunded: moved.refunded,
        created_at: moved.created_at,
    })
    .payment;
    let kind = if status == PaymentStatus::Succeeded { EventType::PaymentSucceeded } else { EventType::PaymentFailed };
    let data = PaymentSettled {
        payment_id: payment.id,
        order_id: payment.order_id,
        user_id: payment.user_id,
        amount: payment.amount,
        currency: Cow::Borrowed(&payment.currency),
        failure_code: payment.failure_code.as_deref().map(Cow::Borrowed),
    };
    events::emit_event(tx, kind, payment.id, &data).await?;
    if status == PaymentStatus::Succeeded && closed {
        tracing::warn!(order_id = %payment.order_id, "a payment succeeded for an order that is over; refunding it");
        let refund = refund(tx, payment.id, None, "order_cancelled").await?.id;
        let payment = load(tx, payment_id, false).await?.map_or(payment, |s| s.payment);
        return Ok((payment, vec![refund]));
    }
    Ok((payment, Vec::new()))
}
