//! W3C trace context through the envelope: `publish` and `append` stamp a `create` span under
//! the caller's current span into `traceparent` (and its `tracestate`), so that the relay's send span and the consumers' process spans continue the
//! caller's trace (the OpenTelemetry messaging conventions; the spans are the runtime's).
//!
//! Spans carry an OpenTelemetry context only where the application installed an OpenTelemetry
//! layer (`tracing-opentelemetry`); without one nothing is stamped and nothing is exported.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::envelope::Envelope;
use crate::topic::Topic;

/// The current span's context as a W3C `traceparent`, if it has one.
pub fn current_traceparent() -> Option<String> {
    current_trace_context().map(|(parent, _)| parent)
}

/// The current span's context as a W3C `traceparent` and its `tracestate` (`None` when the
/// state is empty), if it has one.
pub fn current_trace_context() -> Option<(String, Option<String>)> {
    let context = tracing::Span::current().context();
    let span = context.span();
    let span_context = span.span_context();
    Some((traceparent_of(span_context)?, tracestate_of(span_context)))
}

/// `context`'s W3C `tracestate` header, `None` when it has no entries.
pub fn tracestate_of(context: &SpanContext) -> Option<String> {
    let header = context.trace_state().header();
    (!header.is_empty()).then_some(header)
}

/// The remote span context a `traceparent` and its `tracestate` name. A malformed state is
/// dropped (the parent is still continued), as W3C asks of a receiver.
pub fn parse_trace_context(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    let state = tracestate
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    parse_with_state(traceparent, state)
}

/// `context` as a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
pub fn traceparent_of(context: &SpanContext) -> Option<String> {
    context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            context.trace_id(),
            context.span_id(),
            context.trace_flags().to_u8()
        )
    })
}

/// The remote span context a W3C `traceparent` names; `None` for anything malformed (a bad
/// header never fails a message: its trace is just not continued).
pub fn parse_traceparent(traceparent: &str) -> Option<SpanContext> {
    parse_with_state(traceparent, TraceState::default())
}

fn parse_with_state(traceparent: &str, state: TraceState) -> Option<SpanContext> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let lower_hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if version.len() != 2
        || version == "ff"
        || (version == "00" && parts.next().is_some())
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
        || ![version, trace, span, flags].iter().all(|s| lower_hex(s))
    {
        return None;
    }
    let context = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        state,
    );
    context.is_valid().then_some(context)
}

/// Stamps `event`, published to `topic`, with the context of a `create` span (the
/// OpenTelemetry messaging conventions' span of creating a message) that is a child of the
/// current span, when the current span has a context. Backends call it in `publish`; an event
/// published inside a consumer's process span so continues that span's trace, and the relay's
/// send span and every consumer's process span of this message have the create span as parent.
///
/// Without an OpenTelemetry layer this is one disabled-span check: nothing is created, nothing
/// is stamped.
pub fn stamp(topic: &Topic, event: &mut Envelope) {
    stamp_created(topic.as_str(), event);
}

/// Stamps the events appended to `stream` as [`stamp`] does a published one: each gets a
/// `create` span under the current span. Their destination is the topic the events relay
/// sends them to, their aggregate type; an event without one is named by its stream. Events
/// appended outside any traced span keep the trace context they came with (e.g.
/// [`crate::Metadata::caused_by`]'s). Backends call it in `append`.
pub fn stamp_appended(stream: &crate::StreamId, events: &mut [Envelope]) {
    if current_trace_context().is_none() {
        return;
    }
    for event in events {
        let destination = event
            .aggregate_type
            .clone()
            .unwrap_or_else(|| stream.to_string());
        stamp_created(&destination, event);
    }
}

fn stamp_created(destination: &str, event: &mut Envelope) {
    if current_trace_context().is_none() {
        return;
    }
    let create = tracing::info_span!(
        "create",
        otel.name = %format_args!("create {destination}"),
        otel.kind = "producer",
        messaging.system = MESSAGING_SYSTEM,
        messaging.destination.name = destination,
        messaging.operation.type = "create",
        messaging.operation.name = "publish",
        messaging.message.id = %event.id,
    );
    // The span ends when this function returns: creating the message is the outbox or event
    // store insert the caller is about to make, not the relay's send.
    let context = create.in_scope(current_trace_context);
    if let Some((traceparent, tracestate)) = context {
        event.traceparent = Some(traceparent);
        // Replaced with the parent even when empty: a state belongs to the parent it came with.
        event.tracestate = tracestate;
    }
}

/// `messaging.system` of every span Tributary records.
pub const MESSAGING_SYSTEM: &str = "tributary";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_and_bad_ones_are_ignored() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = parse_traceparent(tp).expect("valid");
        assert_eq!(traceparent_of(&context).as_deref(), Some(tp));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn a_tracestate_travels_with_its_parent_and_a_bad_one_is_dropped() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let state = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
        let context = parse_trace_context(tp, Some(state)).expect("valid");
        assert_eq!(tracestate_of(&context).as_deref(), Some(state));
        assert_eq!(traceparent_of(&context).as_deref(), Some(tp));
        let dropped = parse_trace_context(tp, Some("no equals sign")).expect("parent kept");
        assert_eq!(tracestate_of(&dropped), None);
        assert_eq!(traceparent_of(&dropped).as_deref(), Some(tp));
        assert_eq!(tracestate_of(&parse_trace_context(tp, None).unwrap()), None);
        assert!(parse_trace_context("garbage", Some(state)).is_none());
    }

    #[test]
    fn without_an_opentelemetry_layer_nothing_is_stamped() {
        let mut e = Envelope::new("s", "T", crate::Payload::from_value(&1).unwrap());
        stamp(&crate::Topic::new("t").unwrap(), &mut e);
        assert_eq!(e.traceparent, None);
    }
}
