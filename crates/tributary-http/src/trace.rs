//! The span of one HTTP request, per the OpenTelemetry HTTP server conventions. It continues
//! the caller's W3C `traceparent` (and `tracestate`), so that an event the handler publishes
//! (stamped with the current span) belongs to the caller's trace: one trace then runs from the
//! upstream request through the outbox, the relay and every consumer.
//!
//! Without an OpenTelemetry layer the span is an ordinary `tracing` span (a disabled-callsite
//! check unless a subscriber records INFO), and no header is read.

use http::request::Parts;
use opentelemetry::Context;
use opentelemetry::trace::TraceContextExt;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tributary_core::trace::parse_trace_context;

/// The server span of the request whose head is `parts`; the caller records
/// `http.response.status_code` once the response exists.
pub(crate) fn server_span(parts: &Parts) -> Span {
    let method = parts.method.as_str();
    // Named by the method alone: the path holds ids, and a span name must not (the
    // conventions' low-cardinality rule); the path is an attribute.
    let span = tracing::info_span!(
        "HTTP request",
        otel.name = %method,
        otel.kind = "server",
        http.request.method = %method,
        url.path = %parts.uri.path(),
        http.response.status_code = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    // A malformed traceparent starts a new trace, as W3C asks of a receiver.
    if let Some(upstream) =
        header("traceparent").and_then(|parent| parse_trace_context(parent, header("tracestate")))
    {
        let _ = span.set_parent(Context::new().with_remote_span_context(upstream));
    }
    span
}
