//! Refunding a payment on an admin's request, the business step behind
//! `POST /api/payments/{id}/refunds`: decided (and counted) in one transaction with its
//! `payment.refunded` and the `Idempotency-Key`'s record, carried out by the provider once
//! committed.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use common::ApiError;
use common::extract::Json;
use common::idempotency::{Begin, Idempotency};
use common::money::Money;
use uuid::Uuid;

use crate::AppState;
use crate::domain::Refund;
use crate::error::Error;
use crate::repository;

/// Refunds `amount` (default: all that is left) of payment `id` for the admin `scope`
/// names: `201` with the refund as it stands once the provider was asked. A retry with
/// the same `key` makes no second refund and answers the first one as it stands now.
pub async fn refund(
    state: &AppState,
    scope: &str,
    id: Uuid,
    amount: Option<Money>,
    key: Option<&Idempotency>,
) -> Result<Response, ApiError> {
    repository::find_payment(&state.db, id).await?.ok_or(Error::NotFound)?;
    let mut tx = state.db.begin().await?;
    // The key's record is kept in the refund's own transaction: it exists exactly when the
    // refund does. A replay answers that refund as it stands now (carried out since, or not).
    if let Some(key) = key
        && let Begin::Replay(stored) = key.begin(&mut tx, scope).await?
    {
        let (parts, body) = stored.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX).await.map_err(ApiError::internal)?;
        let first: Refund = serde_json::from_slice(&body).map_err(ApiError::internal)?;
        let refund = repository::find_refund(&state.db, first.id).await?.unwrap_or(first);
        return Ok((parts, Json(refund)).into_response());
    }
    let refund = repository::refund(&mut tx, id, amount, "admin").await?;
    if let Some(key) = key {
        key.finish(&mut tx, scope, StatusCode::CREATED, &refund).await?;
    }
    tx.commit().await?;
    crate::jobs::carry_out_refunds(state, &[refund.id]).await;
    let refund = repository::find_refund(&state.db, refund.id).await?.unwrap_or(refund);
    Ok((StatusCode::CREATED, Json(refund)).into_response())
}
