//! Raw rusqlite loops: the same row size and durability settings as the event store, but a
//! bare table and no Tributary code. Our figures are reported as ratios of these.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use tributary::sqlite::Synchronous;
use tributary::sqlite::rusqlite::{Connection, params};

fn open(path: &Path, synchronous: Synchronous) -> anyhow::Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    let sync = match synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync};
         CREATE TABLE IF NOT EXISTS bare (id INTEGER PRIMARY KEY, payload BLOB NOT NULL);"
    ))?;
    Ok(conn)
}

/// A bare table on an open connection, kept open between measurement rounds so that the
/// WAL file is not recreated (and the baseline not slowed) every round.
pub struct RawTable {
    conn: Connection,
    payload: Vec<u8>,
}

impl RawTable {
    pub fn open(
        path: &Path,
        synchronous: Synchronous,
        payload_bytes: usize,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            conn: open(path, synchronous)?,
            payload: vec![b'x'; payload_bytes],
        })
    }

    /// Inserts `rows` rows, `rows_per_txn` per transaction. Returns the elapsed time.
    pub fn insert(&mut self, rows: u64, rows_per_txn: u64) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let mut done = 0;
        while done < rows {
            let tx = self.conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached("INSERT INTO bare (payload) VALUES (?1)")?;
                for _ in 0..rows_per_txn.min(rows - done) {
                    stmt.execute(params![self.payload])?;
                    done += 1;
                }
            }
            tx.commit()?;
        }
        Ok(started.elapsed())
    }
}

/// The event store's own table (created by opening a Tributary database, so the schema is
/// exactly the real one) filled by a plain rusqlite loop: what SQLite itself costs for our
/// schema — its two unique indexes and fourteen columns — without any Tributary code.
pub struct RawEventsTable {
    conn: Connection,
    payload: String,
    next: u64,
}

impl RawEventsTable {
    pub fn open(
        path: &Path,
        synchronous: Synchronous,
        payload_bytes: usize,
    ) -> anyhow::Result<Self> {
        drop(tributary::sqlite::SqliteDatabase::open(
            path,
            tributary::sqlite::SqliteConfig::default().with_synchronous(synchronous),
        )?);
        Ok(Self {
            conn: open(path, synchronous)?,
            payload: format!(
                "{{\"pad\":\"{}\"}}",
                "x".repeat(payload_bytes.saturating_sub(10))
            ),
            next: 0,
        })
    }

    /// Inserts `rows` events, `rows_per_txn` per transaction, each transaction one new stream.
    pub fn insert(&mut self, rows: u64, rows_per_txn: u64) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let mut done = 0;
        while done < rows {
            let tx = self.conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO events (event_id, stream_id, version, event_type, source, subject,
                        time_ns, aggregate_type, partition_key, correlation_id, causation_id,
                        traceparent, schema_version, data)
                     VALUES (?1, ?2, ?3, 'BenchEvent', 'bench', NULL, ?4, 'Bench', NULL, NULL, NULL,
                        NULL, 1, ?5)",
                )?;
                let stream = format!("raw-{}", self.next);
                self.next += 1;
                for version in 1..=rows_per_txn.min(rows - done) {
                    let id = uuid::Uuid::now_v7();
                    stmt.execute(params![
                        &id.as_bytes()[..],
                        stream,
                        version as i64,
                        0i64,
                        self.payload
                    ])?;
                    done += 1;
                }
            }
            tx.commit()?;
        }
        Ok(started.elapsed())
    }
}

/// Inserts `rows` rows of `payload_bytes` bytes, `rows_per_txn` per transaction, into a fresh
/// bare table. Returns the elapsed time.
pub fn insert_loop(
    path: &Path,
    synchronous: Synchronous,
    rows: u64,
    rows_per_txn: u64,
    payload_bytes: usize,
) -> anyhow::Result<Duration> {
    RawTable::open(path, synchronous, payload_bytes)?.insert(rows, rows_per_txn)
}

/// Reads every row of the bare table (filled by `insert_loop`). Returns rows and elapsed time.
pub fn read_loop(path: &Path) -> anyhow::Result<(u64, Duration)> {
    let conn = Connection::open(path)?;
    let started = Instant::now();
    let mut stmt = conn.prepare("SELECT id, payload FROM bare ORDER BY id")?;
    let mut rows = stmt.query([])?;
    let mut n = 0u64;
    let mut bytes = 0usize;
    while let Some(row) = rows.next()? {
        let _id: i64 = row.get(0)?;
        let payload: Vec<u8> = row.get(1)?;
        bytes += payload.len();
        n += 1;
    }
    std::hint::black_box(bytes);
    Ok((n, started.elapsed()))
}
