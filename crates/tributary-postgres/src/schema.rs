//! Creating and migrating a service's schema.
//!
//! Tributary's tables of a service live in a schema (by default one of their own, apart from
//! the service's tables). Migrations are numbered SQL files, applied in order in one
//! transaction, each recorded in `tributary_migrations` in that schema, whatever the service's
//! own migrations did before or after. Concurrent starts of the same service serialize on an
//! advisory lock, so exactly one applies the pending migrations. A schema that already holds
//! the service's own tables is shared; one holding a relation with the name of one of
//! Tributary's (that Tributary did not create) is refused, as is a schema written by a newer
//! Tributary (a version this build does not know).

use sqlx::{Connection, PgConnection};
use tributary_core::{Error, Result};

use crate::error::SqlxResultExt;
use crate::sql::render;

struct Migration {
    version: i32,
    description: &'static str,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "event store",
        sql: include_str!("migrations/0001_event_store.sql"),
    },
    Migration {
        version: 2,
        description: "messaging",
        sql: include_str!("migrations/0002_messaging.sql"),
    },
    Migration {
        version: 3,
        description: "document versions",
        sql: include_str!("migrations/0003_document_versions.sql"),
    },
    Migration {
        version: 4,
        description: "inbox entries for consistency tokens",
        sql: include_str!("migrations/0004_inbox_entries.sql"),
    },
];

/// The relations Tributary's migrations create in a schema: a schema where one of them exists
/// but is not Tributary's is refused rather than touched.
const RELATIONS: &[&str] = &[
    "tributary_migrations",
    "events",
    "snapshots",
    "documents",
    "outbox",
    "inbox",
    "dead_letters",
    "checkpoints",
    "relay_cursors",
    "inbox_by_time",
    "dead_letters_unresolved",
    "inbox_by_correlation",
];

/// The newest schema version this build knows.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Makes `schema` a current Tributary service schema: creates it if missing, refuses one that
/// holds other tables or comes from a newer version, applies pending migrations.
///
/// # Errors
/// [`Error::Storage`] for a foreign or newer schema; [`Error::Unavailable`] when the server
/// cannot be reached.
pub(crate) async fn prepare(conn: &mut PgConnection, schema: &str) -> Result<()> {
    let mut tx = conn.begin().await.context("starting the migration")?;
    sqlx::query(include_str!("migrations/lock.sql"))
        .bind(schema)
        .execute(&mut *tx)
        .await
        .context("locking the schema for migration")?;
    let (exists, relations, tracked): (bool, i64, bool) =
        sqlx::query_as(include_str!("migrations/inspect.sql"))
            .bind(schema)
            .fetch_one(&mut *tx)
            .await
            .context("inspecting the schema")?;
    if exists && relations > 0 && !tracked {
        // The service's own tables are welcome; a table Tributary would create is not.
        let clashes: Vec<String> = sqlx::query_scalar(include_str!("migrations/clashes.sql"))
            .bind(schema)
            .bind(RELATIONS)
            .fetch_all(&mut *tx)
            .await
            .context("inspecting the schema")?;
        if !clashes.is_empty() {
            return Err(Error::storage_msg(format!(
                "schema {schema:?} already holds {} that Tributary did not create; refusing to touch it (give Tributary a schema of its own, e.g. ?schema=tributary)",
                clashes.join(", ")
            )));
        }
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(render(
        include_str!("migrations/bootstrap.sql"),
        schema,
    )))
    .execute(&mut *tx)
    .await
    .context("creating the schema")?;
    let current: i32 = sqlx::query_scalar(sqlx::AssertSqlSafe(render(
        "SELECT coalesce(max(version), 0) FROM __SCHEMA__.tributary_migrations",
        schema,
    )))
    .fetch_one(&mut *tx)
    .await
    .context("reading the schema version")?;
    let latest = latest_version();
    if current > latest {
        return Err(Error::storage_msg(format!(
            "schema {schema:?} has version {current}, newer than this build of Tributary knows ({latest}); upgrade Tributary"
        )));
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        sqlx::raw_sql(sqlx::AssertSqlSafe(render(m.sql, schema)))
            .execute(&mut *tx)
            .await
            .context(&format!("applying migration {}", m.version))?;
        sqlx::query(sqlx::AssertSqlSafe(render(
            "INSERT INTO __SCHEMA__.tributary_migrations (version, description) VALUES ($1, $2)",
            schema,
        )))
        .bind(m.version)
        .bind(m.description)
        .execute(&mut *tx)
        .await
        .context("recording a migration")?;
        tracing::info!(schema, version = m.version, "applied migration");
    }
    tx.commit().await.context("committing migrations")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_from_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1);
            assert!(m.sql.contains("__SCHEMA__."));
        }
    }
}
