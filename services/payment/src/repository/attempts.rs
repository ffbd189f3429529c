//! Payment attempts: recorded before the provider is called (with the claim on their
//! Idempotency-Key, which leases them to one request at a time), and forgotten when the
//! provider certainly charged nothing.

use common::db::is_unique_violation;
use common::money::Money;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::*;
use crate::domain::Payment;
use crate::error::Error;

/// What a payment records with its key's claim, for a retry with the same key (or the
/// reconciler) to carry on from: the attempt it made.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct AttemptProgress {
    pub payment_id: Uuid,
}

/// A new attempt to charge an order.
#[derive(Debug)]
pub struct NewAttempt {
    pub id: Uuid,
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub amount: Money,
}

/// Records an attempt as `processing`, in the transaction of its key's claim, unless the
/// order was cancelled or expired as far as this service has heard (`None`: not worth a
/// charge and its refund). The database refuses a second attempt for an order that is
/// being charged or was charged ([`Error::OrderBeingCharged`]): the transaction is then
/// over, and [`order_charged`] tells which, on a connection of its own.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql", order_id = %attempt.order_id))]
pub async fn insert_attempt(tx: &mut PgConnection, attempt: &NewAttempt) -> Result<Option<Payment>, Error> {
    let inserted = sqlx::query_as!(
        PaymentRow,
        r#"INSERT INTO payments.payments (id, order_id, user_id, amount, currency, status)
           SELECT $1, $2, $3, $4, 'USD', 'processing'
           WHERE NOT EXISTS (SELECT 1 FROM payments.closed_orders WHERE order_id = $2)
           RETURNING id, order_id, user_id, amount AS "amount: Money", currency, status AS "status: PaymentStatus", failure_code,
                     refunded AS "refunded: Money", created_at"#,
        attempt.id,
        attempt.order_id,
        attempt.user_id,
        attempt.amount.amount(),
    )
    .fetch_optional(tx)
    .await;
    match inserted {
        Ok(row) => Ok(row.map(|row| Stored::from(row).payment)),
        Err(err) if is_unique_violation(&err, "payments_one_charge_per_order_idx") => Err(Error::OrderBeingCharged),
        Err(err) => Err(err.into()),
    }
}

/// Whether another request for the order was refused because it is paid
/// ([`Error::AlreadyPaid`]) or being paid ([`Error::PaymentInProgress`]).
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql", %order_id))]
pub async fn order_charged(db: &PgPool, order_id: Uuid) -> Result<Error, Error> {
    let captured = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM payments.payments
                          WHERE order_id = $1 AND status IN ('succeeded', 'refunded', 'partially_refunded'))
             AS "captured!""#,
        order_id,
    )
    .fetch_one(db)
    .await?;
    Ok(if captured { Error::AlreadyPaid } else { Error::PaymentInProgress })
}

/// The attempt a claim's progress names, as it stands.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql", %id))]
pub async fn find_attempt(db: &PgPool, id: Uuid) -> Result<Option<Payment>, Error> {
    Ok(load(&mut *db.acquire().await?, id, false).await?.map(|stored| stored.payment))
}

/// Forgets an attempt the provider certainly did not charge.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn delete_attempt(db: impl sqlx::PgExecutor<'_>, id: Uuid) -> Result<(), Error> {
    sqlx::query!("DELETE FROM payments.payments WHERE id = $1 AND status = 'processing'", id).execute(db).await?;
    Ok(())
}
