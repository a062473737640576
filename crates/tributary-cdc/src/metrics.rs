//! What the captures record through the `metrics` facade: how far the slot (or the binlog
//! capture's stored position) has been confirmed, how long ago, and how long ago the capture
//! last saw a heartbeat come back through the replication stream.
//!
//! Recording is a no-op until the process installs an exporter (the `tributary` binary does,
//! with `--metrics-listen`). The ages are sampled by the lease holder at every lease check
//! (`lease_check_interval`, 2 s by default), so a capture that stalls shows a growing age
//! even though nothing happens on its stream; a standby records nothing. Labels: `slot` (the
//! slot, or the binlog capture's name).

use std::time::Instant;

use metrics::{Gauge, gauge};

/// Names of the metrics the captures record, for dashboards and tests.
pub mod names {
    /// The last position this process confirmed to the slot (PostgreSQL: the LSN as a
    /// number, comparable with `pg_current_wal_lsn() - '0/0'`).
    pub const CONFIRMED_LSN: &str = "tributary_cdc_confirmed_lsn";
    /// Seconds since this process last confirmed a position (on MySQL/MariaDB: stored it).
    pub const CONFIRMED_AGE_SECONDS: &str = "tributary_cdc_confirmed_age_seconds";
    /// Seconds since a heartbeat last came back through the PostgreSQL replication stream:
    /// the stream flows end to end even while the captured tables are quiet.
    pub const HEARTBEAT_AGE_SECONDS: &str = "tributary_cdc_heartbeat_age_seconds";
}

/// The handles of one capture, and when what they measure last happened. A handle is
/// registered at the first event it measures: an exporter shows no age for what never
/// happened (and no LSN for a binlog capture), rather than a misleading 0.
pub(crate) struct CaptureMetrics {
    slot: String,
    confirmed_lsn: Option<Gauge>,
    confirmed: Option<(Gauge, Instant)>,
    heartbeat: Option<(Gauge, Instant)>,
}

impl CaptureMetrics {
    pub(crate) fn new(slot: &str) -> Self {
        Self {
            slot: slot.to_owned(),
            confirmed_lsn: None,
            confirmed: None,
            heartbeat: None,
        }
    }

    /// This process confirmed (or stored) a position; `lsn` where it is a number.
    pub(crate) fn confirmed(&mut self, lsn: Option<u64>) {
        let slot = &self.slot;
        if let Some(lsn) = lsn {
            let gauge = self
                .confirmed_lsn
                .get_or_insert_with(|| gauge!(names::CONFIRMED_LSN, "slot" => slot.clone()));
            // Exact below 2^53 bytes of WAL (8 PiB).
            gauge.set(lsn as f64);
        }
        Self::happened(&mut self.confirmed, names::CONFIRMED_AGE_SECONDS, slot);
    }

    /// A heartbeat came back through the stream.
    pub(crate) fn heartbeat_seen(&mut self) {
        Self::happened(
            &mut self.heartbeat,
            names::HEARTBEAT_AGE_SECONDS,
            &self.slot,
        );
    }

    fn happened(age: &mut Option<(Gauge, Instant)>, name: &'static str, slot: &str) {
        let (gauge, at) =
            age.get_or_insert_with(|| (gauge!(name, "slot" => slot.to_owned()), Instant::now()));
        *at = Instant::now();
        gauge.set(0.0);
    }

    /// Sets the ages to now.
    pub(crate) fn sample(&self) {
        for (gauge, at) in self.confirmed.iter().chain(&self.heartbeat) {
            gauge.set(at.elapsed().as_secs_f64());
        }
    }
}
