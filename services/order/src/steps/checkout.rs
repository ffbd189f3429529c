//! Placing an order: the first step of the checkout saga.
//!
//! 1. The checkout claims its key (the client's Idempotency-Key, or one of its own) with
//!    its order id and lines as progress, committed before anything is reserved; from the
//!    cart, the cart is read in the same transaction.
//! 2. The product service reserves every line under that order id (idempotent, so retried).
//! 3. One statement completes the claim with the answer, stores the order as
//!    `pending_payment` with the reserved prices, empties those lines from the cart and
//!    writes `order.created`.
//!
//! If the process dies between 1 and 3, the claim remains: a retry with the same
//! Idempotency-Key takes it over once its lease has run out and finishes it under the
//! same order id (the reservation replays), and otherwise the recovery job releases it
//! with `order.cancelled`, which frees whatever was reserved. A reservation is never left
//! without an order or a release, nor an order without a reservation.
//!
//! No database connection is held while the product service is called. A concurrent
//! request with the same key finds the claim's lease and gets `409 request_in_progress`,
//! and the recovery job waits for it to end.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{SubsecRound, Utc};
use common::ApiError;
use common::extract::Json;
use common::idempotency::{Begin, Claim, Idempotency};
use common::money::{CURRENCY, Money};
use uuid::Uuid;

use crate::AppState;
use crate::domain::{Line, Order, OrderLine, OrderStatus, ShippingAddress, merge_lines, total};
use crate::error::Error;
use crate::products::ReserveError;
use crate::repository::{self, Progress};

/// What the customer asked for, parsed.
#[derive(Debug)]
pub struct Request {
    /// `None`: order the cart.
    pub lines: Option<Vec<Line>>,
    pub shipping_address: ShippingAddress,
}

/// Places the order and answers `201` with it (or replays the first answer to this key).
pub async fn place(
    state: &AppState,
    user_id: Uuid,
    request: Request,
    key: Option<&Idempotency>,
) -> Result<Response, ApiError> {
    // Where each product first appears in the request, for refusals that name a line.
    let requested: Option<Vec<Uuid>> = request.lines.as_ref().map(|l| l.iter().map(|l| l.product_id).collect());
    let (claim, progress) = match start(state, user_id, request.lines, key).await? {
        Started::Claimed(claim, progress) => (claim, progress),
        Started::Finished(response) => return Ok(response),
    };
    let order_id = progress.order_id;
    let line_of = |k: usize| {
        let product = progress.lines.get(k).map(|line| line.product_id);
        requested.as_ref().zip(product).and_then(|(ids, p)| ids.iter().position(|id| *id == p)).unwrap_or(k)
    };
    let reserved = match state.products.reserve(order_id, &progress.lines, &line_of).await {
        Ok(reserved) => reserved,
        Err(err) => {
            if err.nothing_reserved() {
                claim.abandon(&state.db).await?;
            } else if claim.is_client_key() && matches!(err, ReserveError::Upstream(_)) {
                // The outcome is unknown: the claim stays, for a retry with the same key
                // to finish (or, if none comes, for the recovery job to release).
                claim.lapse(&state.db).await?;
            } else {
                // Nobody can resume it: release whatever may have been reserved now, rather
                // than holding stock until the recovery job comes by.
                repository::abandon_checkout(&state.db, &claim, order_id, user_id).await?;
            }
            return Err(err.into());
        }
    };
    let lines: Result<Vec<OrderLine>, _> =
        reserved.into_iter().map(|i| OrderLine::new(i.product_id, i.name, i.unit_price, i.quantity)).collect();
    let (lines, total) = match lines.and_then(|lines| total(&lines).map(|total| (lines, total))) {
        Ok(priced) => priced,
        Err(too_large) => {
            // Reserved, but no order can hold it: release at once.
            repository::abandon_checkout(&state.db, &claim, order_id, user_id).await?;
            return Err(Error::from(too_large).into());
        }
    };

    // PostgreSQL keeps microseconds; so does the answer, or a re-read would differ.
    let now = Utc::now().trunc_subsecs(6);
    let expires_at = now + chrono::Duration::from_std(state.payment_timeout).map_err(ApiError::internal)?;
    let order = Order {
        id: order_id,
        user_id,
        status: OrderStatus::PendingPayment,
        items: lines,
        total,
        currency: CURRENCY.to_owned(),
        shipping_address: request.shipping_address,
        created_at: now,
        updated_at: now,
        refunded_total: Money::ZERO,
        expires_at: Some(expires_at),
    };
    let answer = serde_json::to_vec(&order).map_err(ApiError::internal)?;
    if !repository::place_order(&state.db, &order, progress.from_cart, &claim, &answer).await? {
        // Our lease ran out: a retry with the same key may have finished the order (then
        // its answer is ours too), or the recovery job released it.
        if let Some(key) = key
            && let Some(response) = key.answered(&state.db, claim.scope()).await?
        {
            return Ok(response);
        }
        return Err(Error::CheckoutReleased.into());
    }
    metrics::counter!("orders_placed_total").increment(1);
    Ok((StatusCode::CREATED, Json(order)).into_response())
}

/// What [`start`] found.
enum Started {
    /// The checkout to carry out: its claim, and what it reserves under which order id.
    Claimed(Claim<Progress>, Progress),
    /// A request with the same key finished the order before: its answer.
    Finished(Response),
}

/// The checkout's claim: a new one, or the unfinished one of an earlier request with this
/// key (its order id and lines), committed before the reservation is asked for.
async fn start(
    state: &AppState,
    user_id: Uuid,
    lines: Option<Vec<Line>>,
    key: Option<&Idempotency>,
) -> Result<Started, ApiError> {
    let order_id = Uuid::now_v7();
    let unkeyed;
    let key = match key {
        Some(key) => key,
        None => {
            unkeyed = Idempotency::unkeyed(&format!("checkout:{order_id}"));
            &unkeyed
        }
    };
    let scope = user_id.to_string();
    let lease = state.checkout_lease;
    let (begun, fresh) = match lines {
        Some(lines) => {
            let progress = Progress { order_id, lines: merge_lines(lines), from_cart: false };
            (key.begin(&state.db, &scope, lease, &progress).await?, progress)
        }
        None => {
            // The cart is read and the claim made in one transaction: an empty cart is
            // refused with nothing claimed.
            let mut tx = state.db.begin().await?;
            let cart = repository::cart(&mut *tx, user_id).await?;
            let progress = Progress { order_id, lines: cart, from_cart: true };
            let begun = key.begin(&mut *tx, &scope, lease, &progress).await?;
            if matches!(&begun, Begin::Fresh(claim) if claim.resumed.is_none() && progress.lines.is_empty()) {
                return Err(Error::NothingToOrder.into());
            }
            tx.commit().await?;
            (begun, progress)
        }
    };
    match begun {
        Begin::Fresh(mut claim) => {
            // Started before and left unfinished: carried on as it was recorded.
            let progress = claim.resumed.take().unwrap_or(fresh);
            Ok(Started::Claimed(claim, progress))
        }
        Begin::Replay(response) => Ok(Started::Finished(response)),
        Begin::InProgress => Err(Idempotency::in_progress()),
    }
}
