//! The group-commit writer: one thread owns a database file's write connection.
//!
//! Callers submit units of work (synchronous closures over the open transaction) through a
//! channel. The writer takes every unit that is waiting, runs each inside its own
//! `SAVEPOINT` (a unit that fails or panics is rolled back to its savepoint and gets its own
//! error; the others are unaffected; the first unit of a transaction runs without one, as
//! rolling back the transaction undoes exactly it), commits once, and only then answers each caller. One
//! commit — one fsync with `synchronous=FULL` — serves everyone who was waiting, which is how
//! concurrent writers go faster than one commit at a time.
//!
//! A unit's closure must be short and only touch the database: slow or async work belongs
//! before it. It must not commit or roll back the transaction itself.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot, watch};
use tributary_core::{Error, Result};

use crate::sql_error::sql_error;
use crate::unit_of_work::SqliteTx;

/// Why a whole batch did not commit, shared by every unit in it.
#[derive(Clone, Debug)]
struct BatchFailure {
    message: String,
}

impl BatchFailure {
    fn from_sql(what: &str, e: rusqlite::Error) -> Self {
        Self {
            message: sql_error(what, e).to_string(),
        }
    }

    fn to_error(&self) -> Error {
        Error::unavailable("sqlite writer", self.message.clone())
    }
}

/// Delivers a unit's result once the batch's fate is known.
type Reply = Box<dyn FnOnce(Result<(), &BatchFailure>) + Send>;

trait Unit: Send {
    /// Runs the unit (inside a savepoint if `savepoint`) and returns whether it succeeded and
    /// how to answer its caller.
    fn run(self: Box<Self>, tx: &mut SqliteTx, savepoint: bool) -> (bool, Reply);
    /// Answers the caller without running (the batch could not start).
    fn fail(self: Box<Self>, failure: &BatchFailure);
}

struct Job<F, T, E> {
    unit: F,
    reply: oneshot::Sender<Result<T, E>>,
}

impl<F, T, E> Unit for Job<F, T, E>
where
    F: FnOnce(&mut SqliteTx) -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    fn run(self: Box<Self>, tx: &mut SqliteTx, savepoint: bool) -> (bool, Reply) {
        let outcome = if savepoint {
            in_savepoint(tx, self.unit)
        } else {
            guarded(tx, self.unit)
        };
        let reply = self.reply;
        let succeeded = outcome.is_ok();
        (
            succeeded,
            Box::new(move |batch| {
                let result = match (outcome, batch) {
                    (Err(e), _) => Err(e),
                    (Ok(value), Ok(())) => Ok(value),
                    (Ok(_), Err(failure)) => Err(E::from(failure.to_error())),
                };
                // The caller may have given up waiting; its unit committed anyway.
                let _ = reply.send(result);
            }),
        )
    }

    fn fail(self: Box<Self>, failure: &BatchFailure) {
        let _ = self.reply.send(Err(E::from(failure.to_error())));
    }
}

const SAVEPOINT: &str = "SAVEPOINT tributary_unit";
const RELEASE: &str = "RELEASE tributary_unit";
const ROLLBACK: &str = "ROLLBACK TO tributary_unit; RELEASE tributary_unit";
const BEGIN: &str = "BEGIN IMMEDIATE";
const COMMIT: &str = "COMMIT";

/// Runs one fixed statement through the statement cache (these run for every unit, and
/// `execute_batch` would parse them every time).
fn exec_cached(conn: &rusqlite::Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Runs `unit`, turning a panic into an error.
fn guarded<T, E: From<Error>>(
    tx: &mut SqliteTx,
    unit: impl FnOnce(&mut SqliteTx) -> Result<T, E>,
) -> Result<T, E> {
    tx.reset_nesting();
    match catch_unwind(AssertUnwindSafe(|| unit(&mut *tx))) {
        Ok(outcome) => outcome,
        Err(panic) => Err(E::from(Error::panicked("unit of work", panic.as_ref()))),
    }
}

fn in_savepoint<T, E: From<Error>>(
    tx: &mut SqliteTx,
    unit: impl FnOnce(&mut SqliteTx) -> Result<T, E>,
) -> Result<T, E> {
    exec_cached(tx.connection(), SAVEPOINT)
        .map_err(|e| E::from(sql_error("opening a savepoint", e)))?;
    match guarded(tx, unit) {
        Ok(value) => match exec_cached(tx.connection(), RELEASE) {
            Ok(()) => Ok(value),
            Err(e) => Err(E::from(sql_error("releasing a savepoint", e))),
        },
        Err(e) => {
            // If SQLite already rolled the whole transaction back (I/O error, disk full),
            // there is no savepoint left; the batch loop notices and fails everyone.
            if !tx.connection().is_autocommit() {
                let _ = tx.connection().execute_batch(ROLLBACK);
            }
            Err(e)
        }
    }
}

/// Counters of a writer since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Units of work run (committed or not).
    pub units: u64,
    /// Transactions committed.
    pub commits: u64,
}

#[derive(Default)]
struct Counters {
    units: AtomicU64,
    commits: AtomicU64,
}

/// Handle to a database file's writer thread. Cloning shares the same thread.
#[derive(Clone)]
pub struct Writer {
    units: mpsc::Sender<Box<dyn Unit>>,
    commits: watch::Receiver<u64>,
    counters: Arc<Counters>,
}

impl Writer {
    /// Starts the writer thread on `tx`'s connection, committing at most `max_units` units per commit.
    pub(crate) fn start(tx: SqliteTx, max_units: usize, name: &str) -> Result<Self> {
        let (units_tx, units_rx) = mpsc::channel(max_units.max(1) * 4);
        let (commits_tx, commits_rx) = watch::channel(0u64);
        let counters = Arc::new(Counters::default());
        let thread_counters = counters.clone();
        std::thread::Builder::new()
            .name(format!("tributary-writer-{name}"))
            .spawn(move || run(tx, units_rx, commits_tx, max_units.max(1), &thread_counters))
            .map_err(|e| Error::unavailable("sqlite writer thread", e))?;
        Ok(Self {
            units: units_tx,
            commits: commits_rx,
            counters,
        })
    }

    /// Runs `unit` in the next commit and returns its result once that commit is durable.
    ///
    /// # Errors
    /// The unit's own error (its changes are rolled back, others' are not), a panic in the unit
    /// as [`Error::Panicked`], or [`Error::Unavailable`] when the batch could not commit.
    pub async fn execute<T, E, F>(&self, unit: F) -> Result<T, E>
    where
        F: FnOnce(&mut SqliteTx) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        let shutdown = || {
            E::from(Error::Shutdown {
                what: "sqlite writer".into(),
            })
        };
        let (reply, answer) = oneshot::channel();
        self.units
            .send(Box::new(Job { unit, reply }))
            .await
            .map_err(|_| shutdown())?;
        answer.await.map_err(|_| shutdown())?
    }

    /// Changes after every successful commit made through this writer.
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.commits.clone()
    }

    pub fn stats(&self) -> WriterStats {
        WriterStats {
            units: self.counters.units.load(Ordering::Relaxed),
            commits: self.counters.commits.load(Ordering::Relaxed),
        }
    }
}

/// Waits for the next unit. A caller that just got its answer usually submits again within
/// microseconds, so the writer polls briefly before it parks: parking and being woken costs
/// more than the wait (measured: the round trip of an empty unit drops from ~20 to ~N µs).
fn next_unit(units: &mut mpsc::Receiver<Box<dyn Unit>>) -> Option<Box<dyn Unit>> {
    let spin_until = std::time::Instant::now() + SPIN;
    loop {
        match units.try_recv() {
            Ok(unit) => return Some(unit),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) if std::time::Instant::now() < spin_until => {
                std::thread::yield_now();
            }
            Err(mpsc::error::TryRecvError::Empty) => return units.blocking_recv(),
        }
    }
}

const SPIN: std::time::Duration = std::time::Duration::from_micros(50);

/// How long the writer waits for callers it expects back before it commits without them.
const GATHER: std::time::Duration = std::time::Duration::from_micros(60);

/// The sizes of the last few batches: how many callers are writing concurrently.
#[derive(Default)]
struct RecentBatches {
    sizes: [usize; 8],
    next: usize,
}

impl RecentBatches {
    fn record(&mut self, size: usize) {
        self.sizes[self.next] = size;
        self.next = (self.next + 1) % self.sizes.len();
    }

    /// The largest recent batch: callers answered by the last commit usually submit again
    /// within microseconds, and waiting for them turns alternating half-batches into full ones.
    fn expected(&self) -> usize {
        self.sizes.iter().copied().max().unwrap_or(1)
    }
}

/// Adds waiting units to `batch`; while it is smaller than `expected`, waits up to [`GATHER`]
/// for more.
fn gather(
    units: &mut mpsc::Receiver<Box<dyn Unit>>,
    batch: &mut Vec<Box<dyn Unit>>,
    max_units: usize,
    expected: usize,
) {
    let target = expected.min(max_units);
    let deadline = std::time::Instant::now() + GATHER;
    while batch.len() < max_units {
        match units.try_recv() {
            Ok(unit) => batch.push(unit),
            Err(mpsc::error::TryRecvError::Empty)
                if batch.len() < target && std::time::Instant::now() < deadline =>
            {
                std::thread::yield_now();
            }
            Err(_) => break,
        }
    }
}

fn run(
    mut tx: SqliteTx,
    mut units: mpsc::Receiver<Box<dyn Unit>>,
    commits: watch::Sender<u64>,
    max_units: usize,
    counters: &Counters,
) {
    let mut batch: Vec<Box<dyn Unit>> = Vec::with_capacity(max_units);
    let mut replies: Vec<Reply> = Vec::with_capacity(max_units);
    let mut recent = RecentBatches::default();
    while let Some(first) = next_unit(&mut units) {
        batch.push(first);
        gather(&mut units, &mut batch, max_units, recent.expected());
        if let Err(e) = exec_cached(tx.connection(), BEGIN) {
            let failure = BatchFailure::from_sql("starting a transaction", e);
            batch.drain(..).for_each(|unit| unit.fail(&failure));
            continue;
        }
        recent.record(batch.len());
        counters
            .units
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let mut aborted = None;
        // The first unit of a transaction needs no savepoint: if it fails, rolling back the
        // whole (otherwise empty) transaction is the same thing, and it spares the savepoint's
        // page copies in the common case of one unit per commit.
        let mut first_in_transaction = true;
        for unit in batch.drain(..) {
            if let Some(failure) = &aborted {
                unit.fail(failure);
                continue;
            }
            let (succeeded, reply) = unit.run(&mut tx, !first_in_transaction);
            replies.push(reply);
            if first_in_transaction && !succeeded {
                if !tx.connection().is_autocommit() {
                    let _ = tx.connection().execute_batch("ROLLBACK");
                }
                if let Err(e) = exec_cached(tx.connection(), BEGIN) {
                    aborted = Some(BatchFailure::from_sql("starting a transaction", e));
                }
                continue;
            }
            first_in_transaction = false;
            if tx.connection().is_autocommit() {
                aborted = Some(BatchFailure {
                    message: "sqlite rolled the transaction back after an error".into(),
                });
            }
        }
        let outcome = match aborted {
            Some(failure) => Err(failure),
            None => exec_cached(tx.connection(), COMMIT)
                .map_err(|e| BatchFailure::from_sql("committing", e)),
        };
        if outcome.is_err() && !tx.connection().is_autocommit() {
            let _ = tx.connection().execute_batch("ROLLBACK");
        }
        for reply in replies.drain(..) {
            reply(outcome.as_ref().map(|_| ()));
        }
        if outcome.is_ok() {
            counters.commits.fetch_add(1, Ordering::Relaxed);
            commits.send_modify(|n| *n += 1);
        }
    }
}
