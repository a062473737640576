//! For implementing a backend or the runtime, not for applications.
//!
//! A backend implements [`crate::Database`] by running [`Work`] in a transaction that
//! implements [`ConsumerTx`]: the application's [`crate::UnitOfWork`] plus what the consumer
//! runtime needs (the inbox, dead letters, checkpoints, nested savepoints). The validation
//! helpers are the checks every backend makes before it writes, so that all of them refuse
//! the same input with the same error.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::panic::Location;
use std::sync::Arc;

use async_trait::async_trait;

use crate::consistency::{TokenEntry, name_hash};
use crate::dead_letter::{DeadLetter, DeadLetterId, NewDeadLetter, Resolution};
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::ids::{EventId, Position};
use crate::topic::GroupName;
use crate::unit_of_work::{BoxFuture, UnitOfWork};

pub use crate::event_store::{StoredAt, dedup_outcome, validate_batch};

#[cfg(feature = "sqlx")]
pub use crate::driver_errors::sqlstate;

/// What the consumer runtime needs inside a unit besides the application's view: the inbox,
/// dead letters, checkpoints and nested savepoints.
#[async_trait]
pub trait ConsumerTx: UnitOfWork {
    /// Whether `group` already processed message `id`.
    async fn inbox_contains(&mut self, group: &GroupName, id: &EventId) -> Result<bool>;

    /// Records that `group` dealt with a message (see [`InboxEntry`]).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when it was already recorded.
    async fn inbox_insert(&mut self, group: &GroupName, entry: &InboxEntry) -> Result<()>;

    /// Records that `group` applied a message it had dealt with without applying it (a dead
    /// letter that was replayed), or records it applied if it was not recorded at all.
    async fn inbox_mark_applied(&mut self, group: &GroupName, entry: &InboxEntry) -> Result<()>;

    /// Forgets every message `group` processed (before rebuilding its view); returns how many.
    async fn clear_inbox(&mut self, group: &GroupName) -> Result<u64>;

    /// The oldest unresolved dead letter of `group` with `key`: later messages with that key
    /// must be parked behind it.
    async fn blocking_dead_letter(
        &mut self,
        group: &GroupName,
        key: &str,
    ) -> Result<Option<DeadLetterId>>;

    /// Which of `ids` `group` already processed. A networked database answers in one round
    /// trip; the default asks [`ConsumerTx::inbox_contains`] for each.
    async fn inbox_seen(&mut self, group: &GroupName, ids: &[EventId]) -> Result<HashSet<EventId>> {
        let mut seen = HashSet::new();
        for id in ids {
            if self.inbox_contains(group, id).await? {
                seen.insert(*id);
            }
        }
        Ok(seen)
    }

    /// Records each of `entries`, as [`ConsumerTx::inbox_insert`] does for one.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when one of them was already recorded.
    async fn inbox_insert_all(&mut self, group: &GroupName, entries: &[InboxEntry]) -> Result<()> {
        for entry in entries {
            self.inbox_insert(group, entry).await?;
        }
        Ok(())
    }

    /// [`ConsumerTx::blocking_dead_letter`] for each of `keys` that has one.
    async fn blocking_dead_letters(
        &mut self,
        group: &GroupName,
        keys: &[&str],
    ) -> Result<HashMap<String, DeadLetterId>> {
        let mut blockers = HashMap::new();
        for key in keys {
            if let Some(id) = self.blocking_dead_letter(group, key).await? {
                blockers.insert((*key).to_owned(), id);
            }
        }
        Ok(blockers)
    }

    async fn insert_dead_letter(&mut self, letter: NewDeadLetter) -> Result<DeadLetterId>;

    /// A dead letter, resolved or not.
    async fn dead_letter(&mut self, id: DeadLetterId) -> Result<Option<DeadLetter>>;

    /// Marks a dead letter resolved; it no longer blocks its key.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an unknown or already resolved dead letter.
    async fn resolve_dead_letter(&mut self, id: DeadLetterId, resolution: Resolution)
    -> Result<()>;

    /// Records another failed attempt on an unresolved dead letter.
    async fn record_dead_letter_failure(&mut self, id: DeadLetterId, reason: &str) -> Result<()>;

    /// A named position (of a subscription or projection) stored with the data it covers.
    /// The read holds the checkpoint until the unit ends: another unit changing it (a rebuild's
    /// reset) commits before this read or after this unit, never in between.
    async fn checkpoint(&mut self, name: &str) -> Result<Option<Position>>;

    async fn set_checkpoint(&mut self, name: &str, position: Position) -> Result<()>;

    /// Opens a nested savepoint; pair with [`ConsumerTx::release_savepoint`] or
    /// [`ConsumerTx::rollback_savepoint`].
    async fn savepoint(&mut self) -> Result<()>;

    async fn release_savepoint(&mut self) -> Result<()>;

    async fn rollback_savepoint(&mut self) -> Result<()>;

    /// The consumer runtime is about to run the handler of the unit's message number `index`.
    /// A backend that holds writes until commit tags them with it, so that a write refused at
    /// commit names its message in [`Error::Refused`].
    fn start_message(&mut self, index: usize) {
        let _ = index;
    }
}

/// A message a consumer group dealt with, as its inbox records it: by id (a redelivery finds
/// it and is skipped), whether its handler applied it (a dead-lettered or parked message was
/// dealt with but not applied), and what a consistency token's follow-ups ask about it (see
/// [`crate::ConsistencyToken`]): its source and correlation, hashed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InboxEntry {
    pub id: EventId,
    pub applied: bool,
    pub source: u64,
    pub correlation: Option<u64>,
}

impl InboxEntry {
    /// The entry of `event`, applied or not.
    pub fn of(event: &Envelope, applied: bool) -> Self {
        Self {
            id: event.id,
            applied,
            source: name_hash(&event.source),
            correlation: event.correlation_id.as_deref().map(name_hash),
        }
    }

    /// The entry of a message that could not be decoded (never applied).
    pub fn undecodable(id: EventId) -> Self {
        Self {
            id,
            applied: false,
            source: 0,
            correlation: None,
        }
    }
}

/// Why a write a token covers is not applied by a view yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PendingReason {
    /// The view has not dealt with it (not delivered yet, or still being handled).
    NotYet,
    /// The view dealt with it without applying it: it is a dead letter (or parked behind one).
    DeadLettered,
}

/// A write of a consistency token that a view has not applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    pub entry: TokenEntry,
    pub reason: PendingReason,
}

/// Why a unit of work did not commit: the store failed, or the work itself chose to stop
/// (with the caller's own error, carried back untouched). Either way nothing was written.
#[derive(Debug)]
pub enum WorkError {
    Failed(Error),
    Aborted(Box<dyn Any + Send>),
}

impl From<Error> for WorkError {
    fn from(e: Error) -> Self {
        WorkError::Failed(e)
    }
}

/// Where a unit of work comes from, for diagnostics (e.g. SQLite's report of a unit that
/// stalled the writer).
#[derive(Clone, Debug)]
pub enum WorkOrigin {
    /// The call of `Database::transact`.
    Caller(&'static Location<'static>),
    /// A long-running task, e.g. a consumer group.
    Task(Arc<str>),
}

impl fmt::Display for WorkOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkOrigin::Caller(at) => write!(f, "the unit of work at {at}"),
            WorkOrigin::Task(name) => write!(f, "a unit of work of {name}"),
        }
    }
}

type WorkFn = Box<
    dyn for<'u> FnOnce(
            &'u mut dyn ConsumerTx,
        ) -> BoxFuture<'u, Result<Box<dyn Any + Send>, WorkError>>
        + Send,
>;

/// A unit of work with its result type erased, as a backend runs it.
pub struct Work {
    origin: WorkOrigin,
    run: WorkFn,
}

impl Work {
    pub fn new<F>(origin: WorkOrigin, run: F) -> Self
    where
        F: for<'u> FnOnce(
                &'u mut dyn ConsumerTx,
            ) -> BoxFuture<'u, Result<Box<dyn Any + Send>, WorkError>>
            + Send
            + 'static,
    {
        Self {
            origin,
            run: Box::new(run),
        }
    }

    pub fn origin(&self) -> &WorkOrigin {
        &self.origin
    }

    /// The unit's future over `tx`.
    pub fn run(
        self,
        tx: &mut dyn ConsumerTx,
    ) -> BoxFuture<'_, Result<Box<dyn Any + Send>, WorkError>> {
        (self.run)(tx)
    }
}

impl fmt::Debug for Work {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Work")
            .field("origin", &self.origin)
            .finish()
    }
}

/// Checks that a document key is usable everywhere (collection 1 to 128 bytes, id 1 to 512).
///
/// # Errors
/// [`Error::InvalidInput`].
pub fn validate_document_key(collection: &str, id: &str) -> Result<()> {
    if collection.contains('\0') || id.contains('\0') {
        return Err(Error::invalid(
            "a document's collection and id cannot contain the NUL character",
        ));
    }
    if collection.is_empty() || collection.len() > 128 {
        return Err(Error::invalid(format!(
            "collection name must be 1 to 128 bytes, got {} bytes",
            collection.len()
        )));
    }
    if id.is_empty() || id.len() > 512 {
        return Err(Error::invalid(format!(
            "document id must be 1 to 512 bytes, got {} bytes",
            id.len()
        )));
    }
    Ok(())
}

/// Checks that a document can be stored by every backend: PostgreSQL's `jsonb` refuses the
/// NUL character (`\u0000` in JSON text), so it is refused everywhere, at the call that writes
/// it, with the document named.
///
/// # Errors
/// [`Error::InvalidInput`].
pub fn validate_document(collection: &str, id: &str, json: &str) -> Result<()> {
    if contains_escaped_nul(json) {
        return Err(Error::invalid(format!(
            "document {collection}/{id} contains the NUL character (\\u0000), which cannot be stored"
        )));
    }
    Ok(())
}

/// Whether JSON text holds the escape `\u0000` (and not an escaped backslash followed by the
/// text `u0000`).
fn contains_escaped_nul(json: &str) -> bool {
    let bytes = json.as_bytes();
    let mut from = 0;
    while let Some(found) = json[from..].find("u0000") {
        let at = from + found;
        let backslashes = bytes[..at]
            .iter()
            .rev()
            .take_while(|&&b| b == b'\\')
            .count();
        if backslashes % 2 == 1 {
            return true;
        }
        from = at + 1;
    }
    false
}

/// The relay cursor (and lease) name of the event-store source called `name`.
pub fn events_cursor(name: &str) -> String {
    format!("{EVENTS_CURSOR_PREFIX}{name}")
}

const EVENTS_CURSOR_PREFIX: &str = "events:";

/// The source names behind stored relay cursor names (see [`events_cursor`]); other rows are
/// not event-store cursors and are left out.
pub fn event_source_names(cursors: Vec<String>) -> Vec<String> {
    cursors
        .into_iter()
        .filter_map(|c| c.strip_prefix(EVENTS_CURSOR_PREFIX).map(str::to_owned))
        .collect()
}

/// `(group, count)` rows of an inbox count as [`crate::Database::handled_since`] returns them.
/// A group name that is not valid (a row no Tributary consumer wrote) is left out.
pub fn handled_counts(rows: Vec<(String, i64)>) -> Vec<(GroupName, u64)> {
    rows.into_iter()
        .filter_map(|(g, n)| Some((GroupName::new(g).ok()?, n.max(0) as u64)))
        .collect()
}

/// Counts an event-store append through the `metrics` facade (a no-op without an exporter):
/// `tributary_event_store_appends_total` and `…_appended_events_total` for appends that wrote,
/// `…_conflicts_total` for stale expected versions, by `backend`. Backends call it where the
/// append statement ran; an append inside a unit that later rolls back is still counted.
pub fn count_append(backend: &'static str, events: usize, outcome: &Result<crate::AppendOutcome>) {
    match outcome {
        Ok(o) if !o.deduplicated => {
            metrics::counter!("tributary_event_store_appends_total", "backend" => backend)
                .increment(1);
            metrics::counter!("tributary_event_store_appended_events_total", "backend" => backend)
                .increment(events as u64);
        }
        Ok(_) => {}
        Err(Error::Conflict { .. }) => {
            metrics::counter!("tributary_event_store_conflicts_total", "backend" => backend)
                .increment(1);
        }
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_escaped_nul_is_refused() {
        assert!(contains_escaped_nul(r#"{"a":"x\u0000y"}"#));
        assert!(contains_escaped_nul(r#"{"a":"\\\u0000"}"#));
        assert!(!contains_escaped_nul(r#"{"a":"\\u0000"}"#));
        assert!(!contains_escaped_nul(r#"{"a":"u0000"}"#));
        assert!(!contains_escaped_nul(r#"{"a":"\u0001"}"#));
    }
}
