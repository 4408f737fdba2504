//! Backfill: a new device loads the whole library from a peer, page by page,
//! resumable after a restart, then catches up from the vector the snapshot
//! reflects.
//!
//! A snapshot is every stored record state, model by model in dependency
//! order and by id within a model, served as the bytes the serving device
//! stores (a device-owned record as its owner's change, a shared record as
//! its fields with their clocks), then the rows it holds back itself. States
//! merge like changes, so a change that reaches the new device during the
//! backfill, before or after the row it touches, ends in the same state:
//! such changes are applied on arrival.

use sea_orm::{ConnectionTrait, TransactionTrait};

use crate::engine::Engine;
use crate::error::EngineError;
use crate::peers::Phase;
use crate::protocol::{
    ErrorCode, ErrorMessage, PullRequest, SnapshotCursor, SnapshotRequest, SnapshotResponse,
    SnapshotRow,
};
use crate::receive::{ApplyReport, Incoming, SnapshotStep};
use crate::state::RecordState;
use crate::store;
use crate::vector::VersionVector;

/// The largest snapshot page a peer may ask for.
pub const MAX_SNAPSHOT_LIMIT: u32 = 10_000;

const META_BACKFILL: &str = "backfill";
const META_BACKFILL_CURSOR: &str = "backfill_cursor";

/// The source of a running backfill's cursor once its snapshot was given
/// up (see [`Engine::restart_backfill`]): no device's, so every server
/// starts a snapshot over for it, and its first page is taken from any
/// peer.
pub(crate) const GIVEN_UP: uuid::Uuid = uuid::Uuid::nil();

/// Where this device's backfill stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Backfill {
    /// A new device: it must load a snapshot before it syncs.
    #[default]
    Needed,
    /// Loading, resumable from the cursor.
    Running(SnapshotCursor),
    /// Done (or never needed).
    Done,
}

/// See [`Engine::backfill_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BackfillWith {
    /// Ask the peer for a snapshot (or the next page of the running one).
    Ask,
    /// No backfill is needed: nobody holds data yet.
    Skip,
    /// Keep the backfill for another peer; only pull from this one.
    Pull,
}

impl Backfill {
    pub(crate) fn step(&mut self, step: &SnapshotStep) {
        *self = match &step.next {
            Some(cursor) => Backfill::Running(cursor.clone()),
            None => Backfill::Done,
        };
    }
}

pub(crate) async fn load_backfill<C: ConnectionTrait>(db: &C) -> Result<Backfill, EngineError> {
    Ok(match store::get_meta_u64(db, META_BACKFILL).await? {
        2 => Backfill::Done,
        1 => match store::get_meta(db, META_BACKFILL_CURSOR).await? {
            Some(bytes) if !bytes.is_empty() => Backfill::Running(
                rmp_serde::from_slice(&bytes).map_err(|e| store::corrupt("_sync_meta", e))?,
            ),
            _ => Backfill::Needed,
        },
        _ => Backfill::Needed,
    })
}

async fn save_backfill<C: ConnectionTrait>(db: &C, state: &Backfill) -> Result<(), EngineError> {
    let (code, cursor) = backfill_meta(state)?;
    store::set_meta_u64(db, META_BACKFILL, code).await?;
    store::set_meta(db, META_BACKFILL_CURSOR, cursor).await?;
    Ok(())
}

/// Records a snapshot page's step, in the page's transaction.
pub(crate) fn save_backfill_step(
    script: &mut store::Script,
    step: &SnapshotStep,
) -> Result<(), EngineError> {
    let mut state = Backfill::Needed;
    state.step(step);
    let (code, cursor) = backfill_meta(&state)?;
    store::set_meta_in(script, META_BACKFILL, code.to_be_bytes().to_vec());
    store::set_meta_in(script, META_BACKFILL_CURSOR, cursor);
    if step.next.is_none() {
        script.push("DELETE FROM _sync_forgotten".into(), vec![]);
    }
    Ok(())
}

fn backfill_meta(state: &Backfill) -> Result<(u64, Vec<u8>), EngineError> {
    Ok(match state {
        Backfill::Needed => (0, Vec::new()),
        Backfill::Running(c) => (
            1,
            rmp_serde::to_vec(c).map_err(|e| EngineError::Malformed(e.to_string()))?,
        ),
        Backfill::Done => (2, Vec::new()),
    })
}

/// A stored record state as a snapshot row.
fn snapshot_row(
    desc: &crate::registry::ModelDescriptor,
    id: uuid::Uuid,
    state: Vec<u8>,
) -> SnapshotRow {
    match desc.meta().ownership {
        crate::model::Ownership::Shared => SnapshotRow::Shared {
            model: desc.name().to_owned(),
            id,
            image: state,
        },
        crate::model::Ownership::DeviceOwned => {
            SnapshotRow::Owned(crate::change::EncodedChange(state))
        }
    }
}

fn malformed(message: impl Into<String>) -> ErrorMessage {
    ErrorMessage {
        code: ErrorCode::Malformed,
        message: message.into(),
    }
}

impl Engine {
    /// One page of a snapshot of everything this device holds.
    #[tracing::instrument(skip_all, fields(device = %self.device()))]
    pub(crate) async fn serve_snapshot(
        &self,
        request: &SnapshotRequest,
    ) -> Result<Result<SnapshotResponse, ErrorMessage>, EngineError> {
        let models = self.registry().models();
        // A cursor from another device's snapshot (a backfill that moved to
        // this peer) reflects another vector: start over. So does one of
        // this device's own snapshots whose vector it no longer holds (its
        // database went back since, by a power loss or a restored backup):
        // the pages still to come would lack states the snapshot's vector
        // claims, and the requester would adopt numbers without their rows.
        // So does one started by an earlier incarnation of this device (it
        // opened since): it may have lost writes that pages already served
        // carry, made after the vector was fixed (the last page's changes
        // would no longer bring them), and the requester alone would hold
        // them (the simulation, 5 devices, seed 133 of every fault).
        let mut cursor = match &request.cursor {
            Some(cursor)
                if cursor.source == self.device()
                    && cursor.origin == self.origin()
                    && self.memory().received.vector.covers(&cursor.vector) =>
            {
                cursor.clone()
            }
            _ => {
                let (vector, pruned, total, any_held) = {
                    let m = self.memory();
                    (
                        m.received.vector.clone(),
                        m.pruned
                            .ahead_ranges()
                            .take(crate::protocol::MAX_AHEAD)
                            .collect(),
                        m.rows.values().sum::<u64>() + m.held_rows,
                        m.held_rows > 0,
                    )
                };
                let mut held: Vec<(String, uuid::Uuid)> = if any_held {
                    store::held_records(self.db()).await?
                } else {
                    Vec::new()
                };
                held.truncate(MAX_SNAPSHOT_LIMIT as usize);
                SnapshotCursor {
                    source: self.device(),
                    origin: self.origin(),
                    model: 0,
                    after: None,
                    vector,
                    total,
                    done: 0,
                    held,
                    pruned,
                }
            }
        };
        if cursor.model as usize > models.len() {
            return Ok(Err(malformed("snapshot cursor names no model")));
        }
        let tx = self.db().begin().await?;
        let limit = u64::from(request.limit.clamp(1, MAX_SNAPSHOT_LIMIT));
        // A device whose own backfill runs holds the rows its pages
        // brought before it holds their numbers; a creation among them
        // whose writer lost it (a power loss) no device will ever hold as a
        // change. Served, it would stand on the requester under no vector,
        // and stay there alone once this device forgot it, its own
        // snapshot started over (the simulation, 3 devices, seeds 67 and
        // 630 of every fault). Such rows are left out: what this device
        // serves while it backfills is what it holds as changes, which its
        // vector names. (A device that completed its backfill holds the
        // numbers of what its rows carry, or receives them with the last
        // page.)
        let unheld = self.needs_backfill().then(|| self.received());
        let none = VersionVector::new();
        let serves = |state: Option<RecordState>| match (&unheld, state) {
            (Some(received), Some(state)) => !crate::collect::given_up(&state, received, &none),
            _ => true,
        };
        let mut rows = Vec::new();
        let mut bytes = 0usize;
        let mut finished = false;
        while (rows.len() as u64) < limit && bytes < crate::catchup::PAGE_BYTES {
            let room = limit - rows.len() as u64;
            let Some(desc) = models.get(cursor.model as usize).copied() else {
                // The last section: rows this device holds back itself, and
                // the records of rows it held back when the snapshot started
                // and released since, as they stand.
                if cursor.after.is_none() {
                    let now = store::held_rows(&tx).await?;
                    for (model, id) in cursor.held.iter().take(MAX_SNAPSHOT_LIMIT as usize) {
                        if now.iter().any(|h| h.model == *model && h.record == *id) {
                            continue;
                        }
                        let Some(desc) = self.registry().get(model) else {
                            continue;
                        };
                        if let Some(state) = store::row_state(&tx, desc.name(), *id).await?
                            && serves(unheld.as_ref().and_then(|_| {
                                RecordState::decode(desc.meta().ownership, &state).ok()
                            }))
                        {
                            rows.push(snapshot_row(desc, *id, state));
                        }
                    }
                    // Of held rows, what this device would take is served.
                    let take = self.held_to_take(&tx, &now).await?;
                    for (held, row) in now.iter().zip(take) {
                        let state = crate::collect::held_state(self.registry(), held);
                        if let Some(row) = row
                            && serves(state.map(|(_, s)| s))
                        {
                            rows.push(row);
                        }
                    }
                }
                finished = true;
                break;
            };
            let page = store::rows_page(&tx, desc.name(), cursor.after, room).await?;
            let full = page.len() as u64 == room;
            for (id, state) in page {
                bytes = bytes.saturating_add(state.len());
                cursor.after = Some(id);
                if unheld.is_some()
                    && !serves(RecordState::decode(desc.meta().ownership, &state).ok())
                {
                    continue;
                }
                rows.push(snapshot_row(desc, id, state));
                if bytes >= crate::catchup::PAGE_BYTES {
                    break;
                }
            }
            if !full && bytes < crate::catchup::PAGE_BYTES {
                cursor.model += 1;
                cursor.after = None;
            }
        }
        tx.commit().await?;
        cursor.done = cursor.done.saturating_add(rows.len() as u64);
        let (vector, total, done) = (cursor.vector.clone(), cursor.total, cursor.done);
        let pruned = cursor.pruned.clone();
        // The last page carries what was received since the vector: rows
        // read after it may hold those changes' effects, and the requester
        // keeps them as changes even if this device loses them next.
        let changes = if finished {
            let since = PullRequest {
                vector: vector.clone(),
                limit: crate::catchup::MAX_PULL_LIMIT,
                ahead: pruned.clone(),
            };
            self.answer_pull(&since, false)
                .await?
                .map(|r| r.batches)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        metrics::counter!("syncable_snapshot_rows_sent_total").increment(rows.len() as u64);
        Ok(Ok(SnapshotResponse {
            rows,
            next: (!finished).then_some(cursor),
            vector,
            total,
            done,
            changes,
            pruned,
        }))
    }

    /// Whether this device still has to load a snapshot before it syncs.
    pub fn needs_backfill(&self) -> bool {
        self.memory().backfill != Backfill::Done
    }

    /// Records that no backfill is needed (the first device of a library,
    /// or one whose peers hold nothing yet).
    pub async fn skip_backfill(&self) -> Result<(), EngineError> {
        self.set_backfill(Backfill::Done).await
    }

    /// What this device, which needs a backfill, asks of `peer`, which
    /// just said hello (`holds_data`: it holds another device's changes).
    ///
    /// A peer that holds data is asked for a snapshot. One that holds
    /// nothing ends the backfill only for a device that has not started
    /// one: the first devices of a library have nothing to load. A device
    /// whose backfill is under way, or that is resyncing, keeps it, and
    /// only pulls from such a peer: ending it there would keep what pages
    /// already applied brought, under no snapshot's vector, and a resync
    /// would never settle what it set out to (the simulation, 3 devices,
    /// seed 671 of every fault: a new device's server lost everything to a
    /// power loss, came back empty, and the new device, taking its hello as
    /// a library's first, kept a collection from its pages that no device
    /// held any more). The server of the running snapshot itself, come back
    /// empty, is asked again: it starts the snapshot over, and the device
    /// forgets what the given-up pages brought that no device may hold.
    pub(crate) fn backfill_with(&self, peer: uuid::Uuid, holds_data: bool) -> BackfillWith {
        let m = self.memory();
        match &m.backfill {
            _ if holds_data => BackfillWith::Ask,
            Backfill::Needed if !m.resyncing => BackfillWith::Skip,
            Backfill::Running(c) if c.source == peer => BackfillWith::Ask,
            _ => BackfillWith::Pull,
        }
    }

    /// Starts a backfill over, as a peer that lacks changes no longer kept
    /// must. `expired`: this device was away beyond the retention horizon,
    /// so a record the snapshot does not bring may have been deleted with
    /// its tombstone collected since; it is settled when the snapshot is
    /// complete (see `collect`). A device that was not expired held every
    /// collected delete (collection waits for its acknowledgement), but may
    /// have lost one since, if its database went back (a power loss, a
    /// restored backup): its device-owned records the snapshot lacks,
    /// whose state the snapshot's vector covers, are settled (dropped); it
    /// keeps the rest.
    ///
    /// A backfill under way whose pages brought rows keeps its cursor, with
    /// no source ([`GIVEN_UP`]): the next snapshot starts over, from any
    /// peer, and its first page has what those pages brought that no device
    /// may hold forgotten first, as when a backfill moves to another peer.
    /// (Starting as a new device, it kept them: a creation whose writer and
    /// whose server lost it to power losses, under no vector, which it
    /// served on: the simulation, 3 devices, seed 51 of every fault with
    /// 600 operations.)
    pub(crate) async fn restart_backfill(&self, expired: bool) -> Result<(), EngineError> {
        let state = match &self.memory().backfill {
            Backfill::Running(c) if c.done > 0 => Backfill::Running(SnapshotCursor {
                source: GIVEN_UP,
                ..c.clone()
            }),
            _ => Backfill::Needed,
        };
        let w = self.write_tx().await?;
        save_backfill(&w.tx, &state).await?;
        self.begin_resync(&w.tx, expired).await?;
        w.tx.commit().await?;
        let mut m = self.memory();
        m.backfill = state;
        m.resyncing = true;
        Ok(())
    }

    async fn set_backfill(&self, state: Backfill) -> Result<(), EngineError> {
        let w = self.write_tx().await?;
        save_backfill(&w.tx, &state).await?;
        w.tx.commit().await?;
        self.memory().backfill = state;
        Ok(())
    }

    /// The request that continues (or starts) this device's backfill.
    pub(crate) fn backfill_request(&self, limit: u32) -> SnapshotRequest {
        let cursor = match &self.memory().backfill {
            Backfill::Running(c) => Some(c.clone()),
            _ => None,
        };
        SnapshotRequest { cursor, limit }
    }

    /// Applies one snapshot page and records where the backfill stands, in
    /// one transaction, so it resumes there after a restart. After the last
    /// page the device holds everything the snapshot's vector names. Returns
    /// whether the backfill is complete.
    pub(crate) async fn apply_snapshot(
        &self,
        page: SnapshotResponse,
        from: Option<uuid::Uuid>,
    ) -> Result<(ApplyReport, bool), EngineError> {
        if !self.continues_backfill(&page, from) {
            tracing::debug!(
                ?from,
                done = page.done,
                "a snapshot page that does not continue this backfill: ignored"
            );
            metrics::counter!("syncable_snapshot_pages_ignored_total").increment(1);
            return Ok((ApplyReport::default(), false));
        }
        // A snapshot that starts over after pages of another were applied
        // (its server went back, or opened again, or the backfill moved to a
        // peer that holds another vector): what those pages brought that no
        // device may hold goes first. A server that opened again may hold
        // the same vector yet have lost writes made after it was fixed,
        // which pages already applied carry.
        let given_up = matches!(&self.memory().backfill,
            Backfill::Running(c) if c.done > 0 && (c.vector != page.vector
                || page.next.as_ref().is_some_and(|n| n.source == c.source && n.origin != c.origin)));
        if given_up && page.done == page.rows.len() as u64 {
            self.forget_given_up(&page.vector).await?;
        }
        let step = SnapshotStep {
            next: page.next,
            vector: page.vector,
            pruned: page.pruned,
        };
        let complete = step.next.is_none();
        let first = page.done == page.rows.len() as u64;
        self.snapshot_saw(&page.rows, first, complete.then_some(&step.vector))
            .await?;
        let (mut report, _) = self
            .receive(Incoming {
                rows: page.rows,
                snapshot: Some(step),
                ..Incoming::default()
            })
            .await?;
        if complete {
            tracing::info!(rows = page.total, "backfill complete");
            if self.memory().resyncing {
                self.finish_resync().await?;
            }
            if !page.changes.is_empty() {
                // What the server received since the snapshot's vector, as
                // a pull from it would bring.
                let (tail, _) = self
                    .receive(Incoming {
                        batches: crate::session::in_batches(page.changes),
                        ..Incoming::default()
                    })
                    .await?;
                report.held_back.extend(tail.held_back);
            }
            self.republish_unheld_deletes().await?;
        }
        Ok((report, complete))
    }

    /// Whether `page` (from the device `from`, if known) is the next page of
    /// this device's backfill. Accepted: the first page of a snapshot while
    /// one is needed, or while the device serving the running one is not
    /// connected (the backfill moves to another peer); a whole one-page
    /// snapshot at any time; the page that follows the cursor held.
    /// Anything else (a page duplicated or delayed on the way, one of a
    /// snapshot given up since, one from a second peer while the first still
    /// serves) is not applied: the last page of a snapshot makes this device
    /// adopt the snapshot's vector, which only the snapshot's every page
    /// together reflects.
    pub(crate) fn continues_backfill(
        &self,
        page: &SnapshotResponse,
        from: Option<uuid::Uuid>,
    ) -> bool {
        let Some(start) = page.done.checked_sub(page.rows.len() as u64) else {
            return false;
        };
        let m = self.memory();
        match &m.backfill {
            _ if start == 0 && page.next.is_none() => true,
            Backfill::Needed => start == 0,
            Backfill::Running(c) if start == 0 => {
                from.is_none_or(|f| f == c.source)
                    || !m.peers.get(&c.source).is_some_and(|p| p.connected)
            }
            Backfill::Running(c) => {
                start == c.done
                    && page.vector == c.vector
                    && from.is_none_or(|f| f == c.source)
                    && page.next.as_ref().is_none_or(|n| n.source == c.source)
            }
            Backfill::Done => false,
        }
    }

    /// Whether this device's backfill is to be asked of `peer`: one is
    /// needed, or the running one is served by `peer`, or by a device no
    /// longer connected.
    pub(crate) fn drives_backfill(&self, peer: uuid::Uuid) -> bool {
        let m = self.memory();
        match &m.backfill {
            Backfill::Needed => true,
            Backfill::Running(c) => {
                c.source == peer || !m.peers.get(&c.source).is_some_and(|p| p.connected)
            }
            Backfill::Done => false,
        }
    }

    /// Backfilling (with progress), or ready as far as this device alone can
    /// tell.
    pub(crate) fn backfill_phase(&self) -> Phase {
        match &self.memory().backfill {
            Backfill::Running(c) => Phase::Backfilling {
                done: c.done,
                total: c.total,
            },
            Backfill::Needed => Phase::Backfilling { done: 0, total: 0 },
            Backfill::Done => Phase::Ready,
        }
    }
}
