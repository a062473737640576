//! Benchmark helpers for `tributary bench cdc`: the capture's rate into a broker beside the
//! raw decoding rate of PostgreSQL's own `pg_recvlogical` over the same WAL.
//!
//! [`bench_capture`] makes its own table, publication and two slots (created together, so
//! both read exactly the same WAL range), writes the rows, times `pg_recvlogical` to the end
//! of that range, then times a [`CdcSource`] under the relay until the broker acknowledged
//! every row change, and cleans up. Both timings include connecting and starting the stream.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tributary_core::Broker;

use super::config::{CdcConfig, TableCapture, TableConfig};
use super::error::{CdcError, Result};
use super::source::CdcSource;
use super::state::StateSql;
use crate::lsn::Lsn;
use crate::replication::{PublicationName, SlotName};
use crate::sql::SqlSession;

const TABLE: &str = "tributary_cdc_bench";
const CAPTURE_SLOT: &str = "tributary_cdc_bench";
const BASELINE_SLOT: &str = "tributary_cdc_bench_baseline";

/// What [`bench_capture`] measured.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct CdcBenchReport {
    /// Row changes written (one insert each).
    pub rows: u64,
    /// Seconds until the broker acknowledged every row change.
    pub capture_seconds: f64,
    /// Row changes captured and acknowledged per second.
    pub capture_rows_per_sec: f64,
    /// Seconds `pg_recvlogical` took to read the same WAL range.
    pub baseline_seconds: f64,
    /// Row changes per second `pg_recvlogical` read (the raw decoding limit).
    pub baseline_rows_per_sec: f64,
    /// `capture_rows_per_sec / baseline_rows_per_sec`.
    pub ratio: f64,
    /// The capture's batch size.
    pub batch_size: usize,
    /// Rows per source transaction.
    pub rows_per_transaction: u64,
}

/// Writes `rows` inserts (in transactions of `rows_per_transaction`) into a table of its own
/// in `config`'s database, then measures `pg_recvlogical` and the capture into `broker` over
/// that WAL. Uses `config`'s connection, batch size and heartbeat settings; slot, publication
/// and tables are its own (`tributary_cdc_bench…`), dropped afterwards.
///
/// # Errors
///
/// Connection or SQL failures, [`CdcError::Bench`] when `pg_recvlogical` fails.
pub async fn bench_capture(
    config: &CdcConfig,
    broker: Arc<dyn Broker>,
    rows: u64,
    rows_per_transaction: u64,
    pg_recvlogical: &Path,
) -> Result<CdcBenchReport> {
    let rows_per_transaction = rows_per_transaction.max(1);
    let slot = SlotName::new(CAPTURE_SLOT)?;
    let publication = PublicationName::new(TABLE)?;
    let bench_config = config
        .clone()
        .with_slot(slot.clone())
        .with_publication(publication)
        .with_tables(TableCapture::only(vec![TableConfig::new(TABLE)]));
    let bench_config = CdcConfig {
        outbox: None,
        messages: None,
        ..bench_config
    };
    let state = StateSql::new(&config.state_schema, &slot);
    let mut session = SqlSession::connect(&config.connection).await?;
    cleanup(&mut session, &state).await?;
    // Separate commands: a multi-statement query is one transaction, and slots cannot be
    // created in a transaction that wrote.
    session
        .query(&format!(
            "CREATE TABLE {TABLE} (id bigint PRIMARY KEY, k text NOT NULL, payload text NOT NULL);
             CREATE PUBLICATION {TABLE} FOR TABLE {TABLE};"
        ))
        .await?;
    session
        .query(&format!(
            "SELECT pg_create_logical_replication_slot('{CAPTURE_SLOT}', 'pgoutput'),
                    pg_create_logical_replication_slot('{BASELINE_SLOT}', 'pgoutput')"
        ))
        .await?;
    let mut written = 0;
    while written < rows {
        let next = (written + rows_per_transaction).min(rows);
        session
            .query(&format!(
                "INSERT INTO {TABLE} SELECT g, 'k' || (g % 100), repeat('x', 100)
                 FROM generate_series({}, {next}) g",
                written + 1
            ))
            .await?;
        written = next;
    }
    let end: Lsn = session
        .value("SELECT pg_current_wal_lsn()")
        .await?
        .ok_or_else(|| CdcError::protocol("no WAL position"))?
        .parse()
        .map_err(|e| CdcError::protocol(format!("WAL position: {e}")))?;

    let baseline_seconds = run_pg_recvlogical(config, pg_recvlogical, end).await?;

    let source = Arc::new(CdcSource::new(bench_config.clone())?);
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
        .map_err(|e| CdcError::protocol(format!("capture task: {e}")))?;
    let cleaned = cleanup(&mut session, &state).await;
    session.close().await;
    outcome?;
    cleaned?;
    let rate = |seconds: f64| rows as f64 / seconds;
    Ok(CdcBenchReport {
        rows,
        capture_seconds,
        capture_rows_per_sec: rate(capture_seconds),
        baseline_seconds,
        baseline_rows_per_sec: rate(baseline_seconds),
        ratio: rate(capture_seconds) / rate(baseline_seconds),
        batch_size: bench_config.batch_size,
        rows_per_transaction,
    })
}

async fn cleanup(session: &mut SqlSession, state: &StateSql) -> Result<()> {
    state.ensure_table(session).await?;
    state.forget(session).await?;
    session
        .query(&format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
             WHERE slot_name IN ('{CAPTURE_SLOT}', '{BASELINE_SLOT}');
             DROP PUBLICATION IF EXISTS {TABLE};
             DROP TABLE IF EXISTS {TABLE};"
        ))
        .await?;
    Ok(())
}

/// Times `pg_recvlogical` reading the baseline slot up to `end`, output discarded.
async fn run_pg_recvlogical(config: &CdcConfig, program: &Path, end: Lsn) -> Result<f64> {
    let connection = &config.connection;
    let mut command = tokio::process::Command::new(program);
    command
        .args(["-h", &connection.host, "-U", &connection.user, "-d"])
        .arg(&connection.database)
        .arg("-p")
        .arg(connection.port.to_string())
        .args([
            "-S",
            BASELINE_SLOT,
            "--start",
            "--no-loop",
            "-f",
            "/dev/null",
        ])
        .args(["-o", "proto_version=1", "-o"])
        .arg(format!("publication_names={TABLE}"))
        .arg("-E")
        .arg(end.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if let Some(password) = &connection.password {
        command.env("PGPASSWORD", password);
    }
    let started = Instant::now();
    let output = command.output().await.map_err(|e| CdcError::Bench {
        reason: format!("cannot run {}: {e}", program.display()),
    })?;
    let seconds = started.elapsed().as_secs_f64();
    if !output.status.success() {
        return Err(CdcError::Bench {
            reason: format!(
                "pg_recvlogical failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ),
        });
    }
    Ok(seconds)
}

/// Where `pg_recvlogical` is: `pg_config --bindir`, else the newest
/// `/usr/lib/postgresql/*/bin` (Debian keeps it off PATH), else PATH.
pub fn find_pg_recvlogical() -> Option<PathBuf> {
    let usable = |dir: &Path| dir.join("pg_recvlogical").is_file();
    if let Ok(output) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        && output.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if usable(&dir) {
            return Some(dir.join("pg_recvlogical"));
        }
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| usable(dir))
        .collect();
    candidates.sort();
    if let Some((_, dir)) = candidates.pop() {
        return Some(dir.join("pg_recvlogical"));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|dir| usable(dir))
            .map(|dir| dir.join("pg_recvlogical"))
    })
}
