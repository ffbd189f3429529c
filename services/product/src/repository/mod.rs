//! SQL for the `catalog` schema. Fixed queries are checked at compile time; the listing,
//! whose filters vary, is built with `QueryBuilder` so each combination gets a plan that
//! uses its index. One file each for categories, products, reservations and listing;
//! here, the rows they share.

use common::money::Money;
use uuid::Uuid;

use crate::domain::Product;

mod categories;
mod listing;
mod products;
mod reservations;

pub use self::categories::*;
pub use self::listing::*;
pub use self::products::*;
pub use self::reservations::*;

const PRODUCT_COLUMNS: &str = "id, sku, name, description, price, currency, stock, category_id, created_at, updated_at";

#[derive(sqlx::FromRow)]
pub(super) struct ProductState {
    #[sqlx(flatten)]
    pub(super) product: ProductRow,
    pub(super) deleted: bool,
}

#[derive(sqlx::FromRow)]
pub(super) struct ListedRow {
    #[sqlx(flatten)]
    pub(super) product: ProductRow,
    pub(super) rank: Option<f32>,
}

#[derive(sqlx::FromRow)]
pub(super) struct ProductRow {
    pub(super) id: Uuid,
    pub(super) sku: String,
    pub(super) name: String,
    pub(super) description: String,
    pub(super) price: Money,
    pub(super) currency: String,
    pub(super) stock: i32,
    pub(super) category_id: Uuid,
    pub(super) created_at: chrono::DateTime<chrono::Utc>,
    pub(super) updated_at: chrono::DateTime<chrono::Utc>,
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
