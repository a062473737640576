//! The typed form of pgoutput messages (protocol version 1).
//!
//! Field names follow the PostgreSQL documentation ("Logical Replication Message Formats") so
//! that a reader can hold the two side by side. Values are owned: a decoded message outlives
//! the network buffer it came from and can be sent to another task.

use std::fmt;

use crate::lsn::Lsn;

/// A transaction id as PostgreSQL sends it in pgoutput (32 bits, wraps around).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Xid(pub u32);

impl fmt::Display for Xid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A PostgreSQL object id; here always the OID of a data type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Oid(pub u32);

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The OID of a table as pgoutput names it in row messages. It is only meaningful after the
/// stream has sent a [`Relation`] message with the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelationId(pub u32);

impl fmt::Display for RelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A server timestamp: microseconds since 2000-01-01 00:00:00 UTC, PostgreSQL's epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PgTimestamp(pub i64);

impl PgTimestamp {
    /// Microseconds between 1970-01-01 and 2000-01-01.
    const UNIX_OFFSET_MICROS: i64 = 946_684_800_000_000;

    /// Microseconds since the Unix epoch, or `None` if that does not fit in an `i64`.
    pub fn unix_micros(self) -> Option<i64> {
        self.0.checked_add(Self::UNIX_OFFSET_MICROS)
    }

    /// The timestamp as a UTC date and time, or `None` if it is out of chrono's range.
    pub fn to_utc(self) -> Option<chrono::DateTime<chrono::Utc>> {
        chrono::DateTime::from_timestamp_micros(self.unix_micros()?)
    }
}

/// One decoded pgoutput message: the payload of one XLogData message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PgOutputMessage {
    /// `B`: a transaction starts; its changes follow, then [`Commit`].
    Begin(Begin),
    /// `C`: the transaction committed.
    Commit(Commit),
    /// `O`: the transaction came from another node (replication origin).
    Origin(Origin),
    /// `R`: the shape of a table, sent before the first change to it in a session and again
    /// after its definition changes.
    Relation(Relation),
    /// `Y`: the name of a data type that is not built in.
    Type(TypeInfo),
    /// `I`: a row was inserted.
    Insert(Insert),
    /// `U`: a row was updated.
    Update(Update),
    /// `D`: a row was deleted.
    Delete(Delete),
    /// `T`: one or more tables were truncated.
    Truncate(Truncate),
    /// `M`: a message written with `pg_logical_emit_message`.
    Message(LogicalMessage),
}

impl PgOutputMessage {
    /// The message's tag byte on the wire.
    pub fn tag(&self) -> u8 {
        match self {
            PgOutputMessage::Begin(_) => b'B',
            PgOutputMessage::Commit(_) => b'C',
            PgOutputMessage::Origin(_) => b'O',
            PgOutputMessage::Relation(_) => b'R',
            PgOutputMessage::Type(_) => b'Y',
            PgOutputMessage::Insert(_) => b'I',
            PgOutputMessage::Update(_) => b'U',
            PgOutputMessage::Delete(_) => b'D',
            PgOutputMessage::Truncate(_) => b'T',
            PgOutputMessage::Message(_) => b'M',
        }
    }
}

/// `B`: the start of a committed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// The LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    /// When the transaction committed.
    pub commit_time: PgTimestamp,
    /// The transaction's id.
    pub xid: Xid,
}

/// `C`: the end of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// Flags; currently unused by PostgreSQL (always 0).
    pub flags: u8,
    /// The LSN of the commit record (equals the `final_lsn` of its [`Begin`]).
    pub commit_lsn: Lsn,
    /// The LSN just after the commit record: the position to confirm once everything in this
    /// transaction has been handled.
    pub end_lsn: Lsn,
    /// When the transaction committed.
    pub commit_time: PgTimestamp,
}

/// `O`: the replication origin of the current transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The commit LSN on the origin server.
    pub commit_lsn: Lsn,
    /// The origin's name.
    pub name: String,
}

/// Which old values a table sends with updates and deletes (`ALTER TABLE … REPLICA
/// IDENTITY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// `d`: the primary key columns (nothing if there is no primary key).
    Default,
    /// `n`: nothing; deletes and updates cannot be published.
    Nothing,
    /// `f`: all columns.
    Full,
    /// `i`: the columns of a chosen unique index.
    Index,
}

impl ReplicaIdentity {
    /// The setting for the byte PostgreSQL stores in `pg_class.relreplident`.
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            b'd' => Some(ReplicaIdentity::Default),
            b'n' => Some(ReplicaIdentity::Nothing),
            b'f' => Some(ReplicaIdentity::Full),
            b'i' => Some(ReplicaIdentity::Index),
            _ => None,
        }
    }
}

/// `R`: the shape of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The table's OID; row messages refer to the table by it.
    pub id: RelationId,
    /// The schema; PostgreSQL sends an empty string for `pg_catalog`.
    pub namespace: String,
    /// The table's name.
    pub name: String,
    /// Which old values updates and deletes carry.
    pub replica_identity: ReplicaIdentity,
    /// The published columns, in the order row tuples list their values.
    pub columns: Vec<RelationColumn>,
}

impl Relation {
    /// The position of the column with this name.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|column| column.name == name)
    }
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    /// Whether the column is part of the replica identity (the key).
    pub is_key: bool,
    /// The column's name.
    pub name: String,
    /// The OID of the column's data type.
    pub type_oid: Oid,
    /// The type modifier (`atttypmod`), such as the length of a `varchar(n)`; -1 if none.
    pub type_modifier: i32,
}

/// `Y`: the name of a data type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    /// The type's OID.
    pub oid: Oid,
    /// The type's schema; empty for `pg_catalog`.
    pub namespace: String,
    /// The type's name.
    pub name: String,
}

/// `I`: an inserted row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    /// The table.
    pub relation_id: RelationId,
    /// The new row.
    pub new: TupleData,
}

/// `U`: an updated row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// The table.
    pub relation_id: RelationId,
    /// The old key (when the key changed) or the whole old row (replica identity FULL);
    /// `None` when the key did not change and the identity is not FULL.
    pub old: Option<OldTuple>,
    /// The new row. Columns whose TOASTed value did not change are
    /// [`TupleValue::UnchangedToast`].
    pub new: TupleData,
}

/// `D`: a deleted row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// The table.
    pub relation_id: RelationId,
    /// The key or the whole row of the deleted row.
    pub old: OldTuple,
}

/// The old values sent with an update or a delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple {
    /// `K`: the replica identity columns; the other columns are NULL.
    Key(TupleData),
    /// `O`: the whole old row (replica identity FULL).
    Full(TupleData),
}

impl OldTuple {
    /// The values, whichever kind they are.
    pub fn tuple(&self) -> &TupleData {
        match self {
            OldTuple::Key(tuple) | OldTuple::Full(tuple) => tuple,
        }
    }
}

/// `T`: truncated tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    /// `TRUNCATE … CASCADE` was used.
    pub cascade: bool,
    /// `TRUNCATE … RESTART IDENTITY` was used.
    pub restart_identity: bool,
    /// The truncated tables.
    pub relation_ids: Vec<RelationId>,
}

/// `M`: a logical decoding message from `pg_logical_emit_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalMessage {
    /// Written inside a transaction and delivered with it (between its Begin and Commit);
    /// otherwise delivered at once, outside any transaction.
    pub transactional: bool,
    /// The LSN of the message.
    pub lsn: Lsn,
    /// The prefix the writer chose, so readers can pick their messages.
    pub prefix: String,
    /// The content, as written (any bytes).
    pub content: Vec<u8>,
}

/// The values of one row, in the column order of its [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TupleData {
    /// One value per published column.
    pub values: Vec<TupleValue>,
}

/// One column value in a [`TupleData`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TupleValue {
    /// `n`: SQL NULL.
    Null,
    /// `u`: a TOASTed value that the update did not change; the server does not send it again.
    UnchangedToast,
    /// `t`: the value in PostgreSQL's text output format.
    Text(String),
    /// `b`: the value in the type's binary format (only with the `binary` option).
    Binary(Vec<u8>),
}
