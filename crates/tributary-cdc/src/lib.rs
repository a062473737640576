#![doc = include_str!("../README.md")]

pub mod binlog;
pub mod capture;
mod hash;
mod lsn;
pub mod metrics;
pub mod pgoutput;
mod replication;
mod sql;

pub use binlog::{
    BinlogConfig, BinlogError, BinlogLag, BinlogPosition, BinlogSource, GtidList, MariaGtid,
    binlog_lag, capture_binlog, resnapshot_binlog,
};
pub use capture::{
    CdcConfig, CdcError, CdcSource, MessageCapture, MessageRoute, OutboxCapture, SlotLag,
    TableCapture, TableConfig, capture, ensure_publication, resnapshot, retire_capture, slot_lag,
    slot_lags,
};
pub use lsn::{Lsn, ParseLsnError};
pub use pgoutput::{DecodeError, PgOutputDecoder, PgOutputMessage, Row, RowChange, decode_message};
pub use replication::{
    CreatedSlot, KeepAlive, PgReplicationConfig, PublicationName, ReplicationConnection,
    ReplicationError, ReplicationMessage, ReplicationStream, Result, SlotInfo, SlotName,
    SnapshotAction, StartReplication, SystemIdentity, TlsMode, WalStatus, XLogData,
};
