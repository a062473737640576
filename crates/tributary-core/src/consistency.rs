//! Consistency tokens: reading your own writes across services.
//!
//! A unit of work that published or appended knows exactly which events it wrote
//! ([`crate::UnitOfWork::written`]). A [`ConsistencyToken`] names them, so that a view fed by
//! those events — a consumer group in another service, or a projector — can wait until it has
//! applied every one of them, and no longer (`View::wait_for` in `tributary-runtime`).
//!
//! # Why event ids, and why one per key
//!
//! The token lists, for each (topic, partition key) the unit wrote, the id of the *last* event
//! it wrote there. A view applies the events of one key in order (one partition, one task), so
//! having applied that event means having applied every earlier one of the key: one entry per
//! key is exact, and a token stays small however many events a unit wrote to one key. A view
//! answers from its inbox, which records every message it dealt with by id — one indexed read
//! per entry, whatever topics and partitions feed it, and no guess from a clock. Positions
//! (a source's commit position, a broker offset) would need a watermark per partition and per
//! source, advanced even on partitions that receive nothing; ids need nothing but the inbox.
//!
//! A token can also ask for **follow-ups**: an event of the same business transaction (the
//! same CloudEvents `correlationid`) on topic `T` from service `S`, created after the write —
//! "the order was created *and* its credit decision reached the history view". Events carry
//! what a view needs for that: `id`, `source` and `correlationid` (see the envelope). An event
//! that started a business transaction is the correlation of everything it caused
//! ([`crate::Metadata::caused_by`]).
//!
//! # On the wire
//!
//! [`ConsistencyToken::seal`] makes an opaque, URL-safe string (base64url, no padding) of at
//! most [`MAX_SEALED_LEN`] characters, signed with a deployment's [`ConsistencyKey`] (HMAC-
//! SHA-256, 128 bits): a token from outside that is malformed or was not made with the key is
//! refused by [`ConsistencyToken::open`] — a caller answers it with a 400, never a wait.
//! Tokens compose: [`ConsistencyToken::merge`] of the tokens of several writes, in one service
//! or several, is one token covering all of them (the later event of a key wins).
//!
//! A token covers at most [`MAX_ENTRIES`] keys and follow-ups; a unit that wrote more keeps the
//! most recent ones and says so ([`ConsistencyToken::is_truncated`]). A view prunes its inbox
//! after its retention (hours or days): a token older than that reads as pending.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::envelope::Envelope;
use crate::ids::EventId;
use crate::topic::Topic;

/// Most entries a token holds.
pub const MAX_ENTRIES: usize = 32;

/// Longest sealed token, in characters.
pub const MAX_SEALED_LEN: usize =
    (1 + 1 + MAX_ENTRIES * FOLLOW_UP_BYTES + TAG_BYTES).div_ceil(3) * 4;

const VERSION: u8 = 1;
const TAG_BYTES: usize = 16;
const WRITE_BYTES: usize = 1 + 8 + 8 + 16;
const FOLLOW_UP_BYTES: usize = 1 + 8 + 8 + 8 + 16;
const KIND_WRITE: u8 = 1;
const KIND_FOLLOW_UP: u8 = 2;
/// Set in the flags byte when entries were dropped to stay within [`MAX_ENTRIES`].
const TRUNCATED: u8 = 1;

/// A stable 64-bit hash (FNV-1a) of a name: the same in every process and every version, so
/// that a token made by one service is understood by another.
pub fn name_hash(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The correlation an event's follow-ups carry: its own `correlationid`, or — for an event
/// that started a business transaction — its id (see [`crate::Metadata::caused_by`]).
pub fn correlation_of(event: &Envelope) -> String {
    event
        .correlation_id
        .clone()
        .unwrap_or_else(|| event.id.to_string())
}

/// One thing a token waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenEntry {
    /// The last event the write made on (`topic`, partition `key`), both hashed with
    /// [`name_hash`]; `topic` is 0 when the topic is not known at write time (an appended
    /// event without an aggregate type: only a projector of the same store can tell).
    Write { topic: u64, key: u64, id: EventId },
    /// An event on `topic` from service `source` with correlation `correlation` (hashes),
    /// created after event `after`.
    FollowUp {
        topic: u64,
        source: u64,
        correlation: u64,
        after: EventId,
    },
}

impl TokenEntry {
    /// The hash of the topic whose readers this entry concerns (0: unknown).
    pub fn topic(&self) -> u64 {
        match self {
            TokenEntry::Write { topic, .. } | TokenEntry::FollowUp { topic, .. } => *topic,
        }
    }

    /// What identifies the entry for merging: a later write of the same key replaces an
    /// earlier one; the same follow-up is asked once.
    fn slot(&self) -> (u8, u64, u64, u64) {
        match *self {
            TokenEntry::Write { topic, key, .. } => (KIND_WRITE, topic, key, 0),
            TokenEntry::FollowUp {
                topic,
                source,
                correlation,
                ..
            } => (KIND_FOLLOW_UP, topic, source, correlation),
        }
    }

    fn order_key(&self) -> EventId {
        match *self {
            TokenEntry::Write { id, .. } => id,
            TokenEntry::FollowUp { after, .. } => after,
        }
    }
}

/// What a unit of work wrote, for a downstream view to wait for. See the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsistencyToken {
    entries: Vec<TokenEntry>,
    truncated: bool,
    /// The correlations of the writes (by write entry), for [`ConsistencyToken::and_follow_ups`].
    /// Not part of the sealed form: a token from outside asks only what it says.
    correlations: Vec<(EventId, u64)>,
}

/// What a token needs of one written event, taken before the event is handed to the store (so
/// that only writes that succeeded are recorded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    topic: u64,
    key: u64,
    id: EventId,
    correlation: u64,
}

impl Written {
    pub fn of(topic: Option<&Topic>, event: &Envelope) -> Self {
        Self {
            topic: topic.map_or(0, |t| name_hash(t.as_str())),
            key: name_hash(&event.ordering_key()),
            id: event.id,
            correlation: name_hash(&correlation_of(event)),
        }
    }
}

/// Why a token from outside was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("the consistency token is malformed: {0}")]
    Malformed(&'static str),
    #[error("the consistency token was not issued by this deployment")]
    Forged,
    #[error("the consistency token is longer than {MAX_SEALED_LEN} characters")]
    TooLong,
}

impl ConsistencyToken {
    /// A token that waits for nothing.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn entries(&self) -> &[TokenEntry] {
        &self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether entries were dropped to stay within [`MAX_ENTRIES`] (the oldest writes first).
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }

    /// Records that `event` was written, to be published on `topic` (`None` when not known at
    /// write time).
    pub fn record(&mut self, topic: Option<&Topic>, event: &Envelope) {
        self.note(Written::of(topic, event));
    }

    /// Records a write described beforehand (see [`Written`]).
    pub fn note(&mut self, written: Written) {
        self.correlations.push((written.id, written.correlation));
        self.insert(TokenEntry::Write {
            topic: written.topic,
            key: written.key,
            id: written.id,
        });
    }

    /// Also waits, for each write of this token, for an event of the same business
    /// transaction on `topic` from service `source` created after it — e.g. the decision of
    /// a saga step made in another service.
    pub fn and_follow_ups(mut self, topic: &Topic, source: &str) -> Self {
        let writes: Vec<(EventId, u64)> = self.correlations.clone();
        for (after, correlation) in writes {
            self.insert(TokenEntry::FollowUp {
                topic: name_hash(topic.as_str()),
                source: name_hash(source),
                correlation,
                after,
            });
        }
        self
    }

    /// One token covering the writes of both.
    pub fn merge(mut self, other: &ConsistencyToken) -> Self {
        self.truncated |= other.truncated;
        self.correlations.extend(other.correlations.iter().copied());
        for entry in &other.entries {
            self.insert(*entry);
        }
        self
    }

    /// Adds `entry`, replacing an earlier one of the same slot; drops the oldest entries
    /// beyond [`MAX_ENTRIES`].
    fn insert(&mut self, entry: TokenEntry) {
        match self.entries.iter_mut().find(|e| e.slot() == entry.slot()) {
            // UUIDv7 ids grow with time: the later write of a key is the one to wait for.
            Some(existing) if existing.order_key() < entry.order_key() => *existing = entry,
            Some(_) => {}
            None => self.entries.push(entry),
        }
        if self.entries.len() > MAX_ENTRIES {
            self.entries.sort_by_key(TokenEntry::order_key);
            let excess = self.entries.len() - MAX_ENTRIES;
            self.entries.drain(..excess);
            self.truncated = true;
        }
        if self.correlations.len() > MAX_ENTRIES {
            let excess = self.correlations.len() - MAX_ENTRIES;
            self.correlations.drain(..excess);
        }
    }

    /// The token as an opaque, URL-safe string signed with `key`.
    pub fn seal(&self, key: &ConsistencyKey) -> String {
        let mut bytes = Vec::with_capacity(2 + self.entries.len() * FOLLOW_UP_BYTES + TAG_BYTES);
        bytes.push(VERSION);
        bytes.push(if self.truncated { TRUNCATED } else { 0 });
        for entry in &self.entries {
            match *entry {
                TokenEntry::Write { topic, key, id } => {
                    bytes.push(KIND_WRITE);
                    bytes.extend_from_slice(&topic.to_be_bytes());
                    bytes.extend_from_slice(&key.to_be_bytes());
                    bytes.extend_from_slice(&id.to_bytes());
                }
                TokenEntry::FollowUp {
                    topic,
                    source,
                    correlation,
                    after,
                } => {
                    bytes.push(KIND_FOLLOW_UP);
                    bytes.extend_from_slice(&topic.to_be_bytes());
                    bytes.extend_from_slice(&source.to_be_bytes());
                    bytes.extend_from_slice(&correlation.to_be_bytes());
                    bytes.extend_from_slice(&after.to_bytes());
                }
            }
        }
        let tag = key.tag(&bytes);
        bytes.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Reads a token made by [`ConsistencyToken::seal`] with the same `key`.
    ///
    /// # Errors
    /// [`TokenError`] for a token that is too long, not base64url, not a token, or signed with
    /// another key (or altered).
    pub fn open(key: &ConsistencyKey, sealed: &str) -> Result<Self, TokenError> {
        if sealed.len() > MAX_SEALED_LEN {
            return Err(TokenError::TooLong);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(sealed.trim())
            .map_err(|_| TokenError::Malformed("not base64url"))?;
        if bytes.len() < 2 + TAG_BYTES {
            return Err(TokenError::Malformed("too short"));
        }
        let (body, tag) = bytes.split_at(bytes.len() - TAG_BYTES);
        if !key.verify(body, tag) {
            return Err(TokenError::Forged);
        }
        if body[0] != VERSION {
            return Err(TokenError::Malformed("unknown version"));
        }
        let truncated = body[1] & TRUNCATED != 0;
        let mut rest = &body[2..];
        let mut entries = Vec::new();
        while let Some((&kind, tail)) = rest.split_first() {
            let (entry, tail) = match kind {
                KIND_WRITE if tail.len() >= WRITE_BYTES - 1 => {
                    let (topic, tail) = u64_at(tail);
                    let (key, tail) = u64_at(tail);
                    let (id, tail) = id_at(tail);
                    (TokenEntry::Write { topic, key, id }, tail)
                }
                KIND_FOLLOW_UP if tail.len() >= FOLLOW_UP_BYTES - 1 => {
                    let (topic, tail) = u64_at(tail);
                    let (source, tail) = u64_at(tail);
                    let (correlation, tail) = u64_at(tail);
                    let (after, tail) = id_at(tail);
                    (
                        TokenEntry::FollowUp {
                            topic,
                            source,
                            correlation,
                            after,
                        },
                        tail,
                    )
                }
                _ => return Err(TokenError::Malformed("bad entry")),
            };
            entries.push(entry);
            rest = tail;
        }
        if entries.len() > MAX_ENTRIES {
            return Err(TokenError::Malformed("too many entries"));
        }
        Ok(Self {
            entries,
            truncated,
            correlations: Vec::new(),
        })
    }
}

fn u64_at(bytes: &[u8]) -> (u64, &[u8]) {
    let (head, tail) = bytes.split_at(8);
    let mut b = [0u8; 8];
    b.copy_from_slice(head);
    (u64::from_be_bytes(b), tail)
}

fn id_at(bytes: &[u8]) -> (EventId, &[u8]) {
    let (head, tail) = bytes.split_at(16);
    let mut b = [0u8; 16];
    b.copy_from_slice(head);
    (EventId::from_bytes(b), tail)
}

/// The secret a deployment signs its tokens with: every service that issues or reads tokens
/// needs the same one.
#[derive(Clone)]
pub struct ConsistencyKey(Vec<u8>);

impl ConsistencyKey {
    /// # Panics
    /// Never; a key shorter than 16 bytes is accepted but weak: use 32 random bytes.
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self(secret.into())
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"))
    }

    fn tag(&self, body: &[u8]) -> [u8; TAG_BYTES] {
        let mut mac = self.mac();
        mac.update(body);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(&full[..TAG_BYTES]);
        tag
    }

    fn verify(&self, body: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.mac();
        mac.update(body);
        mac.verify_truncated_left(tag).is_ok()
    }
}

impl fmt::Debug for ConsistencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConsistencyKey(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::Payload;

    fn event(key: &str) -> Envelope {
        Envelope::new("svc", "Happened", Payload::null()).with_subject(key)
    }

    fn key() -> ConsistencyKey {
        ConsistencyKey::new(b"0123456789abcdef0123456789abcdef".to_vec())
    }

    #[test]
    fn one_entry_per_key_the_last_write_wins() {
        let topic = Topic::new("Order").unwrap();
        let mut token = ConsistencyToken::new();
        let (a1, b1, a2) = (event("a"), event("b"), event("a"));
        token.record(Some(&topic), &a1);
        token.record(Some(&topic), &b1);
        token.record(Some(&topic), &a2);
        let ids: Vec<EventId> = token.entries().iter().map(|e| e.order_key()).collect();
        assert_eq!(ids, [a2.id, b1.id]);
    }

    #[test]
    fn sealed_tokens_round_trip_and_merge() {
        let topic = Topic::new("Order").unwrap();
        let mut one = ConsistencyToken::new();
        one.record(Some(&topic), &event("a"));
        let one = one.and_follow_ups(&Topic::new("Customer").unwrap(), "customer-service");
        let mut two = ConsistencyToken::new();
        two.record(None, &event("b"));
        let both = one.merge(&two);
        let sealed = both.seal(&key());
        assert!(sealed.len() <= MAX_SEALED_LEN);
        assert!(
            sealed
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "URL-safe: {sealed}"
        );
        let opened = ConsistencyToken::open(&key(), &sealed).unwrap();
        assert_eq!(opened.entries(), both.entries());
        assert_eq!(opened.entries().len(), 3);
    }

    #[test]
    fn malformed_forged_and_oversized_tokens_are_refused() {
        let mut token = ConsistencyToken::new();
        token.record(None, &event("a"));
        let sealed = token.seal(&key());
        let other = ConsistencyKey::new(b"another deployment's secret.....".to_vec());
        assert_eq!(
            ConsistencyToken::open(&other, &sealed),
            Err(TokenError::Forged)
        );
        let mut altered = sealed.clone().into_bytes();
        altered[5] = if altered[5] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).unwrap();
        assert!(ConsistencyToken::open(&key(), &altered).is_err());
        assert!(matches!(
            ConsistencyToken::open(&key(), "not a token!"),
            Err(TokenError::Malformed(_))
        ));
        assert!(matches!(
            ConsistencyToken::open(&key(), ""),
            Err(TokenError::Malformed(_))
        ));
        assert_eq!(
            ConsistencyToken::open(&key(), &"A".repeat(MAX_SEALED_LEN + 1)),
            Err(TokenError::TooLong)
        );
    }

    #[test]
    fn a_token_stays_bounded_and_says_when_it_dropped_writes() {
        let topic = Topic::new("T").unwrap();
        let mut token = ConsistencyToken::new();
        let events: Vec<Envelope> = (0..MAX_ENTRIES + 5)
            .map(|i| event(&format!("k{i}")))
            .collect();
        for e in &events {
            token.record(Some(&topic), e);
        }
        assert_eq!(token.entries().len(), MAX_ENTRIES);
        assert!(token.is_truncated());
        let last = events.last().map(|e| e.id);
        assert!(token.entries().iter().any(|e| Some(e.order_key()) == last));
        let sealed = token.seal(&key());
        assert!(sealed.len() <= MAX_SEALED_LEN);
        assert!(
            ConsistencyToken::open(&key(), &sealed)
                .unwrap()
                .is_truncated()
        );
    }

    #[test]
    fn names_hash_the_same_everywhere() {
        // Fixed values: a token made by one version must be read by the next.
        assert_eq!(name_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(name_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
