//! What other services ask: many products at once (to price a cart), and stock
//! reservations.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use common::auth::ServiceCaller;
use common::error::Problem;
use common::extract::{Body, Json, Query};
use common::{ApiError, FieldErrors};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::AppState;
use crate::domain::{Product, ReservationStatus, reservation_lines};
use crate::error::Error;
use crate::repository::{self, ReservedItem};
use crate::steps::cache::Change;

/// The most products one lookup names: more than a cart's most lines (50) with the one
/// being added.
const LOOKUP_MAX: usize = 100;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LookupParams {
    /// 1 to 100 product ids, comma-separated.
    ids: String,
}

/// The answer of a lookup (what `lookup_products` writes out of the cached JSON).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct LookupResponse {
    items: Vec<Option<Product>>,
}

/// Products by id, as carts show them, in one call (service to service with a service
/// token; not routed by the gateway).
#[utoipa::path(
    get, path = "/internal/products", tag = "internal",
    params(LookupParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Each id's product, in the order asked, or `null` where the catalogue has no such product (or it was deleted)", body = LookupResponse),
        (status = 400, description = "`ids` is not 1 to 100 comma-separated ids", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid service token (user tokens are refused)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all)]
pub(super) async fn lookup_products(
    State(state): State<AppState>,
    ServiceCaller(_caller): ServiceCaller,
    Query(params): Query<LookupParams>,
) -> Result<Response, ApiError> {
    let ids: Vec<Uuid> = params
        .ids
        .split(',')
        .map(|id| id.trim().parse())
        .collect::<Result<_, _>>()
        .ok()
        .filter(|ids: &Vec<Uuid>| (1..=LOOKUP_MAX).contains(&ids.len()))
        .ok_or_else(|| ApiError::bad_request("ids must be 1 to 100 comma-separated product ids"))?;
    let json = crate::steps::cache::lookup_json(&state.catalog.products(&ids).await?);
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], json).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReserveRequest {
    /// The order the stock is held for; a retry with the same id reserves nothing more.
    order_id: Uuid,
    /// At least one line; lines of the same product are added up.
    #[schema(min_items = 1)]
    items: Vec<ReserveItem>,
}

impl Body for ReserveRequest {}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReserveItem {
    product_id: Uuid,
    /// 1 to 10000.
    #[schema(minimum = 1, maximum = 10_000)]
    #[serde(deserialize_with = "common::extract::integer")]
    quantity: i64,
}

#[derive(Serialize, ToSchema)]
pub struct ReservationResponse {
    order_id: Uuid,
    status: ReservationStatus,
    items: Vec<ReservedItem>,
}

/// Reserve stock for an order: every item or none (service to service with a service
/// token; not routed by the gateway).
#[utoipa::path(
    post, path = "/internal/reservations", tag = "internal",
    request_body = ReserveRequest,
    security(("bearer" = [])),
    responses(
        (status = 401, description = "No valid service token (user tokens are refused)", body = Problem, content_type = "application/problem+json"),
        (status = 201, description = "Reserved, with each item's current unit price", body = ReservationResponse),
        (status = 200, description = "This order's reservation already existed: returned as it is", body = ReservationResponse),
        (status = 409, description = "`insufficient_stock` naming the product (nothing reserved), or `conflict`: the order's reservation was released", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid lines, or a product that can't be ordered", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all, fields(order_id = %req.order_id))]
pub(super) async fn reserve(
    State(state): State<AppState>,
    ServiceCaller(caller): ServiceCaller,
    Json(req): Json<ReserveRequest>,
) -> Result<impl IntoResponse, ApiError> {
    tracing::debug!(caller = %caller.sub, "reservation requested");
    let requested: Vec<(Uuid, i64)> = req.items.iter().map(|i| (i.product_id, i.quantity)).collect();
    let lines = reservation_lines(&requested).map_err(|bad_lines| {
        let mut errors = FieldErrors::default();
        for (index, message) in bad_lines {
            let field = if index == usize::MAX { "items".to_owned() } else { format!("items[{index}].quantity") };
            errors.add(field, message);
        }
        ApiError::validation(errors)
    })?;
    let first_line = |product_id: Uuid| requested.iter().position(|(p, _)| *p == product_id).unwrap_or_default();
    // Reservations lock products in one order, but a consumer restocking several
    // cancelled orders in one transaction may not: PostgreSQL then ends one side, and a
    // reservation it ended is run again (nothing of it was kept).
    let mut attempt = 1;
    let (reservation, changed) = loop {
        match repository::reserve(&state.db, req.order_id, &lines, first_line).await {
            Err(Error::Database(err)) if common::db::is_deadlock(&err) && attempt < 3 => attempt += 1,
            reserved => break reserved?,
        }
    };
    // Each product lost the units reserved of it: only one that ran out leaves listings.
    let taken = |product: &Product| -> i64 {
        -lines.iter().filter(|l| l.product_id == product.id).map(|l| i64::from(l.quantity)).sum::<i64>()
    };
    let changed: Vec<(Product, Change)> = changed
        .into_iter()
        .map(|product| {
            let change = Change::Stock(taken(&product));
            (product, change)
        })
        .collect();
    state.catalog.written(&changed).await;
    let status = if reservation.created { StatusCode::CREATED } else { StatusCode::OK };
    let body = ReservationResponse { order_id: req.order_id, status: reservation.status, items: reservation.items };
    Ok((status, Json(body)))
}
