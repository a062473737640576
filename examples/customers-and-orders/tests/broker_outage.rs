//! The reference application over HTTP while its NATS server goes away and comes back: health
//! says so at once (not when a relay's or consumer's next call times out), and recovers.

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
async fn health_shows_a_lost_broker_at_once_and_recovers_with_it() {
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

    nats.kill();
    let noticed = health_until(&client, &base, Duration::from_secs(3), |s, body| {
        s == 503
            && body["components"]["broker"]
                .as_str()
                .is_some_and(|b| b.contains("disconnected") || b.contains("pending"))
    })
    .await;
    eprintln!("health showed the lost broker after {noticed:?}");

    nats.restart();
    let recovered = health_until(&client, &base, Duration::from_secs(30), |s, _| s == 200).await;
    eprintln!("health was ok again {recovered:?} after the restart");
    // And the saga runs again end to end through the restarted broker.
    let created = client
        .post(format!("{base}/customers"))
        .json(&json!({"name": "After the outage", "credit_limit": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let customer: Value = created.json().await.unwrap();
    let placed = client
        .post(format!("{base}/orders"))
        .json(&json!({"customer_id": customer["customer_id"], "order_total": 50}))
        .send()
        .await
        .unwrap();
    assert_eq!(placed.status().as_u16(), 201);
    let order: Value = placed.json().await.unwrap();
    let started = Instant::now();
    loop {
        let r = client
            .get(format!(
                "{base}/orders/{}",
                order["order_id"].as_str().unwrap()
            ))
            .send()
            .await
            .unwrap();
        let body: Value = r.json().await.unwrap();
        if body["state"] == "APPROVED" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the order after the outage stayed {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "an order placed after the outage settled in {:?}",
        started.elapsed()
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    running.stop().await;
}
