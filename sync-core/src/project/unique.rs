//! Unique columns: rows that would hold the same unique key are settled the
//! same way on every device. The row whose unique fields were written last
//! (then the higher id) keeps the key; the others show their first text
//! column renamed (`value~` and 8 hex digits of their id) or, without one,
//! are not shown, until the collision ends. Their state keeps the value
//! they wrote: when the winner moves away, they get it back.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use super::{Planner, Presence, Projected, Rank, RecordKey, contender_clock};
use crate::conflict::{ConflictKind, Write};
use crate::merge::NewConflict;
use crate::value::WireValue;

/// A unique index over synced columns of a model's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UniqueIndex {
    /// The index's name in the database.
    pub(crate) name: String,
    /// Positions of its columns among the model's synced fields, in index
    /// order.
    pub(crate) fields: Vec<usize>,
}

/// A stable hash of a unique key (stored in `_sync_aside`).
pub(crate) fn key_hash(values: &[WireValue]) -> u64 {
    let bytes = rmp_serde::to_vec(values).unwrap_or_default();
    let digest = blake3::hash(&bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_bytes()[..8]);
    // SQLite stores signed 64-bit integers; keep the hash in range.
    u64::from_le_bytes(first) & (i64::MAX as u64)
}

/// A projected row's value of a unique index; `None` if any column is
/// null (SQLite lets nulls repeat).
pub(crate) fn unique_key(
    meta: &crate::model::ModelMeta,
    state: &crate::state::RecordState,
    values: &[Projected],
    index: &UniqueIndex,
) -> Option<Vec<WireValue>> {
    index
        .fields
        .iter()
        .map(|i| match values.get(*i)? {
            Projected::Data => state
                .value(meta.fields.get(*i)?.name)
                .filter(|v| !v.is_null())
                .cloned(),
            Projected::Text(s) => Some(WireValue::String(Some(s.clone()))),
            Projected::Key(k) => Some(WireValue::I64(Some(*k))),
            Projected::Null => None,
        })
        .collect()
}

fn renamed(value: &str, id: Uuid) -> String {
    let tag = id.simple().to_string();
    format!("{value}~{}", &tag[..8])
}

enum Contender {
    InPlan(RecordKey),
    Holder(RecordKey),
}

impl Contender {
    fn key(&self) -> RecordKey {
        match self {
            Contender::InPlan(k) | Contender::Holder(k) => *k,
        }
    }
}

impl Planner<'_> {
    /// Settles the unique keys of the rows this wave shows for model `rank`.
    pub(super) fn settle_unique(
        &mut self,
        rank: Rank,
        wave: &[RecordKey],
        queue: &mut BTreeSet<RecordKey>,
    ) {
        let Some(indexes) = self.tables.get(rank).map(|t| &t.unique) else {
            return;
        };
        let wave: BTreeSet<RecordKey> = wave.iter().copied().collect();
        for (ix, index) in indexes.iter().enumerate() {
            // A rename can meet another key: go round until nothing moves.
            for _ in 0..4 {
                if !self.settle_index(rank, ix, index, &wave, queue) {
                    break;
                }
            }
        }
    }

    /// One round over one index; whether any row of the plan was put aside.
    fn settle_index(
        &mut self,
        rank: Rank,
        ix: usize,
        index: &super::UniqueIndex,
        wave: &BTreeSet<RecordKey>,
        queue: &mut BTreeSet<RecordKey>,
    ) -> bool {
        let mut groups: BTreeMap<u64, (Vec<WireValue>, Vec<RecordKey>, bool)> = BTreeMap::new();
        let Some(meta) = self.registry.at(rank).map(|d| d.meta()) else {
            return false;
        };
        for (key, d) in self.decisions.range(
            RecordKey {
                rank,
                id: Uuid::nil(),
            }..=RecordKey {
                rank,
                id: Uuid::max(),
            },
        ) {
            if d.presence != Presence::Present {
                continue;
            }
            let Some(values) = &d.values else { continue };
            let state = match self.input.changed.get(key) {
                Some(s) => s,
                None => match self.facts.rows.get(key) {
                    Some(Some(stored)) => &stored.state,
                    _ => continue,
                },
            };
            let Some(ukey) = unique_key(meta, state, values, index) else {
                continue;
            };
            let entry = groups
                .entry(super::key_hash(&ukey))
                .or_insert_with(|| (ukey, Vec::new(), false));
            entry.1.push(*key);
            entry.2 |= wave.contains(key);
        }
        let Some(desc) = self.registry.at(rank) else {
            return false;
        };
        let names: Vec<&'static str> = index
            .fields
            .iter()
            .filter_map(|i| desc.meta().fields.get(*i).map(|f| f.name))
            .collect();
        let mut moved = false;
        for (hash, (ukey, in_plan, touched)) in groups {
            if !touched {
                continue;
            }
            let Some(holders) = self.facts.holders.get(&(rank, ix, hash)) else {
                self.needs.holders.insert((rank, ix, hash), ukey);
                continue;
            };
            let mut contenders: Vec<Contender> =
                in_plan.iter().map(|k| Contender::InPlan(*k)).collect();
            for (_, id, values) in holders {
                let key = RecordKey { rank, id: *id };
                if *values != ukey
                    || self.decisions.contains_key(&key)
                    || self.input.fixed.contains_key(&key)
                {
                    continue;
                }
                contenders.push(Contender::Holder(key));
            }
            if contenders.len() < 2 {
                continue;
            }
            // The winner: newest unique fields, then the higher id.
            let mut ranked = Vec::with_capacity(contenders.len());
            let mut missing = false;
            for c in &contenders {
                let key = c.key();
                let clock = match (self.input.fixed.get(&key), self.state(key)) {
                    (_, Some(Some(state))) => contender_clock(state, &names),
                    (_, Some(None)) => None,
                    (_, None) => {
                        missing = true;
                        None
                    }
                };
                ranked.push((clock, key.id));
            }
            if missing {
                continue;
            }
            let Some(best) = ranked.iter().copied().max() else {
                continue;
            };
            for (c, rank_of) in contenders.iter().zip(&ranked) {
                if *rank_of == best {
                    continue;
                }
                match c {
                    Contender::Holder(key) => {
                        queue.insert(*key);
                    }
                    Contender::InPlan(key) => {
                        if self.input.fixed.contains_key(key) {
                            // The application's own row: its database took
                            // the write, so it holds the key; the others
                            // move aside.
                            continue;
                        }
                        self.put_aside(*key, index, hash, best, &names, queue);
                        moved = true;
                    }
                }
            }
        }
        moved
    }

    /// Shows a losing row renamed, or not at all.
    fn put_aside(
        &mut self,
        key: RecordKey,
        index: &super::UniqueIndex,
        hash: u64,
        winner: (Option<crate::clock::Timestamp>, Uuid),
        names: &[&'static str],
        queue: &mut BTreeSet<RecordKey>,
    ) {
        let was_aside = matches!(self.facts.rows.get(&key), Some(Some(s)) if s.aside);
        let loser_clock = match self.state(key) {
            Some(Some(state)) => contender_clock(state, names),
            _ => None,
        };
        let loser_writer = match self.state(key) {
            Some(Some(state)) => names.first().and_then(|n| state.field_writer(n)),
            _ => None,
        };
        let winner_key = RecordKey {
            rank: key.rank,
            id: winner.1,
        };
        let winner_writer = match self.state(winner_key) {
            Some(Some(state)) => names.first().and_then(|n| state.field_writer(n)),
            _ => None,
        };
        let current = match self.input.changed.get(&key) {
            Some(s) => Some(s.clone()),
            None => match self.facts.rows.get(&key) {
                Some(Some(stored)) => Some(stored.state.clone()),
                _ => None,
            },
        };
        let Some(d) = self.decisions.get_mut(&key) else {
            return;
        };
        let Some(values) = d.values.as_mut() else {
            return;
        };
        let text =
            index
                .fields
                .iter()
                .enumerate()
                .find_map(|(p, i)| match (values.get(*i), &current) {
                    (Some(Projected::Text(s)), _) => Some((p, *i, s.clone())),
                    (Some(Projected::Data), Some(state)) => {
                        match names.get(p).and_then(|n| state.value(n)) {
                            Some(WireValue::String(Some(s))) => Some((p, *i, s.clone())),
                            _ => None,
                        }
                    }
                    _ => None,
                });
        let field = text.as_ref().and_then(|(p, _, _)| names.get(*p).copied());
        let lost_value = text
            .as_ref()
            .map(|(_, _, s)| WireValue::String(Some(s.clone())));
        match text {
            Some((_, i, s)) => {
                values[i] = Projected::Text(renamed(&s, key.id));
            }
            None => {
                let old = d.key;
                d.presence = Presence::Collided;
                d.key = None;
                d.values = None;
                // Rows of the plan that took its key must look again.
                if let Some(old) = old
                    && let Some(referencing) = self.referencing.get(&(key.rank, old))
                {
                    queue.extend(referencing.iter().copied());
                }
            }
        }
        if let Some(d) = self.decisions.get_mut(&key) {
            d.aside = Some(hash);
        }
        if was_aside {
            return;
        }
        let (Some(loser_hlc), Some(winner_hlc)) = (loser_clock, winner.0) else {
            return;
        };
        let model = self.registry.at(key.rank).map_or("", |d| d.name());
        self.conflicts.push(NewConflict {
            kind: ConflictKind::Unique,
            model,
            record: key.id,
            field: field.map(str::to_owned),
            loser: Write {
                device: loser_writer.unwrap_or_default(),
                hlc: loser_hlc,
                value: lost_value,
            },
            winner: Some(Write {
                device: winner_writer.unwrap_or_default(),
                hlc: winner_hlc,
                value: Some(WireValue::Uuid(Some(winner.1))),
            }),
        });
    }

    /// Queues the rows that wanted a unique key this record held and no
    /// longer does.
    pub(super) fn queue_freed(&mut self, key: RecordKey, queue: &mut BTreeSet<RecordKey>) {
        if self.input.fixed.contains_key(&key) {
            return;
        }
        let Some(indexes) = self.tables.get(key.rank).map(|t| &t.unique) else {
            return;
        };
        if indexes.is_empty() {
            return;
        }
        let Some(d) = self.decisions.get(&key) else {
            return;
        };
        let (Presence::Present, Some(old_key)) = d.before else {
            return;
        };
        let new_values = (d.presence == Presence::Present)
            .then(|| d.values.clone())
            .flatten();
        let Some(meta) = self.registry.at(key.rank).map(|d| d.meta()) else {
            return;
        };
        let state = match self.input.changed.get(&key) {
            Some(s) => Some(s),
            None => match self.facts.rows.get(&key) {
                Some(Some(stored)) => Some(&stored.state),
                _ => None,
            },
        };
        let Some(old) = self.facts.old_unique.get(&(key.rank, old_key)) else {
            self.needs.old_unique.insert((key.rank, old_key));
            return;
        };
        let old = old.clone();
        for (index, old_values) in indexes.iter().zip(old) {
            if old_values.iter().any(WireValue::is_null) {
                continue;
            }
            let new = match (&new_values, state) {
                (Some(v), Some(state)) => unique_key(meta, state, v, index),
                _ => None,
            };
            if new.as_ref() != Some(&old_values) {
                self.queue_asides(key.rank, super::key_hash(&old_values), queue);
            }
        }
    }
}
