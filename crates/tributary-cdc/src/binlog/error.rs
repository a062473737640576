//! Errors of the binlog capture.

use crate::binlog::position::BinlogPosition;

/// Why the binlog capture failed. Errors that name `tributary cdc --resnapshot` stop the
/// capture for good: they mean the stored position cannot be trusted or reached, and only the
/// operator can decide to start over.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BinlogError {
    /// The server or the network failed; worth retrying.
    #[error("MySQL/MariaDB is unavailable: {reason}")]
    Unavailable { reason: String },
    /// The server refused a statement the capture needs (permissions, syntax of an old
    /// version).
    #[error("MySQL/MariaDB refused `{statement}`: {reason}")]
    Server { statement: String, reason: String },
    /// The configuration cannot work.
    #[error("invalid binlog capture configuration: {reason}")]
    Config { reason: String },
    /// The server is not set up for row-based capture.
    #[error(
        "the server's binlog cannot be captured: {reason}; fix the server setting (for example \
         in a my.cnf file: log_bin, binlog_format=ROW, binlog_row_image=FULL, \
         binlog_row_metadata=FULL) and restart it; changes written meanwhile in another format \
         were not captured, so run `tributary cdc --resnapshot --slot {capture}` afterwards"
    )]
    ServerSettings { capture: String, reason: String },
    /// The binlog files holding the stored position were purged.
    #[error(
        "the binlog of capture {capture} was purged past its stored position {position}: \
         changes after it are gone from the server ({detail}); run `tributary cdc \
         --resnapshot --slot {capture}` to start over from a new snapshot"
    )]
    BinlogPurged {
        capture: String,
        position: BinlogPosition,
        detail: String,
    },
    /// The server's GTID history does not continue the stored position.
    #[error(
        "the GTID history of the server no longer continues capture {capture}'s position \
         {position}: {detail}; the server was replaced, reset, or its gtid_domain_id changed. \
         Run `tributary cdc --resnapshot --slot {capture}` to start over from a new snapshot"
    )]
    GtidDomainChanged {
        capture: String,
        position: BinlogPosition,
        detail: String,
    },
    /// A change the capture cannot decode or follow (a statement-logged change of a captured
    /// table, a table whose key columns vanished, an unknown column type).
    #[error(
        "capture {capture} cannot follow the binlog at {position}: {reason}; nothing after it \
         was published. Fix the cause, then run `tributary cdc --resnapshot --slot {capture}` \
         to start over from a new snapshot"
    )]
    CannotFollow {
        capture: String,
        position: BinlogPosition,
        reason: String,
    },
    /// Bytes that are not a valid binlog event.
    #[error("malformed binlog event: {reason}")]
    Decode { reason: String },
    /// Another capture of the same name holds the lease.
    /// The publish path (the relay) stopped with an error retrying cannot fix.
    #[error("publishing captured changes stopped: {0}")]
    Publish(tributary_core::Error),
    #[error("capture {capture} is running elsewhere (it holds the lease); stop it first")]
    LeaseHeld { capture: String },
    /// The capture's state row is not what this process wrote (someone edited or deleted it).
    #[error("the state of capture {capture} changed under it: {reason}")]
    State { capture: String, reason: String },
}

/// `Result` with [`BinlogError`].
pub type Result<T, E = BinlogError> = std::result::Result<T, E>;

impl BinlogError {
    pub(crate) fn decode(reason: impl Into<String>) -> Self {
        BinlogError::Decode {
            reason: reason.into(),
        }
    }

    /// Whether retrying can help (a lost connection); the capture stops on every other error.
    pub fn is_retryable(&self) -> bool {
        matches!(self, BinlogError::Unavailable { .. })
    }

    /// This error as the core error the relay understands.
    pub(crate) fn to_core(&self) -> tributary_core::Error {
        if self.is_retryable() {
            tributary_core::Error::unavailable("MySQL/MariaDB binlog capture", self.to_string())
        } else {
            tributary_core::Error::storage_msg(self.to_string())
        }
    }

    /// A driver error while running `statement`: connection trouble is retryable, a refusal
    /// by the server is not.
    pub(crate) fn driver(statement: &str, error: mysql_async::Error) -> Self {
        match error {
            mysql_async::Error::Server(server) => BinlogError::Server {
                statement: statement.chars().take(200).collect(),
                reason: format!("{} (error {})", server.message, server.code),
            },
            other => BinlogError::Unavailable {
                reason: format!("{statement}: {other}"),
            },
        }
    }
}
