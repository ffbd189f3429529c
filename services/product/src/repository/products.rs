//! Products: added, read, changed, deleted and restocked, each write with its event.

use std::borrow::Cow;

use common::contracts::{EventType, ProductUpdated, StockChanged};
use common::events;
use common::money::Money;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::*;
use crate::domain::{NewProduct, Product, ProductChanges, Sku};
use crate::error::{Error, on_constraint};

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

pub(super) async fn stock_changed(
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
pub(super) async fn available_stock(tx: &mut PgConnection, id: Uuid) -> Result<Option<i32>, Error> {
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
