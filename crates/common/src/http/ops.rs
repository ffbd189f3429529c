//! The operational endpoints: `/health`, `/ready`, `/metrics`, and the fallback 404.

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sqlx::PgPool;

use super::Draining;
use crate::cache::Cache;
use crate::error::ApiError;
use crate::events::Events;
use crate::{db, telemetry};

/// How long a readiness check may take before its dependency counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the operational endpoints look at.
#[derive(Clone)]
pub(super) struct Ops {
    pub(super) databases: Vec<(&'static str, PgPool)>,
    pub(super) cache: Cache,
    pub(super) events: Events,
    pub(super) draining: Draining,
}

pub(super) async fn not_found() -> ApiError {
    ApiError::not_found()
}

/// Liveness: answers while the process runs.
pub(super) async fn health() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

/// Readiness (API.md): 200 while the service can serve, `ready` with every dependency up
/// and `degraded` with the cache or the broker down (requests still work, events wait in
/// the outbox: an outage of what every replica shares must not take them all out of
/// rotation at once); 503 `unavailable` with a database down, and `draining` once the
/// process is shutting down. The body names each dependency `up` or `down`.
pub(super) async fn ready(State(ops): State<Ops>) -> Response {
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
pub(super) async fn metrics(State(ops): State<Ops>) -> Response {
    for (name, pool) in &ops.databases {
        db::record_pool_metrics(name, pool);
    }
    let handle = telemetry::metrics_handle();
    handle.run_upkeep();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response()
}
