//! Reading payments: one, locked or not, and lists.

use common::money::Money;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::*;
use crate::domain::{Payment, PaymentStatus};
use crate::error::Error;

/// A payment, `processing` ones included.
pub(super) async fn load(conn: &mut PgConnection, id: Uuid, lock: bool) -> Result<Option<Stored>, Error> {
    let row = if lock {
        sqlx::query_as!(
            PaymentRow,
            r#"SELECT id, order_id, user_id, amount AS "amount: Money", currency, status AS "status: PaymentStatus", failure_code,
                      refunded AS "refunded: Money", created_at
               FROM payments.payments WHERE id = $1 FOR UPDATE"#,
            id
        )
        .fetch_optional(conn)
        .await?
    } else {
        sqlx::query_as!(
            PaymentRow,
            r#"SELECT id, order_id, user_id, amount AS "amount: Money", currency, status AS "status: PaymentStatus", failure_code,
                      refunded AS "refunded: Money", created_at
               FROM payments.payments WHERE id = $1"#,
            id
        )
        .fetch_optional(conn)
        .await?
    };
    Ok(row.map(Stored::from))
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
        r#"SELECT id, order_id, user_id, amount AS "amount: Money", currency, status AS "status: PaymentStatus", failure_code,
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
    Ok(rows.into_iter().map(|r| Stored::from(r).payment).collect())
}
