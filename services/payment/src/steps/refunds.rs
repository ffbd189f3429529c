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

/// How long a refund request holds its key: the refund is decided in one short
/// transaction.
const REFUND_LEASE: std::time::Duration = std::time::Duration::from_secs(10);

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
    // The key is claimed first; the refund's own transaction completes the claim, so the
    // answer exists exactly when the refund does. A replay answers that refund as it
    // stands now (carried out since, or not).
    let claim = match key {
        None => None,
        Some(key) => match key.begin(&state.db, scope, REFUND_LEASE, &()).await? {
            Begin::Fresh(claim) => Some(claim),
            Begin::Replay(stored) => {
                let (parts, body) = stored.into_parts();
                let body = axum::body::to_bytes(body, usize::MAX).await.map_err(ApiError::internal)?;
                let first: Refund = serde_json::from_slice(&body).map_err(ApiError::internal)?;
                let refund = repository::find_refund(&state.db, first.id).await?.unwrap_or(first);
                return Ok((parts, Json(refund)).into_response());
            }
            Begin::InProgress => return Err(Idempotency::in_progress()),
        },
    };
    let mut tx = state.db.begin().await?;
    let refund = match repository::refund(&mut tx, id, amount, "admin").await {
        Ok(refund) => refund,
        Err(refused) => {
            drop(tx);
            if let Some(claim) = &claim {
                claim.abandon(&state.db).await?;
            }
            return Err(refused.into());
        }
    };
    if let Some(claim) = &claim
        && !claim.complete(&mut tx, StatusCode::CREATED, &refund).await?
    {
        // Held too long: a retry took the key over and makes the refund itself.
        return Err(Idempotency::in_progress());
    }
    tx.commit().await?;
    crate::jobs::carry_out_refunds(state, &[refund.id]).await;
    let refund = repository::find_refund(&state.db, refund.id).await?.unwrap_or(refund);
    Ok((StatusCode::CREATED, Json(refund)).into_response())
}
