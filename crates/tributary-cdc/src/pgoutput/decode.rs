//! Bytes to [`PgOutputMessage`], one message at a time, without state.
//!
//! The layout of each message is PostgreSQL's "Logical Replication Message Formats" for
//! protocol version 1. Decoding is strict: a payload must be exactly one message, so a
//! server that speaks a different protocol version is noticed at the first message instead of
//! being half-read.

use super::error::DecodeError;
use super::message::{
    Begin, Commit, Delete, Insert, LogicalMessage, Oid, OldTuple, Origin, PgOutputMessage,
    PgTimestamp, Relation, RelationColumn, RelationId, ReplicaIdentity, Truncate, TupleData,
    TupleValue, TypeInfo, Update, Xid,
};
use super::reader::Reader;
use crate::lsn::Lsn;

/// Decodes the payload of one XLogData message sent by `pgoutput` with `proto_version '1'`.
///
/// This reads bytes only; it does not need or update a relation cache. Use
/// [`PgOutputDecoder`](super::PgOutputDecoder) to also turn rows into named columns.
///
/// # Errors
///
/// A [`DecodeError`] for any payload that is not exactly one well-formed protocol version 1
/// message. It never panics, whatever the input.
pub fn decode_message(payload: &[u8]) -> Result<PgOutputMessage, DecodeError> {
    let (&tag, body) = payload.split_first().ok_or(DecodeError::Empty)?;
    let message = match tag {
        b'B' => {
            let mut r = Reader::new(body, "Begin");
            let message = PgOutputMessage::Begin(Begin {
                final_lsn: lsn(&mut r, "final LSN")?,
                commit_time: PgTimestamp(r.i64("commit timestamp")?),
                xid: Xid(r.u32("xid")?),
            });
            r.finish()?;
            message
        }
        b'C' => {
            let mut r = Reader::new(body, "Commit");
            let message = PgOutputMessage::Commit(Commit {
                flags: r.u8("flags")?,
                commit_lsn: lsn(&mut r, "commit LSN")?,
                end_lsn: lsn(&mut r, "end LSN")?,
                commit_time: PgTimestamp(r.i64("commit timestamp")?),
            });
            r.finish()?;
            message
        }
        b'O' => {
            let mut r = Reader::new(body, "Origin");
            let message = PgOutputMessage::Origin(Origin {
                commit_lsn: lsn(&mut r, "commit LSN")?,
                name: r.string("origin name")?,
            });
            r.finish()?;
            message
        }
        b'R' => {
            let mut r = Reader::new(body, "Relation");
            let message = PgOutputMessage::Relation(relation(&mut r)?);
            r.finish()?;
            message
        }
        b'Y' => {
            let mut r = Reader::new(body, "Type");
            let message = PgOutputMessage::Type(TypeInfo {
                oid: Oid(r.u32("type OID")?),
                namespace: r.string("namespace")?,
                name: r.string("type name")?,
            });
            r.finish()?;
            message
        }
        b'I' => {
            let mut r = Reader::new(body, "Insert");
            let relation_id = RelationId(r.u32("relation id")?);
            let marker = r.u8("tuple marker")?;
            if marker != b'N' {
                return Err(unexpected_marker(&r, marker, "'N'"));
            }
            let message = PgOutputMessage::Insert(Insert {
                relation_id,
                new: tuple(&mut r)?,
            });
            r.finish()?;
            message
        }
        b'U' => {
            let mut r = Reader::new(body, "Update");
            let relation_id = RelationId(r.u32("relation id")?);
            let mut old = None;
            let mut marker = r.u8("tuple marker")?;
            if marker == b'K' || marker == b'O' {
                let values = tuple(&mut r)?;
                old = Some(if marker == b'K' {
                    OldTuple::Key(values)
                } else {
                    OldTuple::Full(values)
                });
                marker = r.u8("tuple marker")?;
            }
            if marker != b'N' {
                let expected = if old.is_some() {
                    "'N'"
                } else {
                    "'K', 'O' or 'N'"
                };
                return Err(unexpected_marker(&r, marker, expected));
            }
            let message = PgOutputMessage::Update(Update {
                relation_id,
                old,
                new: tuple(&mut r)?,
            });
            r.finish()?;
            message
        }
        b'D' => {
            let mut r = Reader::new(body, "Delete");
            let relation_id = RelationId(r.u32("relation id")?);
            let old = match r.u8("tuple marker")? {
                b'K' => OldTuple::Key(tuple(&mut r)?),
                b'O' => OldTuple::Full(tuple(&mut r)?),
                marker => return Err(unexpected_marker(&r, marker, "'K' or 'O'")),
            };
            r.finish()?;
            PgOutputMessage::Delete(Delete { relation_id, old })
        }
        b'T' => {
            let mut r = Reader::new(body, "Truncate");
            let count = r.i32("number of relations")?;
            let count = r.length(count.into(), "number of relations")?;
            let options = r.u8("options")?;
            // Each id takes 4 bytes, so the payload bounds what is worth reserving.
            let mut relation_ids = Vec::with_capacity(count.min(r.remaining() / 4));
            for _ in 0..count {
                relation_ids.push(RelationId(r.u32("relation id")?));
            }
            r.finish()?;
            PgOutputMessage::Truncate(Truncate {
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
                relation_ids,
            })
        }
        b'M' => {
            let mut r = Reader::new(body, "Message");
            let flags = r.u8("flags")?;
            let lsn = lsn(&mut r, "message LSN")?;
            let prefix = r.string("prefix")?;
            let length = r.i32("content length")?;
            let length = r.length(length.into(), "content length")?;
            let content = r.bytes(length, "content")?.to_vec();
            r.finish()?;
            PgOutputMessage::Message(LogicalMessage {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content,
            })
        }
        // Stream Start/Stop/Commit/Abort (v2) and the two-phase messages (v3).
        b'S' | b'E' | b'c' | b'A' | b'b' | b'P' | b'K' | b'r' | b'p' => {
            return Err(DecodeError::Unsupported {
                tag: char::from(tag),
            });
        }
        tag => return Err(DecodeError::UnknownTag { tag }),
    };
    Ok(message)
}

fn lsn(r: &mut Reader<'_>, field: &'static str) -> Result<Lsn, DecodeError> {
    Ok(Lsn::new(r.u64(field)?))
}

fn unexpected_marker(r: &Reader<'_>, marker: u8, expected: &'static str) -> DecodeError {
    DecodeError::UnexpectedTupleMarker {
        message: r.message(),
        marker,
        expected,
    }
}

fn relation(r: &mut Reader<'_>) -> Result<Relation, DecodeError> {
    let id = RelationId(r.u32("relation id")?);
    let namespace = r.string("namespace")?;
    let name = r.string("relation name")?;
    let identity = r.u8("replica identity")?;
    let replica_identity = ReplicaIdentity::from_byte(identity)
        .ok_or(DecodeError::UnknownReplicaIdentity { value: identity })?;
    let count = r.i16("number of columns")?;
    let count = r.length(count.into(), "number of columns")?;
    // The smallest column is 10 bytes (flags, empty name, type OID, modifier).
    let mut columns = Vec::with_capacity(count.min(r.remaining() / 10));
    for _ in 0..count {
        columns.push(RelationColumn {
            is_key: r.u8("column flags")? & 1 != 0,
            name: r.string("column name")?,
            type_oid: Oid(r.u32("column type OID")?),
            type_modifier: r.i32("column type modifier")?,
        });
    }
    Ok(Relation {
        id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn tuple(r: &mut Reader<'_>) -> Result<TupleData, DecodeError> {
    let count = r.i16("number of columns")?;
    let count = r.length(count.into(), "number of columns")?;
    // Each value takes at least its kind byte.
    let mut values = Vec::with_capacity(count.min(r.remaining()));
    for _ in 0..count {
        let value = match r.u8("value kind")? {
            b'n' => TupleValue::Null,
            b'u' => TupleValue::UnchangedToast,
            b't' => {
                let length = r.i32("value length")?;
                let length = r.length(length.into(), "value length")?;
                let bytes = r.bytes(length, "text value")?;
                let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8 {
                    message: r.message(),
                    field: "text value",
                })?;
                TupleValue::Text(text.to_owned())
            }
            b'b' => {
                let length = r.i32("value length")?;
                let length = r.length(length.into(), "value length")?;
                TupleValue::Binary(r.bytes(length, "binary value")?.to_vec())
            }
            kind => {
                return Err(DecodeError::UnknownValueKind {
                    message: r.message(),
                    kind,
                });
            }
        };
        values.push(value);
    }
    Ok(TupleData { values })
}
