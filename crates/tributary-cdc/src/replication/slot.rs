//! Replication slots and publications as values.
//!
//! Slot and publication names end up inside replication commands, which take no bind
//! parameters, so they are validated (slots) or quoted (publications) when the value is made,
//! not when the command is written.

use std::fmt;

use super::error::{ReplicationError, Result};
use crate::lsn::Lsn;

/// A replication slot name: 1 to 63 lowercase ASCII letters, digits and underscores, the
/// same rule PostgreSQL applies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SlotName(String);

impl SlotName {
    /// Checks the name.
    ///
    /// # Errors
    ///
    /// [`ReplicationError::InvalidName`] if PostgreSQL would reject it.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let invalid = |reason| ReplicationError::InvalidName {
            kind: "slot",
            name: name.clone(),
            reason,
        };
        if name.is_empty() {
            return Err(invalid("it is empty"));
        }
        if name.len() > 63 {
            return Err(invalid("it is longer than 63 bytes"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(invalid(
                "only lowercase letters, digits and underscores are allowed",
            ));
        }
        Ok(SlotName(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A name known to be valid (defaults in this crate).
    pub(crate) fn from_static(name: &'static str) -> Self {
        debug_assert!(Self::new(name).is_ok());
        SlotName(name.to_owned())
    }
}

impl fmt::Display for SlotName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A publication name (any identifier PostgreSQL accepts; it is quoted when sent).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PublicationName(String);

impl PublicationName {
    /// Checks the name.
    ///
    /// # Errors
    ///
    /// [`ReplicationError::InvalidName`] if it is empty, too long or contains NUL.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("it is empty")
        } else if name.len() > 63 {
            Some("it is longer than 63 bytes")
        } else if name.contains('\0') {
            Some("it contains NUL")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(ReplicationError::InvalidName {
                kind: "publication",
                name,
                reason,
            }),
            None => Ok(PublicationName(name)),
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A name known to be valid (defaults in this crate).
    pub(crate) fn from_static(name: &'static str) -> Self {
        debug_assert!(Self::new(name).is_ok());
        PublicationName(name.to_owned())
    }

    /// The name as a double-quoted identifier, as `publication_names` parses it.
    pub(crate) fn quoted(&self) -> String {
        format!("\"{}\"", self.0.replace('"', "\"\""))
    }
}

impl fmt::Display for PublicationName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `pg_replication_slots.wal_status`: whether the WAL a slot needs is still there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalStatus {
    /// Within `max_wal_size`.
    Reserved,
    /// Beyond `max_wal_size` but kept (by `wal_keep_size` or the slot).
    Extended,
    /// Will be removed at the next checkpoint; the slot is about to be lost.
    Unreserved,
    /// Removed: the slot is invalidated and can no longer be used.
    Lost,
    /// A value this client does not know.
    Other(String),
}

impl WalStatus {
    pub(crate) fn parse(text: &str) -> Self {
        match text {
            "reserved" => WalStatus::Reserved,
            "extended" => WalStatus::Extended,
            "unreserved" => WalStatus::Unreserved,
            "lost" => WalStatus::Lost,
            other => WalStatus::Other(other.to_owned()),
        }
    }

    /// The server's word for it.
    pub fn as_str(&self) -> &str {
        match self {
            WalStatus::Reserved => "reserved",
            WalStatus::Extended => "extended",
            WalStatus::Unreserved => "unreserved",
            WalStatus::Lost => "lost",
            WalStatus::Other(other) => other,
        }
    }
}

/// A slot as `pg_replication_slots` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// The slot's name.
    pub name: String,
    /// The output plugin (`None` for a physical slot).
    pub plugin: Option<String>,
    /// The database (`None` for a physical slot).
    pub database: Option<String>,
    /// Whether the slot is dropped at the end of the session that made it.
    pub temporary: bool,
    /// The pid of the session streaming from it, if any.
    pub active_pid: Option<i32>,
    /// The oldest WAL the slot keeps; `None` once invalidated.
    pub restart_lsn: Option<Lsn>,
    /// Everything before this position has been confirmed by a consumer.
    pub confirmed_flush_lsn: Option<Lsn>,
    /// Whether its WAL is still there.
    pub wal_status: Option<WalStatus>,
}

impl SlotInfo {
    /// Reads a row of `slot_info.sql`.
    pub(crate) fn from_row(row: &[Option<String>]) -> Result<Self> {
        let text = |i: usize| row.get(i).cloned().flatten();
        let lsn = |i: usize| -> Result<Option<Lsn>> {
            text(i)
                .map(|t| {
                    t.parse()
                        .map_err(|e: crate::lsn::ParseLsnError| ReplicationError::Protocol {
                            message: e.to_string(),
                        })
                })
                .transpose()
        };
        let name = text(0).ok_or_else(|| ReplicationError::Protocol {
            message: "pg_replication_slots row without slot_name".into(),
        })?;
        Ok(SlotInfo {
            name,
            plugin: text(1),
            database: text(2),
            temporary: text(3).as_deref() == Some("t"),
            active_pid: text(4).and_then(|pid| pid.parse().ok()),
            restart_lsn: lsn(5)?,
            confirmed_flush_lsn: lsn(6)?,
            wal_status: text(7).as_deref().map(WalStatus::parse),
        })
    }
}

/// What `CREATE_REPLICATION_SLOT` does about a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotAction {
    /// Export the snapshot at the slot's consistent point, so another connection can read the
    /// tables exactly as of the position where the stream starts (the initial load).
    Export,
    /// Make no snapshot.
    NoExport,
}

/// A slot just created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    /// The slot's name.
    pub slot: SlotName,
    /// The position from which the slot streams: every transaction committed after it.
    pub consistent_point: Lsn,
    /// The exported snapshot, for `SET TRANSACTION SNAPSHOT '…'` in a `REPEATABLE READ`
    /// transaction on another connection. It is only valid until the connection that created
    /// the slot runs its next command (including starting replication) or closes: import it
    /// before that.
    pub snapshot_name: Option<String>,
}

/// `IDENTIFY_SYSTEM`: which server and where its WAL is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The cluster's unique system identifier.
    pub system_id: String,
    /// The current timeline.
    pub timeline: u32,
    /// The current WAL flush position.
    pub xlog_position: Lsn,
    /// The connection's database.
    pub database: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_follow_postgres_rules() {
        assert!(SlotName::new("orders_cdc_1").is_ok());
        for bad in ["", "Orders", "a-b", "a b", "ä", &"x".repeat(64)] {
            assert!(
                matches!(
                    SlotName::new(bad),
                    Err(ReplicationError::InvalidName { kind: "slot", .. })
                ),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn publication_names_are_sent_as_quoted_identifiers() {
        assert_eq!(
            PublicationName::new("Orders \"v2\"")
                .map(|p| p.quoted())
                .ok()
                .as_deref(),
            Some("\"Orders \"\"v2\"\"\"")
        );
        assert!(PublicationName::new("").is_err());
        assert!(PublicationName::new("a\0b").is_err());
    }

    #[test]
    fn slot_rows_are_read_by_position() {
        let row = ["s", "pgoutput", "db", "f", "", "0/10", "0/20", "lost"]
            .map(|v| (!v.is_empty()).then(|| v.to_owned()));
        let info = SlotInfo::from_row(&row).expect("valid row");
        assert_eq!(info.active_pid, None);
        assert_eq!(info.confirmed_flush_lsn, Some(Lsn::new(0x20)));
        assert_eq!(info.wal_status, Some(WalStatus::Lost));
    }
}
