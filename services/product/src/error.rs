//! The product service's failures, and the one place they become API errors.

use common::{ApiError, ErrorCode};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not found")]
    NotFound,
    #[error("the SKU is taken")]
    SkuTaken,
    #[error("a sibling category has this name")]
    CategoryNameTaken,
    /// A category id in the request names no category.
    #[error("no such category")]
    UnknownCategory { field: &'static str },
    /// A reservation line names no product that can be ordered.
    #[error("no such product")]
    UnknownProduct { line: usize },
    #[error("only {available} left of product {product_id}")]
    InsufficientStock { product_id: Uuid, available: i32 },
    /// Adding the delta would take stock past the most a product may hold.
    #[error("stock would exceed 1000000000")]
    StockCapExceeded,
    #[error("the reservation of this order was released")]
    ReservationReleased,
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("loading through the cache failed")]
    Cache(#[source] common::cache::LoadError),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        match err {
            Error::NotFound => ApiError::not_found(),
            Error::SkuTaken => ApiError::new(ErrorCode::Conflict).with_detail("a product with this SKU exists"),
            Error::CategoryNameTaken => {
                ApiError::new(ErrorCode::Conflict).with_detail("a category with this name exists under this parent")
            }
            Error::UnknownCategory { field } => ApiError::invalid_field(field, "no such category"),
            Error::UnknownProduct { line } => {
                ApiError::invalid_field(&format!("items[{line}].product_id"), "no such product, or it can't be ordered")
            }
            err @ Error::InsufficientStock { .. } => {
                ApiError::new(ErrorCode::InsufficientStock).with_detail(err.to_string())
            }
            Error::StockCapExceeded => ApiError::invalid_field("delta", "would take stock past 1000000000"),
            Error::ReservationReleased => ApiError::new(ErrorCode::Conflict)
                .with_detail("the reservation of this order was released; use a new order id"),
            Error::Database(e) => ApiError::from(e),
            Error::Cache(e) => ApiError::from(e),
            Error::Internal(e) => ApiError::internal(e),
        }
    }
}

/// Turns constraint violations of the catalogue into their API errors.
pub(crate) fn on_constraint(err: sqlx::Error) -> Error {
    use common::db::is_unique_violation;
    if is_unique_violation(&err, "products_sku_key") {
        return Error::SkuTaken;
    }
    if is_unique_violation(&err, "categories_name_key") {
        return Error::CategoryNameTaken;
    }
    if let sqlx::Error::Database(db) = &err
        && db.is_foreign_key_violation()
    {
        match db.constraint() {
            Some("products_category_id_fkey") => return Error::UnknownCategory { field: "category_id" },
            Some("categories_parent_id_fkey") => return Error::UnknownCategory { field: "parent_id" },
            _ => {}
        }
    }
    Error::Database(err)
}
