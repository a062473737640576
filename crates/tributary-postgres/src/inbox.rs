//! The inbox for applications that use sqlx directly: the record that a consumer group
//! processed a message, written in the caller's own transaction with the message's effects.

use sqlx::{Postgres, Transaction};
use tributary_core::backend::InboxEntry;
use tributary_core::{Envelope, GroupName, Result};

use crate::database::PgDatabase;
use crate::error::SqlxResultExt;

/// Whether [`PgInbox::try_record`] recorded the message or found it recorded before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// First time: apply the message's effects in the same transaction.
    New,
    /// Processed before (a redelivery): skip its effects.
    AlreadySeen,
}

/// Records consumed messages in transactions the application manages itself, so that a
/// handler written with plain sqlx gets exactly-once effects:
///
/// ```no_run
/// use tributary_core::{Envelope, GroupName};
/// use tributary_postgres::{PgDatabase, Recorded};
///
/// # async fn handle(db: PgDatabase, event: Envelope) -> Result<(), Box<dyn std::error::Error>> {
/// let group = GroupName::new("inventory")?;
/// let mut tx = db.pool().begin().await?;
/// if db.inbox().try_record(&mut tx, &group, &event).await? == Recorded::New {
///     sqlx::query("UPDATE products SET stock = stock + 1 WHERE sku = $1")
///         .bind(event.subject.as_deref())
///         .execute(&mut *tx)
///         .await?;
/// }
/// tx.commit().await?; // the effect and the inbox entry, or neither
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct PgInbox {
    db: PgDatabase,
}

impl PgInbox {
    pub fn new(db: PgDatabase) -> Self {
        Self { db }
    }

    /// Records in `tx` that `group` processed `event` (by its id), unless it was recorded
    /// before. Concurrent attempts for the same message serialize on the inbox key: the
    /// second waits for the first transaction and, if it committed, sees `AlreadySeen`.
    ///
    /// # Errors
    /// [`tributary_core::Error::Unavailable`] when the statement fails for a retryable reason
    /// (the transaction is then aborted: roll it back and try again).
    pub async fn try_record(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        group: &GroupName,
        event: &Envelope,
    ) -> Result<Recorded> {
        let entry = InboxEntry::of(event, true);
        let done = sqlx::query(self.db.inner.sql.inbox_insert.sql())
            .bind(group.as_str())
            .bind(entry.id.as_uuid())
            .bind(entry.applied)
            .bind(entry.source as i64)
            .bind(entry.correlation.map(|c| c as i64))
            .execute(&mut **tx)
            .await
            .context("recording a message in the inbox")?;
        Ok(if done.rows_affected() == 1 {
            Recorded::New
        } else {
            Recorded::AlreadySeen
        })
    }
}
