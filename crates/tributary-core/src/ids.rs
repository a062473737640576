//! Newtypes for identifiers and positions. Nothing at an API boundary is a bare `u64` or `String`.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};

/// The unique id of one event, end to end: the store's idempotency key, the broker's
/// deduplication id (`Nats-Msg-Id`) and the consumer's inbox key. A UUIDv7, so ids created
/// later sort later and indexes on them grow at their right edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(Uuid);

impl EventId {
    /// A fresh UUIDv7.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// The 16 big-endian bytes stored in databases (sorts like the UUID).
    pub fn to_bytes(&self) -> [u8; 16] {
        *self.0.as_bytes()
    }

    /// The id of [`EventId::to_bytes`].
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(Uuid::from_bytes(bytes))
    }

    /// # Errors
    /// [`Error::Decode`] when `bytes` is not 16 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        Uuid::from_slice(bytes)
            .map(Self)
            .map_err(|e| Error::decode("event id", e))
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for EventId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|e| Error::decode("event id", e))
    }
}

/// The longest stream id accepted, in bytes.
pub const MAX_STREAM_ID_LEN: usize = 256;

/// The name of an event stream (usually one per aggregate instance, e.g. `order-0192…`).
/// Non-empty, at most [`MAX_STREAM_ID_LEN`] bytes, no control characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct StreamId(String);

impl StreamId {
    /// # Errors
    /// [`Error::InvalidStreamId`] for an empty or oversized id or one with control characters.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        if id.is_empty() {
            return Err(Error::InvalidStreamId {
                reason: "stream id is empty".into(),
            });
        }
        if id.len() > MAX_STREAM_ID_LEN {
            return Err(Error::InvalidStreamId {
                reason: format!(
                    "stream id is {} bytes, the limit is {MAX_STREAM_ID_LEN}",
                    id.len()
                ),
            });
        }
        // Most ids are ASCII; checking bytes first keeps decoding a million events cheap.
        let control = if id.is_ascii() {
            id.bytes().any(|b| b.is_ascii_control())
        } else {
            id.chars().any(char::is_control)
        };
        if control {
            return Err(Error::InvalidStreamId {
                reason: "stream id contains a control character".into(),
            });
        }
        Ok(Self(id))
    }

    /// The conventional stream of an aggregate instance: `<aggregate type>-<id>`.
    ///
    /// # Errors
    /// As [`StreamId::new`].
    pub fn for_aggregate(aggregate_type: &str, id: &str) -> Result<Self> {
        Self::new(format!("{aggregate_type}-{id}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for StreamId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        StreamId::new(s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The version of a stream: the number of events in it. The first event of a stream has
/// version 1; an empty (or absent) stream is at version 0.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct StreamVersion(u64);

impl StreamVersion {
    pub const NONE: StreamVersion = StreamVersion(0);

    pub const fn new(v: u64) -> Self {
        Self(v)
    }
    pub const fn get(self) -> u64 {
        self.0
    }
    pub const fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

impl fmt::Display for StreamVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A position in the global order of a store (or of an outbox): every event has a distinct
/// position and positions grow in commit order. `Position::START` is before every event.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Position(u64);

impl Position {
    pub const START: Position = Position(0);

    pub const fn new(p: u64) -> Self {
        Self(p)
    }
    pub const fn get(self) -> u64 {
        self.0
    }
    pub const fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_id_rejects_empty_oversized_and_control_characters() {
        assert!(matches!(
            StreamId::new(""),
            Err(Error::InvalidStreamId { .. })
        ));
        assert!(matches!(
            StreamId::new("x".repeat(MAX_STREAM_ID_LEN + 1)),
            Err(Error::InvalidStreamId { .. })
        ));
        assert!(matches!(
            StreamId::new("a\nb"),
            Err(Error::InvalidStreamId { .. })
        ));
        assert_eq!(StreamId::new("order-1").unwrap().as_str(), "order-1");
    }

    #[test]
    fn stream_id_deserialization_validates() {
        assert!(serde_json::from_str::<StreamId>("\"\"").is_err());
        assert_eq!(
            serde_json::from_str::<StreamId>("\"s-1\"")
                .unwrap()
                .as_str(),
            "s-1"
        );
    }

    #[test]
    fn event_ids_sort_by_creation_and_round_trip_through_bytes() {
        let a = EventId::new();
        let b = EventId::new();
        assert!(a < b);
        assert!(a.to_bytes() < b.to_bytes());
        assert_eq!(EventId::from_slice(&a.to_bytes()).unwrap(), a);
        assert!(EventId::from_slice(&[1, 2, 3]).is_err());
    }
}
