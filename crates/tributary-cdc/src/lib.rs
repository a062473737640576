#![doc = include_str!("../README.md")]

mod lsn;
pub mod pgoutput;
mod replication;

pub use lsn::{Lsn, ParseLsnError};
pub use pgoutput::{DecodeError, PgOutputDecoder, PgOutputMessage, Row, RowChange, decode_message};
pub use replication::{
    CreatedSlot, KeepAlive, PgReplicationConfig, PublicationName, ReplicationConnection,
    ReplicationError, ReplicationMessage, ReplicationStream, Result, SlotInfo, SlotName,
    SnapshotAction, StartReplication, SystemIdentity, TlsMode, WalStatus, XLogData,
};
