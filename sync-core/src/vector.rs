//! Version vectors: for every origin, the highest change number up to which
//! a device holds everything that origin wrote.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Per origin, the highest contiguous change number held. Absent means 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionVector(BTreeMap<Uuid, u64>);

impl VersionVector {
    /// An empty vector.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number held for `origin`.
    pub fn get(&self, origin: Uuid) -> u64 {
        self.0.get(&origin).copied().unwrap_or(0)
    }

    /// Raises `origin` to `seq` if that is higher; whether it moved.
    pub fn advance(&mut self, origin: Uuid, seq: u64) -> bool {
        let entry = self.0.entry(origin).or_insert(0);
        if seq > *entry {
            *entry = seq;
            true
        } else {
            false
        }
    }

    /// Every (origin, number) pair.
    pub fn iter(&self) -> impl Iterator<Item = (Uuid, u64)> + '_ {
        self.0.iter().map(|(o, s)| (*o, *s))
    }

    /// Whether this vector holds everything `other` does.
    pub fn covers(&self, other: &VersionVector) -> bool {
        other.iter().all(|(o, s)| self.get(o) >= s)
    }

    /// How many changes `other` holds that this vector lacks (an upper bound
    /// where device-owned changes left holes).
    pub fn behind(&self, other: &VersionVector) -> u64 {
        other
            .iter()
            .map(|(o, s)| s.saturating_sub(self.get(o)))
            .sum()
    }

    /// The origins named.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no origin is named.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(Uuid, u64)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (Uuid, u64)>>(iter: I) -> Self {
        let mut v = Self::new();
        for (o, s) in iter {
            v.advance(o, s);
        }
        v
    }
}
