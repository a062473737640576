//! The SQLite service database as a [`Database`]: units of work on the group-commit writer,
//! document and dead-letter reads on the read pool, and the relay sources.

mod dead_letters;
mod lease;
mod relay_source;

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::params;
use tributary_core::backend::{Pending, PendingReason, Work, WorkError, validate_document_key};
use tributary_core::{
    Database, DeadLetterStore, Error, EventStore, GroupLock, GroupName, LeaseGuard, Payload,
    Position, RelaySource, Result, TokenEntry, Topic,
};

use crate::database::SqliteDatabase;
use crate::event_store::SqliteEventStore;
use crate::sql_error::SqlResultExt;

pub(crate) use dead_letters::decode as decode_dead_letter;
pub use relay_source::{SqliteEventsSource, SqliteOutboxSource};

#[async_trait]
impl Database for SqliteDatabase {
    async fn execute(&self, work: Work) -> Result<Box<dyn Any + Send>, WorkError> {
        let origin = work.origin().clone();
        self.write_unit(origin, move |tx| work.run(tx)).await
    }

    fn commits(&self) -> tokio::sync::watch::Receiver<u64> {
        SqliteDatabase::commits(self)
    }

    fn damage(&self) -> Option<String> {
        SqliteDatabase::damage(self)
    }

    async fn try_lock_group(
        &self,
        group: &GroupName,
        mode: GroupLock,
    ) -> Result<Option<Box<dyn LeaseGuard>>> {
        lease::try_file_lease(self, &format!("group-{group}"), mode).await
    }

    async fn get_document(&self, collection: &str, id: &str) -> Result<Option<Payload>> {
        validate_document_key(collection, id)?;
        let (collection, id) = (collection.to_owned(), id.to_owned());
        self.read(move |conn| {
            let body: Option<String> = rusqlite::OptionalExtension::optional(
                conn.prepare_cached(include_str!("../unit_of_work/get_document.sql"))
                    .context("preparing get_document")?
                    .query_row(params![collection, id], |r| r.get(0)),
            )
            .context("reading a document")?;
            body.map(|b| Payload::from_json_str(b).map_err(|e| Error::decode("document", e)))
                .transpose()
        })
        .await
    }

    async fn list_documents(
        &self,
        collection: &str,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<(String, Payload)>> {
        let (collection, after) = (collection.to_owned(), after.unwrap_or("").to_owned());
        self.read(move |conn| {
            let mut stmt = conn
                .prepare_cached(include_str!("list_documents.sql"))
                .context("preparing list_documents")?;
            let mut rows = stmt
                .query(params![
                    collection,
                    after,
                    max.min(i64::MAX as usize) as i64
                ])
                .context("listing documents")?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().context("listing documents")? {
                let id: String = row.get(0).context("reading a document id")?;
                let body: String = row.get(1).context("reading a document")?;
                out.push((
                    id,
                    Payload::from_json_str(body).map_err(|e| Error::decode("document", e))?,
                ));
            }
            Ok(out)
        })
        .await
    }

    async fn checkpoint(&self, name: &str) -> Result<Option<Position>> {
        let name = name.to_owned();
        self.read(move |conn| {
            let p: Option<i64> = rusqlite::OptionalExtension::optional(
                conn.prepare_cached(include_str!("../unit_of_work/get_checkpoint.sql"))
                    .context("preparing get_checkpoint")?
                    .query_row([name], |r| r.get(0)),
            )
            .context("reading a checkpoint")?;
            Ok(p.map(|p| Position::new(p as u64)))
        })
        .await
    }

    async fn drop_collection(&self, collection: &str) -> Result<u64> {
        let collection = collection.to_owned();
        self.write(move |tx| {
            tx.connection()
                .prepare_cached(include_str!("../unit_of_work/clear_collection.sql"))
                .context("preparing clear_collection")?
                .execute([collection])
                .context("clearing a collection")
                .map(|n| n as u64)
        })
        .await
    }

    fn event_store(&self) -> Arc<dyn EventStore> {
        Arc::new(SqliteEventStore::new(self.clone()))
    }

    fn outbox_source(&self) -> Arc<dyn RelaySource> {
        Arc::new(SqliteOutboxSource::new(self.clone()))
    }

    fn event_store_source(&self, name: &str, default_topic: Topic) -> Arc<dyn RelaySource> {
        Arc::new(SqliteEventsSource::new(self.clone(), name, default_topic))
    }

    fn dead_letters(&self) -> Arc<dyn DeadLetterStore> {
        Arc::new(dead_letters::SqliteDeadLetters::new(self.clone()))
    }

    async fn prune_inbox(&self, group: &GroupName, before: DateTime<Utc>) -> Result<u64> {
        // Small chunks, so that pruning a large inbox never holds the writer for long.
        const CHUNK: i64 = 5_000;
        let cutoff = before.timestamp_millis();
        let mut total = 0;
        loop {
            let group = group.as_str().to_owned();
            let n = self
                .write(move |tx| {
                    tx.connection()
                        .prepare_cached(include_str!("prune_inbox.sql"))
                        .context("preparing prune_inbox")?
                        .execute(params![group, cutoff, CHUNK])
                        .context("pruning the inbox")
                })
                .await?;
            total += n as u64;
            if (n as i64) < CHUNK {
                return Ok(total);
            }
        }
    }

    async fn relay_cursors(&self) -> Result<Vec<String>> {
        let names = self
            .read(|conn| {
                let mut statement = conn
                    .prepare_cached(include_str!("relay_cursor_names.sql"))
                    .context("preparing relay_cursor_names")?;
                let names = statement
                    .query_map([], |r| r.get::<_, String>(0))
                    .context("listing relay cursors")?;
                names
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .context("listing relay cursors")
            })
            .await?;
        Ok(tributary_core::backend::event_source_names(names))
    }

    async fn handled_since(&self, since: DateTime<Utc>) -> Result<Option<Vec<(GroupName, u64)>>> {
        let since = since.timestamp_millis();
        let rows = self
            .read(move |conn| {
                let mut statement = conn
                    .prepare_cached(include_str!("handled_since.sql"))
                    .context("preparing handled_since")?;
                let rows = statement
                    .query_map([since], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                    })
                    .context("counting recent inbox entries")?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
                    .context("counting recent inbox entries")
            })
            .await?;
        Ok(Some(tributary_core::backend::handled_counts(rows)))
    }

    fn poll_every(&self) -> Duration {
        self.config().poll_every
    }

    /// One writer, no row locks: a batch of messages costs one commit.
    fn messages_per_unit(&self) -> usize {
        256
    }

    async fn pending(&self, group: &GroupName, entries: &[TokenEntry]) -> Result<Vec<Pending>> {
        let (group, entries) = (group.as_str().to_owned(), entries.to_vec());
        self.read(move |conn| {
            let mut pending = Vec::new();
            for entry in entries {
                let reason = match entry {
                    TokenEntry::Write { id, .. } => {
                        let applied: Option<bool> = rusqlite::OptionalExtension::optional(
                            conn.prepare_cached(include_str!("inbox_applied.sql"))
                                .context("preparing inbox_applied")?
                                .query_row(params![group, &id.to_bytes()[..]], |r| r.get(0)),
                        )
                        .context("reading the inbox")?;
                        match applied {
                            None => Some(PendingReason::NotYet),
                            Some(false) => Some(PendingReason::DeadLettered),
                            Some(true) => None,
                        }
                    }
                    TokenEntry::FollowUp {
                        source,
                        correlation,
                        after,
                        ..
                    } => {
                        let found = rusqlite::OptionalExtension::optional(
                            conn.prepare_cached(include_str!("inbox_follow_up.sql"))
                                .context("preparing inbox_follow_up")?
                                .query_row(
                                    params![
                                        group,
                                        correlation as i64,
                                        source as i64,
                                        &after.to_bytes()[..]
                                    ],
                                    |_| Ok(()),
                                ),
                        )
                        .context("reading the inbox")?;
                        found.is_none().then_some(PendingReason::NotYet)
                    }
                };
                if let Some(reason) = reason {
                    pending.push(Pending { entry, reason });
                }
            }
            Ok(pending)
        })
        .await
    }
}
