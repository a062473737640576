//! Looking at a service's schema without changing it, and reaching the server in a way that
//! fails fast and names it.
//!
//! [`crate::PgDatabase::connect`] creates the schema and applies migrations; commands that
//! only read (listing dead letters) and deployments that check every service before starting
//! any use [`inspect`] first, which creates nothing.

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, PgConnection};
use tributary_core::{Error, Result};

use crate::config::{PgConfig, validate_schema};
use crate::error::SqlxResultExt;
use crate::schema::latest_version;

/// What a service's schema holds, as [`inspect`] found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PgSchemaState {
    /// No such schema: connecting creates it.
    Absent,
    /// A schema holding only tables that are not Tributary's (the service's own): connecting
    /// adds Tributary's beside them.
    Unmanaged,
    /// Tributary's tables at schema `version` (connecting applies the migrations after it, up
    /// to [`latest_version`]).
    Tributary { version: i32 },
}

impl PgSchemaState {
    /// Whether the schema is Tributary's at this build's version, so that connecting changes
    /// nothing.
    pub fn is_current(self) -> bool {
        self == PgSchemaState::Tributary {
            version: latest_version(),
        }
    }
}

/// Finds what `config.schema` holds, reading only the catalog and Tributary's migration table.
///
/// # Errors
/// [`Error::InvalidInput`] for a bad schema name or URL; [`Error::Storage`] for a schema whose
/// version is newer than this build knows; [`Error::Unavailable`] naming the server when it
/// cannot be reached (see [`connect_one`]).
pub async fn inspect(config: &PgConfig) -> Result<PgSchemaState> {
    validate_schema(&config.schema)?;
    let schema = config.schema.as_str();
    let mut conn = connect_one(config).await?;
    let found = read_state(&mut conn, schema).await;
    // Closing is a courtesy to the server's log; a failure to say goodbye changes nothing.
    let _ = sqlx::Connection::close(conn).await;
    found
}

async fn read_state(conn: &mut PgConnection, schema: &str) -> Result<PgSchemaState> {
    let (exists, _relations, tracked): (bool, i64, bool) =
        sqlx::query_as(include_str!("migrations/inspect.sql"))
            .bind(schema)
            .fetch_one(&mut *conn)
            .await
            .context("inspecting the schema")?;
    if !exists {
        return Ok(PgSchemaState::Absent);
    }
    if !tracked {
        return Ok(PgSchemaState::Unmanaged);
    }
    let version: i32 = sqlx::query_scalar(sqlx::AssertSqlSafe(crate::sql::render(
        "SELECT coalesce(max(version), 0) FROM __SCHEMA__.tributary_migrations",
        schema,
    )))
    .fetch_one(&mut *conn)
    .await
    .context("reading the schema version")?;
    let latest = latest_version();
    if version > latest {
        return Err(Error::storage_msg(format!(
            "schema {schema:?} has version {version}, newer than this build of Tributary knows ({latest}); upgrade Tributary"
        )));
    }
    Ok(PgSchemaState::Tributary { version })
}

/// One connection to the server of `config.url`, within `config.acquire_timeout`. A server
/// that is down fails at once with its address (a pool would retry until its timeout and then
/// say only "pool timed out").
///
/// # Errors
/// [`Error::InvalidInput`] for a malformed URL; [`Error::Unavailable`] naming `host:port`.
pub async fn connect_one(config: &PgConfig) -> Result<PgConnection> {
    let options = PgConnectOptions::from_str(&config.url)
        .map_err(|e| Error::invalid(format!("bad PostgreSQL URL: {e}")))?;
    let server = server_name(&options);
    match tokio::time::timeout(config.acquire_timeout, options.connect()).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(Error::unavailable(format!("PostgreSQL at {server}"), e)),
        Err(_) => Err(Error::unavailable(
            format!("PostgreSQL at {server}"),
            format!(
                "no connection within {:?} (acquire_timeout)",
                config.acquire_timeout
            ),
        )),
    }
}

/// `host:port`, or the socket directory the options name.
pub(crate) fn server_name(options: &PgConnectOptions) -> String {
    match options.get_socket() {
        Some(dir) => format!("{} (port {})", dir.display(), options.get_port()),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    }
}
