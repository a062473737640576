//! What a unit knows about the documents it touched, and how it writes them: optimistically,
//! in one sorted pass at commit.
//!
//! A unit reads a document without locking it and remembers the version it saw (or that it
//! was absent). Its puts and deletes are held. When it commits (or before a savepoint or the
//! service's own SQL), it locks every document it read or writes that exists, **in key
//! order** (`lock_documents.sql`), checks that each read one is still at the version it saw,
//! and then writes all its puts in one statement and its deletes in another. Two units that
//! touch the same documents therefore never wait for each other in a cycle — consumer units
//! of many messages from different partitions cannot deadlock on documents — and neither can
//! update a document from a stale read: the later one fails with
//! [`tributary_core::Error::DocumentConflict`] and is run again. The locks are held from that
//! pass to the commit only.

use std::collections::{BTreeMap, HashSet};

use sqlx::PgConnection;
use tributary_core::{Error, Payload, Result};

use crate::error::SqlxResultExt;
use crate::sql::Statements;

pub(super) type DocumentKey = (String, String);

pub(super) fn key(collection: &str, id: &str) -> DocumentKey {
    (collection.to_owned(), id.to_owned())
}

/// A write the unit holds, with the consumer message that made it.
#[derive(Clone, Debug)]
pub(super) struct HeldWrite {
    /// The new document, or `None` for a delete.
    pub document: Option<Payload>,
    pub message: usize,
}

/// What a unit read of a document: its version, or that it did not exist.
type ReadVersion = Option<i64>;

#[derive(Clone, Debug, Default)]
pub(super) struct Documents {
    /// Documents read (and not written by a flush since), with what the unit saw.
    read: BTreeMap<DocumentKey, ReadVersion>,
    /// Writes not made yet, in key order.
    held: BTreeMap<DocumentKey, HeldWrite>,
    /// Documents the unit locked in an earlier flush: nobody else can change them until it
    /// ends, so reading them again needs no check.
    locked: HashSet<DocumentKey>,
}

impl Documents {
    /// A held write of `key`: `Some(Some(doc))` for a put, `Some(None)` for a delete.
    pub fn held(&self, key: &DocumentKey) -> Option<Option<&Payload>> {
        self.held.get(key).map(|w| w.document.as_ref())
    }

    /// Records what a read of `key` found, unless the unit already knows better.
    pub fn read(&mut self, key: DocumentKey, version: ReadVersion) {
        if !self.locked.contains(&key) {
            self.read.entry(key).or_insert(version);
        }
    }

    /// Holds a put (`Some`) or a delete (`None`) of `key`.
    pub fn hold(&mut self, key: DocumentKey, document: Option<Payload>, message: usize) {
        self.held.insert(key, HeldWrite { document, message });
    }

    /// Forgets every document of a collection the unit cleared at once (puts after it are
    /// blind: the rows are gone, and the unit's delete holds their keys until it ends).
    pub fn cleared(&mut self, collection: &str) {
        self.read.retain(|(c, _), _| c != collection);
        self.held.retain(|(c, _), _| c != collection);
        self.locked.retain(|(c, _)| c != collection);
    }

    pub fn held_count(&self) -> usize {
        self.held.len()
    }

    /// Takes what the unit read and holds, to be written now; [`Documents::written`] after
    /// it was.
    pub fn take_writes(&mut self) -> DocumentWrites {
        let read = std::mem::take(&mut self.read);
        let held: Vec<(DocumentKey, HeldWrite)> =
            std::mem::take(&mut self.held).into_iter().collect();
        let lock: Vec<DocumentKey> = read
            .keys()
            .chain(
                held.iter()
                    .map(|(k, _)| k)
                    .filter(|k| !read.contains_key(*k)),
            )
            .filter(|k| !self.locked.contains(*k))
            .cloned()
            .collect();
        DocumentWrites { read, held, lock }
    }

    /// Records that `writes` were made: their documents are locked by the unit now.
    pub fn written(&mut self, writes: DocumentWrites) {
        self.locked.extend(writes.lock);
    }
}

/// What a unit writes of its documents at one flush (see the module doc).
#[derive(Debug, Default)]
pub(super) struct DocumentWrites {
    read: BTreeMap<DocumentKey, ReadVersion>,
    held: Vec<(DocumentKey, HeldWrite)>,
    /// The documents to lock and check: read or written, not locked before.
    lock: Vec<DocumentKey>,
}

impl DocumentWrites {
    /// The held writes, each with its key.
    pub fn held(&self) -> &[(DocumentKey, HeldWrite)] {
        &self.held
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty() && self.lock.is_empty()
    }

    /// The puts, when they are all the flush does: nothing to lock or check (nothing read),
    /// no delete. Such puts are upserts in key order (see `put_documents.sql`).
    pub fn blind_puts(&self) -> Option<Vec<(&DocumentKey, &Payload)>> {
        if !self.read.is_empty() {
            return None;
        }
        self.held
            .iter()
            .map(|(k, w)| w.document.as_ref().map(|d| (k, d)))
            .collect()
    }

    /// Only `write`, as a flush of its own (to find a write the server refuses).
    pub fn only(write: &(DocumentKey, HeldWrite)) -> Self {
        Self {
            read: BTreeMap::new(),
            held: vec![write.clone()],
            lock: Vec::new(),
        }
    }

    /// Locks and checks, then writes the puts and the deletes.
    pub async fn apply(&self, conn: &mut PgConnection, sql: &Statements) -> Result<()> {
        if !self.lock.is_empty() {
            lock_and_check(conn, sql, &self.lock, &self.read).await?;
        }
        write_puts(conn, sql, &self.held, &self.read).await?;
        write_deletes(conn, sql, &self.held).await
    }
}

/// Locks the documents of `keys` that exist, in key order, and checks the `read` ones against
/// what the unit saw.
async fn lock_and_check(
    conn: &mut PgConnection,
    sql: &Statements,
    keys: &[DocumentKey],
    read: &BTreeMap<DocumentKey, ReadVersion>,
) -> Result<()> {
    let collections: Vec<&str> = keys.iter().map(|(c, _)| c.as_str()).collect();
    let ids: Vec<&str> = keys.iter().map(|(_, id)| id.as_str()).collect();
    let rows: Vec<(String, String, i64)> = sqlx::query_as(sql.lock_documents.sql())
        .bind(collections)
        .bind(ids)
        .persistent(false)
        .fetch_all(conn)
        .await
        .context("locking documents")?;
    let stored: BTreeMap<(String, String), i64> =
        rows.into_iter().map(|(c, id, v)| ((c, id), v)).collect();
    for (key, seen) in read {
        if stored.get(key).copied() != *seen {
            return Err(Error::DocumentConflict {
                collection: key.0.clone(),
                id: key.1.clone(),
            });
        }
    }
    Ok(())
}

/// Writes the held puts in one statement; a document the unit read as absent that another
/// unit created meanwhile is a conflict.
async fn write_puts(
    conn: &mut PgConnection,
    sql: &Statements,
    held: &[(DocumentKey, HeldWrite)],
    read: &BTreeMap<DocumentKey, ReadVersion>,
) -> Result<()> {
    let puts: Vec<(&DocumentKey, &Payload, bool)> = held
        .iter()
        .filter_map(|(k, w)| {
            let create = read.get(k) == Some(&None);
            w.document.as_ref().map(|d| (k, d, create))
        })
        .collect();
    if puts.is_empty() {
        return Ok(());
    }
    let collections: Vec<&str> = puts.iter().map(|(k, _, _)| k.0.as_str()).collect();
    let ids: Vec<&str> = puts.iter().map(|(k, _, _)| k.1.as_str()).collect();
    let bodies: Vec<&str> = puts.iter().map(|(_, d, _)| d.as_str()).collect();
    let creates: Vec<bool> = puts.iter().map(|(_, _, c)| *c).collect();
    let written: Vec<(String, String)> = sqlx::query_as(sql.write_documents.sql())
        .bind(collections)
        .bind(ids)
        .bind(bodies)
        .bind(creates)
        .fetch_all(conn)
        .await
        .context("writing documents")?;
    if written.len() != puts.len() {
        let written: HashSet<(String, String)> = written.into_iter().collect();
        if let Some((k, _, _)) = puts.iter().find(|(k, _, _)| !written.contains(*k)) {
            return Err(Error::DocumentConflict {
                collection: k.0.clone(),
                id: k.1.clone(),
            });
        }
    }
    Ok(())
}

async fn write_deletes(
    conn: &mut PgConnection,
    sql: &Statements,
    held: &[(DocumentKey, HeldWrite)],
) -> Result<()> {
    let deletes: Vec<&DocumentKey> = held
        .iter()
        .filter(|(_, w)| w.document.is_none())
        .map(|(k, _)| k)
        .collect();
    if deletes.is_empty() {
        return Ok(());
    }
    let collections: Vec<&str> = deletes.iter().map(|k| k.0.as_str()).collect();
    let ids: Vec<&str> = deletes.iter().map(|k| k.1.as_str()).collect();
    sqlx::query(sql.delete_documents.sql())
        .bind(collections)
        .bind(ids)
        .execute(conn)
        .await
        .context("deleting documents")?;
    Ok(())
}
