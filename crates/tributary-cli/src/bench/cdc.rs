//! `tributary bench cdc`: change data capture from PostgreSQL's WAL into the broker.
//!
//! - `throughput`: row changes captured and acknowledged per second, beside `pg_recvlogical`
//!   reading the same WAL range on the same machine (the raw limit of decoding).
//! - `latency`: rows inserted one per transaction at `--rate` per second; latency from the
//!   insert's commit to the change being readable from the broker (so including the broker's
//!   acknowledgement), p50/p99/max.
//!
//! Needs `wal_level = logical`. Uses streams and slots of its own, removed afterwards.
//!
//! With `--db mysql://…` the same two scenarios run on the MySQL/MariaDB binlog capture, the
//! baseline being `mariadb-binlog --read-from-remote-server --raw` reading the same binlog.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tributary::BrokerUrl;
use tributary::CancellationToken;
use tributary::cdc::{
    CdcConfig, PgReplicationConfig, PublicationName, SlotName, TableCapture, TableConfig,
    ensure_publication, retire_capture,
};
use tributary::{Broker, Envelope, EventId, GroupName, Partition, Topic};

use super::report::BenchResult;

#[derive(Clone, Debug, clap::Args)]
pub struct CdcBenchArgs {
    /// Run only this scenario: throughput or latency.
    #[arg(long)]
    pub scenario: Option<String>,
    /// The captured PostgreSQL (wal_level=logical).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/test")]
    pub db: String,
    /// The broker: nats://host:port (default), embedded://DIR, or discard:// (acknowledges
    /// at once and keeps nothing: measures the capture without a broker; latency needs a
    /// real one).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub broker: String,
    /// Row changes for `throughput`.
    #[arg(long, default_value_t = 200_000)]
    pub rows: u64,
    /// Rows per source transaction for `throughput`.
    #[arg(long, default_value_t = 1000)]
    pub rows_per_txn: u64,
    /// Offered changes per second for `latency`.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Seconds of offered load for `latency`.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

/// The broker for one run: NATS streams under a prefix of their own (deleted afterwards), or
/// the embedded log; `discard://` acknowledges everything at once (the capture alone).
async fn broker(args: &CdcBenchArgs, run: &str) -> anyhow::Result<(Arc<dyn Broker>, String)> {
    if args.broker == "discard://" {
        return Ok((
            Arc::new(tributary::cdc::binlog::bench::DiscardBroker),
            "discard".to_owned(),
        ));
    }
    let url: BrokerUrl = args.broker.parse().map_err(anyhow::Error::msg)?;
    let url = match url {
        BrokerUrl::Nats { url, replicas, .. } => BrokerUrl::Nats {
            url,
            prefix: format!("CDCBENCH{}", run.to_uppercase()),
            replicas,
        },
        other => other,
    };
    let name = match &url {
        BrokerUrl::Nats { .. } => "nats",
        BrokerUrl::Embedded { .. } => "embedded",
        _ => "memory",
    };
    Ok((url.connect().await?, name.to_owned()))
}

async fn delete_streams(args: &CdcBenchArgs, run: &str, topics: &[&str]) {
    if let Ok(BrokerUrl::Nats { url, .. }) = args.broker.parse::<BrokerUrl>() {
        let config = tributary::nats::NatsBrokerConfig::default()
            .with_url(url)
            .with_stream_prefix(format!("CDCBENCH{}", run.to_uppercase()));
        if let Ok(nats) = tributary::nats::NatsBroker::connect(config).await {
            for t in topics {
                if let Ok(topic) = Topic::new(*t) {
                    let _ = nats.delete_topic(&topic).await;
                }
            }
        }
    }
}

pub async fn run(args: CdcBenchArgs) -> anyhow::Result<()> {
    if args.db.starts_with("mysql://") {
        return binlog::run(args).await;
    }
    let scenarios: Vec<&str> = match args.scenario.as_deref() {
        None => vec!["throughput", "latency"],
        Some(s @ ("throughput" | "latency")) => vec![s],
        Some(s) => anyhow::bail!("unknown scenario {s:?}; choose throughput or latency"),
    };
    for scenario in scenarios {
        let run = EventId::new().as_uuid().simple().to_string()[20..].to_owned();
        match scenario {
            "throughput" => throughput(&args, &run).await?,
            _ => latency(&args, &run).await?,
        }
    }
    Ok(())
}

async fn throughput(args: &CdcBenchArgs, run: &str) -> anyhow::Result<()> {
    let pg_recvlogical = tributary::cdc::capture::bench::find_pg_recvlogical()
        .context("pg_recvlogical is not installed (PostgreSQL client programs)")?;
    let connection = PgReplicationConfig::from_url(&args.db).map_err(anyhow::Error::msg)?;
    let (broker, broker_name) = broker(args, run).await?;
    let config = CdcConfig::default().with_connection(connection);
    let report = tributary::cdc::capture::bench::bench_capture(
        &config,
        broker,
        args.rows,
        args.rows_per_txn,
        &pg_recvlogical,
    )
    .await;
    delete_streams(args, run, &["tributary_cdc_bench"]).await;
    let report = report?;
    BenchResult::new(
        "cdc",
        "throughput",
        &format!("postgres+{broker_name}"),
        report.rows,
        Duration::from_secs_f64(report.capture_seconds),
    )
    .against("pg_recvlogical reading the same WAL range", report.baseline_rows_per_sec)
    .with_settings(json!({
        "rows_per_txn": report.rows_per_transaction,
        "capture_batch": report.batch_size,
        "timing": "from connecting to the last broker acknowledgement (both sides include connecting)",
    }))
    .emit();
    Ok(())
}

async fn latency(args: &CdcBenchArgs, run: &str) -> anyhow::Result<()> {
    use tributary::postgres::{PgConfig, PgDatabase};

    let connection = PgReplicationConfig::from_url(&args.db).map_err(anyhow::Error::msg)?;
    let table = format!("cdc_latency_{run}");
    let name = format!("cdc_latency_{run}");
    let (slot, publication) = (
        SlotName::new(name.clone())?,
        PublicationName::new(name.clone())?,
    );
    // A plain pool for the writes (the schema here is only where sqlx keeps its bookkeeping).
    let pg = PgDatabase::connect(
        PgConfig::default()
            .with_url(args.db.clone())
            .with_schema(format!("cdc_latency_state_{run}")),
    )
    .await?;
    let pool = pg.pool().clone();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE public.{table} (id bigint PRIMARY KEY, payload text NOT NULL)"
    )))
    .execute(&pool)
    .await?;
    ensure_publication(&connection, &publication, &[format!("public.{table}")]).await?;
    let (broker, broker_name) = broker(args, run).await?;
    let config = CdcConfig::default()
        .with_connection(connection.clone())
        .with_name("cdc-latency-bench")
        .with_slot(slot.clone())
        .with_publication(publication.clone())
        .with_tables(TableCapture::only(vec![TableConfig::new(&format!(
            "public.{table}"
        ))]));
    let shutdown = CancellationToken::new();
    let capture = tokio::spawn(tributary::cdc::capture(
        config,
        broker.clone(),
        shutdown.clone(),
    ));

    // Wait for the slot, then offer rows at the rate, one per transaction.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let active: Option<bool> =
            sqlx::query_scalar("SELECT active FROM pg_replication_slots WHERE slot_name = $1")
                .bind(&name)
                .fetch_optional(&pool)
                .await?;
        if active == Some(true) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the capture never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let committed: Arc<Mutex<HashMap<i64, Instant>>> = Arc::default();
    let total = args.rate * args.seconds;
    let topic = tributary::cdc::capture::topic_for_name(&table);
    let reader = tokio::spawn(read_arrivals(broker.clone(), topic, total as usize));
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let started = Instant::now();
    let mut inserts = tokio::task::JoinSet::new();
    let insert = format!("INSERT INTO public.{table} (id, payload) VALUES ($1, repeat('x', 100))");
    for i in 0..total as i64 {
        tokio::time::sleep_until((started + interval.mul_f64(i as f64)).into()).await;
        let (pool, committed, insert) = (pool.clone(), committed.clone(), insert.clone());
        inserts.spawn(async move {
            sqlx::query(sqlx::AssertSqlSafe(insert))
                .bind(i)
                .execute(&pool)
                .await?;
            committed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(i, Instant::now());
            anyhow::Ok(())
        });
        while let Some(done) = inserts.try_join_next() {
            done??;
        }
    }
    while let Some(done) = inserts.join_next().await {
        done??;
    }
    let offered_for = started.elapsed();
    let arrived = reader.await??;
    shutdown.cancel();
    let _ = capture.await;
    let committed = committed.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut latencies: Vec<Duration> = arrived
        .iter()
        .filter_map(|(id, at)| committed.get(id).map(|c| at.saturating_duration_since(*c)))
        .collect();
    let received = latencies.len();
    retire_capture(&connection, &slot, &publication).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE public.{table}")))
        .execute(&pool)
        .await?;
    pg.drop_schema().await?;
    delete_streams(args, run, &[topic_name(&table).as_str()]).await;
    anyhow::ensure!(
        received as u64 == total,
        "{received} of {total} changes arrived"
    );
    let mut result = BenchResult::new(
        "cdc",
        "latency",
        &format!("postgres+{broker_name}"),
        total,
        offered_for,
    )
    .with_latencies(&mut latencies)
    .with_settings(json!({
        "rows_per_txn": 1,
        "latency": "the insert's commit returned -> the change read from the broker",
    }));
    result.offered_rate = Some(args.rate as f64);
    result.emit();
    Ok(())
}

fn topic_name(table: &str) -> String {
    tributary::cdc::capture::topic_for_name(table).to_string()
}

/// Reads the topic until `expected` changes arrived, one task per partition (each waiting
/// on its partition as a consumer would); returns each row id with its arrival time.
async fn read_arrivals(
    broker: Arc<dyn Broker>,
    topic: Topic,
    expected: usize,
) -> anyhow::Result<Vec<(i64, Instant)>> {
    let group = GroupName::new("cdc-latency-reader")?;
    let partitions = broker.partitions(&topic).await?;
    let arrived: Arc<Mutex<Vec<(i64, Instant)>>> = Arc::default();
    let done = CancellationToken::new();
    let mut readers = tokio::task::JoinSet::new();
    for p in 0..partitions {
        let mut consumer = broker.consume(&group, &topic, Partition::new(p)).await?;
        let (arrived, done) = (arrived.clone(), done.clone());
        readers.spawn(async move {
            while !done.is_cancelled() {
                let batch = tokio::select! {
                    b = consumer.fetch(1000, Duration::from_millis(200)) => b?,
                    _ = done.cancelled() => break,
                };
                let now = Instant::now();
                let mut ids = Vec::with_capacity(batch.len());
                for d in &batch {
                    let envelope = Envelope::from_json(&d.payload)?;
                    if let Some(id) = envelope.data.to_value()["new"]["id"].as_i64() {
                        ids.push((id, now));
                    }
                }
                arrived
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(ids);
                if let Some(last) = batch.last() {
                    consumer.commit(last.offset).await?;
                }
            }
            anyhow::Ok(())
        });
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let n = arrived.lock().unwrap_or_else(|e| e.into_inner()).len();
        if n >= expected {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {n} of {expected} changes arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done.cancel();
    while let Some(r) = readers.join_next().await {
        r??;
    }
    let arrived = arrived.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(arrived)
}

/// `tributary bench cdc --db mysql://…`.
mod binlog {
    use std::time::Duration;

    use anyhow::Context;
    use serde_json::json;
    use tributary::CancellationToken;
    use tributary::EventId;
    use tributary::cdc::BinlogConfig;
    use tributary::cdc::binlog::bench::{LatencyTable, bench_binlog_capture, find_mariadb_binlog};
    use tributary::cdc::capture::TableCapture;

    use super::{BenchResult, CdcBenchArgs, broker, delete_streams, read_arrivals, topic_name};

    pub(super) async fn run(args: CdcBenchArgs) -> anyhow::Result<()> {
        let scenarios: Vec<&str> = match args.scenario.as_deref() {
            None => vec!["throughput", "latency"],
            Some(s @ ("throughput" | "latency")) => vec![s],
            Some(s) => anyhow::bail!("unknown scenario {s:?}; choose throughput or latency"),
        };
        for scenario in scenarios {
            let run = EventId::new().as_uuid().simple().to_string()[20..].to_owned();
            match scenario {
                "throughput" => throughput(&args, &run).await?,
                _ => latency(&args, &run).await?,
            }
        }
        Ok(())
    }

    async fn throughput(args: &CdcBenchArgs, run: &str) -> anyhow::Result<()> {
        let program = find_mariadb_binlog()
            .context("mariadb-binlog is not installed (MariaDB client programs)")?;
        let (broker, broker_name) = broker(args, run).await?;
        let config = BinlogConfig::default().with_url(args.db.clone());
        let report =
            bench_binlog_capture(&config, broker, args.rows, args.rows_per_txn, &program).await;
        delete_streams(args, run, &["rows_bench"]).await;
        let report = report?;
        BenchResult::new(
            "cdc",
            "throughput",
            &format!("mariadb+{broker_name}"),
            report.rows,
            Duration::from_secs_f64(report.capture_seconds),
        )
        .against(
            "mariadb-binlog --read-from-remote-server --raw reading the same binlog range",
            report.baseline_rows_per_sec,
        )
        .with_settings(json!({
            "rows_per_txn": report.rows_per_transaction,
            "capture_batch": report.batch_size,
            "pipeline_depth": report.pipeline_depth,
            "binlog_bytes": report.bytes,
            "timing": "from connecting to the last broker acknowledgement (both sides include connecting)",
        }))
        .emit();
        Ok(())
    }

    async fn latency(args: &CdcBenchArgs, run: &str) -> anyhow::Result<()> {
        let name = format!("cdc_latency_{run}");
        let table = LatencyTable::create(&args.db, &name).await?;
        let (broker, broker_name) = broker(args, run).await?;
        let base = BinlogConfig::default()
            .with_url(table.url(&args.db))
            .with_name("cdc-latency-bench")
            .with_capture(name.clone())
            .with_idle_wait(Duration::from_millis(50));
        let config = base
            .clone()
            .with_tables(TableCapture::only(vec![base.table(&name)]));
        let shutdown = CancellationToken::new();
        let capture = tokio::spawn(tributary::cdc::capture_binlog(
            config,
            broker.clone(),
            shutdown.clone(),
        ));
        // Let the capture reach the stream before offering rows.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let total = args.rate * args.seconds;
        let topic = tributary::cdc::capture::topic_for_name(&name);
        let reader = tokio::spawn(read_arrivals(broker.clone(), topic, total as usize));
        let started = std::time::Instant::now();
        let committed = table.offer(args.rate, total).await?;
        let offered_for = started.elapsed();
        let arrived = reader.await??;
        shutdown.cancel();
        let _ = capture.await;
        let committed: std::collections::HashMap<i64, std::time::Instant> =
            committed.into_iter().collect();
        let mut latencies: Vec<Duration> = arrived
            .iter()
            .filter_map(|(id, at)| committed.get(id).map(|c| at.saturating_duration_since(*c)))
            .collect();
        let received = latencies.len();
        table.drop_all().await?;
        delete_streams(args, run, &[topic_name(&name).as_str()]).await;
        anyhow::ensure!(
            received as u64 == total,
            "{received} of {total} changes arrived"
        );
        let mut result = BenchResult::new(
            "cdc",
            "latency",
            &format!("mariadb+{broker_name}"),
            total,
            offered_for,
        )
        .with_latencies(&mut latencies)
        .with_settings(json!({
            "rows_per_txn": 1,
            "latency": "the insert's commit returned -> the change read from the broker",
        }));
        result.offered_rate = Some(args.rate as f64);
        result.emit();
        Ok(())
    }
}
