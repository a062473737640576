//! `tributary bench append --db postgres://…`: the PostgreSQL event store beside plain
//! single-row `INSERT; COMMIT` transactions on the same server, measured in alternating
//! rounds in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tributary::postgres::{PgConfig, PgDatabase};
use tributary::{Envelope, EventId, EventStore, ExpectedVersion, Payload, StreamId};

use super::report::BenchResult;

const ROUNDS: u64 = 5;

fn payload(bytes: usize) -> Payload {
    Payload::from_value(&json!({ "pad": "x".repeat(bytes.saturating_sub(10)) }))
        .unwrap_or_else(|_| Payload::null())
}

/// Runs the append scenarios on PostgreSQL at `url`.
pub async fn append(
    url: &str,
    scenarios: &[&str],
    events: Option<u64>,
    payload_bytes: usize,
) -> anyhow::Result<()> {
    let schema = format!(
        "bench_{}",
        &EventId::new().as_uuid().simple().to_string()[16..]
    );
    let db = PgDatabase::connect(
        PgConfig::default()
            .with_url(url)
            .with_schema(schema.clone())
            .with_max_connections(16),
    )
    .await
    .context("connecting to PostgreSQL")?;
    let store = tributary::Database::event_store(&db);
    let mut outcome = Ok(());
    for scenario in scenarios {
        let run = match *scenario {
            "one_event_per_txn" => {
                writers(
                    url,
                    &store,
                    scenario,
                    1,
                    1,
                    events.unwrap_or(2_000),
                    payload_bytes,
                )
                .await
            }
            "eight_writers" => {
                writers(
                    url,
                    &store,
                    scenario,
                    8,
                    1,
                    events.unwrap_or(8_000),
                    payload_bytes,
                )
                .await
            }
            _ => {
                writers(
                    url,
                    &store,
                    scenario,
                    1,
                    100,
                    events.unwrap_or(50_000),
                    payload_bytes,
                )
                .await
            }
        };
        if let Err(e) = run {
            outcome = Err(e);
            break;
        }
    }
    db.drop_schema().await?;
    outcome
}

/// `writers` tasks appending `per_txn` events per transaction to streams of their own,
/// alternating with the raw baseline (single-row commits from the same number of connections).
async fn writers(
    url: &str,
    store: &Arc<dyn EventStore>,
    scenario: &str,
    writers: u64,
    per_txn: u64,
    events: u64,
    payload_bytes: usize,
) -> anyhow::Result<()> {
    let data = payload(payload_bytes);
    let per_round = (events / ROUNDS / writers / per_txn).max(1);
    let raw_rows = (events / ROUNDS).clamp(writers, 2_000);
    let (mut ours, mut raw, mut raw_done) = (Duration::ZERO, Duration::ZERO, 0u64);
    let mut latencies = Vec::new();
    for round in 0..ROUNDS {
        let r = tributary::postgres::bench::raw_single_row_commits(
            url,
            raw_rows,
            payload_bytes,
            writers as usize,
        )
        .await?;
        raw += r.elapsed;
        raw_done += r.rows;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..writers {
            let (store, data) = (store.clone(), data.clone());
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                for i in 0..per_round {
                    let stream =
                        StreamId::new(format!("bench-{per_txn}-{writers}-{round}-{w}-{i}"))?;
                    let batch: Vec<_> = (0..per_txn)
                        .map(|_| Envelope::new("bench", "BenchEvent", data.clone()))
                        .collect();
                    let t = Instant::now();
                    store
                        .append(&stream, ExpectedVersion::NoStream, batch)
                        .await?;
                    latencies.push(t.elapsed());
                }
                anyhow::Ok(latencies)
            }));
        }
        for t in tasks {
            latencies.extend(t.await??);
        }
        ours += started.elapsed();
    }
    let total = per_round * writers * per_txn * ROUNDS;
    BenchResult::new("append", scenario, "postgres", total, ours)
        .with_latencies(&mut latencies)
        .against(
            "plain INSERT + COMMIT of one row per transaction, same connections count",
            raw_done as f64 / raw.as_secs_f64(),
        )
        .with_settings(json!({
            "synchronous_commit": "on",
            "writers": writers,
            "events_per_txn": per_txn,
            "payload_bytes": payload_bytes,
            "rounds": ROUNDS,
        }))
        .emit();
    Ok(())
}
