//! The handlers of `/api/products/*`, `/api/categories/*`, `/internal/reservations` and
//! `/internal/products`: parse the request into domain types, call the step, map the
//! outcome. `reads` serves the public catalogue, `admin` its writes (through
//! [`crate::steps::catalog`]), `internal` what other services ask.

use common::ApiError;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

mod admin;
mod internal;
mod reads;

use self::admin::*;
use self::internal::*;
use self::reads::*;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_products, create_product))
        .routes(routes!(get_product, update_product, delete_product))
        .routes(routes!(adjust_stock))
        .routes(routes!(list_categories, create_category))
        .routes(routes!(reserve))
        .routes(routes!(lookup_products))
}

/// A `400 bad_request` with `detail`.
fn bad(detail: impl Into<String>) -> ApiError {
    ApiError::bad_request(detail)
}
