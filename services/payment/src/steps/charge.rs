//! Paying an order: the second step of the checkout saga.
//!
//! 1. The order is read from the order service (owner, status, total).
//! 2. One transaction claims the Idempotency-Key (recording the attempt's id as the
//!    claim's progress) and, the order checked, records the attempt as `processing`,
//!    committed before the provider is called; the database allows one such attempt (or
//!    success) per order. A key done before replays its answer, whatever the order is now.
//! 3. The provider is called with the payment's id as its idempotency key, retried with
//!    backoff while it is unavailable, through a circuit breaker: while the provider keeps
//!    failing, nothing is sent and the payment is `502` at once, nothing charged.
//! 4. One transaction settles the attempt with its event and completes the key's claim
//!    with the answer. A charge for an order that closed meanwhile is refunded in it.
//!
//! If the provider does not answer in time, or the process dies between 2 and 4, the
//! attempt stays `processing` and its key claimed: once the lease has run out, a retry
//! with the same key, or the reconciler, asks the provider what happened and settles it.
//! No database connection is held while the provider is called. Steps 3 and 4 run to
//! their end even when the request's deadline ends the request (`common::finish`).

use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use common::ApiError;
use common::auth::AuthUser;
use common::backoff::Backoff;
use common::extract::Json;
use common::idempotency::{Begin, Claim, Idempotency};
use common::money::Money;
use failsafe::futures::CircuitBreaker as _;
use uuid::Uuid;

use crate::AppState;
use crate::domain::{Outcome, Payment, PaymentStatus};
use crate::error::Error;
use crate::orders::OrderStatus;
use crate::provider::ProviderError;
use crate::repository::{self, AttemptProgress, NewAttempt};

/// A payment request, parsed.
#[derive(Debug)]
pub struct Request {
    pub order_id: Uuid,
    pub amount: Money,
    pub token: String,
}

/// Provider calls per attempt while it is unavailable.
const PROVIDER_ATTEMPTS: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// The provider's name in the breaker's metrics (`upstream_rejected_total`).
const PROVIDER: &str = "card_provider";

/// Why a charge got no answer.
enum NoAnswer {
    /// Every call was refused: nothing was charged.
    Unavailable,
    InvalidToken,
    /// Some call timed out or lost its answer: the charge may have happened.
    Timeout,
}

/// Charges the order and answers `201` with the payment (failed ones included), or replays
/// the first answer to this key.
pub async fn pay(state: &AppState, user: &AuthUser, request: Request, key: &Idempotency) -> Result<Response, ApiError> {
    // Read first, so that no connection is held while the order service answers; a
    // replay does not look at it.
    let order = state.orders.order(request.order_id).await;
    let id = Uuid::now_v7();
    let mut tx = state.db.begin().await?;
    let mut claim = match key
        .begin(&mut *tx, &user.id.to_string(), state.attempt_lease, &AttemptProgress { payment_id: id })
        .await?
    {
        Begin::Fresh(claim) => claim,
        Begin::Replay(response) => return Ok(response),
        Begin::InProgress => return Err(Error::RequestInProgress.into()),
    };
    let resumed = claim.resumed.take();
    let attempt = match resumed {
        // Started before with this key and left unfinished: carried on as it stands.
        Some(earlier) => {
            tx.commit().await?;
            let attempt = repository::find_attempt(&state.db, earlier.payment_id).await?;
            match attempt {
                Some(attempt) => attempt,
                None => {
                    // Gone with its key's claim (`forget`): only a claim made by hand gets here.
                    claim.abandon(&state.db).await?;
                    return Err(Error::RequestInProgress.into());
                }
            }
        }
        None => {
            // Another user's order does not exist, as far as this caller can tell.
            let order = order?.filter(|o| o.user_id == user.id).ok_or(Error::NotFound)?;
            match order.status {
                OrderStatus::PendingPayment => {}
                OrderStatus::Paid | OrderStatus::Shipped | OrderStatus::Delivered | OrderStatus::Refunded => {
                    return Err(Error::AlreadyPaid.into());
                }
                OrderStatus::Cancelled => return Err(Error::NotPayable("cancelled").into()),
            }
            if request.amount != order.total || order.currency != common::money::CURRENCY {
                return Err(Error::AmountMismatch(order.total.to_string()).into());
            }
            let new = NewAttempt { id, order_id: order.id, user_id: user.id, amount: request.amount };
            // `None`: cancelled or expired since the order service answered, not worth a
            // charge and its refund (which the settlement would still make).
            let attempt = match repository::insert_attempt(&mut tx, &new).await {
                Err(Error::OrderBeingCharged) => {
                    drop(tx);
                    return Err(repository::order_charged(&state.db, order.id).await?.into());
                }
                inserted => inserted?.ok_or(Error::NotPayable("cancelled"))?,
            };
            tx.commit().await?;
            attempt
        }
    };

    // From here on the provider may be called: the charge and its settlement run to their
    // end even if the request is ended early (its deadline), as if the client had stayed;
    // dropped half way, a charge that was made would wait for the reconciler, and one that
    // was refused would be recorded as failed instead of forgotten.
    let settling = charge_and_settle(state.clone(), attempt, resumed.is_some(), request.token, claim);
    match common::finish::finish(&state.requests, settling).await {
        Ok(answer) => answer,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Steps 3 and 4 for an attempt this request holds: asks the provider (first what became
/// of a resumed attempt), settles the attempt and stores the key's answer.
async fn charge_and_settle(
    state: AppState,
    attempt: Payment,
    resumed: bool,
    token: String,
    claim: Claim<AttemptProgress>,
) -> Result<Response, ApiError> {
    let state = &state;
    let outcome = if attempt.status == PaymentStatus::Processing {
        // A resumed attempt may have been charged by the try that started it: ask first.
        let known = if resumed {
            tokio::time::timeout(state.provider_timeout, state.provider.lookup(attempt.id))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
        } else {
            None
        };
        let outcome = match known {
            Some(outcome) => Ok(outcome),
            None => charge(state, attempt.id, attempt.amount, &token).await,
        };
        match outcome {
            Ok(outcome) => Some(outcome),
            // Only this request ever called the provider for it, and every call was turned
            // away: nothing was charged, and the attempt is forgotten.
            Err(NoAnswer::Unavailable) if !resumed => {
                forget(state, &attempt, &claim).await?;
                return Err(Error::ProviderUnavailable.into());
            }
            Err(NoAnswer::InvalidToken) if !resumed => {
                forget(state, &attempt, &claim).await?;
                return Err(Error::InvalidToken.into());
            }
            Err(NoAnswer::InvalidToken) => {
                claim.lapse(&state.db).await?;
                return Err(Error::InvalidToken.into());
            }
            // The outcome is unknown: the reconciler asks the provider and settles it.
            Err(NoAnswer::Unavailable | NoAnswer::Timeout) => {
                claim.lapse(&state.db).await?;
                return Err(Error::ProviderTimeout.into());
            }
        }
    } else {
        // Settled by the reconciler after an earlier try with this key gave up.
        None
    };
    let mut tx = state.db.begin().await?;
    let (payment, refunds) = match outcome {
        Some(outcome) => repository::settle(&mut tx, &attempt, &outcome, &claim).await?,
        None => {
            claim.complete(&mut tx, StatusCode::CREATED, &attempt).await?;
            (attempt, Vec::new())
        }
    };
    tx.commit().await?;
    metrics::counter!("payments_total", "status" => payment.status.as_str()).increment(1);
    crate::jobs::carry_out_refunds(state, &refunds).await;
    Ok((StatusCode::CREATED, Json(payment)).into_response())
}

/// Forgets an attempt the provider certainly did not charge, and frees its key, at once.
async fn forget(state: &AppState, attempt: &Payment, claim: &Claim<AttemptProgress>) -> Result<(), ApiError> {
    let mut tx = state.db.begin().await?;
    repository::delete_attempt(&mut *tx, attempt.id).await?;
    claim.abandon(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

/// Calls the provider through its circuit breaker, retrying with exponential backoff and
/// jitter while it is unavailable or slow (safe: the payment id makes the charge
/// idempotent). While the breaker is open nothing is sent: a first call turned away means
/// nothing can have been charged.
async fn charge(state: &AppState, payment_id: Uuid, amount: Money, token: &str) -> Result<Outcome, NoAnswer> {
    let mut timed_out = false;
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
    for attempt in 1..=PROVIDER_ATTEMPTS {
        let call = async {
            // Counted here, inside the breaker: only calls that reach the provider.
            metrics::counter!("provider_calls_total").increment(1);
            match tokio::time::timeout(state.provider_timeout, state.provider.charge(payment_id, amount, token)).await {
                Ok(answer) => answer,
                Err(_elapsed) => Err(ProviderError::Unknown),
            }
        };
        match state.provider_breaker.call_with(is_failure, call).await {
            Ok(outcome) => return Ok(outcome),
            Err(failsafe::Error::Inner(ProviderError::InvalidToken)) => return Err(NoAnswer::InvalidToken),
            Err(failsafe::Error::Inner(ProviderError::Unavailable)) => {}
            Err(failsafe::Error::Inner(ProviderError::Unknown)) => timed_out = true,
            Err(failsafe::Error::Rejected) => {
                // The same counter as the other services' breakers, so the same alert.
                metrics::counter!("upstream_rejected_total", "upstream" => PROVIDER).increment(1);
                tracing::warn!(%payment_id, attempt, "the card provider's circuit breaker is open; not charging");
                break;
            }
        }
        metrics::counter!("provider_errors_total").increment(1);
        if attempt < PROVIDER_ATTEMPTS {
            tracing::warn!(%payment_id, attempt, "the card provider did not answer; retrying");
            backoff.wait().await;
        }
    }
    Err(if timed_out { NoAnswer::Timeout } else { NoAnswer::Unavailable })
}

/// What counts against the provider in its breaker: no answer. A token it does not know
/// is an answer.
fn is_failure(err: &ProviderError) -> bool {
    !matches!(err, ProviderError::InvalidToken)
}
