//! SQL for the `catalog` schema. Fixed queries are checked at compile time; the listing,
//! whose filters vary, is built with `QueryBuilder` so each combination gets a plan that
//! uses its index.

use std::borrow::Cow;

use common::contracts::{EventType, ProductUpdated, StockChanged};
use common::events;
use common::money::Money;
use rust_decimal::Decimal;
use sqlx::{PgConnection, PgExecutor, PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::TOPIC;
use crate::domain::{
    Category, CategoryName, Cursor, Listing, NewProduct, Page, Product, ProductChanges, ReservationEvent,
    ReservationLine, ReservationStatus, Sku, Sort,
};
use crate::error::{Error, on_constraint};

const PRODUCT_COLUMNS: &str = "id, sku, name, description, price, currency, stock, category_id, created_at, updated_at";

#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn insert_category(
    db: impl PgExecutor<'_>,
    name: &CategoryName,
    parent_id: Option<Uuid>,
) -> Result<Category, Error> {
    sqlx::query_as!(
        Category,
        "INSERT INTO catalog.categories (id, name, parent_id) VALUES ($1, $2, $3)
         RETURNING id, name, parent_id, created_at",
        Uuid::now_v7(),
        name.as_str(),
        parent_id
    )
    .fetch_one(db)
    .await
    .map_err(on_constraint)
}

#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn categories(db: &PgPool) -> Result<Vec<Category>, Error> {
    Ok(sqlx::query_as!(
        Category,
        "SELECT id, name, parent_id, created_at FROM catalog.categories ORDER BY lower(name), id"
    )
    .fetch_all(db)
    .await?)
}

#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn insert_product(tx: &mut PgConnection, product: &NewProduct) -> Result<Product, Error> {
    let id = Uuid::now_v7();
    let sku = product.sku.clone().unwrap_or_else(|| Sku::generate(id));
    let created = sqlx::query_as!(
        Product,
        r#"INSERT INTO catalog.products (id, sku, name, description, price, stock, category_id)
           VALUES ($1, $2, $3, $4, $5, $6, $7)
           RETURNING id, sku, name, description, price AS "price: Money", currency, stock, category_id,
                     created_at, updated_at"#,
        id,
        sku.as_str(),
        product.name.as_str(),
        product.description.as_str(),
        product.price.amount(),
        product.stock.get(),
        product.category_id
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(on_constraint)?;
    events::emit_event(tx, EventType::ProductCreated, created.id, &created).await?;
    Ok(created)
}

/// A live (not deleted) product.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn find_product(db: &PgPool, id: Uuid) -> Result<Option<Product>, Error> {
    Ok(sqlx::query_as!(
        Product,
        r#"SELECT id, sku, name, description, price AS "price: Money", currency, stock, category_id,
                  created_at, updated_at
           FROM catalog.products WHERE id = $1 AND deleted_at IS NULL"#,
        id
    )
    .fetch_optional(db)
    .await?)
}

/// Live products by id, in the order of `ids` (`None` where there is no such product or
/// it was deleted): a listing page's products that neither cache level held.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn find_products(db: &PgPool, ids: &[Uuid]) -> Result<Vec<Option<Product>>, Error> {
    let rows: Vec<ProductRow> = sqlx::query_as(&format!(
        "SELECT {PRODUCT_COLUMNS} FROM catalog.products WHERE id = ANY($1) AND deleted_at IS NULL"
    ))
    .bind(ids)
    .fetch_all(db)
    .await?;
    let mut by_id: std::collections::HashMap<Uuid, Product> = rows.into_iter().map(|r| (r.id, r.into())).collect();
    Ok(ids.iter().map(|id| by_id.remove(id)).collect())
}

#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn update_product(tx: &mut PgConnection, id: Uuid, changes: &ProductChanges) -> Result<Product, Error> {
    let updated = sqlx::query_as!(
        Product,
        r#"UPDATE catalog.products
           SET sku = COALESCE($2, sku),
               name = COALESCE($3, name),
               description = COALESCE($4, description),
               price = COALESCE($5, price),
               stock = COALESCE($6, stock),
               category_id = COALESCE($7, category_id),
               updated_at = clock_timestamp()
           WHERE id = $1 AND deleted_at IS NULL
           RETURNING id, sku, name, description, price AS "price: Money", currency, stock, category_id,
                     created_at, updated_at"#,
        id,
        changes.sku.as_ref().map(Sku::as_str),
        changes.name.as_ref().map(|n| n.as_str()),
        changes.description.as_ref().map(|d| d.as_str()),
        changes.price.map(|p| p.amount()),
        changes.stock.map(|s| s.get()),
        changes.category_id
    )
    .fetch_optional(&mut *tx)
    .await
    .map_err(on_constraint)?
    .ok_or(Error::NotFound)?;
    events::emit_event(
        tx,
        EventType::ProductUpdated,
        updated.id,
        &ProductUpdated { product: &updated, deleted: false },
    )
    .await?;
    if changes.stock.is_some() {
        stock_changed(tx, &updated, None, "set").await?;
    }
    Ok(updated)
}

#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn soft_delete(tx: &mut PgConnection, id: Uuid) -> Result<Product, Error> {
    let deleted = sqlx::query_as!(
        Product,
        r#"UPDATE catalog.products SET deleted_at = now(), updated_at = clock_timestamp()
           WHERE id = $1 AND deleted_at IS NULL
           RETURNING id, sku, name, description, price AS "price: Money", currency, stock, category_id,
                     created_at, updated_at"#,
        id
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(Error::NotFound)?;
    events::emit_event(tx, EventType::ProductUpdated, deleted.id, &ProductUpdated { product: &deleted, deleted: true })
        .await?;
    Ok(deleted)
}

async fn stock_changed(
    tx: &mut PgConnection,
    product: &Product,
    order_id: Option<Uuid>,
    reason: &str,
) -> Result<(), sqlx::Error> {
    let data = StockChanged { product_id: product.id, stock: product.stock, reason: Cow::Borrowed(reason), order_id };
    events::emit_event(tx, EventType::ProductStockChanged, product.id, &data).await?;
    Ok(())
}

/// What is left of a live product, after a guarded decrement refused: to tell "not
/// enough" (with the count) from "no such product".
async fn available_stock(tx: &mut PgConnection, id: Uuid) -> Result<Option<i32>, Error> {
    Ok(sqlx::query_scalar!("SELECT stock FROM catalog.products WHERE id = $1 AND deleted_at IS NULL", id)
        .fetch_optional(tx)
        .await?)
}

/// Moves stock by `delta`, never below zero: the guard is in the `UPDATE` itself, so
/// concurrent deltas cannot race past it.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn adjust_stock(tx: &mut PgConnection, id: Uuid, delta: i32) -> Result<Product, Error> {
    let adjusted = sqlx::query_as!(
        Product,
        r#"UPDATE catalog.products SET stock = stock + $2, updated_at = clock_timestamp()
           WHERE id = $1 AND deleted_at IS NULL AND stock + $2 >= 0 AND stock + $2 <= 1000000000
           RETURNING id, sku, name, description, price AS "price: Money", currency, stock, category_id,
                     created_at, updated_at"#,
        id,
        delta
    )
    .fetch_optional(&mut *tx)
    .await?;
    match adjusted {
        Some(product) => {
            stock_changed(tx, &product, None, "adjusted").await?;
            Ok(product)
        }
        None => {
            let available = available_stock(tx, id).await?.ok_or(Error::NotFound)?;
            if delta > 0 {
                return Err(Error::StockCapExceeded);
            }
            Err(Error::InsufficientStock { product_id: id, available })
        }
    }
}

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

async fn reserved_items(tx: &mut PgConnection, order_id: Uuid) -> Result<Vec<ReservedItem>, Error> {
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
        let status = sqlx::query_scalar!("SELECT status FROM catalog.reservations WHERE order_id = $1", order_id)
            .fetch_one(&mut *tx)
            .await?;
        let status = ReservationStatus::parse(&status).ok_or(Error::ReservationReleased)?;
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
    let lock =
        || sqlx::query_scalar!("SELECT status FROM catalog.reservations WHERE order_id = $1 FOR UPDATE", order_id);
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
    let Some(status) = status.as_deref().and_then(ReservationStatus::parse) else {
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

#[derive(sqlx::FromRow)]
struct ProductState {
    #[sqlx(flatten)]
    product: ProductRow,
    deleted: bool,
}

#[derive(sqlx::FromRow)]
struct ListedRow {
    #[sqlx(flatten)]
    product: ProductRow,
    rank: Option<f32>,
}

#[derive(sqlx::FromRow)]
struct ProductRow {
    id: Uuid,
    sku: String,
    name: String,
    description: String,
    price: Money,
    currency: String,
    stock: i32,
    category_id: Uuid,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

impl From<ProductRow> for Product {
    fn from(r: ProductRow) -> Self {
        Product {
            id: r.id,
            sku: r.sku,
            name: r.name,
            description: r.description,
            price: r.price,
            currency: r.currency,
            stock: r.stock,
            category_id: r.category_id,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// The SQL of one listing page, after `prefix` (`EXPLAIN …` in the plan tests).
pub fn list_query<'a>(listing: &'a Listing, prefix: &str) -> QueryBuilder<'a, Postgres> {
    let mut query = QueryBuilder::<Postgres>::new(prefix);
    query.push("SELECT ");
    query.push(PRODUCT_COLUMNS);
    match &listing.q {
        Some(q) => {
            query.push(", ts_rank(search, websearch_to_tsquery('english', ");
            query.push_bind(q.clone());
            query.push(")) AS rank FROM catalog.products WHERE deleted_at IS NULL AND search @@ websearch_to_tsquery('english', ");
            query.push_bind(q.clone());
            query.push(")");
        }
        None => {
            query.push(", NULL::real AS rank FROM catalog.products WHERE deleted_at IS NULL");
        }
    }
    if let Some(category_id) = listing.category_id {
        query.push(" AND category_id = ").push_bind(category_id);
    }
    if let Some(min) = listing.min_price {
        query.push(" AND price >= ").push_bind(min);
    }
    if let Some(max) = listing.max_price {
        query.push(" AND price <= ").push_bind(max);
    }
    if listing.in_stock {
        query.push(" AND stock > 0");
    }
    match (&listing.cursor, listing.sort) {
        (Some(Cursor::Newest { created_at, id }), Sort::Newest) => {
            query.push(" AND (created_at, id) < (").push_bind(*created_at).push(", ").push_bind(*id).push(")");
        }
        (Some(Cursor::Price { price, id }), Sort::PriceAsc) => {
            query.push(" AND (price, id) > (").push_bind(*price).push(", ").push_bind(*id).push(")");
        }
        (Some(Cursor::Price { price, id }), Sort::PriceDesc) => {
            query.push(" AND (price, id) < (").push_bind(*price).push(", ").push_bind(*id).push(")");
        }
        (Some(Cursor::Relevance { rank, id }), Sort::Relevance) => {
            let q = listing.q.clone().unwrap_or_default();
            query.push(" AND (ts_rank(search, websearch_to_tsquery('english', ").push_bind(q);
            query.push(")), id) < (").push_bind(*rank).push("::real, ").push_bind(*id).push(")");
        }
        _ => {}
    }
    query.push(match listing.sort {
        Sort::Relevance => " ORDER BY rank DESC, id DESC",
        Sort::Newest => " ORDER BY created_at DESC, id DESC",
        Sort::PriceAsc => " ORDER BY price ASC, id ASC",
        Sort::PriceDesc => " ORDER BY price DESC, id DESC",
    });
    query.push(" LIMIT ").push_bind(listing.limit + 1);
    query
}

/// One page of live products in the listing's order, after its cursor.
#[tracing::instrument(skip_all, fields(db.system.name = "postgresql"))]
pub async fn list(db: &PgPool, listing: &Listing) -> Result<Page<Product>, Error> {
    let mut query = list_query(listing, "");
    let mut rows: Vec<ListedRow> = query.build_query_as().fetch_all(db).await?;
    let more = rows.len() as i64 > listing.limit;
    rows.truncate(listing.limit as usize);
    let next_cursor = if more {
        rows.last().map(|last| {
            let p = &last.product;
            match listing.sort {
                Sort::Relevance => Cursor::Relevance { rank: last.rank.unwrap_or_default(), id: p.id },
                Sort::Newest => Cursor::Newest { created_at: p.created_at, id: p.id },
                Sort::PriceAsc | Sort::PriceDesc => Cursor::Price { price: Decimal::from(p.price), id: p.id },
            }
            .encode()
        })
    } else {
        None
    };
    Ok(Page { items: rows.into_iter().map(|r| r.product.into()).collect(), next_cursor })
}
