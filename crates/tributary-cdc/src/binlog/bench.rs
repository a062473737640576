//! Benchmark helpers for `tributary bench cdc --db mysql://…`: the capture's rate into a
//! broker beside the rate at which MariaDB's own `mariadb-binlog --read-from-remote-server
//! --raw` reads the same binlog range, and rows offered at a fixed rate for the latency.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use tokio_util::sync::CancellationToken;
use tributary_core::Broker;

use super::config::BinlogConfig;
use super::error::{BinlogError, Result};
use super::source::BinlogSource;
use super::state::{self, ServerInfo, StateSql, Status};
use crate::capture::TableCapture;

const DATABASE: &str = "tributary_cdc_bench";
const CAPTURE: &str = "tributary_cdc_bench";

/// What [`bench_binlog_capture`] measured.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BinlogBenchReport {
    pub rows: u64,
    /// Seconds from starting the capture to the broker's acknowledgement of the last row.
    pub capture_seconds: f64,
    pub capture_rows_per_sec: f64,
    /// Seconds `mariadb-binlog --read-from-remote-server --raw` took for the same range.
    pub baseline_seconds: f64,
    pub baseline_rows_per_sec: f64,
    pub ratio: f64,
    /// Binlog bytes of the range.
    pub bytes: u64,
    pub batch_size: usize,
    pub pipeline_depth: usize,
    pub rows_per_transaction: u64,
}

/// Writes `rows` inserts (`rows_per_transaction` per transaction) into a table of its own
/// (database `tributary_cdc_bench`, dropped afterwards), then times `mariadb-binlog` reading
/// that binlog range raw and a [`BinlogSource`] publishing it into `broker`.
///
/// # Errors
///
/// Connection or SQL failures, or `mariadb-binlog` failing.
pub async fn bench_binlog_capture(
    config: &BinlogConfig,
    broker: Arc<dyn Broker>,
    rows: u64,
    rows_per_transaction: u64,
    mariadb_binlog: &Path,
) -> Result<BinlogBenchReport> {
    let rows_per_transaction = rows_per_transaction.max(1);
    let mut conn = state::connect(&config.url).await?;
    let server = ServerInfo::read(&mut conn).await?;
    server.check(CAPTURE)?;
    state::exec(&mut conn, &format!("DROP DATABASE IF EXISTS {DATABASE}")).await?;
    state::exec(&mut conn, &format!("CREATE DATABASE {DATABASE}")).await?;
    state::exec(
        &mut conn,
        &format!(
            "CREATE TABLE {DATABASE}.rows_bench (id BIGINT PRIMARY KEY, k VARCHAR(10) NOT NULL, \
             payload VARCHAR(200) NOT NULL) ENGINE=InnoDB"
        ),
    )
    .await?;
    let state_sql = StateSql::new(DATABASE, CAPTURE);
    state_sql.ensure_table(&mut conn).await?;
    let start = server.current(&mut conn).await?;
    let mut written = 0;
    while written < rows {
        let next = (written + rows_per_transaction).min(rows);
        state::exec(
            &mut conn,
            &format!(
                "INSERT INTO {DATABASE}.rows_bench SELECT seq, CONCAT('k', seq % 100), REPEAT('x', 100) \
                 FROM seq_{}_to_{next}",
                written + 1
            ),
        )
        .await?;
        written = next;
    }
    let end = server.current(&mut conn).await?;
    state_sql
        .create(&mut conn, Status::Streaming, &start)
        .await?;
    let bytes = byte_span(&mut conn, &start, &end).await?;

    let baseline_seconds = run_mariadb_binlog(config, mariadb_binlog, &start).await?;

    let base = config
        .clone()
        .with_url(replace_database(&config.url, DATABASE))
        .with_capture(CAPTURE);
    let bench_config = BinlogConfig {
        outbox: None,
        ..base.clone()
    }
    .with_tables(TableCapture::only(vec![base.table("rows_bench")]));
    let source = Arc::new(BinlogSource::new(bench_config.clone())?);
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let running = tokio::spawn(Arc::clone(&source).run(broker, shutdown.clone()));
    let capture_seconds = loop {
        if source.published() >= rows {
            break started.elapsed().as_secs_f64();
        }
        if running.is_finished() {
            break f64::NAN;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    shutdown.cancel();
    let outcome = running
        .await
        .map_err(|e| BinlogError::decode(format!("capture task: {e}")))?;
    let cleaned = state::exec(&mut conn, &format!("DROP DATABASE IF EXISTS {DATABASE}")).await;
    let _ = conn.disconnect().await;
    outcome?;
    cleaned?;
    let rate = |seconds: f64| rows as f64 / seconds;
    Ok(BinlogBenchReport {
        rows,
        capture_seconds,
        capture_rows_per_sec: rate(capture_seconds),
        baseline_seconds,
        baseline_rows_per_sec: rate(baseline_seconds),
        ratio: rate(capture_seconds) / rate(baseline_seconds),
        bytes,
        batch_size: bench_config.batch_size,
        pipeline_depth: bench_config.pipeline_depth,
        rows_per_transaction,
    })
}

async fn byte_span(
    conn: &mut mysql_async::Conn,
    start: &super::position::BinlogPosition,
    end: &super::position::BinlogPosition,
) -> Result<u64> {
    let files = state::binlog_files(conn).await?;
    let (Some(a), Some(b)) = (
        files.iter().position(|(f, _)| f == &start.file),
        files.iter().position(|(f, _)| f == &end.file),
    ) else {
        return Ok(0);
    };
    Ok(files
        .iter()
        .enumerate()
        .take(b + 1)
        .skip(a)
        .map(|(i, (_, size))| {
            let from = if i == a { start.offset } else { 0 };
            let to = if i == b { end.offset } else { *size };
            to.saturating_sub(from)
        })
        .sum())
}

fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| i + scheme_end);
    let mut out = format!("{}/{database}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Times `mariadb-binlog --read-from-remote-server --raw` from `start` to the end of the
/// server's last binlog, written to a temporary directory.
async fn run_mariadb_binlog(
    config: &BinlogConfig,
    program: &Path,
    start: &super::position::BinlogPosition,
) -> Result<f64> {
    let opts = mysql_async::Opts::from_url(&config.url).map_err(|e| BinlogError::Config {
        reason: e.to_string(),
    })?;
    let dir = std::env::temp_dir().join(format!("tributary-binlog-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| BinlogError::Unavailable {
        reason: format!("{}: {e}", dir.display()),
    })?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(["--read-from-remote-server", "--raw", "--to-last-log"])
        .arg(format!("--host={}", opts.ip_or_hostname()))
        .arg(format!("--port={}", opts.tcp_port()))
        .arg(format!("--user={}", opts.user().unwrap_or("root")))
        .arg(format!("--start-position={}", start.offset))
        .arg(format!("--result-file={}/", dir.display()))
        .arg(&start.file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(password) = opts.pass() {
        command.env("MYSQL_PWD", password);
    }
    let started = Instant::now();
    let output = command
        .output()
        .await
        .map_err(|e| BinlogError::Unavailable {
            reason: format!("cannot run {}: {e}", program.display()),
        })?;
    let seconds = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    if !output.status.success() {
        return Err(BinlogError::Unavailable {
            reason: format!(
                "mariadb-binlog failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ),
        });
    }
    Ok(seconds)
}

/// Where `mariadb-binlog` (or `mysqlbinlog`) is.
pub fn find_mariadb_binlog() -> Option<PathBuf> {
    ["/usr/bin/mariadb-binlog", "/usr/bin/mysqlbinlog"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// A table for the latency scenario, `tributary_cdc_latency.<name>` (the database is
/// created), and the connection pool that writes it.
pub struct LatencyTable {
    pool: mysql_async::Pool,
    pub database: String,
    pub table: String,
}

impl LatencyTable {
    /// Creates the table.
    ///
    /// # Errors
    ///
    /// Connection or SQL failures.
    pub async fn create(url: &str, table: &str) -> Result<Self> {
        let database = "tributary_cdc_latency".to_owned();
        let opts = mysql_async::Opts::from_url(url).map_err(|e| BinlogError::Config {
            reason: e.to_string(),
        })?;
        // Few connections: an open-loop writer must not exhaust max_connections.
        let constraints = mysql_async::PoolConstraints::new(1, 16)
            .ok_or_else(|| BinlogError::decode("pool constraints"))?;
        let opts = mysql_async::OptsBuilder::from_opts(opts)
            .pool_opts(mysql_async::PoolOpts::default().with_constraints(constraints));
        let pool = mysql_async::Pool::new(opts);
        let mut conn = pool
            .get_conn()
            .await
            .map_err(|e| BinlogError::driver("connect", e))?;
        state::exec(
            &mut conn,
            &format!("CREATE DATABASE IF NOT EXISTS {database}"),
        )
        .await?;
        state::exec(
            &mut conn,
            &format!(
                "CREATE TABLE {database}.{table} (id BIGINT PRIMARY KEY, payload VARCHAR(200) NOT NULL) ENGINE=InnoDB"
            ),
        )
        .await?;
        Ok(LatencyTable {
            pool,
            database,
            table: table.to_owned(),
        })
    }

    /// The URL of the table's database (where the capture keeps its state).
    pub fn url(&self, url: &str) -> String {
        replace_database(url, &self.database)
    }

    /// Inserts rows `0..total` one per transaction at `rate` per second (open loop), and
    /// returns when each commit returned.
    ///
    /// # Errors
    ///
    /// The first failed insert.
    pub async fn offer(&self, rate: u64, total: u64) -> Result<Vec<(i64, Instant)>> {
        let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
        let started = Instant::now();
        let mut inserts = tokio::task::JoinSet::new();
        let sql = format!(
            "INSERT INTO {}.{} (id, payload) VALUES (?, REPEAT('x', 100))",
            self.database, self.table
        );
        let mut committed = Vec::with_capacity(total as usize);
        for i in 0..total as i64 {
            tokio::time::sleep_until((started + interval.mul_f64(i as f64)).into()).await;
            let (pool, sql) = (self.pool.clone(), sql.clone());
            inserts.spawn(async move {
                let mut conn = pool
                    .get_conn()
                    .await
                    .map_err(|e| BinlogError::driver("connect", e))?;
                conn.exec_drop(&sql, (i,))
                    .await
                    .map_err(|e| BinlogError::driver(&sql, e))?;
                Ok::<_, BinlogError>((i, Instant::now()))
            });
            while let Some(done) = inserts.try_join_next() {
                committed.push(done.map_err(|e| BinlogError::decode(e.to_string()))??);
            }
        }
        while let Some(done) = inserts.join_next().await {
            committed.push(done.map_err(|e| BinlogError::decode(e.to_string()))??);
        }
        Ok(committed)
    }

    /// Drops the table's database and the pool.
    ///
    /// # Errors
    ///
    /// SQL failures.
    pub async fn drop_all(self) -> Result<()> {
        let mut conn = self
            .pool
            .get_conn()
            .await
            .map_err(|e| BinlogError::driver("connect", e))?;
        state::exec(
            &mut conn,
            &format!("DROP DATABASE IF EXISTS {}", self.database),
        )
        .await?;
        drop(conn);
        let _ = self.pool.disconnect().await;
        Ok(())
    }
}

/// A broker that acknowledges every publish at once and keeps nothing: with it a benchmark
/// measures the capture alone (reading, decoding, building envelopes, storing positions),
/// without the broker's share of the machine.
#[derive(Debug, Default)]
pub struct DiscardBroker;

#[async_trait::async_trait]
impl Broker for DiscardBroker {
    async fn ensure_topic(&self, _: &tributary_core::Topic, _: u32) -> tributary_core::Result<()> {
        Ok(())
    }
    async fn partitions(&self, _: &tributary_core::Topic) -> tributary_core::Result<u32> {
        Ok(1)
    }
    async fn publish(
        &self,
        messages: &[tributary_core::OutgoingMessage],
    ) -> tributary_core::Result<()> {
        std::hint::black_box(messages);
        Ok(())
    }
    async fn consume(
        &self,
        _: &tributary_core::GroupName,
        _: &tributary_core::Topic,
        _: tributary_core::Partition,
    ) -> tributary_core::Result<Box<dyn tributary_core::PartitionConsumer>> {
        Err(tributary_core::Error::invalid(
            "the discard broker keeps nothing to consume",
        ))
    }
    fn redelivery_horizon(&self) -> Duration {
        Duration::MAX
    }
    async fn reset_group(
        &self,
        _: &tributary_core::GroupName,
        _: &tributary_core::Topic,
    ) -> tributary_core::Result<()> {
        Ok(())
    }
    async fn delete_group(
        &self,
        _: &tributary_core::GroupName,
        _: &tributary_core::Topic,
    ) -> tributary_core::Result<()> {
        Ok(())
    }
}
