//! Logs and metrics: `tracing` to stdout (human-readable in development, JSON lines
//! otherwise) and a Prometheus recorder for the `metrics` facade.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::AppEnv;

/// Latency buckets (seconds) for request histograms: fine-grained where an API lives.
const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Installs the global log subscriber. `RUST_LOG` filters (default `info`). Safe to call
/// more than once (tests do): later calls are no-ops.
pub fn init_tracing(app_env: AppEnv) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if app_env.is_production() {
        registry.with(tracing_subscriber::fmt::layer().json().with_current_span(true).with_span_list(false)).try_init()
    } else {
        registry.with(tracing_subscriber::fmt::layer().compact()).try_init()
    };
}

/// The process-wide Prometheus recorder. The `metrics` facade is global by design, so the
/// recorder is too; every service in the process (all four in `shop`) reports into it.
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_duration_seconds".into()), LATENCY_BUCKETS)
            .expect("the bucket list is not empty");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // This is the only place a recorder is installed, and it runs once.
        metrics::set_global_recorder(recorder).expect("no other metrics recorder is installed");
        handle
    })
}
