//! The HTTP shell every service runs in: operational endpoints (`/health`, `/ready`,
//! `/metrics`, `/openapi.json`, `/docs`), the middleware stack, and serving with graceful
//! shutdown.
//!
//! A service contributes a [`Service`] (its API router, its OpenAPI document and what
//! readiness should check); [`app`] wraps one service (a stand-alone binary) or several
//! (`shop`) the same way, so tests, `main.rs` and `shop` all run the same stack.
//!
//! Here: the handler state, what services share, the application and serving. Beside it:
//! `shell` (what every request goes through), `ops` (the operational endpoints) and
//! `openapi` (the document's shared parts and problems).

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::HeaderValue;
use axum::routing::get;
use redis::aio::ConnectionManager;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use utoipa::OpenApi as _;
use utoipa::openapi::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

use crate::auth::Authenticator;
use crate::browsers;
use crate::cache::{Cache, L1Options, connect_redis};
use crate::client::{InProcess, Upstream};
use crate::config::CommonConfig;
use crate::events::{Events, kafka};
use crate::extract::BODY_LIMIT;
use crate::ratelimit::Limiter;
use crate::revocations::{self, Revocations};
use crate::service::Workers;
use crate::telemetry;

mod openapi;
mod ops;
mod shell;

pub use self::openapi::RateLimited;
use self::openapi::{ApiDoc, SharedProblems};
use self::ops::{Ops, health, metrics, not_found, ready};
use self::shell::Shell;

/// How long shutdown waits for requests whose client has gone, after the connections
/// closed: past it, Kubernetes' grace period would end it anyway.
const REQUESTS_GRACE: Duration = Duration::from_secs(15);

/// How long shutdown waits for the background work to end once stopped: each ends at its
/// next await, so this is only for a worker stuck in a call.
const WORKERS_GRACE: Duration = Duration::from_secs(2);
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
    /// The services' relays, consumers and jobs, stopped after the last request.
    pub workers: Workers,
    /// This process's application, for calls between the services it serves.
    pub in_process: InProcess,
    /// This process's own address (`http://127.0.0.1:PORT`): an upstream there is
    /// called in process.
    own_url: String,
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
            workers: Workers::default(),
            in_process: InProcess::default(),
            own_url: format!("http://127.0.0.1:{}", config.port),
        })
    }

    /// The upstream `name` at `url`, called by `caller`: in this process when `url` is
    /// this process's own address (in `shop`, every service is), over HTTP otherwise.
    pub fn upstream(&self, name: &'static str, url: &str, caller: &'static str, timeout: Duration) -> Upstream {
        if url.trim_end_matches('/') == self.own_url {
            Upstream::in_process(name, self.in_process.clone(), caller, timeout, self.auth.clone())
        } else {
            Upstream::new(name, url, caller, timeout, self.auth.clone())
        }
    }

    /// A named rate limit, shared across replicas when Redis is configured.
    pub fn limiter(&self, name: &'static str, limit: NonZeroU32, window: Duration) -> Limiter {
        Limiter::new(name, limit, window, self.redis.clone(), &self.redis_prefix)
    }
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
        .layer(
            Shell {
                requests: shared.requests.clone(),
                trust_forwarded_for: shared.trust_forwarded_for,
                request_timeout: shared.request_timeout,
                metrics: Default::default(),
            }
            .layer(),
        )
        .layer(DefaultBodyLimit::max(BODY_LIMIT));
    // With no origin to grant, the CORS layer would only add headers to every answer (a
    // few µs of a cached read, measured).
    let app = if origins.is_empty() { router } else { router.layer(browsers::cors(&origins)) };
    shared.in_process.serve(&app);
    app
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
/// sending; then the listener closes, the requests in flight are finished, and the
/// background work is stopped.
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
    let (draining, requests, workers) = (shared.draining.clone(), shared.requests.clone(), shared.workers.clone());
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
    // Then the relays, consumers and jobs, before the pools close with the process.
    if !workers.stop(WORKERS_GRACE).await {
        tracing::warn!("stopping with background work still running");
    }
    Ok(())
}
