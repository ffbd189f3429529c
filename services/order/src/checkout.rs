//! Placing an order: the first step of the checkout saga.
//!
//! 1. The checkout is recorded (its order id, lines and Idempotency-Key) and committed
//!    before anything is reserved.
//! 2. The product service reserves every line under that order id (idempotent, so retried).
//! 3. One transaction deletes the checkout record, stores the order as `pending_payment`
//!    with the reserved prices, empties those lines from the cart, writes `order.created`
//!    and the Idempotency-Key's response.
//!
//! If the process dies between 1 and 3, the checkout record remains: a retry with the same
//! Idempotency-Key finishes it under the same order id (the reservation replays), and
//! otherwise the recovery job releases it with `order.cancelled`, which frees whatever was
//! reserved. A reservation is never left without an order or a release, nor an order
//! without a reservation.
//!
//! No database connection is held while the product service is called. The checkout
//! record is leased to the request working on it: a concurrent request with the same key
//! finds the lease and gets `409 request_in_progress`, and the recovery job waits for it
//! to end.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{SubsecRound, Utc};
use common::ApiError;
use common::extract::Json;
use common::idempotency::{Begin, Idempotency};
use common::money::{CURRENCY, Money};
use uuid::Uuid;

use crate::AppState;
use crate::domain::{Line, Order, OrderLine, OrderStatus, ShippingAddress, merge_lines, total};
use crate::error::Error;
use crate::products::ReserveError;
use crate::repository::{self, Checkout};

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
    let scope = user_id.to_string();
    // Where each product first appears in the request, for refusals that name a line.
    let requested: Option<Vec<Uuid>> = request.lines.as_ref().map(|l| l.iter().map(|l| l.product_id).collect());
    let checkout = match start(state, user_id, request.lines, key).await? {
        Started::Checkout(checkout) => checkout,
        Started::Finished(response) => return Ok(response),
    };
    let line_of = |k: usize| {
        let product = checkout.items.get(k).map(|line| line.product_id);
        requested.as_ref().zip(product).and_then(|(ids, p)| ids.iter().position(|id| *id == p)).unwrap_or(k)
    };
    let reserved = match state.products.reserve(checkout.order_id, &checkout.items, &line_of).await {
        Ok(reserved) => reserved,
        Err(err) => {
            if err.nothing_reserved() {
                repository::take_checkout(&state.db, checkout.order_id).await?;
            } else if key.is_some() && matches!(err, ReserveError::Upstream(_)) {
                // The outcome is unknown: the record stays, for a retry with the same key
                // to finish (or, if none comes, for the recovery job to release).
                repository::release_checkout(&state.db, checkout.order_id).await?;
            } else {
                // Nobody can resume it: release whatever may have been reserved now, rather
                // than holding stock until the recovery job comes by.
                repository::abandon_checkout(&state.db, checkout.order_id, user_id).await?;
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
            repository::abandon_checkout(&state.db, checkout.order_id, user_id).await?;
            return Err(Error::from(too_large).into());
        }
    };

    // PostgreSQL keeps microseconds; so does the answer, or a re-read would differ.
    let now = Utc::now().trunc_subsecs(6);
    let expires_at = now + chrono::Duration::from_std(state.payment_timeout).map_err(ApiError::internal)?;
    let order = Order {
        id: checkout.order_id,
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
    let mut tx = state.db.begin().await?;
    if !repository::place_order(&mut tx, &order, checkout.from_cart).await? {
        // Our lease ran out: a retry with the same key may have finished the order (then
        // its answer is ours too), or the recovery job released it.
        if let Some(key) = key
            && let Begin::Replay(response) = key.begin(&mut tx, &scope).await?
        {
            return Ok(response);
        }
        return Err(Error::CheckoutReleased.into());
    }
    if let Some(key) = key {
        key.finish(&mut tx, &scope, StatusCode::CREATED, &order).await?;
    }
    tx.commit().await?;
    metrics::counter!("orders_placed_total").increment(1);
    Ok((StatusCode::CREATED, Json(order)).into_response())
}

/// What [`start`] found.
enum Started {
    /// The checkout to carry out.
    Checkout(Checkout),
    /// A request with the same key finished the order meanwhile: its answer.
    Finished(Response),
}

/// The checkout record: the unfinished one of an earlier attempt with this key, or a new
/// one, committed before the reservation is asked for.
async fn start(
    state: &AppState,
    user_id: Uuid,
    lines: Option<Vec<Line>>,
    key: Option<&Idempotency>,
) -> Result<Started, ApiError> {
    let earlier = match (key, &lines) {
        (None, Some(_)) => repository::Earlier::default(),
        _ => repository::earlier(&state.db, user_id, key.map(Idempotency::as_str), lines.is_none()).await?,
    };
    if let (Some(key), Some(answer)) = (key, earlier.answer) {
        // Done before: replay it.
        return Ok(Started::Finished(key.replay(answer)?));
    }
    if let Some(key) = key
        && let Some(earlier) = earlier.checkout
    {
        // Started before: a request with the key still running holds its lease.
        if earlier.fingerprint.as_deref() != Some(key.fingerprint()) {
            return Err(Idempotency::reused());
        }
        if !repository::claim_checkout(&state.db, earlier.order_id, state.checkout_lease).await? {
            return Err(Idempotency::in_progress());
        }
        return Ok(Started::Checkout(earlier));
    }
    let (items, from_cart) = match lines {
        Some(lines) => (merge_lines(lines), false),
        None => {
            if earlier.cart.is_empty() {
                return Err(Error::NothingToOrder.into());
            }
            (earlier.cart, true)
        }
    };
    let checkout =
        Checkout { order_id: Uuid::now_v7(), items, from_cart, fingerprint: key.map(|k| k.fingerprint().to_vec()) };
    let lease = state.checkout_lease;
    if !repository::insert_checkout(&state.db, user_id, key.map(Idempotency::as_str), &checkout, lease).await? {
        // A concurrent request with the same key recorded its checkout first.
        return Err(Idempotency::in_progress());
    }
    if let Some(key) = key {
        // A request with this key may have finished its order (and deleted its record)
        // after this one found no stored answer and before it looked for a record: the
        // new record is then a second order in the making. Inserting it waited for that
        // commit, so the answer is visible now; undo the record and answer the same.
        let stored = key.stored(&mut *state.db.acquire().await?, &user_id.to_string()).await;
        if !matches!(stored, Ok(None)) {
            repository::take_checkout(&state.db, checkout.order_id).await?;
            if let Some(response) = stored? {
                return Ok(Started::Finished(response));
            }
        }
    }
    Ok(Started::Checkout(checkout))
}
