//! The delivery checker of the fault tests: compares what was committed at the source with
//! what a consumer applied, and reports loss, phantoms, duplicates and per-key reordering.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Per key, the sequence numbers committed at the source (in commit order) and those a
/// consumer applied (in the order it applied them).
#[derive(Clone, Debug, Default)]
pub struct DeliveryCheck {
    pub committed: BTreeMap<String, Vec<u64>>,
    pub applied: BTreeMap<String, Vec<u64>>,
}

/// What the checker found. Clean means: nothing lost, nothing phantom, nothing applied twice,
/// per-key order kept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliveryReport {
    pub committed: usize,
    pub applied: usize,
    /// (key, seq) committed but never applied.
    pub lost: Vec<(String, u64)>,
    /// (key, seq) applied but never committed.
    pub phantom: Vec<(String, u64)>,
    /// (key, seq) applied more than once.
    pub duplicated: Vec<(String, u64)>,
    /// (key, seq) applied after a later seq of the same key.
    pub out_of_order: Vec<(String, u64)>,
}

impl DeliveryReport {
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty()
            && self.phantom.is_empty()
            && self.duplicated.is_empty()
            && self.out_of_order.is_empty()
    }
}

impl fmt::Display for DeliveryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sample = |v: &Vec<(String, u64)>| {
            v.iter()
                .take(5)
                .map(|(k, s)| format!("{k}#{s}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        write!(
            f,
            "committed {}, applied {}: lost {} [{}], phantom {} [{}], duplicated {} [{}], out of order {} [{}]",
            self.committed,
            self.applied,
            self.lost.len(),
            sample(&self.lost),
            self.phantom.len(),
            sample(&self.phantom),
            self.duplicated.len(),
            sample(&self.duplicated),
            self.out_of_order.len(),
            sample(&self.out_of_order),
        )
    }
}

impl DeliveryCheck {
    pub fn report(&self) -> DeliveryReport {
        let mut report = DeliveryReport {
            committed: self.committed.values().map(Vec::len).sum(),
            applied: self.applied.values().map(Vec::len).sum(),
            ..DeliveryReport::default()
        };
        let empty = Vec::new();
        let keys: BTreeSet<&String> = self.committed.keys().chain(self.applied.keys()).collect();
        for key in keys {
            let committed: BTreeSet<u64> = self
                .committed
                .get(key)
                .unwrap_or(&empty)
                .iter()
                .copied()
                .collect();
            let applied = self.applied.get(key).unwrap_or(&empty);
            let mut seen = BTreeSet::new();
            let mut highest = None;
            for &seq in applied {
                if !seen.insert(seq) {
                    report.duplicated.push((key.clone(), seq));
                    continue;
                }
                if !committed.contains(&seq) {
                    report.phantom.push((key.clone(), seq));
                }
                if highest.is_some_and(|h| seq < h) {
                    report.out_of_order.push((key.clone(), seq));
                }
                highest = highest.max(Some(seq));
            }
            for seq in committed.difference(&seen) {
                report.lost.push((key.clone(), *seq));
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(committed: &[(&str, &[u64])], applied: &[(&str, &[u64])]) -> DeliveryReport {
        let to_map = |v: &[(&str, &[u64])]| {
            v.iter()
                .map(|(k, s)| ((*k).to_owned(), s.to_vec()))
                .collect::<BTreeMap<_, _>>()
        };
        DeliveryCheck {
            committed: to_map(committed),
            applied: to_map(applied),
        }
        .report()
    }

    #[test]
    fn a_perfect_delivery_is_clean() {
        let r = check(
            &[("a", &[1, 2, 3]), ("b", &[1])],
            &[("a", &[1, 2, 3]), ("b", &[1])],
        );
        assert!(r.is_clean(), "{r}");
        assert_eq!((r.committed, r.applied), (4, 4));
    }

    #[test]
    fn each_kind_of_failure_is_reported() {
        let r = check(
            &[("a", &[1, 2, 3]), ("b", &[1, 2])],
            &[("a", &[1, 3, 2, 3]), ("b", &[1, 7]), ("c", &[1])],
        );
        assert_eq!(r.duplicated, vec![("a".into(), 3)]);
        assert_eq!(r.out_of_order, vec![("a".into(), 2)]);
        assert_eq!(r.phantom, vec![("b".into(), 7), ("c".into(), 1)]);
        assert_eq!(r.lost, vec![("b".into(), 2)]);
        assert!(!r.is_clean());
    }
}
