//! Events appended to an event store carry a `create` span of the caller's trace, as published
//! ones do: appended in a unit of work or straight to the store, on the in-memory and the
//! embedded backend. The events relay's send span and the consumers' process spans then
//! continue it (tests/trace.rs shows that for the outbox; the relay reads both alike).

use std::sync::Arc;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tributary::sqlite::{SqliteConfig, SqliteDatabase};
use tributary::{
    Database, Envelope, Error, ExpectedVersion, InMemoryDatabase, Payload, StreamId, StreamVersion,
};

fn created(spans: &[SpanData], name: &str) -> Vec<SpanData> {
    spans.iter().filter(|s| s.name == name).cloned().collect()
}

fn order_event(n: i64) -> Envelope {
    Envelope::new("orders", "OrderPlaced", Payload::from_value(&n).unwrap())
        .with_aggregate_type("Order")
}

/// Appends two events in a unit and one straight to the store, each inside a request span;
/// returns the request spans' ids in order and the stored events.
async fn append_traced(db: Arc<dyn Database>, stream: &StreamId) -> Vec<Envelope> {
    let in_unit = stream.clone();
    db.transact(move |unit| {
        Box::pin(async move {
            unit.append(
                &in_unit,
                ExpectedVersion::NoStream,
                vec![order_event(1), order_event(2)],
            )
            .await
        })
    })
    .instrument(tracing::info_span!("request in a unit"))
    .await
    .unwrap();
    db.event_store()
        .append(
            stream,
            ExpectedVersion::Exact(StreamVersion::new(2)),
            vec![order_event(3)],
        )
        .instrument(tracing::info_span!("request to the store"))
        .await
        .unwrap();
    // Outside any span: nothing to continue, nothing stamped.
    db.event_store()
        .append(stream, ExpectedVersion::Any, vec![order_event(4)])
        .await
        .unwrap();
    db.event_store()
        .read_stream(stream, StreamVersion::new(0), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.envelope)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appended_events_continue_the_callers_trace_through_a_create_span() -> Result<(), Error> {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("append-test")));
    // Global: SQLite's writer thread runs units and reads the current span there.
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");

    let dir = tempfile::tempdir().unwrap();
    let backends: Vec<(&str, Arc<dyn Database>)> = vec![
        ("memory", Arc::new(InMemoryDatabase::new())),
        (
            "sqlite",
            Arc::new(SqliteDatabase::open(
                dir.path().join("svc.db"),
                SqliteConfig::default(),
            )?),
        ),
    ];
    for (backend, db) in backends {
        exporter.reset();
        let stream = StreamId::new(format!("Order-{backend}"))?;
        let events = append_traced(db, &stream).await;
        provider.force_flush().unwrap();
        let spans = exporter.get_finished_spans().unwrap();
        let requests = [
            created(&spans, "request in a unit").remove(0),
            created(&spans, "request to the store").remove(0),
        ];
        let creates = created(&spans, "create Order");
        assert_eq!(
            creates.len(),
            3,
            "{backend}: one create span per traced event"
        );
        assert_eq!(events.len(), 4, "{backend}");
        for (event, request) in events[..3]
            .iter()
            .zip([&requests[0], &requests[0], &requests[1]])
        {
            let parent = event.traceparent.as_deref().expect("stamped");
            let create = creates
                .iter()
                .find(|c| parent.contains(&c.span_context.span_id().to_string()))
                .unwrap_or_else(|| panic!("{backend}: {parent} names no create span"));
            assert_eq!(
                create.parent_span_id,
                request.span_context.span_id(),
                "{backend}"
            );
            assert_eq!(
                create.span_context.trace_id(),
                request.span_context.trace_id()
            );
            let destination = create
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == "messaging.destination.name")
                .map(|kv| kv.value.to_string());
            assert_eq!(destination.as_deref(), Some("Order"), "{backend}");
        }
        assert_eq!(events[3].traceparent, None, "{backend}: untraced append");
    }
    // The current span outside is not an OpenTelemetry one: nothing leaked into it.
    assert!(
        !tracing::Span::current()
            .context()
            .span()
            .span_context()
            .is_valid()
    );
    Ok(())
}
