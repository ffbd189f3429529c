//! Checkouts in flight: the leased record of a checkout under way with its
//! Idempotency-Key answer, claimed, released, taken over or abandoned.

use std::borrow::Cow;
use std::time::Duration;

use common::events;
use common::idempotency::StoredAnswer;
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use super::*;
use crate::domain::{Action, Line, OrderStatus};
use crate::error::Error;

/// A checkout recorded before its reservation was asked for.
#[derive(Debug, Clone)]
pub struct Checkout {
    pub order_id: Uuid,
    pub items: Vec<Line>,
    pub from_cart: bool,
    /// The fingerprint of the request that started it, when it had an Idempotency-Key.
    pub fingerprint: Option<Vec<u8>>,
}

/// What a checkout request starts from, read in one statement: with an Idempotency-Key,
/// the answer stored for it and the unfinished checkout it started; with `with_cart`, the
/// cart.
#[derive(Debug, Default)]
pub struct Earlier {
    pub answer: Option<StoredAnswer>,
    pub checkout: Option<Checkout>,
    pub cart: Vec<Line>,
}

#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn earlier(db: &PgPool, user_id: Uuid, key: Option<&str>, with_cart: bool) -> Result<Earlier, Error> {
    let row = sqlx::query!(
        r#"SELECT k.fingerprint AS "answer_fingerprint?", k.status AS "answer_status?", k.body AS "answer_body?",
                  c.order_id AS "order_id?", c.items AS "items?: Json<Vec<Line>>", c.from_cart AS "from_cart?",
                  c.fingerprint,
                  CASE WHEN $4 THEN
                      (SELECT jsonb_agg(jsonb_build_object('product_id', product_id, 'quantity', quantity)
                                        ORDER BY added_at, product_id)
                       FROM ordering.cart_items WHERE user_id = $1)
                  END AS "cart?: Json<Vec<Line>>"
           FROM (SELECT 1) AS one
           LEFT JOIN ordering.idempotency_keys k
             ON k.scope = $3 AND k.key = $2 AND k.created_at > now() - interval '24 hours'
           LEFT JOIN ordering.checkouts c ON c.user_id = $1 AND c.idempotency_key = $2"#,
        user_id,
        key,
        user_id.to_string(),
        with_cart
    )
    .fetch_one(db)
    .await?;
    let answer = StoredAnswer::from_columns(row.answer_fingerprint, row.answer_status, row.answer_body);
    let checkout = match (row.order_id, row.items, row.from_cart) {
        (Some(order_id), Some(items), Some(from_cart)) => {
            Some(Checkout { order_id, items: items.0, from_cart, fingerprint: row.fingerprint })
        }
        _ => None,
    };
    Ok(Earlier { answer, checkout, cart: row.cart.map(|c| c.0).unwrap_or_default() })
}

/// Records a checkout before its reservation is asked for (committed on its own, so it
/// survives a crash during the call), leased to this request for `lease`. `false` when a
/// concurrent request with the same Idempotency-Key recorded one first.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql", order_id = %checkout.order_id))]
pub async fn insert_checkout(
    db: &PgPool,
    user_id: Uuid,
    key: Option<&str>,
    checkout: &Checkout,
    lease: Duration,
) -> Result<bool, Error> {
    let inserted = sqlx::query!(
        "INSERT INTO ordering.checkouts (order_id, user_id, idempotency_key, fingerprint, items, from_cart, running_until)
         VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7)) ON CONFLICT DO NOTHING",
        checkout.order_id,
        user_id,
        key,
        checkout.fingerprint.as_deref(),
        Json(&checkout.items) as _,
        checkout.from_cart,
        lease.as_secs_f64()
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Takes the lease of an unfinished checkout to resume it. `false` while another request
/// holds it.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn claim_checkout(db: &PgPool, order_id: Uuid, lease: Duration) -> Result<bool, Error> {
    let claimed = sqlx::query!(
        "UPDATE ordering.checkouts SET running_until = now() + make_interval(secs => $2)
         WHERE order_id = $1 AND running_until <= now()",
        order_id,
        lease.as_secs_f64()
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(claimed == 1)
}

/// Ends this request's lease on a checkout it gives up on (its outcome unknown), so that
/// a retry can resume it, or the recovery job release it, without waiting.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn release_checkout(db: &PgPool, order_id: Uuid) -> Result<(), Error> {
    sqlx::query!("UPDATE ordering.checkouts SET running_until = now() WHERE order_id = $1", order_id)
        .execute(db)
        .await?;
    Ok(())
}

/// Deletes a checkout record: in the transaction that stores its order, or on its own when
/// its reservation certainly does not exist. `false` when it is gone already (the recovery
/// job released it, so its order must not be stored).
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn take_checkout(db: impl PgExecutor<'_>, order_id: Uuid) -> Result<bool, Error> {
    let taken =
        sqlx::query!("DELETE FROM ordering.checkouts WHERE order_id = $1", order_id).execute(db).await?.rows_affected();
    Ok(taken == 1)
}

/// Releases checkouts that never became orders within `after` and that no request is
/// working on: each is deleted with an
/// `order.cancelled` (reason `checkout_failed`), on which the product service puts back
/// whatever was reserved under its order id, or refuses a reservation still on its way.
/// Replicas share the work with `SKIP LOCKED`.
#[tracing::instrument(level = "debug", skip_all, fields(db.system.name = "postgresql"))]
pub async fn release_stale_checkouts(db: &PgPool, after: Duration, limit: i64) -> Result<Vec<Uuid>, Error> {
    let mut tx = db.begin().await?;
    let released = sqlx::query!(
        "DELETE FROM ordering.checkouts WHERE order_id IN (
             SELECT order_id FROM ordering.checkouts
             WHERE created_at < now() - make_interval(secs => $1) AND running_until < now()
             ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)
         RETURNING order_id, user_id",
        after.as_secs_f64(),
        limit
    )
    .fetch_all(&mut *tx)
    .await?;
    for row in &released {
        checkout_failed(&mut tx, row.order_id, row.user_id).await?;
    }
    tx.commit().await?;
    Ok(released.into_iter().map(|r| r.order_id).collect())
}

/// Releases one checkout now (it was reserved, but can't become an order).
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn abandon_checkout(db: &PgPool, order_id: Uuid, user_id: Uuid) -> Result<(), Error> {
    let mut tx = db.begin().await?;
    if take_checkout(&mut *tx, order_id).await? {
        checkout_failed(&mut tx, order_id, user_id).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The `order.cancelled` of a checkout that never became an order.
pub(super) async fn checkout_failed(tx: &mut PgConnection, order_id: Uuid, user_id: Uuid) -> Result<(), Error> {
    let event = OrderEvent {
        order_id,
        user_id,
        status: OrderStatus::Cancelled,
        previous_status: None,
        reason: Some(Cow::Borrowed("checkout_failed")),
        total: None,
        currency: Cow::Borrowed(common::money::CURRENCY),
        items: None,
        payment_id: None,
    };
    events::emit_event(tx, Action::Cancel.event_type(), order_id, &event).await?;
    Ok(())
}
