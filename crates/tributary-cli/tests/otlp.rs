//! `--otlp-endpoint`: `tributary serve` exports one trace per business transaction to an
//! OpenTelemetry collector — here a collector in the test that decodes OTLP/HTTP protobuf as a
//! real one does. An order placed with an upstream `traceparent` gives one trace that runs
//! from the HTTP request through the order service's outbox, the relay and the customer
//! service's consumer, into the event that service publishes and the order service's consumer
//! of it: two services, parent by parent.
#![cfg(feature = "otlp")]

mod listening;

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::routing::post;
use listening::Listening;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::{Value, json};

const UPSTREAM_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const UPSTREAM_SPAN: &str = "00f067aa0ba902b7";

/// One span as the collector received it.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    trace: String,
    id: String,
    parent: String,
    name: String,
    attributes: HashMap<String, String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// A collector on a loopback port: `/v1/traces` takes OTLP protobuf, as a collector's
/// OTLP/HTTP receiver does, and keeps every span.
async fn collector() -> (String, Arc<Mutex<Vec<Received>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let kept = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let kept = kept.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let mut kept = kept.lock().unwrap();
                for resource in request.resource_spans {
                    let service = resource
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|kv| kv.key == "service.name")
                        .map(text)
                        .unwrap_or_default();
                    for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                        kept.push(Received {
                            service: service.clone(),
                            trace: hex(&span.trace_id),
                            id: hex(&span.span_id),
                            parent: hex(&span.parent_span_id),
                            name: span.name,
                            attributes: span
                                .attributes
                                .iter()
                                .map(|kv| (kv.key.clone(), text(kv)))
                                .collect(),
                        });
                    }
                }
                // An empty ExportTraceServiceResponse: everything accepted.
                (
                    [("content-type", "application/x-protobuf")],
                    Vec::<u8>::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (address, spans)
}

/// `tributary serve` on a fresh data directory, exporting its spans to `otlp`.
fn serve(dir: &str, otlp: &str) -> Listening {
    Listening::spawn(
        Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(["--otlp-endpoint", otlp, "serve", "--data-dir", dir])
            .args(["--listen", "127.0.0.1:0"])
            .env("OTEL_SERVICE_NAME", "b2b-store"),
    )
}

/// The first span of `spans` named `name` whose attributes include `with`.
fn find<'a>(spans: &'a [Received], name: &str, with: &[(&str, &str)]) -> Option<&'a Received> {
    spans.iter().find(|s| {
        s.name == name
            && with
                .iter()
                .all(|(k, v)| s.attributes.get(*k).map(String::as_str) == Some(*v))
    })
}

/// Whether `ancestor` is `span`'s parent, grandparent, … within the trace.
fn descends(spans: &[Received], span: &Received, ancestor: &Received) -> bool {
    let by_id: HashMap<&str, &Received> = spans.iter().map(|s| (s.id.as_str(), s)).collect();
    let mut at = span;
    while let Some(parent) = by_id.get(at.parent.as_str()) {
        if parent.id == ancestor.id {
            return true;
        }
        at = parent;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_one_trace_across_two_services_at_the_collector() {
    let (endpoint, received) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let serve = serve(dir.path().to_str().unwrap(), &endpoint);
    let http = reqwest::Client::new();
    let customer: Value = http
        .post(format!("{}/customers", serve.base))
        .json(&json!({"name": "Traced", "credit_limit": 100}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let customer = customer["customer_id"].as_str().unwrap().to_owned();
    let placed = http
        .post(format!("{}/orders", serve.base))
        .header(
            "traceparent",
            format!("00-{UPSTREAM_TRACE}-{UPSTREAM_SPAN}-01"),
        )
        .header("tracestate", "upstream=1")
        .json(&json!({"customer_id": customer, "order_total": 40}))
        .send()
        .await
        .unwrap();
    assert_eq!(placed.status(), reqwest::StatusCode::CREATED);
    let order: Value = placed.json().await.unwrap();
    let order = order["order_id"].as_str().unwrap().to_owned();

    // The spans of the order's path: the order service's request and outbox, the customer
    // service's consumer and its event, the order service's consumer of that event.
    let deadline = Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let spans: Vec<Received> = received
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace == UPSTREAM_TRACE)
            .cloned()
            .collect();
        let complete = find(
            &spans,
            "process Customer",
            &[("messaging.consumer.group.name", "order-service")],
        )
        .is_some()
            && find(&spans, "send Customer", &[]).is_some();
        if complete {
            break spans;
        }
        let names: Vec<_> = spans.iter().map(|s| s.name.clone()).collect();
        assert!(
            Instant::now() < deadline,
            "the order's trace never reached the order service's consumer; spans of the trace: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let state: Value = http
        .get(format!("{}/orders/{order}", serve.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["state"], "APPROVED", "{state}");

    let names: Vec<_> = spans.iter().map(|s| s.name.clone()).collect();
    let pick = |name: &str, with: &[(&str, &str)]| {
        find(&spans, name, with)
            .unwrap_or_else(|| panic!("no span {name:?} {with:?} in the trace: {names:?}"))
    };
    let request = pick("POST", &[("url.path", "/orders")]);
    let created = pick("create Order", &[("messaging.operation.type", "create")]);
    let sent = pick("send Order", &[("messaging.operation.type", "send")]);
    let credit = pick(
        "process Order",
        &[("messaging.consumer.group.name", "customer-service")],
    );
    let reserved = pick("create Customer", &[]);
    let sent_back = pick("send Customer", &[]);
    let settled = pick(
        "process Customer",
        &[("messaging.consumer.group.name", "order-service")],
    );

    assert_eq!(
        request.parent, UPSTREAM_SPAN,
        "the request continues the caller"
    );
    assert_eq!(request.attributes["http.response.status_code"], "201");
    assert_eq!(
        created.parent, request.id,
        "the outbox event is created in the request"
    );
    assert_eq!(
        sent.parent, created.id,
        "the relay's send continues the created event"
    );
    assert_eq!(
        credit.parent, created.id,
        "the customer service processes that event"
    );
    assert!(
        descends(&spans, reserved, credit),
        "the customer service's event is created while it processes the order's"
    );
    assert_eq!(sent_back.parent, reserved.id);
    assert_eq!(
        settled.parent, reserved.id,
        "the order service processes the reply"
    );
    for span in [request, created, sent, credit, reserved, sent_back, settled] {
        assert_eq!(span.service, "b2b-store", "{} names its service", span.name);
    }
    assert_eq!(credit.attributes["messaging.system"], "tributary");
    assert_eq!(credit.attributes["messaging.destination.name"], "Order");
}

#[test]
fn an_endpoint_that_is_not_an_http_url_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["collector:4318", "https://collector:4318"] {
        let out = Command::new(env!("CARGO_BIN_EXE_tributary"))
            .args(["--otlp-endpoint", bad, "serve", "--data-dir"])
            .arg(dir.path())
            .args(["--listen", "127.0.0.1:0"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{bad}: serve ran");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("--otlp-endpoint"), "{bad}: {stderr}");
        assert!(out.stdout.is_empty(), "{bad}: it listened");
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing was created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_the_service_nothing() {
    // A port nothing listens on: the exporter's sends fail, the service answers as ever.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let serve = serve(dir.path().to_str().unwrap(), &endpoint);
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let created = http
            .post(format!("{}/customers", serve.base))
            .json(&json!({"name": "Untraced", "credit_limit": 10}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), reqwest::StatusCode::CREATED);
        // Past the batch processor's 1 s export interval, so that exports were attempted.
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let health = http
        .get(format!("{}/health", serve.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), reqwest::StatusCode::OK);
}
