//! What every request goes through: its id, client address, span and trace context, its
//! deadline, compression, the problem shape of bare errors, the access log line and the
//! request metrics.
//!
//! One tower layer does all of it, with one allocation a request (the boxed work, which
//! [`Answering`] moves into a task if the client leaves): as separate layers, or as an
//! axum `from_fn` middleware, each step cost a boxed future, a clone of the service
//! behind it and a copy of the futures it wraps, which together made up a third of a
//! cached read's CPU (measured with the layer removed).

use std::any::Any;
use std::collections::HashMap;
use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::FutureExt as _;
use metrics::{Counter, Histogram, SharedString};
use tokio_util::task::TaskTracker;
use tower::{Layer, Service};

use crate::browsers::{self, Encoding};
use crate::error::{ApiError, ErrorCode};
use crate::events;
use crate::extract::{TrustForwardedFor, forwarded_client};
use crate::request_id;
use crate::trace;

/// What the shell needs: where detached requests are tracked, whether to believe
/// `X-Forwarded-For`, the requests' deadline and the request metrics' handles. Made once
/// per application and kept for the life of the process, so that a request borrows it
/// instead of counting a reference in and out (an atomic on a line every core shares).
pub(super) struct Shell {
    pub(super) requests: TaskTracker,
    pub(super) trust_forwarded_for: bool,
    pub(super) request_timeout: Duration,
    pub(super) metrics: RequestMetrics,
}

impl Shell {
    /// The layer that puts every route behind this shell.
    pub(super) fn layer(self) -> ShellLayer {
        // One per application (a process makes one; a test process one per test app).
        ShellLayer { shell: Box::leak(Box::new(self)) }
    }
}

#[derive(Clone, Copy)]
pub(super) struct ShellLayer {
    shell: &'static Shell,
}

impl<S> Layer<S> for ShellLayer {
    type Service = ShellService<S>;

    fn layer(&self, inner: S) -> ShellService<S> {
        ShellService { inner, shell: self.shell }
    }
}

#[derive(Clone)]
pub(super) struct ShellService<S> {
    inner: S,
    shell: &'static Shell,
}

/// A request's work as the shell runs it: boxed, so that it can move into a task of its
/// own if the client leaves before the answer (see [`Answering`]); a panic is caught.
type Work = Pin<Box<dyn Future<Output = Result<Response, Box<dyn Any + Send>>> + Send>>;

/// The route's own work, boxed as soon as it is made, so that the shell's wrappers move a
/// pointer: copying it (a compressed answer's several hundred bytes) into each of them was
/// 8% of a cached read's instructions, counted with callgrind.
type Handled = Pin<Box<dyn Future<Output = Response> + Send>>;

impl<S> Service<Request> for ShellService<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Answering;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    /// Settles the request's id, client address, span and trace context, and starts its
    /// work: run to completion even if its client leaves, tracked then, so that shutdown
    /// waits for it, but no longer than its deadline ([`deadline_passed`]); compressed if
    /// the client accepts that; a bare error made a problem.
    fn call(&mut self, mut request: Request) -> Answering {
        let shell = self.shell;
        let started = Instant::now();
        let id = request_id::of(&request);
        if let Some(client) = forwarded_client(&request, TrustForwardedFor(shell.trust_forwarded_for)) {
            request.extensions_mut().insert(client);
        }
        let route = request.extensions().get::<MatchedPath>().cloned();
        let method = method_label(request.method());
        let span = make_span(method, route.as_ref().map_or("", MatchedPath::as_str), &id);
        let traceparent = request.headers().get(&trace::TRACEPARENT).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let deadline = shell.request_timeout;
        let handled: Handled = if Encoding::preferred(request.headers()).is_some() {
            Box::pin(browsers::compressed(self.inner.clone(), request))
        } else {
            Box::pin(self.inner.call(request).map(|Ok(response)| response))
        };
        // Relays are woken for what the request emitted once it is done (and committed):
        // inside `waking`, so that what it committed before its deadline is still published.
        let work = events::waking(async move {
            let response = tokio::time::timeout(deadline, handled).await.unwrap_or_else(|_| deadline_passed(deadline));
            problem_for_bare_errors(response)
        });
        let work = trace::instrument(span.clone(), traceparent.as_deref(), request_id::scope(id.clone(), work));
        Answering {
            work: Some(Box::pin(AssertUnwindSafe(work).catch_unwind())),
            shell,
            started,
            method,
            route,
            id,
            span,
        }
    }
}

/// A request being answered. Dropped before its work is done (hyper drops it when the
/// client leaves), it moves the work into a task, where it finishes: a handler cut off
/// at an arbitrary await would abandon a transaction or a pool checkout half way, and
/// under load such cancellations were seen to strand sqlx pool permits until every
/// acquire timed out. A task for every request would prevent that too, at the cost of a
/// spawn and two hand-offs between tasks, on every request, for the few whose client
/// leaves.
pub(super) struct Answering {
    /// `None` once done.
    work: Option<Work>,
    shell: &'static Shell,
    started: Instant,
    method: &'static str,
    route: Option<MatchedPath>,
    id: HeaderValue,
    span: tracing::Span,
}

impl Future for Answering {
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let work = self.work.as_mut().expect("an answered request is not polled again");
        let outcome = ready!(work.as_mut().poll(cx));
        self.work = None;
        let mut response = match outcome {
            Ok(response) => response,
            Err(_panic) => {
                let _entered = self.span.enter();
                request_id::sync_scope(self.id.clone(), || {
                    ApiError::internal(anyhow::anyhow!("the request panicked")).into_response()
                })
            }
        };
        let latency = self.started.elapsed();
        on_response(&response, latency, &self.span);
        self.shell.metrics.record(self.method, self.route.as_ref(), response.status(), latency);
        response.headers_mut().insert(request_id::X_REQUEST_ID.clone(), self.id.clone());
        Poll::Ready(Ok(response))
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        let Some(work) = self.work.take() else { return };
        // Outside a runtime (the runtime itself is going), there is nowhere to finish.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(self.shell.requests.track_future(work));
        }
    }
}

/// The answer to a request still running at its deadline (`REQUEST_TIMEOUT`). By then its
/// handler has been dropped at the await it was waiting on: an open transaction is rolled
/// back (sqlx rolls back a transaction dropped uncommitted), and each multi-step
/// effect of the platform is written to survive being cut off there as it survives a
/// crash (a checkout's record is released by the recovery job, a refund is carried out by
/// the refund job); a charge under way is not cut off at all (`payment::steps::charge`). `503
/// unavailable` is the contract's code for "not now, retry": the request was not refused,
/// it was given up on, and a retry with its Idempotency-Key finds what it had done.
fn deadline_passed(deadline: Duration) -> Response {
    tracing::warn!(deadline_ms = deadline.as_millis() as u64, "the request ran past its deadline and was ended");
    ApiError::new(ErrorCode::Unavailable)
        .with_detail("the request took longer than the server allows and was stopped; retry it later")
        .into_response()
}

/// The request's span: with OpenTelemetry recording, a server span in its terms (the
/// child of the caller's span when the request carries a valid `traceparent`); otherwise
/// only what log lines show. Its `trace_id` goes into every log line of the request.
fn make_span(method: &str, route: &str, request_id: &HeaderValue) -> tracing::Span {
    let request_id = request_id.to_str().unwrap_or_default();
    if trace::mode() == trace::Mode::OpenTelemetry {
        tracing::info_span!(
            "request",
            otel.name = %format_args!("{method} {route}"),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            http.route = route,
            http.response.status_code = tracing::field::Empty,
            method,
            route,
            request_id,
            trace_id = tracing::field::Empty,
        )
    } else {
        tracing::info_span!("request", method, route, request_id, trace_id = tracing::field::Empty)
    }
}

fn on_response(response: &Response, latency: Duration, span: &tracing::Span) {
    let status = response.status();
    if trace::mode() == trace::Mode::OpenTelemetry {
        span.record("http.response.status_code", status.as_u16());
        if status.is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
    }
    span.in_scope(|| tracing::info!(status = status.as_u16(), latency_ms = latency.as_millis() as u64, "response"));
}

/// Turns error responses that did not come from our handlers (axum's 405, a layer's 413)
/// into problem+json, so that no client ever sees another error shape.
fn problem_for_bare_errors(response: Response) -> Response {
    let status = response.status();
    // axum and tower-http answer with an empty or plain-text body; a JSON body (like
    // `/ready`'s 503) is already what the endpoint means to say.
    let is_bare = response.headers().get(header::CONTENT_TYPE).is_none_or(|v| v.as_bytes().starts_with(b"text/plain"));
    if (status.is_client_error() || status.is_server_error()) && is_bare {
        let allow = response.headers().get(header::ALLOW).cloned();
        let mut problem = ApiError::new(ErrorCode::from_status(status)).into_response();
        *problem.status_mut() = status;
        if let Some(allow) = allow {
            problem.headers_mut().insert(header::ALLOW, allow);
        }
        return problem;
    }
    response
}

/// The request counter and latency histogram of each method, route and status, looked
/// up once and kept: the `metrics` macros hash every label on every call. The keys are
/// our own routes, methods and statuses, so a fast hash does (SipHash's was 1.6% of a
/// cached read's instructions).
#[derive(Default)]
pub(super) struct RequestMetrics {
    by_route: std::sync::RwLock<HashMap<Arc<str>, ByMethodAndStatus, FastHash>>,
}

type FastHash = foldhash::fast::RandomState;

/// One route's handles, by method and status.
type ByMethodAndStatus = HashMap<(&'static str, u16), (Counter, Histogram), FastHash>;

impl RequestMetrics {
    fn record(&self, method: &'static str, route: Option<&MatchedPath>, status: StatusCode, latency: Duration) {
        let route = route.map_or("unmatched", MatchedPath::as_str);
        let key = (method, status.as_u16());
        {
            let by_route = self.by_route.read().unwrap_or_else(|e| e.into_inner());
            if let Some((counter, histogram)) = by_route.get(route).and_then(|statuses| statuses.get(&key)) {
                counter.increment(1);
                histogram.record(latency.as_secs_f64());
                return;
            }
        }
        let labels = [
            ("method", SharedString::const_str(method)),
            ("route", route.to_owned().into()),
            ("status", status.as_u16().to_string().into()),
        ];
        let (counter, histogram) = (
            metrics::counter!("http_requests_total", &labels),
            metrics::histogram!("http_request_duration_seconds", &labels),
        );
        counter.increment(1);
        histogram.record(latency.as_secs_f64());
        let mut by_route = self.by_route.write().unwrap_or_else(|e| e.into_inner());
        by_route.entry(route.into()).or_default().insert(key, (counter, histogram));
    }
}

/// The `method` label: a method HTTP defines, by name, or `other`. Every label value is a
/// series (a counter and a histogram) the process keeps for good, so a client must not be
/// able to add them by inventing methods; routes and statuses are bounded already.
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"];
    KNOWN.into_iter().find(|known| *known == method.as_str()).unwrap_or("other")
}
