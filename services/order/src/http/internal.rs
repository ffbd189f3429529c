//! `/internal/orders/{id}`: what the payment service reads of an order before charging it.

use axum::extract::State;
use common::ApiError;
use common::auth::ServiceCaller;
use common::error::Problem;
use common::extract::{Json, Path};
use common::money::Money;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::domain::OrderStatus;
use crate::error::Error;
use crate::repository;

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
pub(super) async fn internal_order(
    State(state): State<AppState>,
    ServiceCaller(caller): ServiceCaller,
    Path(id): Path<Uuid>,
) -> Result<Json<InternalOrder>, ApiError> {
    tracing::debug!(caller = %caller.sub, "order read by a service");
    let order = repository::order_to_pay(&state.db, id).await?.ok_or(Error::NotFound)?;
    Ok(Json(InternalOrder {
        id: order.id,
        user_id: order.user_id,
        status: order.status,
        total: order.total,
        currency: order.currency,
    }))
}
