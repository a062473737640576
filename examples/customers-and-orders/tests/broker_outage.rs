//! The reference application over HTTP while its NATS server goes away for 8 seconds and comes
//! back: health says so at once (not when a relay's or consumer's next call times out), an
//! order placed during the outage is accepted and settles after it (the catch-up is measured
//! and printed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use customers_and_orders::http::{self, AppState};
use customers_and_orders::system::{self, Backends, BrokerUrl, DbUrl, ServiceName};
use serde_json::{Value, json};
use tributary_testkit::servers::PrivateNats;

async fn health(client: &reqwest::Client, base: &str) -> (u16, Value) {
    let r = client
        .get(format!("{base}/health"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn post(client: &reqwest::Client, base: &str, path: &str, body: Value) -> Value {
    let r = client
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{path}");
    r.json().await.unwrap()
}

/// Polls `path` until `want` holds for its body, for at most a minute.
async fn state_until(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    want: impl Fn(&Value) -> bool,
) {
    let started = Instant::now();
    loop {
        let r = client.get(format!("{base}{path}")).send().await.unwrap();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if want(&body) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{path} stayed {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `/health` until `want` holds; returns how long it took.
async fn health_until(
    client: &reqwest::Client,
    base: &str,
    within: Duration,
    want: impl Fn(u16, &Value) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let (status, body) = health(client, base).await;
        if want(status, &body) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "health stayed {status} {body} for {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn health_shows_a_lost_broker_at_once_and_what_was_written_meanwhile_settles_after_it() {
    let Some(mut nats) = PrivateNats::start("broker outage") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerUrl::Nats {
        url: nats.url(),
        prefix: format!("OUTAGE{}", std::process::id()),
        replicas: 1,
    };
    let backends = Backends::connect(
        &DbUrl::Sqlite(dir.path().to_owned()),
        &broker,
        &ServiceName::ALL,
    )
    .await
    .unwrap();
    let running = system::start(backends).await.unwrap();
    let state = AppState {
        services: running.services.clone(),
        health: Arc::new(running.health()),
        consistency: http::Consistency::new(tributary::ConsistencyKey::new(
            b"the outage test's consistency key".to_vec(),
        )),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(listener, http::router(state), async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    health_until(&client, &base, Duration::from_secs(30), |s, _| s == 200).await;

    // A customer from before the outage, and an order placed during it: accepted (the
    // services write their own databases), settled once the broker is back.
    let customer = post(
        &client,
        &base,
        "/customers",
        json!({"name": "Patient", "credit_limit": 100}),
    )
    .await;
    let customer_id = customer["customer_id"].as_str().unwrap().to_owned();
    state_until(
        &client,
        &base,
        &format!("/customers/{customer_id}/orderhistory"),
        |b| b["customer_id"] == customer_id.as_str(),
    )
    .await;

    nats.kill();
    let noticed = health_until(&client, &base, Duration::from_secs(3), |s, body| {
        s == 503
            && body["components"]["broker"]
                .as_str()
                .is_some_and(|b| b.contains("disconnected") || b.contains("pending"))
    })
    .await;
    eprintln!("health showed the lost broker after {noticed:?}");
    let order = post(
        &client,
        &base,
        "/orders",
        json!({"customer_id": customer_id, "order_total": 50}),
    )
    .await;
    let order_id = order["order_id"].as_str().unwrap().to_owned();
    // The outage itself, as long as the one reported (not a synchronisation: the broker is
    // simply away for this long).
    tokio::time::sleep(Duration::from_secs(8)).await;

    nats.restart();
    let restarted = Instant::now();
    let recovered = health_until(&client, &base, Duration::from_secs(30), |s, _| s == 200).await;
    eprintln!("health was ok again {recovered:?} after the restart");
    state_until(&client, &base, &format!("/orders/{order_id}"), |b| {
        b["state"] == "APPROVED"
    })
    .await;
    let approved = restarted.elapsed();
    state_until(
        &client,
        &base,
        &format!("/customers/{customer_id}/orderhistory"),
        |b| b["orders"][0]["state"] == "APPROVED",
    )
    .await;
    let in_history = restarted.elapsed();
    eprintln!(
        "after the restart, the order placed during the outage was approved in {approved:?} and in the history view in {in_history:?}"
    );
    // Bounded, where the report that started this saw 113 s. The client now looks for the
    // server at least every 250 ms (its default wait grew to 4 s; the mechanism has its own
    // unit test in tributary-nats); what remains is the relays' and consumers' retry
    // backoff (up to 5 s, not woken by the reconnection) and one pass of the saga.
    assert!(
        in_history < Duration::from_secs(10),
        "caught up {in_history:?} after the restart"
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    running.stop().await;
}
