//! The group-commit writer: one thread owns a database file's write connection.
//!
//! Callers submit units (closures over the open transaction; units of work are async closures
//! whose futures this thread drives) through a channel. The writer takes every unit that is
//! waiting, runs each inside its own `SAVEPOINT` (a unit that fails or panics is rolled back to
//! its savepoint and gets its own error; the others are unaffected; the first unit of a
//! transaction runs without one, as rolling back the transaction undoes exactly it), commits
//! once, counts the commit, and only then answers each caller — so a caller that has its answer
//! also sees its commit in [`Writer::commits`]. One commit — one fsync with `synchronous=FULL`
//! — serves everyone who was waiting, which is how concurrent writers go faster than one
//! commit at a time.
//!
//! A unit must be short and only touch the database: the writer runs the units of a batch one
//! after the other, so a unit whose future waits for something else (a network call, a timer,
//! another task) stalls every writer of the file. Such a wait is detected: the first one of
//! each unit origin is logged with how long it lasted, and every one is counted in
//! [`WriterStats::stalls`]. A unit must not commit or roll back the transaction itself.

use std::collections::HashSet;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tributary_core::backend::WorkOrigin;
use tributary_core::{BoxFuture, Error, Result};

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

/// What the writer thread keeps between units: how to wake itself, and what it reported.
struct WriterThread {
    waker: Waker,
    file: String,
    counters: Arc<Counters>,
    reported_stalls: HashSet<String>,
    metrics: WriterMetrics,
}

/// What the writer records through the `metrics` facade (a no-op without an exporter), per
/// database file: how many units each commit served, and how long a transaction took from
/// `BEGIN` to the end of its `COMMIT` (the fsync included).
struct WriterMetrics {
    units_per_commit: metrics::Histogram,
    commit_seconds: metrics::Histogram,
}

impl WriterMetrics {
    fn new(db: &str) -> Self {
        Self {
            units_per_commit: metrics::histogram!("tributary_sqlite_units_per_commit", "db" => db.to_owned()),
            commit_seconds: metrics::histogram!("tributary_sqlite_commit_seconds", "db" => db.to_owned()),
        }
    }
}

trait Unit: Send {
    /// Runs the unit (inside a savepoint if `savepoint`) and returns whether it succeeded and
    /// how to answer its caller.
    fn run(
        self: Box<Self>,
        tx: &mut SqliteTx,
        savepoint: bool,
        thread: &mut WriterThread,
    ) -> (bool, Reply);
    /// Answers the caller without running (the batch could not start).
    fn fail(self: Box<Self>, failure: &BatchFailure);
}

/// A synchronous unit (the event store's and the broker's own writes).
struct Job<F, T, E> {
    unit: F,
    reply: oneshot::Sender<Result<T, E>>,
}

/// A unit of work: an async closure whose future the writer drives.
struct AsyncJob<F, T, E> {
    unit: F,
    origin: WorkOrigin,
    /// The runtime of the caller, entered while the future runs, so that a unit that does
    /// await a tokio timer or channel works (slowly, and reported) instead of panicking.
    runtime: Option<tokio::runtime::Handle>,
    reply: oneshot::Sender<Result<T, E>>,
}

fn answer<T: Send + 'static, E: From<Error> + Send + 'static>(
    outcome: Result<T, E>,
    reply: oneshot::Sender<Result<T, E>>,
) -> (bool, Reply) {
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

impl<F, T, E> Unit for Job<F, T, E>
where
    F: FnOnce(&mut SqliteTx) -> Result<T, E> + Send + 'static,
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    fn run(
        self: Box<Self>,
        tx: &mut SqliteTx,
        savepoint: bool,
        _thread: &mut WriterThread,
    ) -> (bool, Reply) {
        answer(in_unit(tx, savepoint, self.unit), self.reply)
    }

    fn fail(self: Box<Self>, failure: &BatchFailure) {
        let _ = self.reply.send(Err(E::from(failure.to_error())));
    }
}

impl<F, T, E> Unit for AsyncJob<F, T, E>
where
    F: for<'u> FnOnce(&'u mut SqliteTx) -> BoxFuture<'u, Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    fn run(
        self: Box<Self>,
        tx: &mut SqliteTx,
        savepoint: bool,
        thread: &mut WriterThread,
    ) -> (bool, Reply) {
        let AsyncJob {
            unit,
            origin,
            runtime,
            reply,
        } = *self;
        let _entered = runtime.as_ref().map(tokio::runtime::Handle::enter);
        let outcome = in_unit(tx, savepoint, |tx| {
            let (outcome, stalled) = drive(unit(tx), &thread.waker);
            if let Some(stalled) = stalled {
                thread.stalled(&origin, stalled);
            }
            outcome
        });
        answer(outcome, reply)
    }

    fn fail(self: Box<Self>, failure: &BatchFailure) {
        let _ = self.reply.send(Err(E::from(failure.to_error())));
    }
}

/// Wakes the writer thread parked in [`drive`].
struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs `future` to completion on this thread. Returns its output and, if it ever waited for
/// something outside the database, for how long it waited in all.
fn drive<T>(future: impl Future<Output = T>, waker: &Waker) -> (T, Option<Duration>) {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(waker);
    let mut waited = None::<Duration>;
    loop {
        if let Poll::Ready(value) = future.as_mut().poll(&mut cx) {
            return (value, waited);
        }
        // Only a unit awaiting something that is not its database gets here: the database
        // calls of a SQLite unit complete at once.
        let since = Instant::now();
        std::thread::park();
        *waited.get_or_insert(Duration::ZERO) += since.elapsed();
    }
}

impl WriterThread {
    fn stalled(&mut self, origin: &WorkOrigin, waited: Duration) {
        self.counters.stalls.fetch_add(1, Ordering::Relaxed);
        let origin = origin.to_string();
        // Bounded: a burst of distinct origins cannot grow it without limit.
        if self.reported_stalls.len() < 1024 && self.reported_stalls.insert(origin.clone()) {
            tracing::warn!(
                database = %self.file,
                waited_ms = waited.as_secs_f64() * 1000.0,
                "{origin} awaited something outside its database while it held the writer; \
                 every other writer of this file waited too. Do slow or remote work before the \
                 unit (reported once per unit; counted in the writer's stalls)"
            );
        }
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

/// Runs `unit` (in a savepoint of its own if `savepoint`), turning a panic into an error.
fn in_unit<T, E: From<Error>>(
    tx: &mut SqliteTx,
    savepoint: bool,
    unit: impl FnOnce(&mut SqliteTx) -> Result<T, E>,
) -> Result<T, E> {
    if savepoint {
        in_savepoint(tx, unit)
    } else {
        guarded(tx, unit)
    }
}

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
pub struct SqliteWriterStats {
    /// Units of work run (committed or not).
    pub units: u64,
    /// Transactions committed.
    pub commits: u64,
    /// Units whose future waited for something outside the database while holding the writer.
    pub stalls: u64,
}

#[derive(Default)]
struct Counters {
    units: AtomicU64,
    commits: AtomicU64,
    stalls: AtomicU64,
}

/// Handle to a database file's writer thread. Cloning shares the same thread.
#[derive(Clone)]
pub struct SqliteWriter {
    thread: Arc<WriterHandle>,
    commits: watch::Receiver<u64>,
    counters: Arc<Counters>,
}

/// The only sender to the writer thread, and the thread: when the last [`SqliteWriter`] goes,
/// the sender is dropped and the thread joined, so that "every handle dropped" means "the
/// connection is closed" — a caller may then reopen, copy or replace the file at once.
struct WriterHandle {
    units: Option<mpsc::Sender<Box<dyn Unit>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for WriterHandle {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop once it has run what is queued.
        drop(self.units.take());
        let Some(thread) = self.thread.take() else {
            return;
        };
        // A unit's future that owned the last handle is dropped on the writer thread itself;
        // that thread ends on its own when it returns to its loop.
        if thread.thread().id() != std::thread::current().id() {
            let _ = thread.join();
        }
    }
}

/// Something the writer thread calls after it has answered a batch's callers: tests use it
/// to hold the writer there and look at what a caller can see.
#[cfg(test)]
type AfterReplies = Arc<dyn Fn() + Send + Sync>;

impl SqliteWriter {
    /// Starts the writer thread on `tx`'s connection, committing at most `max_units` units per commit.
    pub(crate) fn start(tx: SqliteTx, max_units: usize, name: &str) -> Result<Self> {
        Self::start_with(
            tx,
            max_units,
            name,
            #[cfg(test)]
            None,
        )
    }

    fn start_with(
        tx: SqliteTx,
        max_units: usize,
        name: &str,
        #[cfg(test)] after_replies: Option<AfterReplies>,
    ) -> Result<Self> {
        let (units_tx, units_rx) = mpsc::channel(max_units.max(1) * 4);
        let (commits_tx, commits_rx) = watch::channel(0u64);
        let counters = Arc::new(Counters::default());
        let thread_counters = counters.clone();
        let file = name.to_owned();
        let thread = std::thread::Builder::new()
            .name(format!("tributary-writer-{name}"))
            .spawn(move || {
                let thread = WriterThread {
                    waker: Waker::from(Arc::new(ThreadWaker(std::thread::current()))),
                    metrics: WriterMetrics::new(&file),
                    file,
                    counters: thread_counters,
                    reported_stalls: HashSet::new(),
                };
                run(
                    tx,
                    units_rx,
                    commits_tx,
                    max_units.max(1),
                    thread,
                    #[cfg(test)]
                    after_replies,
                )
            })
            .map_err(|e| Error::unavailable("sqlite writer thread", e))?;
        Ok(Self {
            thread: Arc::new(WriterHandle {
                units: Some(units_tx),
                thread: Some(thread),
            }),
            commits: commits_rx,
            counters,
        })
    }

    /// Runs the synchronous `unit` in the next commit and returns its result once that commit
    /// is durable.
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
        let (reply, answer) = oneshot::channel();
        self.submit(Box::new(Job { unit, reply }), answer).await
    }

    /// Runs the unit of work `unit` (an async closure) in the next commit, its future driven
    /// by the writer thread, and returns its result once that commit is durable.
    ///
    /// # Errors
    /// As [`SqliteWriter::execute`].
    pub async fn execute_async<T, E, F>(&self, origin: WorkOrigin, unit: F) -> Result<T, E>
    where
        F: for<'u> FnOnce(&'u mut SqliteTx) -> BoxFuture<'u, Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = AsyncJob {
            unit,
            origin,
            runtime: tokio::runtime::Handle::try_current().ok(),
            reply,
        };
        self.submit(Box::new(job), answer).await
    }

    async fn submit<T, E: From<Error>>(
        &self,
        job: Box<dyn Unit>,
        answer: oneshot::Receiver<Result<T, E>>,
    ) -> Result<T, E> {
        let shutdown = || {
            E::from(Error::Shutdown {
                what: "sqlite writer".into(),
            })
        };
        let units = self.thread.units.as_ref().ok_or_else(shutdown)?;
        units.send(job).await.map_err(|_| shutdown())?;
        answer.await.map_err(|_| shutdown())?
    }

    /// Changes after every successful commit made through this writer, before its callers
    /// are answered.
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.commits.clone()
    }

    pub fn stats(&self) -> SqliteWriterStats {
        SqliteWriterStats {
            units: self.counters.units.load(Ordering::Relaxed),
            commits: self.counters.commits.load(Ordering::Relaxed),
            stalls: self.counters.stalls.load(Ordering::Relaxed),
        }
    }
}

/// Waits for the next unit. A caller that just got its answer usually submits again within
/// microseconds, so the writer polls briefly before it parks: parking and being woken costs
/// more than the wait (measured: the round trip of an empty unit drops from ~20 to ~N µs).
fn next_unit(units: &mut mpsc::Receiver<Box<dyn Unit>>) -> Option<Box<dyn Unit>> {
    let spin_until = Instant::now() + SPIN;
    loop {
        match units.try_recv() {
            Ok(unit) => return Some(unit),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) if Instant::now() < spin_until => {
                std::thread::yield_now();
            }
            Err(mpsc::error::TryRecvError::Empty) => return units.blocking_recv(),
        }
    }
}

const SPIN: Duration = Duration::from_micros(50);

/// How long the writer waits for callers it expects back before it commits without them.
const GATHER: Duration = Duration::from_micros(60);

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
    let deadline = Instant::now() + GATHER;
    while batch.len() < max_units {
        match units.try_recv() {
            Ok(unit) => batch.push(unit),
            Err(mpsc::error::TryRecvError::Empty)
                if batch.len() < target && Instant::now() < deadline =>
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
    mut thread: WriterThread,
    #[cfg(test)] after_replies: Option<AfterReplies>,
) {
    let mut batch: Vec<Box<dyn Unit>> = Vec::with_capacity(max_units);
    let mut replies: Vec<Reply> = Vec::with_capacity(max_units);
    let mut recent = RecentBatches::default();
    while let Some(first) = next_unit(&mut units) {
        batch.push(first);
        gather(&mut units, &mut batch, max_units, recent.expected());
        let began = Instant::now();
        let batch_units = batch.len();
        if let Err(e) = exec_cached(tx.connection(), BEGIN) {
            let failure = BatchFailure::from_sql("starting a transaction", e);
            batch.drain(..).for_each(|unit| unit.fail(&failure));
            continue;
        }
        recent.record(batch.len());
        thread
            .counters
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
            let (succeeded, reply) = unit.run(&mut tx, !first_in_transaction, &mut thread);
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
        // Counted before anyone is answered: a caller that has seen its own commit must see
        // it in the count too (whoever waits on `commits()` right after a write relies on it).
        if outcome.is_ok() {
            thread.counters.commits.fetch_add(1, Ordering::Relaxed);
            commits.send_modify(|n| *n += 1);
            thread.metrics.units_per_commit.record(batch_units as f64);
            thread
                .metrics
                .commit_seconds
                .record(began.elapsed().as_secs_f64());
        }
        for reply in replies.drain(..) {
            reply(outcome.as_ref().map(|_| ()));
        }
        #[cfg(test)]
        if let Some(hook) = &after_replies {
            hook();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A writer on a fresh file whose thread stops after answering each batch until the test
    /// lets it go on.
    fn held_writer(dir: &tempfile::TempDir) -> (SqliteWriter, std::sync::mpsc::Sender<()>) {
        let conn = rusqlite::Connection::open(dir.path().join("w.db")).expect("open");
        conn.execute_batch("CREATE TABLE t (n INTEGER)")
            .expect("table");
        let (go, gate) = std::sync::mpsc::channel::<()>();
        let gate = Mutex::new(gate);
        let hook: AfterReplies = Arc::new(move || {
            let _ = gate.lock().map(|g| g.recv());
        });
        let writer = SqliteWriter::start_with(SqliteTx::new(conn, 1 << 20), 8, "w", Some(hook))
            .expect("writer");
        (writer, go)
    }

    #[tokio::test]
    async fn a_commit_is_counted_before_its_caller_is_answered() {
        let dir = tempfile::tempdir().expect("dir");
        let (writer, go) = held_writer(&dir);
        let commits = writer.commits();
        for round in 1..=3u64 {
            writer
                .execute(|tx| {
                    tx.connection()
                        .execute("INSERT INTO t VALUES (1)", [])
                        .map_err(|e| sql_error("inserting", e))
                })
                .await
                .expect("unit");
            // The writer is now held right after answering: nothing after the replies ran.
            assert_eq!(
                *commits.borrow(),
                round,
                "the caller was answered before its commit was counted"
            );
            go.send(()).expect("release the writer");
        }
    }

    #[tokio::test]
    async fn a_unit_that_awaits_something_else_is_counted_as_a_stall() {
        let dir = tempfile::tempdir().expect("dir");
        let conn = rusqlite::Connection::open(dir.path().join("s.db")).expect("open");
        let writer = SqliteWriter::start(SqliteTx::new(conn, 1 << 20), 8, "s").expect("writer");
        let quick: Result<()> = writer
            .execute_async(WorkOrigin::Task("quick".into()), |_tx| {
                Box::pin(async { Ok(()) })
            })
            .await;
        quick.expect("quick unit");
        assert_eq!(
            writer.stats().stalls,
            0,
            "a unit that only touches the database"
        );
        let slow: Result<()> = writer
            .execute_async(WorkOrigin::Task("slow".into()), |_tx| {
                Box::pin(async {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Ok(())
                })
            })
            .await;
        slow.expect("slow unit completes");
        assert_eq!(writer.stats().stalls, 1);
    }
}
