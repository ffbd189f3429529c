//! Reservations: an order's units taken from stock in one statement, then settled when
//! the order is paid (sold) or cancelled or expired (back on sale).

use std::borrow::Cow;

use common::contracts::{EventType, StockChanged};
use common::events;
use common::money::Money;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::*;
use crate::TOPIC;
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

/// Reserves every line or none. The reservation row is claimed first, so a retry for the
/// same order finds it and reserves nothing more; each decrement guards on the stock it
/// needs, so the database, not this code, decides who gets the last unit. `line_index`
/// maps a merged line back to the request's first line for that product.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql", %order_id))]
pub async fn reserve(
    tx: &mut PgConnection,
    order_id: Uuid,
    lines: &[ReservationLine],
    line_index: impl Fn(Uuid) -> usize,
) -> Result<(Reservation, Vec<Product>), Error> {
    let claimed = sqlx::query!(
        "INSERT INTO catalog.reservations (order_id, status) VALUES ($1, 'reserved') ON CONFLICT (order_id) DO NOTHING",
        order_id
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if claimed == 0 {
        let status = sqlx::query_scalar!(
            r#"SELECT status AS "status: ReservationStatus" FROM catalog.reservations WHERE order_id = $1"#,
            order_id
        )
        .fetch_one(&mut *tx)
        .await?;
        if status == ReservationStatus::Released {
            return Err(Error::ReservationReleased);
        }
        let items = reserved_items(tx, order_id).await?;
        return Ok((Reservation { status, items, created: false }, Vec::new()));
    }
    // Every line in one statement: the rows are locked in the lines' order (by product
    // id), so two reservations of the same products cannot deadlock, and each decrement
    // guards on the stock it needs.
    let product_ids: Vec<Uuid> = lines.iter().map(|l| l.product_id).collect();
    let quantities: Vec<i32> = lines.iter().map(|l| l.quantity).collect();
    let taken = sqlx::query_as!(
        Product,
        r#"WITH locked AS (
               SELECT id FROM catalog.products WHERE id = ANY($2) ORDER BY id FOR UPDATE),
           taken AS (
               UPDATE catalog.products p SET stock = p.stock - l.quantity, updated_at = clock_timestamp()
               FROM UNNEST($2::uuid[], $3::int[]) AS l(product_id, quantity)
               JOIN locked k ON k.id = l.product_id
               WHERE p.id = l.product_id AND p.deleted_at IS NULL AND p.stock >= l.quantity
               RETURNING p.id, p.sku, p.name, p.description, p.price, p.currency, p.stock, p.category_id,
                         p.created_at, p.updated_at, l.quantity),
           items AS (
               INSERT INTO catalog.reservation_items (order_id, product_id, quantity, unit_price)
               SELECT $1, id, quantity, price FROM taken)
           SELECT id AS "id!", sku AS "sku!", name AS "name!", description AS "description!",
                  price AS "price!: Money", currency AS "currency!", stock AS "stock!",
                  category_id AS "category_id!", created_at AS "created_at!", updated_at AS "updated_at!"
           FROM taken ORDER BY id"#,
        order_id,
        &product_ids,
        &quantities
    )
    .fetch_all(&mut *tx)
    .await?;
    if taken.len() < lines.len() {
        // Some line could not be had: the caller's transaction is rolled back; name the
        // first such line.
        let line = lines.iter().find(|l| !taken.iter().any(|p| p.id == l.product_id)).unwrap_or(&lines[0]);
        return Err(match available_stock(tx, line.product_id).await? {
            Some(available) => Error::InsufficientStock { product_id: line.product_id, available },
            None => Error::UnknownProduct { line: line_index(line.product_id) },
        });
    }
    let events: Vec<_> = taken
        .iter()
        .map(|product| {
            let reason = Cow::Borrowed("reserved");
            let data = StockChanged { product_id: product.id, stock: product.stock, reason, order_id: Some(order_id) };
            (EventType::ProductStockChanged.as_str(), product.id, data)
        })
        .collect();
    events::emit_many(tx, TOPIC, &events).await?;
    let items = taken
        .iter()
        .zip(lines)
        .map(|(product, line)| ReservedItem {
            product_id: product.id,
            name: product.name.clone(),
            quantity: line.quantity,
            unit_price: product.price,
            currency: product.currency.clone(),
        })
        .collect();
    let changed = taken;
    Ok((Reservation { status: ReservationStatus::Reserved, items, created: true }, changed))
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
