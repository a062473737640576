//! What a unit knows about the documents it touched: the ones it read as absent, the ones it
//! holds locked, and the updates of locked documents that it has not written yet.
//!
//! A document the unit read with `get` (`SELECT … FOR UPDATE`) is locked until the unit ends,
//! so updating it cannot conflict with anyone: such updates are held and written in one
//! statement when the unit commits (or before a savepoint or the raw transaction), which
//! saves a round trip per read-modify-write. A put that might conflict — creating a document
//! read as absent, or a blind put — still runs at once, so its conflict is reported at once.

use std::collections::{BTreeMap, HashSet};

use sqlx::PgConnection;
use tributary_core::{Error, Payload, Result};

use crate::error::SqlxResultExt;
use crate::sql::Statements;

pub(super) type DocumentKey = (String, String);

pub(super) fn key(collection: &str, id: &str) -> DocumentKey {
    (collection.to_owned(), id.to_owned())
}

/// An update of a locked document, held until the unit writes it.
#[derive(Clone, Debug)]
pub(super) struct HeldUpdate {
    pub key: DocumentKey,
    pub document: Payload,
    /// The consumer message whose handler made it.
    pub message: usize,
}

#[derive(Clone, Debug, Default)]
pub(super) struct Documents {
    /// Read as absent: a put must create it, and fails if another unit did first.
    absent: HashSet<DocumentKey>,
    /// Rows this unit holds locked (read FOR UPDATE or written by it).
    locked: HashSet<DocumentKey>,
    /// Updates of locked rows not written yet, in key order, each with the consumer message
    /// that made it (see `ConsumerTx::start_message`).
    updates: BTreeMap<DocumentKey, (Payload, usize)>,
}

impl Documents {
    /// The value of a document whose update is held, as the unit sees it.
    pub fn held(&self, key: &DocumentKey) -> Option<&Payload> {
        self.updates.get(key).map(|(document, _)| document)
    }

    /// Records what a read found (and so locked, if present).
    pub fn read(&mut self, key: DocumentKey, present: bool) {
        if present {
            self.absent.remove(&key);
            self.locked.insert(key);
        } else {
            self.locked.remove(&key);
            self.absent.insert(key);
        }
    }

    /// Whether a put must create the document (it was read as absent).
    pub fn must_create(&self, key: &DocumentKey) -> bool {
        self.absent.contains(key)
    }

    /// Holds the update of a locked document; returns it back if the document is not locked.
    pub fn hold(&mut self, key: DocumentKey, document: Payload, message: usize) -> Option<Payload> {
        if self.locked.contains(&key) {
            self.updates.insert(key, (document, message));
            None
        } else {
            Some(document)
        }
    }

    /// Records a put written at once: the row exists now and the unit holds it.
    pub fn written(&mut self, key: DocumentKey) {
        self.absent.remove(&key);
        self.locked.insert(key);
    }

    /// Forgets a document the unit deletes.
    pub fn deleted(&mut self, key: &DocumentKey) {
        self.absent.remove(key);
        self.locked.remove(key);
        self.updates.remove(key);
    }

    /// Forgets every document of a collection the unit clears.
    pub fn cleared(&mut self, collection: &str) {
        self.absent.retain(|(c, _)| c != collection);
        self.locked.retain(|(c, _)| c != collection);
        self.updates.retain(|(c, _), _| c != collection);
    }

    pub fn held_count(&self) -> usize {
        self.updates.len()
    }

    /// The held updates, to be written now, each with its message.
    pub fn take_updates(&mut self) -> Vec<HeldUpdate> {
        std::mem::take(&mut self.updates)
            .into_iter()
            .map(|(key, (document, message))| HeldUpdate {
                key,
                document,
                message,
            })
            .collect()
    }
}

/// Writes held updates of locked documents in one statement.
pub(super) async fn write_updates(
    conn: &mut PgConnection,
    sql: &Statements,
    updates: &[HeldUpdate],
) -> Result<()> {
    let done = match updates {
        [] => return Ok(()),
        [one] => sqlx::query(sql.put_document.sql())
            .bind(&one.key.0)
            .bind(&one.key.1)
            .bind(one.document.as_str())
            .execute(conn)
            .await
            .context("writing a document")?,
        _ => {
            let collections: Vec<&str> = updates.iter().map(|u| u.key.0.as_str()).collect();
            let ids: Vec<&str> = updates.iter().map(|u| u.key.1.as_str()).collect();
            let bodies: Vec<&str> = updates.iter().map(|u| u.document.as_str()).collect();
            sqlx::query(sql.update_documents.sql())
                .bind(collections)
                .bind(ids)
                .bind(bodies)
                .execute(conn)
                .await
                .context("writing documents")?
        }
    };
    if done.rows_affected() != updates.len() as u64 {
        return Err(Error::storage_msg(format!(
            "{} of {} locked documents were not found to update",
            updates.len() as u64 - done.rows_affected(),
            updates.len()
        )));
    }
    Ok(())
}
