//! [`BinlogConfig`]: what a binlog capture reads and how.

use std::time::Duration;

use tributary_core::Topic;

use crate::capture::{OutboxCapture, TableCapture, TableConfig, topic_for_name};

/// Settings of a MySQL/MariaDB binlog capture.
///
/// Table names are `database.table`; a name without a database means the connection's
/// database ([`BinlogConfig::table`] builds one that way).
#[derive(Debug, Clone)]
pub struct BinlogConfig {
    /// `mysql://user[:password]@host[:port]/database`: the server to read the binlog of, and
    /// the database that holds the capture's state table (and, by default, the tables).
    pub url: String,
    /// The events' `source`.
    pub name: String,
    /// The capture's identity: its state row, its lease and its event ids. One running
    /// capture per name (`tributary cdc --slot`).
    pub capture: String,
    /// The replica id the capture registers with; unique among the server's replicas (a
    /// server drops the older of two replicas with the same id). Derived from the capture's
    /// name by [`with_capture`](Self::with_capture).
    pub server_id: u32,
    /// Table changes.
    pub tables: Option<TableCapture>,
    /// Outbox tailing.
    pub outbox: Option<OutboxCapture>,
    /// Most messages per batch (a transaction larger than this is split).
    pub batch_size: usize,
    /// How many decoded batches may wait for the broker; bounds the capture's memory to
    /// about `(pipeline_depth + 2) × batch_size` messages.
    pub pipeline_depth: usize,
    /// How often an idle capture stores the position it reached (a write to its state row,
    /// which is itself binlogged and so also moves the stream), or `None` for never.
    pub heartbeat_interval: Option<Duration>,
    /// How often the lease's connection is checked.
    pub lease_check_interval: Duration,
    /// How long a read waits for the stream before reporting nothing new.
    pub idle_wait: Duration,
    /// Where rows with an unusable topic go.
    pub invalid_topic: Topic,
}

impl Default for BinlogConfig {
    fn default() -> Self {
        BinlogConfig {
            url: "mysql://root@127.0.0.1:3306/test".into(),
            name: "tributary-cdc".into(),
            capture: "tributary_cdc".into(),
            server_id: 0x7472_6962,
            tables: Some(TableCapture::default()),
            outbox: None,
            batch_size: 1000,
            pipeline_depth: 4,
            heartbeat_interval: Some(Duration::from_secs(10)),
            lease_check_interval: Duration::from_secs(2),
            idle_wait: Duration::from_millis(500),
            invalid_topic: topic_for_name("cdc-invalid"),
        }
    }
}

/// A replica server id for a capture: FNV-1a of its database and name, in the upper half of
/// the id space (where hand-picked server ids rarely are).
fn server_id_for(capture: &str, database: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in database.bytes().chain([0]).chain(capture.bytes()) {
        hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
    }
    hash | 0x8000_0000
}

impl BinlogConfig {
    pub fn with_url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
    pub fn with_capture(mut self, capture: impl Into<String>) -> Self {
        self.capture = capture.into();
        self.server_id = server_id_for(&self.capture, self.database().as_deref().unwrap_or(""));
        self
    }
    pub fn with_server_id(mut self, server_id: u32) -> Self {
        self.server_id = server_id;
        self
    }
    pub fn with_tables(mut self, tables: TableCapture) -> Self {
        self.tables = Some(tables);
        self
    }
    pub fn without_tables(mut self) -> Self {
        self.tables = None;
        self
    }
    pub fn with_outbox(mut self, outbox: OutboxCapture) -> Self {
        self.outbox = Some(outbox);
        self
    }
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }
    pub fn with_pipeline_depth(mut self, depth: usize) -> Self {
        self.pipeline_depth = depth.max(1);
        self
    }
    pub fn with_heartbeat_interval(mut self, interval: Option<Duration>) -> Self {
        self.heartbeat_interval = interval;
        self
    }
    pub fn with_lease_check_interval(mut self, interval: Duration) -> Self {
        self.lease_check_interval = interval;
        self
    }
    pub fn with_idle_wait(mut self, wait: Duration) -> Self {
        self.idle_wait = wait;
        self
    }

    /// The connection's database (`test` in `mysql://…/test`).
    pub fn database(&self) -> Option<String> {
        let path = self.url.split("://").nth(1)?.split_once('/')?.1;
        let db = path.split('?').next()?.trim();
        (!db.is_empty()).then(|| db.to_owned())
    }

    /// The name of the capture's lease lock. Named locks are server-wide on MySQL and MariaDB,
    /// not per database, so the database is part of the name: captures of the same name in two
    /// databases of one server never stand by behind each other. A name is at most 64
    /// characters; a longer one is `tributary-cdc:` and a hash of the whole.
    pub fn lease_lock(&self) -> String {
        let database = self.database().unwrap_or_default();
        let name = format!("tributary-cdc:{database}.{}", self.capture);
        if name.len() <= 64 {
            name
        } else {
            format!(
                "tributary-cdc:{:016x}",
                crate::hash::fnv1a64(name.as_bytes())
            )
        }
    }

    /// A table to capture: `database.table`, or `table` in the connection's database.
    pub fn table(&self, name: &str) -> TableConfig {
        if name.contains('.') {
            TableConfig::new(name)
        } else {
            TableConfig::new(&format!(
                "{}.{name}",
                self.database().unwrap_or_else(|| "test".into())
            ))
        }
    }

    pub(crate) fn wants_snapshot(&self) -> bool {
        self.tables
            .iter()
            .flat_map(|t| &t.tables)
            .any(|t| t.snapshot)
            || self.outbox.as_ref().is_some_and(|o| o.snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::BinlogConfig;

    fn config(database: &str, capture: &str) -> BinlogConfig {
        BinlogConfig::default()
            .with_url(format!("mysql://root@127.0.0.1:3306/{database}"))
            .with_capture(capture)
    }

    #[test]
    fn the_lease_lock_is_per_database_and_capture() {
        assert_eq!(
            config("orders", "cdc").lease_lock(),
            "tributary-cdc:orders.cdc"
        );
        assert_ne!(
            config("orders", "cdc").lease_lock(),
            config("customers", "cdc").lease_lock()
        );
        assert_ne!(
            config("orders", "a").lease_lock(),
            config("orders", "b").lease_lock()
        );
    }

    #[test]
    fn a_long_lease_lock_is_a_hash_within_the_servers_limit() {
        let long = "c".repeat(190);
        let (a, b) = (config("orders", &long), config("customers", &long));
        for lock in [a.lease_lock(), b.lease_lock()] {
            assert!(lock.len() <= 64, "{lock}");
            assert!(lock.starts_with("tributary-cdc:"), "{lock}");
        }
        assert_ne!(a.lease_lock(), b.lease_lock());
        assert_eq!(a.lease_lock(), a.clone().lease_lock(), "stable");
    }
}
