//! Settling an attempt with the provider's answer and its `payment.succeeded` or
//! `payment.failed`, under the order's lock.

use std::borrow::Cow;

use axum::http::StatusCode;
use common::contracts::{EventType, PaymentSettled};
use common::events::Outgoing;
use common::idempotency::Claim;
use sqlx::PgConnection;
use sqlx::types::Json;
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

/// Settles an attempt with the provider's outcome, with its event and its key's answer;
/// a charge for an order that was closed meanwhile is refunded in full in the same
/// transaction (and that is the answer). Returns the payment as it now is (as another
/// settler left it, if one came first) and the refunds to carry out once committed.
///
/// Two statements when nothing is in the way: the order's lock, then one that moves the
/// payment (and sees whether the order was closed: its snapshot is taken after the
/// lock), writes the event and completes the claim with the answer, if this request
/// still holds it.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql", payment_id = %attempt.id))]
pub async fn settle<P>(
    tx: &mut PgConnection,
    attempt: &Payment,
    outcome: &Outcome,
    claim: &Claim<P>,
) -> Result<(Payment, Vec<Uuid>), Error> {
    lock_order(tx, attempt.order_id).await?;
    let from = PaymentStatus::Processing;
    let status =
        from.transition(outcome.action()).map_err(|e| Error::Database(sqlx::Error::Protocol(e.to_string())))?;
    let code = match outcome {
        Outcome::Succeeded => None,
        Outcome::Declined(code) => Some(code.clone()),
    };
    let settled = Payment { status, failure_code: code, ..attempt.clone() };
    let kind = if status == PaymentStatus::Succeeded { EventType::PaymentSucceeded } else { EventType::PaymentFailed };
    let data = PaymentSettled {
        payment_id: settled.id,
        order_id: settled.order_id,
        user_id: settled.user_id,
        amount: settled.amount,
        currency: Cow::Borrowed(&settled.currency),
        failure_code: settled.failure_code.as_deref().map(Cow::Borrowed),
    };
    let event = Outgoing::new(kind, settled.id, &data)?;
    let answer = serde_json::to_vec(&settled).map_err(|e| Error::Database(sqlx::Error::Encode(Box::new(e))))?;
    let succeeded = status == PaymentStatus::Succeeded;
    let moved = sqlx::query_scalar!(
        r#"WITH moved AS (
               UPDATE payments.payments SET status = $2, failure_code = $3, updated_at = clock_timestamp()
               WHERE id = $1 AND status = $4
               RETURNING id, EXISTS (SELECT 1 FROM payments.closed_orders c WHERE c.order_id = payments.order_id)
                 AS closed),
           event AS (
               INSERT INTO payments.outbox (id, topic, aggregate_id, event_type, envelope, traceparent)
               SELECT $5, $6, id, $7, $8, $9 FROM moved),
           answered AS (
               UPDATE payments.idempotency_keys
               SET status = 201, body = $10, running_until = NULL, progress = NULL
               WHERE scope = $11 AND key = $12 AND claim = $13
                 AND EXISTS (SELECT 1 FROM moved WHERE NOT (closed AND $14))
               RETURNING 1)
           SELECT closed AS "closed!" FROM moved"#,
        settled.id,
        status.as_str(),
        settled.failure_code,
        from.as_str(),
        event.id,
        event.topic,
        event.event_type,
        Json(&event.envelope) as _,
        event.traceparent,
        answer,
        claim.scope(),
        claim.key(),
        claim.id(),
        succeeded,
    )
    .fetch_optional(&mut *tx)
    .await?;
    match moved {
        // Settled by someone else first (or gone): as they left it.
        None => {
            let current = load(tx, attempt.id, false).await?.ok_or(Error::NotFound)?.payment;
            claim.complete(tx, StatusCode::CREATED, &current).await.map_err(internal)?;
            Ok((current, Vec::new()))
        }
        Some(true) if succeeded => {
            tracing::warn!(order_id = %settled.order_id, "a payment succeeded for an order that is over; refunding it");
            let refund = refund(tx, settled.id, None, "order_cancelled").await?.id;
            let payment = load(tx, settled.id, false).await?.map_or(settled, |s| s.payment);
            claim.complete(tx, StatusCode::CREATED, &payment).await.map_err(internal)?;
            Ok((payment, vec![refund]))
        }
        Some(_) => Ok((settled, Vec::new())),
    }
}

/// An answer that could not be stored is the database's failure.
fn internal(err: common::ApiError) -> Error {
    Error::Database(sqlx::Error::Protocol(err.to_string()))
}
