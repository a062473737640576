//! The pgoutput decoder: bytes of PostgreSQL's logical replication messages to typed values.
//!
//! Written here rather than taken from a crate because the bytes come from outside and the
//! decoder must never panic on them: every length is checked by one bounds-checked reader,
//! and a fuzz target (`fuzz/`) and property tests hold it to that. Only committed
//! transactions reach pgoutput (without `streaming`), so everything between a Begin and its
//! Commit is safe to publish once the Commit arrives.
//!
//! - [`decode_message`] decodes one payload, without state.
//! - [`PgOutputDecoder`] does the same for a whole session and keeps the relation cache, so
//!   [`PgOutputDecoder::change`] can give rows with named, typed columns ([`Row`]), and
//!   [`Row::to_json`] turns them into JSON by column type.
//! - [`encode_message`] is the inverse, for tests that need pgoutput bytes without a server.

mod decode;
mod decoder;
mod encode;
mod error;
mod json;
mod message;
mod reader;

pub use decode::decode_message;
pub use decoder::{OldRow, PgOutputDecoder, Row, RowChange};
pub use encode::encode_message;
pub use error::DecodeError;
pub use json::{type_oid, value_to_json};
pub(crate) use json::{write_json_string, write_value_json};
pub use message::{
    Begin, Commit, Delete, Insert, LogicalMessage, Oid, OldTuple, Origin, PgOutputMessage,
    PgTimestamp, Relation, RelationColumn, RelationId, ReplicaIdentity, Truncate, TupleData,
    TupleValue, TypeInfo, Update, Xid,
};

#[cfg(test)]
mod tests;
