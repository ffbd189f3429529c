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
    let lines = repository::cart(&state.db, user_id).await?;
    priced(state, user_id, lines).await
}

/// The cart's `lines` priced by the product service, in one call for them all; a line
/// whose product the catalogue no longer has is dropped from the cart.
async fn priced(state: &AppState, user_id: Uuid, lines: Vec<Line>) -> Result<Cart, ApiError> {
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
    // Written and read back in one statement, then priced: a change the pricing refuses
    // (a total past the largest amount, the product service away) is undone, so that the
    // cart stays as it was and readable; a product the catalogue does not have leaves
    // the cart as it is priced.
    let change = repository::put_cart_item(&state.db, user.id, product_id, quantity.get()).await?;
    match priced(&state, user.id, change.lines).await {
        Ok(cart) if cart.items.iter().any(|item| item.product_id == product_id) => Ok(Json(cart)),
        Ok(_) => Err(Error::UnknownProduct.into()),
        Err(refused) => {
            repository::undo_cart_item(&state.db, user.id, product_id, change.previous).await?;
            Err(refused)
        }
    }
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
