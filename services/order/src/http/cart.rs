//! `/api/cart/*`: the customer's cart, priced by the product service on every read.

use axum::extract::State;
use axum::http::StatusCode;
use common::ApiError;
use common::auth::AuthUser;
use common::error::Problem;
use common::extract::{Json, Parse, Path};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::domain::{Cart, Quantity};
use crate::repository;
use crate::steps::cart;

#[utoipa::path(
    get, path = "/api/cart", tag = "cart",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The cart, with current names and prices", body = Cart),
        (status = 503, description = "`upstream_unavailable`: the product service can't be reached", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
pub(super) async fn get_cart(State(state): State<AppState>, user: AuthUser) -> Result<Json<Cart>, ApiError> {
    Ok(Json(cart::view(&state, user.id).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CartQuantity {
    /// 1 to 100; replaces the quantity in the cart.
    #[schema(minimum = 1, maximum = 100)]
    #[serde(deserialize_with = "common::extract::integer")]
    quantity: i64,
}

impl Parse for CartQuantity {
    type Output = Quantity;

    fn parse(self) -> Result<Self::Output, ApiError> {
        Quantity::parse(self.quantity).map_err(|e| ApiError::invalid_field("quantity", e))
    }
}

/// Put a product in your cart, or change its quantity.
#[utoipa::path(
    put, path = "/api/cart/items/{product_id}", tag = "cart",
    params(("product_id" = Uuid, Path)),
    request_body = CartQuantity,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The cart after the change", body = Cart),
        (status = 404, description = "No such product, or it can't be ordered", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`conflict`: the cart already holds 50 products", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A quantity outside 1–100, or a cart total past 9999999999.99 (nothing is changed)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all, fields(user_id = %user.id, %product_id))]
pub(super) async fn put_cart_item(
    State(state): State<AppState>,
    user: AuthUser,
    Path(product_id): Path<Uuid>,
    Json(req): Json<CartQuantity>,
) -> Result<Json<Cart>, ApiError> {
    Ok(Json(cart::put(&state, user.id, product_id, req.parse()?).await?))
}

/// Take a product out of your cart (no error if it was not there).
#[utoipa::path(
    delete, path = "/api/cart/items/{product_id}", tag = "cart",
    params(("product_id" = Uuid, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The cart after the change", body = Cart),
    )
)]
#[tracing::instrument(skip_all, fields(user_id = %user.id, %product_id))]
pub(super) async fn remove_cart_item(
    State(state): State<AppState>,
    user: AuthUser,
    Path(product_id): Path<Uuid>,
) -> Result<Json<Cart>, ApiError> {
    Ok(Json(cart::remove(&state, user.id, product_id).await?))
}

/// Empty your cart.
#[utoipa::path(
    delete, path = "/api/cart", tag = "cart",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Emptied"),
    )
)]
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
pub(super) async fn clear_cart(State(state): State<AppState>, user: AuthUser) -> Result<StatusCode, ApiError> {
    repository::clear_cart(&state.db, user.id).await?;
    Ok(StatusCode::NO_CONTENT)
}
