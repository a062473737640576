//! Why replication could not start or stopped.
//!
//! Slot problems get their own variants because a CDC process must react to them differently
//! from a network blip: a missing, invalidated or recreated slot means changes may have been
//! lost, so resuming silently would break the no-loss guarantee; a dropped connection is just
//! retried. [`ReplicationError::is_retryable`] says which is which.

use pgwire_replication::PgWireError;
use pgwire_replication::protocol::ErrorFields;

use crate::lsn::Lsn;

/// A replication connection or stream failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicationError {
    /// The server could not be reached.
    #[error("cannot connect to PostgreSQL at {address}: {source}")]
    Connect {
        /// `host:port`.
        address: String,
        /// The cause.
        source: std::io::Error,
    },

    /// Reading or writing the connection failed (it was closed, reset or timed out).
    #[error("replication connection failed: {source}")]
    Io {
        /// The cause.
        source: std::io::Error,
    },

    /// TLS negotiation failed.
    #[error("TLS to PostgreSQL failed: {message}")]
    Tls {
        /// The cause.
        message: String,
    },

    /// The server refused the credentials, or asked for a method this client lacks.
    #[error(
        "PostgreSQL authentication failed: {message}; check the user, password and pg_hba.conf (the user needs the REPLICATION attribute)"
    )]
    Auth {
        /// The server's or the client's reason.
        message: String,
    },

    /// The replication slot does not exist.
    #[error(
        "replication slot {slot:?} does not exist; it was dropped or never created, and changes since the last confirmed position may be lost: create it again and re-snapshot"
    )]
    SlotMissing {
        /// The slot's name.
        slot: String,
    },

    /// The server invalidated the slot (`wal_status = lost`): WAL it needed was removed, so
    /// changes were lost.
    #[error(
        "replication slot {slot:?} is invalidated ({detail}); changes were lost: drop it, create it again and re-snapshot"
    )]
    SlotInvalidated {
        /// The slot's name.
        slot: String,
        /// What the server reported.
        detail: String,
    },

    /// Another session is streaming from the slot.
    #[error(
        "replication slot {slot:?} is in use by another session (pid {pid:?}); only one reader per slot can run"
    )]
    SlotInUse {
        /// The slot's name.
        slot: String,
        /// The other session's process id, when known.
        pid: Option<i32>,
    },

    /// The slot was created with another output plugin.
    #[error("replication slot {slot:?} uses output plugin {plugin:?}, not pgoutput")]
    SlotWrongPlugin {
        /// The slot's name.
        slot: String,
        /// Its plugin.
        plugin: String,
    },

    /// The slot belongs to another database than the connection's.
    #[error("replication slot {slot:?} belongs to database {database:?}; connect to that database")]
    SlotInOtherDatabase {
        /// The slot's name.
        slot: String,
        /// The slot's database.
        database: String,
    },

    /// The slot has confirmed a later position than the caller resumes from: the slot was
    /// recreated or advanced by someone else, and the changes in between are gone.
    #[error(
        "replication slot {slot:?} has confirmed {confirmed_flush}, past the position {resume_from} being resumed from; the slot was recreated or advanced elsewhere and changes in between are lost"
    )]
    SlotAhead {
        /// The slot's name.
        slot: String,
        /// The slot's `confirmed_flush_lsn`.
        confirmed_flush: Lsn,
        /// The caller's position.
        resume_from: Lsn,
    },

    /// A publication named in the start options does not exist.
    #[error("publication missing: {message}; create it with CREATE PUBLICATION")]
    PublicationMissing {
        /// The server's message.
        message: String,
    },

    /// A slot or publication name cannot be used.
    #[error("invalid {kind} name {name:?}: {reason}")]
    InvalidName {
        /// `slot` or `publication`.
        kind: &'static str,
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },

    /// The server reported an error not covered above.
    #[error("PostgreSQL error {code}: {message}{}", detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Server {
        /// The SQLSTATE code.
        code: String,
        /// The primary message.
        message: String,
        /// The detail, if any.
        detail: Option<String>,
    },

    /// The server ended the replication stream without being asked to.
    #[error("the server ended the replication stream; reconnect to continue")]
    StreamEnded,

    /// The server sent something this client does not understand.
    #[error("replication protocol error: {message}")]
    Protocol {
        /// What was wrong.
        message: String,
    },

    /// A message was larger than the configured limit.
    #[error(
        "replication message of {size} bytes exceeds the limit of {limit} bytes; raise max_message_size"
    )]
    MessageTooLarge {
        /// The message's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

/// The result of replication operations.
pub type Result<T, E = ReplicationError> = std::result::Result<T, E>;

impl ReplicationError {
    /// Whether trying again later (a new connection) can succeed without anyone changing
    /// anything: network failures, server restarts and shutdowns, a slot still held by a
    /// previous reader, resource limits. Slot loss, bad credentials and bad names are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            ReplicationError::Connect { .. }
            | ReplicationError::Io { .. }
            | ReplicationError::SlotInUse { .. }
            | ReplicationError::StreamEnded => true,
            // 08: connection exception, 53: insufficient resources (too many connections),
            // 57P01-57P03: admin shutdown, crash shutdown, cannot connect now (starting up),
            // 40: transaction rollback (serialization, deadlock).
            ReplicationError::Server { code, .. } => {
                code.starts_with("08")
                    || code.starts_with("53")
                    || code.starts_with("40")
                    || matches!(code.as_str(), "57P01" | "57P02" | "57P03")
            }
            _ => false,
        }
    }

    /// Maps a server ErrorResponse, recognising the slot and publication failures by their
    /// SQLSTATE (the message text is translated by the server's `lc_messages`, the code is
    /// not), then by the slot-specific wording where one code covers several cases.
    pub(crate) fn from_server(fields: ErrorFields, slot: Option<&str>) -> Self {
        let code = fields.code.unwrap_or_default();
        let message = fields.message.unwrap_or_default();
        let detail = fields.detail;
        let slot_name = || slot.unwrap_or_default().to_owned();
        let about_slot = message.contains("replication slot");
        match code.as_str() {
            "42704" if message.contains("publication") => {
                ReplicationError::PublicationMissing { message }
            }
            "42704" if about_slot => ReplicationError::SlotMissing { slot: slot_name() },
            "55006" => ReplicationError::SlotInUse {
                slot: slot_name(),
                pid: message
                    .rsplit(' ')
                    .next()
                    .and_then(|pid| pid.trim_end_matches('.').parse().ok()),
            },
            "55000"
                if detail.as_deref().is_some_and(|d| d.contains("invalidated"))
                    || message.contains("invalidated") =>
            {
                ReplicationError::SlotInvalidated {
                    slot: slot_name(),
                    detail: detail.unwrap_or(message),
                }
            }
            code if code.starts_with("28") => ReplicationError::Auth { message },
            _ => ReplicationError::Server {
                code,
                message,
                detail,
            },
        }
    }
}

impl From<PgWireError> for ReplicationError {
    fn from(error: PgWireError) -> Self {
        match error {
            PgWireError::Io(source) => ReplicationError::Io {
                source: std::io::Error::new(source.kind(), source.to_string()),
            },
            PgWireError::Tls(message) => ReplicationError::Tls { message },
            PgWireError::Auth(message) => ReplicationError::Auth { message },
            PgWireError::MessageTooLarge {
                payload_bytes,
                limit_bytes,
            } => ReplicationError::MessageTooLarge {
                size: payload_bytes,
                limit: limit_bytes,
            },
            other => ReplicationError::Protocol {
                message: other.to_string(),
            },
        }
    }
}

impl From<std::io::Error> for ReplicationError {
    fn from(source: std::io::Error) -> Self {
        ReplicationError::Io { source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(code: &str, message: &str, detail: Option<&str>) -> ErrorFields {
        ErrorFields {
            code: Some(code.into()),
            message: Some(message.into()),
            detail: detail.map(Into::into),
            ..ErrorFields::default()
        }
    }

    #[test]
    fn server_slot_errors_map_to_their_variants() {
        let missing = server_error("42704", "replication slot \"s\" does not exist", None);
        assert!(matches!(
            ReplicationError::from_server(missing, Some("s")),
            ReplicationError::SlotMissing { slot } if slot == "s"
        ));
        let in_use = server_error(
            "55006",
            "replication slot \"s\" is active for PID 4242",
            None,
        );
        assert!(matches!(
            ReplicationError::from_server(in_use, Some("s")),
            ReplicationError::SlotInUse {
                pid: Some(4242),
                ..
            }
        ));
        let lost = server_error(
            "55000",
            "cannot read from logical replication slot \"s\"",
            Some("This slot has been invalidated because it exceeded the maximum reserved size."),
        );
        assert!(matches!(
            ReplicationError::from_server(lost, Some("s")),
            ReplicationError::SlotInvalidated { .. }
        ));
        let publication = server_error("42704", "publication \"p\" does not exist", None);
        assert!(matches!(
            ReplicationError::from_server(publication, Some("s")),
            ReplicationError::PublicationMissing { .. }
        ));
    }

    #[test]
    fn only_transient_server_errors_are_retryable() {
        let shutdown = ReplicationError::from_server(
            server_error("57P01", "terminating connection", None),
            None,
        );
        assert!(shutdown.is_retryable());
        let too_many =
            ReplicationError::from_server(server_error("53300", "too many clients", None), None);
        assert!(too_many.is_retryable());
        let syntax =
            ReplicationError::from_server(server_error("42601", "syntax error", None), None);
        assert!(!syntax.is_retryable());
        let auth = ReplicationError::from_server(
            server_error("28P01", "password authentication failed", None),
            None,
        );
        assert!(matches!(auth, ReplicationError::Auth { .. }) && !auth.is_retryable());
    }
}
