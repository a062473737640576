//! Setting a capture up and taking it down: the publication it reads, and removing its slot
//! when a capture is retired (demos, tests, decommissioning).

use crate::replication::{
    PgReplicationConfig, PublicationName, ReplicationConnection, Result, SlotName,
};
use crate::sql::{SqlSession, ident, literal};

/// Creates `publication` for `tables` (`schema.table` names) unless it exists. An empty list
/// makes a publication of no table, for a capture of logical messages only. Returns whether
/// it was created.
///
/// # Errors
/// When the server cannot be reached or refuses (a missing table, no privilege).
pub async fn ensure_publication(
    connection: &PgReplicationConfig,
    publication: &PublicationName,
    tables: &[String],
) -> Result<bool> {
    let mut session = SqlSession::connect(connection).await?;
    let exists = session
        .value(&format!(
            "SELECT 1 FROM pg_publication WHERE pubname = {}",
            literal(publication.as_str())
        ))
        .await?
        .is_some();
    let created = if exists {
        false
    } else {
        let list: Vec<String> = tables
            .iter()
            .map(|t| match t.split_once('.') {
                Some((schema, table)) => format!("{}.{}", ident(schema), ident(table)),
                None => ident(t),
            })
            .collect();
        let sql = if list.is_empty() {
            format!("CREATE PUBLICATION {}", ident(publication.as_str()))
        } else {
            format!(
                "CREATE PUBLICATION {} FOR TABLE {}",
                ident(publication.as_str()),
                list.join(", ")
            )
        };
        session.query(&sql).await?;
        true
    };
    session.close().await;
    Ok(created)
}

/// Drops `slot` (if it exists) and `publication` (if it exists): the capture is retired and
/// the server stops keeping WAL for it.
///
/// # Errors
/// When the server cannot be reached, or the slot is in use by a running capture.
pub async fn retire_capture(
    connection: &PgReplicationConfig,
    slot: &SlotName,
    publication: &PublicationName,
) -> Result<()> {
    let mut replication = ReplicationConnection::connect(connection).await?;
    if replication.slot(slot).await?.is_some() {
        replication.drop_slot(slot).await?;
    }
    let _ = replication.close().await;
    let mut session = SqlSession::connect(connection).await?;
    session
        .query(&format!(
            "DROP PUBLICATION IF EXISTS {}",
            ident(publication.as_str())
        ))
        .await?;
    session.close().await;
    Ok(())
}
