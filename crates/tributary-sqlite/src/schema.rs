//! Recognising, creating and migrating Tributary database files.
//!
//! A Tributary file carries `PRAGMA application_id` = "TRIB", its kind (a service database or
//! a broker log) in `tributary_meta`, and its schema version in `PRAGMA user_version`.
//! Migrations are numbered SQL files applied in order, each in its own transaction.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use tributary_core::{Error, Result};

use crate::sql_error::SqlResultExt;

pub(crate) const APPLICATION_ID: i32 = 0x5452_4942; // "TRIB"

/// What a database file is for; a file of one kind cannot be opened as the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SqliteDatabaseKind {
    /// A service's own database: event store, documents, outbox, inbox, views.
    Service,
    /// The embedded broker's log.
    Broker,
}

impl SqliteDatabaseKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            SqliteDatabaseKind::Service => "service",
            SqliteDatabaseKind::Broker => "broker",
        }
    }

    fn migrations(self) -> &'static [Migration] {
        match self {
            SqliteDatabaseKind::Service => SERVICE_MIGRATIONS,
            SqliteDatabaseKind::Broker => BROKER_MIGRATIONS,
        }
    }
}

struct Migration {
    version: i64,
    sql: &'static str,
}

const SERVICE_MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: include_str!("migrations/service/0001_event_store.sql"),
    },
    Migration {
        version: 2,
        sql: include_str!("migrations/service/0002_messaging.sql"),
    },
    Migration {
        version: 3,
        sql: include_str!("migrations/service/0003_inbox_entries.sql"),
    },
];

const BROKER_MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    sql: include_str!("migrations/broker/0001_log.sql"),
}];

/// The newest schema version this build knows for `kind`.
pub fn latest_version(kind: SqliteDatabaseKind) -> i64 {
    kind.migrations().last().map_or(0, |m| m.version)
}

/// Makes the file behind `conn` a current Tributary database of `kind`: initializes an empty
/// file, refuses a foreign or newer one, applies pending migrations.
///
/// # Errors
/// [`Error::Storage`] for a file that is not a Tributary database, is of another kind, or has
/// a newer schema than this build knows.
pub(crate) fn prepare(conn: &mut Connection, kind: SqliteDatabaseKind, path: &str) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| not_a_database(path, e))?;
    let app_id: i32 = tx
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| not_a_database(path, e))?;
    let objects: i64 = tx
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .context("reading the schema")?;
    if app_id == 0 && objects == 0 {
        tx.execute_batch(&format!(
            "PRAGMA application_id = {APPLICATION_ID};
             CREATE TABLE tributary_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
             INSERT INTO tributary_meta (key, value) VALUES ('kind', '{}');",
            kind.name()
        ))
        .context("initializing a new database")?;
    } else if app_id != APPLICATION_ID {
        return Err(Error::storage_msg(format!(
            "{path} is not a Tributary database (application_id {app_id:#x}); refusing to touch it"
        )));
    }
    let found: Option<String> = tx
        .query_row(
            "SELECT value FROM tributary_meta WHERE key = 'kind'",
            [],
            |r| r.get(0),
        )
        .optional()
        .context("reading the database kind")?;
    if found.as_deref() != Some(kind.name()) {
        return Err(Error::storage_msg(format!(
            "{path} is a Tributary {} database, not a {} database",
            found.as_deref().unwrap_or("unknown"),
            kind.name()
        )));
    }
    let current: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .context("reading the schema version")?;
    let latest = latest_version(kind);
    if current > latest {
        return Err(Error::storage_msg(format!(
            "{path} has schema version {current}, newer than this build of Tributary knows ({latest}); upgrade Tributary"
        )));
    }
    for m in kind.migrations().iter().filter(|m| m.version > current) {
        tx.execute_batch(m.sql)
            .context(&format!("applying migration {}", m.version))?;
        tx.pragma_update(None, "user_version", m.version)
            .context("recording the schema version")?;
    }
    tx.commit().context("committing migrations")
}

fn not_a_database(path: &str, e: rusqlite::Error) -> Error {
    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase) {
        Error::storage(format!("{path} is not a SQLite database"), e)
    } else {
        crate::sql_error::sql_error("opening the database", e)
    }
}
