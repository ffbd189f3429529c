//! Calls to another service of the platform, when the caller needs the answer now (the
//! order service reserving stock, the payment service reading an order).
//!
//! Every call has a timeout; idempotent calls are retried on connection errors, timeouts
//! and 502/503/504 with exponential backoff and full jitter; every upstream has a circuit
//! breaker (failsafe) that opens after consecutive failures, so that while an upstream is
//! down callers answer `503 upstream_unavailable` at once instead of piling up behind
//! timeouts, and that lets a trial call through after a jittered pause. Each request
//! carries a service token, the caller's `X-Request-Id` and a child `traceparent`.
//!
//! A service called in its own process (every one of them, in `shop`) is called without
//! a socket: the request goes through the same application, shell and routes as it
//! would over HTTP, in the caller's task ([`InProcess`]).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{StatusCode, header};
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
/// The application of this process, for the services it serves to call each other
/// without a socket: set once it is built (`common::http::app`). Over loopback HTTP, each
/// such call cost the caller a client request and the process a server one, with their
/// system calls, for what is a function call away.
#[derive(Clone, Default)]
pub struct InProcess(Arc<OnceLock<Router>>);

impl InProcess {
    pub(crate) fn serve(&self, app: &Router) {
        // A process serves one application; a second one (a test's) calls over HTTP.
        let _ = self.0.set(app.clone());
    }
}

/// Where an upstream's requests go.
#[derive(Clone)]
enum Target {
    Http { base_url: Arc<str>, http: reqwest::Client },
    InProcess(InProcess),
}

/// How long a service token is used for the calls of one upstream: well within its
/// validity (`SERVICE_TOKEN_TTL`, a minute), so that it is signed once, not per call.
const TOKEN_REUSE: Duration = Duration::from_secs(20);

#[derive(Clone)]
pub struct Upstream {
    name: &'static str,
    target: Target,
    caller: &'static str,
    timeout: Duration,
    breaker: Breaker,
    auth: Arc<Authenticator>,
    token: Arc<Mutex<Option<(Instant, String)>>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let target = match &self.target {
            Target::Http { base_url, .. } => base_url.as_ref(),
            Target::InProcess(_) => "in process",
        };
        f.debug_struct("Upstream").field("name", &self.name).field("target", &target).finish_non_exhaustive()
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
        let target = Target::Http {
            base_url: base_url.trim_end_matches('/').into(),
            http: reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(30)).build().unwrap_or_default(),
        };
        Self::to(name, target, caller, timeout, auth)
    }

    /// An upstream served by this very process (`app`, once it is built).
    pub fn in_process(
        name: &'static str,
        app: InProcess,
        caller: &'static str,
        timeout: Duration,
        auth: Arc<Authenticator>,
    ) -> Self {
        Self::to(name, Target::InProcess(app), caller, timeout, auth)
    }

    fn to(
        name: &'static str,
        target: Target,
        caller: &'static str,
        timeout: Duration,
        auth: Arc<Authenticator>,
    ) -> Self {
        Self { name, target, caller, timeout, breaker: breaker(), auth, token: Arc::default() }
    }

    /// The service token to call with: the one signed less than [`TOKEN_REUSE`] ago, or
    /// a new one.
    fn token(&self) -> Result<String, UpstreamError> {
        let mut kept = self.token.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((signed, token)) = kept.as_ref()
            && signed.elapsed() < TOKEN_REUSE
        {
            return Ok(token.clone());
        }
        let token =
            self.auth.service_token(self.caller).map_err(|e| UpstreamError::Unavailable(self.name, e.to_string()))?;
        *kept = Some((Instant::now(), token.clone()));
        Ok(token)
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
        let token = self.token()?;
        let (base_url, http) = match &self.target {
            Target::Http { base_url, http } => (base_url, http),
            Target::InProcess(app) => return self.attempt_in_process(app, method, path, body, &token).await,
        };
        let mut request = http
            .request(method, format!("{base_url}{path}"))
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
        self.answer(status, body)
    }

    /// An answer that arrived: a server error is the upstream failing (retried, counted
    /// by its breaker), anything else is its answer.
    fn answer(&self, status: StatusCode, body: axum::body::Bytes) -> Result<Answer, UpstreamError> {
        if matches!(status.as_u16(), 502..=504) || status == StatusCode::INTERNAL_SERVER_ERROR {
            return Err(UpstreamError::Unavailable(self.name, format!("answered {status}")));
        }
        Ok(Answer { status, body })
    }

    /// One attempt through this process's own application: the request as HTTP would
    /// carry it, answered by the same shell and routes, in this task.
    async fn attempt_in_process<B: Serialize + ?Sized>(
        &self,
        app: &InProcess,
        method: Method,
        path: &str,
        body: Option<&B>,
        token: &str,
    ) -> Result<Answer, UpstreamError> {
        use tower::ServiceExt as _;
        let unreachable = |why: String| UpstreamError::Unreachable(self.name, why);
        let router = app.0.get().ok_or_else(|| unreachable("this process is not serving yet".into()))?.clone();
        let mut request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(&trace::TRACEPARENT, trace::outgoing());
        if let Some(id) = request_id::current() {
            request = request.header(&request_id::X_REQUEST_ID, id);
        }
        let body = match body {
            Some(body) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                serde_json::to_vec(body).map_err(|e| UpstreamError::Unavailable(self.name, e.to_string()))?
            }
            None => Vec::new(),
        };
        let request = request.body(axum::body::Body::from(body)).map_err(|e| unreachable(e.to_string()))?;
        let answered = async {
            let Ok(response) = router.oneshot(request).await;
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX).await;
            (status, body)
        };
        let (status, body) =
            tokio::time::timeout(self.timeout, answered).await.map_err(|_| UpstreamError::Timeout(self.name))?;
        tracing::Span::current().record("http.response.status_code", status.as_u16());
        self.answer(status, body.map_err(|e| UpstreamError::Unavailable(self.name, e.to_string()))?)
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
