//! The demo's measurement of reading your own writes through HTTP: write-then-read pairs
//! against the history view, first without a consistency token (counting the reads that miss
//! the write or its saga's decision), then with one: none may answer without them, and a read
//! that the view could not serve within its bound is an honest `503`, counted apart.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::http::consistency::HEADER;
use crate::http::{self, AppState};
use crate::system::Running;

/// What the pairs measured.
#[derive(Clone, Debug, Default)]
pub struct ReadYourWrites {
    pub pairs: usize,
    /// Reads without a token that did not show the order decided.
    pub stale_without_token: usize,
    /// Reads with a token answered with data that did not show it (must be 0).
    pub stale_with_token: usize,
    /// Reads with a token answered `503`: the view had not applied the writes within the
    /// read's bound (the token is honoured; the answer is "not yet").
    pub not_yet_with_token: usize,
    /// Write sent → consistent read answered, with tokens, in ms.
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Serves the running system's API on a free loopback port and runs `pairs` pairs of each
/// kind, one at a time, for the customers in `customers` (round robin).
///
/// # Errors
/// When the server cannot start or a request fails.
pub async fn measure(
    running: &Running,
    state: AppState,
    customers: &[String],
    pairs: usize,
) -> anyhow::Result<ReadYourWrites> {
    if customers.is_empty() || pairs == 0 {
        return Ok(ReadYourWrites::default());
    }
    let listener = tributary_http::bind("127.0.0.1:0".parse()?).await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(listener, http::router(state), async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let mut result = ReadYourWrites {
        pairs,
        ..ReadYourWrites::default()
    };
    let mut latencies = Vec::with_capacity(pairs);
    for i in 0..pairs * 2 {
        let with_token = i >= pairs;
        let customer = &customers[i % customers.len()];
        let began = Instant::now();
        let created: Value = client
            .post(format!("{base}/orders"))
            .json(&json!({ "customer_id": customer, "order_total": 100 }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let order_id = created["order_id"].as_str().unwrap_or_default().to_owned();
        let token = created["consistency_token"].as_str().unwrap_or_default();
        let history = format!("{base}/customers/{customer}/orderhistory");
        let read = if with_token {
            // The longest wait a read may ask for: a loaded machine can take seconds.
            client
                .get(format!("{history}?wait_ms=10000"))
                .header(HEADER, token)
        } else {
            client.get(history)
        };
        let response = read.send().await?;
        if with_token && response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
            result.not_yet_with_token += 1;
            continue;
        }
        let fresh = response.status().is_success() && {
            let history: Value = response.json().await?;
            let state = history["orders"]
                .as_array()
                .and_then(|orders| orders.iter().find(|o| o["order_id"] == order_id.as_str()))
                .and_then(|o| o["state"].as_str());
            matches!(state, Some("APPROVED" | "REJECTED"))
        };
        if with_token {
            latencies.push(began.elapsed());
            result.stale_with_token += usize::from(!fresh);
        } else {
            result.stale_without_token += usize::from(!fresh);
        }
    }
    let _ = stop.send(());
    let _ = server.await;
    let _ = running;
    latencies.sort_unstable();
    let pct = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1)
            .map_or(0.0, |d: &Duration| d.as_secs_f64() * 1000.0)
    };
    result.p50_ms = pct(0.5);
    result.p99_ms = pct(0.99);
    Ok(result)
}
