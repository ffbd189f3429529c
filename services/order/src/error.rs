//! The order service's failures, and the one place they become API errors.

use common::{ApiError, ErrorCode, FieldErrors};

use crate::domain::{IllegalTransition, TotalTooLarge};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such order, or one the caller may not see (existence is not revealed).
    #[error("not found")]
    NotFound,
    #[error("no such product")]
    UnknownProduct,
    #[error(transparent)]
    IllegalTransition(#[from] IllegalTransition),
    /// Another request moved the order between our read and our guarded update.
    #[error("the order changed while this request ran; it is now {0}")]
    ChangedConcurrently(&'static str),
    #[error("the cart holds at most {0} products")]
    CartFull(usize),
    #[error("the cart is empty and the request names no items")]
    NothingToOrder,
    #[error(transparent)]
    TotalTooLarge(#[from] TotalTooLarge),
    /// The product service refused the reservation; its problem is passed on.
    #[error("the reservation was refused")]
    Refused(ApiError),
    /// The checkout outlived the recovery window and its reservation was released.
    #[error("the checkout took too long and was released")]
    CheckoutReleased,
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        match err {
            Error::NotFound => ApiError::not_found(),
            Error::UnknownProduct => ApiError::not_found().with_detail("no such product, or it can't be ordered"),
            Error::IllegalTransition(e) => ApiError::new(ErrorCode::InvalidStateTransition).with_detail(e.to_string()),
            err @ Error::ChangedConcurrently(_) => {
                ApiError::new(ErrorCode::InvalidStateTransition).with_detail(err.to_string())
            }
            err @ Error::CartFull(_) => ApiError::new(ErrorCode::Conflict).with_detail(err.to_string()),
            err @ Error::NothingToOrder => ApiError::invalid_field("items", err.to_string()),
            Error::TotalTooLarge(e) => ApiError::invalid_field("items", e.to_string()),
            Error::Refused(api) => api,
            err @ Error::CheckoutReleased => {
                ApiError::new(ErrorCode::Conflict).with_detail(format!("{err}; place the order again"))
            }
            Error::Database(e) => ApiError::from(e),
        }
    }
}

/// A field error under `field`, for the validation failures gathered in handlers.
pub fn field_errors(errors: impl IntoIterator<Item = (impl Into<String>, impl Into<String>)>) -> ApiError {
    let mut all = FieldErrors::default();
    for (field, message) in errors {
        all.add(field, message);
    }
    ApiError::validation(all)
}
