//! The PostgreSQL service database as a [`Database`]: units of work, document and
//! dead-letter reads on the pool, and the relay sources.

mod dead_letters;
mod lease;
mod relay_source;

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tributary_core::backend::{Pending, PendingReason, Work, WorkError, validate_document_key};
use tributary_core::{
    Database, DeadLetterStore, Error, EventStore, GroupLock, GroupName, LeaseGuard, Payload,
    Position, RelaySource, Result, TokenEntry, Topic,
};

use crate::database::PgDatabase;
use crate::error::SqlxResultExt;
use crate::event_store::{PgEventStore, limit};

pub use dead_letters::PgDeadLetters;
pub(crate) use dead_letters::decode as decode_dead_letter;
pub use lease::PgLease;
pub use relay_source::{PgEventsSource, PgOutboxSource};

#[async_trait]
impl Database for PgDatabase {
    async fn execute(&self, work: Work) -> Result<Box<dyn Any + Send>, WorkError> {
        crate::unit_of_work::execute(self, work).await
    }

    fn commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.commits_receiver()
    }

    async fn try_lock_group(
        &self,
        group: &GroupName,
        mode: GroupLock,
    ) -> Result<Option<Box<dyn LeaseGuard>>> {
        Ok(lease::try_lease(self, &format!("group {group}"), mode)
            .await?
            .map(|l| Box::new(l) as Box<dyn LeaseGuard>))
    }

    async fn get_document(&self, collection: &str, id: &str) -> Result<Option<Payload>> {
        validate_document_key(collection, id)?;
        let body: Option<String> = sqlx::query_scalar(self.inner.sql.read_document.sql())
            .bind(collection)
            .bind(id)
            .fetch_optional(self.pool())
            .await
            .context("reading a document")?;
        body.map(|b| Payload::from_json_str(b).map_err(|e| Error::decode("document", e)))
            .transpose()
    }

    async fn list_documents(
        &self,
        collection: &str,
        after: Option<&str>,
        max: usize,
    ) -> Result<Vec<(String, Payload)>> {
        let rows: Vec<(String, String)> = sqlx::query_as(self.inner.sql.list_documents.sql())
            .bind(collection)
            .bind(after.unwrap_or(""))
            .bind(limit(max))
            .fetch_all(self.pool())
            .await
            .context("listing documents")?;
        rows.into_iter()
            .map(|(id, body)| {
                Payload::from_json_str(body)
                    .map(|p| (id, p))
                    .map_err(|e| Error::decode("document", e))
            })
            .collect()
    }

    async fn checkpoint(&self, name: &str) -> Result<Option<Position>> {
        let p: Option<i64> = sqlx::query_scalar(self.inner.sql.get_checkpoint.sql())
            .bind(name)
            .fetch_optional(self.pool())
            .await
            .context("reading a checkpoint")?;
        // Positions are u64 stored bit for bit in a bigint.
        Ok(p.map(|p| Position::new(p as u64)))
    }

    async fn drop_collection(&self, collection: &str) -> Result<u64> {
        validate_document_key(collection, "-")?;
        let done = sqlx::query(self.inner.sql.clear_collection.sql())
            .bind(collection)
            .execute(self.pool())
            .await
            .context("dropping a collection")?;
        self.inner.committed();
        Ok(done.rows_affected())
    }

    fn event_store(&self) -> Arc<dyn EventStore> {
        Arc::new(PgEventStore::new(self.clone()))
    }

    fn outbox_source(&self) -> Arc<dyn RelaySource> {
        Arc::new(PgOutboxSource::new(self.clone()))
    }

    fn event_store_source(&self, name: &str, default_topic: Topic) -> Arc<dyn RelaySource> {
        Arc::new(PgEventsSource::new(self.clone(), name, default_topic))
    }

    fn dead_letters(&self) -> Arc<dyn DeadLetterStore> {
        Arc::new(PgDeadLetters::new(self.clone()))
    }

    async fn prune_inbox(
        &self,
        group: &tributary_core::GroupName,
        before: DateTime<Utc>,
    ) -> Result<u64> {
        // Small chunks, so that pruning a large inbox never holds locks for long.
        const CHUNK: i64 = 5_000;
        let mut total = 0;
        loop {
            let n = sqlx::query(self.inner.sql.prune_inbox.sql())
                .bind(group.as_str())
                .bind(before)
                .bind(CHUNK)
                .execute(self.pool())
                .await
                .context("pruning the inbox")?
                .rows_affected();
            total += n;
            if n < CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    async fn relay_cursors(&self) -> Result<Vec<String>> {
        let names: Vec<String> = sqlx::query_scalar(self.inner.sql.relay_cursor_names.sql())
            .fetch_all(self.pool())
            .await
            .context("listing relay cursors")?;
        Ok(tributary_core::backend::event_source_names(names))
    }

    async fn handled_since(&self, since: DateTime<Utc>) -> Result<Option<Vec<(GroupName, u64)>>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(self.inner.sql.handled_since.sql())
            .bind(since)
            .fetch_all(self.pool())
            .await
            .context("counting recent inbox entries")?;
        Ok(Some(tributary_core::backend::handled_counts(rows)))
    }

    async fn pending(&self, group: &GroupName, entries: &[TokenEntry]) -> Result<Vec<Pending>> {
        let sql = &self.inner.sql;
        let mut pending = Vec::new();
        let writes: Vec<&TokenEntry> = entries
            .iter()
            .filter(|e| matches!(e, TokenEntry::Write { .. }))
            .collect();
        if !writes.is_empty() {
            let ids: Vec<uuid::Uuid> = writes
                .iter()
                .filter_map(|e| match e {
                    TokenEntry::Write { id, .. } => Some(id.as_uuid()),
                    TokenEntry::FollowUp { .. } => None,
                })
                .collect();
            let rows: Vec<(i64, Option<bool>)> = sqlx::query_as(sql.inbox_applied.sql())
                .bind(group.as_str())
                .bind(&ids)
                .persistent(false)
                .fetch_all(self.pool())
                .await
                .context("reading the inbox")?;
            for (n, applied) in rows {
                let reason = match applied {
                    None => PendingReason::NotYet,
                    Some(false) => PendingReason::DeadLettered,
                    Some(true) => continue,
                };
                if let Some(entry) = usize::try_from(n - 1).ok().and_then(|i| writes.get(i)) {
                    pending.push(Pending {
                        entry: **entry,
                        reason,
                    });
                }
            }
        }
        let follow_ups: Vec<&TokenEntry> = entries
            .iter()
            .filter(|e| matches!(e, TokenEntry::FollowUp { .. }))
            .collect();
        if !follow_ups.is_empty() {
            let (mut correlations, mut sources, mut afters) = (Vec::new(), Vec::new(), Vec::new());
            for e in &follow_ups {
                if let TokenEntry::FollowUp {
                    source,
                    correlation,
                    after,
                    ..
                } = e
                {
                    correlations.push(*correlation as i64);
                    sources.push(*source as i64);
                    afters.push(after.as_uuid());
                }
            }
            let missing: Vec<i64> = sqlx::query_scalar(sql.inbox_follow_ups.sql())
                .bind(group.as_str())
                .bind(&correlations)
                .bind(&sources)
                .bind(&afters)
                .persistent(false)
                .fetch_all(self.pool())
                .await
                .context("reading the inbox")?;
            for n in missing {
                if let Some(entry) = usize::try_from(n - 1).ok().and_then(|i| follow_ups.get(i)) {
                    pending.push(Pending {
                        entry: **entry,
                        reason: PendingReason::NotYet,
                    });
                }
            }
        }
        Ok(pending)
    }

    fn poll_every(&self) -> Duration {
        self.inner.config.poll_every
    }
}
