//! The handlers of `/api/cart/*`, `/api/orders/*` and `/internal/orders/*`: parse the
//! request into domain types, apply the rules, map the outcome.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use common::auth::{AdminUser, AuthUser, ServiceCaller};
use common::error::Problem;
use common::extract::{Body, Json, Path, Query, rule_errors_of};
use common::idempotency::Idempotent;
use common::money::Money;
use common::page::{self, IdCursor};
use common::{ApiError, ErrorCode, FieldErrors};
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::checkout::{self, Request};
use crate::domain::{
    Action, Cart, Line, MAX_LINES, Order, OrderLine, OrderStatus, Page, Quantity, ShippingAddress, StatusChanged,
};
use crate::error::Error;
use crate::repository::{self, Cause};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_cart, clear_cart))
        .routes(routes!(put_cart_item, remove_cart_item))
        .routes(routes!(place_order, list_orders))
        .routes(routes!(order_updates))
        .routes(routes!(get_order))
        .routes(routes!(cancel_order))
        .routes(routes!(ship_order))
        .routes(routes!(deliver_order))
        .routes(routes!(internal_order))
}

// --- cart --------------------------------------------------------------------------------

/// The cart with the product service's current names and prices. Products that were
/// deleted since they were added leave the cart.
async fn cart_view(state: &AppState, user_id: Uuid) -> Result<Cart, ApiError> {
    priced_cart(state, user_id, None).await
}

/// The cart as it is, or as it would be with `change` (a product and its new quantity),
/// priced; nothing but dropping deleted products is written.
async fn priced_cart(state: &AppState, user_id: Uuid, change: Option<Line>) -> Result<Cart, ApiError> {
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
async fn get_cart(State(state): State<AppState>, user: AuthUser) -> Result<Json<Cart>, ApiError> {
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
async fn put_cart_item(
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
async fn remove_cart_item(
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
async fn clear_cart(State(state): State<AppState>, user: AuthUser) -> Result<StatusCode, ApiError> {
    repository::clear_cart(&state.db, user.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

// --- orders ------------------------------------------------------------------------------

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    /// What to order, 1 to 50 lines (lines of the same product are added up); when absent,
    /// the cart (whose ordered lines are then removed).
    #[schema(min_items = 1, max_items = 50)]
    items: Option<Vec<OrderItem>>,
    shipping_address: ShippingAddress,
}

impl Body for PlaceOrder {
    fn rule_errors(self) -> FieldErrors {
        rule_errors_of(self.parse())
    }
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

impl PlaceOrder {
    fn parse(self) -> Result<Request, ApiError> {
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
        (status = 429, description = "`rate_limited`, with `Retry-After`", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`upstream_unavailable`: the product service can't be reached", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "`upstream_timeout`: the product service did not answer in time", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
async fn place_order(
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
        (status = 400, description = "A malformed parameter or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A customer asking for another user's orders", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
async fn list_orders(
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

/// An order the caller may see: their own, or any for an admin. Anyone else's is a 404,
/// so ids reveal nothing.
async fn visible_order(state: &AppState, user: &AuthUser, id: Uuid) -> Result<Order, ApiError> {
    let order = repository::find_order(&state.db, id).await?;
    Ok(order.filter(|o| user.is_admin() || o.user_id == user.id).ok_or(Error::NotFound)?)
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
async fn get_order(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> Result<Json<Order>, ApiError> {
    Ok(Json(visible_order(&state, &user, id).await?))
}

/// Moves a visible order by `action` and tells its owner's sockets.
async fn change(state: &AppState, user: &AuthUser, id: Uuid, action: Action, reason: &str) -> Result<Order, ApiError> {
    let order = visible_order(state, user, id).await?;
    let mut tx = state.db.begin().await?;
    let moved =
        repository::move_order(&mut tx, &order, action, Cause { reason: Some(reason), payment_id: None }).await?;
    tx.commit().await?;
    state.live.publish(moved.user_id, StatusChanged::of(&moved)).await;
    Ok(moved)
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
async fn cancel_order(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> Result<Json<Order>, ApiError> {
    let reason = if user.is_admin() { "admin" } else { "customer" };
    Ok(Json(change(&state, &user, id, Action::Cancel, reason).await?))
}

/// Mark a paid order shipped (admins). Emits `order.shipped`.
#[utoipa::path(
    post, path = "/api/orders/{id}/ship", tag = "orders",
    params(("id" = Uuid, Path)),
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "Shipped", body = Order),
        (status = 404, description = "No such order", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_state_transition`: the order is not paid", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all, fields(%id))]
async fn ship_order(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(id): Path<Uuid>,
) -> Result<Json<Order>, ApiError> {
    Ok(Json(change(&state, &admin, id, Action::Ship, "admin").await?))
}

/// Mark a shipped order delivered (admins). Emits `order.delivered`.
#[utoipa::path(
    post, path = "/api/orders/{id}/deliver", tag = "orders",
    params(("id" = Uuid, Path)),
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "Delivered", body = Order),
        (status = 404, description = "No such order", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_state_transition`: the order is not shipped", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all, fields(%id))]
async fn deliver_order(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(id): Path<Uuid>,
) -> Result<Json<Order>, ApiError> {
    Ok(Json(change(&state, &admin, id, Action::Deliver, "admin").await?))
}

// --- live updates ------------------------------------------------------------------------

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LiveParams {
    /// For clients that can't set headers on a WebSocket (browsers): the access token.
    #[param(pattern = r"^[^\u0000]*$")]
    access_token: Option<String>,
}

/// How long a message may take to reach a client before it counts as gone.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Status changes of your orders, live: a WebSocket that pushes
/// `{"type":"order.status_changed","order_id","status","at"}`, pings every so often and
/// closes a client that stops answering or falls too far behind.
#[utoipa::path(
    get, path = "/api/orders/ws", tag = "orders",
    params(LiveParams),
    security(("bearer" = [])),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket handshake", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid access token (header or `access_token`)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all)]
async fn order_updates(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<LiveParams>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let token = common::auth::bearer(&headers)
        .map(str::to_owned)
        .or(params.access_token)
        .ok_or_else(|| ApiError::unauthorized("a bearer access token (header or access_token) is required"))?;
    let claims = state.auth().verify(&token).await?;
    let upgrade = upgrade.map_err(|_| ApiError::bad_request("this endpoint speaks WebSocket only"))?;
    if state.live.hub().count(claims.sub) >= MAX_SOCKETS_PER_USER {
        return Err(ApiError::new(ErrorCode::RateLimited)
            .with_detail(format!("at most {MAX_SOCKETS_PER_USER} live connections per user")));
    }
    let socket = Socket { live: state.live.clone(), auth: state.auth().clone(), token, heartbeat: state.ws_heartbeat };
    Ok(upgrade.on_upgrade(move |ws| serve_socket(ws, socket, claims.sub)))
}

/// Open sockets one user may hold (tabs, devices), so one token can't hold unbounded tasks.
const MAX_SOCKETS_PER_USER: usize = 10;

/// What a socket's task needs.
struct Socket {
    live: crate::live::Live,
    auth: std::sync::Arc<common::auth::Authenticator>,
    /// Checked again at every heartbeat: a socket ends with its token (expiry, logout).
    token: String,
    heartbeat: Duration,
}

async fn serve_socket(ws: WebSocket, socket: Socket, user_id: Uuid) {
    let Socket { live, auth, token, heartbeat } = socket;
    let mut registration = live.hub().register(user_id);
    let (mut sink, mut stream) = ws.split();
    let mut ping = tokio::time::interval(heartbeat);
    ping.tick().await;
    let mut last_heard = Instant::now();
    let close = |code, reason: &'static str| Message::Close(Some(CloseFrame { code, reason: reason.into() }));
    loop {
        tokio::select! {
            queued = registration.messages.recv() => match queued {
                Some(text) => {
                    let sent = tokio::time::timeout(SEND_TIMEOUT, sink.send(Message::Text(text.as_ref().into()))).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        break;
                    }
                }
                None => {
                    // The hub dropped this socket: its client fell too far behind.
                    let _ = tokio::time::timeout(SEND_TIMEOUT, sink.send(close(close_code::AGAIN, "too slow; reconnect"))).await;
                    break;
                }
            },
            incoming = stream.next() => match incoming {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                // Pongs, and anything else the client says, show it is alive.
                Some(Ok(_)) => last_heard = Instant::now(),
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > heartbeat * 2 {
                    let _ = tokio::time::timeout(SEND_TIMEOUT, sink.send(close(close_code::POLICY, "no pong"))).await;
                    break;
                }
                if auth.verify(&token).await.is_err() {
                    let reason = "the access token expired or was revoked";
                    let _ = tokio::time::timeout(SEND_TIMEOUT, sink.send(close(close_code::POLICY, reason))).await;
                    break;
                }
                if !matches!(tokio::time::timeout(SEND_TIMEOUT, sink.send(Message::Ping(Default::default()))).await, Ok(Ok(()))) {
                    break;
                }
            }
        }
    }
    live.hub().unregister(&registration);
}

// --- internal ----------------------------------------------------------------------------

/// What the payment service needs of an order before charging it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InternalOrder {
    pub id: Uuid,
    pub user_id: Uuid,
    pub status: OrderStatus,
    pub total: Money,
    #[schema(example = "USD")]
    pub currency: String,
}

/// An order's owner, status and total (service to service with a service token; not
/// routed by the gateway).
#[utoipa::path(
    get, path = "/internal/orders/{id}", tag = "internal",
    params(("id" = Uuid, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The order", body = InternalOrder),
        (status = 401, description = "No valid service token (user tokens are refused)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all, fields(%id))]
async fn internal_order(
    State(state): State<AppState>,
    ServiceCaller(caller): ServiceCaller,
    Path(id): Path<Uuid>,
) -> Result<Json<InternalOrder>, ApiError> {
    tracing::debug!(caller = %caller.sub, "order read by a service");
    let order = repository::find_order(&state.db, id).await?.ok_or(Error::NotFound)?;
    Ok(Json(InternalOrder {
        id: order.id,
        user_id: order.user_id,
        status: order.status,
        total: order.total,
        currency: order.currency,
    }))
}
