//! Refunds: decided with their `payment.refunded`, those of a closed order, and carrying
//! them out.

use std::borrow::Cow;

use common::contracts::{EventType, PaymentRefunded};
use common::events;
use common::money::Money;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::*;
use crate::domain::{self, Refund, RefundStatus};
use crate::error::Error;

/// Decides a refund of `amount` (default: all that is left) on a captured payment, with
/// its `payment.refunded`: counted at once, carried out by the provider after commit.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql", %payment_id))]
pub async fn refund(
    tx: &mut PgConnection,
    payment_id: Uuid,
    amount: Option<Money>,
    reason: &str,
) -> Result<Refund, Error> {
    let current = load(tx, payment_id, true).await?.ok_or(Error::NotFound)?;
    let payment = &current.payment;
    let (amount, after) = domain::refund(payment.status, payment.amount, current.refunded, amount)?;
    let refunded = Money::new(current.refunded.amount() + amount.amount())
        .map_err(|e| Error::Database(sqlx::Error::Protocol(format!("refunded total out of range: {e}"))))?;
    let id = Uuid::now_v7();
    let created_at = sqlx::query_scalar!(
        "INSERT INTO payments.refunds (id, payment_id, amount, reason, status) VALUES ($1, $2, $3, $4, 'pending')
         RETURNING created_at",
        id,
        payment_id,
        amount.amount(),
        reason
    )
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query!(
        "UPDATE payments.payments SET refunded = $2, status = $3, updated_at = clock_timestamp() WHERE id = $1",
        payment_id,
        refunded.amount(),
        after.as_str()
    )
    .execute(&mut *tx)
    .await?;
    let data = PaymentRefunded {
        payment_id,
        refund_id: id,
        order_id: payment.order_id,
        user_id: payment.user_id,
        amount,
        refunded_total: refunded,
        currency: Cow::Borrowed(&payment.currency),
        reason: Cow::Borrowed(reason),
    };
    events::emit_event(tx, EventType::PaymentRefunded, payment_id, &data).await?;
    let status = RefundStatus::Pending;
    Ok(Refund { id, payment_id, amount, currency: payment.currency.clone(), status, created_at })
}

/// Marks an order as over and refunds in full whatever was captured for it. Returns the
/// refunds to carry out once committed.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql", %order_id))]
pub async fn close_order(tx: &mut PgConnection, order_id: Uuid) -> Result<Vec<Uuid>, Error> {
    lock_order(tx, order_id).await?;
    sqlx::query!("INSERT INTO payments.closed_orders (order_id) VALUES ($1) ON CONFLICT DO NOTHING", order_id)
        .execute(&mut *tx)
        .await?;
    let captured = sqlx::query_scalar!(
        "SELECT id FROM payments.payments
         WHERE order_id = $1 AND status IN ('succeeded', 'partially_refunded') ORDER BY id",
        order_id
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut refunds = Vec::with_capacity(captured.len());
    for payment_id in captured {
        refunds.push(refund(tx, payment_id, None, "order_cancelled").await?.id);
    }
    Ok(refunds)
}

/// A refund the provider has not carried out yet: (refund id, payment id, amount).
pub type PendingRefund = (Uuid, Uuid, Money);

/// Refunds the provider has yet to carry out (`only` that one, or the oldest). Several
/// replicas may pick the same one: the provider does a refund once per refund id.
#[tracing::instrument(level = "debug", skip_all, fields(db.system.name = "postgresql"))]
pub async fn pending_refunds(db: &PgPool, only: Option<Uuid>, limit: i64) -> Result<Vec<PendingRefund>, Error> {
    let rows = sqlx::query!(
        r#"SELECT id, payment_id, amount AS "amount: Money" FROM payments.refunds
           WHERE status = 'pending' AND ($1::uuid IS NULL OR id = $1)
           ORDER BY created_at LIMIT $2"#,
        only,
        limit
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.payment_id, r.amount)).collect())
}

#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn mark_refunded(db: &PgPool, refund_id: Uuid) -> Result<(), Error> {
    sqlx::query!("UPDATE payments.refunds SET status = 'succeeded' WHERE id = $1 AND status = 'pending'", refund_id)
        .execute(db)
        .await?;
    Ok(())
}

#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn find_refund(db: &PgPool, id: Uuid) -> Result<Option<Refund>, Error> {
    Ok(sqlx::query!(
        r#"SELECT r.id, r.payment_id, r.amount AS "amount: Money", p.currency, r.status AS "status: RefundStatus",
                  r.created_at
           FROM payments.refunds r JOIN payments.payments p ON p.id = r.payment_id WHERE r.id = $1"#,
        id
    )
    .fetch_optional(db)
    .await?
    .map(|r| Refund {
        id: r.id,
        payment_id: r.payment_id,
        amount: r.amount,
        currency: r.currency,
        status: r.status,
        created_at: r.created_at,
    }))
}
