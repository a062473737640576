//! WAL positions.
//!
//! An LSN is the position a CDC reader confirms to its replication slot, so it crosses every
//! boundary of this crate: the decoder reads it from messages, the transport reports it with
//! each payload, and callers store it as their cursor. A newtype keeps it from being mixed up
//! with transaction ids, OIDs or byte counts, which are all bare integers on the wire.

use std::fmt;
use std::str::FromStr;

/// A PostgreSQL log sequence number: a byte position in the write-ahead log.
///
/// PostgreSQL writes it as two hexadecimal halves, `X/Y` (high and low 32 bits), which is
/// what [`Display`](fmt::Display) produces and [`FromStr`] accepts. [`Lsn::ZERO`]
/// (`0/0`) is PostgreSQL's "invalid" position; `START_REPLICATION … LOGICAL 0/0` means "from
/// wherever the slot is".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(u64);

impl Lsn {
    /// `0/0`: no position.
    pub const ZERO: Lsn = Lsn(0);

    /// The LSN with this 64-bit value.
    pub const fn new(value: u64) -> Self {
        Lsn(value)
    }

    /// The 64-bit value.
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Whether this is `0/0`.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl From<u64> for Lsn {
    fn from(value: u64) -> Self {
        Lsn(value)
    }
}

impl From<Lsn> for u64 {
    fn from(lsn: Lsn) -> Self {
        lsn.0
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// The text was not an LSN in PostgreSQL's `X/Y` form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid LSN {text:?}: expected two hexadecimal numbers of at most 8 digits, as in 16/B374D848"
)]
pub struct ParseLsnError {
    /// The text that was rejected.
    pub text: String,
}

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || ParseLsnError {
            text: text.to_owned(),
        };
        let (high, low) = text.split_once('/').ok_or_else(error)?;
        let half = |part: &str| -> Result<u64, ParseLsnError> {
            // `from_str_radix` accepts a leading '+', PostgreSQL does not.
            if part.is_empty() || part.len() > 8 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(error());
            }
            u64::from_str_radix(part, 16).map_err(|_| error())
        };
        Ok(Lsn((half(high)? << 32) | half(low)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_through_postgres_text_form() {
        for text in ["0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF", "0/1"] {
            let lsn: Lsn = text.parse().expect("valid LSN");
            assert_eq!(lsn.to_string(), text);
        }
        assert_eq!("16/B374D848".parse::<Lsn>(), Ok(Lsn::new(0x16_B374_D848)));
    }

    #[test]
    fn lsn_accepts_lowercase_and_leading_zeros() {
        assert_eq!(
            "0000000A/0000ff".parse::<Lsn>(),
            Ok(Lsn::new(0xA_0000_00FF))
        );
    }

    #[test]
    fn lsn_rejects_malformed_text() {
        for text in [
            "",
            "/",
            "1/",
            "/1",
            "1",
            "1/2/3",
            "+1/2",
            "1/-2",
            "g/1",
            "123456789/0",
            " 1/2",
        ] {
            assert!(text.parse::<Lsn>().is_err(), "{text:?} should be rejected");
        }
    }

    #[test]
    fn lsn_orders_by_wal_position() {
        let a: Lsn = "0/FFFFFFFF".parse().expect("valid");
        let b: Lsn = "1/0".parse().expect("valid");
        assert!(a < b);
    }
}
