//! Fresh schemas on the shared test server, dropped when the test ends.

#![allow(dead_code)]

use std::time::Duration;

use tributary_postgres::{PgConfig, PgDatabase};
use tributary_testkit::servers::{postgres_url, reachable, skip};

/// Drops its schemas when dropped (also when the test panics).
pub struct SchemaGuard {
    url: String,
    schemas: std::sync::Mutex<Vec<String>>,
}

impl SchemaGuard {
    pub fn new() -> Self {
        Self {
            url: postgres_url(),
            schemas: std::sync::Mutex::default(),
        }
    }

    pub fn track(&self, schema: &str) {
        self.schemas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(schema.to_owned());
    }
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let schemas = std::mem::take(&mut *self.schemas.lock().unwrap_or_else(|p| p.into_inner()));
        if schemas.is_empty() {
            return;
        }
        let url = self.url.clone();
        // Dropping needs async I/O, and this may run inside a runtime: use a thread of its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&url).await?;
                for s in schemas {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP SCHEMA IF EXISTS \"{s}\" CASCADE"
                    )))
                    .execute(&mut conn)
                    .await?;
                }
                Ok::<_, sqlx::Error>(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test schemas: {dropped:?}");
        }
    }
}

/// A schema name no other test uses.
pub fn fresh_schema() -> String {
    format!("tributary_test_{}", uuid::Uuid::now_v7().simple())
}

/// The settings tests use: the shared server, a fresh schema, quick polling.
pub fn config() -> PgConfig {
    PgConfig::default()
        .with_url(postgres_url())
        .with_schema(fresh_schema())
        .with_max_connections(8)
        .with_poll_every(Duration::from_millis(100))
}

/// Whether the server is there; prints `SKIPPED` (or panics when servers are required).
pub fn server(suite: &str) -> Option<()> {
    if reachable(&postgres_url()) {
        Some(())
    } else {
        skip(
            suite,
            &format!("PostgreSQL is not reachable at {}", postgres_url()),
        )
    }
}

/// A database in a fresh schema, and the guard that drops the schema.
pub async fn database(suite: &str) -> Option<(PgDatabase, SchemaGuard)> {
    database_with(suite, config()).await
}

pub async fn database_with(suite: &str, config: PgConfig) -> Option<(PgDatabase, SchemaGuard)> {
    server(suite)?;
    let guard = SchemaGuard::new();
    guard.track(&config.schema);
    let db = PgDatabase::connect(config)
        .await
        .expect("connect to the test server");
    Some((db, guard))
}
