//! `tributary bench append` and `tributary bench read`: the SQLite event store against raw
//! rusqlite loops run in the same process on the same settings.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tributary::sqlite::{SqliteConfig, SqliteDatabase, SqliteEventStore, Synchronous};
use tributary::{
    Envelope, EventStore, ExpectedVersion, Payload, Position, StreamId, StreamVersion,
};

use super::baseline;
use super::report::{BenchResult, peak_rss_mb, reset_peak_rss};

/// Options shared by the event-store benchmarks.
#[derive(Clone, Debug, clap::Args)]
pub struct EventStoreBenchArgs {
    /// Run only this scenario (default: all of the command's scenarios).
    #[arg(long)]
    pub scenario: Option<String>,
    /// Events per scenario (default depends on the scenario).
    #[arg(long)]
    pub events: Option<u64>,
    /// Size of each event's JSON data in bytes.
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// Directory for the database files (default: a fresh temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Run on PostgreSQL at this URL (a fresh schema, dropped afterwards) instead of SQLite.
    #[arg(long)]
    pub db: Option<String>,
    /// SQLite durability: full (fsync every commit, the default) or normal.
    #[arg(long, default_value = "full", value_parser = parse_synchronous)]
    pub synchronous: Synchronous,
}

fn parse_synchronous(s: &str) -> Result<Synchronous, String> {
    match s.to_ascii_lowercase().as_str() {
        "full" => Ok(Synchronous::Full),
        "normal" => Ok(Synchronous::Normal),
        other => Err(format!(
            "unknown synchronous mode {other:?}: use full or normal"
        )),
    }
}

pub const APPEND_SCENARIOS: &[&str] = &[
    "one_event_per_txn",
    "eight_writers",
    "hundred_events_per_txn",
];
pub const READ_SCENARIOS: &[&str] = &["read_stream", "read_all"];

fn pick<'a>(all: &'a [&'a str], chosen: &Option<String>) -> anyhow::Result<Vec<&'a str>> {
    match chosen {
        None => Ok(all.to_vec()),
        Some(s) if all.contains(&s.as_str()) => {
            Ok(vec![all[all.iter().position(|a| a == s).unwrap_or(0)]])
        }
        Some(s) => anyhow::bail!("unknown scenario {s:?}; choose one of {}", all.join(", ")),
    }
}

/// A scratch directory for one scenario, removed afterwards unless the user chose it.
struct Scratch {
    path: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Scratch {
    fn new(args: &EventStoreBenchArgs, scenario: &str) -> anyhow::Result<Self> {
        match &args.dir {
            Some(dir) => {
                let path = dir.join(scenario);
                if path.exists() {
                    std::fs::remove_dir_all(&path)?;
                }
                std::fs::create_dir_all(&path)?;
                Ok(Self { path, _temp: None })
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("tributary-bench-")
                    .tempdir()?;
                Ok(Self {
                    path: temp.path().to_owned(),
                    _temp: Some(temp),
                })
            }
        }
    }

    fn store(
        &self,
        synchronous: Synchronous,
    ) -> anyhow::Result<(SqliteDatabase, Arc<dyn EventStore>)> {
        let db = SqliteDatabase::open(
            self.path.join("events.db"),
            SqliteConfig::default().with_synchronous(synchronous),
        )?;
        Ok((db.clone(), Arc::new(SqliteEventStore::new(db))))
    }
}

fn payload(bytes: usize) -> Payload {
    // {"pad":"xxx…"} is 10 bytes of JSON around the padding.
    let pad = "x".repeat(bytes.saturating_sub(10));
    Payload::from_value(&json!({ "pad": pad })).unwrap_or_else(|_| Payload::null())
}

fn event(data: &Payload) -> Envelope {
    Envelope::new("bench", "BenchEvent", data.clone()).with_aggregate_type("Bench")
}

fn settings(args: &EventStoreBenchArgs, events_per_txn: u64, writers: u64) -> serde_json::Value {
    json!({
        "synchronous": format!("{:?}", args.synchronous).to_uppercase(),
        "journal_mode": "WAL",
        "payload_bytes": args.payload_bytes,
        "events_per_txn": events_per_txn,
        "writers": writers,
    })
}

pub async fn append(args: EventStoreBenchArgs) -> anyhow::Result<()> {
    if let Some(url) = &args.db {
        let scenarios = pick(APPEND_SCENARIOS, &args.scenario)?;
        return super::postgres::append(url, &scenarios, args.events, args.payload_bytes).await;
    }
    for scenario in pick(APPEND_SCENARIOS, &args.scenario)? {
        match scenario {
            "one_event_per_txn" => writers_scenario(&args, scenario, 1, 3_000).await?,
            "eight_writers" => writers_scenario(&args, scenario, 8, 16_000).await?,
            _ => hundred_per_txn(&args).await?,
        }
    }
    Ok(())
}

pub async fn read(args: EventStoreBenchArgs) -> anyhow::Result<()> {
    for scenario in pick(READ_SCENARIOS, &args.scenario)? {
        match scenario {
            "read_stream" => read_stream(&args).await?,
            _ => read_all(&args).await?,
        }
    }
    Ok(())
}

/// Rounds the measured work is split into, alternating with the baseline, so that a noisy
/// neighbour on the shared machine hits both sides alike.
const ROUNDS: u64 = 5;

/// `writers` concurrent tasks, each appending one event per transaction to its own streams.
async fn writers_scenario(
    args: &EventStoreBenchArgs,
    scenario: &str,
    writers: u64,
    default_events: u64,
) -> anyhow::Result<()> {
    let events = args.events.unwrap_or(default_events).max(writers * ROUNDS);
    let scratch = Scratch::new(args, scenario)?;
    let (db, store) = scratch.store(args.synchronous)?;
    let data = payload(args.payload_bytes);
    let per_writer = events / writers / ROUNDS;
    let raw_rows = (events / ROUNDS).min(1_000);
    let (mut raw_time, mut ours_time) = (Duration::ZERO, Duration::ZERO);
    let mut latencies = Vec::new();
    let mut raw = baseline::RawTable::open(
        &scratch.path.join("raw.db"),
        args.synchronous,
        args.payload_bytes,
    )?;
    for round in 0..ROUNDS {
        raw_time += raw.insert(raw_rows, 1)?;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..writers {
            let store = store.clone();
            let data = data.clone();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_writer as usize);
                for i in 0..per_writer {
                    let stream =
                        StreamId::new(format!("bench-{w}-{}", (round * per_writer + i) % 100))?;
                    let t = Instant::now();
                    store
                        .append(&stream, ExpectedVersion::Any, vec![event(&data)])
                        .await?;
                    latencies.push(t.elapsed());
                }
                anyhow::Ok(latencies)
            }));
        }
        for t in tasks {
            latencies.extend(t.await.context("writer task")??);
        }
        ours_time += started.elapsed();
    }
    let raw_rate = (raw_rows * ROUNDS) as f64 / raw_time.as_secs_f64();
    let stats = db.writer_stats();
    let mut settings = settings(args, 1, writers);
    settings["units_per_commit"] =
        json!((stats.units as f64 / stats.commits.max(1) as f64 * 100.0).round() / 100.0);
    settings["rounds"] = json!(ROUNDS);
    BenchResult::new(
        "append",
        scenario,
        "sqlite",
        per_writer * writers * ROUNDS,
        ours_time,
    )
    .with_latencies(&mut latencies)
    .against("rusqlite single-row insert per transaction", raw_rate)
    .with_settings(settings)
    .emit();
    Ok(())
}

/// Appends `events` events, `per_txn` per append, to one stream or to a new stream per append
/// (named after `tag` so repeated calls do not collide).
async fn fill(
    store: &Arc<dyn EventStore>,
    events: u64,
    per_txn: u64,
    data: &Payload,
    one_stream: bool,
    tag: u64,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut written = 0;
    let mut batch_no = 0u64;
    let single = StreamId::new("bench-single")?;
    while written < events {
        let n = per_txn.min(events - written);
        let batch: Vec<_> = (0..n).map(|_| event(data)).collect();
        if one_stream {
            let expected = ExpectedVersion::Exact(StreamVersion::new(written));
            store.append(&single, expected, batch).await?;
        } else {
            let stream = StreamId::new(format!("bench-batch-{tag}-{batch_no}"))?;
            store
                .append(&stream, ExpectedVersion::NoStream, batch)
                .await?;
        }
        written += n;
        batch_no += 1;
    }
    Ok(started.elapsed())
}

async fn hundred_per_txn(args: &EventStoreBenchArgs) -> anyhow::Result<()> {
    let events = args.events.unwrap_or(200_000).max(100 * ROUNDS);
    let per_round = events / ROUNDS / 100 * 100;
    let scratch = Scratch::new(args, "hundred_events_per_txn")?;
    let mut bare = baseline::RawTable::open(
        &scratch.path.join("raw.db"),
        args.synchronous,
        args.payload_bytes,
    )?;
    let mut same_schema = baseline::RawEventsTable::open(
        &scratch.path.join("raw-events.db"),
        args.synchronous,
        args.payload_bytes,
    )?;
    let (_, store) = scratch.store(args.synchronous)?;
    let data = payload(args.payload_bytes);
    let (mut bare_time, mut schema_time, mut ours_time) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for round in 0..ROUNDS {
        bare_time += bare.insert(per_round, 100)?;
        schema_time += same_schema.insert(per_round, 100)?;
        ours_time += fill(&store, per_round, 100, &data, false, round).await?;
    }
    let total = per_round * ROUNDS;
    let mut settings = settings(args, 100, 1);
    settings["rounds"] = json!(ROUNDS);
    BenchResult::new(
        "append",
        "hundred_events_per_txn",
        "sqlite",
        total,
        ours_time,
    )
    .against(
        "rusqlite 100-row insert per transaction",
        total as f64 / bare_time.as_secs_f64(),
    )
    .with_settings(settings.clone())
    .emit();
    BenchResult::new(
        "append",
        "hundred_events_per_txn",
        "sqlite",
        total,
        ours_time,
    )
    .against(
        "rusqlite 100-row insert per transaction into the events schema",
        total as f64 / schema_time.as_secs_f64(),
    )
    .with_settings(settings)
    .emit();
    Ok(())
}

/// What both read benchmarks start from: `events` rows in a bare table (the baseline, read at
/// once: rows per second) and the same count in a fresh store, on one stream or many.
struct ReadSetup {
    _scratch: Scratch,
    store: Arc<dyn EventStore>,
    baseline_rate: f64,
}

async fn read_setup(
    args: &EventStoreBenchArgs,
    name: &str,
    events: u64,
    one_stream: bool,
) -> anyhow::Result<ReadSetup> {
    let scratch = Scratch::new(args, name)?;
    let raw_path = scratch.path.join("raw.db");
    baseline::insert_loop(
        &raw_path,
        args.synchronous,
        events,
        1000,
        args.payload_bytes,
    )?;
    let (raw_rows, raw) = baseline::read_loop(&raw_path)?;
    let (_, store) = scratch.store(args.synchronous)?;
    fill(
        &store,
        events,
        1000,
        &payload(args.payload_bytes),
        one_stream,
        0,
    )
    .await?;
    Ok(ReadSetup {
        _scratch: scratch,
        store,
        baseline_rate: raw_rows as f64 / raw.as_secs_f64(),
    })
}

const READ_BASELINE: &str = "rusqlite select of a bare table";

async fn read_stream(args: &EventStoreBenchArgs) -> anyhow::Result<()> {
    let events = args.events.unwrap_or(200_000);
    let setup = read_setup(args, "read_stream", events, true).await?;
    let stream = StreamId::new("bench-single")?;
    let started = Instant::now();
    let mut next = StreamVersion::new(1);
    let mut read = 0u64;
    loop {
        let page = setup.store.read_stream(&stream, next, 4096).await?;
        let Some(last) = page.last() else { break };
        next = last.version.next();
        read += page.len() as u64;
    }
    let elapsed = started.elapsed();
    anyhow::ensure!(read == events, "read {read} of {events} events");
    BenchResult::new("read", "read_stream", "sqlite", read, elapsed)
        .against(READ_BASELINE, setup.baseline_rate)
        .with_settings(json!({"payload_bytes": args.payload_bytes, "page": 4096}))
        .emit();
    Ok(())
}

async fn read_all(args: &EventStoreBenchArgs) -> anyhow::Result<()> {
    let events = args.events.unwrap_or(1_000_000);
    let setup = read_setup(args, "read_all", events, false).await?;
    reset_peak_rss();
    let started = Instant::now();
    let mut next = Position::START;
    let mut read = 0u64;
    loop {
        let page = setup.store.read_all(next, 4096).await?;
        let Some(last) = page.last() else { break };
        next = last.position.next();
        read += page.len() as u64;
    }
    let elapsed = started.elapsed();
    anyhow::ensure!(read == events, "read {read} of {events} events");
    BenchResult::new("read", "read_all", "sqlite", read, elapsed)
        .against(READ_BASELINE, setup.baseline_rate)
        .with_peak_rss(peak_rss_mb())
        .with_settings(json!({"payload_bytes": args.payload_bytes, "page": 4096}))
        .emit();
    Ok(())
}
