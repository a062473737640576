//! Raw PostgreSQL baselines: the same server, a bare table and no Tributary code. Appends are
//! reported as ratios of these (see DESIGN.md, "Benchmark output").

use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use tributary_core::{Error, Result};

use crate::error::SqlxResultExt;

/// The outcome of a raw insert run.
#[derive(Clone, Debug, PartialEq)]
pub struct RawInsertReport {
    pub rows: u64,
    pub writers: usize,
    pub payload_bytes: usize,
    pub elapsed: Duration,
    pub rows_per_sec: f64,
}

/// Inserts `rows` rows of `payload_bytes` bytes into a bare table, one row per transaction
/// (`BEGIN; INSERT …; COMMIT`, the commit waiting for the WAL flush as the server is
/// configured), from `writers` connections at once. The table lives in a temporary schema
/// that is dropped afterwards.
///
/// # Errors
/// [`Error::Unavailable`] when the server cannot be reached.
pub async fn raw_single_row_commits(
    url: &str,
    rows: u64,
    payload_bytes: usize,
    writers: usize,
) -> Result<RawInsertReport> {
    let writers = writers.max(1);
    let schema = format!("tributary_bench_{}", uuid::Uuid::now_v7().simple());
    let mut admin = PgConnection::connect(url)
        .await
        .context("connecting for the baseline")?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(crate::sql::render(
        include_str!("bench_table.sql"),
        &schema,
    )))
    .execute(&mut admin)
    .await
    .context("creating the baseline table")?;
    let insert = crate::sql::render("INSERT INTO __SCHEMA__.bare (payload) VALUES ($1)", &schema);
    let mut conns = Vec::with_capacity(writers);
    for _ in 0..writers {
        conns.push(
            PgConnection::connect(url)
                .await
                .context("connecting a baseline writer")?,
        );
    }
    let payload = vec![b'x'; payload_bytes];
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(writers);
    for (i, mut conn) in conns.into_iter().enumerate() {
        let share = rows / writers as u64 + u64::from((i as u64) < rows % writers as u64);
        let (insert, payload) = (insert.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..share {
                let mut tx = conn.begin().await?;
                sqlx::query(sqlx::AssertSqlSafe(insert.as_str()))
                    .bind(&payload)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            conn.close().await
        }));
    }
    let mut failure = None;
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(crate::error::db_error("inserting baseline rows", e)),
            Err(e) => failure = Some(Error::unavailable("a baseline writer", e)),
        }
    }
    let elapsed = started.elapsed();
    let dropped = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(&mut admin)
    .await
    .context("dropping the baseline table");
    if let Some(e) = failure {
        return Err(e);
    }
    dropped?;
    Ok(RawInsertReport {
        rows,
        writers,
        payload_bytes,
        elapsed,
        rows_per_sec: rows as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE),
    })
}
