use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::lsn::Lsn;

fn relation(id: u32, columns: &[(&str, Oid, bool)]) -> Relation {
    Relation {
        id: RelationId(id),
        namespace: "public".into(),
        name: "orders".into(),
        replica_identity: ReplicaIdentity::Default,
        columns: columns
            .iter()
            .map(|&(name, type_oid, is_key)| RelationColumn {
                is_key,
                name: name.into(),
                type_oid,
                type_modifier: -1,
            })
            .collect(),
    }
}

fn text(value: &str) -> TupleValue {
    TupleValue::Text(value.into())
}

#[test]
fn begin_is_read_field_by_field_in_wire_order() {
    let mut bytes = vec![b'B'];
    bytes.extend(0x0000_0001_0000_0010_u64.to_be_bytes());
    bytes.extend(42_i64.to_be_bytes());
    bytes.extend(7_u32.to_be_bytes());
    assert_eq!(
        decode_message(&bytes),
        Ok(PgOutputMessage::Begin(Begin {
            final_lsn: "1/10".parse().expect("valid"),
            commit_time: PgTimestamp(42),
            xid: Xid(7),
        }))
    );
}

#[test]
fn update_with_old_key_and_unchanged_toast_is_decoded() {
    let mut bytes = vec![b'U'];
    bytes.extend(16384_u32.to_be_bytes());
    bytes.extend([b'K', 0, 2, b't', 0, 0, 0, 1, b'1', b'n']);
    bytes.extend([b'N', 0, 2, b't', 0, 0, 0, 1, b'2', b'u']);
    assert_eq!(
        decode_message(&bytes),
        Ok(PgOutputMessage::Update(Update {
            relation_id: RelationId(16384),
            old: Some(OldTuple::Key(TupleData {
                values: vec![text("1"), TupleValue::Null],
            })),
            new: TupleData {
                values: vec![text("2"), TupleValue::UnchangedToast],
            },
        }))
    );
}

#[test]
fn logical_message_keeps_flags_prefix_and_raw_content() {
    let mut bytes = vec![b'M', 1];
    bytes.extend(5_u64.to_be_bytes());
    bytes.extend(b"app\0");
    bytes.extend(3_i32.to_be_bytes());
    bytes.extend([0, 0xFF, b'x']);
    assert_eq!(
        decode_message(&bytes),
        Ok(PgOutputMessage::Message(LogicalMessage {
            transactional: true,
            lsn: Lsn::new(5),
            prefix: "app".into(),
            content: vec![0, 0xFF, b'x'],
        }))
    );
}

#[test]
fn empty_payload_is_an_error() {
    assert_eq!(decode_message(&[]), Err(DecodeError::Empty));
}

#[test]
fn streaming_messages_are_refused_with_a_hint() {
    let error = decode_message(b"S\0\0\0\x01\x01").expect_err("stream start is v2");
    assert_eq!(error, DecodeError::Unsupported { tag: 'S' });
    assert!(error.to_string().contains("proto_version '1'"));
}

#[test]
fn unknown_tag_is_an_error() {
    assert_eq!(
        decode_message(b"Z"),
        Err(DecodeError::UnknownTag { tag: b'Z' })
    );
}

#[test]
fn trailing_bytes_are_an_error() {
    let mut bytes = encode_message(&PgOutputMessage::Origin(Origin {
        commit_lsn: Lsn::new(1),
        name: "a".into(),
    }));
    bytes.push(0);
    assert_eq!(
        decode_message(&bytes),
        Err(DecodeError::TrailingBytes {
            message: "Origin",
            count: 1
        })
    );
}

#[test]
fn negative_value_length_is_an_error() {
    let mut bytes = vec![b'I'];
    bytes.extend(1_u32.to_be_bytes());
    bytes.extend([b'N', 0, 1, b't']);
    bytes.extend((-5_i32).to_be_bytes());
    assert!(matches!(
        decode_message(&bytes),
        Err(DecodeError::NegativeLength { value: -5, .. })
    ));
}

#[test]
fn huge_counts_do_not_allocate_before_the_bytes_exist() {
    // A Truncate claiming 2^31-1 relations in a 6-byte body must fail quickly.
    let mut bytes = vec![b'T'];
    bytes.extend(i32::MAX.to_be_bytes());
    bytes.push(0);
    assert!(matches!(
        decode_message(&bytes),
        Err(DecodeError::Truncated {
            field: "relation id",
            ..
        })
    ));
}

#[test]
fn row_names_values_by_the_cached_relation() {
    let mut decoder = PgOutputDecoder::new();
    let rel = relation(
        1,
        &[
            ("id", type_oid::INT8, true),
            ("note", type_oid::TEXT, false),
            ("doc", type_oid::JSONB, false),
        ],
    );
    decoder
        .decode(&encode_message(&PgOutputMessage::Relation(rel)))
        .expect("relation");
    let insert = PgOutputMessage::Insert(Insert {
        relation_id: RelationId(1),
        new: TupleData {
            values: vec![text("9"), TupleValue::Null, text(r#"{"a": [1, 2]}"#)],
        },
    });
    let change = decoder
        .change(&insert)
        .expect("known relation")
        .expect("a row change");
    let RowChange::Insert { new } = change else {
        panic!("expected an insert, got {change:?}");
    };
    assert_eq!(new.table(), "orders");
    assert_eq!(new.get("id"), Some(&text("9")));
    assert_eq!(
        Value::Object(new.to_json().expect("valid values")),
        json!({"id": 9, "note": null, "doc": {"a": [1, 2]}})
    );
    assert_eq!(
        Value::Object(new.key_to_json().expect("valid")),
        json!({"id": 9})
    );
}

use serde_json::Value;

#[test]
fn rows_of_unknown_relations_are_an_error() {
    let decoder = PgOutputDecoder::new();
    let delete = PgOutputMessage::Delete(Delete {
        relation_id: RelationId(5),
        old: OldTuple::Key(TupleData::default()),
    });
    assert_eq!(
        decoder.change(&delete),
        Err(DecodeError::UnknownRelation {
            relation_id: RelationId(5)
        })
    );
}

#[test]
fn rows_that_do_not_fit_their_relation_are_an_error() {
    let mut decoder = PgOutputDecoder::new();
    decoder.observe(&PgOutputMessage::Relation(relation(
        1,
        &[("id", type_oid::INT4, true)],
    )));
    let result = decoder.row(RelationId(1), &TupleData { values: vec![] });
    assert!(matches!(
        result,
        Err(DecodeError::ColumnCountMismatch {
            expected: 1,
            actual: 0,
            ..
        })
    ));
}

#[test]
fn unchanged_toast_values_are_left_out_of_json_and_listed() {
    let mut decoder = PgOutputDecoder::new();
    decoder.observe(&PgOutputMessage::Relation(relation(
        1,
        &[
            ("id", type_oid::INT4, true),
            ("body", type_oid::TEXT, false),
        ],
    )));
    let row = decoder
        .row(
            RelationId(1),
            &TupleData {
                values: vec![text("1"), TupleValue::UnchangedToast],
            },
        )
        .expect("fits");
    assert_eq!(
        Value::Object(row.to_json().expect("valid")),
        json!({"id": 1})
    );
    assert_eq!(row.unchanged_toast_columns().collect::<Vec<_>>(), ["body"]);
}

#[test]
fn json_conversion_follows_the_column_type() {
    let cases = [
        (type_oid::BOOL, "t", json!(true)),
        (type_oid::BOOL, "f", json!(false)),
        (type_oid::INT2, "-3", json!(-3)),
        (type_oid::INT8, "9223372036854775807", json!(i64::MAX)),
        (type_oid::FLOAT8, "1.5", json!(1.5)),
        (type_oid::FLOAT4, "NaN", json!("NaN")),
        (type_oid::FLOAT8, "-Infinity", json!("-Infinity")),
        (
            type_oid::NUMERIC,
            "12345678901234567890.000000001",
            json!("12345678901234567890.000000001"),
        ),
        (
            type_oid::UUID,
            "0190b8a4-0000-7000-8000-000000000000",
            json!("0190b8a4-0000-7000-8000-000000000000"),
        ),
        (
            type_oid::TIMESTAMPTZ,
            "2024-01-02 03:04:05.123+00",
            json!("2024-01-02 03:04:05.123+00"),
        ),
        (type_oid::JSON, "[1, \"x\"]", json!([1, "x"])),
        (Oid(1007), "{1,2}", json!("{1,2}")),
    ];
    for (type_oid, input, expected) in cases {
        let column = RelationColumn {
            is_key: false,
            name: "c".into(),
            type_oid,
            type_modifier: -1,
        };
        assert_eq!(
            value_to_json(&column, &text(input)),
            Ok(Some(expected.clone())),
            "{type_oid} {input}"
        );
        let mut written = String::new();
        assert_eq!(
            super::json::write_value_json(&column, &text(input), &mut written),
            Ok(true)
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&written).ok(),
            Some(expected),
            "written {written}"
        );
    }
}

proptest! {
    #[test]
    fn written_json_strings_parse_back_to_the_text(input in ".*") {
        let mut written = String::new();
        super::json::write_json_string(&input, &mut written);
        prop_assert_eq!(serde_json::from_str::<String>(&written).ok(), Some(input));
    }
}

#[test]
fn json_conversion_rejects_values_that_do_not_parse_as_their_type() {
    let column = RelationColumn {
        is_key: false,
        name: "n".into(),
        type_oid: type_oid::INT4,
        type_modifier: -1,
    };
    assert!(matches!(
        value_to_json(&column, &text("twelve")),
        Err(DecodeError::InvalidValue {
            expected: "integer",
            ..
        })
    ));
    assert!(matches!(
        value_to_json(&column, &TupleValue::Binary(vec![0, 0, 0, 1])),
        Err(DecodeError::BinaryValue { .. })
    ));
}

#[test]
fn a_new_relation_message_does_not_change_rows_already_made() {
    let mut decoder = PgOutputDecoder::new();
    decoder.observe(&PgOutputMessage::Relation(relation(
        1,
        &[("id", type_oid::INT4, true)],
    )));
    let before = decoder
        .row(
            RelationId(1),
            &TupleData {
                values: vec![text("1")],
            },
        )
        .expect("fits");
    decoder.observe(&PgOutputMessage::Relation(relation(
        1,
        &[("renamed", type_oid::TEXT, true)],
    )));
    assert_eq!(
        Value::Object(before.to_json().expect("valid")),
        json!({"id": 1})
    );
    let after = decoder
        .row(
            RelationId(1),
            &TupleData {
                values: vec![text("1")],
            },
        )
        .expect("fits");
    assert_eq!(
        Value::Object(after.to_json().expect("valid")),
        json!({"renamed": "1"})
    );
}

// ---- properties: round trip, and no panic on any input ----

fn name() -> impl Strategy<Value = String> {
    "[a-z_\u{e9}\u{4e2d}]{0,12}"
}

fn tuple_value() -> impl Strategy<Value = TupleValue> {
    prop_oneof![
        Just(TupleValue::Null),
        Just(TupleValue::UnchangedToast),
        any::<String>().prop_map(TupleValue::Text),
        proptest::collection::vec(any::<u8>(), 0..16).prop_map(TupleValue::Binary),
    ]
}

fn tuple_data() -> impl Strategy<Value = TupleData> {
    proptest::collection::vec(tuple_value(), 0..6).prop_map(|values| TupleData { values })
}

fn old_tuple() -> impl Strategy<Value = OldTuple> {
    prop_oneof![
        tuple_data().prop_map(OldTuple::Key),
        tuple_data().prop_map(OldTuple::Full)
    ]
}

fn lsn() -> impl Strategy<Value = Lsn> {
    any::<u64>().prop_map(Lsn::new)
}

fn message() -> impl Strategy<Value = PgOutputMessage> {
    let identity = prop_oneof![
        Just(ReplicaIdentity::Default),
        Just(ReplicaIdentity::Nothing),
        Just(ReplicaIdentity::Full),
        Just(ReplicaIdentity::Index),
    ];
    let column = (any::<bool>(), name(), any::<u32>(), any::<i32>()).prop_map(
        |(is_key, name, oid, modifier)| RelationColumn {
            is_key,
            name,
            type_oid: Oid(oid),
            type_modifier: modifier,
        },
    );
    prop_oneof![
        (lsn(), any::<i64>(), any::<u32>()).prop_map(|(final_lsn, time, xid)| {
            PgOutputMessage::Begin(Begin {
                final_lsn,
                commit_time: PgTimestamp(time),
                xid: Xid(xid),
            })
        }),
        (any::<u8>(), lsn(), lsn(), any::<i64>()).prop_map(|(flags, commit_lsn, end_lsn, time)| {
            PgOutputMessage::Commit(Commit {
                flags,
                commit_lsn,
                end_lsn,
                commit_time: PgTimestamp(time),
            })
        }),
        (lsn(), name())
            .prop_map(|(commit_lsn, name)| PgOutputMessage::Origin(Origin { commit_lsn, name })),
        (
            any::<u32>(),
            name(),
            name(),
            identity,
            proptest::collection::vec(column, 0..6)
        )
            .prop_map(|(id, namespace, name, replica_identity, columns)| {
                PgOutputMessage::Relation(Relation {
                    id: RelationId(id),
                    namespace,
                    name,
                    replica_identity,
                    columns,
                })
            }),
        (any::<u32>(), name(), name()).prop_map(|(oid, namespace, name)| PgOutputMessage::Type(
            TypeInfo {
                oid: Oid(oid),
                namespace,
                name,
            }
        )),
        (any::<u32>(), tuple_data()).prop_map(|(id, new)| PgOutputMessage::Insert(Insert {
            relation_id: RelationId(id),
            new,
        })),
        (
            any::<u32>(),
            proptest::option::of(old_tuple()),
            tuple_data()
        )
            .prop_map(|(id, old, new)| {
                PgOutputMessage::Update(Update {
                    relation_id: RelationId(id),
                    old,
                    new,
                })
            }),
        (any::<u32>(), old_tuple()).prop_map(|(id, old)| PgOutputMessage::Delete(Delete {
            relation_id: RelationId(id),
            old,
        })),
        (
            any::<bool>(),
            any::<bool>(),
            proptest::collection::vec(any::<u32>(), 0..5)
        )
            .prop_map(
                |(cascade, restart_identity, ids)| PgOutputMessage::Truncate(Truncate {
                    cascade,
                    restart_identity,
                    relation_ids: ids.into_iter().map(RelationId).collect(),
                })
            ),
        (
            any::<bool>(),
            lsn(),
            name(),
            proptest::collection::vec(any::<u8>(), 0..32)
        )
            .prop_map(
                |(transactional, lsn, prefix, content)| PgOutputMessage::Message(LogicalMessage {
                    transactional,
                    lsn,
                    prefix,
                    content,
                })
            ),
    ]
}

/// Strings with NUL cannot be sent; the encoder cuts them, so they do not round-trip.
fn has_nul(message: &PgOutputMessage) -> bool {
    format!("{message:?}").contains("\\0")
}

proptest! {
    #[test]
    fn every_message_survives_an_encode_decode_round_trip(message in message()) {
        prop_assume!(!has_nul(&message));
        prop_assert_eq!(decode_message(&encode_message(&message)), Ok(message));
    }

    #[test]
    fn every_strict_prefix_of_a_message_is_an_error(message in message()) {
        let bytes = encode_message(&message);
        for end in 0..bytes.len() {
            prop_assert!(decode_message(&bytes[..end]).is_err(), "prefix of {} bytes decoded", end);
        }
    }

    #[test]
    fn mutated_messages_never_panic_the_decoder(
        messages in proptest::collection::vec(message(), 1..8),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
    ) {
        let mut decoder = PgOutputDecoder::new();
        for message in &messages {
            let mut bytes = encode_message(message);
            for (index, byte) in &flips {
                if !bytes.is_empty() {
                    let at = index.index(bytes.len());
                    bytes[at] = *byte;
                }
            }
            if let Ok(decoded) = decoder.decode(&bytes)
                && let Ok(Some(change)) = decoder.change(&decoded)
            {
                let _ = change.relation();
                let row = match &change {
                    RowChange::Insert { new } | RowChange::Update { new, .. } => new,
                    RowChange::Delete { old } => old.row(),
                };
                let _ = row.to_json();
            }
        }
    }

    #[test]
    fn random_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode_message(&bytes);
    }

    #[test]
    fn random_bodies_after_a_valid_tag_never_panic_the_decoder(
        tag in proptest::sample::select(b"BCORYIUDTM".to_vec()),
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut bytes = vec![tag];
        bytes.extend(body);
        let _ = decode_message(&bytes);
    }
}
