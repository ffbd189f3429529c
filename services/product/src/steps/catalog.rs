//! Catalogue writes, the business steps behind the admin endpoints: each is one
//! transaction with its event, and the product cache is told of the change once it is
//! committed, before the write answers (so the writer reads its own write at once).

use uuid::Uuid;

use crate::Inner;
use crate::domain::{NewProduct, Product, ProductChanges};
use crate::error::Error;
use crate::repository;
use crate::steps::cache::Change;

/// Adds a product (`product.created`).
pub async fn create(state: &Inner, new: &NewProduct) -> Result<Product, Error> {
    let mut tx = state.db.begin().await?;
    let product = repository::insert_product(&mut tx, new).await?;
    committed(state, tx, product, Change::Listed).await
}

/// Changes some of a product's fields (`product.updated`, and `product.stock_changed`
/// when its stock was set).
pub async fn update(state: &Inner, id: Uuid, changes: &ProductChanges) -> Result<Product, Error> {
    let mut tx = state.db.begin().await?;
    let product = repository::update_product(&mut tx, id, changes).await?;
    committed(state, tx, product, Change::Listed).await
}

/// Takes a product out of the catalogue (`product.updated` with `deleted: true`).
pub async fn delete(state: &Inner, id: Uuid) -> Result<Product, Error> {
    let mut tx = state.db.begin().await?;
    let product = repository::soft_delete(&mut tx, id).await?;
    committed(state, tx, product, Change::Deleted).await
}

/// Moves a product's stock by `delta` units, never below zero (`product.stock_changed`).
pub async fn adjust_stock(state: &Inner, id: Uuid, delta: i32) -> Result<Product, Error> {
    let mut tx = state.db.begin().await?;
    let product = repository::adjust_stock(&mut tx, id, delta).await?;
    committed(state, tx, product, Change::Stock(delta.into())).await
}

/// Commits the write of `product`, then tells the cache.
async fn committed(
    state: &Inner,
    tx: sqlx::Transaction<'_, sqlx::Postgres>,
    product: Product,
    change: Change,
) -> Result<Product, Error> {
    tx.commit().await?;
    state.catalog.written(&[(product.clone(), change)]).await;
    Ok(product)
}
