//! W3C Trace Context, carried from requests into calls and events whether or not spans
//! are exported.
//!
//! Without an exporter (no OTLP endpoint) no OpenTelemetry span data is built: the
//! request's (or consumed event's) [`Context`] is a task-local value, continued from the
//! `traceparent` it came with when valid and made up otherwise, and what is passed on is
//! that context, so the ids still reach log lines and every hop. With an exporter the
//! OpenTelemetry layer records spans, and what is passed on is the current span's
//! context, so each hop is a child span of the one that made it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};

use axum::http::HeaderName;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use rand::distr::{Distribution, StandardUniform};
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// How this process traces: set once, by `telemetry::init_tracing` (or a test harness).
static MODE: AtomicU8 = AtomicU8::new(Mode::Context as u8);

/// What a process does with trace context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// `OTEL_SDK_DISABLED=true`: no trace ids in logs; each outgoing call or event
    /// starts a trace of its own.
    Off = 0,
    /// No exporter: ids carried in a task-local context, no span data built.
    Context = 1,
    /// Spans recorded by the OpenTelemetry layer (and exported, as sampled).
    OpenTelemetry = 2,
}

pub fn set_mode(mode: Mode) {
    MODE.store(mode as u8, Ordering::Relaxed);
}

pub fn mode() -> Mode {
    match MODE.load(Ordering::Relaxed) {
        0 => Mode::Off,
        2 => Mode::OpenTelemetry,
        _ => Mode::Context,
    }
}

/// A `traceparent` in the only version we speak (`00-<trace id>-<parent id>-<flags>`),
/// lower-case hex, with non-zero ids.
pub fn parse(value: &str) -> Option<(&str, &str, &str)> {
    let mut parts = value.split('-');
    let (version, trace_id, parent_id, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let valid = parts.next().is_none()
        && version == "00"
        && hex(trace_id, 32)
        && hex(parent_id, 16)
        && hex(flags, 2)
        && trace_id.bytes().any(|b| b != b'0')
        && parent_id.bytes().any(|b| b != b'0');
    valid.then_some((trace_id, parent_id, flags))
}

/// One unit of work's place in a trace: the trace, this work's own span id, and the
/// caller's flags (sampled or not), as passed on to what it calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    trace_id: u128,
    span_id: u64,
    flags: u8,
}

thread_local! {
    /// What ids are drawn from: they must not repeat, but need not be unguessable
    /// (knowing one grants nothing), so a small generator per thread, seeded by the
    /// system; the thread's ChaCha generator was 2% of a cached read's instructions.
    static ID_BITS: std::cell::RefCell<SmallRng> = std::cell::RefCell::new(SmallRng::from_os_rng());
}

/// Random bits for an id (a trace's, a span's, a request's).
pub(crate) fn id_bits<T>() -> T
where
    StandardUniform: Distribution<T>,
{
    ID_BITS.with_borrow_mut(|rng| rng.random())
}

fn nonzero_u64() -> u64 {
    id_bits::<u64>().max(1)
}

impl Context {
    /// A new, sampled trace.
    pub fn new_trace() -> Self {
        Self { trace_id: id_bits::<u128>().max(1), span_id: nonzero_u64(), flags: 1 }
    }

    /// The work of a caller's `traceparent` (when valid): the same trace, a new span.
    pub fn continue_from(traceparent: Option<&str>) -> Self {
        let parsed = traceparent.and_then(parse).and_then(|(trace_id, _, flags)| {
            Some((u128::from_str_radix(trace_id, 16).ok()?, u8::from_str_radix(flags, 16).ok()?))
        });
        match parsed {
            Some((trace_id, flags)) => Self { trace_id, span_id: nonzero_u64(), flags },
            None => Self::new_trace(),
        }
    }

    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// What this work passes on: its own span as the parent.
    pub fn traceparent(&self) -> String {
        format!("00-{:032x}-{:016x}-{:02x}", self.trace_id, self.span_id, self.flags)
    }
}

tokio::task_local! {
    static CURRENT: Context;
}

/// Runs `work` in `span`, continuing `traceparent` (when valid): the span's `trace_id`
/// field is recorded, and whatever `work` calls or emits carries the trace on.
pub fn instrument<F: Future>(
    span: tracing::Span,
    traceparent: Option<&str>,
    work: F,
) -> impl Future<Output = F::Output> + use<F> {
    let context = Context::continue_from(traceparent);
    match mode() {
        Mode::OpenTelemetry => {
            continue_span(&span, traceparent);
            if let Some(trace_id) = span_trace_id(&span) {
                span.record("trace_id", trace_id);
            }
        }
        Mode::Context => {
            if !span.is_disabled() {
                span.record("trace_id", context.trace_id());
            }
        }
        Mode::Off => {}
    }
    CURRENT.scope(context, work.instrument(span))
}

/// The `traceparent` to pass on from here: the current span's when OpenTelemetry records
/// it, else the current work's context, else a new trace's.
pub fn outgoing() -> String {
    match mode() {
        Mode::Off => Context::new_trace().traceparent(),
        Mode::OpenTelemetry => of_span(&tracing::Span::current())
            .or_else(|| CURRENT.try_with(Context::traceparent).ok())
            .unwrap_or_else(|| Context::new_trace().traceparent()),
        Mode::Context => CURRENT.try_with(Context::traceparent).unwrap_or_else(|_| Context::new_trace().traceparent()),
    }
}

/// `span`'s `traceparent`, when OpenTelemetry records it.
fn of_span(span: &tracing::Span) -> Option<String> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove(TRACEPARENT.as_str())
}

/// Makes `span` (not yet entered) a child of the remote span `traceparent` names, when it
/// names one validly; otherwise `span` starts a trace of its own. OpenTelemetry only.
pub fn continue_span(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(traceparent) = traceparent.filter(|value| parse(value).is_some()) {
        let carrier = HashMap::from([(TRACEPARENT.as_str().to_owned(), traceparent.to_owned())]);
        // Fails only where OpenTelemetry is not installed, and then there is nothing to link.
        let _ = span.set_parent(TraceContextPropagator::new().extract(&carrier));
    }
}

/// The trace id `span` belongs to (32 lower-case hex digits), when OpenTelemetry records it.
fn span_trace_id(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let otel = context.span();
    let span_context = otel.span_context();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_and_invalid_traceparents() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(parse(good).is_some());
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn outside_any_work_a_new_trace_is_passed_on() {
        let (first, second) = (outgoing(), outgoing());
        assert!(parse(&first).is_some(), "{first}");
        assert_ne!(parse(&first).unwrap().0, parse(&second).unwrap().0, "each is a trace of its own");
    }

    #[tokio::test]
    async fn without_opentelemetry_work_continues_its_callers_trace() {
        let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let passed_on = instrument(tracing::Span::none(), Some(caller), async { outgoing() }).await;
        let (trace_id, parent_id, flags) = parse(&passed_on).unwrap();
        assert_eq!(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736", "the same trace");
        assert_ne!(parent_id, "00f067aa0ba902b7", "this work's own span is the parent");
        assert_eq!(flags, "00", "the caller's sampling decision is kept");
        let fresh = instrument(tracing::Span::none(), Some("garbage"), async { outgoing() }).await;
        assert!(parse(&fresh).is_some_and(|(id, _, _)| id != trace_id), "a new trace for an invalid parent");
    }
}
