//! Orders: reading them, and every guarded status move with its event. (Placing one is
//! the end of its checkout: `checkouts::place_order`.)

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use common::contracts::OrderToPay;
use common::events;
use common::money::Money;
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use super::*;
use crate::domain::{Action, Order, OrderLine, OrderStatus, ShippingAddress, StatusChanged};
use crate::error::Error;

pub(super) struct OrderRow {
    id: Uuid,
    user_id: Uuid,
    status: OrderStatus,
    total: Money,
    currency: String,
    shipping_address: Json<ShippingAddress>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    refunded_total: Money,
    expires_at: DateTime<Utc>,
}

impl OrderRow {
    fn into_order(self, items: Vec<OrderLine>) -> Order {
        let status = self.status;
        Order {
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
        }
    }
}

pub(super) struct ItemRow {
    order_id: Uuid,
    product_id: Uuid,
    name: String,
    unit_price: Money,
    quantity: i32,
}

/// The lines of `orders`, by order id.
pub(super) async fn items_of(db: impl PgExecutor<'_>, orders: &[Uuid]) -> Result<HashMap<Uuid, Vec<OrderLine>>, Error> {
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

#[tracing::instrument(skip_all, fields(db.system.name = "postgresql", %id))]
pub async fn order_to_pay(db: &PgPool, id: Uuid) -> Result<Option<OrderToPay>, Error> {
    Ok(sqlx::query_as!(
        OrderToPay,
        r#"SELECT id, user_id, status AS "status: OrderStatus", total AS "total: Money", currency
           FROM ordering.orders WHERE id = $1"#,
        id
    )
    .fetch_optional(db)
    .await?)
}

/// [`find_order_in`] on a connection of the pool (whose span it is).
pub async fn find_order(db: &PgPool, id: Uuid) -> Result<Option<Order>, Error> {
    find_order_in(&mut *db.acquire().await?, id).await
}

/// The order with its lines, in one statement.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql", %id))]
pub async fn find_order_in(conn: &mut PgConnection, id: Uuid) -> Result<Option<Order>, Error> {
    let rows = sqlx::query!(
        r#"SELECT o.id, o.user_id, o.status AS "status: OrderStatus", o.total AS "total: Money", o.currency,
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
    Ok(order.map(|row| row.into_order(lines)))
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
                r#"SELECT id, user_id, status AS "status: OrderStatus", total AS "total: Money", currency,
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
                r#"SELECT id, user_id, status AS "status: OrderStatus", total AS "total: Money", currency,
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
    Ok(rows
        .into_iter()
        .map(|row| {
            let lines = items.remove(&row.id).unwrap_or_default();
            row.into_order(lines)
        })
        .collect())
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
        let now = sqlx::query_scalar!(
            r#"SELECT status AS "status: OrderStatus" FROM ordering.orders WHERE id = $1"#,
            order.id
        )
        .fetch_one(&mut *tx)
        .await?;
        return Err(Error::ChangedConcurrently(now.as_str()));
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
