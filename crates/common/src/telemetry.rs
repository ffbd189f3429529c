//! Logs, traces and metrics: `tracing` to stdout (human-readable in development, JSON
//! lines otherwise), the same spans to OpenTelemetry (exported over OTLP/HTTP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set; none at all with `OTEL_SDK_DISABLED=true`), and
//! a Prometheus recorder for the `metrics` facade.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::filter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::CommonConfig;

/// Latency buckets (seconds) for request histograms: fine-grained where an API lives.
const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Keeps the trace pipeline alive; dropping it (at the end of `main`, after the drain)
/// exports what is still buffered.
#[must_use = "dropping it stops the trace exporter"]
pub struct Telemetry {
    /// `None` when OpenTelemetry is off.
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(Err(err)) = self.provider.as_ref().map(SdkTracerProvider::shutdown) {
            eprintln!("telemetry: flushing traces failed: {err}");
        }
    }
}

/// Spans get trace and span ids whether or not they are exported, so `traceparent` is
/// passed on either way; an OTLP exporter is added when an endpoint is configured
/// (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`, `OTEL_BSP_*` as the spec says).
fn provider(service: &'static str) -> SdkTracerProvider {
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    let mut builder = SdkTracerProvider::builder().with_resource(resource.build());
    let configured = ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|v| !v.is_empty()));
    if configured {
        match opentelemetry_otlp::SpanExporter::builder().with_http().with_protocol(Protocol::HttpBinary).build() {
            Ok(exporter) => builder = builder.with_batch_exporter(exporter),
            Err(err) => eprintln!("telemetry: traces will not be exported: {err}"),
        }
    }
    builder.build()
}

/// Installs the global subscriber: log lines filtered by `RUST_LOG` (default `info`),
/// and spans at `info` and above for OpenTelemetry whatever `RUST_LOG` says (W3C Trace
/// Context is carried by `common::trace`), unless `config.tracing` is off: then no span
/// reaches OpenTelemetry, log lines carry no trace id, and each call to another service
/// starts a trace of its own. `service` names the process in exported traces. Safe to
/// call more than once (later calls install nothing).
pub fn init_tracing(config: &CommonConfig, service: &'static str) -> Telemetry {
    let production = config.app_env.is_production();
    if !config.tracing {
        let _ = tracing_subscriber::registry().with(logs(production)).try_init();
        return Telemetry { provider: None };
    }
    let provider = provider(service);
    // Spans at `info` and up, and of events only warnings and errors: a request's span is
    // made on every request, so it carries only what a trace viewer shows (no busy/idle
    // timings, thread or source attributes, and no per-request "response" event), and no
    // OpenTelemetry context is attached on every poll, since `common::trace` reads the
    // span's context itself. The filter says it never wants anything below `info`: without
    // that hint the global level stays at `trace`, and most processes then showed their
    // log lines without the request's span and trace id (a tracing-subscriber per-layer
    // filter behaviour; `services/shop/tests/shop.rs` catches it).
    let traces = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("shop"))
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_target(false)
        .with_context_activation(false)
        .with_filter(
            filter::filter_fn(|metadata| {
                let floor = if metadata.is_span() { Level::INFO } else { Level::WARN };
                *metadata.level() <= floor
            })
            .with_max_level_hint(Level::INFO),
        );
    let _ = tracing_subscriber::registry().with(traces).with(logs(production)).try_init();
    Telemetry { provider: Some(provider) }
}

/// Log lines as `RUST_LOG` (default `info`) filters them: JSON in production, compact
/// text otherwise.
fn logs<S>(production: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if production {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().compact().with_filter(filter).boxed()
    }
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
