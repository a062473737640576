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

use tributary::{Broker, BrokerUrl, Database, DatabaseUrl};

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

/// The broker at `url`; an embedded log must exist (reading is no reason to create one).
///
/// # Errors
/// A bad URL, an embedded log that does not exist, a server that cannot be reached.
pub async fn open_existing_broker(url: &str) -> anyhow::Result<Arc<dyn Broker>> {
    let parsed: BrokerUrl = url.parse()?;
    if let BrokerUrl::Embedded { dir } = &parsed {
        let log = dir.join("broker.db");
        anyhow::ensure!(
            log.is_file(),
            "no such deployment: no embedded log at {}",
            log.display()
        );
    }
    Ok(parsed.connect().await?)
}

/// `url` with any password hidden, for what the commands print.
pub fn shown(url: &str) -> String {
    tributary::redact(url)
}
