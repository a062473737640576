//! The one envelope used everywhere: event store, outbox, broker, dead letters.
//!
//! Attribute names follow CloudEvents 1.0 so that other languages can read the JSON form
//! (`specversion`, `id`, `source`, `type`, `subject`, `time`, `datacontenttype`, `data`), with
//! the extensions `aggregatetype`, `sequence`, `partitionkey`, `correlationid`, `causationid`,
//! `traceparent`, `tracestate` (the CloudEvents distributed-tracing extension) and
//! `schemaversion`. `sequence` is written as a JSON integer (the stream
//! version), not as the string of the CloudEvents "sequence" extension document.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::{EventId, StreamVersion};
use crate::payload::Payload;

/// The only data content type Tributary produces and accepts.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// One event with its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// UUIDv7; the deduplication key end to end.
    pub id: EventId,
    /// The service (or capture process) that produced the event.
    pub source: String,
    /// The event type, e.g. `OrderCreated`.
    pub event_type: String,
    /// The aggregate (entity) the event is about.
    pub subject: Option<String>,
    pub time: DateTime<Utc>,
    pub data: Payload,
    /// The kind of aggregate, e.g. `Order`. Also the default topic of the event.
    pub aggregate_type: Option<String>,
    /// The event's version in its stream, set by the event store on append.
    pub sequence: Option<StreamVersion>,
    /// Events with the same key are delivered in order. Defaults to the subject.
    pub partition_key: Option<String>,
    /// The id of the first event (or request) of the chain this event belongs to.
    pub correlation_id: Option<String>,
    /// The id of the event (or request) that directly caused this one.
    pub causation_id: Option<String>,
    /// W3C trace context of the operation that produced the event.
    pub traceparent: Option<String>,
    /// W3C `tracestate` that travels with `traceparent` (vendor entries); absent in JSON
    /// written before it existed.
    pub tracestate: Option<String>,
    /// The shape version of `data` for this event type; upcasters raise old versions.
    pub schema_version: u32,
}

impl Envelope {
    /// A new event with a fresh UUIDv7 id, the current time and schema version 1.
    pub fn new(source: impl Into<String>, event_type: impl Into<String>, data: Payload) -> Self {
        Self {
            id: EventId::new(),
            source: source.into(),
            event_type: event_type.into(),
            subject: None,
            time: Utc::now(),
            data,
            aggregate_type: None,
            sequence: None,
            partition_key: None,
            correlation_id: None,
            causation_id: None,
            traceparent: None,
            tracestate: None,
            schema_version: 1,
        }
    }

    pub fn with_id(mut self, id: EventId) -> Self {
        self.id = id;
        self
    }
    pub fn with_subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }
    pub fn with_aggregate_type(mut self, t: impl Into<String>) -> Self {
        self.aggregate_type = Some(t.into());
        self
    }
    pub fn with_partition_key(mut self, key: impl Into<String>) -> Self {
        self.partition_key = Some(key.into());
        self
    }
    pub fn with_schema_version(mut self, v: u32) -> Self {
        self.schema_version = v;
        self
    }

    /// Marks this event as caused by `cause`: causation = the cause's id, correlation = the
    /// cause's correlation (or its id when it starts the chain), trace context carried over.
    pub fn caused_by(mut self, cause: &Envelope) -> Self {
        self.causation_id = Some(cause.id.to_string());
        self.correlation_id = Some(
            cause
                .correlation_id
                .clone()
                .unwrap_or_else(|| cause.id.to_string()),
        );
        // The state belongs to the parent it came with, so the two are carried over together.
        if self.traceparent.is_none() {
            self.traceparent = cause.traceparent.clone();
            self.tracestate = cause.tracestate.clone();
        }
        self
    }

    /// The key that orders this event: the partition key, else the subject, else the id.
    /// An event with neither has no ordering constraint, so its own id keeps it apart.
    pub fn ordering_key(&self) -> std::borrow::Cow<'_, str> {
        match self.partition_key.as_deref().or(self.subject.as_deref()) {
            Some(key) => std::borrow::Cow::Borrowed(key),
            None => std::borrow::Cow::Owned(self.id.to_string()),
        }
    }

    /// An upper bound of the envelope's size as CloudEvents JSON (what a broker carries), the
    /// figure size limits are checked against: the data as it is, every string attribute as if
    /// each of its bytes needed a six-byte escape, and the attribute names, id, time and
    /// numbers.
    pub fn size_hint(&self) -> usize {
        let strings: usize = self.text_attributes().map(str::len).sum();
        // Names and quotes of 16 attributes, a UUID, an RFC 3339 time, two integers.
        const FIXED: usize = 400;
        self.data.len() + strings * 6 + FIXED
    }

    /// Every string attribute that is set (not the data).
    pub(crate) fn text_attributes(&self) -> impl Iterator<Item = &str> {
        [
            Some(&self.source),
            Some(&self.event_type),
            self.subject.as_ref(),
            self.aggregate_type.as_ref(),
            self.partition_key.as_ref(),
            self.correlation_id.as_ref(),
            self.causation_id.as_ref(),
            self.traceparent.as_ref(),
            self.tracestate.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(String::as_str)
    }

    /// The CloudEvents structured-mode JSON form.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|_| unreachable!("an envelope always serializes"))
    }

    /// Parses the CloudEvents structured-mode JSON form.
    ///
    /// # Errors
    /// [`Error::Decode`] when `json` is not a CloudEvents 1.0 JSON event with JSON data.
    pub fn from_json(json: &[u8]) -> Result<Self> {
        serde_json::from_slice(json).map_err(|e| Error::decode("event envelope", e))
    }
}

/// The wire form, field names exactly as CloudEvents spells them.
#[derive(Serialize, Deserialize)]
struct Wire {
    specversion: String,
    id: EventId,
    source: String,
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    time: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    datacontenttype: Option<String>,
    #[serde(default = "Payload::null")]
    data: Payload,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aggregatetype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sequence: Option<StreamVersion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    partitionkey: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    correlationid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    causationid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tracestate: Option<String>,
    #[serde(default = "one")]
    schemaversion: u32,
}

fn one() -> u32 {
    1
}

impl Serialize for Envelope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        Wire {
            specversion: "1.0".into(),
            id: self.id,
            source: self.source.clone(),
            event_type: self.event_type.clone(),
            subject: self.subject.clone(),
            time: self.time,
            datacontenttype: Some(JSON_CONTENT_TYPE.into()),
            data: self.data.clone(),
            aggregatetype: self.aggregate_type.clone(),
            sequence: self.sequence,
            partitionkey: self.partition_key.clone(),
            correlationid: self.correlation_id.clone(),
            causationid: self.causation_id.clone(),
            traceparent: self.traceparent.clone(),
            tracestate: self.tracestate.clone(),
            schemaversion: self.schema_version,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let w = Wire::deserialize(d)?;
        if w.specversion != "1.0" {
            return Err(D::Error::custom(format!(
                "unsupported CloudEvents specversion {:?}, expected \"1.0\"",
                w.specversion
            )));
        }
        if let Some(ct) = &w.datacontenttype {
            // Parameters such as `; charset=utf-8` are allowed.
            let mime = ct.split(';').next().unwrap_or("").trim();
            if !mime.eq_ignore_ascii_case(JSON_CONTENT_TYPE) {
                return Err(D::Error::custom(format!(
                    "unsupported datacontenttype {ct:?}, only {JSON_CONTENT_TYPE} is accepted"
                )));
            }
        }
        Ok(Envelope {
            id: w.id,
            source: w.source,
            event_type: w.event_type,
            subject: w.subject,
            time: w.time,
            data: w.data,
            aggregate_type: w.aggregatetype,
            sequence: w.sequence,
            partition_key: w.partitionkey,
            correlation_id: w.correlationid,
            causation_id: w.causationid,
            traceparent: w.traceparent,
            tracestate: w.tracestate,
            schema_version: w.schemaversion,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope::new(
            "orders",
            "OrderCreated",
            Payload::from_json_str(r#"{"total":2500}"#).unwrap(),
        )
        .with_subject("o-1")
        .with_aggregate_type("Order")
    }

    #[test]
    fn round_trips_through_cloudevents_json() {
        let mut e = sample();
        e.sequence = Some(StreamVersion::new(3));
        e.correlation_id = Some("c".into());
        e.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        let json = e.to_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["type"], "OrderCreated");
        assert_eq!(v["datacontenttype"], "application/json");
        assert_eq!(v["data"]["total"], 2500);
        assert_eq!(v["aggregatetype"], "Order");
        assert_eq!(v["sequence"], 3);
        assert_eq!(Envelope::from_json(json.as_bytes()).unwrap(), e);
    }

    #[test]
    fn tracestate_is_optional_both_ways() {
        let mut e = sample();
        e.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        let old = e.to_json();
        assert!(!old.contains("tracestate"), "absent when unset: {old}");
        assert_eq!(
            Envelope::from_json(old.as_bytes()).unwrap().tracestate,
            None
        );
        e.tracestate = Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7".into());
        let json = e.to_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["tracestate"], "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7");
        assert_eq!(Envelope::from_json(json.as_bytes()).unwrap(), e);
        let caused = sample().caused_by(&e);
        assert_eq!(
            (caused.traceparent, caused.tracestate),
            (e.traceparent, e.tracestate)
        );
    }

    #[test]
    fn rejects_other_specversions_content_types_and_garbage() {
        let mut v: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        v["specversion"] = "0.3".into();
        assert!(Envelope::from_json(v.to_string().as_bytes()).is_err());
        v["specversion"] = "1.0".into();
        v["datacontenttype"] = "application/xml".into();
        assert!(Envelope::from_json(v.to_string().as_bytes()).is_err());
        v["datacontenttype"] = "application/json; charset=utf-8".into();
        assert!(Envelope::from_json(v.to_string().as_bytes()).is_ok());
        assert!(matches!(
            Envelope::from_json(b"\xff\x00"),
            Err(Error::Decode { .. })
        ));
        assert!(Envelope::from_json(br#"{"specversion":"1.0"}"#).is_err());
    }

    #[test]
    fn causation_links_to_the_cause_and_keeps_its_correlation() {
        let first = sample();
        let second = sample().caused_by(&first);
        let third = sample().caused_by(&second);
        assert_eq!(second.causation_id, Some(first.id.to_string()));
        assert_eq!(third.correlation_id, Some(first.id.to_string()));
        assert_eq!(third.causation_id, Some(second.id.to_string()));
    }

    #[test]
    fn size_hint_bounds_the_json_form() {
        let mut e = sample().caused_by(&sample());
        e.subject = Some("\u{1}\"\\ž".repeat(50));
        e.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        e.sequence = Some(StreamVersion::new(u64::MAX));
        e.schema_version = u32::MAX;
        assert!(
            e.to_json().len() <= e.size_hint(),
            "{} > {}",
            e.to_json().len(),
            e.size_hint()
        );
    }

    #[test]
    fn ordering_key_prefers_partition_key_then_subject() {
        let e = sample();
        assert_eq!(e.ordering_key(), "o-1");
        assert_eq!(e.with_partition_key("c-9").ordering_key(), "c-9");
    }
}
