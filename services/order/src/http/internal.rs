//! `/internal/orders/{id}`: what the payment service reads of an order before charging it.

use axum::extract::State;
use common::ApiError;
use common::auth::ServiceCaller;
use common::contracts::OrderToPay;
use common::error::Problem;
use common::extract::{Json, Path};
use uuid::Uuid;

use crate::AppState;
use crate::error::Error;
use crate::repository;

/// An order's owner, status and total (service to service with a service token; not
/// routed by the gateway).
#[utoipa::path(
    get, path = "/internal/orders/{id}", tag = "internal",
    params(("id" = Uuid, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The order", body = OrderToPay),
        (status = 401, description = "No valid service token (user tokens are refused)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all, fields(%id))]
pub(super) async fn internal_order(
    State(state): State<AppState>,
    ServiceCaller(caller): ServiceCaller,
    Path(id): Path<Uuid>,
) -> Result<Json<OrderToPay>, ApiError> {
    tracing::debug!(caller = %caller.sub, "order read by a service");
    Ok(Json(repository::order_to_pay(&state.db, id).await?.ok_or(Error::NotFound)?))
}
