//! The PostgreSQL streaming replication transport for logical decoding with `pgoutput`.
//!
//! [`ReplicationConnection`] connects with `replication=database`, creates, inspects and drops
//! slots, and [starts](ReplicationConnection::start) a [`ReplicationStream`] that yields each
//! XLogData payload with its WAL positions. The stream confirms a position to the slot only
//! when the caller calls [`ReplicationStream::confirm`], which a CDC reader does after the
//! broker acknowledged everything before it: at-least-once delivery, never loss.

mod config;
mod connection;
mod error;
mod slot;
mod stream;

pub use config::{PgReplicationConfig, TlsMode};
pub(crate) use connection::QueryResult;
pub use connection::{ReplicationConnection, StartReplication};
pub use error::{ReplicationError, Result};
pub use slot::{
    CreatedSlot, PublicationName, SlotInfo, SlotName, SnapshotAction, SystemIdentity, WalStatus,
};
pub(crate) use stream::Confirmer;
pub use stream::{KeepAlive, ReplicationMessage, ReplicationStream, XLogData};
