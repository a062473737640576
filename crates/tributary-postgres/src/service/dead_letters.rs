//! Reading dead letters.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::PgRow;
use tributary_core::{
    DeadLetter, DeadLetterId, DeadLetterStore, DeadLetterSummary, Error, EventId, GroupName,
    Offset, Partition, Result, Topic,
};
use uuid::Uuid;

use crate::database::PgDatabase;
use crate::error::SqlxResultExt;
use crate::event_store::limit;

/// The dead letters of a service's database.
#[derive(Clone, Debug)]
pub struct PgDeadLetters {
    db: PgDatabase,
}

impl PgDeadLetters {
    pub fn new(db: PgDatabase) -> Self {
        Self { db }
    }
}

fn col<'r, T>(row: &'r PgRow, i: usize) -> Result<T>
where
    T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(i)
        .map_err(|e| Error::decode("dead letter row", format!("column {i}: {e}")))
}

fn unsigned(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::decode("dead letter row", format!("negative {what}")))
}

/// Decodes a row selected as in `get_dead_letter.sql`.
pub(crate) fn decode(row: &PgRow) -> Result<DeadLetter> {
    Ok(DeadLetter {
        id: DeadLetterId::new(unsigned(col(row, 0)?, "id")?),
        group: GroupName::new(col::<String>(row, 1)?)?,
        topic: Topic::new(col::<String>(row, 2)?)?,
        partition: Partition::new(
            u32::try_from(col::<i64>(row, 3)?)
                .map_err(|_| Error::decode("dead letter row", "partition out of range"))?,
        ),
        offset: Offset::new(unsigned(col(row, 4)?, "offset")?),
        message_id: col::<Option<Uuid>>(row, 5)?.map(EventId::from_uuid),
        key: col(row, 6)?,
        event_type: col(row, 7)?,
        payload: col(row, 8)?,
        reason: col(row, 9)?,
        attempts: u32::try_from(col::<i64>(row, 10)?)
            .map_err(|_| Error::decode("dead letter row", "attempts out of range"))?,
        first_failed_at: col::<DateTime<Utc>>(row, 11)?,
        last_failed_at: col::<DateTime<Utc>>(row, 12)?,
        parked_behind: col::<Option<i64>>(row, 13)?
            .map(|id| unsigned(id, "parked_behind").map(DeadLetterId::new))
            .transpose()?,
    })
}

#[async_trait]
impl DeadLetterStore for PgDeadLetters {
    async fn summary(&self) -> Result<Vec<DeadLetterSummary>> {
        let inner = &self.db.inner;
        let rows = sqlx::query(inner.sql.dead_letter_summary.sql())
            .fetch_all(&inner.pool)
            .await
            .context("counting dead letters")?;
        rows.iter()
            .map(|row| {
                let count = |i| col::<i64>(row, i).map(|n| n.max(0) as u64);
                Ok(DeadLetterSummary {
                    group: GroupName::new(col::<String>(row, 0)?)?,
                    open: count(1)?,
                    parked: count(2)?,
                    keys: count(3)?,
                    oldest_failed_at: col::<Option<DateTime<Utc>>>(row, 4)?,
                })
            })
            .collect()
    }

    async fn list(&self, group: Option<&GroupName>, max: usize) -> Result<Vec<DeadLetter>> {
        let inner = &self.db.inner;
        let rows = sqlx::query(inner.sql.list_dead_letters.sql())
            .bind(group.map(|g| g.as_str()))
            .bind(limit(max))
            .fetch_all(&inner.pool)
            .await
            .context("listing dead letters")?;
        rows.iter().map(decode).collect()
    }

    async fn get(&self, id: DeadLetterId) -> Result<Option<DeadLetter>> {
        let inner = &self.db.inner;
        let row = sqlx::query(inner.sql.get_dead_letter.sql())
            .bind(id.get() as i64)
            .fetch_optional(&inner.pool)
            .await
            .context("reading a dead letter")?;
        row.as_ref().map(decode).transpose()
    }
}
