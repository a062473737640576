//! What to capture and how: [`CdcConfig`] and the settings of each mode.

use std::time::Duration;

use tributary_core::Topic;

use crate::replication::{PgReplicationConfig, PublicationName, SlotName};

/// The prefix of the capture's own heartbeat messages (`pg_logical_emit_message(false,
/// 'tributary-heartbeat', …)`); never published.
pub const HEARTBEAT_PREFIX: &str = "tributary-heartbeat";

/// Settings of a capture: where to read, what to publish, how fast.
///
/// Any combination of the three modes can be on at once; by default only table changes are,
/// for every table of the publication.
#[derive(Debug, Clone)]
pub struct CdcConfig {
    /// The server and database (a user with the REPLICATION attribute).
    pub connection: PgReplicationConfig,
    /// The capture's name: the `source` of every event it makes, and its name in logs.
    pub name: String,
    /// The replication slot; one capture per slot.
    pub slot: SlotName,
    /// The publications whose tables are streamed (`CREATE PUBLICATION` beforehand).
    pub publications: Vec<PublicationName>,
    /// Mode 1: row changes of tables become events. `None`: off.
    pub tables: Option<TableCapture>,
    /// Mode 2: rows inserted into an outbox table are published as their own envelopes.
    /// `None`: off.
    pub outbox: Option<OutboxCapture>,
    /// Mode 3: transactional `pg_logical_emit_message` messages become events. `None`: off.
    pub messages: Option<MessageCapture>,
    /// Most messages handed to the broker at once.
    pub batch_size: usize,
    /// How often a heartbeat is written on the control connection, so that a quiet captured
    /// database does not keep the slot from releasing WAL (see the module doc). `None`: no
    /// heartbeats; positions without data (keepalives) are then confirmed only up to the
    /// position recorded with the last captured change, so a captured database whose
    /// tables stay quiet while other WAL is written keeps that WAL. Keep them on.
    pub heartbeat_interval: Option<Duration>,
    /// How often the control connection (which holds the lease) is checked.
    pub lease_check_interval: Duration,
    /// How long one read waits for a committed transaction before reporting none.
    pub idle_wait: Duration,
    /// How many decoded batches may wait for the broker while it has the one before them:
    /// decoding and building envelopes overlap the publish round trip, and memory stays
    /// bounded to about `(pipeline_depth + 2) × batch_size` messages.
    pub pipeline_depth: usize,
    /// Schema of the capture's bookkeeping table (`tributary_cdc_slots`), created on first
    /// run. It must not be in a published table list (a `FOR ALL TABLES` publication is
    /// fine: its changes are ignored).
    pub state_schema: String,
    /// Where messages go whose own topic is not a valid topic name (an outbox row with a bad
    /// `topic`), so that a bad row neither stops the capture nor disappears.
    pub invalid_topic: Topic,
}

impl Default for CdcConfig {
    fn default() -> Self {
        CdcConfig {
            connection: PgReplicationConfig::default(),
            name: "tributary-cdc".into(),
            slot: SlotName::from_static("tributary_cdc"),
            publications: vec![PublicationName::from_static("tributary_cdc")],
            tables: Some(TableCapture::default()),
            outbox: None,
            messages: None,
            batch_size: 1000,
            heartbeat_interval: Some(Duration::from_secs(10)),
            lease_check_interval: Duration::from_secs(2),
            idle_wait: Duration::from_millis(500),
            pipeline_depth: 4,
            state_schema: "public".into(),
            invalid_topic: topic_or_default("cdc-invalid"),
        }
    }
}

impl CdcConfig {
    /// Sets the connection settings.
    pub fn with_connection(mut self, connection: PgReplicationConfig) -> Self {
        self.connection = connection;
        self
    }

    /// Sets the capture's name (the events' `source`).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the slot.
    pub fn with_slot(mut self, slot: SlotName) -> Self {
        self.slot = slot;
        self
    }

    /// Streams this one publication.
    pub fn with_publication(mut self, publication: PublicationName) -> Self {
        self.publications = vec![publication];
        self
    }

    /// Streams these publications.
    pub fn with_publications(mut self, publications: Vec<PublicationName>) -> Self {
        self.publications = publications;
        self
    }

    /// Turns table changes on with these settings.
    pub fn with_tables(mut self, tables: TableCapture) -> Self {
        self.tables = Some(tables);
        self
    }

    /// Turns table changes off (for an outbox- or message-only capture).
    pub fn without_tables(mut self) -> Self {
        self.tables = None;
        self
    }

    /// Turns outbox tailing on.
    pub fn with_outbox(mut self, outbox: OutboxCapture) -> Self {
        self.outbox = Some(outbox);
        self
    }

    /// Turns logical messages on.
    pub fn with_messages(mut self, messages: MessageCapture) -> Self {
        self.messages = Some(messages);
        self
    }

    /// Sets the batch size (at least 1).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Sets the heartbeat interval (`None`: no heartbeats).
    pub fn with_heartbeat_interval(mut self, interval: Option<Duration>) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// Sets how often the lease's connection is checked.
    pub fn with_lease_check_interval(mut self, interval: Duration) -> Self {
        self.lease_check_interval = interval;
        self
    }

    /// Sets how long one read waits for a transaction.
    pub fn with_pipeline_depth(mut self, depth: usize) -> Self {
        self.pipeline_depth = depth.max(1);
        self
    }

    pub fn with_idle_wait(mut self, wait: Duration) -> Self {
        self.idle_wait = wait;
        self
    }

    /// Sets the schema of the bookkeeping table.
    pub fn with_state_schema(mut self, schema: impl Into<String>) -> Self {
        self.state_schema = schema.into();
        self
    }

    /// Sets the topic of messages whose own topic is invalid.
    pub fn with_invalid_topic(mut self, topic: Topic) -> Self {
        self.invalid_topic = topic;
        self
    }

    /// The tables whose existing rows are published before streaming starts.
    pub fn snapshot_tables(&self) -> impl Iterator<Item = &TableConfig> {
        self.tables
            .iter()
            .flat_map(|t| &t.tables)
            .filter(|t| t.snapshot)
    }

    /// Whether the slot is created with an exported snapshot for an initial load.
    pub fn wants_snapshot(&self) -> bool {
        self.snapshot_tables().next().is_some() || self.snapshot_outbox().is_some()
    }

    /// The outbox, if its existing rows are published when the slot is created.
    pub fn snapshot_outbox(&self) -> Option<&OutboxCapture> {
        self.outbox.as_ref().filter(|o| o.snapshot)
    }
}

/// Which tables' row changes are published, and how.
#[derive(Debug, Clone, Default)]
pub struct TableCapture {
    /// The tables, each with its settings. Empty: every table of the publications, with
    /// default settings (except the outbox table and the capture's own table).
    pub tables: Vec<TableConfig>,
}

impl TableCapture {
    /// Every table of the publications, with default settings.
    pub fn all() -> Self {
        TableCapture::default()
    }

    /// Only these tables.
    pub fn only(tables: Vec<TableConfig>) -> Self {
        TableCapture { tables }
    }

    /// Adds a table.
    pub fn with_table(mut self, table: TableConfig) -> Self {
        self.tables.push(table);
        self
    }
}

/// One captured table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableConfig {
    /// The schema (`public` unless given as `schema.table`).
    pub schema: String,
    /// The table's name.
    pub table: String,
    /// The topic; by default the table's name made into a valid topic name.
    pub topic: Option<Topic>,
    /// The columns whose values, joined with `:`, make the partition key (and the `key` of
    /// the event data); by default the primary key, else the replica identity columns.
    pub key_columns: Option<Vec<String>>,
    /// The first word of the event types (`<prefix>.inserted`); by default the table name.
    pub event_prefix: Option<String>,
    /// Publish the existing rows (`<prefix>.snapshot`) when the slot is created. Only then:
    /// a table given a snapshot later gets one at the next re-snapshot.
    pub snapshot: bool,
}

impl TableConfig {
    /// A table named `table` or `schema.table` (unquoted names; use the fields for names
    /// containing a dot).
    pub fn new(name: &str) -> Self {
        let (schema, table) = match name.split_once('.') {
            Some((schema, table)) => (schema.to_owned(), table.to_owned()),
            None => ("public".to_owned(), name.to_owned()),
        };
        TableConfig {
            schema,
            table,
            topic: None,
            key_columns: None,
            event_prefix: None,
            snapshot: false,
        }
    }

    /// Sets the topic.
    pub fn with_topic(mut self, topic: Topic) -> Self {
        self.topic = Some(topic);
        self
    }

    /// Sets the key columns.
    pub fn with_key_columns<I, S>(mut self, columns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.key_columns = Some(columns.into_iter().map(Into::into).collect());
        self
    }

    /// Sets the event type prefix.
    pub fn with_event_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.event_prefix = Some(prefix.into());
        self
    }

    /// Publishes the table's existing rows first.
    pub fn with_snapshot(mut self, snapshot: bool) -> Self {
        self.snapshot = snapshot;
        self
    }

    pub(crate) fn matches(&self, schema: &str, table: &str) -> bool {
        self.table == table && self.schema == schema
    }
}

/// The outbox table whose inserted rows are published (the layout of Tributary's outbox:
/// `id bigint`, `topic text`, `message_key text`, `event_id uuid`, `payload` as `bytea`,
/// `jsonb`, `json` or `text` holding the envelope as CloudEvents JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxCapture {
    /// The schema.
    pub schema: String,
    /// The table.
    pub table: String,
    /// The increasing row id (used to delete published rows).
    pub id_column: String,
    /// The topic to publish on.
    pub topic_column: String,
    /// The partition key.
    pub key_column: String,
    /// The envelope id (the broker's dedup id).
    pub event_id_column: String,
    /// The envelope as CloudEvents JSON.
    pub payload_column: String,
    /// After the broker acknowledged a batch, delete the published rows (`DELETE … WHERE id
    /// <= the batch's highest id`). Those deletes stream through the slot too and are never
    /// published.
    pub delete_published: bool,
    /// When the slot is created, publish the rows already in the outbox (read in the slot's
    /// exported snapshot, so they meet the stream exactly). Without it, rows written before
    /// the capture's first start would never be published. On by default.
    pub snapshot: bool,
}

impl Default for OutboxCapture {
    fn default() -> Self {
        OutboxCapture {
            schema: "public".into(),
            table: "outbox".into(),
            id_column: "id".into(),
            topic_column: "topic".into(),
            key_column: "message_key".into(),
            event_id_column: "event_id".into(),
            payload_column: "payload".into(),
            delete_published: false,
            snapshot: true,
        }
    }
}

impl OutboxCapture {
    /// The outbox table `table` or `schema.table`.
    pub fn with_table(mut self, name: &str) -> Self {
        let table = TableConfig::new(name);
        self.schema = table.schema;
        self.table = table.table;
        self
    }

    /// Sets the column names: id, topic, key, event id, payload.
    pub fn with_columns(
        mut self,
        id: impl Into<String>,
        topic: impl Into<String>,
        key: impl Into<String>,
        event_id: impl Into<String>,
        payload: impl Into<String>,
    ) -> Self {
        self.id_column = id.into();
        self.topic_column = topic.into();
        self.key_column = key.into();
        self.event_id_column = event_id.into();
        self.payload_column = payload.into();
        self
    }

    /// Deletes published rows after each acknowledged batch.
    pub fn with_delete_published(mut self, delete: bool) -> Self {
        self.delete_published = delete;
        self
    }

    /// Publishes the rows already in the outbox when the slot is created (the default).
    pub fn with_snapshot(mut self, snapshot: bool) -> Self {
        self.snapshot = snapshot;
        self
    }

    pub(crate) fn matches(&self, schema: &str, table: &str) -> bool {
        self.table == table && self.schema == schema
    }
}

/// Which logical decoding messages become events.
#[derive(Debug, Clone)]
pub struct MessageCapture {
    /// Prefixes with their topic and event type.
    pub routes: Vec<MessageRoute>,
    /// Publish messages whose prefix has no route too: topic = the prefix made into a valid
    /// topic name, type = the prefix, key = the prefix.
    pub publish_unrouted: bool,
}

impl Default for MessageCapture {
    /// Every prefix, unrouted.
    fn default() -> Self {
        MessageCapture {
            routes: Vec::new(),
            publish_unrouted: true,
        }
    }
}

impl MessageCapture {
    /// Only the prefixes of `routes`.
    pub fn routed(routes: Vec<MessageRoute>) -> Self {
        MessageCapture {
            routes,
            publish_unrouted: false,
        }
    }

    /// Adds a route.
    pub fn with_route(mut self, route: MessageRoute) -> Self {
        self.routes.push(route);
        self
    }

    /// Whether unrouted prefixes are published.
    pub fn with_publish_unrouted(mut self, publish: bool) -> Self {
        self.publish_unrouted = publish;
        self
    }
}

/// Where messages with one prefix go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRoute {
    /// The prefix, matched exactly.
    pub prefix: String,
    /// The topic.
    pub topic: Topic,
    /// The event type of plain JSON payloads; by default the prefix.
    pub event_type: Option<String>,
    /// The partition key of plain JSON payloads; by default the prefix (one ordered stream
    /// per prefix).
    pub partition_key: Option<String>,
}

impl MessageRoute {
    /// Messages with `prefix` go to `topic`.
    pub fn new(prefix: impl Into<String>, topic: Topic) -> Self {
        MessageRoute {
            prefix: prefix.into(),
            topic,
            event_type: None,
            partition_key: None,
        }
    }

    /// Sets the event type.
    pub fn with_event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = Some(event_type.into());
        self
    }

    /// Sets the partition key.
    pub fn with_partition_key(mut self, key: impl Into<String>) -> Self {
        self.partition_key = Some(key.into());
        self
    }
}

/// `name` made into a valid topic name: characters other than ASCII letters, digits, `_` and
/// `-` become `_`, cut to 64 bytes; `cdc` if nothing is left.
pub fn topic_for_name(name: &str) -> Topic {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(tributary_core::MAX_NAME_LEN)
        .collect();
    topic_or_default(&cleaned)
}

fn topic_or_default(name: &str) -> Topic {
    Topic::new(name)
        .or_else(|_| Topic::new("cdc"))
        .unwrap_or_else(|_| unreachable!("\"cdc\" is a valid topic name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_become_valid_topics() {
        assert_eq!(topic_for_name("orders").as_str(), "orders");
        assert_eq!(
            topic_for_name("public.Order Lines").as_str(),
            "public_Order_Lines"
        );
        assert_eq!(topic_for_name("").as_str(), "cdc");
        assert_eq!(topic_for_name(&"ä".repeat(80)).as_str().len(), 64);
    }

    #[test]
    fn table_names_take_an_optional_schema() {
        let t = TableConfig::new("sales.orders");
        assert_eq!((t.schema.as_str(), t.table.as_str()), ("sales", "orders"));
        let t = TableConfig::new("orders");
        assert_eq!((t.schema.as_str(), t.table.as_str()), ("public", "orders"));
    }

    #[test]
    fn snapshot_is_wanted_only_when_a_table_asks_for_it() {
        let config = CdcConfig::default();
        assert!(!config.wants_snapshot());
        let config = config.with_tables(TableCapture::only(vec![
            TableConfig::new("a"),
            TableConfig::new("b").with_snapshot(true),
        ]));
        assert!(config.wants_snapshot());
        assert_eq!(config.snapshot_tables().count(), 1);
    }
}
