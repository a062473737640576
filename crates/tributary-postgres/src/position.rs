//! Positions on PostgreSQL: the reading order, and how it fits in a [`Position`].
//!
//! # The problem
//!
//! A reader that remembers "the last id I saw" and asks for `id > last` loses rows on
//! PostgreSQL: a sequence value is taken when a row is inserted, not when its transaction
//! commits, so a transaction holding id 7 can commit after the reader already read id 8 and
//! moved past 7 for good.
//!
//! # The reading order
//!
//! Every event and outbox row records the id of the transaction that wrote it
//! (`tx_id`, an `xid8` from `pg_current_xact_id()`) and its number within that transaction
//! (`tx_ordinal`, 0, 1, 2, … in insert order). Readers only read rows whose `tx_id` is below
//! `pg_snapshot_xmin(pg_current_snapshot())` — the oldest transaction still running — and read
//! them ordered by `(tx_id, tx_ordinal)`.
//!
//! Every transaction below the xmin has ended, and a new transaction always gets an id above
//! every id handed out before, so the set of readable rows only ever grows *at its end*: when
//! the xmin moves from `a` to `b`, the rows that become readable all have `a <= tx_id < b`,
//! after everything readable before. A reader that keeps the pair `(tx_id, tx_ordinal)` of the
//! last row it read and asks for rows after it, below the xmin, therefore never skips a row
//! (nothing can appear behind its cursor) and never reads one twice (its cursor only moves
//! forward over rows that cannot change). Rolled-back rows are never visible at all.
//!
//! The price: a transaction that stays open holds the xmin back, and rows committed after it
//! started wait until it ends — delivery is delayed, never lost. The xmin is cluster-wide, so
//! any long transaction on the server (in any database) delays every reader. The lag figures
//! ([`crate::PgLag`]) show how many rows wait and which transaction holds them.
//!
//! # Why the pair is the position
//!
//! [`Position`] is one `u64`, and the event store promises more than an order: an append
//! returns the position of its last event (`AppendOutcome::last_position`), a retried append
//! returns the *same* position, and `read_all`/`subscribe_all` start *at* a position a caller
//! saw earlier. So a position must be known when the event is written and never change.
//! Three designs were weighed:
//!
//! - **A position assigned by the reader** (a dense counter written when a row is first read
//!   in commit-safe order): positions would be dense and commit-ordered, but unknown at append
//!   time, and every read would become a write needing its own lease.
//! - **A position taken at commit** (a counter row locked until commit): commit order exactly,
//!   but every appender in the service queues on one row lock for the length of its
//!   transaction.
//! - **The reading order packed into 64 bits** (chosen): `position = tx_id << 20 | tx_ordinal`.
//!   Known at insert (both halves are), unique (the primary key is `(tx_id, tx_ordinal)`),
//!   stable, and ordered exactly like `(tx_id, tx_ordinal)`, so "`position >= from`, below the
//!   xmin" is the gap-free read above. Positions are sparse (gaps between them mean nothing),
//!   as the trait allows.
//!
//! Limits of the packing: at most 2^20 (1,048,576) events — and, separately, outbox rows — per
//! transaction (a check constraint refuses more), and transaction ids below 2^44 (17.6 trillion
//! transactions; at 10,000 write transactions per second, 55 years of a cluster's life).
//! Positions are not comparable between two schemas or two clusters.

use tributary_core::{Error, Position, Result};

/// Bits of a position that hold the row's number within its transaction.
pub(crate) const ORDINAL_BITS: u32 = 20;
/// The most rows one transaction may write to one table (events or outbox).
pub const MAX_ROWS_PER_TRANSACTION: u32 = 1 << ORDINAL_BITS;
/// The first transaction id whose positions no longer fit in 64 bits.
const TX_LIMIT: u64 = 1 << (64 - ORDINAL_BITS);

/// A place in the reading order: a transaction id and a row number within it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxPosition {
    /// The writing transaction's id (`xid8`), as a number.
    pub tx_id: u64,
    /// The row's number within its transaction, from 0.
    pub ordinal: u32,
}

impl TxPosition {
    /// Packs the pair into a [`Position`].
    ///
    /// # Errors
    /// [`Error::Storage`] for a transaction id or ordinal too large to pack (see the module
    /// doc for the limits).
    pub fn to_position(self) -> Result<Position> {
        if self.tx_id >= TX_LIMIT || self.ordinal >= MAX_ROWS_PER_TRANSACTION {
            return Err(Error::storage_msg(format!(
                "row ({}, {}) cannot be given a 64-bit position: transaction ids must stay below 2^44 and a transaction may write at most {MAX_ROWS_PER_TRANSACTION} rows",
                self.tx_id, self.ordinal
            )));
        }
        Ok(Position::new(
            (self.tx_id << ORDINAL_BITS) | u64::from(self.ordinal),
        ))
    }

    /// Unpacks a [`Position`]; every `u64` unpacks (`Position::START` is `(0, 0)`, before
    /// every row).
    pub fn from_position(p: Position) -> Self {
        Self {
            tx_id: p.get() >> ORDINAL_BITS,
            ordinal: (p.get() & u64::from(MAX_ROWS_PER_TRANSACTION - 1)) as u32,
        }
    }

    /// The transaction id as PostgreSQL's `bigint` (always in range: ids are below 2^44).
    pub(crate) fn tx_i64(self) -> i64 {
        self.tx_id.min(i64::MAX as u64) as i64
    }

    pub(crate) fn ordinal_i32(self) -> i32 {
        self.ordinal.min(i32::MAX as u32) as i32
    }

    /// Reads the pair from the `bigint` and `integer` a query returned.
    ///
    /// # Errors
    /// [`Error::Decode`] for negative values.
    pub(crate) fn from_row(tx_id: i64, ordinal: i32) -> Result<Self> {
        Ok(Self {
            tx_id: u64::try_from(tx_id)
                .map_err(|_| Error::decode("row position", "negative transaction id"))?,
            ordinal: u32::try_from(ordinal)
                .map_err(|_| Error::decode("row position", "negative ordinal"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_keeps_the_reading_order_and_round_trips() {
        let pairs = [
            TxPosition {
                tx_id: 3,
                ordinal: 0,
            },
            TxPosition {
                tx_id: 3,
                ordinal: 1,
            },
            TxPosition {
                tx_id: 3,
                ordinal: MAX_ROWS_PER_TRANSACTION - 1,
            },
            TxPosition {
                tx_id: 4,
                ordinal: 0,
            },
            TxPosition {
                tx_id: TX_LIMIT - 1,
                ordinal: 7,
            },
        ];
        let packed: Vec<_> = pairs.iter().map(|p| p.to_position().unwrap()).collect();
        assert!(packed.windows(2).all(|w| w[0] < w[1]));
        for (pair, position) in pairs.iter().zip(&packed) {
            assert_eq!(TxPosition::from_position(*position), *pair);
        }
        // The position after the last row of a transaction is the first of the next one.
        assert_eq!(
            TxPosition::from_position(packed[2].next()),
            TxPosition {
                tx_id: 4,
                ordinal: 0
            }
        );
        assert_eq!(
            TxPosition::from_position(Position::START),
            TxPosition::default()
        );
    }

    #[test]
    fn pairs_beyond_the_limits_are_refused() {
        assert!(
            TxPosition {
                tx_id: TX_LIMIT,
                ordinal: 0
            }
            .to_position()
            .is_err()
        );
        assert!(
            TxPosition {
                tx_id: 5,
                ordinal: MAX_ROWS_PER_TRANSACTION
            }
            .to_position()
            .is_err()
        );
        assert!(TxPosition::from_row(-1, 0).is_err());
    }
}
