//! Operator commands for any deployment built on Tributary, not only the reference
//! application: they know a service only by its database (and broker) URL, through the
//! facade's URL dispatch (`sqlite://…`, `postgres://…`, `embedded://…`, `nats://…`).
//!
//! Read-only commands (`status`, `dead-letters list|show`, `events show`) refuse a SQLite file
//! that does not exist rather than create one. Opening an existing database still applies
//! Tributary's pending migrations (there is no read-only open yet).

pub mod dead_letters;
pub mod events;
pub mod relay;
pub mod status;
pub mod tail;

use std::sync::Arc;

use tributary::{Database, DatabaseUrl};

/// The service database at `url`, which must exist.
///
/// # Errors
/// A bad URL, a SQLite file that does not exist, a server that cannot be reached.
pub async fn open_existing(url: &str) -> anyhow::Result<Arc<dyn Database>> {
    let parsed: DatabaseUrl = url.parse()?;
    if let DatabaseUrl::Sqlite { path, .. } = &parsed {
        anyhow::ensure!(
            path.is_file(),
            "no such deployment: {} does not exist (give the service's database file)",
            path.display()
        );
    }
    Ok(parsed.connect().await?)
}

/// `url` with any password hidden, for what the commands print.
pub fn shown(url: &str) -> String {
    tributary::redact(url)
}
