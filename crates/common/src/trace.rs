//! W3C Trace Context on OpenTelemetry spans: a request's (or consumed event's) span
//! continues the `traceparent` it came with, when valid, and what is passed on in every
//! outgoing call and every event written is the current span's context, so each hop is a
//! child span of the one that made it. Where no OpenTelemetry layer is installed (tests of
//! one piece), what is passed on is a fresh, valid `traceparent`.

use std::collections::HashMap;

use axum::http::HeaderName;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use rand::RngCore;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

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

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `traceparent` of a new, sampled trace.
fn new_trace() -> String {
    format!("00-{}-{}-01", random_hex(16), random_hex(8))
}

/// The `traceparent` to pass on from here: the current span's, or else a new trace's.
pub fn outgoing() -> String {
    of_span(&tracing::Span::current()).unwrap_or_else(new_trace)
}

/// `span`'s `traceparent`, when OpenTelemetry records it.
fn of_span(span: &tracing::Span) -> Option<String> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove(TRACEPARENT.as_str())
}

/// Makes `span` (not yet entered) a child of the remote span `traceparent` names, when it
/// names one validly; otherwise `span` starts a trace of its own.
pub fn continue_from(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(traceparent) = traceparent.filter(|value| parse(value).is_some()) {
        let carrier = HashMap::from([(TRACEPARENT.as_str().to_owned(), traceparent.to_owned())]);
        // Fails only where OpenTelemetry is not installed, and then there is nothing to link.
        let _ = span.set_parent(TraceContextPropagator::new().extract(&carrier));
    }
}

/// The trace id `span` belongs to (32 lower-case hex digits), when OpenTelemetry records it.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
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
    fn without_opentelemetry_a_new_trace_is_passed_on() {
        let (first, second) = (outgoing(), outgoing());
        assert!(parse(&first).is_some(), "{first}");
        assert_ne!(parse(&first).unwrap().0, parse(&second).unwrap().0, "each is a trace of its own");
    }
}
