//! Reservations: an order's units taken from stock in one statement, then settled when
//! the order is paid (sold) or cancelled or expired (back on sale).

use std::borrow::Cow;

use common::contracts::{EventType, StockChanged};
use common::events::Outgoing;
use common::money::Money;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::*;
use crate::domain::{Product, ReservationEvent, ReservationLine, ReservationStatus};
use crate::error::Error;

/// One reserved line, as the order service needs it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ReservedItem {
    pub product_id: Uuid,
    pub name: String,
    pub quantity: i32,
    /// The product's price at reservation time, which the order keeps.
    pub unit_price: Money,
    #[schema(example = "USD")]
    pub currency: String,
}

/// The outcome of a reservation request.
#[derive(Debug)]
pub struct Reservation {
    pub status: ReservationStatus,
    pub items: Vec<ReservedItem>,
    /// `false` when an earlier request for the same order made it.
    pub created: bool,
}

pub(super) async fn reserved_items(tx: &mut PgConnection, order_id: Uuid) -> Result<Vec<ReservedItem>, Error> {
    Ok(sqlx::query_as!(
        ReservedItem,
        r#"SELECT ri.product_id, p.name, ri.quantity, ri.unit_price AS "unit_price: Money", p.currency
           FROM catalog.reservation_items ri JOIN catalog.products p ON p.id = ri.product_id
           WHERE ri.order_id = $1 ORDER BY ri.product_id"#,
        order_id
    )
    .fetch_all(&mut *tx)
    .await?)
}

/// Reserves every line or none, in one statement (its own transaction): the products
/// are locked in id order (two reservations of the same products cannot deadlock), and
/// only if every line can be had are the reservation claimed, the stock taken, the lines
/// and prices kept and each product's `product.stock_changed` written. A reservation
/// already made for the order is answered as it stands (a retry); one released first (its
/// order ended) is refused. `line_index` maps a merged line back to the request's first
/// line for that product.
///
/// The lines go in as JSON rather than arrays: an array's length is known to the plan
/// made for each call and not to the one made once, so PostgreSQL planned the statement
/// again on every call, which cost more than running it.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql", %order_id))]
pub async fn reserve(
    db: &PgPool,
    order_id: Uuid,
    lines: &[ReservationLine],
    line_index: impl Fn(Uuid) -> usize,
) -> Result<(Reservation, Vec<Product>), Error> {
    let wanted: Vec<serde_json::Value> =
        lines.iter().map(|l| serde_json::json!({"product_id": l.product_id, "quantity": l.quantity})).collect();
    // Each product's event, its new stock filled in by the statement.
    let mut events = Vec::with_capacity(lines.len());
    for line in lines {
        let reason = Cow::Borrowed("reserved");
        let data = StockChanged { product_id: line.product_id, stock: 0, reason, order_id: Some(order_id) };
        let event = Outgoing::new(EventType::ProductStockChanged, line.product_id, &data)?;
        events.push(serde_json::json!({"product_id": line.product_id, "id": event.id, "envelope": event.envelope}));
    }
    let traceparent = common::trace::outgoing();
    let rows = sqlx::query!(
        r#"WITH lines AS (
               SELECT l.product_id, l.quantity FROM jsonb_to_recordset($2) AS l(product_id uuid, quantity int)),
           earlier AS (
               SELECT status FROM catalog.reservations WHERE order_id = $1),
           locked AS (
               SELECT p.id, p.stock, p.deleted_at IS NULL AS live FROM catalog.products p
               WHERE p.id IN (SELECT product_id FROM lines) AND NOT EXISTS (SELECT 1 FROM earlier)
               ORDER BY p.id FOR UPDATE),
           verdict AS (
               SELECT NOT EXISTS (SELECT 1 FROM earlier)
                      AND bool_and(k.id IS NOT NULL AND k.live AND k.stock >= l.quantity) AS ok
               FROM lines l LEFT JOIN locked k ON k.id = l.product_id),
           claimed AS (
               INSERT INTO catalog.reservations (order_id, status)
               SELECT $1, 'reserved' FROM verdict WHERE ok
               ON CONFLICT (order_id) DO NOTHING RETURNING order_id),
           taken AS (
               UPDATE catalog.products p SET stock = p.stock - l.quantity, updated_at = clock_timestamp()
               FROM lines l, claimed
               WHERE p.id = l.product_id
               RETURNING p.id, p.sku, p.name, p.description, p.price, p.currency, p.stock, p.category_id,
                         p.created_at, p.updated_at, l.quantity),
           items AS (
               INSERT INTO catalog.reservation_items (order_id, product_id, quantity, unit_price)
               SELECT $1, id, quantity, price FROM taken),
           events AS (
               INSERT INTO catalog.outbox (id, topic, aggregate_id, event_type, envelope, traceparent)
               SELECT e.id, $3, t.id, $4, jsonb_set(e.envelope, '{data,stock}', to_jsonb(t.stock)), $5
               FROM taken t JOIN jsonb_to_recordset($6) AS e(product_id uuid, id uuid, envelope jsonb)
                 ON e.product_id = t.id
               ORDER BY t.id)
           SELECT (SELECT status FROM earlier) AS "earlier?: ReservationStatus",
                  (SELECT ok FROM verdict) AS "ok?",
                  t.id AS "id?", t.sku AS "sku?", t.name AS "name?", t.description AS "description?",
                  t.price AS "price?: Money", t.currency AS "currency?", t.stock AS "stock?",
                  t.category_id AS "category_id?", t.created_at AS "created_at?", t.updated_at AS "updated_at?",
                  t.quantity AS "quantity?"
           FROM (SELECT 1) AS one LEFT JOIN taken t ON true
           ORDER BY t.id"#,
        order_id,
        serde_json::Value::Array(wanted) as _,
        EventType::ProductStockChanged.topic(),
        EventType::ProductStockChanged.as_str(),
        traceparent,
        serde_json::Value::Array(events) as _,
    )
    .fetch_all(db)
    .await?;
    let first = rows.first().ok_or_else(|| Error::Database(sqlx::Error::RowNotFound))?;
    let (earlier, ok) = (first.earlier, first.ok.unwrap_or(false));
    let mut taken = Vec::with_capacity(rows.len());
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        let (Some(id), Some(sku), Some(name), Some(description), Some(price), Some(currency), Some(stock)) =
            (row.id, row.sku, row.name, row.description, row.price, row.currency, row.stock)
        else {
            continue;
        };
        let (Some(category_id), Some(created_at), Some(updated_at), Some(quantity)) =
            (row.category_id, row.created_at, row.updated_at, row.quantity)
        else {
            continue;
        };
        let product =
            Product { id, sku, name, description, price, currency, stock, category_id, created_at, updated_at };
        items.push(ReservedItem {
            product_id: id,
            name: product.name.clone(),
            quantity,
            unit_price: price,
            currency: product.currency.clone(),
        });
        taken.push(product);
    }
    if !taken.is_empty() {
        return Ok((Reservation { status: ReservationStatus::Reserved, items, created: true }, taken));
    }
    if earlier.is_none() && !ok {
        // Some line could not be had: nothing was taken; name the first such line.
        let mut conn = db.acquire().await?;
        for line in lines {
            let available = available_stock(&mut conn, line.product_id).await?;
            if available.is_none_or(|available| available < line.quantity) {
                return Err(match available {
                    Some(available) => Error::InsufficientStock { product_id: line.product_id, available },
                    None => Error::UnknownProduct { line: line_index(line.product_id) },
                });
            }
        }
        // Enough came back meanwhile (a cancellation): the caller may simply try again.
        return Err(Error::InsufficientStock { product_id: lines[0].product_id, available: 0 });
    }
    // Made before (a retry), or by a request for the same order a moment ago.
    let mut conn = db.acquire().await?;
    let status = sqlx::query_scalar!(
        r#"SELECT status AS "status: ReservationStatus" FROM catalog.reservations WHERE order_id = $1"#,
        order_id
    )
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| Error::Database(sqlx::Error::RowNotFound))?;
    if status == ReservationStatus::Released {
        return Err(Error::ReservationReleased);
    }
    let items = reserved_items(&mut conn, order_id).await?;
    Ok((Reservation { status, items, created: false }, Vec::new()))
}

/// Applies an order's fate to its reservation: paid commits it, cancelled or expired
/// releases it and puts its units back. Returns the products whose stock changed.
/// An order that ended before any reservation arrived leaves a released marker, so a late
/// reservation for it is refused instead of holding stock forever.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql", %order_id))]
pub async fn settle_reservation(
    tx: &mut PgConnection,
    order_id: Uuid,
    event: ReservationEvent,
) -> Result<Vec<Uuid>, Error> {
    if event == ReservationEvent::Paid {
        // The usual case in one statement: a held reservation is committed.
        let (from, to) = (ReservationStatus::Reserved, ReservationStatus::Committed);
        debug_assert_eq!(from.after(event), Some(to));
        let committed = sqlx::query!(
            "UPDATE catalog.reservations SET status = $3, updated_at = clock_timestamp()
             WHERE order_id = $1 AND status = $2",
            order_id,
            from.as_str(),
            to.as_str()
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if committed == 1 {
            return Ok(Vec::new());
        }
    }
    let lock = || {
        sqlx::query_scalar!(
            r#"SELECT status AS "status: ReservationStatus" FROM catalog.reservations WHERE order_id = $1 FOR UPDATE"#,
            order_id
        )
    };
    let mut status = lock().fetch_optional(&mut *tx).await?;
    if status.is_none() && event == ReservationEvent::Ended {
        let marked = sqlx::query!(
            "INSERT INTO catalog.reservations (order_id, status) VALUES ($1, 'released') ON CONFLICT DO NOTHING",
            order_id
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if marked == 1 {
            return Ok(Vec::new());
        }
        // A reservation for the order committed while the marker waited for it: settle
        // that one, or its units would stay held for an order that is over.
        status = lock().fetch_optional(&mut *tx).await?;
    }
    let Some(status) = status else {
        tracing::warn!(%order_id, "an order was paid without a reservation");
        return Ok(Vec::new());
    };
    let Some(next) = status.after(event) else { return Ok(Vec::new()) };
    sqlx::query!(
        "UPDATE catalog.reservations SET status = $2, updated_at = clock_timestamp() WHERE order_id = $1",
        order_id,
        next.as_str()
    )
    .execute(&mut *tx)
    .await?;
    if next != ReservationStatus::Released {
        return Ok(Vec::new());
    }
    let restocked = sqlx::query_as!(
        Product,
        r#"UPDATE catalog.products p SET stock = p.stock + ri.quantity, updated_at = clock_timestamp()
           FROM catalog.reservation_items ri
           WHERE ri.order_id = $1 AND p.id = ri.product_id
           RETURNING p.id, p.sku, p.name, p.description, p.price AS "price: Money", p.currency, p.stock,
                     p.category_id, p.created_at, p.updated_at"#,
        order_id
    )
    .fetch_all(&mut *tx)
    .await?;
    for product in &restocked {
        stock_changed(tx, product, Some(order_id), "released").await?;
    }
    Ok(restocked.into_iter().map(|p| p.id).collect())
}

/// The products of an order's reservation as they are now, deleted or not (to refresh
/// the cache after a settlement).
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn reservation_products(db: &PgPool, order_id: Uuid) -> Result<Vec<(Product, bool)>, Error> {
    let rows: Vec<ProductState> = sqlx::query_as(&format!(
        "SELECT {PRODUCT_COLUMNS}, deleted_at IS NOT NULL AS deleted FROM catalog.products
         WHERE id IN (SELECT product_id FROM catalog.reservation_items WHERE order_id = $1)"
    ))
    .bind(order_id)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.product.into(), r.deleted)).collect())
}
