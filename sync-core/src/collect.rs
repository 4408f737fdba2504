//! Tombstone collection, and what a device that returns after it must do.
//!
//! A deleted record keeps a tombstone so that no write can bring it back.
//! Kept for ever, tombstones grow without bound; so a tombstone is dropped
//! once (1) its delete is older than the retention horizon, and (2) every
//! member of the library that has not expired holds it: the delete's number
//! is in what every unexpired member is known to hold, merged (a paired
//! peer's heartbeats, and for the others what heartbeats relay of them;
//! a number the member counts only through a snapshot row it holds back is
//! not held; see `docs/protocol.md`). A shared tombstone carries its
//! delete's origin and number; one stored without them, by an engine before
//! schema 4 or made by a resync, waits until its delete is older than every
//! origin's log, whose pruning waits for every acknowledgement. A
//! device-owned delete (of another device's record) whose number neither
//! this device nor any member holds goes as well: it came only as a
//! snapshot's row, its owner lost it, and no device will ever hold its
//! number. And (3) this
//! device holds all that each member is known to hold. A device silent for
//! longer than the horizon is expired (see [`Engine::expire_peers`]) and
//! resyncs from a snapshot when it returns.
//!
//! That resync (asked for with [`ErrorCode::Expired`](crate::ErrorCode::Expired), distinct from the
//! resync of a device that merely lacks pruned changes: that one acknowledged
//! every collected delete) is where a collected tombstone could otherwise
//! be undone: the returning device still holds the record, and perhaps
//! wrote to it while away. So a resync remembers which records the device held when it
//! started (`_sync_unseen`), strikes each record the snapshot brings, and
//! when the snapshot is complete settles the rest against the snapshot's
//! vector `V`:
//!
//! - a device-owned record whose state `V` covers: the serving device held
//!   that state and no longer holds the record, so its owner deleted it and
//!   the tombstone was collected: dropped here too; so is one whose state
//!   replaced a state `V` covers (a write made here after going back past
//!   that delete, which lost to it), kept in the log for peers that lack
//!   its number;
//! - a shared record none of whose writes in this device's log lie beyond
//!   `V` (pruned entries were acknowledged by every peer): likewise dropped;
//! - a shared record whose writes beyond `V` include its creation: new to
//!   the library, kept (and sent as usual);
//! - a shared record updated here beyond `V` but created before: it was
//!   deleted elsewhere, and those updates lost to that delete. This device
//!   deletes it for real, so that its updates, wherever they arrive, meet a
//!   tombstone.
//!
//! A resync for pruned changes (the device was not expired) settles less:
//! the device acknowledged every collected delete, but its database may
//! have gone back since (a power loss, a restored backup) and lost one. It
//! drops the device-owned records as above, and the shared records whose
//! every field was set by a write `V` holds (each field keeps its write's
//! number); a shared record with a field stored without its number is
//! kept.
//!
//! A backfill that is not a resync settles the same way as one for pruned
//! changes, from its snapshot's first page on: a device whose first
//! backfill went back mid-way (a power loss) keeps records of the pages it
//! kept, and its own writes, any of which may have been deleted and
//! collected since. And every snapshot settles the rows held back here
//! (`_sync_held_unseen`): a held row whose every write the snapshot's
//! vector covers, of a record no page brought, is dropped when the
//! snapshot completes; released later, it would bring the record back on
//! this device alone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use sea_orm::{ConnectionTrait, Value};
use uuid::Uuid;

use crate::change::{Change, EncodedChange, Op};
use crate::clock::timestamp_origin;
use crate::engine::Engine;
use crate::error::EngineError;
use crate::project::{Facts, Input, Presence, RecordKey};
use crate::protocol::SnapshotRow;
use crate::state::{OwnedState, RecordState, SharedState, Tombstone};
use crate::store;
use crate::value::WireValue;
use crate::vector::{Received, VersionVector};
use crate::write;

/// `_sync_meta` key of the vector of the snapshot a resync loaded.
const META_RESYNC_VECTOR: &str = "resync_vector";
/// `_sync_meta` key present while the running resync settles shared
/// records too (the device was expired), not only device-owned ones.
const META_RESYNC_SHARED: &str = "resync_settles_shared";

/// What one collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Collected {
    /// Tombstones of shared records dropped.
    pub shared: u64,
    /// Deletes of device-owned records dropped.
    pub owned: u64,
}

/// How a resync settles a record the snapshot did not bring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    /// Deleted and collected elsewhere: gone here too, without a change.
    Drop,
    /// Deleted elsewhere; updated here since: deleted here, for real.
    Delete,
    /// New to the library: kept.
    Keep,
}

impl Engine {
    /// Drops tombstones older than `horizon` that every unexpired paired
    /// device holds (see the module documentation). The node calls it with
    /// its retention horizon; an application without a node calls it now
    /// and then, with the horizon it expires peers by.
    pub async fn collect_tombstones(&self, horizon: Duration) -> Result<Collected, EngineError> {
        let bound = self.now().to_duration().saturating_sub(horizon);
        let w = self.write_tx().await?;
        let registry = &self.inner.registry;
        // The oldest clock of each origin's log: a shared delete older than
        // all of them is no longer in the log (pruned: acknowledged).
        let firsts =
            w.tx.query_all_raw(store::stmt(
                "SELECT l.change FROM _sync_log l JOIN
                   (SELECT origin, MIN(seq) AS seq FROM _sync_log GROUP BY origin) f
                   ON l.origin = f.origin AND l.seq = f.seq",
                vec![],
            ))
            .await?;
        let mut log_floor = bound;
        for row in &firsts {
            let bytes: Vec<u8> = row.try_get("", "change")?;
            let change =
                Change::decode(&bytes).map_err(|e| EngineError::Malformed(e.to_string()))?;
            log_floor = log_floor.min(change.hlc.get_time().to_duration());
        }
        // What each unexpired member of the library is known to hold: the
        // latest report of it that heartbeats brought (after a restart,
        // the next heartbeats bring them again); `None` if nothing is
        // known of one (it may lack any delete). The numbers a report holds
        // above the member's vector count: a number whose only holder lost
        // it (a power loss) leaves a gap no vector passes, and a delete
        // beyond it is held everywhere all the same.
        let acked: Option<Vec<crate::peers::Holding>> = {
            let m = self.memory();
            let me = self.device();
            let members: BTreeSet<Uuid> = m
                .membership
                .current()
                .chain(m.peers.keys().copied())
                .filter(|d| *d != me && !m.membership.is_removed(*d))
                .collect();
            members
                .into_iter()
                .filter_map(|d| {
                    let peer = m.peers.get(&d);
                    let heard = m.heard.get(&d);
                    if peer.is_some_and(|p| p.expired)
                        || (peer.is_none() && heard.is_some_and(|h| h.expired))
                    {
                        return None;
                    }
                    // The latest report of it (its own heartbeats for a
                    // paired peer). Not an acknowledgement: it says what
                    // the peer counts, not which of it the peer holds back
                    // as snapshot rows.
                    Some(heard.map(|h| h.holding()))
                })
                .collect()
        };
        // A device-owned delete whose number neither this device nor any
        // member holds (its owner lost it to a power loss, and it reached
        // this device only as a snapshot's row) goes too, as any collected
        // delete: no device will ever hold its number, and, kept, it
        // would wait for it for ever, and refuse here alone the record's
        // older writes that other devices take (the simulation, 3 devices,
        // seed 172 of every fault with `shuffle`). Its owner writes its
        // own such deletes again instead (`republish_unheld_deletes`).
        let me = self.device();
        // And this device must hold all that each of them held: whatever a
        // member wrote to a record before it learned of the record's delete
        // (or relayed before it held the delete) is then here already,
        // merged into the tombstone, and cannot arrive after it, through
        // any path.
        let mine = self.memory().received.clone();
        if acked
            .as_ref()
            .is_none_or(|acked| !acked.iter().all(|a| mine.holds_all(&a.received)))
        {
            tracing::debug!(
                known = acked.is_some(),
                "no tombstone collected: a member's holdings are unknown, or not all here"
            );
            w.tx.commit().await?;
            return Ok(Collected::default());
        }
        // A snapshot row held back (its clock ahead, its model unknown) is
        // counted in the vector its snapshot brought, but not merged yet:
        // the tombstones of its record and of the records it refers to stay
        // until it is, or it would bring a deleted record back, or wait for
        // ever for one it refers to.
        let pinned = if self.memory().held_rows > 0 {
            held_records(registry, &store::held_rows(&w.tx).await?)
        } else {
            BTreeSet::new()
        };
        let mut gone: BTreeMap<&'static str, Vec<Value>> = BTreeMap::new();
        let mut gone_ids: BTreeSet<RecordId> = BTreeSet::new();
        let mut floors = VersionVector::new();
        let mut report = Collected::default();
        for (desc, id, state) in
            stored_with(&w.tx, registry, Some(Presence::Deleted), &pinned).await?
        {
            let take = match &state {
                RecordState::Shared(SharedState {
                    tombstone: Some(t), ..
                }) => {
                    let at = t.hlc.get_time().to_duration();
                    let take = at < bound
                        && match t.delete {
                            // Every unexpired member holds the delete.
                            Some((origin, seq)) => acked
                                .as_ref()
                                .is_some_and(|acked| acked.iter().all(|a| a.has(origin, seq))),
                            // No number to wait for: a tombstone older than
                            // every origin's log (its entry pruned, so
                            // acknowledged) goes.
                            None => at < log_floor,
                        };
                    report.shared += u64::from(take);
                    take
                }
                RecordState::Owned(o) if o.is_delete() => {
                    let (origin, seq) = (o.change.origin, o.change.seq);
                    let take = o.change.hlc.get_time().to_duration() < bound
                        && acked.as_ref().is_some_and(|acked| {
                            acked.iter().all(|a| a.has(origin, seq))
                                || (o.change.device != me
                                    && !mine.contains(origin, seq)
                                    && acked.iter().all(|a| !a.received.contains(origin, seq)))
                        });
                    if take {
                        // A delete above a gap raises no floor: the numbers
                        // below it are still served as changes.
                        if seq <= mine.vector.get(origin) {
                            floors.advance(origin, seq);
                        }
                        report.owned += 1;
                    }
                    take
                }
                _ => false,
            };
            if take {
                gone.entry(desc.name())
                    .or_default()
                    .push(store::uuid_value(id));
                gone_ids.insert((desc.name(), id));
            }
        }
        // Rows hidden for a reference to a record that is no longer here
        // go with it (see `dead_hidden`). A row is hidden only while the
        // record it needs is here, deleted: such rows are left behind only
        // when tombstones go, so they are looked for only then.
        let dead = if gone_ids.is_empty() {
            Vec::new()
        } else {
            dead_hidden(&w.tx, registry, &gone_ids, &pinned).await?
        };
        if !dead.is_empty() {
            tracing::debug!(
                rows = dead.len(),
                "hidden rows gone with what they refer to"
            );
        }
        for (model, id) in dead {
            gone.entry(model).or_default().push(store::uuid_value(id));
        }
        if gone.is_empty() {
            w.tx.commit().await?;
            return Ok(report);
        }
        let mut script = store::Script::default();
        for (model, ids) in &gone {
            for table in ["_sync_rows", "_sync_waiting", "_sync_aside"] {
                script.in_chunks(
                    &format!("DELETE FROM {table} WHERE model = ? AND record IN ({{}})"),
                    &[(*model).into()],
                    ids.clone(),
                );
            }
        }
        // A peer that lacks a collected device-owned delete can no longer be
        // served it as a change: it resyncs instead.
        store::raise_pruned(&mut script, &floors)?;
        script.run(&w.tx).await?;
        let log_len = store::log_len(&w.tx).await?;
        w.tx.commit().await?;
        {
            let mut m = self.memory();
            m.pruned.raise(&floors);
            m.log_len = log_len;
            for (model, ids) in &gone {
                if let Some(n) = m.rows.get_mut(*model) {
                    *n = n.saturating_sub(ids.len() as u64);
                }
            }
        }
        metrics::counter!("syncable_tombstones_collected_total")
            .increment(report.shared + report.owned);
        tracing::info!(
            shared = report.shared,
            owned = report.owned,
            "tombstones collected"
        );
        Ok(report)
    }

    /// A resync starts: remembers every record held now (in `tx`, with the
    /// backfill's restart). `expired`: shared records are settled too (a
    /// resync already under way for that keeps it).
    pub(crate) async fn begin_resync<C: ConnectionTrait>(
        &self,
        tx: &C,
        expired: bool,
    ) -> Result<(), EngineError> {
        if expired {
            store::set_meta(tx, META_RESYNC_SHARED, vec![1]).await?;
        }
        tx.execute_raw(store::stmt("DELETE FROM _sync_unseen", vec![]))
            .await?;
        tx.execute_raw(store::stmt(
            "INSERT INTO _sync_unseen (model, record)
             SELECT model, record FROM _sync_rows WHERE presence != ?",
            vec![Value::BigInt(Some(Presence::Deleted.code()))],
        ))
        .await?;
        tx.execute_raw(store::stmt(
            "DELETE FROM _sync_meta WHERE key = ?",
            vec![META_RESYNC_VECTOR.into()],
        ))
        .await?;
        Ok(())
    }

    /// Strikes the records of a snapshot page from those a resync settles,
    /// and from the held rows' records the snapshot has not brought yet,
    /// before the page is applied (a crash in between leaves them struck,
    /// and kept: never dropped for want of a page that arrived). The first
    /// page of a snapshot (`first`) starts the held rows' list; the last
    /// (`last`, with the snapshot's vector) settles the held rows it leaves,
    /// and leaves the vector for a resync's settling.
    ///
    /// A held row whose every write the snapshot's vector covers, of a
    /// record that no page brought, is dropped: the serving device held
    /// those writes and holds nothing of the record, not even a row held
    /// back (those are served too), so the record was deleted there and its
    /// tombstone collected. This device held that delete once, or the
    /// collection would have waited for it, and lost it since (its database
    /// went back); released later, the row would bring the record back here
    /// alone (the simulation, 3 devices, seed 114 of every fault).
    pub(crate) async fn snapshot_saw(
        &self,
        rows: &[SnapshotRow],
        first: bool,
        last: Option<&VersionVector>,
    ) -> Result<(), EngineError> {
        let (resyncing, backfilling) = {
            let m = self.memory();
            (m.resyncing, m.backfill != crate::snapshot::Backfill::Done)
        };
        // A backfill that is not a resync settles, as a resync for pruned
        // changes does, the records held when its snapshot starts: a device
        // whose first backfill went back (a power loss mid-way) holds
        // records from the pages it kept, or its own writes, that may have
        // been deleted and collected since, as a resyncing device may (the
        // simulation, 3 devices, seed 114 of every fault). Every snapshot
        // that starts (over) does, a resync's too: what is settled is what
        // the completing snapshot did not bring, of all that is held when
        // it starts. (A resync took its records once, when it began: a
        // record created here after that, whose delete this device then
        // lost to a power loss while every other device collected it, was
        // kept, and its next write with it: 4 devices, seed 658.)
        let settles = first && backfilling;
        let resyncing = resyncing || settles;
        let mut by_model: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for row in rows {
            match row {
                SnapshotRow::Shared { model, id, .. } => {
                    by_model
                        .entry(model.clone())
                        .or_default()
                        .push(store::uuid_value(*id));
                }
                SnapshotRow::Owned(bytes) => {
                    // One that does not decode is refused by the apply, and
                    // keeps nothing here from being settled.
                    if let Ok(c) = bytes.decode() {
                        by_model
                            .entry(c.model)
                            .or_default()
                            .push(store::uuid_value(c.id));
                    }
                }
            }
        }
        let w = self.write_tx().await?;
        if settles {
            // What a resync for pruned changes remembers when it starts.
            self.begin_resync(&w.tx, false).await?;
        }
        let mut script = store::Script::default();
        if first {
            script.push("DELETE FROM _sync_held_unseen".into(), vec![]);
            script.push(
                "INSERT OR IGNORE INTO _sync_held_unseen (model, record)
                 SELECT model, record FROM _sync_held"
                    .into(),
                vec![],
            );
        }
        for (model, ids) in by_model {
            if resyncing {
                script.in_chunks(
                    "DELETE FROM _sync_unseen WHERE model = ? AND record IN ({})",
                    &[model.clone().into()],
                    ids.clone(),
                );
            }
            script.in_chunks(
                "DELETE FROM _sync_held_unseen WHERE model = ? AND record IN ({})",
                &[model.into()],
                ids,
            );
        }
        if let (Some(v), true) = (last, resyncing) {
            let bytes = rmp_serde::to_vec(v).map_err(|e| EngineError::Malformed(e.to_string()))?;
            store::set_meta_in(&mut script, META_RESYNC_VECTOR, bytes);
        }
        script.run(&w.tx).await?;
        let Some(vector) = last else {
            w.tx.commit().await?;
            if settles {
                self.memory().resyncing = true;
            }
            return Ok(());
        };
        let unseen: BTreeSet<(String, Uuid)> =
            w.tx.query_all_raw(store::stmt(
                "SELECT model, record FROM _sync_held_unseen",
                vec![],
            ))
            .await?
            .iter()
            .map(|row| {
                let model: String = row.try_get("", "model")?;
                Ok((model, store::get_uuid(row, "record", "_sync_held_unseen")?))
            })
            .collect::<Result<_, EngineError>>()?;
        let registry = self.registry();
        let (dropped, held): (Vec<store::HeldRow>, Vec<store::HeldRow>) = if unseen.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            store::held_rows(&w.tx).await?.into_iter().partition(|h| {
                unseen.contains(&(h.model.clone(), h.record))
                    && held_state(registry, h).is_some_and(|(_, state)| covered(&state, vector))
            })
        };
        let mut script = store::Script::default();
        store::release_held(&mut script, &dropped);
        script.push("DELETE FROM _sync_held_unseen".into(), vec![]);
        script.run(&w.tx).await?;
        w.tx.commit().await?;
        if settles {
            self.memory().resyncing = true;
        }
        if !dropped.is_empty() {
            let mut m = self.memory();
            m.held_rows = held.len() as u64;
            m.held_floors = held_floors(&held);
            drop(m);
            tracing::warn!(
                held = dropped.len(),
                "held snapshot rows of records deleted and collected elsewhere dropped"
            );
        }
        Ok(())
    }

    /// Settles the records a complete resync's snapshot did not bring (see
    /// the module documentation); returns the shared records dropped.
    async fn settle_resync(&self) -> Result<Vec<RecordKey>, EngineError> {
        let registry = &self.inner.registry;
        let db = self.db();
        let Some(bytes) = store::get_meta(db, META_RESYNC_VECTOR).await? else {
            return Ok(Vec::new());
        };
        let vector: VersionVector =
            rmp_serde::from_slice(&bytes).map_err(|e| EngineError::Malformed(e.to_string()))?;
        let shared_too = store::get_meta(db, META_RESYNC_SHARED).await?.is_some();
        let unseen = db
            .query_all_raw(store::stmt(
                "SELECT model, record FROM _sync_unseen",
                vec![],
            ))
            .await?;
        let mut keys = BTreeSet::new();
        for row in &unseen {
            let model: String = row.try_get("", "model")?;
            if let Some(rank) = registry.rank(&model) {
                let id = store::get_uuid(row, "record", "_sync_unseen")?;
                keys.insert(RecordKey { rank, id });
            }
        }
        let stored = store::load_rows(db, registry, &keys).await?;
        // This device's writes (and relayed ones) the serving device lacked.
        let mut beyond: HashMap<Uuid, Vec<Change>> = HashMap::new();
        let origins: Vec<(Uuid, u64)> = self.vector().iter().collect();
        for (origin, upto) in origins {
            let after = vector.get(origin);
            if upto <= after {
                continue;
            }
            for (_, bytes) in store::log_since(db, origin, after, upto, u64::MAX >> 1).await? {
                let change = bytes
                    .decode()
                    .map_err(|e| EngineError::Malformed(e.to_string()))?;
                beyond.entry(change.id).or_default().push(change);
            }
        }
        let mut settled: BTreeMap<RecordKey, (Settle, RecordState)> = BTreeMap::new();
        for (key, row) in stored {
            let Some(row) = row else { continue };
            let Some(desc) = registry.at(key.rank) else {
                continue;
            };
            if row.state.is_deleted() {
                continue;
            }
            let settle = match &row.state {
                // The serving device held this state, or the one it
                // replaced (a write made here after going back past the
                // delete: it lost to it, as it does wherever the delete is
                // held), and no longer holds the record.
                RecordState::Owned(o) => {
                    let held = |(origin, seq): (Uuid, u64)| seq <= vector.get(origin);
                    if held((o.change.origin, o.change.seq)) || o.change.replaces.is_some_and(held)
                    {
                        Settle::Drop
                    } else {
                        Settle::Keep
                    }
                }
                // A device that was not expired acknowledged every
                // collected delete, unless its database went back since
                // (a power loss, a restored backup) and lost one. A shared
                // record whose every write the serving device held, and
                // which it no longer holds, is proof of such a delete;
                // one with a write the server lacked, or a field stored
                // without its number, is kept.
                //
                // So is one whose other fields are updates made or taken
                // here that each replaced a write the server held (their
                // `replaces`): they lost to that delete, as they do where it
                // is held or was collected (found in the simulation, 3
                // devices, seed 114 of every fault, on a build that also
                // restarted snapshots with their server's incarnation).
                RecordState::Shared(s) if !shared_too => {
                    let lost_update = |f: &crate::state::FieldState| {
                        let origin = timestamp_origin(&f.hlc);
                        beyond.get(&key.id).is_some_and(|cs| {
                            cs.iter().any(|c| {
                                c.model == desc.name()
                                    && c.origin == origin
                                    && c.seq == f.seq
                                    && c.replaces.is_some_and(|(o, n)| n <= vector.get(o))
                            })
                        })
                    };
                    let settled = !s.fields.is_empty()
                        && s.fields
                            .values()
                            .all(|f| field_covered(f, &vector) || lost_update(f));
                    if settled { Settle::Drop } else { Settle::Keep }
                }
                RecordState::Shared(_) => {
                    let writes: Vec<&Change> = beyond
                        .get(&key.id)
                        .map(|cs| cs.iter().filter(|c| c.model == desc.name()).collect())
                        .unwrap_or_default();
                    let meta = desc.meta();
                    let created_beyond = writes.iter().any(|c| match &c.op {
                        Op::Upsert(fields) => {
                            fields.iter().all(|f| f.base.is_none())
                                && meta
                                    .fields
                                    .iter()
                                    .all(|m| fields.iter().any(|f| f.name == m.name))
                        }
                        Op::Delete { .. } => false,
                    });
                    match (writes.is_empty(), created_beyond) {
                        (true, _) => Settle::Drop,
                        (false, true) => Settle::Keep,
                        (false, false) => Settle::Delete,
                    }
                }
            };
            if settle != Settle::Keep {
                settled.insert(key, (settle, row.state));
            }
        }
        // Real deletes first: a crash before the drops leaves those records
        // deleted, which the next settling skips.
        let deletes: Vec<RecordKey> = settled
            .iter()
            .filter(|(_, (s, _))| *s == Settle::Delete)
            .map(|(k, _)| *k)
            .collect();
        if !deletes.is_empty() {
            let mut tx = self.begin().await?;
            for key in &deletes {
                tx.delete_record(key.rank, key.id).await?;
            }
            tx.commit().await?;
            tracing::warn!(
                records = deletes.len(),
                "records deleted elsewhere while this device was away: its writes to them lost"
            );
        }
        // A dropped device-owned state the snapshot's vector lacks (a write
        // made here, which lost to the collected delete) no longer stands
        // here, but peers lack its number: it goes to the log, served as a
        // change, which loses to the delete there as it did here.
        // (Not below this device's pruned floor: every peer acknowledged
        // those numbers once, and one that lost them since resyncs.)
        let pruned = self.memory().pruned.clone();
        let lost: Vec<(Uuid, u64, EncodedChange)> = settled
            .values()
            .filter_map(|(settle, state)| match state {
                RecordState::Owned(o)
                    if *settle == Settle::Drop
                        && o.change.seq > vector.get(o.change.origin)
                        && !pruned.contains(o.change.origin, o.change.seq) =>
                {
                    Some((o.change.origin, o.change.seq, o.bytes.clone()))
                }
                _ => None,
            })
            .collect();
        let drops: BTreeMap<RecordKey, RecordState> = settled
            .into_iter()
            .filter(|(_, (s, _))| *s == Settle::Drop)
            .filter_map(|(k, (_, state))| Some((k, tombstone_of(self.device(), state)?)))
            .collect();
        let dropped = drops.len();
        let shared_dropped: Vec<RecordKey> = drops
            .iter()
            .filter(|(_, s)| matches!(s, RecordState::Shared(_)))
            .map(|(k, _)| *k)
            .collect();
        let w = self.write_tx().await?;
        let mut script = store::Script::default();
        let mut waiting_delta = 0;
        let mut owned_gone: Vec<RecordKey> = Vec::new();
        if !drops.is_empty() {
            owned_gone = drops
                .iter()
                .filter(|(_, s)| matches!(s, RecordState::Owned(_)))
                .map(|(k, _)| *k)
                .collect();
            let input = Input {
                changed: drops,
                ..Input::default()
            };
            let mut writes =
                write::plan(&w.tx, registry, &self.inner.tables, input, Facts::default()).await?;
            waiting_delta = writes.waiting_delta;
            write::script(&mut script, registry, &mut writes)?;
            // A device-owned record's tombstone is its owner's signed delete,
            // which this device never received: it keeps no state of it.
            let mut by_model: BTreeMap<&'static str, Vec<Value>> = BTreeMap::new();
            for key in &owned_gone {
                if let Some(desc) = registry.at(key.rank) {
                    by_model
                        .entry(desc.name())
                        .or_default()
                        .push(store::uuid_value(key.id));
                }
            }
            for (model, ids) in by_model {
                script.in_chunks(
                    "DELETE FROM _sync_rows WHERE model = ? AND record IN ({})",
                    &[model.into()],
                    ids,
                );
            }
        }
        let logged: Vec<(Uuid, u64, &EncodedChange)> =
            lost.iter().map(|(o, n, b)| (*o, *n, b)).collect();
        store::append_log(&mut script, &logged)?;
        script.push("DELETE FROM _sync_unseen".into(), vec![]);
        script.push(
            "DELETE FROM _sync_meta WHERE key IN (?, ?)".into(),
            vec![META_RESYNC_VECTOR.into(), META_RESYNC_SHARED.into()],
        );
        write::run(&w.tx, script, &[]).await?;
        // Read back: a write already in the log is not added twice.
        let log_len = if lost.is_empty() {
            None
        } else {
            Some(store::log_len(&w.tx).await?)
        };
        w.tx.commit().await?;
        {
            let mut m = self.memory();
            m.resyncing = false;
            if let Some(n) = log_len {
                m.log_len = n;
            }
            m.waiting = m.waiting.saturating_add_signed(waiting_delta);
            for key in &owned_gone {
                if let Some(n) = registry.at(key.rank).and_then(|d| m.rows.get_mut(d.name())) {
                    *n = n.saturating_sub(1);
                }
            }
        }
        if dropped > 0 {
            tracing::warn!(
                records = dropped,
                "records deleted elsewhere (their tombstones collected) while this device was away: dropped"
            );
        }
        Ok(shared_dropped)
    }

    /// Settles a resync whose snapshot completed (after the last page, and
    /// at open if a crash came between), then writes again, as this
    /// device's, the delete of each shared record it dropped that a hidden
    /// row here refers to: a write
    /// made here since its database went back may refer to the record, and
    /// the peers that collected the delete would have the referring row
    /// wait for ever for a record that never comes (the simulation, 3
    /// devices, 600 operations, seed 127 of every fault: a tag's
    /// user-metadata link). With the delete, they hide or unlink the row,
    /// as this device does.
    pub(crate) async fn finish_resync(&self) -> Result<(), EngineError> {
        let mut dropped = self.settle_resync().await?;
        // Only those a hidden row here refers to (the rows hidden are few):
        // no write of this device's can name the others.
        let registry = self.registry();
        let mut referred: BTreeSet<RecordId> = BTreeSet::new();
        if !dropped.is_empty() {
            let hidden = stored_with(
                self.db(),
                registry,
                Some(Presence::Hidden),
                &BTreeSet::new(),
            )
            .await?;
            for (desc, _, state) in hidden {
                for r in desc.meta().references() {
                    if let (Some(WireValue::Uuid(Some(target))), Some(to)) =
                        (state.value(r.field), registry.get(r.target))
                    {
                        referred.insert((to.name(), *target));
                    }
                }
            }
        }
        dropped.retain(|k| {
            registry
                .at(k.rank)
                .is_some_and(|d| referred.contains(&(d.name(), k.id)))
        });
        if !dropped.is_empty() {
            let mut tx = self.begin().await?;
            for key in &dropped {
                tx.delete_again(key.rank, key.id)?;
            }
            tx.commit().await?;
        }
        Ok(())
    }

    /// Whether a resync is under way (records to settle are remembered).
    pub(crate) async fn resync_pending<C: ConnectionTrait>(db: &C) -> Result<bool, EngineError> {
        Ok(
            store::count(db, "SELECT COUNT(*) AS n FROM _sync_unseen", vec![]).await? > 0
                || store::get_meta(db, META_RESYNC_VECTOR).await?.is_some(),
        )
    }

    /// Forgets what the pages of a snapshot given up brought that no device
    /// may hold, before a new snapshot (whose vector is `next`) starts: the
    /// server of the one given up went back since (a power loss, a
    /// restored backup), and its rows carry writes it lost. Such a write
    /// is in no vector, so nothing would ever replace it, and this device
    /// alone would show it (the simulation, 3 devices, seed 168 of every
    /// fault). A record created by such writes goes with no tombstone (the
    /// rows that refer to it wait for it, as for a record not here yet),
    /// and so does a held row of one. If some device does hold them, they
    /// come again, in the new snapshot or as changes. Returns how many
    /// records were forgotten.
    pub(crate) async fn forget_given_up(&self, next: &VersionVector) -> Result<usize, EngineError> {
        let (forgotten, again) = self.forget_unheld(next).await?;
        // Once the writer the forgetting took is free again.
        self.write_fields_again(again).await?;
        Ok(forgotten)
    }

    /// What `forget_given_up` forgets, done; and the fields it writes again.
    async fn forget_unheld(&self, next: &VersionVector) -> Result<Forgotten, EngineError> {
        let registry = self.registry();
        let received = self.received();
        let w = self.write_tx().await?;
        let mut input = Input::default();
        let mut again: Vec<(RecordKey, Vec<(String, WireValue)>)> = Vec::new();
        for (desc, id, state) in stored_with(&w.tx, registry, None, &BTreeSet::new()).await? {
            let Some(rank) = registry.rank(desc.name()) else {
                continue;
            };
            let key = RecordKey { rank, id };
            if forgets(&state, &received, next) {
                input.forgotten.insert(key);
            } else if let RecordState::Shared(SharedState {
                fields,
                tombstone: None,
            }) = &state
            {
                // Field writes of a record kept that no device may hold
                // (an update whose writer lost it, taken here from pages
                // given up): nothing would ever bring them elsewhere, and
                // they win here, by their clocks, over what the new
                // snapshot brings. Written again, they reach every device.
                let unheld: Vec<(String, WireValue)> = fields
                    .iter()
                    .filter(|(_, f)| unheld(&received, next, timestamp_origin(&f.hlc), f.seq))
                    .map(|(name, f)| (name.clone(), f.value.clone()))
                    .collect();
                if !unheld.is_empty() {
                    again.push((key, unheld));
                }
            }
        }
        if !again.is_empty() {
            tracing::warn!(
                records = again.len(),
                "field writes a snapshot given up brought, whose numbers no device holds: written again"
            );
        }
        // A held row keeps the narrower rule: an update held back may be
        // the only trace of why this device's vector holds the number of
        // the write it replaced with no state shown. Dropped, that number
        // reads as a delete taken and collected to a device that resyncs
        // from here, its owner included, which then drops the record while
        // a third device keeps it (the simulation, 3 devices, 600
        // operations, seed 223 of every fault). Kept, it is served
        // (`held_to_take`), and its owner takes it back and writes it
        // again (`own_unheld_upserts`).
        let (dropped_held, held): (Vec<store::HeldRow>, Vec<store::HeldRow>) =
            store::held_rows(&w.tx).await?.into_iter().partition(|h| {
                held_state(registry, h).is_some_and(|(_, state)| given_up(&state, &received, next))
            });
        let changed = input.forgotten.len();
        if changed == 0 && dropped_held.is_empty() {
            w.tx.rollback().await?;
            return Ok((0, again));
        }
        let mut script = store::Script::default();
        let mut writes = write::Writes::default();
        if changed > 0 {
            writes =
                write::plan(&w.tx, registry, &self.inner.tables, input, Facts::default()).await?;
            write::script(&mut script, registry, &mut writes)?;
        }
        store::release_held(&mut script, &dropped_held);
        // Their numbers stay in the vector with no state here: while the
        // backfill runs, that proves no delete taken and collected.
        let marked: Vec<(&str, Uuid)> = writes
            .forgotten
            .iter()
            .filter_map(|k| registry.at(k.rank).map(|d| (d.name(), k.id)))
            .chain(dropped_held.iter().map(|h| (h.model.as_str(), h.record)))
            .collect();
        store::mark_forgotten(&mut script, &marked);
        write::run(&w.tx, script, &writes.conflicts).await?;
        w.tx.commit().await?;
        {
            let mut m = self.memory();
            m.forgotten |= !marked.is_empty();
            m.waiting = m.waiting.saturating_add_signed(writes.waiting_delta);
            for key in &writes.forgotten {
                if let Some(n) = registry.at(key.rank).and_then(|d| m.rows.get_mut(d.name())) {
                    *n = n.saturating_sub(1);
                }
            }
            m.held_rows = held.len() as u64;
            m.held_floors = held_floors(&held);
        }
        tracing::warn!(
            records = changed,
            held = dropped_held.len(),
            "a snapshot started over: what its pages brought that no device may hold is forgotten"
        );
        Ok((changed, again))
    }

    /// Writes fields of shared records again as they stand, in one commit.
    async fn write_fields_again(
        &self,
        again: Vec<(RecordKey, Vec<(String, WireValue)>)>,
    ) -> Result<(), EngineError> {
        if again.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for (key, fields) in again {
            tx.write_again(key.rank, key.id, fields)?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Writes again, as this device's own, every delete that stands here
    /// but whose number this device does not hold, after a snapshot
    /// completed: a shared record's tombstone, or the delete of a record
    /// this device owns. Such a delete came as a snapshot's row, from a
    /// server that had it as a state only (itself from a snapshot given up,
    /// whose server lost the delete to a power loss), or from pages of a
    /// snapshot given up since; its writer and every device that took it as
    /// a change lost it. No device can serve it as a change, so the record
    /// stayed deleted here and came back nowhere else (the simulation, 3
    /// devices, seeds 71 and 532 of every fault), or stayed deleted
    /// everywhere with a tombstone that waits for a number no one holds,
    /// never collected (seed 217). Written again, it has a number, reaches
    /// every device, and is collected as any delete. A delete this device
    /// merely received early (its number on the way from another peer)
    /// is written twice: the two tombstones merge. So is the state of a
    /// record this device owns whose write, of an earlier incarnation of
    /// its own, it does not hold by number (see `own_unheld_upserts`).
    /// Returns how many were written.
    pub(crate) async fn republish_unheld_deletes(&self) -> Result<usize, EngineError> {
        let registry = self.registry();
        let received = self.received();
        let me = self.device();
        let stored = stored_with(
            self.db(),
            registry,
            Some(Presence::Deleted),
            &BTreeSet::new(),
        )
        .await?;
        let unheld: Vec<RecordKey> = stored
            .into_iter()
            .filter(|(_, _, state)| match state {
                RecordState::Shared(SharedState {
                    tombstone: Some(t), ..
                }) => t.delete.is_some_and(|(o, s)| !received.contains(o, s)),
                RecordState::Owned(o) => {
                    o.is_delete()
                        && o.change.device == me
                        && !received.contains(o.change.origin, o.change.seq)
                }
                _ => false,
            })
            .filter_map(|(desc, id, _)| {
                Some(RecordKey {
                    rank: registry.rank(desc.name())?,
                    id,
                })
            })
            .collect();
        let others: HashMap<Uuid, Uuid> = {
            let m = self.memory();
            m.origins
                .iter()
                .filter(|(_, d)| **d != me)
                .map(|(o, d)| (*o, *d))
                .collect()
        };
        let upserts = own_unheld_upserts(self.db(), registry, &others, &received, me).await?;
        if unheld.is_empty() && upserts.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin().await?;
        for key in &unheld {
            tx.delete_again(key.rank, key.id)?;
        }
        for (key, fields) in &upserts {
            tx.write_again(key.rank, key.id, fields.clone())?;
        }
        tx.commit().await?;
        tracing::warn!(
            deletes = unheld.len(),
            upserts = upserts.len(),
            "writes no device can serve as changes (their numbers lost) written again"
        );
        Ok(unheld.len() + upserts.len())
    }

    /// Settles a resync a crash interrupted after its snapshot completed.
    pub(crate) async fn resume_resync(&self) -> Result<(), EngineError> {
        let pending = Self::resync_pending(self.db()).await?;
        self.memory().resyncing = pending;
        if pending && !self.needs_backfill() {
            self.finish_resync().await?;
        }
        Ok(())
    }
}

/// The records this device owns whose state is a write of an earlier
/// incarnation of its own whose number it does not hold, each with the
/// fields to write again. It lost that write (a power loss, a restored
/// backup: the incarnation may be unknown here now) and took it back as a
/// peer's snapshot row, which no device can serve as a change: devices
/// that never took the row keep an older state for ever (the simulation,
/// 3 devices, 600 operations, seed 147 of every fault: a location its
/// owner lost an update of, back on the owner from a peer's snapshot,
/// older on a third device). Found through the index on states' numbers:
/// per origin not known as another device's (`others`), the states above
/// what this device holds of it.
async fn own_unheld_upserts<C: ConnectionTrait>(
    db: &C,
    registry: &crate::registry::Registry,
    others: &HashMap<Uuid, Uuid>,
    received: &Received,
    me: Uuid,
) -> Result<Vec<(RecordKey, Vec<(String, WireValue)>)>, EngineError> {
    let tops = db
        .query_all_raw(store::stmt(
            "SELECT origin, MAX(seq) AS top FROM _sync_rows WHERE origin IS NOT NULL GROUP BY origin",
            vec![],
        ))
        .await?;
    let mut origins = Vec::new();
    for row in &tops {
        let origin = store::get_uuid(row, "origin", "_sync_rows")?;
        let top = store::get_u64(row, "top", "_sync_rows")?;
        if !others.contains_key(&origin) && top > received.vector.get(origin) {
            origins.push(origin);
        }
    }
    let mut out = Vec::new();
    for origin in &origins {
        let rows = db
            .query_all_raw(store::stmt(
                "SELECT model, record, seq, state FROM _sync_rows WHERE origin = ? AND seq > ?",
                vec![
                    store::uuid_value(*origin),
                    store::int(received.vector.get(*origin))?,
                ],
            ))
            .await?;
        for row in &rows {
            let seq = store::get_u64(row, "seq", "_sync_rows")?;
            if received.contains(*origin, seq) {
                continue;
            }
            let model: String = row.try_get("", "model")?;
            let (Some(desc), Some(rank)) = (registry.get(&model), registry.rank(&model)) else {
                continue;
            };
            let id = store::get_uuid(row, "record", "_sync_rows")?;
            let bytes: Vec<u8> = row.try_get("", "state")?;
            let state = RecordState::decode(desc.meta().ownership, &bytes)
                .map_err(|e| store::corrupt("_sync_rows", e))?;
            if let RecordState::Owned(OwnedState {
                change:
                    Change {
                        device,
                        op: Op::Upsert(fields),
                        ..
                    },
                ..
            }) = state
                && device == me
            {
                let fields = fields.into_iter().map(|f| (f.name, f.value)).collect();
                out.push((RecordKey { rank, id }, fields));
            }
        }
    }
    Ok(out)
}

/// A held snapshot row's model and the state it carries, as a record
/// stores it; `None` for a row of a model not registered here, or one that
/// does not decode (it can never apply).
pub(crate) fn held_state(
    registry: &crate::registry::Registry,
    h: &store::HeldRow,
) -> Option<(&'static crate::registry::ModelDescriptor, RecordState)> {
    let desc = registry.get(&h.model)?;
    let bytes = match rmp_serde::from_slice::<SnapshotRow>(&h.row).ok()? {
        SnapshotRow::Owned(change) => change.0,
        SnapshotRow::Shared { image, .. } => image,
    };
    let state = RecordState::decode(desc.meta().ownership, &bytes).ok()?;
    Some((desc, state))
}

/// The records that held snapshot rows are of, or refer to (by model
/// name and id). A row that does not decode is left out: it can never
/// apply.
fn held_records(
    registry: &crate::registry::Registry,
    held: &[store::HeldRow],
) -> BTreeSet<(&'static str, Uuid)> {
    let mut out = BTreeSet::new();
    for h in held {
        let Some(desc) = registry.get(&h.model) else {
            continue;
        };
        out.insert((desc.name(), h.record));
        let Some((_, state)) = held_state(registry, h) else {
            continue;
        };
        for r in desc.meta().references() {
            if let (Some(WireValue::Uuid(Some(target))), Some(to)) =
                (state.value(r.field), registry.get(r.target))
            {
                out.insert((to.name(), *target));
            }
        }
    }
    out
}

/// A record: its model's wire name and its id.
type RecordId = (&'static str, Uuid);

/// Records forgotten, and fields of others to write again.
type Forgotten = (usize, Vec<(RecordKey, Vec<(String, WireValue)>)>);

/// Whether a write's number is unheld: not received here (`received`)
/// and not named by the new snapshot's vector (`next`).
fn unheld(received: &Received, next: &VersionVector, origin: Uuid, seq: u64) -> bool {
    seq > 0 && seq > next.get(origin) && !received.contains(origin, seq)
}

/// Whether a snapshot that starts over, pages of another having been
/// applied, forgets a state those pages brought: one [`given_up`], or a
/// device-owned update whose number and the one of the change it replaced
/// are both [`unheld`]. The owner may have lost both (a power loss): kept,
/// the update would stand above every vector, shown here and on every
/// device served from here, with no change ever to replace it (the
/// simulation, 3 devices, 600 operations, seeds 53 and 192 of every fault:
/// a volume its owner created, renamed, deleted, then lost all three, the
/// rename taken from pages given up). This device may have taken an
/// earlier write of the record, whose number the vector holds: the record
/// is marked forgotten (`_sync_forgotten`) until the backfill completes,
/// so that the new snapshot's row of it is taken (seed 33). Only for
/// states, and only here, where the pages are known given up: a held row
/// (see `forget_unheld`, seed 223), a held row released, or a row served
/// during a backfill keeps the narrower rule (applied to the last two,
/// seeds 3 and 47 failed).
fn forgets(state: &RecordState, received: &Received, next: &VersionVector) -> bool {
    given_up(state, received, next)
        || matches!(state, RecordState::Owned(o) if !o.is_delete()
            && unheld(received, next, o.change.origin, o.change.seq)
            && o.change.replaces.is_some_and(|(origin, seq)| unheld(received, next, origin, seq)))
}

/// Whether a state is the creation of a record that pages of a snapshot
/// given up brought and no device may hold: its writes are ones this
/// device did not receive (`received`) and the new snapshot's vector
/// (`next`) does not name, and it still carries its creation (a
/// device-owned change that replaced nothing; a shared field set by a
/// write that replaced nothing), so no earlier write of the record can
/// have reached this device. A state carrying a write stored without its
/// number, a delete, or an update that may have replaced a write taken
/// here is kept: forgetting it would lose what was taken, and could make
/// the record look deleted and collected here.
pub(crate) fn given_up(state: &RecordState, received: &Received, next: &VersionVector) -> bool {
    let unheld = |origin: Uuid, seq: u64| unheld(received, next, origin, seq);
    match state {
        RecordState::Owned(o) => {
            !o.is_delete() && o.change.replaces.is_none() && unheld(o.change.origin, o.change.seq)
        }
        RecordState::Shared(s) => {
            s.tombstone.is_none()
                && s.fields.values().any(|f| f.base.is_none())
                && s.fields
                    .values()
                    .all(|f| unheld(timestamp_origin(&f.hlc), f.seq))
        }
    }
}

/// The records stored with `presence` (any, if `None`), each with its
/// model and state, but those `pinned` (and any of a model not registered
/// here).
async fn stored_with<C: ConnectionTrait>(
    db: &C,
    registry: &crate::registry::Registry,
    presence: Option<Presence>,
    pinned: &BTreeSet<RecordId>,
) -> Result<Vec<(&'static crate::registry::ModelDescriptor, Uuid, RecordState)>, EngineError> {
    let query = match presence {
        // A literal, so that the partial index on deleted (or hidden) rows
        // serves it.
        Some(p) => store::stmt(
            &format!(
                "SELECT model, record, state FROM _sync_rows WHERE presence = {}",
                p.code()
            ),
            vec![],
        ),
        None => store::stmt("SELECT model, record, state FROM _sync_rows", vec![]),
    };
    let rows = db.query_all_raw(query).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let model: String = row.try_get("", "model")?;
        let Some(desc) = registry.get(&model) else {
            continue;
        };
        let id = store::get_uuid(row, "record", "_sync_rows")?;
        if pinned.contains(&(desc.name(), id)) {
            continue;
        }
        let bytes: Vec<u8> = row.try_get("", "state")?;
        let state = RecordState::decode(desc.meta().ownership, &bytes)
            .map_err(|e| store::corrupt("_sync_rows", e))?;
        out.push((desc, id, state));
    }
    Ok(out)
}

/// The rows hidden (a reference that cannot be null points at a record
/// that is gone) whose record is `gone` now, or was collected before (no
/// state of it is left here), and the rows hidden for them in turn.
/// Nothing can show such a row again: the record it needs never comes
/// back. Kept, it would be served in snapshots without that record, and
/// wait there for ever on a device that never held it (the simulation, 3
/// devices, seed 73 of every fault). Rows a held snapshot row refers to
/// (`pinned`) stay until it is merged.
async fn dead_hidden<C: ConnectionTrait>(
    db: &C,
    registry: &crate::registry::Registry,
    gone: &BTreeSet<RecordId>,
    pinned: &BTreeSet<RecordId>,
) -> Result<Vec<RecordId>, EngineError> {
    // Each hidden row with the records its required references point at.
    let mut hidden: Vec<(RecordId, Vec<RecordId>)> = Vec::new();
    for (desc, id, state) in stored_with(db, registry, Some(Presence::Hidden), pinned).await? {
        let targets = desc
            .meta()
            .references()
            .filter(|r| !r.nullable)
            .filter_map(|r| match (state.value(r.field), registry.get(r.target)) {
                (Some(WireValue::Uuid(Some(target))), Some(to)) => Some((to.name(), *target)),
                _ => None,
            })
            .collect();
        hidden.push(((desc.name(), id), targets));
    }
    let mut dead: BTreeSet<RecordId> = BTreeSet::new();
    let mut absent: BTreeMap<RecordId, bool> = BTreeMap::new();
    loop {
        let mut more = false;
        for (key, targets) in &hidden {
            if dead.contains(key) {
                continue;
            }
            let mut is_dead = false;
            for t in targets {
                if gone.contains(t) || dead.contains(t) {
                    is_dead = true;
                    break;
                }
                let missing = match absent.get(t) {
                    Some(m) => *m,
                    None => {
                        let m = db
                            .query_one_raw(store::stmt(
                                "SELECT 1 AS one FROM _sync_rows WHERE model = ? AND record = ?",
                                vec![t.0.into(), store::uuid_value(t.1)],
                            ))
                            .await?
                            .is_none();
                        absent.insert(*t, m);
                        m
                    }
                };
                if missing {
                    is_dead = true;
                    break;
                }
            }
            if is_dead {
                dead.insert(*key);
                more = true;
            }
        }
        if !more {
            break;
        }
    }
    Ok(dead.into_iter().collect())
}

/// Per origin, the lowest number the held snapshot rows carry (a field's
/// write, a delete, a device-owned change): the vector their snapshot
/// brought counts them, but their state is not merged yet, so this device
/// does not hold what they say from there on. A field stored without its
/// number counts from the origin's first. Reported to members with what
/// this device holds, so that none collects a tombstone on its word that
/// a held row still carries.
pub(crate) fn held_floors(held: &[store::HeldRow]) -> BTreeMap<Uuid, u64> {
    let mut out: BTreeMap<Uuid, u64> = BTreeMap::new();
    let mut note = |origin: Uuid, seq: u64| {
        let seq = seq.max(1);
        out.entry(origin)
            .and_modify(|s| *s = (*s).min(seq))
            .or_insert(seq);
    };
    for h in held {
        match rmp_serde::from_slice::<SnapshotRow>(&h.row) {
            Ok(SnapshotRow::Owned(bytes)) => {
                if let Ok(change) = Change::decode(&bytes.0) {
                    note(change.origin, change.seq);
                }
            }
            Ok(SnapshotRow::Shared { image, .. }) => {
                if let Ok(RecordState::Shared(state)) =
                    RecordState::decode(crate::model::Ownership::Shared, &image)
                {
                    for f in state.fields.values() {
                        note(timestamp_origin(&f.hlc), f.seq);
                    }
                    if let Some((origin, seq)) = state.tombstone.and_then(|t| t.delete) {
                        note(origin, seq);
                    }
                }
            }
            Err(_) => {}
        }
    }
    out
}

/// Whether `vector` holds every write that made a shared state: each
/// field's, by its number under its clock's origin. A field stored without
/// its number (before it was kept) proves nothing.
/// Whether every write a held row's state carries is one `vector` covers:
/// a device-owned change (or the state it replaced), a shared record's
/// every field (each with its number).
fn covered(state: &RecordState, vector: &VersionVector) -> bool {
    match state {
        RecordState::Owned(o) => {
            let held = |(origin, seq): (Uuid, u64)| seq <= vector.get(origin);
            held((o.change.origin, o.change.seq)) || o.change.replaces.is_some_and(held)
        }
        RecordState::Shared(s) => writes_covered(s, vector),
    }
}

fn writes_covered(state: &SharedState, vector: &VersionVector) -> bool {
    !state.fields.is_empty() && state.fields.values().all(|f| field_covered(f, vector))
}

/// Whether a field was set by a write (with its number) that `vector` holds.
fn field_covered(f: &crate::state::FieldState, vector: &VersionVector) -> bool {
    f.seq > 0 && f.seq <= vector.get(timestamp_origin(&f.hlc))
}

/// The state that shows a record as deleted, for a record dropped because
/// its tombstone was collected elsewhere. Kept for a shared record (it
/// stops any write that lost to the delete); for a device-owned one it only
/// drives the projection, and is not stored.
fn tombstone_of(device: Uuid, state: RecordState) -> Option<RecordState> {
    Some(match state {
        RecordState::Shared(s) => {
            let latest = s.latest()?;
            RecordState::Shared(SharedState {
                fields: BTreeMap::new(),
                tombstone: Some(Tombstone {
                    device,
                    hlc: latest,
                    seen: Some(latest),
                    delete: None,
                }),
            })
        }
        RecordState::Owned(mut o) => {
            o.change.op = Op::Delete { seen: None };
            RecordState::Owned(o)
        }
    })
}
