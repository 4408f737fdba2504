//! Version vectors: for every origin, the highest change number up to which
//! a device holds everything that origin wrote; and the ranges it holds
//! beyond that, received out of order.

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
        if seq == 0 {
            return false;
        }
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
    /// where device-owned changes left holes). Saturates rather than wraps:
    /// the numbers come from peers.
    pub fn behind(&self, other: &VersionVector) -> u64 {
        other
            .iter()
            .map(|(o, s)| s.saturating_sub(self.get(o)))
            .fold(0u64, u64::saturating_add)
    }

    /// The entry-wise minimum with `other` (origins missing from either are 0).
    pub fn min(&self, other: &VersionVector) -> VersionVector {
        self.iter()
            .filter_map(|(o, s)| {
                let m = s.min(other.get(o));
                (m > 0).then_some((o, m))
            })
            .collect()
    }

    /// Raises every entry to at least `other`'s.
    pub fn merge(&mut self, other: &VersionVector) {
        for (o, s) in other.iter() {
            self.advance(o, s);
        }
    }

    /// The sum of the numbers held (saturating).
    pub fn total(&self) -> u64 {
        self.0.values().fold(0u64, |t, s| t.saturating_add(*s))
    }

    /// Sets `origin` to exactly `seq`, lower or higher (0: none of it).
    pub fn set(&mut self, origin: Uuid, seq: u64) {
        if seq == 0 {
            self.0.remove(&origin);
        } else {
            self.0.insert(origin, seq);
        }
    }

    /// Each origin whose number differs in `base`, with this vector's number
    /// (0: none of it); `base` with these set is this vector.
    pub fn differs_from(&self, base: &VersionVector) -> Vec<(Uuid, u64)> {
        let mut out = Vec::new();
        let mut mine = self.0.iter().filter(|(_, s)| **s > 0).peekable();
        let mut theirs = base.0.iter().filter(|(_, s)| **s > 0).peekable();
        loop {
            match (mine.peek(), theirs.peek()) {
                (None, None) => return out,
                (Some((o, s)), None) => {
                    out.push((**o, **s));
                    mine.next();
                }
                (None, Some((o, _))) => {
                    out.push((**o, 0));
                    theirs.next();
                }
                (Some((a, s)), Some((b, t))) => {
                    if a < b {
                        out.push((**a, **s));
                        mine.next();
                    } else if b < a {
                        out.push((**b, 0));
                        theirs.next();
                    } else {
                        if s != t {
                            out.push((**a, **s));
                        }
                        mine.next();
                        theirs.next();
                    }
                }
            }
        }
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

/// Ranges of numbers per origin (start -> end, inclusive), listed as
/// `(origin, first, last)`.
pub(crate) fn ranges_of(
    ahead: &BTreeMap<Uuid, BTreeMap<u64, u64>>,
) -> impl Iterator<Item = (Uuid, u64, u64)> + '_ {
    ahead
        .iter()
        .flat_map(|(origin, ranges)| ranges.iter().map(|(s, e)| (*origin, *s, *e)))
}

/// What a device has received: its vector, and the ranges of numbers held
/// above it (out of order: a gap before them has not arrived yet). A change
/// inside either is a duplicate; when a gap fills, the vector absorbs the
/// ranges that now follow it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Received {
    pub(crate) vector: VersionVector,
    /// Per origin: start -> end (inclusive), disjoint, each above the vector
    /// and not adjacent to it.
    pub(crate) ahead: BTreeMap<Uuid, BTreeMap<u64, u64>>,
}

impl Received {
    /// Whether change `seq` of `origin` was received.
    pub(crate) fn contains(&self, origin: Uuid, seq: u64) -> bool {
        if seq <= self.vector.get(origin) {
            return true;
        }
        self.ahead
            .get(&origin)
            .and_then(|ranges| ranges.range(..=seq).next_back())
            .is_some_and(|(_, end)| seq <= *end)
    }

    /// Whether every number of `origin` in `start..=end` was received.
    pub(crate) fn holds_range(&self, origin: Uuid, start: u64, end: u64) -> bool {
        let held = self.vector.get(origin);
        if end <= held {
            return true;
        }
        let start = start.max(held.saturating_add(1));
        self.ahead
            .get(&origin)
            .and_then(|ranges| ranges.range(..=start).next_back())
            .is_some_and(|(_, e)| *e >= end)
    }

    /// Whether this holds every number `other` holds.
    pub(crate) fn holds_all(&self, other: &Received) -> bool {
        other
            .vector
            .iter()
            .all(|(origin, seq)| self.holds_range(origin, 1, seq))
            && other.ahead.iter().all(|(origin, ranges)| {
                ranges
                    .iter()
                    .all(|(start, end)| self.holds_range(*origin, *start, *end))
            })
    }

    /// The ranges held above the vector, as `(origin, first, last)`.
    pub(crate) fn ahead_ranges(&self) -> impl Iterator<Item = (Uuid, u64, u64)> + '_ {
        ranges_of(&self.ahead)
    }

    /// A vector and ranges as a peer states them (a pull request, a
    /// snapshot's claim): at most [`MAX_AHEAD`](crate::MAX_AHEAD) ranges
    /// read, each folded into the vector or into the others as
    /// [`insert`](Received::insert) does, never trusted as given.
    pub(crate) fn stated(vector: &VersionVector, ahead: &[(Uuid, u64, u64)]) -> Self {
        let mut r = Received {
            vector: vector.clone(),
            ahead: BTreeMap::new(),
        };
        for (origin, start, end) in ahead.iter().take(crate::protocol::MAX_AHEAD) {
            r.insert(*origin, *start, *end);
        }
        r
    }

    /// Raises the vector to `floors` (origin by origin), folding the ranges
    /// that now touch it. Returns whether anything changed.
    pub(crate) fn raise(&mut self, floors: &VersionVector) -> bool {
        let mut moved = false;
        for (origin, seq) in floors.iter() {
            moved |= self.insert(origin, 1, seq);
        }
        moved
    }

    /// The parts of `start..=end` of `origin` held here, as `(first, last)`
    /// ranges in order.
    pub(crate) fn held_within(&self, origin: Uuid, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let floor = self.vector.get(origin);
        if start <= floor {
            out.push((start, end.min(floor)));
        }
        if let Some(ranges) = self.ahead.get(&origin) {
            // The range that starts at or before `start` may reach into it.
            let first = ranges.range(..=start).next_back().map(|(s, _)| *s);
            let from = first.unwrap_or(start);
            for (&s, &e) in ranges.range(from..=end) {
                let (lo, hi) = (s.max(start), e.min(end));
                if lo <= hi {
                    out.push((lo, hi));
                }
            }
        }
        out
    }

    /// The parts of `start..=end` of `origin` not held here, in order.
    pub(crate) fn missing_within(&self, origin: Uuid, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut next = start;
        for (lo, hi) in self.held_within(origin, start, end) {
            if lo > next {
                out.push((next, lo - 1));
            }
            next = hi.saturating_add(1);
        }
        if next <= end && start <= end {
            out.push((next, end));
        }
        out
    }

    /// Records numbers `start..=end` of `origin` as received. Returns whether
    /// anything changed.
    pub(crate) fn insert(&mut self, origin: Uuid, start: u64, end: u64) -> bool {
        if start > end || start == 0 {
            return false;
        }
        let held = self.vector.get(origin);
        if end <= held {
            return false;
        }
        let start = start.max(held.saturating_add(1));
        let ranges = self.ahead.entry(origin).or_default();
        // Ranges are disjoint and never touch, so a covered range lies
        // inside one of them.
        if ranges
            .range(..=start)
            .next_back()
            .is_some_and(|(_, e)| *e >= end)
        {
            return false;
        }
        let touching: Vec<u64> = ranges
            .range(..=end.saturating_add(1))
            .filter(|(_, e)| **e >= start.saturating_sub(1))
            .map(|(s, _)| *s)
            .collect();
        let (mut lo, mut hi) = (start, end);
        for s in touching {
            if let Some(e) = ranges.remove(&s) {
                lo = lo.min(s);
                hi = hi.max(e);
            }
        }
        if lo <= held.saturating_add(1) {
            // Contiguous with the vector: it absorbs the range.
            self.vector.advance(origin, hi);
        } else {
            ranges.insert(lo, hi);
        }
        if ranges.is_empty() {
            self.ahead.remove(&origin);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const O: Uuid = Uuid::from_u128(7);

    #[test]
    fn a_gap_filled_late_lets_the_vector_absorb_what_followed() {
        let mut r = Received::default();
        r.insert(O, 3, 5);
        r.insert(O, 8, 8);
        assert_eq!(r.vector.get(O), 0);
        assert!(r.contains(O, 4) && !r.contains(O, 6) && r.contains(O, 8));
        r.insert(O, 1, 2);
        assert_eq!(r.vector.get(O), 5);
        r.insert(O, 6, 7);
        assert_eq!(r.vector.get(O), 8);
        assert!(r.ahead.is_empty());
    }

    #[test]
    fn behind_saturates_on_hostile_numbers() {
        let mine = VersionVector::new();
        let theirs: VersionVector = [(O, u64::MAX), (Uuid::from_u128(8), u64::MAX)]
            .into_iter()
            .collect();
        assert_eq!(mine.behind(&theirs), u64::MAX);
    }

    proptest! {
        /// Whatever order ranges arrive in, the received set is their union.
        #[test]
        fn received_is_the_union_of_its_ranges(ranges in prop::collection::vec((1u64..60, 0u64..6), 0..20)) {
            let mut r = Received::default();
            let mut truth = std::collections::BTreeSet::new();
            for (s, len) in &ranges {
                r.insert(O, *s, s + len);
                truth.extend(*s..=s + len);
            }
            for seq in 1..80 {
                prop_assert_eq!(r.contains(O, seq), truth.contains(&seq));
            }
            let contiguous = (1..).take_while(|s| truth.contains(s)).last().unwrap_or(0);
            prop_assert_eq!(r.vector.get(O), contiguous);
        }

        /// A range is held exactly when each of its numbers is, and one
        /// received set holds another exactly when it holds each number.
        #[test]
        fn held_ranges_are_the_numbers_held(
            a in prop::collection::vec((1u64..40, 0u64..5), 0..10),
            b in prop::collection::vec((1u64..40, 0u64..5), 0..10),
            probe in (1u64..50, 0u64..8),
        ) {
            let build = |ranges: &[(u64, u64)]| {
                let mut r = Received::default();
                let mut truth = std::collections::BTreeSet::new();
                for (s, len) in ranges {
                    r.insert(O, *s, s + len);
                    truth.extend(*s..=s + len);
                }
                (r, truth)
            };
            let (ra, ta) = build(&a);
            let (rb, tb) = build(&b);
            let (s, len) = probe;
            prop_assert_eq!(ra.holds_range(O, s, s + len), (s..=s + len).all(|n| ta.contains(&n)));
            prop_assert_eq!(ra.holds_all(&rb), tb.is_subset(&ta));
            let listed: usize = ra.ahead_ranges().map(|(_, s, e)| (e - s + 1) as usize).sum();
            prop_assert_eq!(listed as u64 + ra.vector.get(O), ta.len() as u64);
        }

        /// The held and the missing parts of a range are its numbers held
        /// and not held, in order, each part as large as it can be; a
        /// floor raised folds the ranges it reaches.
        #[test]
        fn a_range_splits_into_its_held_and_missing_parts(
            ranges in prop::collection::vec((1u64..40, 0u64..5), 0..10),
            probe in (1u64..50, 0u64..12),
            floor in 0u64..45,
        ) {
            let mut r = Received::default();
            let mut truth = std::collections::BTreeSet::new();
            for (s, len) in &ranges {
                r.insert(O, *s, s + len);
                truth.extend(*s..=s + len);
            }
            let (s, len) = probe;
            let numbers = |parts: &[(u64, u64)]| -> Vec<u64> {
                parts.iter().flat_map(|(a, b)| *a..=*b).collect()
            };
            let held = r.held_within(O, s, s + len);
            let missing = r.missing_within(O, s, s + len);
            let expect_held: Vec<u64> = (s..=s + len).filter(|n| truth.contains(n)).collect();
            let expect_missing: Vec<u64> = (s..=s + len).filter(|n| !truth.contains(n)).collect();
            prop_assert_eq!(numbers(&held), expect_held);
            prop_assert_eq!(numbers(&missing), expect_missing);
            for parts in [&held, &missing] {
                for w in parts.windows(2) {
                    prop_assert!(w[0].1 + 1 < w[1].0, "parts touch: {:?}", parts);
                }
            }
            r.raise(&[(O, floor)].into_iter().collect());
            truth.extend(1..=floor);
            for seq in 1..60 {
                prop_assert_eq!(r.contains(O, seq), truth.contains(&seq));
            }
            let contiguous = (1..).take_while(|s| truth.contains(s)).last().unwrap_or(0);
            prop_assert_eq!(r.vector.get(O), contiguous);
        }

        /// A vector is its base with the entries it differs in set, and
        /// names no origin the two agree on.
        #[test]
        fn a_vector_is_its_base_with_its_differences(
            a in prop::collection::btree_map(0u128..12, 0u64..4, 0..10),
            b in prop::collection::btree_map(0u128..12, 0u64..4, 0..10),
        ) {
            let v: VersionVector = a.iter().map(|(o, s)| (Uuid::from_u128(*o), *s)).collect();
            let base: VersionVector = b.iter().map(|(o, s)| (Uuid::from_u128(*o), *s)).collect();
            let differs = v.differs_from(&base);
            let mut rebuilt = base.clone();
            for (o, s) in &differs {
                prop_assert_ne!(base.get(*o), *s);
                rebuilt.set(*o, *s);
            }
            prop_assert_eq!(rebuilt, v);
        }
    }
}
