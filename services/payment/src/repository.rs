//! SQL for the `payments` schema. A payment attempt is recorded before the provider is
//! called and settled after; the settlement and an order's closing take the same per-order
//! lock, so a payment that succeeds as its order expires is always refunded.

use std::borrow::Cow;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::contracts::{EventType, PaymentRefunded, PaymentSettled};
use common::db::is_unique_violation;
use common::events;
use common::idempotency::StoredAnswer;
use common::money::Money;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::{self, Outcome, Payment, PaymentStatus, Refund, RefundStatus};
use crate::error::Error;

struct PaymentRow {
    id: Uuid,
    order_id: Uuid,
    user_id: Uuid,
    amount: Money,
    currency: String,
    status: String,
    failure_code: Option<String>,
    refunded: Money,
    created_at: DateTime<Utc>,
}

/// A payment with what only the service sees.
#[derive(Debug, Clone)]
pub struct Stored {
    pub payment: Payment,
    pub refunded: Money,
}

impl TryFrom<PaymentRow> for Stored {
    type Error = Error;

    fn try_from(row: PaymentRow) -> Result<Self, Error> {
        let status = PaymentStatus::parse(&row.status)
            .ok_or_else(|| Error::Database(sqlx::Error::Decode(format!("payment status {:?}", row.status).into())))?;
        Ok(Stored {
            payment: Payment {
                id: row.id,
                order_id: row.order_id,
                user_id: row.user_id,
                amount: row.amount,
                currency: row.currency,
                status,
                failure_code: row.failure_code,
                created_at: row.created_at,
            },
            refunded: row.refunded,
        })
    }
}

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
           RETURNING id, order_id, user_id, amount AS "amount: Money", currency, status, failure_code,
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
        Ok(row) => Ok(row.map(Stored::try_from).transpose()?.map(|s| s.payment)),
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
                  p.amount AS "amount?: Money", p.currency AS "currency?", p.status AS "status?", p.failure_code,
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
            let stored = Stored::try_from(PaymentRow {
                id,
                order_id,
                user_id,
                amount,
                currency,
                status,
                failure_code: row.failure_code,
                refunded,
                created_at: row.created_at.unwrap_or_default(),
            })?;
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

/// A payment, `processing` ones included.
async fn load(conn: &mut PgConnection, id: Uuid, lock: bool) -> Result<Option<Stored>, Error> {
    let row = if lock {
        sqlx::query_as!(
            PaymentRow,
            r#"SELECT id, order_id, user_id, amount AS "amount: Money", currency, status, failure_code,
                      refunded AS "refunded: Money", created_at
               FROM payments.payments WHERE id = $1 FOR UPDATE"#,
            id
        )
        .fetch_optional(conn)
        .await?
    } else {
        sqlx::query_as!(
            PaymentRow,
            r#"SELECT id, order_id, user_id, amount AS "amount: Money", currency, status, failure_code,
                      refunded AS "refunded: Money", created_at
               FROM payments.payments WHERE id = $1"#,
            id
        )
        .fetch_optional(conn)
        .await?
    };
    row.map(Stored::try_from).transpose()
}

/// A settled payment (attempts still `processing` are not shown to clients).
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn find_payment(db: &PgPool, id: Uuid) -> Result<Option<Payment>, Error> {
    let stored = load(&mut *db.acquire().await?, id, false).await?;
    Ok(stored.map(|s| s.payment).filter(|p| p.status != PaymentStatus::Processing))
}

/// Settled payments, newest first: of one order and/or one user, after `after`.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn list_payments(
    db: &PgPool,
    user_id: Option<Uuid>,
    order_id: Option<Uuid>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Payment>, Error> {
    let rows = sqlx::query_as!(
        PaymentRow,
        r#"SELECT id, order_id, user_id, amount AS "amount: Money", currency, status, failure_code,
                  refunded AS "refunded: Money", created_at
           FROM payments.payments
           WHERE status <> 'processing' AND ($1::uuid IS NULL OR user_id = $1) AND ($2::uuid IS NULL OR order_id = $2)
             AND id < $3
           ORDER BY id DESC LIMIT $4"#,
        user_id,
        order_id,
        after.unwrap_or(Uuid::max()),
        limit + 1
    )
    .fetch_all(db)
    .await?;
    rows.into_iter().map(|r| Stored::try_from(r).map(|s| s.payment)).collect()
}

/// Serialises what happens to one order's payments: settling a charge, closing the order.
async fn lock_order(tx: &mut PgConnection, order_id: Uuid) -> Result<(), Error> {
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
           RETURNING id, order_id, user_id, amount AS "amount: Money", currency, status, failure_code,
                     refunded AS "refunded: Money", created_at,
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
    let payment = Stored::try_from(PaymentRow {
        id: moved.id,
        order_id: moved.order_id,
        user_id: moved.user_id,
        amount: moved.amount,
        currency: moved.currency,
        status: moved.status,
        failure_code: moved.failure_code,
        refunded: moved.refunded,
        created_at: moved.created_at,
    })?
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
