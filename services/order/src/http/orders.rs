//! `/api/orders/*`: placing an order (through [`crate::steps::checkout`]), reading orders, and
//! moving them through the status machine.

use axum::extract::State;
use axum::response::Response;
use common::auth::{AdminUser, AuthUser};
use common::error::Problem;
use common::extract::{Json, Parse, Path, Query};
use common::http::RateLimited;
use common::idempotency::Idempotent;
use common::page::{self, IdCursor};
use common::{ApiError, FieldErrors};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::domain::{Action, Line, MAX_LINES, Order, Page, Quantity, ShippingAddress};
use crate::repository;
use crate::steps::checkout::{self, Request};
use crate::steps::orders;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    /// What to order, 1 to 50 lines (lines of the same product are added up); when absent,
    /// the cart (whose ordered lines are then removed).
    #[schema(min_items = 1, max_items = 50)]
    items: Option<Vec<OrderItem>>,
    shipping_address: ShippingAddress,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderItem {
    product_id: Uuid,
    /// 1 to 100.
    #[schema(minimum = 1, maximum = 100)]
    #[serde(deserialize_with = "common::extract::integer")]
    quantity: i64,
}

impl Parse for PlaceOrder {
    type Output = Request;

    fn parse(self) -> Result<Self::Output, ApiError> {
        let mut errors = FieldErrors::default();
        let lines = self.items.map(|items| {
            if items.is_empty() {
                errors.add("items", "must contain at least one item");
            }
            if items.len() > MAX_LINES {
                errors.add("items", format!("must contain at most {MAX_LINES} items"));
            }
            items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    let quantity = errors.check(&format!("items[{i}].quantity"), Quantity::parse(item.quantity))?;
                    Some(Line { product_id: item.product_id, quantity: quantity.get() })
                })
                .collect::<Vec<_>>()
        });
        let address = ShippingAddress::parse(self.shipping_address).map_err(|bad| {
            for (field, message) in bad {
                errors.add(field, message);
            }
        });
        errors.into_result()?;
        let shipping_address = address.map_err(|()| ApiError::internal(anyhow::anyhow!("unreported address error")))?;
        Ok(Request { lines, shipping_address })
    }
}

/// Place an order: reserve the stock, hold it for payment.
///
/// Limited to 30 a minute per customer (`CHECKOUT_RATE_LIMIT`); every answer carries the
/// `RateLimit-*` headers.
#[utoipa::path(
    post, path = "/api/orders", tag = "orders",
    request_body = PlaceOrder,
    params(("Idempotency-Key" = Option<String>, Header, nullable = false, min_length = 1, max_length = 255, pattern = r"^[\x21-\x7E]{1,255}$", description = "1–255 visible ASCII characters; a retry with the same key and body replays the first answer")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Placed: `pending_payment`, stock reserved at the prices shown; emits `order.created`", body = Order),
        (status = 409, description = "`insufficient_stock` (nothing reserved), or `request_in_progress` for a key still running", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid items or address, an empty cart, a product that can't be ordered, or `idempotency_key_reused`", body = Problem, content_type = "application/problem+json"),
        RateLimited,
        (status = 503, description = "`upstream_unavailable`: the product service can't be reached", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "`upstream_timeout`: the product service did not answer in time", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
pub(super) async fn place_order(
    State(state): State<AppState>,
    user: AuthUser,
    request: Idempotent<PlaceOrder>,
) -> Result<Response, ApiError> {
    let limit = state.checkout_limiter.check(user.id).await.enforce()?;
    let parsed = request.body.parse().map_err(|err| err.with_headers(limit.headers()))?;
    limit.attach(checkout::place(&state, user.id, parsed, request.key.as_ref()).await)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// 1–100, default 20.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// `next_cursor` of the previous page (an order id, base64url without padding).
    #[param(min_length = 22, max_length = 22, pattern = "^[A-Za-z0-9_-]{21}[AQgw]$")]
    cursor: Option<String>,
    /// Admins: only this user's orders. Customers may only name themselves.
    #[param(value_type = Option<Uuid>)]
    user_id: Option<String>,
}

/// Your orders, newest first (admins: everyone's, or one user's with `user_id`).
#[utoipa::path(
    get, path = "/api/orders", tag = "orders",
    params(ListParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of orders", body = Page<Order>),
        (status = 403, description = "A customer asking for another user's orders", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
pub(super) async fn list_orders(
    State(state): State<AppState>,
    user: AuthUser,
    Query(params): Query<ListParams>,
) -> Result<Json<Page<Order>>, ApiError> {
    let limit = page::limit(params.limit.as_deref())?;
    let after = IdCursor::parse(params.cursor.as_deref())?;
    let named = params
        .user_id
        .map(|raw| raw.parse::<Uuid>().map_err(|_| ApiError::bad_request("user_id must be a UUID")))
        .transpose()?;
    let owner = match (user.is_admin(), named) {
        (true, named) => named,
        (false, Some(named)) if named != user.id => return Err(ApiError::forbidden()),
        (false, _) => Some(user.id),
    };
    let mut orders = repository::list_orders(&state.db, owner, after.map(|c| c.0), limit).await?;
    let next_cursor = IdCursor::next(&mut orders, limit, |o| o.id);
    Ok(Json(Page { items: orders, next_cursor }))
}

/// One of your orders (admins: any).
#[utoipa::path(
    get, path = "/api/orders/{id}", tag = "orders",
    params(("id" = Uuid, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The order", body = Order),
        (status = 404, description = "No such order, or not yours", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all, fields(user_id = %user.id, %id))]
pub(super) async fn get_order(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> Result<Json<Order>, ApiError> {
    Ok(Json(orders::visible(&state, &user, id).await?))
}

/// Cancel one of your orders (admins: any) while it is unpaid or paid; a paid order is
/// refunded in full. Emits `order.cancelled`, which puts the units back in stock.
#[utoipa::path(
    post, path = "/api/orders/{id}/cancel", tag = "orders",
    params(("id" = Uuid, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Cancelled", body = Order),
        (status = 404, description = "No such order, or not yours", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_state_transition`: shipped, delivered or already cancelled", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all, fields(user_id = %user.id, %id))]
pub(super) async fn cancel_order(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> Result<Json<Order>, ApiError> {
    let reason = if user.is_admin() { "admin" } else { "customer" };
    Ok(Json(orders::change(&state, &user, id, Action::Cancel, reason).await?))
}

/// Mark a paid order shipped (admins). Emits `order.shipped`.
#[utoipa::path(
    post, path = "/api/orders/{id}/ship", tag = "orders",
    params(("id" = Uuid, Path)),
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "Shipped", body = Order),
        (status = 409, description = "`invalid_state_transition`: the order is not paid", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all, fields(%id))]
pub(super) async fn ship_order(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(id): Path<Uuid>,
) -> Result<Json<Order>, ApiError> {
    Ok(Json(orders::change(&state, &admin, id, Action::Ship, "admin").await?))
}

/// Mark a shipped order delivered (admins). Emits `order.delivered`.
#[utoipa::path(
    post, path = "/api/orders/{id}/deliver", tag = "orders",
    params(("id" = Uuid, Path)),
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "Delivered", body = Order),
        (status = 409, description = "`invalid_state_transition`: the order is not shipped", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all, fields(%id))]
pub(super) async fn deliver_order(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(id): Path<Uuid>,
) -> Result<Json<Order>, ApiError> {
    Ok(Json(orders::change(&state, &admin, id, Action::Deliver, "admin").await?))
}
