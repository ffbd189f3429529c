//! The HTTP shell every service runs in: operational endpoints (`/health`, `/ready`,
//! `/metrics`, `/openapi.json`, `/docs`), the middleware stack, and serving with graceful
//! shutdown.
//!
//! A service contributes a [`Service`] (its API router, its OpenAPI document and what
//! readiness should check); [`app`] wraps one service (a stand-alone binary) or several
//! (`shop`) the same way, so tests, `main.rs` and `shop` all run the same stack.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics::{Counter, Histogram, SharedString};
use serde_json::json;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;
use utoipa::OpenApi as _;
use utoipa::openapi::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use redis::aio::ConnectionManager;

use crate::auth::Authenticator;
use crate::browsers::{self, Encoding};
use crate::cache::{Cache, L1Options, connect_redis};
use crate::client::Upstream;
use crate::config::CommonConfig;
use crate::error::{ApiError, ErrorCode};
use crate::events::{self, Events, kafka};
use crate::extract::{BODY_LIMIT, TrustForwardedFor};
use crate::finish::finish;
use crate::ratelimit::Limiter;
use crate::request_id::{self, RequestId};
use crate::revocations::{self, Revocations};
use crate::{db, telemetry, trace};

/// How long shutdown waits for requests whose client has gone, after the connections
/// closed: past it, Kubernetes' grace period would end it anyway.
const REQUESTS_GRACE: Duration = Duration::from_secs(15);

/// How long a readiness check may take before its dependency counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// A call to the user service for the revoked sessions.
const REVOCATIONS_TIMEOUT: Duration = Duration::from_secs(2);

/// A service's handler state: its `Inner` behind an `Arc`, so cloning per request is
/// cheap, and the authenticator the auth extractors check tokens with. Services name
/// theirs `type AppState = common::http::AppState<Inner>`.
pub struct AppState<T> {
    inner: Arc<T>,
    auth: Arc<Authenticator>,
}

impl<T> AppState<T> {
    pub fn new(auth: Arc<Authenticator>, inner: T) -> Self {
        Self { inner: Arc::new(inner), auth }
    }

    /// Checks access tokens, issues them (the user service) and signs service tokens.
    pub fn auth(&self) -> &Arc<Authenticator> {
        &self.auth
    }
}

impl<T> Clone for AppState<T> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone(), auth: self.auth.clone() }
    }
}

impl<T> std::ops::Deref for AppState<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T> axum::extract::FromRef<AppState<T>> for Arc<Authenticator> {
    fn from_ref(state: &AppState<T>) -> Self {
        state.auth.clone()
    }
}

/// What one service brings to the process.
pub struct Service {
    pub name: &'static str,
    pub router: Router,
    pub openapi: OpenApi,
    /// The service's database pool, checked by `/ready` and reported in `/metrics`.
    pub db: PgPool,
}

/// The parts of the OpenAPI document every service shares: the title, the error shape
/// and the bearer scheme. Each service merges its paths into it.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Shop API",
        description = "The public REST API of the shop platform. Errors are `application/problem+json` \
            (RFC 9457) with a stable `code`; see the `Problem` schema.",
    ),
    modifiers(&BearerScheme),
    components(schemas(crate::error::Problem, crate::error::FieldErrors)),
)]
struct ApiDoc;

struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}

/// Declares on every operation the problems the shared extractors and middleware answer
/// with, so that each handler's document lists only its own: a body that is malformed,
/// too large or not JSON (400, 413, 415, 422), a bad query or `Idempotency-Key` (400), a
/// missing or bad token (401), a token without the role the operation names in its
/// security requirement (`bearer = ["admin"]`: 403), a path segment that is not an id
/// (404), and the database or a dependency away (503). Runs on the merged document of
/// the process.
struct SharedProblems;

impl utoipa::Modify for SharedProblems {
    fn modify(&self, openapi: &mut OpenApi) {
        use utoipa::openapi::path::ParameterIn;
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        let problem = |description: &str| {
            let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build();
            RefOr::T(
                ResponseBuilder::new().description(description).content("application/problem+json", content).build(),
            )
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch];
            for operation in operations.into_iter().flatten() {
                let parameters = operation.parameters.as_deref().unwrap_or_default();
                let in_path = parameters.iter().any(|p| p.parameter_in == ParameterIn::Path);
                let in_query_or_header =
                    parameters.iter().any(|p| matches!(p.parameter_in, ParameterIn::Query | ParameterIn::Header));
                let mut shared = vec![("503", "`unavailable` or `upstream_unavailable`: try again later")];
                if operation.request_body.is_some() {
                    shared.extend([
                        ("400", "`bad_request`: malformed JSON, or not an object"),
                        ("413", "`payload_too_large`: a body over 64 KiB"),
                        ("415", "`unsupported_media_type`: not `application/json`"),
                        ("422", "`validation_failed`: fields missing, unknown or invalid"),
                    ]);
                }
                if in_query_or_header {
                    shared.push(("400", "`bad_request`: a malformed parameter or header"));
                }
                if in_path {
                    shared.push(("404", "`not_found`"));
                }
                if operation.security.as_ref().is_some_and(|s| !s.is_empty()) {
                    shared.push(("401", "`unauthorized`: no valid access token"));
                }
                if requires_admin(operation) {
                    shared.push(("403", "`forbidden`: not an admin"));
                }
                for (status, description) in shared {
                    operation.responses.responses.entry(status.to_owned()).or_insert_with(|| problem(description));
                }
            }
        }
    }
}

/// Whether `operation` asks for the `admin` role (`security(("bearer" = ["admin"]))`).
fn requires_admin(operation: &utoipa::openapi::path::Operation) -> bool {
    let requirements = serde_json::to_value(&operation.security).unwrap_or_default();
    requirements.as_array().is_some_and(|all| {
        all.iter().any(|r| r["bearer"].as_array().is_some_and(|roles| roles.iter().any(|role| role == "admin")))
    })
}

/// What every service of one process shares: the cache, the revoked sessions,
/// the Redis connection for rate limits, and the token authenticator. In `shop` the
/// services must share these, or a logout in one would not be seen by another.
#[derive(Clone)]
pub struct Shared {
    pub cache: Cache,
    pub redis: Option<ConnectionManager>,
    pub redis_prefix: String,
    pub auth: Arc<Authenticator>,
    /// Kafka, or the in-process bus.
    pub events: Events,
    pub trust_forwarded_for: bool,
    /// Browser origins granted cross-origin calls.
    pub cors_allowed_origins: Vec<HeaderValue>,
    /// Set once the process is shutting down; `/ready` then answers 503.
    pub draining: Draining,
    /// Every request's task, so that shutdown waits for those whose client left too.
    pub requests: TaskTracker,
    /// The longest a request may run before it is ended (`REQUEST_TIMEOUT`).
    pub request_timeout: Duration,
}

/// Whether the process has been asked to stop. Until the listener closes it still serves,
/// but tells load balancers (through `/ready`) to send nothing new.
#[derive(Clone, Default)]
pub struct Draining(Arc<AtomicBool>);

impl Draining {
    pub fn start(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl Shared {
    pub async fn connect(config: &CommonConfig) -> anyhow::Result<Self> {
        // The cache registers its counters as it is made: the recorder must be there first.
        telemetry::metrics_handle();
        let redis = match &config.redis_url {
            Some(url) => Some(connect_redis(url).await?),
            None => None,
        };
        let l1 = L1Options { max_bytes: config.l1_cache_bytes, stale_max: config.cache_stale_max };
        let cache = Cache::new(redis.clone(), &config.redis_prefix, l1);
        let revocations = Revocations::new(redis.clone(), &config.redis_prefix);
        let redis = redis.map(|(conn, _)| conn);
        let auth = Arc::new(Authenticator::new(&config.jwt_secret, config.access_token_ttl, revocations));
        Ok(Self {
            cache,
            redis,
            redis_prefix: config.redis_prefix.clone(),
            auth,
            events: Events::connect_with(
                config.kafka_brokers.as_deref(),
                kafka::Options {
                    instance_id: config.kafka_group_instance_id.clone(),
                    batch_records: config.kafka_batch_records,
                },
            )?,
            trust_forwarded_for: config.trust_forwarded_for,
            cors_allowed_origins: config.cors_allowed_origins.clone(),
            draining: Draining::default(),
            requests: TaskTracker::new(),
            request_timeout: config.request_timeout,
        })
    }

    /// A named rate limit, shared across replicas when Redis is configured.
    pub fn limiter(&self, name: &'static str, limit: NonZeroU32, window: Duration) -> Limiter {
        Limiter::new(name, limit, window, self.redis.clone(), &self.redis_prefix)
    }
}

#[derive(Clone)]
struct Ops {
    databases: Vec<(&'static str, PgPool)>,
    cache: Cache,
    events: Events,
    draining: Draining,
}

/// The whole application: the services' routers merged, the operational endpoints, and
/// the middleware stack around all of it.
pub fn app(services: Vec<Service>, shared: Shared) -> Router {
    // Install the recorder before the first request, or what it does goes unrecorded.
    telemetry::metrics_handle();
    let mut router = Router::new();
    let mut openapi: Option<OpenApi> = None;
    let mut databases = Vec::new();
    for service in services {
        router = router.merge(service.router);
        openapi = Some(match openapi {
            None => service.openapi,
            Some(mut merged) => {
                merged.merge(service.openapi);
                merged
            }
        });
        databases.push((service.name, service.db));
    }
    let origins = shared.cors_allowed_origins.clone();
    let ops = Ops { databases, cache: shared.cache, events: shared.events, draining: shared.draining };
    let mut doc = ApiDoc::openapi();
    if let Some(services) = openapi {
        doc.merge(services);
    }
    utoipa::Modify::modify(&SharedProblems, &mut doc);
    let openapi = doc;

    let router = router
        .route("/health", get(health))
        .route("/ready", get(ready).with_state(ops.clone()))
        .route("/metrics", get(metrics).with_state(ops))
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            Shell {
                requests: shared.requests.clone(),
                trust_forwarded_for: shared.trust_forwarded_for,
                request_timeout: shared.request_timeout,
                metrics: Arc::default(),
            },
            around_request,
        ))
        .layer(DefaultBodyLimit::max(BODY_LIMIT));
    // With no origin to grant, the CORS layer would only add headers to every answer (a
    // few µs of a cached read, measured).
    if origins.is_empty() { router } else { router.layer(browsers::cors(&origins)) }
}

/// What [`around_request`] needs: where request tasks are tracked, whether to believe
/// `X-Forwarded-For`, the requests' deadline and the request metrics' handles.
#[derive(Clone)]
struct Shell {
    requests: TaskTracker,
    trust_forwarded_for: bool,
    request_timeout: Duration,
    metrics: Arc<RequestMetrics>,
}

/// Everything every request goes through, in one layer (each layer of its own cost a
/// boxed future and a service clone per request, which showed in the profile of a cached
/// read): its id, client address, span and trace context are settled; it runs to
/// completion even if its client leaves ([`finish`]), tracked, so that shutdown waits for
/// it, but no longer than its deadline ([`deadline_passed`]); its answer is compressed if
/// the client accepts that; a bare error becomes a problem; a panic is answered 500; it
/// is logged and counted.
async fn around_request(State(shell): State<Shell>, mut request: Request, next: Next) -> Response {
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
struct RequestMetrics {
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

async fn not_found() -> ApiError {
    ApiError::not_found()
}

/// Liveness: answers while the process runs.
async fn health() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// Readiness (API.md): 200 while the service can serve, `ready` with every dependency up
/// and `degraded` with the cache or the broker down (requests still work, events wait in
/// the outbox: an outage of what every replica shares must not take them all out of
/// rotation at once); 503 `unavailable` with a database down, and `draining` once the
/// process is shutting down. The body names each dependency `up` or `down`.
async fn ready(State(ops): State<Ops>) -> Response {
    if ops.draining.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({"status": "draining"}))).into_response();
    }
    let mut checks = serde_json::Map::new();
    let (mut databases_up, mut shared_up) = (true, true);
    for (name, pool) in &ops.databases {
        let probe = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(pool);
        let up = matches!(tokio::time::timeout(PROBE_TIMEOUT, probe).await, Ok(Ok(_)));
        databases_up &= up;
        checks.insert(format!("database:{name}"), json!(if up { "up" } else { "down" }));
    }
    if ops.cache.is_redis() {
        let up = ops.cache.ping().await;
        shared_up &= up;
        checks.insert("redis".into(), json!(if up { "up" } else { "down" }));
    }
    if let Events::Kafka(kafka) = &ops.events {
        let up = kafka.ping(PROBE_TIMEOUT).await;
        shared_up &= up;
        checks.insert("kafka".into(), json!(if up { "up" } else { "down" }));
    }
    let (status, word) = match (databases_up, shared_up) {
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        (true, false) => (StatusCode::OK, "degraded"),
        (true, true) => (StatusCode::OK, "ready"),
    };
    (status, axum::Json(json!({"status": word, "checks": checks}))).into_response()
}

/// Prometheus text format, with the pool gauges refreshed at scrape time.
async fn metrics(State(ops): State<Ops>) -> Response {
    for (name, pool) in &ops.databases {
        db::record_pool_metrics(name, pool);
    }
    let handle = telemetry::metrics_handle();
    handle.run_upkeep();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response()
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: no new connections, finishing requests in flight");
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting and waits
/// for the requests in flight.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves the services on `0.0.0.0:PORT` until SIGTERM/SIGINT. Then `/ready` answers 503
/// for `SHUTDOWN_DELAY` while everything is still served, so that load balancers stop
/// sending; then the listener closes and the requests in flight are finished.
pub async fn run(config: &CommonConfig, services: Vec<Service>, shared: Shared) -> anyhow::Result<()> {
    // Without the user service in this process, the revoked sessions come from it.
    if !shared.auth.revocations().has_source()
        && let Some(first) = services.first()
    {
        let user_service = Upstream::new(
            "user-service",
            &config.user_service_url,
            first.name,
            REVOCATIONS_TIMEOUT,
            shared.auth.clone(),
        );
        shared.auth.revocations().serve_from(Arc::new(revocations::Remote(user_service))).await;
    }
    let listener = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], config.port))).await?;
    tracing::info!(addr = %listener.local_addr()?, "listening");
    let (draining, requests) = (shared.draining.clone(), shared.requests.clone());
    let delay = config.shutdown_delay;
    let shutdown = async move {
        shutdown_signal().await;
        draining.start();
        if !delay.is_zero() {
            tracing::info!(delay_ms = delay.as_millis() as u64, "draining: /ready answers 503, still serving");
            tokio::time::sleep(delay).await;
        }
    };
    serve(listener, app(services, shared), shutdown).await?;
    // Connections are closed; requests whose client left before its answer may still run.
    requests.close();
    if tokio::time::timeout(REQUESTS_GRACE, requests.wait()).await.is_err() {
        tracing::warn!(running = requests.len(), "stopping with requests still running");
    } else {
        tracing::info!("stopped: every request in flight was finished");
    }
    Ok(())
}
