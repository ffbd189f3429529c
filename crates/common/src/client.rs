//! Calls to another service of the platform, when the caller needs the answer now (the
//! order service reserving stock, the payment service reading an order).
//!
//! Every call has a timeout; idempotent calls are retried on connection errors, timeouts
//! and 502/503/504 with exponential backoff and full jitter; every upstream has a circuit
//! breaker (failsafe) that opens after consecutive failures, so that while an upstream is
//! down callers answer `503 upstream_unavailable` at once instead of piling up behind
//! timeouts, and that lets a trial call through after a jittered pause. Each request
//! carries a fresh service token, the caller's `X-Request-Id` and a child `traceparent`.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use failsafe::backoff::{self, EqualJittered};
use failsafe::failure_policy::{self, ConsecutiveFailures};
use failsafe::futures::CircuitBreaker;
use failsafe::{Config, StateMachine};
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument as _;

use crate::auth::Authenticator;
use crate::error::{ApiError, ErrorCode};
use crate::{request_id, trace};

/// Consecutive failures that open a breaker.
pub const FAILURES_TO_OPEN: u32 = 5;
/// How long an open breaker waits before a trial call (jittered, growing while it fails).
const OPEN_FOR: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(30));
const RETRY_BASE: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_millis(800);

/// A circuit breaker with the platform's one policy: open after [`FAILURES_TO_OPEN`]
/// failures in a row, then let a trial call through after a jittered pause that grows
/// while trials fail. Cloning it shares its state.
pub type Breaker = StateMachine<ConsecutiveFailures<EqualJittered>, ()>;

/// A fresh breaker, closed: the one in front of each upstream service here, and the one
/// in front of the card provider (payment service).
pub fn breaker() -> Breaker {
    let policy =
        failure_policy::consecutive_failures(FAILURES_TO_OPEN, backoff::equal_jittered(OPEN_FOR.0, OPEN_FOR.1));
    Config::new().failure_policy(policy).build()
}

/// How a call to an upstream went wrong (a 4xx answer is not an error: it is the
/// upstream's answer, and the caller decides what it means).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The breaker is open and the request was not sent at all.
    #[error("the circuit breaker of {0} is open")]
    Open(&'static str),
    #[error("{0} did not answer in time")]
    Timeout(&'static str),
    /// No connection could be made (nothing listens, or it went away mid-request).
    #[error("{0} can't be reached: {1}")]
    Unreachable(&'static str, String),
    /// It answered with a server error.
    #[error("{0} is unavailable: {1}")]
    Unavailable(&'static str, String),
}

impl From<UpstreamError> for ApiError {
    fn from(err: UpstreamError) -> Self {
        match &err {
            // 503: the upstream is not there (or known to be down); retrying later helps.
            UpstreamError::Open(_) | UpstreamError::Unreachable(..) => ApiError::new(ErrorCode::UpstreamUnavailable)
                .with_status(StatusCode::SERVICE_UNAVAILABLE)
                .with_detail("a service this request needs is unavailable; retry later")
                .with_source(err),
            UpstreamError::Timeout(_) => ApiError::new(ErrorCode::UpstreamTimeout)
                .with_detail("a service this request needs did not answer in time")
                .with_source(err),
            UpstreamError::Unavailable(..) => ApiError::new(ErrorCode::UpstreamUnavailable)
                .with_detail("a service this request needs is unavailable; retry later")
                .with_source(err),
        }
    }
}

/// An upstream's answer: its status and JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: axum::body::Bytes,
}

impl Answer {
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        serde_json::from_slice(&self.body).map_err(|e| ApiError::internal(anyhow::anyhow!("an upstream answered {e}")))
    }
}

/// One upstream service, shared by every request that calls it.
#[derive(Clone)]
pub struct Upstream {
    name: &'static str,
    base_url: Arc<str>,
    caller: &'static str,
    http: reqwest::Client,
    timeout: Duration,
    breaker: Breaker,
    auth: Arc<Authenticator>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("name", &self.name).field("base_url", &self.base_url).finish_non_exhaustive()
    }
}

/// What counts as a failure for the breaker: the upstream did not answer usefully.
fn is_failure(err: &UpstreamError) -> bool {
    !matches!(err, UpstreamError::Open(_))
}

impl Upstream {
    /// `name` names the upstream in errors and metrics; `caller` signs the service token.
    pub fn new(
        name: &'static str,
        base_url: &str,
        caller: &'static str,
        timeout: Duration,
        auth: Arc<Authenticator>,
    ) -> Self {
        Self {
            name,
            base_url: base_url.trim_end_matches('/').into(),
            caller,
            http: reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(30)).build().unwrap_or_default(),
            timeout,
            breaker: breaker(),
            auth,
        }
    }

    /// Sends `body` (if any) to `path`. `idempotent` calls (a retry changes nothing, such as
    /// a GET or a reservation keyed by order id) are retried; others are sent once.
    pub async fn call<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        idempotent: bool,
    ) -> Result<Answer, UpstreamError> {
        let attempts = if idempotent { 3 } else { 1 };
        let mut backoff = crate::backoff::Backoff::new(RETRY_BASE, RETRY_MAX);
        let mut attempt = 1;
        let mut last = None;
        loop {
            // A client span per attempt, so retries show in the trace; the callee's request
            // span is its child (the `traceparent` sent is this span's).
            let span = tracing::info_span!(
                "upstream",
                otel.name = %format_args!("{method} {}", self.name),
                otel.kind = "client",
                server.address = self.name,
                url.path = path,
                attempt,
                http.response.status_code = tracing::field::Empty,
            );
            let attempt_call = self.attempt(method.clone(), path, body).instrument(span);
            let outcome = self.breaker.call_with(is_failure, attempt_call).await;
            let err = match outcome {
                Ok(answer) => return Ok(answer),
                Err(failsafe::Error::Rejected) => {
                    metrics::counter!("upstream_rejected_total", "upstream" => self.name).increment(1);
                    // `Open` promises that nothing was sent; after an attempt that was,
                    // what that attempt met is the answer.
                    return Err(last.unwrap_or(UpstreamError::Open(self.name)));
                }
                Err(failsafe::Error::Inner(err)) => err,
            };
            metrics::counter!("upstream_errors_total", "upstream" => self.name).increment(1);
            if attempt >= attempts {
                return Err(err);
            }
            tracing::warn!(upstream = self.name, attempt, error = %err, "retrying an upstream call");
            last = Some(err);
            backoff.wait().await;
            attempt += 1;
        }
    }

    async fn attempt<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Answer, UpstreamError> {
        let token =
            self.auth.service_token(self.caller).map_err(|e| UpstreamError::Unavailable(self.name, e.to_string()))?;
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base_url))
            .timeout(self.timeout)
            .bearer_auth(token)
            .header(trace::TRACEPARENT.as_str(), trace::outgoing());
        if let Some(id) = request_id::current() {
            request = request.header(request_id::X_REQUEST_ID.as_str(), id);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.classify(e))?;
        let status = response.status();
        tracing::Span::current().record("http.response.status_code", status.as_u16());
        let body = response.bytes().await.map_err(|e| self.classify(e))?;
        if matches!(status.as_u16(), 502..=504) || status == StatusCode::INTERNAL_SERVER_ERROR {
            return Err(UpstreamError::Unavailable(self.name, format!("answered {status}")));
        }
        Ok(Answer { status, body })
    }

    fn classify(&self, err: reqwest::Error) -> UpstreamError {
        if err.is_timeout() {
            UpstreamError::Timeout(self.name)
        } else if err.is_connect() || err.is_request() {
            UpstreamError::Unreachable(self.name, err.without_url().to_string())
        } else {
            UpstreamError::Unavailable(self.name, err.without_url().to_string())
        }
    }

    /// Reads one resource: `Some` on 200, `None` on 404; any other answer is ours to
    /// worry about (a 500 with the cause logged).
    pub async fn get_optional<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, ApiError> {
        let answer = self.call::<()>(Method::GET, path, None, true).await?;
        match answer.status {
            StatusCode::OK => Ok(Some(answer.json()?)),
            StatusCode::NOT_FOUND => Ok(None),
            status => Err(ApiError::internal(anyhow::anyhow!("{} answered GET {path} with {status}", self.name))),
        }
    }

    /// Whether the breaker would let a call through now.
    pub fn is_available(&self) -> bool {
        self.breaker.is_call_permitted()
    }
}
