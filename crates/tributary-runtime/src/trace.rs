//! The relay's send spans and the consumers' process spans, named and attributed per the
//! OpenTelemetry messaging semantic conventions (`messaging.system`,
//! `messaging.destination.name`, `messaging.operation.type` = send / process). Each continues
//! the trace the envelope's `traceparent` names (stamped at `publish`, see
//! `tributary_core::trace`); a send span of many messages is parented by the first and linked
//! to every one.
//!
//! The spans cost a disabled-callsite check unless a subscriber records them at INFO.

use opentelemetry::Context;
use opentelemetry::trace::TraceContextExt;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
// `messaging.system`: Tributary carries its own envelope over every broker.
use tributary_core::trace::{MESSAGING_SYSTEM as SYSTEM, parse_trace_context};
use tributary_core::{Delivery, Envelope, GroupName, OutgoingMessage};

/// The most messages of a batch that get a span link.
const MAX_LINKS: usize = 128;

/// The `traceparent` inside an envelope's JSON, found without decoding the rest of it.
fn traceparent_in(payload: &[u8]) -> Option<&str> {
    string_attribute(payload, b"\"traceparent\":\"")
}

/// The `tracestate` inside an envelope's JSON. A state with an escaped character is not
/// returned as written, so `parse_trace_context` drops it (only the state, never the parent).
fn tracestate_in(payload: &[u8]) -> Option<&str> {
    string_attribute(payload, b"\"tracestate\":\"")
}

/// The text of a top-level string attribute, `key` being `"name":"`.
fn string_attribute<'a>(payload: &'a [u8], key: &[u8]) -> Option<&'a str> {
    let at = payload.windows(key.len()).position(|w| w == key)? + key.len();
    let rest = &payload[at..];
    let end = rest.iter().position(|b| *b == b'"')?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// The span of one relay publish of `messages` from `source`.
pub(crate) fn send_span(source: &str, messages: &[OutgoingMessage]) -> Span {
    let destination = messages.first().map_or("", |m| m.topic.as_str());
    let span = tracing::info_span!(
        "send",
        otel.name = %format_args!("send {destination}"),
        otel.kind = "producer",
        messaging.system = SYSTEM,
        messaging.destination.name = %destination,
        messaging.operation.type = "send",
        messaging.operation.name = "send",
        messaging.batch.message_count = messages.len(),
        tributary.relay.source = %source,
    );
    if span.is_disabled() {
        return span;
    }
    let mut parented = false;
    for m in messages.iter().take(MAX_LINKS) {
        let Some(context) = traceparent_in(&m.payload)
            .and_then(|parent| parse_trace_context(parent, tracestate_in(&m.payload)))
        else {
            continue;
        };
        if !parented {
            parented = true;
            let _ = span.set_parent(Context::new().with_remote_span_context(context.clone()));
        }
        span.add_link(context);
    }
    span
}

/// The span of handling one message in a consumer group.
pub(crate) fn process_span(group: &GroupName, delivery: &Delivery, envelope: &Envelope) -> Span {
    let destination = delivery.topic.as_str();
    let span = tracing::info_span!(
        "process",
        otel.name = %format_args!("process {destination}"),
        otel.kind = "consumer",
        messaging.system = SYSTEM,
        messaging.destination.name = %destination,
        messaging.destination.partition.id = delivery.partition.get(),
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.message.id = %envelope.id,
        messaging.consumer.group.name = %group,
    );
    if !span.is_disabled()
        && let Some(context) = envelope
            .traceparent
            .as_deref()
            .and_then(|parent| parse_trace_context(parent, envelope.tracestate.as_deref()))
    {
        let _ = span.set_parent(Context::new().with_remote_span_context(context));
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_traceparent_is_found_in_an_envelopes_json() {
        let mut e = Envelope::new("s", "T", tributary_core::Payload::from_value(&1).unwrap());
        assert_eq!(traceparent_in(e.to_json().as_bytes()), None);
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        e.traceparent = Some(tp.into());
        assert_eq!(traceparent_in(e.to_json().as_bytes()), Some(tp));
        assert_eq!(tracestate_in(e.to_json().as_bytes()), None);
        e.tracestate = Some("rojo=00f067aa0ba902b7".into());
        assert_eq!(
            tracestate_in(e.to_json().as_bytes()),
            Some("rojo=00f067aa0ba902b7")
        );
    }
}
