//! Checkouts in flight: each is the claim on its key in `idempotency_keys` (the client's
//! Idempotency-Key, or one of its own without), whose progress records the order id and
//! the lines it reserves. Placed, abandoned, or released by the recovery job.

use std::borrow::Cow;
use std::time::Duration;

use common::contracts::EventType;
use common::events::{self, Outgoing};
use common::idempotency::Claim;
use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::*;
use crate::domain::{Action, Line, Order, OrderStatus};
use crate::error::Error;

/// What a checkout records with its claim, for a retry with the same key (or the
/// recovery job) to carry on from: the order id its stock is reserved under, the lines it
/// reserves, and whether they came from the cart (which the order then empties of them).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    pub order_id: Uuid,
    pub lines: Vec<Line>,
    pub from_cart: bool,
}

/// Turns a checkout into its order, in one statement: the claim is completed with the
/// answer (`answer`, the order's JSON) if this request still holds it, and then the
/// order and its lines are stored, the ordered products leave the cart (`from_cart`) and
/// `order.created` is written. `false`, with nothing written, if the claim was lost (its
/// lease ran out and a retry or the recovery job took it).
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql", order_id = %order.id))]
pub async fn place_order(
    db: &PgPool,
    order: &Order,
    from_cart: bool,
    claim: &Claim<Progress>,
    answer: &[u8],
) -> Result<bool, Error> {
    let expires_at = order.expires_at.unwrap_or(order.created_at);
    let product_ids: Vec<Uuid> = order.items.iter().map(|i| i.product_id).collect();
    let names: Vec<String> = order.items.iter().map(|i| i.name.clone()).collect();
    let prices: Vec<rust_decimal::Decimal> = order.items.iter().map(|i| i.unit_price.amount()).collect();
    let quantities: Vec<i32> = order.items.iter().map(|i| i.quantity).collect();
    let event = OrderEvent {
        order_id: order.id,
        user_id: order.user_id,
        status: order.status,
        previous_status: None,
        reason: None,
        total: Some(order.total),
        currency: Cow::Borrowed(&order.currency),
        items: Some(&order.items),
        payment_id: None,
    };
    let event = Outgoing::new(EventType::OrderCreated, order.id, &event)?;
    let placed = sqlx::query_scalar!(
        r#"WITH answered AS (
               UPDATE ordering.idempotency_keys
               SET status = 201, body = $15, running_until = NULL, progress = NULL
               WHERE scope = $16 AND key = $17 AND claim = $18 AND $19
               RETURNING 1),
           forgotten AS (
               DELETE FROM ordering.idempotency_keys WHERE scope = $16 AND key = $17 AND claim = $18 AND NOT $19
               RETURNING 1),
           placed AS (
               INSERT INTO ordering.orders
                   (id, user_id, status, total, currency, shipping_address, created_at, updated_at, expires_at)
               SELECT $1, $2, $3, $4, $5, $6, $7, $7, $8
               WHERE EXISTS (SELECT 1 FROM answered) OR EXISTS (SELECT 1 FROM forgotten)
               RETURNING id),
           lines AS (
               INSERT INTO ordering.order_items (order_id, product_id, name, unit_price, quantity)
               SELECT placed.id, l.* FROM placed, UNNEST($9::uuid[], $10::text[], $11::numeric[], $12::int[]) AS l),
           emptied AS (
               DELETE FROM ordering.cart_items
               WHERE $13 AND user_id = $2 AND product_id = ANY($9) AND EXISTS (SELECT 1 FROM placed)),
           event AS (
               INSERT INTO ordering.outbox (id, topic, aggregate_id, event_type, envelope, traceparent)
               SELECT $14, $20, $1, $21, $22, $23 FROM placed)
           SELECT count(*) AS "placed!" FROM placed"#,
        order.id,
        order.user_id,
        order.status.as_str(),
        order.total.amount(),
        order.currency,
        Json(&order.shipping_address) as _,
        order.created_at,
        expires_at,
        &product_ids,
        &names,
        &prices,
        &quantities,
        from_cart,
        event.id,
        answer,
        claim.scope(),
        claim.key(),
        claim.id(),
        claim.is_client_key(),
        event.topic,
        event.event_type,
        Json(&event.envelope) as _,
        event.traceparent,
    )
    .fetch_one(db)
    .await?;
    Ok(placed == 1)
}

/// Releases checkouts that never became orders within `after` and that no request is
/// working on: each claim is deleted with an `order.cancelled` (reason
/// `checkout_failed`), on which the product service puts back whatever was reserved
/// under its order id, or refuses a reservation still on its way. Replicas share the work
/// with `SKIP LOCKED`.
#[tracing::instrument(level = "debug", skip_all, fields(db.system.name = "postgresql"))]
pub async fn release_stale_checkouts(db: &PgPool, after: Duration, limit: i64) -> Result<Vec<Uuid>, Error> {
    let mut tx = db.begin().await?;
    let released = sqlx::query!(
        r#"DELETE FROM ordering.idempotency_keys WHERE (scope, key) IN (
               SELECT scope, key FROM ordering.idempotency_keys
               WHERE status IS NULL AND running_until < now() AND created_at < now() - make_interval(secs => $1)
               ORDER BY running_until LIMIT $2 FOR UPDATE SKIP LOCKED)
           RETURNING scope, progress AS "progress: Json<Progress>""#,
        after.as_secs_f64(),
        limit
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut orders = Vec::with_capacity(released.len());
    for row in released {
        let (Ok(user_id), Some(Json(progress))) = (row.scope.parse::<Uuid>(), row.progress) else {
            tracing::warn!(scope = row.scope, "an unfinished checkout without its order; forgotten");
            continue;
        };
        checkout_failed(&mut tx, progress.order_id, user_id).await?;
        orders.push(progress.order_id);
    }
    tx.commit().await?;
    Ok(orders)
}

/// Releases one checkout now (it may have reserved, but can't become an order): its claim
/// is deleted with the `order.cancelled` that frees what was reserved, unless the
/// recovery job got there first.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn abandon_checkout(
    db: &PgPool,
    claim: &Claim<Progress>,
    order_id: Uuid,
    user_id: Uuid,
) -> Result<(), Error> {
    let mut tx = db.begin().await?;
    let taken = sqlx::query!(
        "DELETE FROM ordering.idempotency_keys WHERE scope = $1 AND key = $2 AND claim = $3",
        claim.scope(),
        claim.key(),
        claim.id()
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if taken == 1 {
        checkout_failed(&mut tx, order_id, user_id).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The `order.cancelled` of a checkout that never became an order.
async fn checkout_failed(tx: &mut PgConnection, order_id: Uuid, user_id: Uuid) -> Result<(), Error> {
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
