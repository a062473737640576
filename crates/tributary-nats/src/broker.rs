//! [`NatsBroker`]: topics as JetStream streams, publishing with acknowledgements.
//!
//! Delivery guarantee: at-least-once. `publish` returns only after JetStream acknowledged every
//! message (each with `Nats-Msg-Id` = the envelope id, so a retried batch is stored once within
//! the stream's duplicate window); a group's consumer redelivers everything after its committed
//! offset. "Acknowledged" means accepted by the server, not necessarily on disk: see the crate
//! docs on durability.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishErrorKind, RequestError};
use async_nats::jetstream::response::Response;
use async_nats::jetstream::stream::{
    Config as StreamConfig, DiscardPolicy, Info as StreamInfo, RetentionPolicy, StorageType,
};
use async_nats::jetstream::{self, ErrorCode};
use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tributary_core::{
    Broker, Error, GroupLag, GroupName, LastMessage, OutgoingMessage, Partition, PartitionConsumer,
    Result, Topic,
};

use crate::config::{NatsBrokerConfig, NatsStorage};
use crate::consumer::NatsPartitionConsumer;
use crate::naming::{self, MAX_PARTITIONS};

/// A JetStream API error answer, as the source of a Tributary error.
pub(crate) type ApiError = jetstream::Error;

/// A [`Broker`] on NATS JetStream: a stream per topic, a durable pull consumer per
/// (group, topic, partition). Cheap to clone; clones share one connection.
///
/// The connection reconnects by itself after a network failure or a server restart; while it
/// is down, operations fail with [`Error::Unavailable`] after the configured timeouts.
#[derive(Clone)]
pub struct NatsBroker {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) client: async_nats::Client,
    pub(crate) js: jetstream::Context,
    pub(crate) config: NatsBrokerConfig,
    /// Partition counts of the topics whose streams were checked by this process.
    topics: Mutex<HashMap<Topic, u32>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The map is a cache of server facts: whatever a panicking thread left in it is still true.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Deserialize)]
struct StreamNamesPage {
    #[serde(default)]
    total: usize,
    #[serde(default)]
    streams: Option<Vec<String>>,
}

impl NatsBroker {
    /// Connects to the server of `config.url` and checks every existing stream under the
    /// configured prefix against the configuration.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an invalid configuration, a malformed URL, or an existing
    /// stream whose settings differ from the configuration; [`Error::Unavailable`] when the
    /// server cannot be reached within `connect_timeout` or has JetStream disabled.
    pub async fn connect(config: NatsBrokerConfig) -> Result<Self> {
        config.validate()?;
        let what = format!("NATS server at {}", config.url);
        // A cluster is given as a comma-separated list: the client picks a server and fails
        // over to the others (a single string would be read as one malformed URL).
        let servers: Vec<&str> = config
            .url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if servers.is_empty() {
            return Err(Error::invalid("the NATS URL is empty"));
        }
        let client = async_nats::ConnectOptions::new()
            .name("tributary-nats")
            .connection_timeout(config.connect_timeout)
            .request_timeout(Some(config.request_timeout))
            .reconnect_delay_callback({
                let max = config.max_reconnect_delay;
                move |attempts| crate::config::reconnect_delay(attempts, max)
            })
            .connect(servers)
            .await
            .map_err(|e| match e.kind() {
                async_nats::ConnectErrorKind::ServerParse => {
                    Error::invalid(format!("cannot parse NATS URL {:?}: {e}", config.url))
                }
                _ => Error::unavailable(what.clone(), e),
            })?;
        // Publish acknowledgements are bounded per call by `publish_window`; the context's own
        // in-flight limit is shared by all callers and would deadlock concurrent publishers
        // that each hold part of it, so it is set out of the way.
        let js = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .max_ack_inflight(1 << 24)
            .build(client.clone());
        let broker = Self {
            inner: Arc::new(Inner {
                client,
                js,
                config,
                topics: Mutex::default(),
            }),
        };
        // Account info as plain JSON: async-nats's typed account struct expects fields that a
        // 2.9 server does not send.
        let what = format!("JetStream on {what}");
        broker
            .inner
            .api::<serde_json::Value>(&what, "INFO".into(), &json!({}))
            .await?
            .map_err(|e| Error::unavailable(what, e))?;
        for topic in broker.topics().await? {
            broker.inner.ensure(&topic, None).await?;
        }
        Ok(broker)
    }

    pub fn config(&self) -> &NatsBrokerConfig {
        &self.inner.config
    }

    /// The version the server reported when the connection was (last) established, for
    /// benchmark settings and diagnostics: what an acknowledgement means on disk depends on it
    /// (see the crate docs on durability).
    pub fn server_version(&self) -> String {
        self.inner.client.server_info().version
    }

    /// The JetStream stream holding `topic`.
    pub fn stream_name(&self, topic: &Topic) -> String {
        naming::stream_name(&self.inner.config.stream_prefix, topic)
    }

    /// The topics whose streams exist under this broker's prefix.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the server cannot be reached.
    pub async fn topics(&self) -> Result<Vec<Topic>> {
        let inner = &self.inner;
        let head = format!("{}_", inner.config.stream_prefix);
        let filter = naming::prefix_filter(&inner.config.stream_prefix);
        let mut names = Vec::new();
        loop {
            let page: StreamNamesPage = inner
                .api(
                    "listing JetStream streams",
                    "STREAM.NAMES".into(),
                    &json!({ "subject": filter, "offset": names.len() }),
                )
                .await?
                .map_err(|e| inner.api_failure("listing JetStream streams", e))?;
            let streams = page.streams.unwrap_or_default();
            if streams.is_empty() {
                break;
            }
            names.extend(streams);
            if names.len() >= page.total {
                break;
            }
        }
        let mut topics: Vec<Topic> = names
            .iter()
            .filter_map(|name| name.strip_prefix(&head))
            .filter_map(|topic| Topic::new(topic).ok())
            .collect();
        topics.sort();
        Ok(topics)
    }

    /// Deletes `topic`'s stream with every message and consumer in it. Returns whether it
    /// existed.
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the server cannot be reached.
    pub async fn delete_topic(&self, topic: &Topic) -> Result<bool> {
        let inner = &self.inner;
        let name = self.stream_name(topic);
        lock(&inner.topics).remove(topic);
        let what = format!("deleting JetStream stream {name}");
        match inner
            .api::<serde_json::Value>(&what, format!("STREAM.DELETE.{name}"), &json!({}))
            .await?
        {
            Ok(_) => Ok(true),
            Err(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND => Ok(false),
            Err(e) => Err(inner.api_failure(&what, e)),
        }
    }
}

impl Inner {
    /// One JetStream API request. The outer result is the transport (unreachable server,
    /// timeout); the inner one is the server's answer.
    pub(crate) async fn api<T: DeserializeOwned>(
        &self,
        what: &str,
        subject: String,
        payload: &serde_json::Value,
    ) -> Result<Result<T, ApiError>> {
        let request = async {
            self.js
                .request(subject, payload)
                .await
                .map_err(|e: RequestError| Error::unavailable(what.to_owned(), e))
        };
        let response: Response<T> = self.bounded(what, request).await?;
        Ok(match response {
            Response::Ok(value) => Ok(value),
            Response::Err { error } => Err(error),
        })
    }

    /// Bounds a call into the client by `request_timeout`. While the connection is down, the
    /// client's command queue fills up and sending into it waits for the reconnection, outside
    /// the client's own timeouts.
    pub(crate) async fn bounded<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let limit = self.config.request_timeout;
        tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
            Err(Error::unavailable(
                what.to_owned(),
                format!("no answer within {limit:?}"),
            ))
        })
    }

    /// The error for a JetStream API refusal: the server's 5xx answers (no leader, no
    /// resources, shutting down) are worth retrying, the rest are not.
    pub(crate) fn api_failure(&self, what: &str, e: ApiError) -> Error {
        if e.code() >= 500 {
            Error::unavailable(what.to_owned(), e)
        } else {
            Error::invalid(format!("{what}: {e}"))
        }
    }

    fn stream_config(&self, topic: &Topic, partitions: u32) -> StreamConfig {
        let c = &self.config;
        StreamConfig {
            name: naming::stream_name(&c.stream_prefix, topic),
            description: Some(naming::stream_description(topic, partitions)),
            subjects: naming::subjects(&c.stream_prefix, topic, partitions),
            retention: RetentionPolicy::Limits,
            storage: match c.storage {
                NatsStorage::File => StorageType::File,
                NatsStorage::Memory => StorageType::Memory,
            },
            num_replicas: c.replicas,
            max_age: c.max_age,
            duplicate_window: c.duplicate_window,
            max_messages: -1,
            max_bytes: -1,
            max_messages_per_subject: -1,
            max_consumers: -1,
            discard: DiscardPolicy::Old,
            ..Default::default()
        }
    }

    /// The partition count of an existing stream, after checking that its settings are the
    /// ones this broker is configured for.
    pub(crate) fn check_stream(&self, topic: &Topic, info: &StreamInfo) -> Result<u32> {
        let c = &self.config;
        let cfg = &info.config;
        let name = &cfg.name;
        let partitions = cfg
            .description
            .as_deref()
            .and_then(naming::partitions_in_description)
            .filter(|n| (1..=MAX_PARTITIONS).contains(n))
            .ok_or_else(|| {
                Error::invalid(format!(
                    "stream {name} exists but its description records no Tributary partition \
                     count; it was not created by Tributary: delete it or use another stream prefix"
                ))
            })?;
        if cfg.subjects != naming::subjects(&c.stream_prefix, topic, partitions) {
            return Err(Error::invalid(format!(
                "stream {name} records {partitions} partitions but has subjects {:?}; it was \
                 changed outside Tributary: delete it or use another stream prefix",
                cfg.subjects
            )));
        }
        let mut problems = Vec::new();
        let expected = self.stream_config(topic, partitions);
        if cfg.retention != RetentionPolicy::Limits {
            problems.push(format!(
                "retention {:?} (Tributary needs limits: groups keep their own offsets)",
                cfg.retention
            ));
        }
        if cfg.storage != expected.storage {
            problems.push(format!(
                "storage {:?} (configured: {:?})",
                cfg.storage, expected.storage
            ));
        }
        if cfg.num_replicas != c.replicas {
            problems.push(format!(
                "{} replicas (configured: {})",
                cfg.num_replicas, c.replicas
            ));
        }
        if cfg.max_age != c.max_age {
            problems.push(format!(
                "max_age {:?} (configured: {:?})",
                cfg.max_age, c.max_age
            ));
        }
        if cfg.duplicate_window != c.duplicate_window {
            problems.push(format!(
                "duplicate_window {:?} (configured: {:?})",
                cfg.duplicate_window, c.duplicate_window
            ));
        }
        if cfg.no_ack {
            problems.push("no_ack set (publishes would not be acknowledged)".into());
        }
        if cfg.max_messages > 0 || cfg.max_bytes > 0 || cfg.max_messages_per_subject > 0 {
            problems.push(format!(
                "size limits (max_msgs {}, max_bytes {}, max_msgs_per_subject {}) that drop \
                 messages before max_age",
                cfg.max_messages, cfg.max_bytes, cfg.max_messages_per_subject
            ));
        }
        if !problems.is_empty() {
            return Err(Error::invalid(format!(
                "stream {name} exists with settings this broker is not configured for: {}; \
                 align the configuration or migrate the stream (Tributary never reconfigures \
                 an existing stream)",
                problems.join(", ")
            )));
        }
        Ok(partitions)
    }

    pub(crate) async fn stream_info(&self, name: &str) -> Result<Option<StreamInfo>> {
        let what = format!("reading JetStream stream {name}");
        match self
            .api::<StreamInfo>(&what, format!("STREAM.INFO.{name}"), &json!({}))
            .await?
        {
            Ok(info) => Ok(Some(info)),
            Err(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND => Ok(None),
            Err(e) => Err(self.api_failure(&what, e)),
        }
    }

    /// The partition count of `topic`, creating its stream (with `wanted` or the default
    /// count) if it does not exist.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] when the stream exists with another partition count than
    /// `wanted` or with other settings than configured.
    pub(crate) async fn ensure(&self, topic: &Topic, wanted: Option<u32>) -> Result<u32> {
        if let Some(n) = wanted
            && (n == 0 || n > MAX_PARTITIONS)
        {
            return Err(Error::invalid(format!(
                "a topic needs 1 to {MAX_PARTITIONS} partitions, not {n}"
            )));
        }
        let cached = lock(&self.topics).get(topic).copied();
        let partitions = match cached {
            Some(n) => n,
            None => {
                let n = self.open_or_create(topic, wanted).await?;
                lock(&self.topics).insert(topic.clone(), n);
                n
            }
        };
        match wanted {
            Some(n) if n != partitions => Err(Error::invalid(format!(
                "topic {topic} has {partitions} partitions, not {n}; partition counts cannot change"
            ))),
            _ => Ok(partitions),
        }
    }

    async fn open_or_create(&self, topic: &Topic, wanted: Option<u32>) -> Result<u32> {
        let name = naming::stream_name(&self.config.stream_prefix, topic);
        if let Some(info) = self.stream_info(&name).await? {
            return self.check_stream(topic, &info);
        }
        let partitions = wanted.unwrap_or(self.config.default_partitions);
        let config = self.stream_config(topic, partitions);
        let what = format!("creating JetStream stream {name}");
        let payload = serde_json::to_value(&config).map_err(|e| Error::invalid(e.to_string()))?;
        match self
            .api::<StreamInfo>(&what, format!("STREAM.CREATE.{name}"), &payload)
            .await?
        {
            Ok(info) => self.check_stream(topic, &info),
            // Another process created it first, maybe with other settings: check them.
            Err(e) if e.error_code() == ErrorCode::STREAM_NAME_EXIST => {
                match self.stream_info(&name).await? {
                    Some(info) => self.check_stream(topic, &info),
                    None => Err(Error::unavailable(
                        what,
                        "the stream was created and deleted concurrently; try again",
                    )),
                }
            }
            Err(e) => Err(self.api_failure(&what, e)),
        }
    }

    fn forget(&self, topic: &Topic) {
        lock(&self.topics).remove(topic);
    }
}

/// Why a publish failed, for the error's source.
#[derive(Debug, thiserror::Error)]
enum PublishProblem {
    #[error("acknowledged by stream {actual} instead of {expected}")]
    WrongStream { expected: String, actual: String },
}

#[async_trait]
impl Broker for NatsBroker {
    /// The client's own view of its connection: a server that closed it (stopped, killed,
    /// restarting) shows at once; one that went silent shows after the client's ping
    /// interval finds it dead.
    fn unreachable(&self) -> Option<String> {
        match self.inner.client.connection_state() {
            async_nats::connection::State::Connected => None,
            state => Some(format!(
                "NATS server at {}: {state} (reconnecting)",
                self.inner.config.url
            )),
        }
    }

    async fn ensure_topic(&self, topic: &Topic, partitions: u32) -> Result<()> {
        self.inner.ensure(topic, Some(partitions)).await.map(|_| ())
    }

    async fn partitions(&self, topic: &Topic) -> Result<u32> {
        self.inner.ensure(topic, None).await
    }

    async fn publish(&self, messages: &[OutgoingMessage]) -> Result<()> {
        let inner = &self.inner;
        let prefix = &inner.config.stream_prefix;
        // Streams first: creating one in the middle of the pipeline would stall it.
        let mut counts: HashMap<&Topic, u32> = HashMap::new();
        for m in messages {
            if !counts.contains_key(&m.topic) {
                counts.insert(&m.topic, inner.ensure(&m.topic, None).await?);
            }
        }
        // Send ahead, then collect the acknowledgements in order; at most `publish_window`
        // are outstanding. Acknowledgement timeouts run concurrently, so a dead server fails
        // the call after about one `request_timeout`, not one per message.
        let mut acks = FuturesOrdered::new();
        let mut failure = None;
        let mut order = BatchOrder::default();
        for m in messages {
            // Commands sent while disconnected wait in the client and go out after the
            // reconnection, long after this call gave up: see `BatchOrder`.
            if inner.client.connection_state() != async_nats::connection::State::Connected {
                failure = Some(Error::unavailable(
                    format!("NATS server at {}", inner.config.url),
                    "not connected (reconnecting)",
                ));
                break;
            }
            let partitions = counts.get(&m.topic).copied().unwrap_or(1);
            let partition = Partition::for_key(&m.key, partitions);
            let subject = naming::subject(prefix, &m.topic, partition);
            let mut headers = HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                m.id.to_string().as_str(),
            );
            headers.insert(naming::KEY_HEADER, naming::encode_key(&m.key).as_str());
            match inner
                .js
                .publish_with_headers(subject, headers, m.payload.clone().into())
                .await
            {
                Ok(ack) => acks.push_back(async move { (m, partition, ack.await) }),
                Err(e) => {
                    failure = Some(publish_error(inner, m, e));
                    break;
                }
            }
            if acks.len() >= inner.config.publish_window
                && let Some((m, partition, ack)) = acks.next().await
            {
                match check_ack(inner, m, ack) {
                    Ok(ack) => order.record(m, partition, &ack),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
        }
        if failure.is_none() {
            while let Some((m, partition, ack)) = acks.next().await {
                match check_ack(inner, m, ack) {
                    Ok(ack) => order.record(m, partition, &ack),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn consume(
        &self,
        group: &GroupName,
        topic: &Topic,
        partition: Partition,
    ) -> Result<Box<dyn PartitionConsumer>> {
        partition.check_in(topic, self.inner.ensure(topic, None).await?)?;
        let consumer =
            NatsPartitionConsumer::open(self.inner.clone(), group, topic, partition).await?;
        Ok(Box::new(consumer))
    }

    fn redelivery_horizon(&self) -> Duration {
        if self.inner.config.max_age.is_zero() {
            Duration::MAX
        } else {
            self.inner.config.max_age
        }
    }

    async fn group_lags(&self) -> Result<Option<Vec<GroupLag>>> {
        let mut lags = Vec::new();
        for topic in self.topics().await? {
            let stream = self.stream_name(&topic);
            lags.extend(crate::consumer::group_lags(&self.inner, &stream, &topic).await?);
        }
        lags.sort_by(|a, b| {
            (&a.group, &a.topic, a.partition).cmp(&(&b.group, &b.topic, b.partition))
        });
        Ok(Some(lags))
    }

    /// One "last message by subject" request per partition, answered by the stream leader.
    async fn last_messages(&self) -> Result<Option<Vec<LastMessage>>> {
        let mut last = Vec::new();
        for topic in self.topics().await? {
            last.extend(crate::last_messages::of_topic(&self.inner, &topic).await?);
        }
        last.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(Some(last))
    }

    /// Deletes every generation of the group's durable consumers (what a group is, on
    /// JetStream). A group of the same name created later starts again at generation 0.
    async fn delete_group(&self, group: &GroupName, topic: &Topic) -> Result<()> {
        let partitions = self.inner.ensure(topic, None).await?;
        let stream = self.stream_name(topic);
        for p in 0..partitions {
            crate::consumer::delete_generations_before(
                &self.inner,
                &stream,
                group,
                Partition::new(p),
                None,
            )
            .await?;
        }
        Ok(())
    }

    /// Rewinds the group on every partition to the oldest message the stream retains: a new
    /// generation of each partition's consumer starts there (see the consumer module).
    async fn reset_group(&self, group: &GroupName, topic: &Topic) -> Result<()> {
        let partitions = self.inner.ensure(topic, None).await?;
        for p in 0..partitions {
            crate::consumer::rewind(&self.inner, group, topic, Partition::new(p)).await?;
        }
        Ok(())
    }
}

/// Watches one batch for per-key order that JetStream could not keep.
///
/// A batch that failed part-way may have been stored in part, and not necessarily as a prefix:
/// when the connection drops, the message being written is lost while the ones queued behind
/// it in the client go out after the reconnection. Publishing the batch again (as the trait
/// asks) then stores the lost message *after* later ones of the same key. JetStream 2.9 has no
/// way to prevent it short of one publish round trip per message (2.12's atomic batches would);
/// what can be done is to notice it here, from the sequences in the acknowledgements
/// (a duplicate's acknowledgement carries the sequence of the copy stored first).
#[derive(Default)]
struct BatchOrder {
    last: HashMap<(Topic, Partition), (u64, tributary_core::EventId)>,
}

impl BatchOrder {
    fn record(
        &mut self,
        m: &OutgoingMessage,
        partition: Partition,
        ack: &jetstream::publish::PublishAck,
    ) {
        let slot = (m.topic.clone(), partition);
        if let Some((seq, id)) = self.last.get(&slot)
            && ack.sequence < *seq
        {
            tracing::warn!(
                topic = %m.topic, %partition, earlier = %m.id, later = %id,
                "a retried batch was stored out of order: a previous attempt stored part of it; \
                 consumers of this partition will see these messages of the batch reordered"
            );
        }
        self.last.insert(slot, (ack.sequence, m.id));
    }
}

fn check_ack(
    inner: &Inner,
    m: &OutgoingMessage,
    ack: std::result::Result<
        jetstream::publish::PublishAck,
        async_nats::jetstream::context::PublishError,
    >,
) -> Result<jetstream::publish::PublishAck> {
    let ack = ack.map_err(|e| publish_error(inner, m, e))?;
    let expected = naming::stream_name(&inner.config.stream_prefix, &m.topic);
    if ack.stream != expected {
        return Err(Error::storage(
            format!("publishing message {} on topic {}", m.id, m.topic),
            PublishProblem::WrongStream {
                expected,
                actual: ack.stream,
            },
        ));
    }
    Ok(ack)
}

fn publish_error(
    inner: &Inner,
    m: &OutgoingMessage,
    e: async_nats::jetstream::context::PublishError,
) -> Error {
    let what = format!(
        "NATS JetStream (publishing message {} on topic {})",
        m.id, m.topic
    );
    match e.kind() {
        PublishErrorKind::MaxPayloadExceeded => Error::TooLarge {
            what: format!("message {} on topic {}", m.id, m.topic),
            size: m.payload.len(),
            limit: inner.client.server_info().max_payload,
        },
        PublishErrorKind::StreamNotFound => {
            // Deleted behind this process's back: check (and recreate) it on the next call.
            inner.forget(&m.topic);
            Error::unavailable(what, e)
        }
        _ => Error::unavailable(what, e),
    }
}
