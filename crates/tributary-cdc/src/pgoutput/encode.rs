//! [`PgOutputMessage`] back to bytes.
//!
//! The inverse of [`decode_message`](super::decode_message). It lets tests and test kits
//! build pgoutput streams without a server, and it gives the decoder a round-trip property
//! (`decode(encode(m)) == m`) that random tests can check.

use super::message::{OldTuple, PgOutputMessage, TupleData, TupleValue};

/// Encodes a message the way `pgoutput` (protocol version 1) writes it.
///
/// Lengths that do not fit the wire format (more than `i16::MAX` columns, values or contents
/// over `i32::MAX` bytes, or strings containing NUL) cannot come from a server; they are
/// written truncated or cut at the NUL, so such a message does not round-trip.
pub fn encode_message(message: &PgOutputMessage) -> Vec<u8> {
    let mut out = vec![message.tag()];
    match message {
        PgOutputMessage::Begin(begin) => {
            out.extend(begin.final_lsn.as_u64().to_be_bytes());
            out.extend(begin.commit_time.0.to_be_bytes());
            out.extend(begin.xid.0.to_be_bytes());
        }
        PgOutputMessage::Commit(commit) => {
            out.push(commit.flags);
            out.extend(commit.commit_lsn.as_u64().to_be_bytes());
            out.extend(commit.end_lsn.as_u64().to_be_bytes());
            out.extend(commit.commit_time.0.to_be_bytes());
        }
        PgOutputMessage::Origin(origin) => {
            out.extend(origin.commit_lsn.as_u64().to_be_bytes());
            string(&mut out, &origin.name);
        }
        PgOutputMessage::Relation(relation) => {
            out.extend(relation.id.0.to_be_bytes());
            string(&mut out, &relation.namespace);
            string(&mut out, &relation.name);
            out.push(match relation.replica_identity {
                super::ReplicaIdentity::Default => b'd',
                super::ReplicaIdentity::Nothing => b'n',
                super::ReplicaIdentity::Full => b'f',
                super::ReplicaIdentity::Index => b'i',
            });
            out.extend(count16(relation.columns.len()).to_be_bytes());
            for column in &relation.columns {
                out.push(u8::from(column.is_key));
                string(&mut out, &column.name);
                out.extend(column.type_oid.0.to_be_bytes());
                out.extend(column.type_modifier.to_be_bytes());
            }
        }
        PgOutputMessage::Type(info) => {
            out.extend(info.oid.0.to_be_bytes());
            string(&mut out, &info.namespace);
            string(&mut out, &info.name);
        }
        PgOutputMessage::Insert(insert) => {
            out.extend(insert.relation_id.0.to_be_bytes());
            out.push(b'N');
            tuple(&mut out, &insert.new);
        }
        PgOutputMessage::Update(update) => {
            out.extend(update.relation_id.0.to_be_bytes());
            if let Some(old) = &update.old {
                old_tuple(&mut out, old);
            }
            out.push(b'N');
            tuple(&mut out, &update.new);
        }
        PgOutputMessage::Delete(delete) => {
            out.extend(delete.relation_id.0.to_be_bytes());
            old_tuple(&mut out, &delete.old);
        }
        PgOutputMessage::Truncate(truncate) => {
            out.extend(count32(truncate.relation_ids.len()).to_be_bytes());
            out.push(u8::from(truncate.cascade) | (u8::from(truncate.restart_identity) << 1));
            for id in &truncate.relation_ids {
                out.extend(id.0.to_be_bytes());
            }
        }
        PgOutputMessage::Message(message) => {
            out.push(u8::from(message.transactional));
            out.extend(message.lsn.as_u64().to_be_bytes());
            string(&mut out, &message.prefix);
            out.extend(count32(message.content.len()).to_be_bytes());
            out.extend(&message.content);
        }
    }
    out
}

fn count16(n: usize) -> i16 {
    i16::try_from(n).unwrap_or(i16::MAX)
}

fn count32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn string(out: &mut Vec<u8>, text: &str) {
    out.extend(text.bytes().take_while(|&b| b != 0));
    out.push(0);
}

fn old_tuple(out: &mut Vec<u8>, old: &OldTuple) {
    match old {
        OldTuple::Key(values) => {
            out.push(b'K');
            tuple(out, values);
        }
        OldTuple::Full(values) => {
            out.push(b'O');
            tuple(out, values);
        }
    }
}

fn tuple(out: &mut Vec<u8>, data: &TupleData) {
    out.extend(count16(data.values.len()).to_be_bytes());
    for value in &data.values {
        match value {
            TupleValue::Null => out.push(b'n'),
            TupleValue::UnchangedToast => out.push(b'u'),
            TupleValue::Text(text) => {
                out.push(b't');
                out.extend(count32(text.len()).to_be_bytes());
                out.extend(text.as_bytes());
            }
            TupleValue::Binary(bytes) => {
                out.push(b'b');
                out.extend(count32(bytes.len()).to_be_bytes());
                out.extend(bytes);
            }
        }
    }
}
