//! What every request goes through: its id, client address, span and trace context, its
//! deadline, compression, the problem shape of bare errors, the access log line and the
//! request metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics::{Counter, Histogram, SharedString};
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::browsers::{self, Encoding};
use crate::error::{ApiError, ErrorCode};
use crate::events;
use crate::extract::TrustForwardedFor;
use crate::finish::finish;
use crate::request_id::{self, RequestId};
use crate::trace;

/// What [`around_request`] needs: where request tasks are tracked, whether to believe
/// `X-Forwarded-For`, the requests' deadline and the request metrics' handles.
#[derive(Clone)]
pub(super) struct Shell {
    pub(super) requests: TaskTracker,
    pub(super) trust_forwarded_for: bool,
    pub(super) request_timeout: Duration,
    pub(super) metrics: Arc<RequestMetrics>,
}

/// Everything every request goes through, in one layer (each layer of its own cost a
/// boxed future and a service clone per request, which showed in the profile of a cached
/// read): its id, client address, span and trace context are settled; it runs to
/// completion even if its client leaves ([`finish`]), tracked, so that shutdown waits for
/// it, but no longer than its deadline ([`deadline_passed`]); its answer is compressed if
/// the client accepts that; a bare error becomes a problem; a panic is answered 500; it
/// is logged and counted.
pub(super) async fn around_request(State(shell): State<Shell>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id::of(&request);
    let client = crate::extract::client_addr(&request, TrustForwardedFor(shell.trust_forwarded_for));
    request.extensions_mut().insert(client);
    request.extensions_mut().insert(RequestId(id.clone()));
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = method_label(request.method());
    let span = make_span(method, route.as_ref().map_or("", MatchedPath::as_str), &id);
    let traceparent = request.headers().get(&trace::TRACEPARENT).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let compress = Encoding::preferred(request.headers()).is_some();
    // Relays are woken for what the request emitted once it is done (and committed).
    let deadline = shell.request_timeout;
    let work = events::waking(async move {
        let handled =
            async move { if compress { browsers::compressed(next, request).await } else { next.run(request).await } };
        // Inside `finish`, so that the deadline ends the request whether or not its client
        // still waits; inside `waking`, so that what it committed before is still published.
        let response = tokio::time::timeout(deadline, handled).await.unwrap_or_else(|_| deadline_passed(deadline));
        problem_for_bare_errors(response)
    });
    let work = request_id::scope(id.clone(), work);
    let work = trace::instrument(span.clone(), traceparent.as_deref(), work);
    let mut response = match finish(&shell.requests, work).await {
        Ok(response) => response,
        Err(_panic) => {
            let failed = async { ApiError::internal(anyhow::anyhow!("the request panicked")).into_response() };
            request_id::scope(id.clone(), failed).instrument(span.clone()).await
        }
    };
    let latency = started.elapsed();
    on_response(&response, latency, &span);
    shell.metrics.record(method, route.as_ref(), response.status(), latency);
    if let Ok(header) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(request_id::X_REQUEST_ID.clone(), header);
    }
    response
}

/// The answer to a request still running at its deadline (`REQUEST_TIMEOUT`). By then its
/// handler has been dropped at the await it was waiting on: an open transaction is rolled
/// back (sqlx rolls back a transaction dropped uncommitted), and each multi-step
/// effect of the platform is written to survive being cut off there as it survives a
/// crash (a checkout's record is released by the recovery job, a refund is carried out by
/// the refund job); a charge under way is not cut off at all (`payment::charge`). `503
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
fn make_span(method: &str, route: &str, request_id: &str) -> tracing::Span {
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
/// up once and kept: the `metrics` macros hash every label on every call.
#[derive(Default)]
pub(super) struct RequestMetrics {
    by_route: std::sync::RwLock<HashMap<Arc<str>, ByMethodAndStatus>>,
}

/// One route's handles, by method and status.
type ByMethodAndStatus = HashMap<(&'static str, u16), (Counter, Histogram)>;

impl RequestMetrics {
    fn record(&self, method: &'static str, route: Option<&MatchedPath>, status: StatusCode, latency: Duration) {
        let route = route.map_or("unmatched", MatchedPath::as_str);
        let key = (method, status.as_u16());
        let found = {
            let by_route = self.by_route.read().unwrap_or_else(|e| e.into_inner());
            by_route.get(route).and_then(|statuses| statuses.get(&key)).cloned()
        };
        let (counter, histogram) = found.unwrap_or_else(|| {
            let labels = [
                ("method", SharedString::const_str(method)),
                ("route", route.to_owned().into()),
                ("status", status.as_u16().to_string().into()),
            ];
            let handles = (
                metrics::counter!("http_requests_total", &labels),
                metrics::histogram!("http_request_duration_seconds", &labels),
            );
            let mut by_route = self.by_route.write().unwrap_or_else(|e| e.into_inner());
            by_route.entry(route.into()).or_default().insert(key, handles.clone());
            handles
        });
        counter.increment(1);
        histogram.record(latency.as_secs_f64());
    }
}

/// The `method` label: a method HTTP defines, by name, or `other`. Every label value is a
/// series (a counter and a histogram) the process keeps for good, so a client must not be
/// able to add them by inventing methods; routes and statuses are bounded already.
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"];
    KNOWN.into_iter().find(|known| *known == method.as_str()).unwrap_or("other")
}
