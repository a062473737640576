//! Reading dead letters.

use async_trait::async_trait;
use chrono::DateTime;
use rusqlite::{Row, params};
use tributary_core::{
    DeadLetter, DeadLetterId, DeadLetterStore, DeadLetterSummary, Error, EventId, GroupName,
    Offset, Partition, Result, Topic,
};

use crate::database::SqliteDatabase;
use crate::sql_error::SqlResultExt;

pub(crate) struct SqliteDeadLetters {
    db: SqliteDatabase,
}

impl SqliteDeadLetters {
    pub(crate) fn new(db: SqliteDatabase) -> Self {
        Self { db }
    }
}

pub(crate) fn decode(row: &Row<'_>) -> Result<DeadLetter> {
    let bad = |e: rusqlite::Error| Error::decode("dead letter row", e);
    let ms = |v: i64| DateTime::from_timestamp_millis(v).unwrap_or_default();
    Ok(DeadLetter {
        id: DeadLetterId::new(row.get::<_, i64>(0).map_err(bad)? as u64),
        group: GroupName::new(row.get::<_, String>(1).map_err(bad)?)?,
        topic: Topic::new(row.get::<_, String>(2).map_err(bad)?)?,
        partition: Partition::new(row.get::<_, u32>(3).map_err(bad)?),
        offset: Offset::new(row.get::<_, i64>(4).map_err(bad)? as u64),
        message_id: row
            .get::<_, Option<Vec<u8>>>(5)
            .map_err(bad)?
            .map(|b| EventId::from_slice(&b))
            .transpose()?,
        key: row.get(6).map_err(bad)?,
        event_type: row.get(7).map_err(bad)?,
        payload: row.get(8).map_err(bad)?,
        reason: row.get(9).map_err(bad)?,
        attempts: row.get(10).map_err(bad)?,
        first_failed_at: ms(row.get(11).map_err(bad)?),
        last_failed_at: ms(row.get(12).map_err(bad)?),
        parked_behind: row
            .get::<_, Option<i64>>(13)
            .map_err(bad)?
            .map(|id| DeadLetterId::new(id as u64)),
    })
}

#[async_trait]
impl DeadLetterStore for SqliteDeadLetters {
    async fn summary(&self) -> Result<Vec<DeadLetterSummary>> {
        self.db
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(include_str!("dead_letter_summary.sql"))
                    .context("preparing dead_letter_summary")?;
                let mut rows = stmt.query([]).context("counting dead letters")?;
                let mut out = Vec::new();
                while let Some(row) = rows.next().context("counting dead letters")? {
                    let bad = |e: rusqlite::Error| Error::decode("dead letter summary", e);
                    let count = |i| row.get::<_, i64>(i).map(|n| n.max(0) as u64).map_err(bad);
                    out.push(DeadLetterSummary {
                        group: GroupName::new(row.get::<_, String>(0).map_err(bad)?)?,
                        open: count(1)?,
                        parked: count(2)?,
                        keys: count(3)?,
                        oldest_failed_at: row
                            .get::<_, Option<i64>>(4)
                            .map_err(bad)?
                            .and_then(DateTime::from_timestamp_millis),
                    });
                }
                Ok(out)
            })
            .await
    }

    async fn list(&self, group: Option<&GroupName>, max: usize) -> Result<Vec<DeadLetter>> {
        let group = group.map(|g| g.as_str().to_owned());
        self.db
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(include_str!("list_dead_letters.sql"))
                    .context("preparing list_dead_letters")?;
                let mut rows = stmt
                    .query(params![group, max.min(i64::MAX as usize) as i64])
                    .context("listing dead letters")?;
                let mut out = Vec::new();
                while let Some(row) = rows.next().context("listing dead letters")? {
                    out.push(decode(row)?);
                }
                Ok(out)
            })
            .await
    }

    async fn get(&self, id: DeadLetterId) -> Result<Option<DeadLetter>> {
        self.db
            .read(move |conn| {
                let mut stmt = conn
                    .prepare_cached(include_str!("get_dead_letter.sql"))
                    .context("preparing get_dead_letter")?;
                let mut rows = stmt
                    .query([id.get() as i64])
                    .context("reading a dead letter")?;
                rows.next()
                    .context("reading a dead letter")?
                    .map(decode)
                    .transpose()
            })
            .await
    }
}
