//! What the order service asks the product service, through `common::client` (timeout,
//! retries for idempotent calls, a circuit breaker): current names and prices for carts
//! (every line in one call), and stock reservations for checkouts.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use common::client::{Upstream, UpstreamError};
use common::money::Money;
use common::{ApiError, ErrorCode, FieldErrors};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::Line;
use crate::error::Error;

/// What a cart shows of a product.
#[derive(Debug, Clone, Deserialize)]
pub struct ProductView {
    pub id: Uuid,
    pub name: String,
    pub price: Money,
}

/// One reserved line, with the price the order keeps.
#[derive(Debug, Clone, Deserialize)]
pub struct ReservedItem {
    pub product_id: Uuid,
    pub name: String,
    pub quantity: i32,
    pub unit_price: Money,
}

#[derive(Deserialize)]
struct Lookup {
    items: Vec<Option<ProductView>>,
}

#[derive(Deserialize)]
struct Reservation {
    items: Vec<ReservedItem>,
}

#[derive(Serialize)]
struct ReserveRequest<'a> {
    order_id: Uuid,
    items: &'a [Line],
}

/// The problem body of a refusal, as far as it is passed on.
#[derive(Deserialize)]
struct UpstreamProblem {
    code: String,
    detail: Option<String>,
    #[serde(default)]
    errors: BTreeMap<String, Vec<String>>,
}

/// Why a reservation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    /// The product service answered no: nothing is reserved.
    #[error(transparent)]
    Refused(#[from] Error),
    /// No answer: the reservation may or may not exist (unless the breaker kept the call
    /// from being made at all).
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// A success answer this service cannot read: the reservation exists, unusable.
    #[error("the product service answered a reservation with a body this service can't read")]
    Garbled(#[source] anyhow::Error),
}

impl ReserveError {
    /// Whether the product service certainly holds nothing for the order.
    pub fn nothing_reserved(&self) -> bool {
        matches!(self, ReserveError::Refused(_) | ReserveError::Upstream(UpstreamError::Open(_)))
    }
}

impl From<ReserveError> for ApiError {
    fn from(err: ReserveError) -> Self {
        match err {
            ReserveError::Refused(e) => e.into(),
            ReserveError::Upstream(e) => e.into(),
            ReserveError::Garbled(e) => ApiError::internal(e),
        }
    }
}

/// The product service, seen from the order service.
#[derive(Debug, Clone)]
pub struct Products {
    upstream: Upstream,
}

fn unexpected(what: &str, status: StatusCode) -> ApiError {
    ApiError::internal(anyhow::anyhow!("the product service answered {what} with {status}"))
}

impl Products {
    pub fn new(upstream: Upstream) -> Self {
        Self { upstream }
    }

    /// Products by id in one call, in the order of `ids`: `None` where there is no such
    /// product (or it was deleted).
    pub async fn products(&self, ids: &[Uuid]) -> Result<Vec<Option<ProductView>>, ApiError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let path = format!("/internal/products?ids={}", ids.join(","));
        let looked_up: Option<Lookup> = self.upstream.get_optional(&path).await?;
        let items = looked_up.map(|l| l.items).unwrap_or_default();
        if items.len() != ids.len() {
            return Err(ApiError::internal(anyhow::anyhow!(
                "the product service answered {} of {} products",
                items.len(),
                ids.len()
            )));
        }
        Ok(items)
    }

    /// Reserves every line for `order_id`, or none. Idempotent per order id, so it is
    /// retried like a read: a retry returns the reservation the first attempt made.
    /// `line_of` maps a line's position in `lines` to the one the client's request gave it,
    /// so that a refusal names the field the client sent.
    pub async fn reserve(
        &self,
        order_id: Uuid,
        lines: &[Line],
        line_of: &(dyn Fn(usize) -> usize + Sync),
    ) -> Result<Vec<ReservedItem>, ReserveError> {
        let body = ReserveRequest { order_id, items: lines };
        let answer = self.upstream.call(Method::POST, "/internal/reservations", Some(&body), true).await?;
        match answer.status {
            status if status.is_success() => serde_json::from_slice::<Reservation>(&answer.body)
                .map(|r| r.items)
                .map_err(|e| ReserveError::Garbled(anyhow::anyhow!("{status}: {e}"))),
            StatusCode::CONFLICT | StatusCode::UNPROCESSABLE_ENTITY => {
                let problem: UpstreamProblem = answer.json().map_err(|e| ReserveError::Refused(Error::Refused(e)))?;
                Err(ReserveError::Refused(refusal(problem, line_of)))
            }
            status => Err(ReserveError::Refused(Error::Refused(unexpected("a reservation", status)))),
        }
    }
}

/// The product service's "no", as this service's error.
fn refusal(problem: UpstreamProblem, line_of: &dyn Fn(usize) -> usize) -> Error {
    match problem.code.as_str() {
        "insufficient_stock" => {
            let mut err = ApiError::new(ErrorCode::InsufficientStock);
            if let Some(detail) = problem.detail {
                err = err.with_detail(detail);
            }
            Error::Refused(err)
        }
        "conflict" => Error::CheckoutReleased,
        "validation_failed" => {
            let mut errors = FieldErrors::default();
            for (field, messages) in problem.errors {
                let field = renumbered(&field, line_of);
                for message in messages {
                    errors.add(field.clone(), message);
                }
            }
            Error::Refused(ApiError::validation(errors))
        }
        other => Error::Refused(ApiError::internal(anyhow::anyhow!("the product service refused with {other}"))),
    }
}

/// `items[k].rest` with `k` mapped by `line_of`; any other field as it is.
fn renumbered(field: &str, line_of: &dyn Fn(usize) -> usize) -> String {
    let Some(rest) = field.strip_prefix("items[") else { return field.to_owned() };
    let Some((index, tail)) = rest.split_once(']') else { return field.to_owned() };
    match index.parse::<usize>() {
        Ok(k) => format!("items[{}]{tail}", line_of(k)),
        Err(_) => field.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_line_the_client_sent() {
        let line_of = |k: usize| [0, 2][k];
        assert_eq!(renumbered("items[1].product_id", &line_of), "items[2].product_id");
        assert_eq!(renumbered("items[0].quantity", &line_of), "items[0].quantity");
        assert_eq!(renumbered("items", &line_of), "items");
        assert_eq!(renumbered("items[x].quantity", &line_of), "items[x].quantity");
    }
}
