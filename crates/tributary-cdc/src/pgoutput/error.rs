//! Why a pgoutput payload could not be decoded.
//!
//! Every variant names the message and the field, because the bytes come from a server (or
//! from a fuzzer) and the person reading the error needs to know where the stream and the
//! decoder disagreed. None of these is worth retrying: the same bytes fail the same way.

use super::message::{Oid, RelationId};

/// A pgoutput payload, or a row in it, could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The payload had no bytes at all.
    #[error("empty pgoutput message: expected at least a tag byte")]
    Empty,

    /// The tag byte names no pgoutput message.
    #[error("unknown pgoutput message tag {tag:#04x}")]
    UnknownTag {
        /// The tag byte.
        tag: u8,
    },

    /// The tag names a message of a later protocol version (streaming of in-progress
    /// transactions or two-phase commit), which this decoder does not read.
    #[error(
        "pgoutput message {tag:?} belongs to protocol version 2 or later; start replication with proto_version '1' and without 'streaming'/'two_phase'"
    )]
    Unsupported {
        /// The tag, as a character.
        tag: char,
    },

    /// The payload ended before a field was complete.
    #[error(
        "truncated {message} message: {field} at byte {offset} needs {needed} bytes, {available} left"
    )]
    Truncated {
        /// The message being decoded.
        message: &'static str,
        /// The field being read.
        field: &'static str,
        /// Where the field starts in the payload.
        offset: usize,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the payload.
        available: usize,
    },

    /// The payload went on after the message was complete.
    #[error("{message} message has {count} unexpected bytes after its last field")]
    TrailingBytes {
        /// The message being decoded.
        message: &'static str,
        /// How many bytes were left over.
        count: usize,
    },

    /// A string field had no NUL terminator before the end of the payload.
    #[error("{field} in {message} message is not NUL-terminated")]
    UnterminatedString {
        /// The message being decoded.
        message: &'static str,
        /// The field being read.
        field: &'static str,
    },

    /// A string field was not UTF-8 (the replication connection asks for UTF8).
    #[error("{field} in {message} message is not valid UTF-8")]
    InvalidUtf8 {
        /// The message being decoded.
        message: &'static str,
        /// The field being read.
        field: &'static str,
    },

    /// A count or length field was negative.
    #[error("{field} in {message} message is negative ({value})")]
    NegativeLength {
        /// The message being decoded.
        message: &'static str,
        /// The field being read.
        field: &'static str,
        /// The value on the wire.
        value: i64,
    },

    /// A column value had a kind byte other than `n`, `u`, `t` or `b`.
    #[error("unknown tuple value kind {kind:#04x} in {message} message")]
    UnknownValueKind {
        /// The message being decoded.
        message: &'static str,
        /// The kind byte.
        kind: u8,
    },

    /// A Relation message had a replica identity byte other than `d`, `n`, `f` or `i`.
    #[error("unknown replica identity {value:#04x} in Relation message")]
    UnknownReplicaIdentity {
        /// The byte on the wire.
        value: u8,
    },

    /// An Update or Delete message had a tuple marker other than the ones allowed there.
    #[error("unexpected tuple marker {marker:#04x} in {message} message, expected {expected}")]
    UnexpectedTupleMarker {
        /// The message being decoded.
        message: &'static str,
        /// The marker byte.
        marker: u8,
        /// What the decoder expected.
        expected: &'static str,
    },

    /// A row refers to a table whose Relation message the decoder has not seen.
    #[error(
        "relation {relation_id} is unknown: the stream must send its Relation message before rows of it (was the decoder created mid-stream?)"
    )]
    UnknownRelation {
        /// The table's id.
        relation_id: RelationId,
    },

    /// A row has a different number of values than its table has columns.
    #[error(
        "row of {table} has {actual} values, but its Relation message lists {expected} columns"
    )]
    ColumnCountMismatch {
        /// `schema.table`.
        table: String,
        /// Columns in the Relation message.
        expected: usize,
        /// Values in the row.
        actual: usize,
    },

    /// A text value could not be read as its column's type.
    #[error(
        "column {column} (type oid {type_oid}) has value {value:?} that is not a valid {expected}"
    )]
    InvalidValue {
        /// The column's name.
        column: String,
        /// The column's type.
        type_oid: Oid,
        /// The value, shortened to at most 64 characters.
        value: String,
        /// What the type needs.
        expected: &'static str,
    },

    /// A value came in binary format, which the JSON conversion does not read.
    #[error(
        "column {column} (type oid {type_oid}) came in binary format; start replication without the 'binary' option"
    )]
    BinaryValue {
        /// The column's name.
        column: String,
        /// The column's type.
        type_oid: Oid,
    },
}
