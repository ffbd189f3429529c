//! The user service's failures, and the one place they become API errors.

use common::{ApiError, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Unknown email or wrong password: the same answer for both.
    #[error("invalid credentials")]
    InvalidCredentials,
    #[error("the email address is already registered")]
    EmailTaken,
    #[error("the username is already taken")]
    UsernameTaken,
    #[error("user not found")]
    NotFound,
    /// A refresh token that is unknown, expired, revoked or replayed.
    #[error("the refresh token is {0}")]
    RefreshToken(&'static str),
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

impl From<Error> for ApiError {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidCredentials => {
                ApiError::new(ErrorCode::InvalidCredentials).with_detail("the email or password is incorrect")
            }
            Error::EmailTaken => {
                ApiError::new(ErrorCode::EmailTaken).with_detail("an account with this email already exists")
            }
            Error::UsernameTaken => ApiError::new(ErrorCode::UsernameTaken).with_detail("this username is taken"),
            Error::NotFound => ApiError::not_found(),
            Error::RefreshToken(why) => ApiError::unauthorized(format!("the refresh token is {why}")),
            Error::Database(e) => ApiError::from(e),
        }
    }
}

/// Turns a violation of the unique indexes on email and username into its API error.
pub(crate) fn on_unique_violation(err: sqlx::Error) -> Error {
    if common::db::is_unique_violation(&err, "users_email_key") {
        Error::EmailTaken
    } else if common::db::is_unique_violation(&err, "users_username_key") {
        Error::UsernameTaken
    } else {
        Error::Database(err)
    }
}
