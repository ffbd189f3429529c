//! SQL for the `ordering` schema: carts, checkouts in flight, orders and their lines.
//! Every status change is an `UPDATE … WHERE status = <the status it was read in>`, so of
//! two concurrent moves of one order only one can win, and it writes its event in the
//! same transaction.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::contracts::EventType;
use common::events;
use common::idempotency::StoredAnswer;
use common::money::Money;
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use crate::domain::{Action, Line, MAX_LINES, Order, OrderLine, OrderStatus, ShippingAddress, StatusChanged};
use crate::error::Error;

/// The largest possible id, where a first page starts (ids are compared with `<`).
const AFTER_ALL: Uuid = Uuid::max();

/// The data of an `order.*` event, with the lines (on creation) borrowed from the order.
type OrderEvent<'a> = common::contracts::OrderEvent<'a, &'a [OrderLine]>;

/// The event of a status move (`order.paid`, `order.cancelled`, `order.expired`, …).
fn moved_event<'a>(
    order_id: Uuid,
    user_id: Uuid,
    from: OrderStatus,
    to: OrderStatus,
    total: Money,
    currency: &'a str,
    cause: Cause<'a>,
) -> OrderEvent<'a> {
    OrderEvent {
        order_id,
        user_id,
        status: to,
        previous_status: Some(from),
        reason: cause.reason.map(Cow::Borrowed),
        total: Some(total),
        currency: Cow::Borrowed(currency),
        items: None,
        payment_id: cause.payment_id,
    }
}

// --- carts -----------------------------------------------------------------------------

/// The cart's lines, oldest first.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn cart(db: impl PgExecutor<'_>, user_id: Uuid) -> Result<Vec<Line>, Error> {
    Ok(sqlx::query_as!(
        Line,
        "SELECT product_id, quantity FROM ordering.cart_items WHERE user_id = $1 ORDER BY added_at, product_id",
        user_id
    )
    .fetch_all(db)
    .await?)
}

/// Sets a product's quantity in the cart, adding the line if needed, unless that would
/// make more than [`MAX_LINES`] lines.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn put_cart_item(db: &PgPool, user_id: Uuid, product_id: Uuid, quantity: i32) -> Result<(), Error> {
    let written = sqlx::query!(
        "INSERT INTO ordering.cart_items (user_id, product_id, quantity)
         SELECT $1, $2, $3
         WHERE (SELECT count(*) FROM ordering.cart_items WHERE user_id = $1) < $4
            OR EXISTS (SELECT 1 FROM ordering.cart_items WHERE user_id = $1 AND product_id = $2)
         ON CONFLICT (user_id, product_id) DO UPDATE SET quantity = EXCLUDED.quantity",
        user_id,
        product_id,
        quantity,
        MAX_LINES as i64
    )
    .execute(db)
    .await?
    .rows_affected();
    if written == 0 {
        return Err(Error::CartFull(MAX_LINES));
    }
    Ok(())
}

#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn remove_cart_items(db: impl PgExecutor<'_>, user_id: Uuid, product_ids: &[Uuid]) -> Result<(), Error> {
    sqlx::query!("DELETE FROM ordering.cart_items WHERE user_id = $1 AND product_id = ANY($2)", user_id, product_ids)
        .execute(db)
        .await?;
    Ok(())
}

#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn clear_cart(db: &PgPool, user_id: Uuid) -> Result<(), Error> {
    sqlx::query!("DELETE FROM ordering.cart_items WHERE user_id = $1", user_id).execute(db).await?;
    Ok(())
}

// --- checkouts in flight ---------------------------------------------------------------

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

// --- orders ----------------------------------------------------------------------------

struct OrderRow {
    id: Uuid,
    user_id: Uuid,
    status: String,
    total: Money,
    currency: String,
    shipping_address: Json<ShippingAddress>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    refunded_total: Money,
    expires_at: DateTime<Utc>,
}

impl OrderRow {
    fn into_order(self, items: Vec<OrderLine>) -> Result<Order, Error> {
        let status = OrderStatus::parse(&self.status)
            .ok_or_else(|| Error::Database(sqlx::Error::Decode(format!("order status {:?}", self.status).into())))?;
        Ok(Order {
            id: self.id,
            user_id: self.user_id,
            status,
            items,
            total: self.total,
            currency: self.currency,
            shipping_address: self.shipping_address.0,
            created_at: self.created_at,
            updated_at: self.updated_at,
            refunded_total: self.refunded_total,
            expires_at: (status == OrderStatus::PendingPayment).then_some(self.expires_at),
        })
    }
}

struct ItemRow {
    order_id: Uuid,
    product_id: Uuid,
    name: String,
    unit_price: Money,
    quantity: i32,
}

/// The lines of `orders`, by order id.
async fn items_of(db: impl PgExecutor<'_>, orders: &[Uuid]) -> Result<HashMap<Uuid, Vec<OrderLine>>, Error> {
    let rows = sqlx::query_as!(
        ItemRow,
        r#"SELECT order_id, product_id, name, unit_price AS "unit_price: Money", quantity
           FROM ordering.order_items WHERE order_id = ANY($1) ORDER BY order_id, product_id"#,
        orders
    )
    .fetch_all(db)
    .await?;
    let mut items: HashMap<Uuid, Vec<OrderLine>> = HashMap::new();
    for row in rows {
        let line = OrderLine::new(row.product_id, row.name, row.unit_price, row.quantity)
            .map_err(|e| Error::Database(sqlx::Error::Decode(e.into())))?;
        items.entry(row.order_id).or_default().push(line);
    }
    Ok(items)
}

/// Turns a checkout into its order, with its `order.created`: in one statement the
/// checkout record is taken, the order and its lines stored and (`from_cart`) the ordered
/// products leave the cart. `false`, with nothing written, if the record was gone (its
/// lease ran out and a retry or the recovery job took it).
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql", order_id = %order.id))]
pub async fn place_order(tx: &mut PgConnection, order: &Order, from_cart: bool) -> Result<bool, Error> {
    let expires_at = order.expires_at.unwrap_or(order.created_at);
    let product_ids: Vec<Uuid> = order.items.iter().map(|i| i.product_id).collect();
    let names: Vec<String> = order.items.iter().map(|i| i.name.clone()).collect();
    let prices: Vec<rust_decimal::Decimal> = order.items.iter().map(|i| i.unit_price.amount()).collect();
    let quantities: Vec<i32> = order.items.iter().map(|i| i.quantity).collect();
    let placed = sqlx::query_scalar!(
        r#"WITH taken AS (
               DELETE FROM ordering.checkouts WHERE order_id = $1 RETURNING order_id),
           placed AS (
               INSERT INTO ordering.orders
                   (id, user_id, status, total, currency, shipping_address, created_at, updated_at, expires_at)
               SELECT order_id, $2, $3, $4, $5, $6, $7, $7, $8 FROM taken
               RETURNING id),
           lines AS (
               INSERT INTO ordering.order_items (order_id, product_id, name, unit_price, quantity)
               SELECT placed.id, l.* FROM placed, UNNEST($9::uuid[], $10::text[], $11::numeric[], $12::int[]) AS l),
           emptied AS (
               DELETE FROM ordering.cart_items
               WHERE $13 AND user_id = $2 AND product_id = ANY($9) AND EXISTS (SELECT 1 FROM placed))
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
        from_cart
    )
    .fetch_one(&mut *tx)
    .await?;
    if placed == 0 {
        return Ok(false);
    }
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
    events::emit_event(tx, EventType::OrderCreated, order.id, &event).await?;
    Ok(true)
}

/// [`find_order_in`] on a connection of the pool (whose span it is).
pub async fn find_order(db: &PgPool, id: Uuid) -> Result<Option<Order>, Error> {
    find_order_in(&mut *db.acquire().await?, id).await
}

/// The order with its lines, in one statement.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql", %id))]
pub async fn find_order_in(conn: &mut PgConnection, id: Uuid) -> Result<Option<Order>, Error> {
    let rows = sqlx::query!(
        r#"SELECT o.id, o.user_id, o.status, o.total AS "total: Money", o.currency,
                  o.shipping_address AS "shipping_address: Json<ShippingAddress>", o.created_at, o.updated_at,
                  o.refunded_total AS "refunded_total: Money", o.expires_at,
                  i.product_id AS "product_id?", i.name AS "name?", i.unit_price AS "unit_price?: Money",
                  i.quantity AS "quantity?"
           FROM ordering.orders o LEFT JOIN ordering.order_items i ON i.order_id = o.id
           WHERE o.id = $1 ORDER BY i.product_id"#,
        id
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut lines = Vec::with_capacity(rows.len());
    let mut order = None;
    for r in rows {
        if let (Some(product_id), Some(name), Some(unit_price), Some(quantity)) =
            (r.product_id, r.name, r.unit_price, r.quantity)
        {
            let line = OrderLine::new(product_id, name, unit_price, quantity)
                .map_err(|e| Error::Database(sqlx::Error::Decode(e.into())))?;
            lines.push(line);
        }
        order.get_or_insert(OrderRow {
            id: r.id,
            user_id: r.user_id,
            status: r.status,
            total: r.total,
            currency: r.currency,
            shipping_address: r.shipping_address,
            created_at: r.created_at,
            updated_at: r.updated_at,
            refunded_total: r.refunded_total,
            expires_at: r.expires_at,
        });
    }
    order.map(|row| row.into_order(lines)).transpose()
}

/// A page of orders, newest first: one user's, or everyone's (`user_id` `None`), after
/// the cursor's id. Fetches one more than `limit` to tell whether there is a next page.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn list_orders(
    db: &PgPool,
    user_id: Option<Uuid>,
    after: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Order>, Error> {
    let after = after.unwrap_or(AFTER_ALL);
    // Two fixed queries rather than one with `$1 IS NULL OR …`, so each has the plan of
    // its index.
    let rows = match user_id {
        Some(user_id) => {
            sqlx::query_as!(
                OrderRow,
                r#"SELECT id, user_id, status, total AS "total: Money", currency,
                          shipping_address AS "shipping_address: Json<ShippingAddress>", created_at, updated_at,
                          refunded_total AS "refunded_total: Money", expires_at
                   FROM ordering.orders WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3"#,
                user_id,
                after,
                limit + 1
            )
            .fetch_all(db)
            .await?
        }
        None => {
            sqlx::query_as!(
                OrderRow,
                r#"SELECT id, user_id, status, total AS "total: Money", currency,
                          shipping_address AS "shipping_address: Json<ShippingAddress>", created_at, updated_at,
                          refunded_total AS "refunded_total: Money", expires_at
                   FROM ordering.orders WHERE id < $1 ORDER BY id DESC LIMIT $2"#,
                after,
                limit + 1
            )
            .fetch_all(db)
            .await?
        }
    };
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let mut items = items_of(db, &ids).await?;
    rows.into_iter()
        .map(|row| {
            let lines = items.remove(&row.id).unwrap_or_default();
            row.into_order(lines)
        })
        .collect()
}

/// Records what the order's payment has refunded so far (`refunded_total` of a
/// `payment.refunded`; a late or repeated event never lowers it) and returns the order as
/// it now is, locked for the move the refund may cause.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql", %id))]
pub async fn record_refunded(conn: &mut PgConnection, id: Uuid, refunded_total: Money) -> Result<Option<Order>, Error> {
    let updated = sqlx::query_scalar!(
        "UPDATE ordering.orders SET refunded_total = greatest(refunded_total, $2), updated_at = clock_timestamp()
         WHERE id = $1 RETURNING id",
        id,
        refunded_total.amount()
    )
    .fetch_optional(&mut *conn)
    .await?;
    if updated.is_none() {
        return Ok(None);
    }
    find_order_in(conn, id).await
}

/// Why a move happened, for its event.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cause<'a> {
    pub reason: Option<&'a str>,
    pub payment_id: Option<Uuid>,
}

/// Applies `action` to `order` (as it was read) and writes its event, guarded on the
/// status it was read in: if another request moved the order since, nothing changes.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql", order_id = %order.id, ?action))]
pub async fn move_order(
    tx: &mut PgConnection,
    order: &Order,
    action: Action,
    cause: Cause<'_>,
) -> Result<Order, Error> {
    let next = order.status.transition(action)?;
    let updated_at = sqlx::query_scalar!(
        "UPDATE ordering.orders SET status = $3, updated_at = clock_timestamp() WHERE id = $1 AND status = $2
         RETURNING updated_at",
        order.id,
        order.status.as_str(),
        next.as_str()
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(updated_at) = updated_at else {
        let now = sqlx::query_scalar!("SELECT status FROM ordering.orders WHERE id = $1", order.id)
            .fetch_one(&mut *tx)
            .await?;
        let now = OrderStatus::parse(&now).map_or("unknown", OrderStatus::as_str);
        return Err(Error::ChangedConcurrently(now));
    };
    let moved = Order { status: next, updated_at, expires_at: None, ..order.clone() };
    let event = moved_event(moved.id, moved.user_id, order.status, next, moved.total, &moved.currency, cause);
    events::emit_event(tx, action.event_type(), moved.id, &event).await?;
    Ok(moved)
}

/// [`move_order`] for an order known only by its id, in one statement: applies `action`
/// if the order is in status `from`, with its event. `None` when it is not (or does not
/// exist): nothing changes, and the caller looks at the order to tell why.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql", %id, ?action))]
pub async fn move_from(
    tx: &mut PgConnection,
    id: Uuid,
    from: OrderStatus,
    action: Action,
    cause: Cause<'_>,
) -> Result<Option<(Uuid, StatusChanged)>, Error> {
    let next = from.transition(action)?;
    let moved = sqlx::query!(
        r#"UPDATE ordering.orders SET status = $3, updated_at = clock_timestamp() WHERE id = $1 AND status = $2
           RETURNING user_id, total AS "total: Money", currency, updated_at"#,
        id,
        from.as_str(),
        next.as_str()
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(moved) = moved else { return Ok(None) };
    let event = moved_event(id, moved.user_id, from, next, moved.total, &moved.currency, cause);
    events::emit_event(tx, action.event_type(), id, &event).await?;
    Ok(Some((moved.user_id, StatusChanged::new(id, next, moved.updated_at))))
}

/// An order the expiry job cancelled.
#[derive(Debug, Clone)]
pub struct Expired {
    pub id: Uuid,
    pub user_id: Uuid,
    pub updated_at: DateTime<Utc>,
}

/// Cancels up to `limit` unpaid orders whose payment window has passed, each with an
/// `order.expired`. Replicas running this at once take different orders (`SKIP LOCKED`);
/// an order paid meanwhile no longer matches `status = 'pending_payment'`.
#[tracing::instrument(level = "debug", skip_all, fields(db.system.name = "postgresql"))]
pub async fn expire_due(db: &PgPool, limit: i64) -> Result<Vec<Expired>, Error> {
    // The statuses are literals so the planner can use the partial index of unpaid orders;
    // they are the status machine's (pending_payment + expire = cancelled, unit-tested).
    debug_assert_eq!(OrderStatus::PendingPayment.transition(Action::Expire), Ok(OrderStatus::Cancelled));
    let mut tx = db.begin().await?;
    let expired = sqlx::query!(
        r#"UPDATE ordering.orders SET status = 'cancelled', updated_at = clock_timestamp()
           WHERE id IN (SELECT id FROM ordering.orders WHERE status = 'pending_payment' AND expires_at <= now()
                        ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
             AND status = 'pending_payment'
           RETURNING id, user_id, total AS "total: Money", currency, updated_at"#,
        limit
    )
    .fetch_all(&mut *tx)
    .await?;
    for row in &expired {
        let cause = Cause { reason: Some("payment_timeout"), payment_id: None };
        let (from, to) = (OrderStatus::PendingPayment, OrderStatus::Cancelled);
        let event = moved_event(row.id, row.user_id, from, to, row.total, &row.currency, cause);
        events::emit_event(&mut tx, Action::Expire.event_type(), row.id, &event).await?;
    }
    tx.commit().await?;
    Ok(expired.into_iter().map(|r| Expired { id: r.id, user_id: r.user_id, updated_at: r.updated_at }).collect())
}
