//! `GET /metrics` of `tributary serve`: after a workload, the figures match what happened.

mod listening;

use std::time::{Duration, Instant};

use listening::Listening;
use serde_json::json;
use tributary::sqlite::{SqliteBroker, SqliteBrokerConfig};
use tributary::{Broker, EventId, OutgoingMessage, Topic};

/// `tributary serve` on a fresh data directory.
fn serve(dir: &str) -> Listening {
    Listening::start(&["serve", "--data-dir", dir, "--listen", "127.0.0.1:0"])
}

/// The sum of every sample of `name` whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

async fn scrape(base: &str) -> String {
    let reply = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("/metrics answers");
    assert!(reply.status().is_success(), "{}", reply.status());
    let kind = reply
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(kind.starts_with("text/plain"), "{kind}");
    reply.text().await.expect("a body")
}

/// Scrapes until `check` holds (the consumers run asynchronously), or fails with the last page.
async fn scrape_until(base: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape(base).await;
        if check(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_the_services_handled_and_the_one_poison_message() {
    let dir = tempfile::tempdir().unwrap();
    let serve = serve(dir.path().to_str().unwrap());
    let http = reqwest::Client::new();
    const CUSTOMERS: usize = 25;
    for n in 0..CUSTOMERS {
        let reply = http
            .post(format!("{}/customers", serve.base))
            .json(&json!({"name": format!("c{n}"), "credit_limit": 1000}))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 201);
    }
    let handled = |text: &str, group: &str, outcome: &str| {
        sample(
            text,
            "tributary_consumer_handled_total",
            &[
                ("group", group),
                ("topic", "Customer"),
                ("outcome", outcome),
            ],
        )
    };
    let published = |text: &str| {
        sample(
            text,
            "tributary_relay_published_total",
            &[("source", "outbox")],
        )
    };
    // The relay counts a batch once it has marked it published, which can be after the
    // consumers have handled it: wait for both counts.
    let text = scrape_until(&serve.base, "every CustomerCreated handled", |t| {
        handled(t, "order-history", "ok") >= CUSTOMERS as f64
            && handled(t, "order-service", "ok") >= CUSTOMERS as f64
            && published(t) >= CUSTOMERS as f64
    })
    .await;
    assert_eq!(handled(&text, "order-history", "ok"), CUSTOMERS as f64);
    assert_eq!(handled(&text, "order-service", "ok"), CUSTOMERS as f64);
    assert_eq!(handled(&text, "order-history", "dead_lettered"), 0.0);
    assert_eq!(
        published(&text),
        CUSTOMERS as f64,
        "the customer relay published every event once"
    );
    assert!(
        sample(
            &text,
            "tributary_sqlite_units_per_commit_count",
            &[("db", "customers")]
        ) >= 1.0,
        "the customer database's writer committed"
    );
    assert!(
        sample(
            &text,
            "tributary_consumer_handler_seconds_count",
            &[("group", "order-history")]
        ) >= CUSTOMERS as f64
    );

    // Every partition samples its lag every 5 s: once each has sampled after the last commit,
    // nothing is behind.
    let lag_series = |t: &str| {
        t.lines()
            .filter(|l| {
                l.starts_with("tributary_consumer_lag{") && l.contains("group=\"order-history\"")
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .collect::<Vec<_>>()
    };
    let text = scrape_until(
        &serve.base,
        "every order-history partition's lag at 0",
        |t| {
            let lags = lag_series(t);
            !lags.is_empty() && lags.iter().all(|l| *l == 0.0)
        },
    )
    .await;
    assert!(
        lag_series(&text).len() >= 2,
        "one series per partition of each topic: {text}"
    );

    // One message no consumer can decode, published straight into the embedded log.
    let broker = SqliteBroker::open(dir.path().join("broker.db"), SqliteBrokerConfig::default())
        .expect("the broker log opens beside the serving process");
    broker
        .publish(&[OutgoingMessage {
            topic: Topic::new("Customer").unwrap(),
            key: "poison".into(),
            id: EventId::new(),
            payload: b"{not an envelope".to_vec(),
        }])
        .await
        .unwrap();
    let text = scrape_until(&serve.base, "the poison message dead-lettered", |t| {
        handled(t, "order-history", "dead_lettered") >= 1.0
            && sample(
                t,
                "tributary_dead_letters_open",
                &[("group", "order-history")],
            ) >= 1.0
    })
    .await;
    assert_eq!(handled(&text, "order-history", "dead_lettered"), 1.0);
    assert_eq!(
        sample(
            &text,
            "tributary_dead_letters_open",
            &[("group", "order-history")]
        ),
        1.0
    );
    assert_eq!(
        handled(&text, "order-history", "ok"),
        CUSTOMERS as f64,
        "the poison message was not counted as handled"
    );
    let text = scrape_until(&serve.base, "the poison key parked", |t| {
        sample(
            t,
            "tributary_dead_letters_parked_keys",
            &[("group", "order-history")],
        ) >= 1.0
    })
    .await;
    assert_eq!(
        sample(
            &text,
            "tributary_dead_letters_parked_keys",
            &[("group", "order-history")]
        ),
        1.0,
        "one key held back by the one letter"
    );
    let oldest = sample(
        &text,
        "tributary_dead_letters_oldest_seconds",
        &[("group", "order-history")],
    );
    assert!(
        (0.0..300.0).contains(&oldest),
        "the letter waits since this test: {oldest}"
    );
}
