//! Binlog positions: a MariaDB GTID list, and the file and offset every server has.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// One MariaDB GTID: `domain-server-sequence`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MariaGtid {
    pub domain: u32,
    pub server: u32,
    pub sequence: u64,
}

impl fmt::Display for MariaGtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server, self.sequence)
    }
}

impl FromStr for MariaGtid {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut parts = text.trim().splitn(3, '-');
        let mut next = |what: &str| {
            parts
                .next()
                .ok_or_else(|| format!("GTID {text:?} has no {what}"))
        };
        let domain = next("domain")?;
        let server = next("server id")?;
        let sequence = next("sequence number")?;
        Ok(MariaGtid {
            domain: domain
                .parse()
                .map_err(|e| format!("GTID {text:?}: domain: {e}"))?,
            server: server
                .parse()
                .map_err(|e| format!("GTID {text:?}: server id: {e}"))?,
            sequence: sequence
                .parse()
                .map_err(|e| format!("GTID {text:?}: sequence: {e}"))?,
        })
    }
}

/// A MariaDB GTID position (`@@gtid_binlog_pos`, `@slave_connect_state`): the last GTID of
/// each replication domain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct GtidList {
    domains: BTreeMap<u32, MariaGtid>,
}

impl GtidList {
    /// Records `gtid` as the last of its domain.
    pub fn advance(&mut self, gtid: MariaGtid) {
        self.domains.insert(gtid.domain, gtid);
    }

    /// The last GTID of `domain`.
    pub fn get(&self, domain: u32) -> Option<&MariaGtid> {
        self.domains.get(&domain)
    }

    /// Every domain's last GTID, by domain.
    pub fn iter(&self) -> impl Iterator<Item = &MariaGtid> {
        self.domains.values()
    }

    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }
}

impl fmt::Display for GtidList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, gtid) in self.domains.values().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{gtid}")?;
        }
        Ok(())
    }
}

impl FromStr for GtidList {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut list = GtidList::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let gtid: MariaGtid = part.parse()?;
            if list.domains.contains_key(&gtid.domain) {
                return Err(format!(
                    "GTID list {text:?} names domain {} twice",
                    gtid.domain
                ));
            }
            list.advance(gtid);
        }
        Ok(list)
    }
}

/// Where the capture stands in the binlog: after the transaction that ended at `offset` in
/// `file`, and (on MariaDB) after every GTID of `gtids`. The GTID list is what a capture
/// resumes from where there is one: it survives binlog rotation, server restarts and
/// failover to a replica; file and offset are for servers without GTIDs and for the lag.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct BinlogPosition {
    pub gtids: Option<GtidList>,
    pub file: String,
    pub offset: u64,
}

impl fmt::Display for BinlogPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.gtids {
            Some(gtids) => write!(f, "gtid {gtids} ({}:{})", self.file, self.offset),
            None => write!(f, "{}:{}", self.file, self.offset),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtid_lists_round_trip_and_keep_one_gtid_per_domain() {
        let mut list: GtidList = "0-1-100, 2-7-5".parse().unwrap();
        assert_eq!(list.to_string(), "0-1-100,2-7-5");
        list.advance("0-1-101".parse().unwrap());
        assert_eq!(list.to_string(), "0-1-101,2-7-5");
        assert!("".parse::<GtidList>().unwrap().is_empty());
        assert!("0-1".parse::<GtidList>().is_err());
        assert!("0-1-x".parse::<GtidList>().is_err());
        assert!("0-1-1,0-2-2".parse::<GtidList>().is_err());
    }
}
