//! Payment attempts: recorded before the provider is called, found by their
//! Idempotency-Key, leased to one request at a time, and the stale ones for the reconciler.

use std::time::Duration;

use common::db::is_unique_violation;
use common::idempotency::StoredAnswer;
use common::money::Money;
use sqlx::PgPool;
use uuid::Uuid;

use super::*;
use crate::domain::Payment;
use crate::error::Error;

/// A new attempt to charge an order.
#[derive(Debug)]
pub struct NewAttempt<'a> {
    pub id: Uuid,
    pub order_id: Uuid,
    pub user_id: Uuid,
    pub amount: Money,
    pub key: &'a str,
    pub fingerprint: &'a [u8],
}

/// Records an attempt as `processing`, committed before the provider is called, unless
/// the order was cancelled or expired as far as this service has heard (`None`: not worth
/// a charge and its refund). The database refuses a second attempt for an order that is
/// being charged or was charged.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql", order_id = %attempt.order_id))]
pub async fn insert_attempt(db: &PgPool, attempt: &NewAttempt<'_>, lease: Duration) -> Result<Option<Payment>, Error> {
    let inserted = sqlx::query_as!(
        PaymentRow,
        r#"INSERT INTO payments.payments
               (id, order_id, user_id, amount, currency, status, idempotency_key, fingerprint, running_until)
           SELECT $1, $2, $3, $4, 'USD', 'processing', $5, $6, now() + make_interval(secs => $7)
           WHERE NOT EXISTS (SELECT 1 FROM payments.closed_orders WHERE order_id = $2)
           RETURNING id, order_id, user_id, amount AS "amount: Money", currency, status AS "status: PaymentStatus", failure_code,
                     refunded AS "refunded: Money", created_at"#,
        attempt.id,
        attempt.order_id,
        attempt.user_id,
        attempt.amount.amount(),
        attempt.key,
        attempt.fingerprint,
        lease.as_secs_f64()
    )
    .fetch_optional(db)
    .await;
    match inserted {
        Ok(row) => Ok(row.map(|row| Stored::from(row).payment)),
        Err(err) if is_unique_violation(&err, "payments_one_charge_per_order_idx") => {
            let found = sqlx::query!(
                r#"SELECT
                     EXISTS (SELECT 1 FROM payments.payments WHERE user_id = $2 AND idempotency_key = $3) AS "same_key!",
                     EXISTS (SELECT 1 FROM payments.payments
                             WHERE order_id = $1 AND status IN ('succeeded', 'refunded', 'partially_refunded'))
                       AS "captured!""#,
                attempt.order_id,
                attempt.user_id,
                attempt.key
            )
            .fetch_one(db)
            .await?;
            // The same request, concurrently, is told so; another request for the order
            // learns whether it is paid or being paid.
            Err(if found.same_key {
                Error::RequestInProgress
            } else if found.captured {
                Error::AlreadyPaid
            } else {
                Error::PaymentInProgress
            })
        }
        Err(err) if is_unique_violation(&err, "payments_key_idx") => Err(Error::RequestInProgress),
        Err(err) => Err(err.into()),
    }
}

/// What a request with this Idempotency-Key left behind in the last 24 hours: the
/// answer stored for it, and the attempt it started.
#[derive(Debug, Default)]
pub struct Earlier {
    pub answer: Option<StoredAnswer>,
    /// The attempt, with the fingerprint of the request that started it.
    pub attempt: Option<(Stored, Vec<u8>)>,
}

/// [`Earlier`], in one statement. An attempt older than 24 hours lets go of the key (keys
/// live 24 hours).
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn find_by_key(db: &PgPool, user_id: Uuid, key: &str) -> Result<Earlier, Error> {
    let row = sqlx::query!(
        r#"WITH expired AS (
               UPDATE payments.payments SET idempotency_key = NULL
               WHERE user_id = $1 AND idempotency_key = $2 AND created_at < now() - interval '24 hours'
                 AND status <> 'processing'
               RETURNING id)
           SELECT k.fingerprint AS "answer_fingerprint?", k.status AS "answer_status?", k.body AS "answer_body?",
                  p.id AS "id?", p.order_id AS "order_id?", p.user_id AS "user_id?",
                  p.amount AS "amount?: Money", p.currency AS "currency?", p.status AS "status?: PaymentStatus", p.failure_code,
                  p.refunded AS "refunded?: Money", p.created_at AS "created_at?", p.fingerprint AS "fingerprint?"
           FROM (SELECT 1) AS one
           LEFT JOIN payments.idempotency_keys k
             ON k.scope = $3 AND k.key = $2 AND k.created_at > now() - interval '24 hours'
           LEFT JOIN payments.payments p
             ON p.user_id = $1 AND p.idempotency_key = $2 AND p.id NOT IN (SELECT id FROM expired)"#,
        user_id,
        key,
        user_id.to_string()
    )
    .fetch_one(db)
    .await?;
    let answer = StoredAnswer::from_columns(row.answer_fingerprint, row.answer_status, row.answer_body);
    let attempt = match (row.id, row.order_id, row.user_id, row.amount, row.currency, row.status, row.refunded) {
        (Some(id), Some(order_id), Some(user_id), Some(amount), Some(currency), Some(status), Some(refunded)) => {
            let stored = Stored::from(PaymentRow {
                id,
                order_id,
                user_id,
                amount,
                currency,
                status,
                failure_code: row.failure_code,
                refunded,
                created_at: row.created_at.unwrap_or_default(),
            });
            Some((stored, row.fingerprint.unwrap_or_default()))
        }
        _ => None,
    };
    Ok(Earlier { answer, attempt })
}

/// Takes the lease of an unsettled attempt to resume it; `false` while another request
/// (or the reconciler) holds it, or once it is settled.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn claim_attempt(db: &PgPool, id: Uuid, lease: Duration) -> Result<bool, Error> {
    let claimed = sqlx::query!(
        "UPDATE payments.payments SET running_until = now() + make_interval(secs => $2)
         WHERE id = $1 AND status = 'processing' AND running_until <= now()",
        id,
        lease.as_secs_f64()
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(claimed == 1)
}

/// Ends a request's lease on an attempt whose outcome it does not know, so that the
/// reconciler settles it without waiting.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn release_attempt(db: &PgPool, id: Uuid) -> Result<(), Error> {
    sqlx::query!("UPDATE payments.payments SET running_until = now() WHERE id = $1 AND status = 'processing'", id)
        .execute(db)
        .await?;
    Ok(())
}

/// Forgets an attempt the provider certainly did not charge.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn delete_attempt(db: &PgPool, id: Uuid) -> Result<(), Error> {
    sqlx::query!("DELETE FROM payments.payments WHERE id = $1 AND status = 'processing'", id).execute(db).await?;
    Ok(())
}

/// Unsettled attempts that no request is working on (their request died or gave up):
/// (payment id, order id).
#[tracing::instrument(level = "debug", skip_all, fields(db.system.name = "postgresql"))]
pub async fn stale_attempts(db: &PgPool, limit: i64) -> Result<Vec<(Uuid, Uuid)>, Error> {
    let rows = sqlx::query!(
        "SELECT id, order_id FROM payments.payments WHERE status = 'processing' AND running_until < now()
         ORDER BY running_until LIMIT $1",
        limit
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.order_id)).collect())
}
