//! The receive path: changes and snapshot rows from peers are triaged, merged
//! into record states in memory, projected onto the application's tables,
//! and written in one transaction, a few statements per model.
//!
//! Every incoming change gets exactly one [`Outcome`], and each outcome has
//! one effect on the log, the vector, the report and the conflict log:
//!
//! | outcome | state | log (shared) | vector |
//! | --- | --- | --- | --- |
//! | applied, waiting, settled, collided | merged | appended | passes it |
//! | superseded | unchanged | appended | passes it |
//! | duplicate | unchanged | - | already past it |
//! | refused for good | unchanged, recorded once | - | passes it |
//! | held back (refused for now) | unchanged | - | stops before it |

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use uuid::Uuid;

use crate::change::{Change, EncodedChange, Op};
use crate::clock::Timestamp;
use crate::conflict::{ConflictKind, Write};
use crate::engine::{Engine, META_CLOCK};
use crate::error::EngineError;
use crate::merge::{self, Invalid, Merged, NewConflict, Site};
use crate::model::Ownership;
use crate::project::{Facts, Input, Presence, RecordKey};
use crate::protocol::{SnapshotCursor, SnapshotRow};
use crate::state::{OwnedState, RecordState, SharedImage, SharedState};
use crate::store;
use crate::trust::check::check_batch;
use crate::trust::seal::{Husk, Seal, SealProof, Skeleton};
use crate::vector::{Received, VersionVector};
use crate::write;

/// What became of one received change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Merged, and its record is shown.
    Applied,
    /// Merged; its record is not shown yet: it waits for a record that has
    /// not arrived (or is incomplete).
    Waiting,
    /// Merged; its record is not shown by rule: a record it needs is gone.
    Settled,
    /// Merged; its record lost a unique collision and is shown renamed, or
    /// not at all.
    Collided,
    /// Older than the state held: nothing to change.
    Superseded,
    /// Received before.
    Duplicate,
    /// Refused for good: it can never apply. The vector passes it.
    Refused(RejectReason),
    /// Refused for now: the vector stops before it, and it is fetched again.
    HeldBack(RejectReason),
}

/// What became of the change `seq` of `origin`.
pub(crate) type ChangeOutcome = (Uuid, u64, Outcome);

/// Why an incoming change was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectReason {
    /// The model is not registered here (for now: a newer version of the
    /// application may know it).
    UnknownModel,
    /// Its timestamp is beyond the drift bound (for now: time will tell).
    ClockAhead(String),
    /// A device-owned record changed by a device that does not own it (for
    /// good).
    NotOwner {
        /// The record's owner.
        owner: Uuid,
    },
    /// The record does not fit the model (for good).
    Malformed(String),
    /// Not proven to be its device's (no valid seal, a device not or no
    /// longer in the library): the vector stops before it, and a peer that
    /// holds the genuine change sends it.
    Unverified(String),
}

impl RejectReason {
    /// Whether the change can never apply (rather than not yet).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            RejectReason::NotOwner { .. } | RejectReason::Malformed(_)
        )
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RejectReason::UnknownModel => f.write_str("model unknown here"),
            RejectReason::ClockAhead(why) => write!(f, "clock ahead: {why}"),
            RejectReason::NotOwner { owner } => write!(f, "not the owner (owned by {owner})"),
            RejectReason::Malformed(why) => write!(f, "malformed: {why}"),
            RejectReason::Unverified(why) => write!(f, "unverified: {why}"),
        }
    }
}

/// A refused change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The change's origin.
    pub origin: Uuid,
    /// Its number (0 for a snapshot row).
    pub seq: u64,
    /// The model it named.
    pub model: String,
    /// Why.
    pub reason: RejectReason,
}

/// What applying a batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Changes (or snapshot rows) merged whose record is shown.
    pub applied: u64,
    /// Merged; the record waits for another before it is shown.
    pub waiting: u64,
    /// Merged; not shown by rule (a record it needs is gone).
    pub settled: u64,
    /// Merged; the record lost a unique collision.
    pub collided: u64,
    /// Older than what is held.
    pub superseded: u64,
    /// Received before.
    pub duplicates: u64,
    /// Sent by a peer ahead of numbers of their origin not held here yet
    /// (a push overtaken by a later one, a relay ahead of the origin): not
    /// taken; the pull that follows brings them in order.
    pub early: u64,
    /// Entries added to the conflict log.
    pub conflicts: u64,
    /// Refused for good.
    pub rejected: Vec<Rejection>,
    /// Refused for now.
    pub held_back: Vec<Rejection>,
}

impl ApplyReport {
    fn count(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Applied => self.applied += 1,
            Outcome::Waiting => self.waiting += 1,
            Outcome::Settled => self.settled += 1,
            Outcome::Collided => self.collided += 1,
            Outcome::Superseded => self.superseded += 1,
            Outcome::Duplicate => self.duplicates += 1,
            Outcome::Refused(_) | Outcome::HeldBack(_) => {}
        }
    }

    /// Changes that took effect, in any form (merged into their record).
    pub fn merged(&self) -> u64 {
        self.applied + self.waiting + self.settled + self.collided
    }
}

/// Wall time of the phases of a received batch (`receive`) or a local
/// commit (`commit`), reported through `tracing` (debug) and the
/// `syncable_apply_phase_seconds` histogram: where the time goes, without a
/// profiler.
pub(crate) struct Phases {
    last: std::time::Instant,
    spent: Vec<(&'static str, std::time::Duration)>,
}

impl Phases {
    pub(crate) fn start() -> Self {
        Self {
            last: std::time::Instant::now(),
            spent: Vec::new(),
        }
    }

    pub(crate) fn mark(&mut self, phase: &'static str) {
        let now = std::time::Instant::now();
        self.spent.push((phase, now - self.last));
        self.last = now;
    }

    pub(crate) fn report(&self, what: &'static str, items: usize) {
        for (phase, d) in &self.spent {
            metrics::histogram!("syncable_apply_phase_seconds", "what" => what, "phase" => *phase)
                .record(d.as_secs_f64());
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            let phases: Vec<String> = self
                .spent
                .iter()
                .map(|(p, d)| format!("{p}={}us", d.as_micros()))
                .collect();
            tracing::debug!(what, items, phases = %phases.join(" "), "timings");
        }
    }
}

/// The highest change number the engine accepts: what SQLite's signed
/// 64-bit integers hold.
const MAX_SEQ: u64 = i64::MAX as u64;

/// Changes of one origin, with the sender's claim.
#[derive(Debug, Clone)]
pub(crate) struct InBatch {
    pub(crate) origin: Uuid,
    pub(crate) device: Uuid,
    /// The sender holds every change of `origin` in `(after, upto]` and this
    /// batch carries what the receiver lacks of them.
    pub(crate) claim: Option<(u64, u64)>,
    pub(crate) changes: Vec<EncodedChange>,
    /// The changes decoded, one for each of `changes`, when the application
    /// handed them over itself ([`Engine::apply`]): they are not decoded
    /// again. Empty for changes from a peer.
    pub(crate) handed: Vec<Change>,
    /// The seals that prove the changes and the claim; `None` for changes
    /// the application hands over itself ([`Engine::apply`]).
    pub(crate) proofs: Option<Vec<SealProof>>,
}

/// What a snapshot page does besides its rows.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotStep {
    /// Where the backfill resumes; `None` after the last page.
    pub(crate) next: Option<SnapshotCursor>,
    /// The vector the snapshot reflects, adopted after the last page.
    pub(crate) vector: VersionVector,
    /// Ranges above it the snapshot's rows carry and no change can bring
    /// (pruned by its server), adopted with it.
    pub(crate) pruned: Vec<(Uuid, u64, u64)>,
}

/// What to receive.
#[derive(Debug, Default)]
pub(crate) struct Incoming {
    pub(crate) batches: Vec<InBatch>,
    /// The batches were pushed (as written or relayed), not served by a
    /// pull: each must continue what is held of its origin, or it is not
    /// taken (see [`early`]). A pull's answer starts at the requester's
    /// vector, and may carry a record's newer state past it on purpose.
    pub(crate) pushed: bool,
    pub(crate) rows: Vec<SnapshotRow>,
    pub(crate) snapshot: Option<SnapshotStep>,
    /// Held rows being retried (released when they apply).
    pub(crate) retried: Vec<store::HeldRow>,
}

enum Item {
    Change {
        change: Change,
        bytes: EncodedChange,
    },
    Row {
        model: String,
        record: Uuid,
        state: RecordState,
    },
}

/// Whether a pushed batch starts beyond the numbers of its origin held here
/// (`received`) or claimed by the batches before it (`claimed`, the highest
/// claim per origin so far). Such a batch is not taken: pushes are taken in
/// order, and the pull that follows brings what was skipped. Otherwise a
/// push overtaken by a later one, or a relay ahead of the origin, leaves
/// numbers held past a gap that may never fill (the gap's only holder lost
/// them in a power loss), which no vector, catch-up or pruning accounts
/// for.
fn early(batch: &InBatch, own: Uuid, received: &Received, claimed: &BTreeMap<Uuid, u64>) -> bool {
    let Some((after, _)) = batch.claim else {
        return false;
    };
    batch.proofs.is_some()
        && batch.origin != own
        && after > 0
        && !received.contains(batch.origin, after)
        && claimed.get(&batch.origin).is_none_or(|upto| *upto < after)
}

/// A batch decoded and checked against its seals, before the writer is
/// taken.
#[derive(Default)]
struct Prepared {
    /// The changes that decode, with their bytes (which move here from the
    /// batch: nothing below reads them from it).
    decoded: Vec<(Change, EncodedChange)>,
    /// Why each change that does not decode does not.
    undecoded: Vec<String>,
    /// How far its seals prove it (`None` for changes the application
    /// handed over).
    proven: Option<crate::trust::check::Proven>,
}

/// How far a batch's claim may move the received set.
struct ClaimTrack {
    valid: bool,
    held_back: BTreeSet<u64>,
}

impl Engine {
    /// Applies changes received from peers (in any order, any number of
    /// times): merged per field (shared) or by owner state (device-owned),
    /// shown once their parents are here, refused and reported when they
    /// cannot apply. Each change's number counts as received once it took
    /// effect or was refused for good.
    pub async fn apply(&self, changes: Vec<Change>) -> Result<ApplyReport, EngineError> {
        type Handed = (Vec<EncodedChange>, Vec<Change>);
        let mut by_origin: BTreeMap<(Uuid, Uuid), Handed> = BTreeMap::new();
        for c in changes {
            let bytes = c
                .encode()
                .map_err(|e| EngineError::Malformed(e.to_string()))?;
            let slot = by_origin.entry((c.origin, c.device)).or_default();
            slot.0.push(bytes);
            slot.1.push(c);
        }
        let batches = by_origin
            .into_iter()
            .map(|((origin, device), (changes, handed))| InBatch {
                origin,
                device,
                claim: None,
                changes,
                handed,
                proofs: None,
            })
            .collect();
        Ok(self
            .receive(Incoming {
                batches,
                ..Incoming::default()
            })
            .await?
            .0)
    }

    /// Decodes a batch's changes and checks them against its seals: what
    /// its triage needs that does not depend on what is held here.
    fn prepare(&self, batch: &mut InBatch) -> Prepared {
        let mut out = Prepared {
            decoded: Vec::with_capacity(batch.changes.len()),
            ..Prepared::default()
        };
        // Changes the application handed over come with their decoded form
        // (the bytes were encoded from it).
        let handed = std::mem::take(&mut batch.handed);
        let mut handed = (handed.len() == batch.changes.len()).then(|| handed.into_iter());
        for bytes in std::mem::take(&mut batch.changes) {
            let change = match handed.as_mut().and_then(Iterator::next) {
                Some(c) => Ok(c),
                None => bytes.decode(),
            };
            match change {
                Ok(c) => out.decoded.push((c, bytes)),
                Err(e) => out.undecoded.push(e.to_string()),
            }
        }
        // A batch from a peer is believed as far as its seals prove.
        out.proven = batch.proofs.as_ref().map(|proofs| {
            let standing = self.memory().membership.standing(batch.device);
            check_batch(
                batch.origin,
                batch.device,
                batch.claim,
                &out.decoded,
                proofs,
                &standing,
            )
        });
        out
    }

    /// The receive path. Returns the report and each change's outcome.
    #[tracing::instrument(skip_all, fields(device = %self.device()))]
    pub(crate) async fn receive(
        &self,
        incoming: Incoming,
    ) -> Result<(ApplyReport, Vec<ChangeOutcome>), EngineError> {
        let (report, outcomes, lost_to_own_deletes) = self.receive_batch(incoming).await?;
        if !lost_to_own_deletes.is_empty() {
            // Once the writer the batch took is free again.
            let mut tx = self.begin().await?;
            for key in &lost_to_own_deletes {
                tx.delete_again(key.rank, key.id)?;
            }
            tx.commit().await?;
            tracing::warn!(
                records = lost_to_own_deletes.len(),
                "writes of this device's that lost to a delete it had lost: the delete written again"
            );
        }
        Ok((report, outcomes))
    }

    /// Applies one incoming batch in one transaction; also returns the
    /// records this device owns whose write here lost to a delete of its
    /// own that it had lost (see `receive`).
    async fn receive_batch(
        &self,
        mut incoming: Incoming,
    ) -> Result<(ApplyReport, Vec<ChangeOutcome>, Vec<RecordKey>), EngineError> {
        let started = std::time::Instant::now();
        let received_count: usize = incoming.batches.iter().map(|b| b.changes.len()).sum();
        let mut phases = Phases::start();
        metrics::counter!("syncable_changes_received_total").increment(received_count as u64);
        if let Some(report) = self.already_held(&incoming) {
            // Everything is known here: no transaction, no write.
            return Ok((report, Vec::new(), Vec::new()));
        }
        // Decoding the changes and checking their seals read nothing the
        // writer guards: they run while the transaction begins on the
        // connection's thread.
        let (w, mut prepared) = futures::join!(self.write_tx(), async {
            incoming
                .batches
                .iter_mut()
                .map(|b| self.prepare(b))
                .collect::<Vec<_>>()
        });
        let w = w?;
        phases.mark("begin");
        let registry = &self.inner.registry;
        let now = self.now();
        let (mut received, known_origins, pruned) = {
            let m = self.memory();
            (m.received.clone(), m.origins.clone(), m.pruned.clone())
        };
        let received_before = received.clone();
        // Snapshot rows held back here count in the vector before their
        // state is merged: while one of a record is held (rows being
        // retried still are, until this batch releases them), a number of
        // that record's writes in the vector does not prove its state was
        // taken. (A number is one record's write,
        // so rows of other records held back prove nothing either way; the
        // check was once for any held row, which let a collected record
        // come back from a snapshot of a server that lost its delete while
        // the device held back an unrelated row: the simulation, 4 devices,
        // seed 638 of every fault.)
        //
        // Nor does it for a record the running backfill forgot (its state
        // came in pages of a snapshot given up): the state was here, not
        // deleted, until forgotten, and the new snapshot brings it again if
        // its server holds it. (It was refused as deleted and collected, and
        // the rows that referred to it waited for ever: the simulation, 3
        // devices, 600 operations, seed 33 of every fault.)
        let (any_held, any_forgotten) = {
            let m = self.memory();
            (m.held_rows > 0, m.forgotten)
        };
        let mut unproven: BTreeSet<(String, Uuid)> = if any_held {
            store::held_records(&w.tx).await?.into_iter().collect()
        } else {
            BTreeSet::new()
        };
        if any_forgotten {
            unproven.extend(store::forgotten_records(&w.tx).await?);
        }
        // Whether the vector proves what this device took of a record.
        let vector_proves = |model: &str, record: Uuid| {
            unproven.is_empty() || !unproven.contains(&(model.to_owned(), record))
        };
        let mut report = ApplyReport::default();
        let mut outcomes: Vec<(Uuid, u64, Outcome)> = Vec::new();
        let mut items: Vec<Item> = Vec::new();
        let mut claims: Vec<ClaimTrack> = Vec::new();
        let mut final_seqs: Vec<(Uuid, u64)> = Vec::new();
        let mut new_origins: BTreeMap<Uuid, Uuid> = BTreeMap::new();
        let mut in_batch: BTreeSet<(Uuid, u64)> = BTreeSet::new();
        let mut conflicts: Vec<NewConflict> = Vec::new();
        let mut held_rows: Vec<store::HeldRow> = Vec::new();
        // Refused for good, logged all the same: a relay forwards what it
        // received, and each receiver decides for itself.
        let mut refused_log: Vec<(Uuid, u64, EncodedChange)> = Vec::new();
        // Husks a claim passes only if their record's newer state is here.
        let mut husk_checks: Vec<(usize, Uuid, Uuid, Husk)> = Vec::new();
        // Husks of device-owned changes superseded here.
        let mut husks: Vec<(Uuid, Husk)> = Vec::new();
        // Deletes proven by their seals in this answer, new or not, by
        // (device, model, record): each supersedes every write of its
        // device to its record.
        let mut proven_deletes: BTreeSet<(Uuid, String, Uuid)> = BTreeSet::new();
        let mut learned: Vec<(Seal, Skeleton)> = Vec::new();
        let mut unverified = 0u64;
        let mut claims_refused = 0u64;
        let mut claimed: BTreeMap<Uuid, u64> = BTreeMap::new();
        {
            let clock = self.clock();
            for (batch_ix, batch) in incoming.batches.iter_mut().enumerate() {
                // A claim whose numbers do not fit what the store holds
                // (SQLite's signed 64-bit integers) proves nothing.
                let mut track = ClaimTrack {
                    valid: batch.claim.is_some_and(|(a, u)| a <= u && u <= MAX_SEQ),
                    held_back: BTreeSet::new(),
                };
                let Prepared {
                    decoded,
                    undecoded,
                    proven,
                } = prepared
                    .get_mut(batch_ix)
                    .map(std::mem::take)
                    .unwrap_or_default();
                if incoming.pushed && early(batch, self.inner.origin, &received, &claimed) {
                    let n = (decoded.len() + undecoded.len()) as u64;
                    report.early += n;
                    metrics::counter!("syncable_changes_early_total").increment(n);
                    track.valid = false;
                    claims.push(track);
                    continue;
                }
                if let Some((_, upto)) = batch.claim {
                    let slot = claimed.entry(batch.origin).or_default();
                    *slot = (*slot).max(upto);
                }
                for e in undecoded {
                    track.valid = false;
                    report.rejected.push(Rejection {
                        origin: batch.origin,
                        seq: 0,
                        model: String::new(),
                        reason: RejectReason::Malformed(format!("does not decode: {e}")),
                    });
                }
                if let Some(p) = &proven {
                    if let Some(why) = &p.refused {
                        tracing::warn!(origin = %batch.origin, device = %batch.device, %why, "a batch its seals do not prove");
                    }
                    if !p.claim_proven {
                        track.valid = false;
                        if batch.claim.is_some_and(|(a, u)| u > a) {
                            claims_refused += 1;
                        }
                    }
                    if let Some(cut) = p.cut {
                        // The claim stops at the removal.
                        if batch.claim.is_some_and(|(_, u)| u > cut) {
                            track.valid = false;
                        }
                    }
                }
                for (change, bytes) in decoded {
                    let (origin, seq) = (change.origin, change.seq);
                    let in_claim = batch.claim.is_none_or(|(a, u)| seq > a && seq <= u);
                    if origin != batch.origin || change.device != batch.device || !in_claim {
                        track.valid = false;
                        let reason = RejectReason::Malformed(
                            "a change outside its batch's origin or claim".into(),
                        );
                        report.rejected.push(Rejection {
                            origin,
                            seq,
                            model: change.model.clone(),
                            reason,
                        });
                        continue;
                    }
                    if let Some(why) = proven.as_ref().and_then(|p| p.refusal(seq)) {
                        unverified += 1;
                        let reason = RejectReason::Unverified(why);
                        track.held_back.insert(seq);
                        outcomes.push((origin, seq, Outcome::HeldBack(reason.clone())));
                        report.held_back.push(Rejection {
                            origin,
                            seq,
                            model: change.model.clone(),
                            reason,
                        });
                        continue;
                    }
                    // A delete, by (device, model, record), for the husk check.
                    let delete = matches!(change.op, Op::Delete { .. })
                        .then(|| (change.device, change.model.clone(), change.id));
                    if origin == self.inner.origin
                        || received.contains(origin, seq)
                        || !in_batch.insert((origin, seq))
                    {
                        // Taken before: its effect is here (or collected).
                        proven_deletes.extend(delete);
                        report.duplicates += 1;
                        outcomes.push((origin, seq, Outcome::Duplicate));
                        continue;
                    }
                    let verdict = self.triage(&change, &known_origins, &new_origins, &clock, now);
                    match verdict {
                        Ok(()) => {
                            new_origins.entry(origin).or_insert(change.device);
                            // Taken now (a delete held back is not).
                            proven_deletes.extend(delete);
                            items.push(Item::Change { change, bytes });
                        }
                        Err(reason) if reason.is_final() => {
                            final_seqs.push((origin, seq));
                            if proven.is_some() {
                                // Served on as it came: its device is known.
                                new_origins.entry(origin).or_insert(change.device);
                                refused_log.push((origin, seq, bytes));
                            }
                            outcomes.push((origin, seq, Outcome::Refused(reason.clone())));
                            report.rejected.push(Rejection {
                                origin,
                                seq,
                                model: change.model.clone(),
                                reason,
                            });
                        }
                        Err(reason) => {
                            track.held_back.insert(seq);
                            outcomes.push((origin, seq, Outcome::HeldBack(reason.clone())));
                            report.held_back.push(Rejection {
                                origin,
                                seq,
                                model: change.model.clone(),
                                reason,
                            });
                        }
                    }
                }
                if let Some(p) = proven
                    && p.refused.is_none()
                {
                    for husk in p.husks {
                        if p.cut.is_some_and(|c| husk.seq > c) {
                            track.held_back.insert(husk.seq);
                            continue;
                        }
                        husk_checks.push((batch_ix, batch.origin, batch.device, husk));
                    }
                    learned.extend(p.learned);
                }
                claims.push(track);
            }
            for row in &incoming.rows {
                match self.triage_row(row, &clock, now) {
                    Ok(item) => items.push(item),
                    Err((model, record, reason)) if !reason.is_final() => {
                        held_rows.push(store::HeldRow {
                            model: model.clone(),
                            record,
                            row: rmp_serde::to_vec(row).unwrap_or_default(),
                            reason: reason.to_string(),
                        });
                        report.held_back.push(Rejection {
                            origin: Uuid::nil(),
                            seq: 0,
                            model,
                            reason,
                        });
                    }
                    Err((model, _, reason)) => report.rejected.push(Rejection {
                        origin: Uuid::nil(),
                        seq: 0,
                        model,
                        reason,
                    }),
                }
            }
        }

        phases.mark("triage");
        // Merge, in memory.
        let mut keys: BTreeSet<RecordKey> = items.iter().filter_map(|i| self.key_of(i)).collect();
        keys.extend(husk_checks.iter().filter_map(|(_, _, _, h)| {
            Some(RecordKey {
                rank: registry.rank(&h.model)?,
                id: h.record,
            })
        }));
        // The rows, their waiters and their tables' highest keys, which a
        // plan that shows a record needs: one round trip.
        let max_keys: Vec<(usize, bool)> = keys
            .iter()
            .map(|k| k.rank)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|rank| {
                let auto = self.inner.tables.get(rank).is_some_and(|t| t.autoincrement);
                (rank, auto)
            })
            .collect();
        let loaded = store::load_for_plan(&w.tx, registry, &keys, &max_keys).await?;
        let mut facts = Facts {
            rows: loaded.rows,
            waiters: loaded.waiters,
            max_key: loaded.max_key,
            ..Facts::default()
        };
        phases.mark("load");
        let mut working: BTreeMap<RecordKey, Option<RecordState>> = keys
            .iter()
            .map(|k| {
                let state = facts
                    .rows
                    .get(k)
                    .and_then(|r| r.as_ref())
                    .map(|r| r.state.clone());
                (*k, state)
            })
            .collect();
        let mut merged_items: Vec<(usize, RecordKey, Merged)> = Vec::new();
        let publish = self.inner.applied.receiver_count() > 0;
        // What subscribers are sent of the shared changes merged, by item.
        let mut whole: BTreeMap<usize, Change> = BTreeMap::new();
        {
            let mut clock = self.clock();
            for (ix, item) in items.iter_mut().enumerate() {
                let Some(key) = self.key_of(item) else {
                    continue;
                };
                let clocks = item_clocks(item);
                let Some(desc) = registry.at(key.rank) else {
                    continue;
                };
                let owner_field = desc.meta().owner_field().map(|f| f.name);
                let site = Site {
                    model: desc.name(),
                    record: key.id,
                };
                let slot = working.entry(key).or_default();
                let result = match item {
                    Item::Change { change, bytes, .. } => match desc.meta().ownership {
                        Ownership::Shared
                            if vector_proves(desc.name(), key.id)
                                && lost_to_collected(slot, change, &received_before) =>
                        {
                            conflicts.push(lost_write(site, change));
                            Ok(Merged::Superseded)
                        }
                        Ownership::Shared => {
                            let mut state = match slot.take() {
                                Some(RecordState::Shared(s)) => s,
                                Some(other) => {
                                    *slot = Some(other);
                                    return Err(EngineError::Malformed(
                                        "a shared record stored as device-owned".into(),
                                    ));
                                }
                                None => Default::default(),
                            };
                            if publish {
                                // Subscribers see the change whole; the
                                // merge takes its values.
                                whole.insert(ix, change.clone());
                            }
                            let m = merge::absorb_shared_change(
                                &mut state,
                                change,
                                site,
                                &mut conflicts,
                            );
                            *slot = Some(RecordState::Shared(state));
                            Ok(m)
                        }
                        Ownership::DeviceOwned => {
                            let old = match slot.as_ref() {
                                Some(RecordState::Owned(o)) => Some(o.clone()),
                                _ => None,
                            };
                            let m = if vector_proves(desc.name(), key.id)
                                && lost_to_collected(slot, change, &received_before)
                            {
                                conflicts.push(lost_write(site, change));
                                Ok(Merged::Superseded)
                            } else {
                                merge::merge_state(
                                    slot,
                                    RecordState::Owned(OwnedState {
                                        change: change.clone(),
                                        bytes: bytes.clone(),
                                    }),
                                    owner_field,
                                    site,
                                    &mut conflicts,
                                )
                            };
                            // What no longer stands here as a state is kept
                            // as a husk, to prove the hole in a catch-up.
                            match (&m, old) {
                                (Ok(Merged::Changed), Some(o)) => husks.push((
                                    o.change.origin,
                                    Husk::of(&o.change, o.bytes.as_bytes()),
                                )),
                                (Ok(Merged::Superseded), _) => {
                                    husks.push((change.origin, Husk::of(change, bytes.as_bytes())))
                                }
                                _ => {}
                            }
                            m
                        }
                    },
                    Item::Row {
                        state: RecordState::Owned(o),
                        ..
                    } if vector_proves(desc.name(), key.id)
                        && lost_to_collected(slot, &o.change, &received_before) =>
                    {
                        conflicts.push(lost_write(site, &o.change));
                        Ok(Merged::Superseded)
                    }
                    Item::Row { state, .. }
                        if vector_proves(desc.name(), key.id)
                            && taken_and_gone(slot, state, &received_before) =>
                    {
                        Ok(Merged::Superseded)
                    }
                    Item::Row { state, .. } => {
                        let old = match slot.as_ref() {
                            Some(RecordState::Owned(o)) => Some(o.clone()),
                            _ => None,
                        };
                        // Nothing reads the row's state after its merge.
                        let state =
                            std::mem::replace(state, RecordState::Shared(SharedState::default()));
                        let m = merge::merge_state(slot, state, owner_field, site, &mut conflicts);
                        // A device-owned change a row replaces is kept as a
                        // husk, as one a change replaces is: its number is
                        // held here, and a catch-up must prove the hole (3
                        // devices, seed 56 of every fault: a writer's update
                        // made after a power loss took its delete, replaced
                        // by that delete from a peer's snapshot).
                        if let (Ok(Merged::Changed), Some(o), Some(RecordState::Owned(now))) =
                            (&m, old, slot.as_ref())
                            && (now.change.origin, now.change.seq)
                                != (o.change.origin, o.change.seq)
                        {
                            husks.push((o.change.origin, Husk::of(&o.change, o.bytes.as_bytes())));
                        }
                        m
                    }
                };
                match result {
                    Ok(m) => {
                        for ts in clocks {
                            // Checked in triage: within the bound.
                            let _ = clock.observe(&ts, now);
                        }
                        merged_items.push((ix, key, m));
                    }
                    Err(invalid) => {
                        let reason = match invalid {
                            Invalid::NotOwner { owner } => RejectReason::NotOwner { owner },
                            Invalid::Malformed(why) => RejectReason::Malformed(why),
                        };
                        if let Item::Change { change, .. } = item {
                            if let RejectReason::NotOwner { .. } = reason {
                                conflicts.push(NewConflict {
                                    kind: ConflictKind::NotOwner,
                                    model: desc.name(),
                                    record: key.id,
                                    field: None,
                                    loser: Write {
                                        device: change.device,
                                        hlc: change.hlc,
                                        value: None,
                                    },
                                    winner: None,
                                });
                            }
                            final_seqs.push((change.origin, change.seq));
                            outcomes.push((
                                change.origin,
                                change.seq,
                                Outcome::Refused(reason.clone()),
                            ));
                            report.rejected.push(Rejection {
                                origin: change.origin,
                                seq: change.seq,
                                model: change.model.clone(),
                                reason,
                            });
                        } else {
                            report.rejected.push(Rejection {
                                origin: Uuid::nil(),
                                seq: 0,
                                model: desc.name().to_owned(),
                                reason,
                            });
                        }
                    }
                }
            }
        }
        // A husk lets a claim pass its number only if the record's newer
        // state, by the same device, is here.
        for (batch_ix, origin, device, husk) in husk_checks {
            let newer = registry
                .rank(&husk.model)
                .and_then(|rank| {
                    working.get(&RecordKey {
                        rank,
                        id: husk.record,
                    })
                })
                .and_then(|s| s.as_ref())
                .is_some_and(|s| match s {
                    // As `OwnedState::beats` orders them: a delete
                    // supersedes any write, whatever its clock.
                    RecordState::Owned(o) => {
                        o.change.device == device && (o.is_delete() || o.change.hlc > husk.hlc)
                    }
                    RecordState::Shared(_) => false,
                });
            // Or a delete of its record by the same device, proven in this
            // answer and taken, now or before: a record whose tombstone was
            // collected here has no state to show for it.
            let newer =
                newer || proven_deletes.contains(&(device, husk.model.clone(), husk.record));
            if newer {
                husks.push((origin, husk));
            } else if let Some(track) = claims.get_mut(batch_ix) {
                track.held_back.insert(husk.seq);
                report.held_back.push(Rejection {
                    origin,
                    seq: husk.seq,
                    model: husk.model.clone(),
                    reason: RejectReason::Unverified(
                        "a change left out as superseded, whose newer state is not here".into(),
                    ),
                });
            }
        }
        // Records a change brings here for the first time while a resync
        // (or a backfill, which settles as one) runs, after its snapshot
        // started: they join those it settles. A record whose every write
        // the snapshot's vector covers, and which no page brought, was
        // deleted on its server and collected, and this device, which
        // lost the delete (a power loss), took the record's creation again
        // from a peer that still serves it (the simulation, 3 devices,
        // seed 472 of every fault). One a later page brings is struck, as
        // any; one with a write the vector lacks is kept. Snapshot rows
        // held back and released now are not among them: their page
        // brought them, and struck them then (taken for changes, they were
        // dropped when the last page did not bring them again: the
        // simulation, 4 devices, seed 183 of every fault). Nor are records
        // an earlier page brought as a row held back (its clock ahead), not
        // shown yet when the change came: their page brought them too
        // (settled away, the record was dropped as deleted on its server,
        // which held it, and the tombstone went on to the other devices
        // from here: the simulation, 4 devices, seed 994 of every fault).
        let settling = incoming.snapshot.is_none() && incoming.retried.is_empty() && {
            let m = self.memory();
            m.resyncing && m.backfill != crate::snapshot::Backfill::Done
        };
        let mut arrived: Vec<RecordKey> = if settling {
            working
                .iter()
                .filter(|(k, state)| {
                    state.as_ref().is_some_and(|s| !s.is_deleted())
                        && facts.rows.get(k).is_none_or(|r| r.is_none())
                })
                .map(|(k, _)| *k)
                .collect()
        } else {
            Vec::new()
        };
        if !arrived.is_empty() && any_held {
            let paged: BTreeSet<(String, Uuid)> = store::held_records_paged(&w.tx)
                .await?
                .into_iter()
                .collect();
            arrived.retain(|k| {
                registry
                    .at(k.rank)
                    .is_none_or(|d| !paged.contains(&(d.name().to_owned(), k.id)))
            });
        }
        // A write of this device's to a record it owns that loses to a
        // delete of its own, of an earlier incarnation, older by its clock:
        // the delete was lost here (a power loss), the write made after it,
        // and devices that collected the delete's tombstone since took the
        // write and show the record for ever (the simulation, 3 devices,
        // 600 operations, seed 301 of every fault). The delete is written
        // again, under a new number, once this batch is in. A write whose
        // clock is behind the delete's (the clock went back with the
        // database) is not told from one the delete replaced, and is left
        // as it is: written again for those too, the extra deletes broke
        // other runs (seeds 21 and 22), where a device took a write chained
        // through a husk that another refused.
        let me = self.device();
        let lost_to_own_deletes: Vec<RecordKey> = working
            .iter()
            .filter(|(k, state)| {
                let (Some(RecordState::Owned(new)), Some(Some(stored))) =
                    (state.as_ref(), facts.rows.get(k))
                else {
                    return false;
                };
                let RecordState::Owned(old) = &stored.state else {
                    return false;
                };
                new.is_delete()
                    && new.change.device == me
                    && !old.is_delete()
                    && old.change.device == me
                    && new.change.origin != old.change.origin
                    && new.change.hlc < old.change.hlc
            })
            .map(|(k, _)| *k)
            .collect();
        let changed: BTreeMap<RecordKey, RecordState> = working
            .into_iter()
            .filter_map(|(k, state)| {
                let state = state?;
                let stored = facts
                    .rows
                    .get(&k)
                    .and_then(|r| r.as_ref())
                    .map(|r| &r.state);
                (stored != Some(&state)).then_some((k, state))
            })
            .collect();

        phases.mark("merge");
        // Project, in memory, loading what the plan asks for.
        let input = Input {
            changed,
            ..Input::default()
        };
        let projection =
            write::project(&w.tx, registry, &self.inner.tables, &input, &mut facts).await?;
        phases.mark("plan");
        let mut writes = write::build(
            registry,
            &self.inner.tables,
            input.changed,
            facts,
            projection,
        )?;
        writes.conflicts.extend(conflicts);
        phases.mark("build");

        // Outcomes, log entries, the received set.
        let mut applied_changes: Vec<Change> = Vec::new();
        // Per writing device, the newest clock applied: commit-to-applied.
        let mut newest: BTreeMap<Uuid, u64> = BTreeMap::new();
        for (ix, key, m) in &merged_items {
            let shown = writes.shown.get(key).copied();
            let outcome = match m {
                Merged::Superseded => Outcome::Superseded,
                Merged::Changed => match shown {
                    Some(Presence::Present) | Some(Presence::Deleted) | None => Outcome::Applied,
                    Some(Presence::Waiting) | Some(Presence::Refused) | Some(Presence::Absent) => {
                        Outcome::Waiting
                    }
                    Some(Presence::Hidden) => Outcome::Settled,
                    Some(Presence::Collided) => Outcome::Collided,
                },
            };
            let outcome =
                if outcome == Outcome::Applied && writes.asides.iter().any(|(k, _)| k == key) {
                    Outcome::Collided
                } else {
                    outcome
                };
            report.count(&outcome);
            if let Item::Change { change, bytes, .. } = &items[*ix] {
                // Numbers pruned here (at or below the floor, or in a
                // range pruned above it) are never served again (a peer
                // that needs them resyncs): not logged.
                if registry.at(key.rank).map(|d| d.meta().ownership) == Some(Ownership::Shared)
                    && !pruned.contains(change.origin, change.seq)
                {
                    writes.log.push((change.origin, change.seq, bytes.clone()));
                }
                if *m == Merged::Changed {
                    let at = change.hlc.get_time().to_duration().as_millis() as u64;
                    let slot = newest.entry(change.device).or_default();
                    *slot = (*slot).max(at);
                    if publish {
                        applied_changes.push(whole.remove(ix).unwrap_or_else(|| change.clone()));
                    }
                }
                outcomes.push((change.origin, change.seq, outcome));
            }
        }
        let mut touched_origins: BTreeSet<Uuid> = BTreeSet::new();
        for (batch, track) in incoming.batches.iter().zip(&claims) {
            touched_origins.insert(batch.origin);
            if let (true, Some((after, upto))) = (track.valid, batch.claim) {
                // A claim can pass an origin whose every change here was left
                // out (husks) or refused: its device is learned all the same,
                // or this device could not serve that origin's numbers on.
                if upto > after {
                    new_origins.entry(batch.origin).or_insert(batch.device);
                }
                let mut start = after.saturating_add(1);
                for held in &track.held_back {
                    received.insert(batch.origin, start, held.saturating_sub(1));
                    start = held.saturating_add(1);
                }
                received.insert(batch.origin, start, upto);
            }
        }
        for item in &items {
            if let Item::Change { change, .. } = item {
                received.insert(change.origin, change.seq, change.seq);
                touched_origins.insert(change.origin);
            }
        }
        for (origin, seq) in &final_seqs {
            // A number that does not fit names nothing to skip.
            if *seq <= MAX_SEQ {
                received.insert(*origin, *seq, *seq);
                touched_origins.insert(*origin);
            }
        }
        if let Some(step) = &incoming.snapshot
            && step.next.is_none()
        {
            // The last page: the snapshot's vector is held now. Its changes
            // came as states and cannot be served as changes: a peer that
            // lacks them must resync from a snapshot too.
            for (origin, seq) in step.vector.iter() {
                if origin != self.inner.origin {
                    received.insert(origin, 1, seq);
                    touched_origins.insert(origin);
                }
            }
            for (origin, start, end) in step.pruned.iter().take(crate::protocol::MAX_AHEAD) {
                if *origin != self.inner.origin {
                    received.insert(*origin, *start, *end);
                    touched_origins.insert(*origin);
                }
            }
        }

        if claims_refused > 0 {
            metrics::counter!("syncable_claims_refused_total").increment(claims_refused);
            self.inner
                .counters
                .claims_refused
                .fetch_add(claims_refused, Ordering::Relaxed);
        }
        if unverified > 0 {
            metrics::counter!("syncable_unverified_total").increment(unverified);
            self.inner
                .counters
                .unverified
                .fetch_add(unverified, Ordering::Relaxed);
        }
        if items.is_empty()
            && refused_log.is_empty()
            && held_rows.is_empty()
            && incoming.snapshot.is_none()
            && incoming.retried.is_empty()
            && received == received_before
        {
            // Nothing took effect and nothing moved: nothing to write.
            w.tx.rollback().await?;
            self.count_held_back(&report);
            return Ok((report, outcomes, Vec::new()));
        }
        // Write it all.
        phases.mark("outcomes");
        let mut script = store::Script::default();
        writes.log.extend(refused_log);
        write::script(&mut script, registry, &mut writes)?;
        store::save_received(&mut script, &received, &received_before, &touched_origins)?;
        let seals = self.merge_learned(&w.tx, learned).await?;
        store::save_seals(&mut script, &seals)?;
        store::save_husks(&mut script, &husks)?;
        let fresh: Vec<(Uuid, Uuid)> = new_origins
            .iter()
            .filter(|(o, _)| !known_origins.contains_key(o))
            .map(|(o, d)| (*o, *d))
            .collect();
        store::save_origins(&mut script, &fresh);
        store::hold_rows(&mut script, &held_rows);
        for key in &arrived {
            if let Some(desc) = registry.at(key.rank) {
                script.push(
                    "INSERT OR IGNORE INTO _sync_unseen (model, record) VALUES (?, ?)".into(),
                    vec![desc.name().into(), store::uuid_value(key.id)],
                );
            }
        }
        let released: Vec<store::HeldRow> = incoming
            .retried
            .iter()
            .filter(|r| {
                !held_rows
                    .iter()
                    .any(|h| h.model == r.model && h.record == r.record && h.row == r.row)
            })
            .cloned()
            .collect();
        store::release_held(&mut script, &released);
        let mut pruned_floor = VersionVector::new();
        let mut pruned_ranges: Vec<(Uuid, u64, u64)> = Vec::new();
        if let Some(step) = &incoming.snapshot {
            crate::snapshot::save_backfill_step(&mut script, step)?;
            if step.next.is_none() {
                for (origin, seq) in step.vector.iter() {
                    if origin != self.inner.origin {
                        pruned_floor.advance(origin, seq);
                    }
                }
                store::raise_pruned(&mut script, &pruned_floor)?;
                // The ranges beyond the vector the rows carry cannot be
                // served as changes from here either.
                pruned_ranges = step
                    .pruned
                    .iter()
                    .take(crate::protocol::MAX_AHEAD)
                    .filter(|(o, s, e)| *o != self.inner.origin && s <= e)
                    .copied()
                    .collect();
                let mut after = pruned.clone();
                after.raise(&pruned_floor);
                let mut origins: BTreeSet<Uuid> = pruned_floor.iter().map(|(o, _)| o).collect();
                for (origin, start, end) in &pruned_ranges {
                    after.insert(*origin, *start, *end);
                    origins.insert(*origin);
                    store::drop_log_range(&mut script, *origin, *start, *end)?;
                }
                for origin in origins {
                    store::save_pruned_ahead(&mut script, origin, &after)?;
                }
            }
        }
        let last = self.clock_time().0;
        store::set_meta_in(&mut script, META_CLOCK, last.to_be_bytes().to_vec());
        phases.mark("bookkeeping");
        let conflicts_added = write::run(&w.tx, script, &writes.conflicts).await?;
        // Rows held for one record by several sources are each kept, so the
        // count is read back rather than reckoned.
        let held_now = if held_rows.is_empty() && released.is_empty() {
            None
        } else {
            let held = store::held_rows(&w.tx).await?;
            Some((held.len() as u64, crate::collect::held_floors(&held)))
        };
        // A completed snapshot dropped the log entries below its floor.
        let log_len = if pruned_floor.is_empty() && pruned_ranges.is_empty() {
            None
        } else {
            Some(store::log_len(&w.tx).await?)
        };
        phases.mark("write");
        w.tx.commit().await?;
        phases.mark("commit");
        phases.report("receive", items.len());

        // Memory follows what committed.
        report.conflicts = conflicts_added;
        let now_ms = self.now_ms();
        {
            let mut m = self.memory();
            m.received = received;
            m.vector_grew(now_ms);
            m.origins.extend(fresh);
            m.log_len = log_len.unwrap_or(m.log_len + writes.log.len() as u64);
            m.waiting = m.waiting.saturating_add_signed(writes.waiting_delta);
            m.conflicts += conflicts_added;
            for (model, n) in &writes.new_rows {
                *m.rows.entry((*model).to_owned()).or_default() += n;
            }
            m.pruned.raise(&pruned_floor);
            for (origin, start, end) in &pruned_ranges {
                m.pruned.insert(*origin, *start, *end);
            }
            if let Some((n, floors)) = held_now {
                m.held_rows = n;
                m.held_floors = floors;
            }
            if let Some(step) = &incoming.snapshot {
                m.backfill.step(step);
                // A completed backfill emptied `_sync_forgotten`.
                m.forgotten &= step.next.is_some();
            }
        }
        self.count_held_back(&report);
        let c = &self.inner.counters;
        c.applied.fetch_add(report.merged(), Ordering::Relaxed);
        c.rejected
            .fetch_add(report.rejected.len() as u64, Ordering::Relaxed);
        c.parked.fetch_add(report.waiting, Ordering::Relaxed);
        c.conflicts.fetch_add(conflicts_added, Ordering::Relaxed);
        metrics::counter!("syncable_changes_applied_total").increment(report.merged());
        metrics::counter!("syncable_changes_parked_total").increment(report.waiting);
        metrics::counter!("syncable_changes_rejected_total")
            .increment(report.rejected.len() as u64);
        metrics::counter!("syncable_changes_held_back_total")
            .increment(report.held_back.len() as u64);
        metrics::counter!("syncable_conflicts_total").increment(conflicts_added);
        metrics::histogram!("syncable_apply_seconds").record(started.elapsed().as_secs_f64());
        metrics::gauge!("syncable_log_entries").set(self.memory().log_len as f64);
        if !report.rejected.is_empty() || !report.held_back.is_empty() {
            // The first of each, with its reason: enough to see why.
            let first = |list: &[Rejection]| {
                list.first()
                    .map(|r| format!("{} {} {}: {}", r.origin, r.seq, r.model, r.reason))
                    .unwrap_or_default()
            };
            tracing::warn!(
                refused = report.rejected.len(),
                held_back = report.held_back.len(),
                first_refused = %first(&report.rejected),
                first_held_back = %first(&report.held_back),
                "received changes refused"
            );
        }
        let now = self.now_ms();
        if !newest.is_empty() {
            let mut m = self.memory();
            for (device, at) in newest {
                // Clocks of two devices: skew within the drift bound shows here.
                let latency = now.saturating_sub(at);
                metrics::histogram!("syncable_commit_to_applied_seconds", "device" => device.to_string())
                    .record(latency as f64 / 1e3);
                if let Some(p) = m.peers.get_mut(&device) {
                    p.latency_ms = Some(latency);
                }
            }
        }
        if !applied_changes.is_empty() {
            // Nobody listening is fine: the database has every change.
            let _ = self.inner.applied.send(applied_changes.into());
        }
        Ok((report, outcomes, lost_to_own_deletes))
    }

    /// What was learned of seals' trees, merged with what is stored of
    /// them, one entry per seal.
    async fn merge_learned(
        &self,
        tx: &sea_orm::DatabaseTransaction,
        learned: Vec<(Seal, Skeleton)>,
    ) -> Result<Vec<(Seal, Skeleton)>, EngineError> {
        let mut by_seal: BTreeMap<(Uuid, u64), (Seal, Skeleton)> = BTreeMap::new();
        for (seal, skeleton) in learned {
            match by_seal.get_mut(&(seal.origin, seal.last)) {
                Some((_, known)) => known.merge(skeleton),
                None => {
                    by_seal.insert((seal.origin, seal.last), (seal, skeleton));
                }
            }
        }
        let mut out = Vec::with_capacity(by_seal.len());
        for ((origin, last), (seal, mut skeleton)) in by_seal {
            if !skeleton.is_complete(seal.len())
                && let Some((stored, known)) = store::seal_at(tx, origin, last).await?
                && stored == seal
            {
                skeleton.merge(known);
            }
            out.push((seal, skeleton));
        }
        Ok(out)
    }

    /// Counts changes held back for now, each once however often it comes.
    fn count_held_back(&self, report: &ApplyReport) {
        let mut m = self.memory();
        let mut new_holds = 0;
        for r in &report.held_back {
            if r.seq > 0
                && m.held_back
                    .insert((r.origin, r.seq), r.reason.to_string())
                    .is_none()
            {
                new_holds += 1;
            }
        }
        let vector = m.received.vector.clone();
        m.held_back.retain(|(o, s), _| *s > vector.get(*o));
        while m.held_back.len() > 100_000 {
            let Some(first) = m.held_back.keys().next().copied() else {
                break;
            };
            m.held_back.remove(&first);
        }
        drop(m);
        self.inner
            .counters
            .held_back
            .fetch_add(new_holds, Ordering::Relaxed);
    }

    /// A report of duplicates when every batch is claimed within what this
    /// device already holds (what a relay offers again, say): such a batch
    /// needs no decoding, no writer and no transaction.
    fn already_held(&self, incoming: &Incoming) -> Option<ApplyReport> {
        if !incoming.rows.is_empty()
            || incoming.snapshot.is_some()
            || !incoming.retried.is_empty()
            || incoming.batches.is_empty()
        {
            return None;
        }
        let m = self.memory();
        let mut report = ApplyReport::default();
        let mut claimed: BTreeMap<Uuid, u64> = BTreeMap::new();
        for batch in &incoming.batches {
            let (_, upto) = batch.claim?;
            if incoming.pushed && early(batch, self.inner.origin, &m.received, &claimed) {
                report.early += batch.changes.len() as u64;
                metrics::counter!("syncable_changes_early_total")
                    .increment(batch.changes.len() as u64);
                continue;
            }
            if batch.origin != self.inner.origin && upto > m.received.vector.get(batch.origin) {
                return None;
            }
            let slot = claimed.entry(batch.origin).or_default();
            *slot = (*slot).max(upto);
            report.duplicates += batch.changes.len() as u64;
        }
        Some(report)
    }

    fn key_of(&self, item: &Item) -> Option<RecordKey> {
        let (model, id) = match item {
            Item::Change { change, .. } => (change.model.as_str(), change.id),
            Item::Row { model, record, .. } => (model.as_str(), *record),
        };
        Some(RecordKey {
            rank: self.inner.registry.rank(model)?,
            id,
        })
    }

    /// Whether a change may be merged now.
    fn triage(
        &self,
        change: &Change,
        known: &std::collections::HashMap<Uuid, Uuid>,
        fresh: &BTreeMap<Uuid, Uuid>,
        clock: &crate::clock::Hlc,
        now: crate::clock::NTP64,
    ) -> Result<(), RejectReason> {
        if change.seq > MAX_SEQ {
            return Err(RejectReason::Malformed(format!(
                "change number {} does not fit a 64-bit signed integer",
                change.seq
            )));
        }
        let Some(desc) = self.inner.registry.get(&change.model) else {
            return Err(RejectReason::UnknownModel);
        };
        if let Some(device) = known.get(&change.origin).or(fresh.get(&change.origin))
            && *device != change.device
        {
            return Err(RejectReason::Unverified(format!(
                "origin {} is an incarnation of {device}, not {}",
                change.origin, change.device
            )));
        }
        merge::validate(desc, change).map_err(|e| match e {
            Invalid::NotOwner { owner } => RejectReason::NotOwner { owner },
            Invalid::Malformed(why) => RejectReason::Malformed(why),
        })?;
        clock
            .check(&change.hlc, now)
            .map_err(|e| RejectReason::ClockAhead(e.to_string()))
    }

    /// Whether a snapshot row may be merged now.
    fn triage_row(
        &self,
        row: &SnapshotRow,
        clock: &crate::clock::Hlc,
        now: crate::clock::NTP64,
    ) -> Result<Item, (String, Uuid, RejectReason)> {
        match row {
            SnapshotRow::Owned(bytes) => {
                let change = bytes.decode().map_err(|e| {
                    (
                        String::new(),
                        Uuid::nil(),
                        RejectReason::Malformed(e.to_string()),
                    )
                })?;
                let fail = |r| (change.model.clone(), change.id, r);
                let desc = self
                    .inner
                    .registry
                    .get(&change.model)
                    .ok_or_else(|| fail(RejectReason::UnknownModel))?;
                if desc.meta().ownership != Ownership::DeviceOwned {
                    return Err(fail(RejectReason::Malformed(
                        "a device-owned row of a shared model".into(),
                    )));
                }
                merge::validate(desc, &change).map_err(|e| {
                    fail(match e {
                        Invalid::NotOwner { owner } => RejectReason::NotOwner { owner },
                        Invalid::Malformed(why) => RejectReason::Malformed(why),
                    })
                })?;
                clock
                    .check(&change.hlc, now)
                    .map_err(|e| fail(RejectReason::ClockAhead(e.to_string())))?;
                Ok(Item::Row {
                    model: change.model.clone(),
                    record: change.id,
                    state: RecordState::Owned(OwnedState {
                        change,
                        bytes: bytes.clone(),
                    }),
                })
            }
            SnapshotRow::Shared { model, id, image } => {
                let fail = |r| (model.clone(), *id, r);
                let desc = self
                    .inner
                    .registry
                    .get(model)
                    .ok_or_else(|| fail(RejectReason::UnknownModel))?;
                if desc.meta().ownership != Ownership::Shared {
                    return Err(fail(RejectReason::Malformed(
                        "a shared row of a device-owned model".into(),
                    )));
                }
                let state = rmp_serde::from_slice::<SharedImage>(image)
                    .map_err(|e| e.to_string())
                    .and_then(SharedImage::into_state)
                    .map_err(|e| fail(RejectReason::Malformed(e)))?;
                for (name, f) in &state.fields {
                    if let Some(index) = desc.meta().field_index(name) {
                        merge::check_value(desc, index, &f.value, *id).map_err(|e| {
                            fail(match e {
                                Invalid::NotOwner { owner } => RejectReason::NotOwner { owner },
                                Invalid::Malformed(why) => RejectReason::Malformed(why),
                            })
                        })?;
                    }
                    clock
                        .check(&f.hlc, now)
                        .map_err(|e| fail(RejectReason::ClockAhead(e.to_string())))?;
                }
                if let Some(t) = &state.tombstone {
                    clock
                        .check(&t.hlc, now)
                        .map_err(|e| fail(RejectReason::ClockAhead(e.to_string())))?;
                }
                Ok(Item::Row {
                    model: model.clone(),
                    record: *id,
                    state: RecordState::Shared(state),
                })
            }
        }
    }

    /// Tries the snapshot rows held back for now again.
    pub(crate) async fn retry_held(&self) -> Result<ApplyReport, EngineError> {
        if self.memory().held_rows == 0 {
            return Ok(ApplyReport::default());
        }
        let held = store::held_rows(self.db()).await?;
        // Once the backfill is done (before, the snapshot's vector may
        // yet cover them), stale rows go without being merged, and writes
        // of others that this device would not take are left out.
        let take = if self.needs_backfill() {
            held.iter()
                .map(|h| rmp_serde::from_slice::<SnapshotRow>(&h.row).ok())
                .collect()
        } else {
            self.held_to_take(self.db(), &held).await?
        };
        let rows: Vec<SnapshotRow> = take.into_iter().flatten().collect();
        let retried = held;
        let before = self.memory().held_rows;
        let (report, _) = self
            .receive(Incoming {
                rows,
                retried,
                ..Incoming::default()
            })
            .await?;
        // A released row may be a delete whose number no device holds (a
        // row of a snapshot given up, whose server lost the delete): after
        // the backfill, nothing else would write it again (the simulation,
        // 3 devices, seed 671 of every fault).
        if self.memory().held_rows < before && !self.needs_backfill() {
            self.republish_unheld_deletes().await?;
        }
        Ok(report)
    }

    /// What of each held row this device would take: `None` for a stale
    /// row, else the row, without the shared field writes it would not
    /// take. A held row was read after its snapshot's vector was fixed,
    /// and its change came with the last page, or by a pull, held back as
    /// well (a clock ahead), or it came from pages of a snapshot given up.
    /// The change brings the write when it comes again; if its writer lost
    /// it (a power loss), nothing can, and the write, taken or served,
    /// would show what its writer no longer holds, there and on every
    /// device served from there. So, of writes this device does not hold
    /// by their numbers:
    ///
    /// - a record's creation makes the row stale (the simulation, 3
    ///   devices, seeds 830, 1228 and 1323 of every fault);
    /// - so does another device's device-owned write to a record this
    ///   device holds a state of (only the owner can write it again: seed
    ///   846 on an intermediate build);
    /// - a shared field update to a record this device holds a state of is
    ///   left out of the row, whose other fields are taken (the simulation,
    ///   4 devices, seed 263 of every fault: a colour its writer lost, held
    ///   back by a device that later served it from its own snapshot).
    ///
    /// A shared delete is taken, and written again (see
    /// `republish_unheld_deletes`); so is a write to a record this device
    /// holds nothing of, whose row is all it has of it.
    pub(crate) async fn held_to_take<C: sea_orm::ConnectionTrait>(
        &self,
        db: &C,
        held: &[store::HeldRow],
    ) -> Result<Vec<Option<SnapshotRow>>, EngineError> {
        let (received, none, me) = (self.received(), VersionVector::new(), self.device());
        let unheld = |origin: Uuid, seq: u64| seq > 0 && !received.contains(origin, seq);
        let mut out = Vec::with_capacity(held.len());
        for h in held {
            let Ok(row) = rmp_serde::from_slice::<SnapshotRow>(&h.row) else {
                out.push(None);
                continue;
            };
            let Some((desc, state)) = crate::collect::held_state(self.registry(), h) else {
                out.push(Some(row));
                continue;
            };
            out.push(match state {
                RecordState::Owned(o) => {
                    let stale = o.change.device != me
                        && unheld(o.change.origin, o.change.seq)
                        && (crate::collect::given_up(&RecordState::Owned(o), &received, &none)
                            || store::row_state(db, &h.model, h.record).await?.is_some());
                    (!stale).then_some(row)
                }
                state @ RecordState::Shared(_)
                    if crate::collect::given_up(&state, &received, &none) =>
                {
                    None
                }
                RecordState::Shared(mut shared) => {
                    let unheld_field = |f: &crate::state::FieldState| {
                        unheld(crate::clock::timestamp_origin(&f.hlc), f.seq)
                    };
                    if !shared.fields.values().any(unheld_field)
                        || store::row_state(db, &h.model, h.record).await?.is_none()
                    {
                        Some(row)
                    } else {
                        shared.fields.retain(|_, f| !unheld_field(f));
                        if shared.fields.is_empty() && shared.tombstone.is_none() {
                            None
                        } else {
                            let image = RecordState::Shared(shared)
                                .encode()
                                .map_err(EngineError::Malformed)?;
                            Some(SnapshotRow::Shared {
                                model: desc.name().to_owned(),
                                id: h.record,
                                image,
                            })
                        }
                    }
                }
            });
        }
        Ok(out)
    }

    /// The received set (vector and ranges held beyond it).
    pub(crate) fn received(&self) -> Received {
        self.memory().received.clone()
    }
}

/// Whether a write (device-owned, or a shared update) lost to a delete
/// whose tombstone this device collected: it replaces a state this device took (`received`
/// holds its number, and no snapshot row is held back, whose number the
/// vector counts before its state is here) and this device holds no state
/// of the record now.
/// Wherever the delete is still held, the write loses to it
/// (`OwnedState::beats`); here it must too, or the record comes back.
fn lost_to_collected(held: &Option<RecordState>, change: &Change, received: &Received) -> bool {
    held.is_none()
        && !change.is_delete()
        && change
            .replaces
            .is_some_and(|(origin, seq)| received.contains(origin, seq))
}

/// Whether a snapshot row brings a state this device took before (the
/// vector holds every write that made it) and holds no state of now: the
/// record was deleted since and its tombstone collected (or the row went
/// with a record it needs). A server that went back past that delete (a
/// power loss, a restored backup) still serves the old state; taken, it
/// would bring the record back. Its writes were taken here once, so no
/// conflict is recorded again.
fn taken_and_gone(held: &Option<RecordState>, state: &RecordState, received: &Received) -> bool {
    held.is_none()
        && match state {
            RecordState::Owned(o) => {
                !o.is_delete() && received.contains(o.change.origin, o.change.seq)
            }
            RecordState::Shared(s) => {
                s.tombstone.is_none()
                    && !s.fields.is_empty()
                    && s.fields.values().all(|f| {
                        f.seq > 0
                            && received.contains(crate::clock::timestamp_origin(&f.hlc), f.seq)
                    })
            }
        }
}

/// The conflict a write lost to a collected delete leaves: the delete is
/// no longer here to name.
fn lost_write(site: Site, change: &Change) -> NewConflict {
    site.conflict(
        ConflictKind::Deleted,
        None,
        Write {
            device: change.device,
            hlc: change.hlc,
            value: None,
        },
        None,
    )
}

/// Every clock an item carries, for the clock to observe.
fn item_clocks(item: &Item) -> Vec<Timestamp> {
    match item {
        Item::Change { change, .. } => vec![change.hlc],
        Item::Row { state, .. } => match state {
            RecordState::Owned(o) => vec![o.change.hlc],
            RecordState::Shared(s) => s
                .fields
                .values()
                .map(|f| f.hlc)
                .chain(s.tombstone.map(|t| t.hlc))
                .collect(),
        },
    }
}
