//! The group-commit writer: one thread owns a database file's write connection.
//!
//! Callers submit units of work (synchronous closures over the open transaction) through a
//! channel. The writer takes every unit that is waiting, runs each inside its own
//! `SAVEPOINT` (a unit that fails or panics is rolled back to its savepoint and gets its own
//! error; the others are unaffected), commits once, and only then answers each caller. One
//! commit — one fsync with `synchronous=FULL` — serves everyone who was waiting, which is how
//! concurrent writers go faster than one commit at a time.
//!
//! A unit's closure must be short and only touch the database: slow or async work belongs
//! before it. It must not commit or roll back the transaction itself.

use std::panic::{AssertUnwindSafe, catch_unwind};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot, watch};
use tributary_core::{Error, Result};

use crate::sql_error::sql_error;

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
    /// Runs the unit inside its savepoint and returns how to answer its caller.
    fn run(self: Box<Self>, conn: &Connection) -> Reply;
    /// Answers the caller without running (the batch could not start).
    fn fail(self: Box<Self>, failure: &BatchFailure);
}

struct Job<F, T> {
    unit: F,
    reply: oneshot::Sender<Result<T>>,
}

impl<F, T> Unit for Job<F, T>
where
    F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    fn run(self: Box<Self>, conn: &Connection) -> Reply {
        let outcome = in_savepoint(conn, self.unit);
        let reply = self.reply;
        Box::new(move |batch| {
            let result = match (outcome, batch) {
                (Err(e), _) => Err(e),
                (Ok(value), Ok(())) => Ok(value),
                (Ok(_), Err(failure)) => Err(failure.to_error()),
            };
            // The caller may have given up waiting; its unit committed anyway.
            let _ = reply.send(result);
        })
    }

    fn fail(self: Box<Self>, failure: &BatchFailure) {
        let _ = self.reply.send(Err(failure.to_error()));
    }
}

const SAVEPOINT: &str = "SAVEPOINT tributary_unit";
const RELEASE: &str = "RELEASE tributary_unit";
const ROLLBACK: &str = "ROLLBACK TO tributary_unit; RELEASE tributary_unit";

fn in_savepoint<T>(conn: &Connection, unit: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    conn.execute_batch(SAVEPOINT)
        .map_err(|e| sql_error("opening a savepoint", e))?;
    let outcome = match catch_unwind(AssertUnwindSafe(|| unit(conn))) {
        Ok(outcome) => outcome,
        Err(panic) => Err(Error::panicked("unit of work", panic.as_ref())),
    };
    match outcome {
        Ok(value) => match conn.execute_batch(RELEASE) {
            Ok(()) => Ok(value),
            Err(e) => Err(sql_error("releasing a savepoint", e)),
        },
        Err(e) => {
            // If SQLite already rolled the whole transaction back (I/O error, disk full),
            // there is no savepoint left; the batch loop notices and fails everyone.
            if !conn.is_autocommit() {
                let _ = conn.execute_batch(ROLLBACK);
            }
            Err(e)
        }
    }
}

/// Handle to a database file's writer thread. Cloning shares the same thread.
#[derive(Clone)]
pub struct Writer {
    units: mpsc::Sender<Box<dyn Unit>>,
    commits: watch::Receiver<u64>,
}

impl Writer {
    /// Starts the writer thread on `conn`, committing at most `max_units` units per commit.
    pub(crate) fn start(conn: Connection, max_units: usize, name: &str) -> Result<Self> {
        let (units_tx, units_rx) = mpsc::channel(max_units.max(1) * 4);
        let (commits_tx, commits_rx) = watch::channel(0u64);
        std::thread::Builder::new()
            .name(format!("tributary-writer-{name}"))
            .spawn(move || run(conn, units_rx, commits_tx, max_units.max(1)))
            .map_err(|e| Error::unavailable("sqlite writer thread", e))?;
        Ok(Self {
            units: units_tx,
            commits: commits_rx,
        })
    }

    /// Runs `unit` in the next commit and returns its result once that commit is durable.
    ///
    /// # Errors
    /// The unit's own error (its changes are rolled back, others' are not), a panic in the unit
    /// as [`Error::Panicked`], or [`Error::Unavailable`] when the batch could not commit.
    pub async fn execute<T, F>(&self, unit: F) -> Result<T>
    where
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.units
            .send(Box::new(Job { unit, reply }))
            .await
            .map_err(|_| Error::Shutdown {
                what: "sqlite writer".into(),
            })?;
        answer.await.map_err(|_| Error::Shutdown {
            what: "sqlite writer".into(),
        })?
    }

    /// Changes after every successful commit made through this writer.
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.commits.clone()
    }
}

fn run(
    conn: Connection,
    mut units: mpsc::Receiver<Box<dyn Unit>>,
    commits: watch::Sender<u64>,
    max_units: usize,
) {
    let mut batch: Vec<Box<dyn Unit>> = Vec::with_capacity(max_units);
    let mut replies: Vec<Reply> = Vec::with_capacity(max_units);
    while let Some(first) = units.blocking_recv() {
        batch.push(first);
        while batch.len() < max_units {
            match units.try_recv() {
                Ok(unit) => batch.push(unit),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let failure = BatchFailure::from_sql("starting a transaction", e);
            batch.drain(..).for_each(|unit| unit.fail(&failure));
            continue;
        }
        let mut aborted = None;
        for unit in batch.drain(..) {
            if let Some(failure) = &aborted {
                unit.fail(failure);
                continue;
            }
            replies.push(unit.run(&conn));
            if conn.is_autocommit() {
                aborted = Some(BatchFailure {
                    message: "sqlite rolled the transaction back after an error".into(),
                });
            }
        }
        let outcome = match aborted {
            Some(failure) => Err(failure),
            None => conn
                .execute_batch("COMMIT")
                .map_err(|e| BatchFailure::from_sql("committing", e)),
        };
        if outcome.is_err() && !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        for reply in replies.drain(..) {
            reply(outcome.as_ref().map(|_| ()));
        }
        if outcome.is_ok() {
            commits.send_modify(|n| *n += 1);
        }
    }
}
