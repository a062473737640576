//! One trace across the outbox on the embedded default: a request span publishes an event (a
//! `create` span), the relay's send span and the consumer's process span continue its trace, a span of the handler
//! nests under the process span, and the event the handler publishes there carries that span.
//! The request continues an upstream caller's `traceparent` and `tracestate` (as an HTTP server
//! would), and the state travels through the envelope into the process span.

use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry::trace::{SpanId, TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tributary::sqlite::{SqliteBroker, SqliteBrokerConfig, SqliteConfig, SqliteDatabase};
use tributary::{
    Broker, CancellationToken, Consumer, ConsumerConfig, Database, Envelope, Error, GroupName,
    HandlerError, Payload, Relay, RelayConfig, Topic, handler_fn,
};

/// What an upstream caller sent in its `traceparent` and `tracestate` headers.
const UPSTREAM_PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const UPSTREAM_STATE: &str = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    spans.iter().find(|s| s.name == name).unwrap_or_else(|| {
        let names: Vec<_> = spans.iter().map(|s| s.name.to_string()).collect();
        panic!("no span {name:?} among {names:?}")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_publish_through_send_to_process() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("trace-test")));
    // Global: SQLite's writer thread runs units and reads the current span there.
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");

    let dir = tempfile::tempdir().unwrap();
    let db: Arc<dyn Database> =
        Arc::new(SqliteDatabase::open(dir.path().join("svc.db"), SqliteConfig::default()).unwrap());
    let broker: Arc<dyn Broker> = Arc::new(
        SqliteBroker::open(dir.path().join("broker.db"), SqliteBrokerConfig::default()).unwrap(),
    );
    let (orders, followups) = (
        Topic::new("orders").unwrap(),
        Topic::new("followups").unwrap(),
    );
    broker.ensure_topic(&orders, 1).await.unwrap();
    broker.ensure_topic(&followups, 1).await.unwrap();

    let follow = followups.clone();
    let handler = handler_fn(move |event, unit| {
        let follow = follow.clone();
        Box::pin(
            async move {
                let next = Envelope::new("credit", "CreditReserved", Payload::from_value(&1)?)
                    .caused_by(event);
                unit.publish(&follow, next)
                    .await
                    .map_err(HandlerError::from)
            }
            .instrument(tracing::info_span!("reserve credit")),
        )
    });
    let shutdown = CancellationToken::new();
    let relay = Relay::new(db.outbox_source(), broker.clone(), RelayConfig::default());
    let consumer = Consumer::new(
        GroupName::new("credit").unwrap(),
        vec![orders.clone()],
        db.clone(),
        broker.clone(),
        handler,
        ConsumerConfig::default().with_fetch_wait(Duration::from_millis(50)),
    )
    .unwrap();
    let tasks = [
        tokio::spawn(relay.run(shutdown.clone())),
        tokio::spawn(consumer.run(shutdown.clone())),
    ];

    let upstream = tributary::trace::parse_trace_context(UPSTREAM_PARENT, Some(UPSTREAM_STATE))
        .expect("a valid upstream context");
    let request_span = tracing::info_span!("POST /orders");
    request_span
        .set_parent(Context::new().with_remote_span_context(upstream.clone()))
        .unwrap();
    let topic = orders.clone();
    db.transact(move |unit| {
        Box::pin(async move {
            let created = Envelope::new("orders", "OrderCreated", Payload::from_value(&7)?);
            unit.publish(&topic, created).await?;
            Ok::<_, Error>(())
        })
    })
    .instrument(request_span)
    .await
    .unwrap();

    // The follow-up reaches the broker once the handler ran and the relay sent it.
    let mut audit = broker
        .consume(
            &GroupName::new("audit").unwrap(),
            &followups,
            tributary::Partition::new(0),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let followup = loop {
        let got = audit.fetch(1, Duration::from_millis(100)).await.unwrap();
        if let Some(d) = got.into_iter().next() {
            break Envelope::from_json(&d.payload).unwrap();
        }
        assert!(Instant::now() < deadline, "the follow-up never arrived");
    };
    shutdown.cancel();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();

    let request = named(&spans, "POST /orders");
    let create = named(&spans, "create orders");
    let send = named(&spans, "send orders");
    let process = named(&spans, "process orders");
    let work = named(&spans, "reserve credit");
    let trace = request.span_context.trace_id();
    for s in [create, send, process, work] {
        assert_eq!(
            s.span_context.trace_id(),
            trace,
            "{} is in the request's trace",
            s.name
        );
    }
    assert_eq!(trace, upstream.trace_id(), "the request continues upstream");
    assert_eq!(request.parent_span_id, upstream.span_id());
    assert_ne!(request.parent_span_id, SpanId::INVALID);
    for s in [request, create, send, process, work] {
        assert_eq!(
            s.span_context.trace_state().header(),
            UPSTREAM_STATE,
            "{} carries the upstream tracestate",
            s.name
        );
    }
    assert_eq!(create.parent_span_id, request.span_context.span_id());
    assert_eq!(send.parent_span_id, create.span_context.span_id());
    assert_eq!(
        send.links.links.first().map(|l| l.span_context.span_id()),
        Some(create.span_context.span_id()),
        "the send span links the message it sent"
    );
    assert_eq!(process.parent_span_id, create.span_context.span_id());
    assert_eq!(work.parent_span_id, process.span_context.span_id());
    assert_eq!(
        attribute(create, "messaging.operation.type").as_deref(),
        Some("create")
    );
    assert_eq!(
        attribute(send, "messaging.operation.type").as_deref(),
        Some("send")
    );
    assert_eq!(
        attribute(process, "messaging.operation.type").as_deref(),
        Some("process")
    );
    assert_eq!(
        attribute(process, "messaging.system").as_deref(),
        Some("tributary")
    );
    assert_eq!(
        attribute(process, "messaging.destination.name").as_deref(),
        Some("orders")
    );
    assert_eq!(
        attribute(process, "messaging.consumer.group.name").as_deref(),
        Some("credit")
    );

    let continued = followup
        .traceparent
        .as_deref()
        .and_then(tributary::trace::parse_traceparent)
        .expect("the follow-up carries a traceparent");
    assert_eq!(continued.trace_id(), trace);
    assert_eq!(
        followup.tracestate.as_deref(),
        Some(UPSTREAM_STATE),
        "the handler's event carries the state on"
    );
    let follow_create = named(&spans, "create followups");
    assert_eq!(
        follow_create.parent_span_id,
        work.span_context.span_id(),
        "the handler's event is created in the span it was published in, under the process span"
    );
    assert_eq!(continued.span_id(), follow_create.span_context.span_id());
}
