//! Operator commands for any deployment built on Tributary, not only the reference
//! application: they know a service only by its database (and broker) URL, through the
//! facade's URL dispatch (`sqlite://…`, `postgres://…`, `embedded://…`, `nats://…`).
//!
//! They work on a deployment that exists and never create or migrate one: each database is
//! inspected first ([`DatabaseUrl::inspect`]), and a missing file or schema, or one at an
//! older schema version, is refused ("no such deployment") before anything is opened.

pub mod dead_letters;
pub mod events;
pub mod relay;
pub mod status;
pub mod tail;

use std::sync::Arc;

use tributary::{Broker, BrokerUrl, Database, DatabaseUrl, Found};

/// The service database at `url`, which must exist at this build's schema version.
///
/// # Errors
/// A bad URL; no Tributary database there, or one that opening would migrate; a server that
/// cannot be reached.
pub async fn open_existing(url: &str) -> anyhow::Result<Arc<dyn Database>> {
    let parsed: DatabaseUrl = url.parse()?;
    let absent = format!("{parsed} holds no Tributary service database");
    refuse_unless_current(parsed.inspect().await?, &parsed, &absent)?;
    Ok(parsed.connect().await?)
}

/// The broker at `url`; an embedded log must exist (reading is no reason to create one).
///
/// # Errors
/// A bad URL, an embedded log that does not exist, a server that cannot be reached.
pub async fn open_existing_broker(url: &str) -> anyhow::Result<Arc<dyn Broker>> {
    let parsed: BrokerUrl = url.parse()?;
    let absent = match &parsed {
        BrokerUrl::Embedded { dir } => format!("no embedded log in {}", dir.display()),
        other => format!("{other} holds no Tributary broker"),
    };
    refuse_unless_current(parsed.inspect().await?, &parsed, &absent)?;
    Ok(parsed.connect().await?)
}

fn refuse_unless_current(
    found: Found,
    what: &dyn std::fmt::Display,
    absent: &str,
) -> anyhow::Result<()> {
    match found {
        Found::Current | Found::Unknown => Ok(()),
        Found::Nothing => anyhow::bail!("no such deployment: {absent}"),
        _ => anyhow::bail!(
            "{what} is at an older schema version than this build: start its service once to \
             migrate it (operator commands change no schema)"
        ),
    }
}

/// `url` with any password hidden, for what the commands print.
pub fn shown(url: &str) -> String {
    tributary::redact(url)
}
