//! Logs, traces and metrics: `tracing` to stdout (human-readable in development, JSON
//! lines otherwise), the same spans to OpenTelemetry when they are exported (over
//! OTLP/HTTP, with `OTEL_EXPORTER_OTLP_ENDPOINT` set; otherwise no span data is built and
//! `common::trace` carries the ids alone; none at all with `OTEL_SDK_DISABLED=true`), and
//! a Prometheus recorder for the `metrics` facade.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing::Level;
use tracing_subscriber::filter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{CommonConfig, ConfigError, Env};
use crate::trace;

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

/// Which traces are recorded when spans are exported: the OpenTelemetry sampler variables
/// (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`), read here so that a value the SDK
/// would silently replace with its default stops the process instead.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TraceSampler {
    AlwaysOn,
    AlwaysOff,
    /// A share of new traces, by trace id.
    Ratio(f64),
    /// The caller's decision when there is one, else the inner sampler's.
    ParentBased(ParentRoot),
}

/// The sampler of a parent-based sampler's root spans.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParentRoot {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
}

impl TraceSampler {
    /// The specification's default: `parentbased_always_on`.
    pub const DEFAULT: Self = Self::ParentBased(ParentRoot::AlwaysOn);

    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let ratio = || -> Result<f64, ConfigError> {
            let ratio = env.or("OTEL_TRACES_SAMPLER_ARG", 1.0f64)?;
            if !(0.0..=1.0).contains(&ratio) {
                return Err(ConfigError::new("OTEL_TRACES_SAMPLER_ARG", "must be a ratio from 0 to 1"));
            }
            Ok(ratio)
        };
        Ok(match env.raw("OTEL_TRACES_SAMPLER").map(str::trim) {
            None => Self::DEFAULT,
            Some("always_on") => Self::AlwaysOn,
            Some("always_off") => Self::AlwaysOff,
            Some("traceidratio") => Self::Ratio(ratio()?),
            Some("parentbased_always_on") => Self::ParentBased(ParentRoot::AlwaysOn),
            Some("parentbased_always_off") => Self::ParentBased(ParentRoot::AlwaysOff),
            Some("parentbased_traceidratio") => Self::ParentBased(ParentRoot::Ratio(ratio()?)),
            Some(other) => {
                return Err(ConfigError::new(
                    "OTEL_TRACES_SAMPLER",
                    format!(
                        "expected always_on, always_off, traceidratio, parentbased_always_on, \
                         parentbased_always_off or parentbased_traceidratio, got {other:?}"
                    ),
                ));
            }
        })
    }

    pub fn sdk(self) -> Sampler {
        let root = |root: ParentRoot| match root {
            ParentRoot::AlwaysOn => Sampler::AlwaysOn,
            ParentRoot::AlwaysOff => Sampler::AlwaysOff,
            ParentRoot::Ratio(ratio) => Sampler::TraceIdRatioBased(ratio),
        };
        match self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::Ratio(ratio) => Sampler::TraceIdRatioBased(ratio),
            Self::ParentBased(inner) => Sampler::ParentBased(Box::new(root(inner))),
        }
    }
}

/// The OTLP exporter, when an endpoint is configured (`OTEL_EXPORTER_OTLP_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; `OTEL_BSP_*` as the specification says).
fn otlp_exporter() -> Option<opentelemetry_otlp::SpanExporter> {
    let configured = ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|v| !v.is_empty()));
    if !configured {
        return None;
    }
    match opentelemetry_otlp::SpanExporter::builder().with_http().with_protocol(Protocol::HttpBinary).build() {
        Ok(exporter) => Some(exporter),
        Err(err) => {
            eprintln!("telemetry: traces will not be exported: {err}");
            None
        }
    }
}

/// A tracer provider that samples as configured; `service` names the process unless
/// `OTEL_SERVICE_NAME` does.
pub fn provider_builder(
    sampler: TraceSampler,
    service: &'static str,
) -> opentelemetry_sdk::trace::TracerProviderBuilder {
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    SdkTracerProvider::builder().with_resource(resource.build()).with_sampler(sampler.sdk())
}

/// The layer that turns `info` spans into OpenTelemetry spans. A request's span is made
/// on every request, so it carries only what a trace viewer shows (no busy/idle timings,
/// thread or source attributes), and of events only warnings and errors; no context is
/// attached on every poll, since `common::trace` reads the span's context itself. The
/// filter says it never wants anything below `info`: without that hint the global level
/// stays at `trace`, and most processes then showed their log lines without the request's
/// span and trace id (a tracing-subscriber per-layer filter behaviour;
/// `services/shop/tests/shop.rs` catches it).
pub fn opentelemetry_layer<S>(provider: &SdkTracerProvider) -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
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
        )
}

/// Installs the global subscriber: log lines filtered by `RUST_LOG` (default `info`) and,
/// when an OTLP endpoint is configured, spans at `info` and above for OpenTelemetry
/// whatever `RUST_LOG` says, sampled by `OTEL_TRACES_SAMPLER`. With no endpoint no span
/// data is built for OpenTelemetry at all: `common::trace` carries the trace ids into
/// log lines, calls and events by itself. With `config.tracing` off
/// (`OTEL_SDK_DISABLED=true`) log lines carry no trace id, and each call to another
/// service starts a trace of its own. `service` names the process in exported traces.
/// Safe to call more than once (later calls install nothing).
pub fn init_tracing(config: &CommonConfig, service: &'static str) -> Telemetry {
    let production = config.app_env.is_production();
    let exporter = if config.tracing { otlp_exporter() } else { None };
    let Some(exporter) = exporter else {
        if tracing_subscriber::registry().with(logs(production)).try_init().is_ok() {
            trace::set_mode(if config.tracing { trace::Mode::Context } else { trace::Mode::Off });
        }
        return Telemetry { provider: None };
    };
    let provider = provider_builder(config.trace_sampler, service).with_batch_exporter(exporter).build();
    let layer = opentelemetry_layer(&provider);
    if tracing_subscriber::registry().with(layer).with(logs(production)).try_init().is_ok() {
        trace::set_mode(trace::Mode::OpenTelemetry);
    }
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

/// How often the recorder folds recorded histogram samples into its buckets. Until it
/// does, every sample is kept: without this, a process nobody scrapes grows by eight bytes
/// a request (some 20 MiB in a 30-second load run) for as long as it runs.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// The process-wide Prometheus recorder. The `metrics` facade is global by design, so the
/// recorder is too; every service in the process (all four in `shop`) reports into it.
/// A thread of its own runs the recorder's upkeep, scraped or not.
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
        let upkept = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(METRICS_UPKEEP);
                    upkept.run_upkeep();
                }
            })
            .expect("a thread can be started at start-up");
        handle
    })
}

#[cfg(all(test, feature = "testing"))]
mod tests {
    use opentelemetry_sdk::trace::InMemorySpanExporter;

    use super::*;

    /// Spans of one request with a child, under `sampler`; how many were exported.
    fn exported(sampler: TraceSampler, traceparent: Option<&str>) -> usize {
        let exporter = InMemorySpanExporter::default();
        let provider = provider_builder(sampler, "test").with_simple_exporter(exporter.clone()).build();
        let subscriber = tracing_subscriber::registry().with(opentelemetry_layer(&provider));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request");
            trace::continue_span(&span, traceparent);
            span.in_scope(|| tracing::info_span!("query").in_scope(|| {}));
        });
        exporter.get_finished_spans().unwrap().len()
    }

    #[test]
    fn the_sampler_chooses_which_traces_are_recorded() {
        let sampled = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let not_sampled = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
        assert_eq!(exported(TraceSampler::DEFAULT, None), 2, "a request and its child, recorded");
        assert_eq!(exported(TraceSampler::ParentBased(ParentRoot::Ratio(0.0)), None), 0, "a 0 ratio records none");
        assert_eq!(
            exported(TraceSampler::ParentBased(ParentRoot::Ratio(0.0)), sampled),
            2,
            "the caller's decision wins"
        );
        assert_eq!(exported(TraceSampler::DEFAULT, not_sampled), 0, "a caller that did not sample");
        assert_eq!(exported(TraceSampler::AlwaysOff, sampled), 0);
    }
}
