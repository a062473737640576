//! Names and coordinates of the messaging layer: topics, consumer groups, partitions, offsets.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The longest topic or group name accepted.
pub const MAX_NAME_LEN: usize = 64;

fn validate_name(kind: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(Error::invalid(format!(
            "{kind} name must be 1 to {MAX_NAME_LEN} characters, got {:?}",
            name
        )));
    }
    // The same names become NATS stream, subject and consumer names, which forbid dots,
    // wildcards and whitespace.
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(Error::invalid(format!(
            "{kind} name {name:?} may only contain ASCII letters, digits, '_' and '-'"
        )));
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// # Errors
            /// [`Error::InvalidInput`] unless the name is 1 to 64 ASCII letters, digits, `_` or `-`.
            pub fn new(name: impl Into<String>) -> Result<Self> {
                let name = name.into();
                validate_name($kind, &name)?;
                Ok(Self(name))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }
    };
}

name_type!(
    /// A named, partitioned stream of messages in a broker, e.g. `Order`.
    Topic,
    "topic"
);
name_type!(
    /// A consumer group: every group receives every message of its topics once (in effect).
    GroupName,
    "consumer group"
);

/// A partition of a topic. Messages with the same key always land in the same partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Partition(u32);

impl Partition {
    pub const fn new(p: u32) -> Self {
        Self(p)
    }
    pub const fn get(self) -> u32 {
        self.0
    }

    /// Checks that this partition exists in `topic`, which has `partitions` of them.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming both when it does not.
    pub fn check_in(self, topic: &Topic, partitions: u32) -> Result<()> {
        if self.0 < partitions {
            Ok(())
        } else {
            Err(Error::invalid(format!(
                "topic {topic} has {partitions} partitions; there is no partition {self}"
            )))
        }
    }

    /// The partition of `key` among `partitions`: FNV-1a (32 bit) of the key's UTF-8 bytes,
    /// modulo the partition count. Stable across processes, versions and languages.
    pub fn for_key(key: &str, partitions: u32) -> Self {
        let mut hash: u32 = 0x811c_9dc5;
        for b in key.as_bytes() {
            hash ^= u32::from(*b);
            hash = hash.wrapping_mul(0x0100_0193);
        }
        Self(hash % partitions.max(1))
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The place of a message within one partition. Offsets grow; they need not be dense.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Offset(u64);

impl Offset {
    pub const fn new(o: u64) -> Self {
        Self(o)
    }
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_restricted_to_what_every_broker_accepts() {
        assert!(Topic::new("Order").is_ok());
        assert!(Topic::new("order-events_v2").is_ok());
        for bad in ["", "a.b", "a b", "a*", "a>", "ü", &"x".repeat(65)] {
            assert!(Topic::new(bad).is_err(), "{bad:?} must be refused");
            assert!(GroupName::new(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn partitioning_is_stable_and_spreads_keys() {
        // Pinned values: changing the hash would reorder every existing deployment.
        assert_eq!(Partition::for_key("", 8), Partition::new(0x811c_9dc5 % 8));
        assert_eq!(Partition::for_key("a", 1000).get(), 0xe40c_292c % 1000);
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[Partition::for_key(&format!("customer-{i}"), 8).get() as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 700), "uneven spread: {counts:?}");
        assert_eq!(Partition::for_key("k", 0), Partition::new(0));
    }
}
