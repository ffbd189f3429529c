//! The handlers of `/api/cart/*`, `/api/orders/*` and `/internal/orders/*`: parse the
//! request into domain types, call the step, map the outcome; one file each for the cart,
//! orders, live updates and internal calls.

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

mod cart;
mod internal;
mod live;
mod orders;

use self::cart::*;
use self::internal::*;
use self::live::*;
use self::orders::*;

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
