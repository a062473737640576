//! A Tributary SQLite database file: one group-commit writer, a pool of readers.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use rusqlite::{Connection, OpenFlags};
use tokio::sync::{Semaphore, watch};
use tributary_core::{Error, Result};

use crate::config::SqliteConfig;
use crate::schema::{self, SqliteDatabaseKind};
use crate::sql_error::SqlResultExt;
use crate::unit_of_work::SqliteTx;
use crate::writer::{SqliteWriter, SqliteWriterStats};

/// An open Tributary database file. Cheap to clone; every clone (and every other `open` of
/// the same file in this process) shares one writer thread, so group commit spans all of them.
#[derive(Clone)]
pub struct SqliteDatabase {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    config: SqliteConfig,
    writer: SqliteWriter,
    readers: Arc<ReadPool>,
    /// The first corruption a read met after open (see [`SqliteDatabase::damage`]).
    damage: Mutex<Option<String>>,
    /// 1 once `damage` is set: alerting rules need no log parsing.
    damaged_gauge: metrics::Gauge,
}

/// Open databases of this process by canonical path: one writer per file.
fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<Inner>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<PathBuf, Weak<Inner>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

impl SqliteDatabase {
    /// Opens (creating if needed) a service database: event store, documents, outbox, inbox,
    /// views. Applies pending migrations.
    ///
    /// # Errors
    /// [`Error::Storage`] for a file that is not a Tributary service database or is from a
    /// newer version; [`Error::Unavailable`] when the file cannot be opened.
    pub fn open(path: impl AsRef<Path>, config: SqliteConfig) -> Result<Self> {
        Self::open_kind(path.as_ref(), config, SqliteDatabaseKind::Service)
    }

    pub(crate) fn open_kind(
        path: &Path,
        config: SqliteConfig,
        kind: SqliteDatabaseKind,
    ) -> Result<Self> {
        let mut registry = registry().lock().unwrap_or_else(|p| p.into_inner());
        registry.retain(|_, weak| weak.strong_count() > 0);
        // Open in this process already: checked then, and its writer may be checkpointing
        // into the file right now, which an immutable read must not meet.
        if let Some(inner) = path
            .canonicalize()
            .ok()
            .and_then(|canonical| registry.get(&canonical).and_then(Weak::upgrade))
        {
            return Ok(Self { inner });
        }
        // Before anything can change the file (the switch to WAL, its -wal and -shm files): a
        // foreign file is refused untouched.
        let found = crate::inspect::inspect(path, kind)?;
        let mut conn = open_connection(path, &config, false)?;
        let canonical = path
            .canonicalize()
            .map_err(|e| Error::unavailable(format!("database file {}", path.display()), e))?;
        if config.quick_check_on_open
            && matches!(found, crate::inspect::SqliteFileState::Tributary { .. })
        {
            quick_check(&conn, path)?;
        }
        schema::prepare(&mut conn, kind, &path.display().to_string())?;
        let name = path
            .file_stem()
            .map_or_else(|| "db".into(), |s| s.to_string_lossy().into_owned());
        let writer = SqliteWriter::start(
            SqliteTx::new(conn, config.max_event_bytes),
            config.max_units_per_commit,
            &name,
        )?;
        let readers = Arc::new(ReadPool {
            path: canonical.clone(),
            config: config.clone(),
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(config.read_connections)),
        });
        let damaged_gauge = metrics::gauge!("tributary_sqlite_damaged", "db" => name);
        damaged_gauge.set(0.0);
        let inner = Arc::new(Inner {
            path: canonical.clone(),
            config,
            writer,
            readers,
            damage: Mutex::new(None),
            damaged_gauge,
        });
        registry.insert(canonical, Arc::downgrade(&inner));
        Ok(Self { inner })
    }

    /// Runs the synchronous `unit` inside the next group commit; see [`SqliteWriter::execute`].
    ///
    /// # Errors
    /// As [`SqliteWriter::execute`].
    pub async fn write<T, E, F>(&self, unit: F) -> Result<T, E>
    where
        F: FnOnce(&mut SqliteTx) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        self.inner.writer.execute(unit).await
    }

    /// Runs the unit of work `unit` (an async closure) inside the next group commit; see
    /// [`SqliteWriter::execute_async`].
    ///
    /// # Errors
    /// As [`SqliteWriter::execute`].
    pub async fn write_unit<T, E, F>(
        &self,
        origin: tributary_core::backend::WorkOrigin,
        unit: F,
    ) -> Result<T, E>
    where
        F: for<'u> FnOnce(&'u mut SqliteTx) -> tributary_core::BoxFuture<'u, Result<T, E>>
            + Send
            + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        self.inner.writer.execute_async(origin, unit).await
    }

    /// Runs `query` on a read connection on a blocking thread. Reads see committed data only
    /// and never wait for the writer (WAL).
    ///
    /// # Errors
    /// The query's own error, or [`Error::Unavailable`] when no connection can be opened.
    pub async fn read<T, F>(&self, query: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let result = self.inner.readers.read(query).await;
        if let Err(e) = &result {
            self.note_damage(e);
        }
        result
    }

    /// Why some of this file cannot be read — the first corrupted page a read met since it was
    /// opened (the check at open sees only what was damaged before) — or `None`. Health and
    /// the `tributary_sqlite_damaged` gauge report it; the file must be restored from a
    /// backup, as SQLite cannot repair it.
    pub fn damage(&self) -> Option<String> {
        lock(&self.inner.damage).clone()
    }

    fn note_damage(&self, e: &Error) {
        if !is_corruption(e) {
            return;
        }
        let mut damage = lock(&self.inner.damage);
        if damage.is_none() {
            let path = self.inner.path.display();
            tracing::error!(database = %path, error = %e, "a read met a corrupted page: restore the file from a backup (PRAGMA integrity_check lists the damage)");
            *damage = Some(format!("{path} is corrupted: {e}"));
            self.inner.damaged_gauge.set(1.0);
        }
    }

    /// Changes after every commit made through this process's writer for this file.
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.inner.writer.commits()
    }

    /// Units and commits of this file's writer so far (units per commit shows group commit).
    pub fn writer_stats(&self) -> SqliteWriterStats {
        self.inner.writer.stats()
    }

    pub fn config(&self) -> &SqliteConfig {
        &self.inner.config
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

impl std::fmt::Debug for SqliteDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteDatabase")
            .field("path", &self.inner.path)
            .finish()
    }
}

fn open_connection(path: &Path, config: &SqliteConfig, read_only: bool) -> Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| Error::unavailable(format!("database file {}", path.display()), e))?;
    // SQLite falls back to read-only when it cannot open the file for writing (permissions,
    // a read-only mount); the service would start and then fail every write. Refused here,
    // before anything runs.
    if !read_only && conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false) {
        return Err(Error::storage_msg(format!(
            "{} can only be opened read-only (its permissions, its directory's, or a read-only \
             mount): a service must write to its database, and so must the -wal and -shm files \
             beside it",
            path.display()
        )));
    }
    conn.busy_timeout(config.busy_timeout)
        .context("setting the busy timeout")?;
    conn.set_prepared_statement_cache_capacity(64);
    if !read_only {
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| {
                if e.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase) {
                    Error::storage(format!("{} is not a SQLite database", path.display()), e)
                } else {
                    crate::sql_error::sql_error(&format!("enabling WAL on {}", path.display()), e)
                }
            })?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::storage_msg(format!(
                "{} cannot use WAL journaling (got {mode})",
                path.display()
            )));
        }
    }
    conn.execute_batch(&format!(
        "PRAGMA synchronous = {}; PRAGMA temp_store = MEMORY;",
        config.synchronous.pragma()
    ))
    .map_err(|e| {
        crate::sql_error::sql_error(
            &format!("configuring a connection to {}", path.display()),
            e,
        )
    })?;
    Ok(conn)
}

/// Refuses a damaged file at open, naming it, rather than letting the reads that happen to hit
/// a damaged page fail one by one later. `quick_check` reads every page once but skips the
/// index-against-table cross-checks of `integrity_check`: its cost grows with the file (a
/// sequential read of it), paid once per open in a process.
fn quick_check(conn: &Connection, path: &Path) -> Result<()> {
    let damaged = |detail: String| {
        Error::storage_msg(format!(
            "{} is damaged (SQLite quick_check: {detail}); restore it from a backup or move it away",
            path.display()
        ))
    };
    let mut statement = conn
        .prepare("PRAGMA quick_check(5)")
        .map_err(|e| damaged(e.to_string()))?;
    let problems: Vec<String> = statement
        .query_map([], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| damaged(e.to_string()))?;
    if problems.len() == 1 && problems[0] == "ok" {
        return Ok(());
    }
    Err(damaged(problems.join("; ")))
}

/// Read-only connections, used on blocking threads.
struct ReadPool {
    path: PathBuf,
    config: SqliteConfig,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl ReadPool {
    async fn read<T, F>(self: &Arc<Self>, query: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Shutdown {
                what: "sqlite readers".into(),
            })?;
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = pool.take()?;
            let outcome = catch_unwind(AssertUnwindSafe(|| query(&conn)));
            match outcome {
                Ok(result) => {
                    pool.give_back(conn);
                    result
                }
                // The connection may be mid-statement; drop it rather than reuse it.
                Err(panic) => Err(Error::panicked("read query", panic.as_ref())),
            }
        })
        .await
        .map_err(|e| Error::unavailable("sqlite reader thread", e))?
    }

    fn take(&self) -> Result<Connection> {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match idle {
            Some(conn) => Ok(conn),
            None => open_connection(&self.path, &self.config, true),
        }
    }

    fn give_back(&self, conn: Connection) {
        if conn.is_autocommit() {
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether `e` comes from SQLite finding the file corrupted (or no database at all).
fn is_corruption(e: &Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(sql) = c.downcast_ref::<rusqlite::Error>() {
            return matches!(
                sql.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
            );
        }
        cause = c.source();
    }
    false
}
