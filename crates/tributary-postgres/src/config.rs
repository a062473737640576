//! Settings of a service's PostgreSQL database.

use std::time::Duration;

use tributary_core::{DEFAULT_MAX_EVENT_BYTES, Error, Result};

/// Settings for [`crate::PgDatabase::connect`].
#[derive(Clone, Debug)]
pub struct PgConfig {
    /// The server and database, e.g. `postgres://user@host:5432/db`.
    pub url: String,
    /// The schema of Tributary's tables for this service (created if missing), by default
    /// `tributary`: apart from the service's own tables, so that neither set of migrations
    /// meets the other. Services sharing a database each take their own (e.g.
    /// `orders_tributary`). A schema that also holds the service's tables works too.
    pub schema: String,
    /// The most pooled connections. Every running unit of work holds one for its duration;
    /// leases and the commit listener use connections of their own.
    pub max_connections: u32,
    /// The largest event (data plus metadata) accepted, in bytes.
    pub max_event_bytes: usize,
    /// How often readers look for commits they were not notified of.
    pub poll_every: Duration,
    /// How long a read waits for transactions that started before rows it could otherwise
    /// return (the xmin horizon, see the `position` module) before it returns without them.
    pub settle_timeout: Duration,
    /// How long taking a pooled connection may wait before the operation is `Unavailable`.
    pub acquire_timeout: Duration,
}

impl Default for PgConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@localhost:5432/postgres".into(),
            schema: "tributary".into(),
            max_connections: 10,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            poll_every: Duration::from_millis(500),
            settle_timeout: Duration::from_secs(1),
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

impl PgConfig {
    pub fn with_url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }
    pub fn with_max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }
    pub fn with_max_event_bytes(mut self, n: usize) -> Self {
        self.max_event_bytes = n;
        self
    }
    pub fn with_poll_every(mut self, d: Duration) -> Self {
        self.poll_every = d;
        self
    }
    pub fn with_settle_timeout(mut self, d: Duration) -> Self {
        self.settle_timeout = d;
        self
    }
    pub fn with_acquire_timeout(mut self, d: Duration) -> Self {
        self.acquire_timeout = d;
        self
    }
}

/// Checks that `schema` is a plain lower-case identifier, so it can be quoted into SQL safely
/// and means the same thing quoted or not.
///
/// # Errors
/// [`Error::InvalidInput`] otherwise.
pub(crate) fn validate_schema(schema: &str) -> Result<()> {
    let mut bytes = schema.bytes();
    let valid_start = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    let valid_rest = bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !valid_start || !valid_rest || schema.len() > 50 || schema.starts_with("pg_") {
        return Err(Error::invalid(format!(
            "schema name {schema:?} must be 1 to 50 lower-case ASCII letters, digits or '_', start with a letter or '_' and not with 'pg_'"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for good in ["tributary", "orders_v2", "_x"] {
            assert!(validate_schema(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Orders",
            "a-b",
            "a\"b",
            "1abc",
            "pg_catalog",
            &"x".repeat(51),
        ] {
            assert!(validate_schema(bad).is_err(), "{bad:?}");
        }
    }
}
