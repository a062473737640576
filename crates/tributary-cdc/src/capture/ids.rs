//! Deterministic envelope ids.
//!
//! A change read twice (the capture crashed after publishing it but before the slot heard
//! about it) must carry the same id both times, so that the broker's deduplication and the
//! consumers' inboxes absorb the copy. The id is therefore computed, never drawn: SHA-256 of
//! the capture's identity (cluster system id, database, slot) and the change's place in the
//! WAL (commit LSN and index inside the transaction), laid out as a UUIDv7 whose timestamp is
//! the commit time. It stays a valid v7 (so indexes on ids still grow at their right edge)
//! while its 74 "random" bits are the hash.
//!
//! The hash is SHA-256 rather than Rust's `DefaultHasher` because its output must never
//! change between builds or versions: ids are stored by brokers and inboxes.

use sha2::{Digest, Sha256};
use tributary_core::EventId;
use uuid::Builder;

use crate::lsn::Lsn;

/// The identity ids are derived from: one per (cluster, database, slot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdSpace {
    seed: [u8; 32],
}

impl IdSpace {
    pub(crate) fn new(system_id: &str, database: &str, slot: &str) -> Self {
        let mut hash = Sha256::new();
        for part in ["tributary-cdc", system_id, database, slot] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part.as_bytes());
        }
        IdSpace {
            seed: hash.finalize().into(),
        }
    }

    /// The id of the `sub`-th event of the `index`-th change of the transaction that committed
    /// at `commit_lsn` (`sub` > 0 only for a truncate of several tables).
    pub(crate) fn change(&self, commit_lsn: Lsn, index: u32, sub: u32, unix_ms: u64) -> EventId {
        let mut hash = Sha256::new();
        hash.update(self.seed);
        hash.update(b"change");
        hash.update(commit_lsn.as_u64().to_be_bytes());
        hash.update(index.to_be_bytes());
        hash.update(sub.to_be_bytes());
        v7(hash, unix_ms)
    }

    /// The id of the `ordinal`-th row of table `table` read from the snapshot the slot exported
    /// at `consistent_point`.
    pub(crate) fn snapshot(
        &self,
        consistent_point: Lsn,
        table: &str,
        ordinal: u64,
        unix_ms: u64,
    ) -> EventId {
        let mut hash = Sha256::new();
        hash.update(self.seed);
        hash.update(b"snapshot");
        hash.update(consistent_point.as_u64().to_be_bytes());
        hash.update((table.len() as u64).to_be_bytes());
        hash.update(table.as_bytes());
        hash.update(ordinal.to_be_bytes());
        v7(hash, unix_ms)
    }
}

impl IdSpace {
    /// The id of the `sub`-th event of the `index`-th change of the transaction named by
    /// `transaction` (a binlog capture's GTID or file and offset; `snapshot:` keys for rows
    /// of its initial snapshot).
    pub(crate) fn keyed(&self, transaction: &[u8], index: u64, sub: u32, unix_ms: u64) -> EventId {
        let mut hash = Sha256::new();
        hash.update(self.seed);
        hash.update(b"keyed");
        hash.update((transaction.len() as u64).to_be_bytes());
        hash.update(transaction);
        hash.update(index.to_be_bytes());
        hash.update(sub.to_be_bytes());
        v7(hash, unix_ms)
    }
}

fn v7(hash: Sha256, unix_ms: u64) -> EventId {
    let digest: [u8; 32] = hash.finalize().into();
    let mut bits = [0u8; 10];
    bits.copy_from_slice(&digest[..10]);
    EventId::from_uuid(Builder::from_unix_timestamp_millis(unix_ms, &bits).into_uuid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_change_gets_the_same_id_and_others_do_not() {
        let space = IdSpace::new("7312", "orders", "orders_cdc");
        let a = space.change(Lsn::new(0x1000), 3, 0, 1_700_000_000_000);
        assert_eq!(a, space.change(Lsn::new(0x1000), 3, 0, 1_700_000_000_000));
        assert_ne!(a, space.change(Lsn::new(0x1000), 4, 0, 1_700_000_000_000));
        assert_ne!(a, space.change(Lsn::new(0x1001), 3, 0, 1_700_000_000_000));
        assert_ne!(a, space.change(Lsn::new(0x1000), 3, 1, 1_700_000_000_000));
        let other_slot = IdSpace::new("7312", "orders", "other");
        assert_ne!(
            a,
            other_slot.change(Lsn::new(0x1000), 3, 0, 1_700_000_000_000)
        );
        assert_ne!(
            space.snapshot(Lsn::new(1), "t", 0, 0),
            space.snapshot(Lsn::new(2), "t", 0, 0)
        );
    }

    #[test]
    fn ids_are_uuid_v7_with_the_commit_time() {
        let space = IdSpace::new("1", "db", "slot");
        let id = space.change(Lsn::new(1), 0, 0, 1_700_000_000_123).as_uuid();
        assert_eq!(id.get_version_num(), 7);
        let (secs, nanos) = id.get_timestamp().expect("v7 has a timestamp").to_unix();
        assert_eq!((secs, nanos / 1_000_000), (1_700_000_000, 123));
    }

    #[test]
    fn ids_do_not_change_between_builds() {
        // Brokers and inboxes store these ids: a change here republishes everything in flight
        // as new events after an upgrade.
        let space = IdSpace::new("7312", "orders", "orders_cdc");
        assert_eq!(
            space
                .change(Lsn::new(0x16_B374_D848), 7, 0, 1_700_000_000_000)
                .to_string(),
            EXPECTED_ID
        );
    }

    const EXPECTED_ID: &str = "018bcfe5-6800-7823-a3fe-2f1d077e6167";
}
