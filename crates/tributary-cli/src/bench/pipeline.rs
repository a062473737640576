//! `tributary bench pipeline`: outbox write → relay → broker → consumer with inbox, on the
//! embedded default (three SQLite files in one process) or, with `--db postgres://…
//! --broker nats://…`, on PostgreSQL (fresh schemas) and NATS JetStream (fresh streams),
//! removed afterwards.
//!
//! - `sustained`: producers write as fast as they can; events/s end to end, and each stage's
//!   own rate (committed to the outbox, published by the relay, handled by the consumer).
//! - `fixed_rate`: producers offer `--rate` events/s; latency from the producer's commit to
//!   the consumer's commit, p50/p99/max.
//! - `relay_restart`: a relay child process is killed with SIGKILL and started again; time
//!   from the restart to its first publish.
//! - `read_your_writes`: like `fixed_rate`, but each writer then waits on the consumer's view
//!   for its unit's consistency token; the wait (commit returned → `wait_for` returned) beside
//!   commit → handled of the same run. A token wait should cost little more than the
//!   pipeline's own latency.
//! - `token_check`: how many single-entry tokens an up-to-date view checks per second (the
//!   cost a waiting read adds when nothing is pending).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tributary::sqlite::{
    SqliteBroker, SqliteBrokerConfig, SqliteConfig, SqliteDatabase, Synchronous,
};
use tributary::{
    Broker, Database, Envelope, Error, EventId, GroupName, Payload, Topic, UnitOfWorkExt,
};
use tributary::{
    CancellationToken, ConsistencyToken, Consumer, ConsumerConfig, Dispatch, HandlerError, Relay,
    RelayConfig, RelayStats, View,
};

use super::report::{BenchResult, peak_rss_mb};
use crate::urls::named_database;

/// Options of `tributary bench pipeline`.
#[derive(Clone, Debug, clap::Args)]
pub struct PipelineBenchArgs {
    /// Run only this scenario: sustained, fixed_rate, relay_restart, read_your_writes or
    /// token_check.
    #[arg(long)]
    pub scenario: Option<String>,
    /// Events for `sustained`.
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Offered events per second for `fixed_rate`.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Seconds of offered load for `fixed_rate`.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Concurrent producer tasks.
    #[arg(long, default_value_t = 8)]
    pub producers: u64,
    /// Events each producer transaction publishes.
    #[arg(long, default_value_t = 1)]
    pub events_per_txn: u64,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 8)]
    pub partitions: u32,
    /// Size of each event's JSON data in bytes.
    #[arg(long, default_value_t = 100)]
    pub payload_bytes: usize,
    /// Distributed: a PostgreSQL URL for the source and sink databases.
    #[arg(long)]
    pub db: Option<String>,
    /// Distributed: a NATS URL.
    #[arg(long)]
    pub broker: Option<String>,
    /// Messages per consumer transaction (default: the database's choice — 256 on SQLite,
    /// 1 on PostgreSQL). The benchmark's handler only touches its own key's row, so batching
    /// is safe here on PostgreSQL too.
    #[arg(long)]
    pub messages_per_unit: Option<usize>,
    /// Directory for the database files (default: a fresh temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Metrics recording into a Prometheus recorder: off (no recorder, the default), on, or
    /// ab — `sustained` run `--rounds` times each with recording off and on, alternating, in
    /// this process, then the ratio of the medians (on / off).
    #[arg(long, default_value = "off")]
    pub metrics: String,
    /// Runs of each side for `--metrics ab`.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
}

const SCENARIOS: &[&str] = &[
    "sustained",
    "fixed_rate",
    "relay_restart",
    "read_your_writes",
    "token_check",
];

pub async fn run(args: PipelineBenchArgs) -> anyhow::Result<()> {
    match args.metrics.as_str() {
        "off" => {}
        "on" => {
            crate::metrics_http::install()?;
        }
        "ab" => return metrics_ab(&args).await,
        other => anyhow::bail!("--metrics {other:?}: use off, on or ab"),
    }
    let chosen: Vec<&str> = match &args.scenario {
        None => SCENARIOS.to_vec(),
        Some(s) if SCENARIOS.contains(&s.as_str()) => vec![s.as_str()],
        Some(s) => anyhow::bail!(
            "unknown scenario {s:?}; choose one of {}",
            SCENARIOS.join(", ")
        ),
    };
    for scenario in chosen {
        let temp = tempfile::Builder::new()
            .prefix("tributary-pipeline-")
            .tempdir()?;
        let dir = match &args.dir {
            Some(d) => {
                let d = d.join(scenario);
                if d.exists() {
                    std::fs::remove_dir_all(&d)?;
                }
                std::fs::create_dir_all(&d)?;
                d
            }
            None => temp.path().to_owned(),
        };
        let backend = Backend::open(&args, &dir).await?;
        let outcome = match scenario {
            "sustained" => sustained(&args, &backend).await.map(|r| r.emit()),
            "fixed_rate" => fixed_rate(&args, &backend).await,
            "read_your_writes" => read_your_writes(&args, &backend).await,
            "token_check" => token_check(&args, &backend).await,
            _ => relay_restart(&args, &backend).await,
        };
        backend.remove().await;
        outcome?;
    }
    Ok(())
}

/// `--metrics ab`: `sustained` with recording off and on, alternating (off first in even
/// rounds, on first in odd ones) so that a drift of the machine during the run falls on both.
async fn metrics_ab(args: &PipelineBenchArgs) -> anyhow::Result<()> {
    crate::metrics_http::install()?;
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for round in 0..args.rounds.max(1) {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for recording in order {
            crate::metrics_http::set_recording(recording);
            let temp = tempfile::Builder::new()
                .prefix("tributary-pipeline-")
                .tempdir()?;
            let backend = Backend::open(args, temp.path()).await?;
            let outcome = sustained(args, &backend).await;
            backend.remove().await;
            let mut result = outcome?;
            result.settings["metrics"] = json!(if recording { "on" } else { "off" });
            result.settings["round"] = json!(round);
            if recording {
                on.push(result.events_per_sec);
            } else {
                off.push(result.events_per_sec);
            }
            result.emit();
        }
    }
    crate::metrics_http::set_recording(true);
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (off_median, on_median) = (median(&mut off), median(&mut on));
    let events = args.events / args.producers.max(1) * args.producers.max(1);
    let mut summary = BenchResult::new(
        "pipeline",
        "sustained_metrics_ab",
        if args.db.is_some() { "postgres+nats" } else { "embedded" },
        events,
        Duration::from_secs_f64(events as f64 / on_median.max(1e-9)),
    )
    .against(
        "the same sustained pipeline with metrics recording off (median of the rounds, same process)",
        off_median,
    );
    summary.settings = json!({
        "rounds": args.rounds.max(1),
        "events_per_sec_on": on,
        "events_per_sec_off": off,
        "recorder": "metrics-exporter-prometheus, histograms with fixed buckets",
    });
    summary.emit();
    Ok(())
}

/// Where a pipeline runs.
struct Backend {
    name: &'static str,
    source: Arc<dyn Database>,
    sink: Arc<dyn Database>,
    broker: Arc<dyn Broker>,
    /// The sink's writer, on SQLite, for its units-per-commit figure.
    sqlite_sink: Option<SqliteDatabase>,
    /// Arguments telling a `fault-test` child where this is.
    worker_args: Vec<String>,
    cleanup: Option<Cleanup>,
}

/// Schemas and streams of a distributed run, removed at the end.
struct Cleanup {
    pg: String,
    schema_prefix: String,
    nats: String,
    stream_prefix: String,
}

impl Backend {
    async fn open(args: &PipelineBenchArgs, dir: &Path) -> anyhow::Result<Self> {
        match (&args.db, &args.broker) {
            (None, None) => {
                let sink = SqliteDatabase::open(dir.join("sink.db"), sqlite())?;
                Ok(Self {
                    name: "embedded",
                    source: Arc::new(SqliteDatabase::open(dir.join("source.db"), sqlite())?),
                    sink: Arc::new(sink.clone()),
                    broker: Arc::new(SqliteBroker::open(
                        dir.join("broker.db"),
                        SqliteBrokerConfig::default().with_sqlite(sqlite()),
                    )?),
                    sqlite_sink: Some(sink),
                    worker_args: vec!["--dir".into(), dir.display().to_string()],
                    cleanup: None,
                })
            }
            (Some(pg), Some(nats)) => {
                let run = EventId::new().as_uuid().simple().to_string()[20..].to_owned();
                let cleanup = Cleanup {
                    pg: pg.clone(),
                    schema_prefix: format!("bench_{run}_"),
                    nats: nats.clone(),
                    stream_prefix: format!("BENCH{}", run.to_uppercase()),
                };
                let db_url = format!("{pg}?schema_prefix={}", cleanup.schema_prefix);
                let broker_url = format!("{nats}?prefix={}", cleanup.stream_prefix);
                Ok(Self {
                    name: "postgres+nats",
                    source: named_database(&db_url, "source")?.connect().await?,
                    sink: named_database(&db_url, "sink")?.connect().await?,
                    broker: tributary::connect_broker(&broker_url).await?,
                    sqlite_sink: None,
                    worker_args: vec!["--db".into(), db_url, "--broker".into(), broker_url],
                    cleanup: Some(cleanup),
                })
            }
            _ => anyhow::bail!("give both --db postgres://… and --broker nats://…, or neither"),
        }
    }

    async fn remove(self) {
        let Some(c) = self.cleanup else { return };
        for name in ["source", "sink"] {
            let config = tributary::postgres::PgConfig::default()
                .with_url(c.pg.clone())
                .with_schema(format!("{}{name}", c.schema_prefix));
            if let Ok(db) = tributary::postgres::PgDatabase::connect(config).await {
                let _ = db.drop_schema().await;
            }
        }
        let config = tributary::nats::NatsBrokerConfig::default()
            .with_url(c.nats.clone())
            .with_stream_prefix(c.stream_prefix.clone());
        if let Ok(nats) = tributary::nats::NatsBroker::connect(config).await {
            for topic in ["pipeline", "ledger"] {
                if let Ok(t) = Topic::new(topic) {
                    let _ = nats.delete_topic(&t).await;
                }
            }
        }
    }
}

/// The three databases and the running relay and consumer.
struct Pipeline {
    source: Arc<dyn Database>,
    relay_stats: Arc<RelayStats>,
    handled: Arc<AtomicU64>,
    handled_at: Arc<Mutex<HashMap<EventId, Instant>>>,
    /// The consumer group's view, for consistency-token waits.
    view: View,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn sqlite() -> SqliteConfig {
    SqliteConfig::default().with_synchronous(Synchronous::Full)
}

impl Pipeline {
    async fn start(
        backend: &Backend,
        args: &PipelineBenchArgs,
        track_latency: bool,
    ) -> anyhow::Result<Self> {
        let (source, sink, broker) = (
            backend.source.clone(),
            backend.sink.clone(),
            backend.broker.clone(),
        );
        let partitions = args.partitions;
        let topic = Topic::new("pipeline")?;
        broker.ensure_topic(&topic, partitions).await?;
        let shutdown = CancellationToken::new();
        let relay = Relay::new(
            source.outbox_source(),
            broker.clone(),
            RelayConfig::default(),
        );
        let relay_stats = relay.stats();
        let s = shutdown.clone();
        let mut tasks = vec![tokio::spawn(async move {
            if let Err(e) = relay.run(s).await {
                eprintln!("relay stopped: {e}");
            }
        })];

        let handled = Arc::new(AtomicU64::new(0));
        let pending: Arc<Mutex<Vec<EventId>>> = Arc::default();
        let handled_at: Arc<Mutex<HashMap<EventId, Instant>>> = Arc::default();
        let (h, p) = (handled.clone(), pending.clone());
        // A small realistic handler: a per-key counter document, with the inbox entry.
        let handler = Dispatch::new().on("Measured", move |_: serde_json::Value, e, unit| {
            let (h, p) = (h.clone(), p.clone());
            Box::pin(async move {
                let key = e.subject.as_deref().unwrap_or("none");
                let n: u64 = unit.get_as("counters", key).await?.unwrap_or(0);
                unit.put_as("counters", key, &(n + 1)).await?;
                h.fetch_add(1, Ordering::Relaxed);
                if track_latency {
                    p.lock().unwrap_or_else(|e| e.into_inner()).push(e.id);
                }
                Ok::<_, HandlerError>(())
            })
        });
        let config = ConsumerConfig {
            messages_per_unit: args.messages_per_unit,
            ..ConsumerConfig::default()
        };
        let consumer = Consumer::new(
            GroupName::new("pipeline-bench")?,
            vec![topic],
            sink.clone(),
            broker,
            Arc::new(handler),
            config,
        )?;
        let view = consumer.view();
        let s = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = consumer.run(s).await {
                eprintln!("consumer stopped: {e}");
            }
        }));
        if track_latency {
            // Handled = the consumer's transaction committed: stamp what its handlers saw
            // when the sink database reports the commit.
            let mut commits = sink.commits();
            let (p, at, s) = (pending.clone(), handled_at.clone(), shutdown.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = commits.changed() => {}
                        _ = s.cancelled() => return,
                    }
                    let now = Instant::now();
                    let ids: Vec<_> =
                        std::mem::take(&mut *p.lock().unwrap_or_else(|e| e.into_inner()));
                    let mut at = at.lock().unwrap_or_else(|e| e.into_inner());
                    at.extend(ids.into_iter().map(|id| (id, now)));
                }
            }));
        }
        Ok(Self {
            source,
            relay_stats,
            handled,
            handled_at,
            view,
            shutdown,
            tasks,
        })
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

fn event(payload: &Payload, key: u64) -> Envelope {
    Envelope::new("bench", "Measured", payload.clone()).with_subject(format!("key-{key}"))
}

fn payload(bytes: usize) -> Payload {
    Payload::from_value(&json!({ "pad": "x".repeat(bytes.saturating_sub(10)) }))
        .unwrap_or_else(|_| Payload::null())
}

/// Publishes `events` events in units of `per_txn`; returns the commit times of the ids.
async fn produce(
    source: Arc<dyn Database>,
    topic: Topic,
    events: u64,
    per_txn: u64,
    data: Payload,
    first_key: u64,
) -> anyhow::Result<Vec<(EventId, Instant)>> {
    let mut committed = Vec::with_capacity(events as usize);
    let mut done = 0;
    while done < events {
        let n = per_txn.min(events - done);
        let batch: Vec<Envelope> = (0..n)
            .map(|i| event(&data, (first_key + done + i) % 1000))
            .collect();
        let ids: Vec<EventId> = batch.iter().map(|e| e.id).collect();
        let t = topic.clone();
        source
            .transact(move |unit| {
                Box::pin(async move {
                    for e in batch {
                        unit.publish(&t, e).await?;
                    }
                    Ok::<_, Error>(())
                })
            })
            .await?;
        let now = Instant::now();
        committed.extend(ids.into_iter().map(|id| (id, now)));
        done += n;
    }
    Ok(committed)
}

async fn sustained(args: &PipelineBenchArgs, backend: &Backend) -> anyhow::Result<BenchResult> {
    let pipeline = Pipeline::start(backend, args, false).await?;
    let topic = Topic::new("pipeline")?;
    let data = payload(args.payload_bytes);
    let per_producer = args.events / args.producers.max(1);
    let total = per_producer * args.producers.max(1);
    let started = Instant::now();
    let mut producers = Vec::new();
    for p in 0..args.producers.max(1) {
        producers.push(tokio::spawn(produce(
            pipeline.source.clone(),
            topic.clone(),
            per_producer,
            args.events_per_txn,
            data.clone(),
            p * per_producer,
        )));
    }
    let mut produced_by = started;
    for p in producers {
        p.await??;
        produced_by = Instant::now();
    }
    let produce_time = produced_by - started;
    let mut published_at = None;
    while pipeline.handled.load(Ordering::Relaxed) < total {
        if published_at.is_none() && pipeline.relay_stats.published.load(Ordering::Relaxed) >= total
        {
            published_at = Some(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("the pipeline did not finish in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let end_to_end = started.elapsed();
    let relay_time = published_at.unwrap_or(end_to_end);
    let settings = json!({
        "synchronous": "FULL",
        "producers": args.producers,
        "events_per_txn": args.events_per_txn,
        "partitions": args.partitions,
        "payload_bytes": args.payload_bytes,
        "relay_batch": RelayConfig::default().batch_size,
        "consumer_batch": ConsumerConfig::default().batch_size,
        "handler": "per-key counter document + inbox",
        "source_units_per_commit": 0,
    });
    let mut settings = settings;
    settings["stage_events_per_sec"] = json!({
        "committed_to_outbox": (total as f64 / produce_time.as_secs_f64()).round(),
        "published_by_relay": (total as f64 / relay_time.as_secs_f64()).round(),
        "handled_by_consumer": (total as f64 / end_to_end.as_secs_f64()).round(),
    });
    if let Some(sink) = &backend.sqlite_sink {
        let s = sink.writer_stats();
        settings["sink_units_per_commit"] =
            json!((s.units as f64 / s.commits.max(1) as f64 * 10.0).round() / 10.0);
    }
    settings["messages_per_unit"] = json!(
        args.messages_per_unit
            .unwrap_or_else(|| backend.sink.messages_per_unit())
    );
    settings
        .as_object_mut()
        .map(|o| o.remove("source_units_per_commit"));
    if backend.name == "embedded" {
        settings["synchronous"] = json!("FULL");
    } else {
        settings["synchronous"] =
            json!("PostgreSQL synchronous_commit=on; NATS 2.9 file storage, no fsync");
    }
    let mut result = BenchResult::new("pipeline", "sustained", backend.name, total, end_to_end)
        .with_peak_rss(peak_rss_mb())
        .with_settings(settings);
    pipeline.stop().await;
    if let Some(c) = &backend.cleanup {
        // The raw limits from the same run, measured after the pipeline stopped: PostgreSQL
        // committing single-row inserts from as many clients as there were producers, and
        // JetStream taking plain publishes with acks.
        let producers_rate = total as f64 / produce_time.as_secs_f64();
        let raw_insert = tributary::postgres::bench::raw_single_row_commits(
            &c.pg,
            total.min(20_000),
            args.payload_bytes,
            args.producers.max(1) as usize,
        )
        .await?
        .rows_per_sec;
        let config = tributary::nats::NatsBrokerConfig::default()
            .with_url(c.nats.clone())
            .with_stream_prefix(c.stream_prefix.clone());
        let raw_publish = tributary::nats::bench::raw_publish_throughput(
            &config,
            total.min(100_000) as usize,
            args.payload_bytes,
        )
        .await?;
        let ratio = |x: f64| (x / raw_insert.max(1e-9) * 1000.0).round() / 1000.0;
        let mut settings = result.settings.clone();
        settings["raw_single_row_inserts_per_sec"] = json!(raw_insert.round());
        settings["producers_vs_raw_inserts"] = json!(ratio(producers_rate));
        settings["raw_jetstream_publishes_per_sec"] = json!(raw_publish.round());
        result = result.with_settings(settings).against(
            "PostgreSQL BEGIN; INSERT one row; COMMIT from as many clients as producers, same run",
            raw_insert,
        );
    }
    Ok(result)
}

async fn fixed_rate(args: &PipelineBenchArgs, backend: &Backend) -> anyhow::Result<()> {
    let pipeline = Pipeline::start(backend, args, true).await?;
    let topic = Topic::new("pipeline")?;
    let data = payload(args.payload_bytes);
    let total = args.rate * args.seconds;
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let committed: Arc<Mutex<Vec<(EventId, Instant)>>> = Arc::default();
    let started = Instant::now();
    let mut units = tokio::task::JoinSet::new();
    // Open loop: each event is offered at its scheduled time, whether or not earlier ones
    // are done (a closed loop would hide queueing delay).
    for i in 0..total {
        let due = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let (source, t, e, c) = (
            pipeline.source.clone(),
            topic.clone(),
            event(&data, i % 1000),
            committed.clone(),
        );
        units.spawn(async move {
            let id = e.id;
            source
                .transact(move |unit| Box::pin(async move { unit.publish(&t, e).await }))
                .await?;
            c.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((id, Instant::now()));
            anyhow::Ok(())
        });
        while let Some(done) = units.try_join_next() {
            done??;
        }
    }
    while let Some(done) = units.join_next().await {
        done??;
    }
    let offered_for = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    while pipeline
        .handled_at
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .len()
        < total as usize
    {
        anyhow::ensure!(Instant::now() < deadline, "the pipeline did not catch up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let handled_at = pipeline
        .handled_at
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut latencies: Vec<Duration> = committed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(|(id, at)| handled_at.get(id).map(|h| h.saturating_duration_since(*at)))
        .collect();
    let mut result = BenchResult::new("pipeline", "fixed_rate", backend.name, total, offered_for)
        .with_latencies(&mut latencies)
        .with_settings(json!({
            "synchronous": "FULL",
            "partitions": args.partitions,
            "payload_bytes": args.payload_bytes,
            "events_per_txn": 1,
            "latency": "producer commit returned -> consumer transaction committed",
        }));
    result.offered_rate = Some(args.rate as f64);
    result.emit();
    pipeline.stop().await;
    Ok(())
}

async fn read_your_writes(args: &PipelineBenchArgs, backend: &Backend) -> anyhow::Result<()> {
    let pipeline = Pipeline::start(backend, args, true).await?;
    let topic = Topic::new("pipeline")?;
    let data = payload(args.payload_bytes);
    let total = args.rate * args.seconds;
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    // (event, commit returned, wait returned)
    let samples: Arc<Mutex<Vec<(EventId, Instant, Instant)>>> = Arc::default();
    let started = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    // Open loop, as in `fixed_rate`: a writer is started at its scheduled time.
    for i in 0..total {
        let due = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        let (source, view, t, e, out) = (
            pipeline.source.clone(),
            pipeline.view.clone(),
            topic.clone(),
            event(&data, i % 1000),
            samples.clone(),
        );
        writers.spawn(async move {
            let id = e.id;
            let token = source
                .transact(move |unit| {
                    Box::pin(async move {
                        unit.publish(&t, e).await?;
                        Ok::<_, Error>(unit.written())
                    })
                })
                .await?;
            let committed = Instant::now();
            view.wait_for(&token, Duration::from_secs(60)).await?;
            out.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((id, committed, Instant::now()));
            anyhow::Ok(())
        });
        while let Some(done) = writers.try_join_next() {
            done??;
        }
    }
    while let Some(done) = writers.join_next().await {
        done??;
    }
    let offered_for = started.elapsed();
    let handled_at = pipeline
        .handled_at
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|e| e.into_inner()));
    let mut waits: Vec<Duration> = samples.iter().map(|(_, c, w)| *w - *c).collect();
    let mut handled: Vec<Duration> = samples
        .iter()
        .filter_map(|(id, c, _)| handled_at.get(id).map(|h| h.saturating_duration_since(*c)))
        .collect();
    let handled_p99 = BenchResult::new("", "", "", 0, Duration::ZERO)
        .with_latencies(&mut handled)
        .p99_ms;
    let mut result = BenchResult::new(
        "pipeline",
        "read_your_writes",
        backend.name,
        total,
        offered_for,
    )
    .with_latencies(&mut waits)
    .with_settings(json!({
        "partitions": args.partitions,
        "payload_bytes": args.payload_bytes,
        "events_per_txn": 1,
        "latency": "producer commit returned -> View::wait_for(its token) returned",
        "commit_to_handled_p99_ms": handled_p99,
    }));
    if let (Some(wait), Some(handled)) = (result.p99_ms, handled_p99) {
        result.settings["wait_p99_vs_handled_p99"] =
            json!((wait / handled.max(1e-9) * 100.0).round() / 100.0);
    }
    result.offered_rate = Some(args.rate as f64);
    result.emit();
    pipeline.stop().await;
    Ok(())
}

async fn token_check(args: &PipelineBenchArgs, backend: &Backend) -> anyhow::Result<()> {
    let pipeline = Pipeline::start(backend, args, false).await?;
    let topic = Topic::new("pipeline")?;
    let data = payload(args.payload_bytes);
    // One token per key, each for a write the view has applied.
    let keys = 1000u64;
    let mut tokens = Vec::new();
    for k in 0..keys {
        let (t, e) = (topic.clone(), event(&data, k));
        let token: ConsistencyToken = pipeline
            .source
            .transact(move |unit| {
                Box::pin(async move {
                    unit.publish(&t, e).await?;
                    Ok::<_, Error>(unit.written())
                })
            })
            .await?;
        tokens.push(token);
    }
    for token in &tokens {
        pipeline
            .view
            .wait_for(token, Duration::from_secs(60))
            .await?;
    }
    let checks = args.events;
    let started = Instant::now();
    for i in 0..checks {
        let token = &tokens[(i % keys) as usize];
        pipeline
            .view
            .wait_for(token, Duration::from_secs(1))
            .await?;
    }
    let elapsed = started.elapsed();
    BenchResult::new("pipeline", "token_check", backend.name, checks, elapsed)
        .with_peak_rss(peak_rss_mb())
        .with_settings(json!({
            "measured": "View::wait_for of a single-entry token the view has already applied, one after another",
            "distinct_tokens": keys,
        }))
        .emit();
    pipeline.stop().await;
    Ok(())
}

async fn relay_restart(args: &PipelineBenchArgs, backend: &Backend) -> anyhow::Result<()> {
    let source = backend.source.clone();
    let topic = Topic::new("ledger")?;
    let exe = std::env::current_exe()?;
    let data = payload(args.payload_bytes);
    let mut restarts = Vec::new();
    for round in 0..5u64 {
        produce(
            source.clone(),
            topic.clone(),
            1000,
            100,
            data.clone(),
            round * 1000,
        )
        .await?;
        // Start, let it publish, then kill it mid-stream.
        let mut child = std::process::Command::new(&exe)
            .args(["fault-test", "relay"])
            .args(&backend.worker_args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        wait_for_drain(&source, Duration::from_secs(30)).await?;
        produce(
            source.clone(),
            topic.clone(),
            1000,
            100,
            data.clone(),
            round * 1000 + 500,
        )
        .await?;
        child.kill()?;
        child.wait()?;
        // The crash left 1000 rows behind; the restarted relay must pick them up.
        let restarted = Instant::now();
        let mut child = std::process::Command::new(&exe)
            .args(["fault-test", "relay"])
            .args(&backend.worker_args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let before = outbox_len(&source).await?;
        loop {
            if outbox_len(&source).await? < before {
                restarts.push(restarted.elapsed());
                break;
            }
            anyhow::ensure!(
                restarted.elapsed() < Duration::from_secs(30),
                "the relay never published after its restart"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        wait_for_drain(&source, Duration::from_secs(30)).await?;
        child.kill()?;
        child.wait()?;
    }
    BenchResult::new("pipeline", "relay_restart", backend.name, restarts.len() as u64, restarts.iter().sum())
        .with_latencies(&mut restarts)
        .with_settings(json!({
            "measured": "SIGKILL, start a new relay process, until its first batch is acknowledged and deleted",
            "includes": "process start, opening the databases, taking the lease",
        }))
        .emit();
    Ok(())
}

async fn outbox_len(source: &Arc<dyn Database>) -> anyhow::Result<usize> {
    Ok(source
        .outbox_source()
        .read_batch(100_000)
        .await?
        .map_or(0, |b| b.messages.len()))
}

async fn wait_for_drain(source: &Arc<dyn Database>, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while outbox_len(source).await? > 0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the relay did not drain the outbox"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
