//! The handlers of `/api/payments/*`: parse the request into domain types, apply the
//! rules, map the outcome.

use axum::extract::State;
use axum::response::Response;
use common::auth::{AdminUser, AuthUser};
use common::error::Problem;
use common::extract::{Body, Json, Parse, Path, Query};
use common::http::RateLimited;
use common::idempotency::Idempotent;
use common::money::{CURRENCY, Money, PositiveMoney};
use common::page::{self, IdCursor, Page};
use common::{ApiError, FieldErrors};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::AppState;
use crate::domain::{Payment, Refund};
use crate::error::Error;
use crate::repository;
use crate::steps::charge::{self, Request};
use crate::steps::refunds;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_payment, list_payments))
        .routes(routes!(get_payment))
        .routes(routes!(refund_payment))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePayment {
    order_id: Uuid,
    /// Must equal the order's total (which is never zero).
    #[schema(value_type = PositiveMoney)]
    amount: Money,
    /// `USD`, the only currency sold in.
    #[schema(example = "USD", pattern = "^USD$")]
    currency: String,
    method: PaymentMethod,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentMethod {
    /// `card`.
    #[serde(rename = "type")]
    #[schema(example = "card", pattern = "^card$")]
    kind: String,
    /// A card token. Test tokens: `tok_visa` (succeeds), `tok_chargeDeclined`
    /// (`card_declined`), `tok_insufficientFunds` (`insufficient_funds`), `tok_providerDown`
    /// (provider unavailable: 502, nothing charged), `tok_providerTimeout` (the provider
    /// charges but answers too late: 504, then the payment is settled in the background).
    /// 1–255 visible ASCII characters (the limit counts bytes); one the provider does not
    /// know is `422`.
    #[schema(example = "tok_visa", min_length = 1, max_length = 255, pattern = r"^[\x21-\x7E]{1,255}$")]
    token: String,
}

impl Parse for CreatePayment {
    type Output = Request;

    fn parse(self) -> Result<Self::Output, ApiError> {
        let mut errors = FieldErrors::default();
        if self.currency != CURRENCY {
            errors.add("currency", "must be USD");
        }
        if self.method.kind != "card" {
            errors.add("method.type", "must be card");
        }
        if self.method.token.is_empty() || self.method.token.len() > 255 {
            errors.add("method.token", "must be 1 to 255 characters");
        }
        errors.into_result()?;
        Ok(Request { order_id: self.order_id, amount: self.amount, token: self.method.token })
    }
}

/// Pay an order.
///
/// Limited to 30 a minute per customer (`PAYMENT_RATE_LIMIT`); every answer carries the
/// `RateLimit-*` headers.
#[utoipa::path(
    post, path = "/api/payments", tag = "payments",
    request_body = CreatePayment,
    params(("Idempotency-Key" = String, Header, min_length = 1, max_length = 255, pattern = r"^[\x21-\x7E]{1,255}$", description = "Required; 1–255 visible ASCII characters. A retry with the same key and body replays the first answer")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Charged (`succeeded`) or declined (`failed`, with `failure_code`; the order stays payable); emits `payment.succeeded` or `payment.failed`", body = Payment),
        (status = 400, description = "No or a malformed `Idempotency-Key`, or malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order, or not yours", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`already_paid`, `invalid_state_transition` (the order is cancelled), `conflict` (another payment for the order is being processed) or `request_in_progress`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`amount_mismatch`, `idempotency_key_reused`, or invalid fields", body = Problem, content_type = "application/problem+json"),
        RateLimited,
        (status = 502, description = "`upstream_unavailable`: the card provider is down; nothing was charged", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`upstream_unavailable`: the order service can't be reached", body = Problem, content_type = "application/problem+json"),
        (status = 504, description = "`upstream_timeout`: the provider did not answer in time; the payment is settled shortly (see `GET /api/payments?order_id=`)", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
async fn create_payment(
    State(state): State<AppState>,
    user: AuthUser,
    request: Idempotent<CreatePayment>,
) -> Result<Response, ApiError> {
    let key = request.key.ok_or_else(|| ApiError::bad_request("the Idempotency-Key header is required"))?;
    let limit = state.payment_limiter.check(user.id).await.enforce()?;
    let parsed = request.body.parse().map_err(|err| err.with_headers(limit.headers()))?;
    limit.attach(charge::pay(&state, &user, parsed, &key).await)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only this order's payments.
    #[param(value_type = Option<Uuid>)]
    order_id: Option<String>,
    /// 1–100, default 20.
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// `next_cursor` of the previous page (a payment id, base64url without padding).
    #[param(min_length = 22, max_length = 22, pattern = "^[A-Za-z0-9_-]{21}[AQgw]$")]
    cursor: Option<String>,
}

/// Your payments, newest first (admins: everyone's), optionally of one order.
#[utoipa::path(
    get, path = "/api/payments", tag = "payments",
    params(ListParams),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of payments", body = Page<Payment>),
    )
)]
#[tracing::instrument(skip_all, fields(user_id = %user.id))]
async fn list_payments(
    State(state): State<AppState>,
    user: AuthUser,
    Query(params): Query<ListParams>,
) -> Result<Json<Page<Payment>>, ApiError> {
    let order_id = params
        .order_id
        .map(|raw| raw.parse::<Uuid>().map_err(|_| ApiError::bad_request("order_id must be a UUID")))
        .transpose()?;
    let limit = page::limit(params.limit.as_deref())?;
    let after = IdCursor::parse(params.cursor.as_deref())?;
    let owner = if user.is_admin() { None } else { Some(user.id) };
    let mut items = repository::list_payments(&state.db, owner, order_id, after.map(|c| c.0), limit).await?;
    let next_cursor = IdCursor::next(&mut items, limit, |p| p.id);
    Ok(Json(Page { items, next_cursor }))
}

/// One of your payments (admins: any).
#[utoipa::path(
    get, path = "/api/payments/{id}", tag = "payments",
    params(("id" = Uuid, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The payment", body = Payment),
        (status = 404, description = "No such payment, or not yours", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all, fields(user_id = %user.id, %id))]
async fn get_payment(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<Uuid>,
) -> Result<Json<Payment>, ApiError> {
    let payment = repository::find_payment(&state.db, id).await?;
    Ok(Json(payment.filter(|p| user.is_admin() || p.user_id == user.id).ok_or(Error::NotFound)?))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateRefund {
    /// More than 0 and at most what is left to refund. Default: everything not refunded yet.
    #[schema(value_type = Option<PositiveMoney>)]
    amount: Option<Money>,
}

impl Body for CreateRefund {}

/// Refund a payment in part or in full (admins); never more than was captured. Emits
/// `payment.refunded`. Idempotent: the same `Idempotency-Key` (per admin) with the same
/// body makes no second refund and answers the first one as it stands now, with
/// `Idempotent-Replayed: true`; with another body it is `422 idempotency_key_reused`.
#[utoipa::path(
    post, path = "/api/payments/{id}/refunds", tag = "payments",
    params(
        ("id" = Uuid, Path),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = r"^[\x21-\x7E]{1,255}$", description = "Optional; 1–255 visible ASCII characters. A retry with the same key and body makes no second refund"),
    ),
    request_body = CreateRefund,
    security(("bearer" = ["admin"])),
    responses(
        (status = 201, description = "Refunded (`pending` if the provider has yet to carry it out)", body = Refund),
        (status = 409, description = "`invalid_state_transition`: a failed payment, or one refunded in full; `request_in_progress`: a request with this key is still running", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An amount of zero or more than is left, or `idempotency_key_reused`", body = Problem, content_type = "application/problem+json"),
    )
)]
#[tracing::instrument(skip_all, fields(%id))]
async fn refund_payment(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(id): Path<Uuid>,
    request: Idempotent<CreateRefund>,
) -> Result<Response, ApiError> {
    refunds::refund(&state, &admin.id.to_string(), id, request.body.amount, request.key.as_ref()).await
}
