//! Why a capture stopped or could not start.
//!
//! Slot trouble is loud: a missing, invalidated or recreated slot means changes may be gone,
//! so the capture stops with an error that names the operator command to start over from a
//! new snapshot, instead of carrying on as if nothing happened. Everything the next attempt
//! can fix by itself (a dropped connection, a server restart, a slot still held by a
//! previous process) is retryable and retried by the relay.

use crate::lsn::Lsn;
use crate::pgoutput::DecodeError;
use crate::replication::ReplicationError;

/// The command an operator runs to start a slot over from a new snapshot.
pub fn resnapshot_command(slot: &str) -> String {
    format!("tributary cdc --resnapshot --slot {slot}")
}

/// A capture failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CdcError {
    /// The slot the capture was streaming from is gone.
    #[error(
        "replication slot {slot:?} is gone (dropped, or the database was restored or failed over); changes after {confirmed} may be lost. The capture will not continue silently: run `{}` to drop its record, create the slot again and publish every row again as a snapshot",
        resnapshot_command(slot)
    )]
    SlotMissing {
        /// The slot.
        slot: String,
        /// The last position the capture knows was confirmed.
        confirmed: Lsn,
    },

    /// The server invalidated the slot: WAL it needed was removed.
    #[error(
        "replication slot {slot:?} is invalidated ({detail}); changes were lost. Run `{}` to create it again and publish every row again as a snapshot; raise max_slot_wal_keep_size or keep the capture running to avoid it",
        resnapshot_command(slot)
    )]
    SlotInvalidated {
        /// The slot.
        slot: String,
        /// What the server said.
        detail: String,
    },

    /// The slot exists but was created after the capture's last confirmed position: someone
    /// dropped and recreated it (or advanced it), and the changes in between are gone.
    #[error(
        "replication slot {slot:?} was recreated or advanced elsewhere: it starts at {slot_confirmed}, but this capture never confirmed past {recorded}; changes in between are lost. Run `{}` to publish every row again as a snapshot",
        resnapshot_command(slot)
    )]
    SlotRecreated {
        /// The slot.
        slot: String,
        /// The slot's `confirmed_flush_lsn`.
        slot_confirmed: Lsn,
        /// The highest position the capture recorded before confirming.
        recorded: Lsn,
    },

    /// The slot exists but this capture has no record of it, and an initial snapshot is
    /// configured: the snapshot the slot exported at creation is gone, so a consistent
    /// snapshot cannot be taken from it.
    #[error(
        "replication slot {slot:?} exists but was not created by this capture, and a snapshot is configured, which needs the slot's own exported snapshot; run `{}` to drop it and start over, or use another slot name",
        resnapshot_command(slot)
    )]
    SlotNotManaged {
        /// The slot.
        slot: String,
    },

    /// The capture's record belongs to another PostgreSQL cluster (a restored copy or a
    /// failover target): positions do not carry over.
    #[error(
        "the record of slot {slot:?} was made on PostgreSQL system {recorded}, but this server is {actual}; positions do not carry over between clusters. Run `{}` to start over",
        resnapshot_command(slot)
    )]
    OtherSystem {
        /// The slot.
        slot: String,
        /// The recorded system identifier.
        recorded: String,
        /// This server's system identifier.
        actual: String,
    },

    /// Another capture holds the slot's lease.
    #[error("another capture holds the lease of slot {slot:?}; stop it first")]
    LeaseHeld {
        /// The slot.
        slot: String,
    },

    /// The replication connection, stream or a control query failed.
    #[error(transparent)]
    Replication(#[from] ReplicationError),

    /// A pgoutput message could not be decoded (the same bytes fail again: not retried).
    #[error("cannot decode the replication stream: {0}")]
    Decode(#[from] DecodeError),

    /// The configuration cannot work.
    #[error("invalid capture configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },

    /// The server answered something this capture cannot read.
    #[error("unexpected answer from PostgreSQL: {reason}")]
    Protocol {
        /// What was unexpected.
        reason: String,
    },

    /// The publish path (the relay) stopped with an error retrying cannot fix.
    #[error("publishing captured changes stopped: {0}")]
    Publish(tributary_core::Error),

    /// A benchmark helper could not run its baseline.
    #[error("benchmark failed: {reason}")]
    Bench {
        /// What failed.
        reason: String,
    },
}

/// The result of capture operations.
pub type Result<T, E = CdcError> = std::result::Result<T, E>;

impl CdcError {
    /// Whether trying again (new connections) can succeed without anyone changing anything.
    /// Slot loss, bad configuration and undecodable data are not; the capture stops on them.
    pub fn is_retryable(&self) -> bool {
        match self {
            CdcError::Replication(error) => error.is_retryable(),
            CdcError::LeaseHeld { .. } => true,
            _ => false,
        }
    }

    pub(crate) fn protocol(reason: impl Into<String>) -> Self {
        CdcError::Protocol {
            reason: reason.into(),
        }
    }

    /// The stream's own slot errors, with the capture's wording and operator command.
    pub(crate) fn from_stream(error: ReplicationError, slot: &str, confirmed: Lsn) -> Self {
        match error {
            ReplicationError::SlotMissing { .. } => CdcError::SlotMissing {
                slot: slot.to_owned(),
                confirmed,
            },
            ReplicationError::SlotInvalidated { detail, .. } => CdcError::SlotInvalidated {
                slot: slot.to_owned(),
                detail,
            },
            ReplicationError::SlotAhead {
                confirmed_flush,
                resume_from,
                ..
            } => CdcError::SlotRecreated {
                slot: slot.to_owned(),
                slot_confirmed: confirmed_flush,
                recorded: resume_from,
            },
            other => CdcError::Replication(other),
        }
    }

    /// This error as the core error the relay understands: retryable ones as
    /// [`Unavailable`](tributary_core::Error::Unavailable), the rest as storage problems.
    pub(crate) fn to_core(&self) -> tributary_core::Error {
        if self.is_retryable() {
            tributary_core::Error::unavailable("PostgreSQL change capture", self.to_string())
        } else {
            tributary_core::Error::storage_msg(self.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_errors_name_the_resnapshot_command_and_are_not_retried() {
        let errors = [
            CdcError::SlotMissing {
                slot: "orders".into(),
                confirmed: Lsn::new(16),
            },
            CdcError::SlotRecreated {
                slot: "orders".into(),
                slot_confirmed: Lsn::new(32),
                recorded: Lsn::new(16),
            },
            CdcError::SlotInvalidated {
                slot: "orders".into(),
                detail: "wal_status is lost".into(),
            },
        ];
        for error in errors {
            assert!(!error.is_retryable());
            assert!(
                error
                    .to_string()
                    .contains("tributary cdc --resnapshot --slot orders"),
                "{error}"
            );
        }
    }
}
