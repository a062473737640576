//! What a URL names, found without changing anything: a deployment of several databases
//! checks every one before it opens any (opening creates files and schemas and migrates), and
//! commands that only read never create what is not there.

use tributary_core::Result;

use crate::url::{BrokerUrl, DatabaseUrl};

/// What [`DatabaseUrl::inspect`] or [`BrokerUrl::inspect`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Found {
    /// Nothing of Tributary's there yet (no file, an empty file, no schema, a schema with
    /// only the service's own tables): opening creates it.
    Nothing,
    /// Tributary's at this build's schema version: opening changes nothing.
    Current,
    /// Tributary's at an older schema version: opening applies migrations.
    Older,
    /// Nothing that can be checked without connecting (a server-side broker, memory).
    Unknown,
}

impl DatabaseUrl {
    /// Finds what this URL holds without creating or changing anything.
    ///
    /// # Errors
    /// What opening would refuse, named: a file that is not SQLite or is another
    /// application's, a database of the wrong kind or a newer version, a directory that is a
    /// regular file; a server that cannot be reached (at once, with its address).
    pub async fn inspect(&self) -> Result<Found> {
        match self {
            DatabaseUrl::Memory => Ok(Found::Unknown),
            #[cfg(feature = "sqlite")]
            DatabaseUrl::Sqlite { path } => {
                use tributary_sqlite::{SqliteDatabaseKind, SqliteFileState, inspect};
                let kind = SqliteDatabaseKind::Service;
                Ok(match inspect(path, kind)? {
                    SqliteFileState::Absent | SqliteFileState::Empty => Found::Nothing,
                    state if state.is_current(kind) => Found::Current,
                    _ => Found::Older,
                })
            }
            #[cfg(not(feature = "sqlite"))]
            DatabaseUrl::Sqlite { .. } => Err(crate::url::feature_off(self, "sqlite")),
            #[cfg(feature = "postgres")]
            DatabaseUrl::Postgres { url, schema } => {
                use tributary_postgres::{PgConfig, PgSchemaState, inspect};
                let config = PgConfig::default()
                    .with_url(url.clone())
                    .with_schema(schema.clone());
                Ok(match inspect(&config).await? {
                    PgSchemaState::Absent | PgSchemaState::Unmanaged => Found::Nothing,
                    state if state.is_current() => Found::Current,
                    _ => Found::Older,
                })
            }
            #[cfg(not(feature = "postgres"))]
            DatabaseUrl::Postgres { .. } => Err(crate::url::feature_off(self, "postgres")),
        }
    }
}

impl BrokerUrl {
    /// Finds what this URL holds without creating or changing anything; a NATS broker is
    /// [`Found::Unknown`] (its streams are created by the relays and consumers that use them).
    ///
    /// # Errors
    /// As [`DatabaseUrl::inspect`] for the embedded broker's file.
    pub async fn inspect(&self) -> Result<Found> {
        match self {
            BrokerUrl::Memory | BrokerUrl::Nats { .. } => Ok(Found::Unknown),
            #[cfg(feature = "sqlite")]
            BrokerUrl::Embedded { dir } => {
                use tributary_sqlite::{SqliteDatabaseKind, SqliteFileState, inspect};
                let kind = SqliteDatabaseKind::Broker;
                Ok(match inspect(&dir.join("broker.db"), kind)? {
                    SqliteFileState::Absent | SqliteFileState::Empty => Found::Nothing,
                    state if state.is_current(kind) => Found::Current,
                    _ => Found::Older,
                })
            }
            #[cfg(not(feature = "sqlite"))]
            BrokerUrl::Embedded { .. } => Err(crate::url::feature_off(self, "sqlite")),
        }
    }
}
