//! The payment service's failures, and the one place they become API errors.

use axum::http::StatusCode;
use common::{ApiError, ErrorCode};

use crate::domain::RefundRefused;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such payment or order, or one the caller may not see.
    #[error("not found")]
    NotFound,
    #[error("this order is paid already")]
    AlreadyPaid,
    #[error("another payment for this order is being processed")]
    PaymentInProgress,
    /// An attempt the database refused: the order has one being charged or charged.
    /// Told apart by `repository::order_charged` once its transaction is over.
    #[error("another payment for this order is being processed")]
    OrderBeingCharged,
    #[error("a request with this Idempotency-Key is still running; retry shortly")]
    RequestInProgress,
    #[error("an order that is {0} can't be paid")]
    NotPayable(&'static str),
    #[error("the amount must equal the order total, {0}")]
    AmountMismatch(String),
    #[error("not a card token the provider knows")]
    InvalidToken,
    #[error("the card provider is unavailable; nothing was charged")]
    ProviderUnavailable,
    /// The provider did not answer in time: the charge is settled later by the reconciler.
    #[error("the card provider did not answer in time; the payment will be settled shortly")]
    ProviderTimeout,
    #[error(transparent)]
    Refund(#[from] RefundRefused),
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        let detail = err.to_string();
        match err {
            Error::NotFound => ApiError::not_found(),
            Error::AlreadyPaid => ApiError::new(ErrorCode::AlreadyPaid).with_detail(detail),
            Error::PaymentInProgress | Error::OrderBeingCharged => {
                ApiError::new(ErrorCode::Conflict).with_detail(detail)
            }
            Error::RequestInProgress => common::idempotency::Idempotency::in_progress(),
            Error::NotPayable(_) => ApiError::new(ErrorCode::InvalidStateTransition).with_detail(detail),
            Error::AmountMismatch(_) => ApiError::new(ErrorCode::AmountMismatch).with_detail(detail),
            Error::InvalidToken => ApiError::invalid_field("method.token", detail),
            Error::ProviderUnavailable => ApiError::new(ErrorCode::UpstreamUnavailable).with_detail(detail),
            Error::ProviderTimeout => {
                ApiError::new(ErrorCode::UpstreamTimeout).with_status(StatusCode::GATEWAY_TIMEOUT).with_detail(detail)
            }
            Error::Refund(RefundRefused::NotCaptured(_) | RefundRefused::NothingLeft) => {
                ApiError::new(ErrorCode::InvalidStateTransition).with_detail(detail)
            }
            Error::Refund(e @ (RefundRefused::Zero | RefundRefused::TooMuch { .. })) => {
                ApiError::invalid_field("amount", e.to_string())
            }
            Error::Database(e) => ApiError::from(e),
        }
    }
}
