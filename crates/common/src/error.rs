//! One error shape for the whole platform: RFC 9457 `application/problem+json` with a
//! stable machine-readable `code` (the table in API.md), built in one place.
//!
//! Services keep their own `thiserror` enum for domain failures and convert it into
//! [`ApiError`] in one `From` impl; extractors and middleware produce [`ApiError`] directly.
//! Internal causes travel inside the error so they can be logged (once, with their cause
//! chain, inside the request's span) and are never serialised into a response.

use std::collections::BTreeMap;
use std::fmt;

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::request_id;

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Where the `type` URIs of problems point; one page per code.
const TYPE_BASE: &str = "https://errors.shop.example/";

/// Every error code the platform answers with. Each code means one thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    InvalidCredentials,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    EmailTaken,
    UsernameTaken,
    InsufficientStock,
    InvalidStateTransition,
    AlreadyPaid,
    RequestInProgress,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
    IdempotencyKeyReused,
    AmountMismatch,
    RateLimited,
    Internal,
    UpstreamUnavailable,
    Unavailable,
    UpstreamTimeout,
}

impl ErrorCode {
    pub const fn status(self) -> StatusCode {
        use ErrorCode::*;
        match self {
            BadRequest => StatusCode::BAD_REQUEST,
            Unauthorized | InvalidCredentials => StatusCode::UNAUTHORIZED,
            Forbidden => StatusCode::FORBIDDEN,
            NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Conflict
            | EmailTaken
            | UsernameTaken
            | InsufficientStock
            | InvalidStateTransition
            | AlreadyPaid
            | RequestInProgress => StatusCode::CONFLICT,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ValidationFailed | IdempotencyKeyReused | AmountMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
            UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub const fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            BadRequest => "bad_request",
            Unauthorized => "unauthorized",
            InvalidCredentials => "invalid_credentials",
            Forbidden => "forbidden",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            Conflict => "conflict",
            EmailTaken => "email_taken",
            UsernameTaken => "username_taken",
            InsufficientStock => "insufficient_stock",
            InvalidStateTransition => "invalid_state_transition",
            AlreadyPaid => "already_paid",
            RequestInProgress => "request_in_progress",
            PayloadTooLarge => "payload_too_large",
            UnsupportedMediaType => "unsupported_media_type",
            ValidationFailed => "validation_failed",
            IdempotencyKeyReused => "idempotency_key_reused",
            AmountMismatch => "amount_mismatch",
            RateLimited => "rate_limited",
            Internal => "internal_error",
            UpstreamUnavailable => "upstream_unavailable",
            Unavailable => "unavailable",
            UpstreamTimeout => "upstream_timeout",
        }
    }

    pub const fn title(self) -> &'static str {
        use ErrorCode::*;
        match self {
            BadRequest => "Bad request",
            Unauthorized => "Unauthorized",
            InvalidCredentials => "Invalid credentials",
            Forbidden => "Forbidden",
            NotFound => "Not found",
            MethodNotAllowed => "Method not allowed",
            Conflict => "Conflict",
            EmailTaken => "Email taken",
            UsernameTaken => "Username taken",
            InsufficientStock => "Insufficient stock",
            InvalidStateTransition => "Invalid state transition",
            AlreadyPaid => "Already paid",
            RequestInProgress => "Request in progress",
            PayloadTooLarge => "Payload too large",
            UnsupportedMediaType => "Unsupported media type",
            ValidationFailed => "Validation failed",
            IdempotencyKeyReused => "Idempotency key reused",
            AmountMismatch => "Amount mismatch",
            RateLimited => "Too many requests",
            Internal => "Internal server error",
            UpstreamUnavailable => "Upstream unavailable",
            Unavailable => "Service unavailable",
            UpstreamTimeout => "Upstream timeout",
        }
    }

    /// The code a bare status from outside our handlers (axum's 405, a layer's 413) stands for.
    pub fn from_status(status: StatusCode) -> Self {
        match status {
            StatusCode::UNAUTHORIZED => Self::Unauthorized,
            StatusCode::FORBIDDEN => Self::Forbidden,
            StatusCode::NOT_FOUND => Self::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => Self::MethodNotAllowed,
            StatusCode::CONFLICT => Self::Conflict,
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::UnsupportedMediaType,
            StatusCode::UNPROCESSABLE_ENTITY => Self::ValidationFailed,
            StatusCode::TOO_MANY_REQUESTS => Self::RateLimited,
            StatusCode::BAD_GATEWAY => Self::UpstreamUnavailable,
            StatusCode::SERVICE_UNAVAILABLE => Self::Unavailable,
            StatusCode::GATEWAY_TIMEOUT => Self::UpstreamTimeout,
            s if s.is_client_error() => Self::BadRequest,
            _ => Self::Internal,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Per-field validation messages, keyed by the field's path in the request
/// (`email`, `items[0].quantity`). Sorted so that bodies are stable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
#[serde(transparent)]
pub struct FieldErrors(BTreeMap<String, Vec<String>>);

impl FieldErrors {
    pub fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.entry(field.into()).or_default().push(message.into());
    }

    /// Records `result`'s error under `field`, if it has one; handy when parsing several
    /// fields so that a client learns about all of them at once.
    pub fn check<T, E: fmt::Display>(&mut self, field: &str, result: Result<T, E>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(err) => {
                self.add(field, err.to_string());
                None
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many fields have messages.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn get(&self, field: &str) -> Option<&[String]> {
        self.0.get(field).map(Vec::as_slice)
    }

    /// `Ok(())` when nothing was recorded, the 422 otherwise.
    pub fn into_result(self) -> Result<(), ApiError> {
        if self.is_empty() { Ok(()) } else { Err(ApiError::validation(self)) }
    }
}

impl IntoIterator for FieldErrors {
    type Item = (String, Vec<String>);
    type IntoIter = std::collections::btree_map::IntoIter<String, Vec<String>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// The error body of every non-2xx response (RFC 9457).
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub type_uri: String,
    pub title: &'static str,
    pub status: u16,
    /// Stable and machine-readable; see the table in the API documentation.
    pub code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The `X-Request-Id` of the request, for support and log search.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// On 422 `validation_failed`: each offending field with its messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<FieldErrors>,
}

/// An error on its way to becoming a problem+json response.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    /// For the codes the contract answers with more than one status
    /// (`upstream_unavailable`: 502 from a failing upstream, 503 from an open breaker).
    status: Option<StatusCode>,
    detail: Option<String>,
    errors: Option<FieldErrors>,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// What really went wrong, for the log only.
    source: Option<anyhow::Error>,
}

impl ApiError {
    pub fn new(code: ErrorCode) -> Self {
        Self { code, status: None, detail: None, errors: None, headers: Vec::new(), source: None }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    /// What went wrong underneath, for the log (never the response).
    pub fn with_source(mut self, source: impl Into<anyhow::Error>) -> Self {
        self.source = Some(source.into());
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn with_headers(mut self, headers: axum::http::HeaderMap) -> Self {
        self.headers.extend(headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        self
    }

    /// The fields of a 422 `validation_failed`; `None` for any other error.
    pub fn into_field_errors(self) -> Option<FieldErrors> {
        self.errors
    }

    pub fn validation(errors: FieldErrors) -> Self {
        let mut err =
            Self::new(ErrorCode::ValidationFailed).with_detail("the request has invalid fields; see `errors`");
        err.errors = Some(errors);
        err
    }

    /// A single invalid field.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        let mut errors = FieldErrors::default();
        errors.add(field, message);
        Self::validation(errors)
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest).with_detail(detail)
    }

    pub fn not_found() -> Self {
        Self::new(ErrorCode::NotFound)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized)
            .with_detail(detail)
            .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    }

    pub fn forbidden() -> Self {
        Self::new(ErrorCode::Forbidden)
    }

    /// A failure that is ours, not the client's: logged with its causes, answered with a bare 500.
    pub fn internal(source: impl Into<anyhow::Error>) -> Self {
        let mut err = Self::new(ErrorCode::Internal);
        err.source = Some(source.into());
        err
    }

    /// A dependency (database, cache, broker) that cannot answer right now: a 503 the
    /// client may retry, with the cause logged.
    pub fn unavailable(source: impl Into<anyhow::Error>) -> Self {
        let mut err =
            Self::new(ErrorCode::Unavailable).with_detail("a dependency is temporarily unavailable; retry later");
        err.source = Some(source.into());
        err
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    pub fn status(&self) -> StatusCode {
        self.status.unwrap_or(self.code.status())
    }

    pub fn problem(&self) -> Problem {
        Problem {
            type_uri: format!("{TYPE_BASE}{}", self.code.as_str()),
            title: self.code.title(),
            status: self.status().as_u16(),
            code: self.code.as_str(),
            detail: self.detail.clone(),
            request_id: request_id::current(),
            errors: self.errors.clone(),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.detail {
            Some(detail) => write!(f, "{}: {detail}", self.code),
            None => write!(f, "{}", self.code),
        }
    }
}

impl std::error::Error for ApiError {}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        match err {
            // The pool could not hand out a connection in time: the database is overloaded
            // or away, which is worth a retry rather than a 500.
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => Self::unavailable(err),
            err => Self::internal(err),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let Some(source) = &self.source {
            // The one place internal failures are logged; we are inside the request's span,
            // so the line carries the request id.
            if status.is_server_error() {
                tracing::error!(code = self.code.as_str(), error = format!("{source:#}"), "request failed");
            } else {
                tracing::warn!(code = self.code.as_str(), error = format!("{source:#}"), "request refused");
            }
        }
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut response = (status, [(header::CONTENT_TYPE, PROBLEM_JSON)], body).into_response();
        for (name, value) in self.headers {
            response.headers_mut().append(name, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_the_status_of_the_api_table() {
        assert_eq!(ErrorCode::EmailTaken.status(), StatusCode::CONFLICT);
        assert_eq!(ErrorCode::AmountMismatch.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(ErrorCode::UpstreamUnavailable.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(ErrorCode::from_status(StatusCode::METHOD_NOT_ALLOWED), ErrorCode::MethodNotAllowed);
        assert_eq!(ErrorCode::from_status(StatusCode::IM_A_TEAPOT), ErrorCode::BadRequest);
    }

    #[test]
    fn internal_errors_never_show_their_cause() {
        let err = ApiError::internal(anyhow::anyhow!("connection to postgres://u:secret@db failed"));
        let body = serde_json::to_string(&err.problem()).unwrap();
        assert!(!body.contains("secret"), "{body}");
        assert_eq!(
            body,
            r#"{"type":"https://errors.shop.example/internal_error","title":"Internal server error","status":500,"code":"internal_error"}"#
        );
    }

    #[test]
    fn field_errors_collect_every_field() {
        let mut errors = FieldErrors::default();
        assert_eq!(errors.check::<u8, _>("email", Err("is not a valid email address")), None);
        assert_eq!(errors.check::<u8, &str>("password", Ok(1)), Some(1));
        errors.add("email", "is too long");
        let body = serde_json::to_value(&errors).unwrap();
        assert_eq!(body, serde_json::json!({"email": ["is not a valid email address", "is too long"]}));
    }
}
