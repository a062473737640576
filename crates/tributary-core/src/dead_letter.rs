//! Dead letters: messages a consumer group gave up on, and those parked behind them.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::ids::EventId;
use crate::topic::{GroupName, Offset, Partition, Topic};

/// The id of a dead letter in its store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeadLetterId(u64);

impl DeadLetterId {
    pub const fn new(id: u64) -> Self {
        Self(id)
    }
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl std::str::FromStr for DeadLetterId {
    type Err = crate::Error;

    /// A dead letter's id as `Display` prints it (a decimal number), e.g. from a URL path.
    fn from_str(s: &str) -> crate::Result<Self> {
        s.parse()
            .map(Self)
            .map_err(|_| crate::Error::invalid(format!("{s:?} is not a dead letter id")))
    }
}

impl std::fmt::Display for DeadLetterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A message a consumer group could not process, or one waiting behind such a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    pub id: DeadLetterId,
    pub group: GroupName,
    pub topic: Topic,
    pub partition: Partition,
    pub offset: Offset,
    pub message_id: Option<EventId>,
    pub key: String,
    pub event_type: Option<String>,
    /// The message exactly as delivered (usually CloudEvents JSON).
    #[serde(with = "lossy_bytes")]
    pub payload: Vec<u8>,
    pub reason: String,
    pub attempts: u32,
    pub first_failed_at: DateTime<Utc>,
    pub last_failed_at: DateTime<Utc>,
    /// Set for a message that did not fail itself but was parked behind an earlier dead
    /// letter with the same key, to keep per-key order.
    pub parked_behind: Option<DeadLetterId>,
}

/// What to record about a new dead letter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDeadLetter {
    pub group: GroupName,
    pub topic: Topic,
    pub partition: Partition,
    pub offset: Offset,
    pub message_id: Option<EventId>,
    pub key: String,
    pub event_type: Option<String>,
    pub payload: Vec<u8>,
    pub reason: String,
    pub attempts: u32,
    pub first_failed_at: DateTime<Utc>,
    pub parked_behind: Option<DeadLetterId>,
}

/// How a dead letter was resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// Processed successfully on replay.
    Replayed,
    /// Dropped by an operator without processing.
    Skipped,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Replayed => "replayed",
            Resolution::Skipped => "skipped",
        }
    }
}

/// The unresolved dead letters of one consumer group, counted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeadLetterSummary {
    pub group: GroupName,
    /// Every unresolved dead letter of the group, parked ones included.
    pub open: u64,
    /// Of those, the ones parked behind an earlier dead letter of their key.
    pub parked: u64,
    /// Distinct keys held back by a dead letter.
    pub keys: u64,
    pub oldest_failed_at: Option<DateTime<Utc>>,
}

/// Read access to a database's unresolved dead letters, oldest first.
#[async_trait]
pub trait DeadLetterStore: Send + Sync {
    /// Up to `max` unresolved dead letters (of `group`, or of every group), oldest first.
    async fn list(&self, group: Option<&GroupName>, max: usize) -> Result<Vec<DeadLetter>>;

    /// One dead letter, resolved or not.
    async fn get(&self, id: DeadLetterId) -> Result<Option<DeadLetter>>;

    /// The unresolved dead letters of every group that has any, counted, by group name.
    /// Backends count in the database; this default reads every letter.
    async fn summary(&self) -> Result<Vec<DeadLetterSummary>> {
        let mut by_group: std::collections::BTreeMap<String, (DeadLetterSummary, Vec<String>)> =
            Default::default();
        for letter in self.list(None, usize::MAX).await? {
            let (s, keys) = by_group
                .entry(letter.group.as_str().to_owned())
                .or_insert_with(|| {
                    let s = DeadLetterSummary {
                        group: letter.group.clone(),
                        open: 0,
                        parked: 0,
                        keys: 0,
                        oldest_failed_at: None,
                    };
                    (s, Vec::new())
                });
            s.open += 1;
            s.parked += u64::from(letter.parked_behind.is_some());
            s.oldest_failed_at = Some(
                s.oldest_failed_at
                    .map_or(letter.first_failed_at, |t| t.min(letter.first_failed_at)),
            );
            keys.push(letter.key);
        }
        Ok(by_group
            .into_values()
            .map(|(mut s, mut keys)| {
                keys.sort_unstable();
                keys.dedup();
                s.keys = keys.len() as u64;
                s
            })
            .collect())
    }
}

mod lossy_bytes {
    pub fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::DeadLetterId;

    #[test]
    fn an_id_parses_from_what_display_prints_and_nothing_else() {
        let id = DeadLetterId::new(42);
        assert_eq!(id.to_string().parse::<DeadLetterId>().unwrap(), id);
        for bad in ["", "-1", "4x", "0x2a"] {
            assert!(bad.parse::<DeadLetterId>().is_err(), "{bad:?}");
        }
    }
}
