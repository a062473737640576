//! What the relay and the consumers record through the `metrics` facade.
//!
//! Recording is a no-op until the process installs an exporter (the `tributary` binary installs
//! a Prometheus one). Handles are registered once per relay and per partition task, so that the
//! hot path costs an atomic add, not a lookup by name. Labels are bounded: a source name, a
//! group, a topic and a partition number, never a key or a message id.

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

/// Names of every metric the runtime records, for dashboards and tests.
pub mod names {
    pub const RELAY_PUBLISHED: &str = "tributary_relay_published_total";
    pub const RELAY_BATCH_SIZE: &str = "tributary_relay_batch_size";
    pub const RELAY_PUBLISH_SECONDS: &str = "tributary_relay_publish_seconds";
    pub const RELAY_LEASE_HELD: &str = "tributary_relay_lease_held";
    pub const RELAY_REFUSALS: &str = "tributary_relay_refusals_total";
    pub const OUTBOX_PENDING: &str = "tributary_outbox_pending";
    pub const OUTBOX_OLDEST_AGE_SECONDS: &str = "tributary_outbox_oldest_age_seconds";
    pub const CONSUMER_HANDLED: &str = "tributary_consumer_handled_total";
    pub const CONSUMER_HANDLER_SECONDS: &str = "tributary_consumer_handler_seconds";
    pub const CONSUMER_LAST_OFFSET: &str = "tributary_consumer_last_offset";
    pub const CONSUMER_LAG: &str = "tributary_consumer_lag";
    pub const DEAD_LETTERS_OPEN: &str = "tributary_dead_letters_open";
    pub const DEAD_LETTERS_PARKED_KEYS: &str = "tributary_dead_letters_parked_keys";
    pub const DEAD_LETTERS_OLDEST_SECONDS: &str = "tributary_dead_letters_oldest_seconds";
}

/// The handles of one relay.
#[derive(Clone)]
pub(crate) struct RelayMetrics {
    pub published: Counter,
    pub batch_size: Histogram,
    pub publish_seconds: Histogram,
    pub lease_held: Gauge,
    pub refusals: Counter,
    pub pending: Gauge,
    pub oldest_age: Gauge,
}

impl RelayMetrics {
    pub fn new(service: Option<&str>, source: &str) -> Self {
        let labels = || {
            let mut l = vec![metrics::Label::new("source", source.to_owned())];
            if let Some(service) = service {
                l.push(metrics::Label::new("service", service.to_owned()));
            }
            l
        };
        Self {
            published: counter!(names::RELAY_PUBLISHED, labels()),
            batch_size: histogram!(names::RELAY_BATCH_SIZE, labels()),
            publish_seconds: histogram!(names::RELAY_PUBLISH_SECONDS, labels()),
            lease_held: gauge!(names::RELAY_LEASE_HELD, labels()),
            refusals: counter!(names::RELAY_REFUSALS, labels()),
            pending: gauge!(names::OUTBOX_PENDING, labels()),
            oldest_age: gauge!(names::OUTBOX_OLDEST_AGE_SECONDS, labels()),
        }
    }
}

/// How a consumer dealt with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The handler ran and its unit committed.
    Ok,
    /// Found in the inbox: acknowledged without running the handler.
    Duplicate,
    /// The handler failed and the message is tried again.
    Retried,
    /// Given up on (or parked behind an earlier dead letter of its key).
    DeadLettered,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::Ok,
        Outcome::Duplicate,
        Outcome::Retried,
        Outcome::DeadLettered,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Duplicate => "duplicate",
            Outcome::Retried => "retried",
            Outcome::DeadLettered => "dead_lettered",
        }
    }
}

/// The handles of one partition task of a consumer group.
#[derive(Clone)]
pub(crate) struct PartitionMetrics {
    outcomes: [Counter; 4],
    pub handler_seconds: Histogram,
    pub last_offset: Gauge,
    /// Messages after the committed offset, sampled (see [`PartitionConsumer::lag`]).
    ///
    /// [`PartitionConsumer::lag`]: tributary_core::PartitionConsumer::lag
    pub lag: Gauge,
}

impl PartitionMetrics {
    pub fn new(group: &str, topic: &str, partition: u32) -> Self {
        let outcome = |o: Outcome| {
            counter!(names::CONSUMER_HANDLED,
                "group" => group.to_owned(), "topic" => topic.to_owned(), "outcome" => o.label())
        };
        Self {
            outcomes: Outcome::ALL.map(outcome),
            handler_seconds: histogram!(names::CONSUMER_HANDLER_SECONDS,
                "group" => group.to_owned(), "topic" => topic.to_owned()),
            last_offset: gauge!(names::CONSUMER_LAST_OFFSET,
                "group" => group.to_owned(), "topic" => topic.to_owned(),
                "partition" => partition.to_string()),
            lag: gauge!(names::CONSUMER_LAG,
                "group" => group.to_owned(), "topic" => topic.to_owned(),
                "partition" => partition.to_string()),
        }
    }

    pub fn count(&self, outcome: Outcome, n: u64) {
        if n > 0 {
            self.outcomes[outcome as usize].increment(n);
        }
    }
}

/// A group's open dead letters, sampled now and then: how many, how many keys they hold back
/// (every later message of such a key waits behind its letter), and how long the oldest has
/// waited for an operator (0 when there is none).
pub(crate) struct DeadLetterGauges {
    pub open: Gauge,
    pub parked_keys: Gauge,
    pub oldest_seconds: Gauge,
}

impl DeadLetterGauges {
    pub fn new(group: &str) -> Self {
        Self {
            open: gauge!(names::DEAD_LETTERS_OPEN, "group" => group.to_owned()),
            parked_keys: gauge!(names::DEAD_LETTERS_PARKED_KEYS, "group" => group.to_owned()),
            oldest_seconds: gauge!(names::DEAD_LETTERS_OLDEST_SECONDS, "group" => group.to_owned()),
        }
    }
}
