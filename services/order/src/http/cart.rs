//! `/api/cart/*`: the customer's cart, priced by the product service on every read.

use axum::extract::State;
use axum::http::StatusCode;
use common::auth::AuthUser;
use common::error::Problem;
use common::extract::{Body, Json, Path, rule_errors_of};
use common::{ApiError, FieldErrors};
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::domain::{Cart, Line, OrderLine, Quantity};
use crate::error::Error;
use crate::repository;

/// The cart with the product service's current names and prices. Products that were
/// deleted since they were added leave the cart.
pub(super) async fn cart_view(state: &AppState, user_id: Uuid) -> Result<Cart, ApiError> {
    priced_cart(state, user_id, None).await
}

/// The cart as it is, or as it would be with `change` (a product and its new quantity),
/// priced; nothing but dropping deleted products is written.
pub(super) async fn priced_cart(state: &AppState, user_id: Uuid, change: Option<Line>) -> Result<Cart, ApiError> {
    let mut lines = repository::cart(&state.db, user_id).await?;
    if let Some(change) = change {
        match lines.iter_mut().find(|line| line.product_id == change.product_id) {
            Some(line) => line.quantity = change.quantity,
            None => lines.push(change),
        }
    }
    let ids: Vec<Uuid> = lines.iter().map(|line| line.product_id).collect();
    let products = state.products.products(&ids).await?;
    let mut items = Vec::with_capacity(lines.len());
    let mut gone = Vec::new();
    for (line, product) in lines.iter().zip(products) {
        match product {
            Some(p) => items.push(OrderLine::new(p.id, p.name, p.price, line.quantity).map_err(Error::from)?),
            None => gone.push(line.product_id),
        }
    }
    if !gone.is_empty() {
        repository::remove_cart_items(&state.db, user_id, &gone).await?;
    }
    Ok(Cart::new(items).map_err(Error::from)?)
}

/// Your cart.
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
    Ok(Json(cart_view(&state, user.id).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CartQuantity {
    /// 1 to 100; replaces the quantity in the cart.
    #[schema(minimum = 1, maximum = 100)]
    #[serde(deserialize_with = "common::extract::integer")]
    quantity: i64,
}

impl CartQuantity {
    fn parse(self) -> Result<Quantity, ApiError> {
        Quantity::parse(self.quantity).map_err(|e| ApiError::invalid_field("quantity", e))
    }
}

impl Body for CartQuantity {
    fn rule_errors(self) -> FieldErrors {
        rule_errors_of(self.parse())
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
    let quantity = req.parse()?;
    // Priced before it is written: a change refused (a total past the largest amount) is
    // not kept, and the cart stays readable. A product the catalogue does not have is
    // left out of the priced cart.
    let change = Line { product_id, quantity: quantity.get() };
    let cart = priced_cart(&state, user.id, Some(change)).await?;
    if !cart.items.iter().any(|item| item.product_id == product_id) {
        return Err(Error::UnknownProduct.into());
    }
    repository::put_cart_item(&state.db, user.id, product_id, quantity.get()).await?;
    Ok(Json(cart))
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
    repository::remove_cart_items(&state.db, user.id, &[product_id]).await?;
    Ok(Json(cart_view(&state, user.id).await?))
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
