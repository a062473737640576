//! Removing old messages without ever removing one a group has not committed.

use rusqlite::params;
use tributary_core::Result;

use super::SqliteBrokerConfig;
use crate::database::SqliteDatabase;
use crate::sql_error::SqlResultExt;
use crate::unit_of_work::now_ms;

/// Deletes in chunks so that retention never holds the writer for long.
const CHUNK: i64 = 5_000;

pub(crate) async fn enforce(db: &SqliteDatabase, config: &SqliteBrokerConfig) -> Result<u64> {
    let partitions: Vec<(String, u32)> = db
        .read(|conn| {
            let mut stmt = conn
                .prepare_cached(include_str!("list_topics.sql"))
                .context("preparing list_topics")?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u32>(1)?)))
                .context("listing topics")?;
            let mut out = Vec::new();
            for row in rows {
                let (topic, n) = row.context("listing topics")?;
                out.extend((0..n).map(|p| (topic.clone(), p)));
            }
            Ok(out)
        })
        .await?;
    let cutoff = now_ms().saturating_sub(config.max_age.as_millis().min(i64::MAX as u128) as i64);
    let mut removed = 0u64;
    for (topic, partition) in partitions {
        loop {
            let t = topic.clone();
            let n = db
                .write(move |tx| {
                    tx.connection()
                        .prepare_cached(include_str!("retention_by_age.sql"))
                        .context("preparing retention_by_age")?
                        .execute(params![t, partition, cutoff, CHUNK])
                        .context("removing old messages")
                })
                .await?;
            removed += n as u64;
            if (n as i64) < CHUNK {
                break;
            }
        }
        if let Some(limit) = config.max_partition_bytes {
            removed += enforce_size(db, &topic, partition, limit).await?;
        }
    }
    Ok(removed)
}

async fn enforce_size(db: &SqliteDatabase, topic: &str, partition: u32, limit: u64) -> Result<u64> {
    let mut removed = 0;
    loop {
        let t = topic.to_owned();
        let bytes: i64 = db
            .read(move |conn| {
                conn.prepare_cached(include_str!("partition_bytes.sql"))
                    .context("preparing partition_bytes")?
                    .query_row(params![t, partition], |r| r.get(0))
                    .context("measuring a partition")
            })
            .await?;
        if bytes as u64 <= limit {
            return Ok(removed);
        }
        let t = topic.to_owned();
        let n = db
            .write(move |tx| {
                tx.connection()
                    .prepare_cached(include_str!("retention_oldest.sql"))
                    .context("preparing retention_oldest")?
                    .execute(params![t, partition, 100])
                    .context("removing the oldest messages")
            })
            .await?;
        if n == 0 {
            // Everything left is still needed by some group: keep it, whatever the size.
            return Ok(removed);
        }
        removed += n as u64;
    }
}
