//! Unit tests of batching and mapping, without a server: messages are built as values and
//! fed through the decoder's relation cache, the assembler and the mapper.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};
use tributary_core::{Envelope, EventId, Payload, Topic};

use super::assembler::{Assembler, Step, Taken};
use super::config::{CdcConfig, MessageCapture, MessageRoute, OutboxCapture, TableCapture};
use super::ids::IdSpace;
use super::mapping::Mapper;
use crate::lsn::Lsn;
use crate::pgoutput::{
    Begin, Commit, Delete, Insert, LogicalMessage, Oid, OldTuple, PgOutputDecoder, PgOutputMessage,
    PgTimestamp, Relation, RelationColumn, RelationId, ReplicaIdentity, Truncate, TupleData,
    TupleValue, Update, Xid, type_oid,
};

const ITEMS: RelationId = RelationId(16_384);
const OUTBOX: RelationId = RelationId(16_400);

fn column(name: &str, oid: Oid, is_key: bool) -> RelationColumn {
    RelationColumn {
        is_key,
        name: name.into(),
        type_oid: oid,
        type_modifier: -1,
    }
}

fn relations() -> Vec<PgOutputMessage> {
    vec![
        PgOutputMessage::Relation(Relation {
            id: ITEMS,
            namespace: "public".into(),
            name: "items".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                column("id", type_oid::INT8, true),
                column("name", type_oid::TEXT, false),
            ],
        }),
        PgOutputMessage::Relation(Relation {
            id: OUTBOX,
            namespace: "public".into(),
            name: "outbox".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                column("id", type_oid::INT8, true),
                column("topic", type_oid::TEXT, false),
                column("message_key", type_oid::TEXT, false),
                column("event_id", type_oid::UUID, false),
                column("payload", type_oid::BYTEA, false),
            ],
        }),
    ]
}

struct Harness {
    decoder: PgOutputDecoder,
    mapper: Mapper,
    assembler: Assembler,
}

impl Harness {
    fn new(config: CdcConfig) -> Self {
        let mut decoder = PgOutputDecoder::new();
        for relation in relations() {
            decoder.observe(&relation);
        }
        Harness {
            decoder,
            mapper: Mapper::new(
                Arc::new(config),
                IdSpace::new("7000", "db", "slot"),
                HashMap::new(),
            ),
            assembler: Assembler::default(),
        }
    }

    fn feed(&mut self, messages: &[PgOutputMessage]) -> Vec<Step> {
        messages
            .iter()
            .map(|m| {
                self.decoder.observe(m);
                self.assembler
                    .apply(m, &self.decoder, &self.mapper)
                    .expect("applies")
            })
            .collect()
    }
}

fn text(value: &str) -> TupleValue {
    TupleValue::Text(value.into())
}

fn begin(commit_lsn: u64, xid: u32) -> PgOutputMessage {
    PgOutputMessage::Begin(Begin {
        final_lsn: Lsn::new(commit_lsn),
        commit_time: PgTimestamp(757_382_400_000_000),
        xid: Xid(xid),
    })
}

fn commit(commit_lsn: u64) -> PgOutputMessage {
    PgOutputMessage::Commit(Commit {
        flags: 0,
        commit_lsn: Lsn::new(commit_lsn),
        end_lsn: Lsn::new(commit_lsn + 8),
        commit_time: PgTimestamp(757_382_400_000_000),
    })
}

fn insert(id: i64, name: &str) -> PgOutputMessage {
    PgOutputMessage::Insert(Insert {
        relation_id: ITEMS,
        new: TupleData {
            values: vec![text(&id.to_string()), text(name)],
        },
    })
}

/// A transaction of `rows` inserts committing at `commit_lsn`.
fn transaction(commit_lsn: u64, first_id: i64, rows: i64) -> Vec<PgOutputMessage> {
    let mut out = vec![begin(commit_lsn, 1)];
    out.extend((first_id..first_id + rows).map(|id| insert(id, "x")));
    out.push(commit(commit_lsn));
    out
}

fn data(message: &tributary_core::OutgoingMessage) -> Value {
    let envelope = Envelope::from_json(&message.payload).expect("an envelope");
    envelope.data.to_value()
}

fn ids_of(taken: &Taken) -> Vec<i64> {
    taken
        .messages
        .iter()
        .map(|m| data(m)["key"]["id"].as_i64().expect("id"))
        .collect()
}

#[test]
fn batches_end_at_a_commit_and_the_open_transaction_waits_for_the_next() {
    let mut h = Harness::new(CdcConfig::default());
    h.feed(&transaction(1000, 1, 2));
    let mut second = transaction(2000, 3, 2);
    let second_commit = second.pop().expect("commit");
    h.feed(&second);
    assert_eq!(h.assembler.len(), 4);
    let first = h.assembler.take(3, Lsn::new(10)).expect("a batch");
    assert_eq!(ids_of(&first), [1, 2]);
    assert_eq!(first.through, Lsn::new(1008), "the end of the first commit");
    assert!(!first.partial);
    // The open transaction's rows wait; nothing to take until it commits.
    assert!(h.assembler.take(3, Lsn::new(1008)).is_none());
    assert!(!h.assembler.is_idle());
    h.feed(&[second_commit]);
    let second = h.assembler.take(3, Lsn::new(1008)).expect("a batch");
    assert_eq!(ids_of(&second), [3, 4]);
    assert_eq!(second.through, Lsn::new(2008));
    assert!(h.assembler.is_idle());
}

#[test]
fn a_transaction_larger_than_a_batch_is_split_and_confirms_only_at_its_commit() {
    let mut h = Harness::new(CdcConfig::default());
    let mut big = transaction(5000, 1, 5);
    let end = big.pop().expect("commit");
    let confirmed = Lsn::new(77);
    let mut parts = Vec::new();
    for message in big {
        h.feed(&[message]);
        if h.assembler.len() >= 2 {
            parts.push(h.assembler.take(2, confirmed).expect("a part"));
        }
    }
    h.feed(&[end]);
    parts.push(h.assembler.take(2, confirmed).expect("the tail"));
    let ids: Vec<Vec<i64>> = parts.iter().map(ids_of).collect();
    assert_eq!(ids, [vec![1, 2], vec![3, 4], vec![5]]);
    assert!(
        parts[..2]
            .iter()
            .all(|p| p.partial && p.through == confirmed)
    );
    assert_eq!(
        (parts[2].partial, parts[2].through),
        (false, Lsn::new(5008))
    );
}

#[test]
fn reading_a_transaction_again_gives_the_same_envelopes() {
    let mut first = Harness::new(CdcConfig::default());
    let mut again = Harness::new(CdcConfig::default());
    first.feed(&transaction(9000, 1, 3));
    again.feed(&transaction(9000, 1, 3));
    let a = first.assembler.take(10, Lsn::ZERO).expect("a batch");
    let b = again.assembler.take(10, Lsn::ZERO).expect("a batch");
    assert_eq!(a, b);
    let ids: std::collections::HashSet<EventId> = a.messages.iter().map(|m| m.id).collect();
    assert_eq!(ids.len(), 3, "each change its own id");
}

#[test]
fn empty_transactions_and_heartbeats_are_positions_to_confirm_when_idle() {
    let config = CdcConfig::default().with_tables(TableCapture::only(vec![
        super::config::TableConfig::new("other"),
    ]));
    let mut h = Harness::new(config);
    // A transaction whose changes are all filtered out.
    let steps = h.feed(&transaction(3000, 1, 2));
    assert_eq!(steps.last(), Some(&Step::Idle(Lsn::new(3008))));
    let heartbeat = PgOutputMessage::Message(LogicalMessage {
        transactional: false,
        lsn: Lsn::new(3100),
        prefix: super::HEARTBEAT_PREFIX.into(),
        content: b"slot".to_vec(),
    });
    assert_eq!(h.feed(&[heartbeat]), [Step::Heartbeat(Lsn::new(3100))]);
    assert!(h.assembler.is_idle());
    assert!(h.assembler.take(10, Lsn::ZERO).is_none());
}

#[test]
fn table_events_carry_operation_key_rows_and_transaction() {
    let mut h = Harness::new(CdcConfig::default());
    h.feed(&[
        begin(4000, 731),
        insert(7, "seven"),
        PgOutputMessage::Update(Update {
            relation_id: ITEMS,
            old: Some(OldTuple::Key(TupleData {
                values: vec![text("7"), TupleValue::Null],
            })),
            new: TupleData {
                values: vec![text("8"), TupleValue::UnchangedToast],
            },
        }),
        PgOutputMessage::Delete(Delete {
            relation_id: ITEMS,
            old: OldTuple::Key(TupleData {
                values: vec![text("8"), TupleValue::Null],
            }),
        }),
        PgOutputMessage::Truncate(Truncate {
            cascade: false,
            restart_identity: true,
            relation_ids: vec![ITEMS],
        }),
        commit(4000),
    ]);
    let batch = h.assembler.take(10, Lsn::ZERO).expect("a batch");
    let envelopes: Vec<Envelope> = batch
        .messages
        .iter()
        .map(|m| Envelope::from_json(&m.payload).expect("envelope"))
        .collect();
    let types: Vec<&str> = envelopes.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "items.inserted",
            "items.updated",
            "items.deleted",
            "items.truncated"
        ]
    );
    assert!(batch.messages.iter().all(|m| m.topic.as_str() == "items"));
    let keys: Vec<&str> = batch.messages.iter().map(|m| m.key.as_str()).collect();
    assert_eq!(keys, ["7", "8", "8", "items"]);
    assert_eq!(
        envelopes[0].data.to_value(),
        json!({
            "operation": "insert", "schema": "public", "table": "items",
            "key": {"id": 7}, "new": {"id": 7, "name": "seven"}, "old": null,
            "unchanged_toast": [],
            "transaction": {"xid": 731, "commit_lsn": "0/FA0", "index": 0},
        })
    );
    let update = envelopes[1].data.to_value();
    assert_eq!(
        update["old"],
        json!({"id": 7}),
        "the old key of a key change"
    );
    assert_eq!(update["new"], json!({"id": 8}));
    assert_eq!(update["unchanged_toast"], json!(["name"]));
    assert_eq!(update["transaction"]["index"], 1);
    assert_eq!(envelopes[2].data.to_value()["new"], Value::Null);
    let truncate = envelopes[3].data.to_value();
    assert_eq!(
        (
            &truncate["key"],
            &truncate["restart_identity"],
            &truncate["cascade"]
        ),
        (&Value::Null, &json!(true), &json!(false))
    );
    assert_eq!(envelopes[0].subject.as_deref(), Some("7"));
    assert_eq!(envelopes[0].aggregate_type.as_deref(), Some("items"));
    assert_eq!(envelopes[0].source, "tributary-cdc");
    assert_eq!(envelopes[0].time.timestamp(), 1_704_067_200);
}

#[test]
fn outbox_rows_are_published_as_their_own_envelope_and_deletes_are_not() {
    let config = CdcConfig::default()
        .without_tables()
        .with_outbox(OutboxCapture::default());
    let mut h = Harness::new(config);
    let envelope = Envelope::new(
        "orders",
        "OrderCreated",
        Payload::from_json_str(r#"{"total":5}"#).expect("json"),
    )
    .with_subject("o-1");
    let bytes = envelope.to_json().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let row = |id: &str, topic: &str| {
        PgOutputMessage::Insert(Insert {
            relation_id: OUTBOX,
            new: TupleData {
                values: vec![
                    text(id),
                    text(topic),
                    text("o-1"),
                    text(&envelope.id.to_string()),
                    text(&format!("\\x{hex}")),
                ],
            },
        })
    };
    h.feed(&[
        begin(6000, 1),
        row("41", "Order"),
        row("42", "not a topic!"),
        insert(1, "a table row, not captured in outbox-only mode"),
        PgOutputMessage::Delete(Delete {
            relation_id: OUTBOX,
            old: OldTuple::Key(TupleData {
                values: vec![
                    text("40"),
                    TupleValue::Null,
                    TupleValue::Null,
                    TupleValue::Null,
                    TupleValue::Null,
                ],
            }),
        }),
        commit(6000),
    ]);
    let batch = h.assembler.take(10, Lsn::ZERO).expect("a batch");
    assert_eq!(batch.messages.len(), 2);
    let published = &batch.messages[0];
    assert_eq!(
        (
            published.topic.as_str(),
            published.key.as_str(),
            published.id,
            &published.payload
        ),
        ("Order", "o-1", envelope.id, &bytes)
    );
    assert_eq!(batch.messages[1].topic.as_str(), "cdc-invalid");
    assert_eq!(batch.outbox_max, Some(42));
}

#[test]
fn logical_messages_publish_envelopes_as_written_and_wrap_other_payloads() {
    let routed = MessageRoute::new("orders", Topic::new("Order").expect("topic"))
        .with_event_type("OrderNote")
        .with_partition_key("notes");
    let config = CdcConfig::default()
        .without_tables()
        .with_messages(MessageCapture::default().with_route(routed));
    let mut h = Harness::new(config);
    let envelope = Envelope::new(
        "app",
        "Shipped",
        Payload::from_json_str("{}").expect("json"),
    )
    .with_subject("s-1");
    let message = |transactional: bool, prefix: &str, content: &[u8]| {
        PgOutputMessage::Message(LogicalMessage {
            transactional,
            lsn: Lsn::new(7001),
            prefix: prefix.into(),
            content: content.to_vec(),
        })
    };
    h.feed(&[
        begin(7000, 1),
        message(true, "orders", br#"{"note":"hi"}"#),
        message(true, "orders", envelope.to_json().as_bytes()),
        message(true, "free text", b"plain words"),
        message(true, "bytes", &[0xff, 0x00]),
        message(true, super::HEARTBEAT_PREFIX, b"x"),
        commit(7000),
    ]);
    // Outside a transaction: written even on rollback, never published.
    assert_eq!(h.feed(&[message(false, "orders", b"{}")]), [Step::Continue]);
    let batch = h.assembler.take(10, Lsn::ZERO).expect("a batch");
    assert_eq!(batch.messages.len(), 4);
    let wrapped = Envelope::from_json(&batch.messages[0].payload).expect("envelope");
    assert_eq!(
        (
            wrapped.event_type.as_str(),
            batch.messages[0].topic.as_str(),
            batch.messages[0].key.as_str()
        ),
        ("OrderNote", "Order", "notes")
    );
    assert_eq!(wrapped.data.to_value(), json!({"note": "hi"}));
    assert_eq!(batch.messages[1].id, envelope.id);
    assert_eq!(batch.messages[1].key, "s-1");
    assert_eq!(batch.messages[1].payload, envelope.to_json().into_bytes());
    assert_eq!(batch.messages[2].topic.as_str(), "free_text");
    assert_eq!(data(&batch.messages[2]), json!("plain words"));
    assert_eq!(data(&batch.messages[3]), json!("\\xff00"));
}
