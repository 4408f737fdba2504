//! Paired peers: acknowledgements, pruning, the retention horizon, and the
//! status an application shows.
//!
//! What peers say (acknowledgements, signs of life, their vectors) is kept
//! in memory and written at most once a second: losing the last second of
//! it to a crash costs a page sent again, never a change. The status is
//! read from memory alone, so it never waits for the writer.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use crate::engine::Engine;
use crate::error::EngineError;
use crate::protocol::{HeldBack, HeldReport, MAX_AHEAD, MAX_LINKS};
use crate::store::{self, PeerRecord};
use crate::vector::{Received, VersionVector};

/// Where the device stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// A new device loading a snapshot: rows done of total.
    Backfilling {
        /// Rows applied so far.
        done: u64,
        /// Rows in the snapshot.
        total: u64,
    },
    /// Fetching what peers have and this device lacks.
    CatchingUp,
    /// Up to date with every connected peer, as far as it knows.
    Ready,
}

/// One paired peer, as this device sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeerStatus {
    /// The peer.
    pub peer: Uuid,
    /// Whether a session with it is open.
    pub connected: bool,
    /// When it was last heard from, in ms since the Unix epoch.
    pub last_seen_ms: Option<u64>,
    /// How many changes this device holds that the peer has not
    /// acknowledged (an upper bound where device-owned changes left holes).
    pub behind: u64,
    /// How many changes the peer holds that this device lacks, as of its
    /// last message.
    pub ahead: u64,
    /// How long the peer has lacked something this device holds, in ms:
    /// the age, here, of the oldest change it has not acknowledged (0 when
    /// it holds everything; counted from this engine's start for changes
    /// held before it).
    pub lag_ms: u64,
    /// Commit (there) to applied (here) of its newest write received, in
    /// ms, skew between the two clocks included.
    pub latency_ms: Option<u64>,
    /// Whether it acknowledged anything yet.
    pub acknowledged: bool,
    /// Away beyond the retention horizon: it must resync from a snapshot.
    pub expired: bool,
    /// Changes received from it that this device holds back for now.
    pub held_back: Vec<HeldBack>,
    /// Changes of this device that the peer holds back for now, as it said.
    pub held_back_there: Vec<HeldBack>,
}

/// The device's sync status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Status {
    /// This device.
    pub device: Uuid,
    /// Its current incarnation.
    pub origin: Uuid,
    /// Backfilling, catching up or ready.
    pub phase: Phase,
    /// This device's version vector.
    pub vector: VersionVector,
    /// Every paired peer.
    pub peers: Vec<PeerStatus>,
    /// Changes in the log.
    pub log_len: u64,
    /// Records waiting for another record before they are shown.
    pub parked: u64,
    /// Entries in the conflict log.
    pub conflicts: u64,
    /// Snapshot rows held back for now.
    pub held_rows: u64,
}

/// The most heartbeat vectors the reports of members are kept against.
const MAX_BASES: usize = 4;

/// What a member of the library is known to hold, from heartbeats: the
/// vector of the heartbeat that brought the report (shared by every member
/// that heartbeat reported) and where the member differs from it, so that
/// a device keeps a few vectors (at most [`MAX_BASES`] and one more), not
/// one per member.
#[derive(Debug, Default, Clone)]
pub(crate) struct Heard {
    base: Arc<VersionVector>,
    differs: BTreeMap<Uuid, u64>,
    /// The sum of the member's numbers: with the stamp, tells reports apart
    /// (two within one millisecond).
    total: u64,
    /// When the member held it, by its clock.
    pub(crate) stamp: u64,
    /// When (this device's time) a newer report of it arrived last, which
    /// is when what it holds last changed.
    pub(crate) fresh_at: u64,
    /// No newer report for longer than the retention horizon.
    pub(crate) expired: bool,
    /// Numbers the member holds above its vector (usually none).
    ahead: BTreeMap<Uuid, BTreeMap<u64, u64>>,
    /// Per origin, the lowest number it counts only through snapshot rows
    /// it holds back (usually none).
    pending: BTreeMap<Uuid, u64>,
}

/// What a member is known to hold, as tombstone collection weighs it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Holding {
    /// Its vector and the numbers above it.
    pub(crate) received: Received,
    /// Per origin, the lowest number it counts only through snapshot rows
    /// it holds back: their state is not merged there yet.
    pub(crate) pending: BTreeMap<Uuid, u64>,
}

impl Holding {
    /// Whether the member holds the change `(origin, seq)` merged: a
    /// delete it holds, whose tombstone it no longer needs from anyone.
    pub(crate) fn has(&self, origin: Uuid, seq: u64) -> bool {
        self.received.contains(origin, seq) && self.pending.get(&origin).is_none_or(|p| seq < *p)
    }
}

impl Heard {
    /// The number of `origin` the member holds.
    pub(crate) fn get(&self, origin: Uuid) -> u64 {
        self.differs
            .get(&origin)
            .copied()
            .unwrap_or_else(|| self.base.get(origin))
    }

    /// The member's vector.
    pub(crate) fn vector(&self) -> VersionVector {
        let mut v = (*self.base).clone();
        for (origin, seq) in &self.differs {
            v.set(*origin, *seq);
        }
        v
    }

    /// All the member holds: its vector, the numbers above it, and those
    /// it holds back as snapshot rows.
    pub(crate) fn holding(&self) -> Holding {
        Holding {
            received: Received {
                vector: self.vector(),
                ahead: self.ahead.clone(),
            },
            pending: self.pending.clone(),
        }
    }

    /// Whether the vector `base` with `differs` set holds all this one does,
    /// and more.
    fn holds_less(&self, base: &VersionVector, differs: &BTreeMap<Uuid, u64>) -> bool {
        let theirs = |o: Uuid| differs.get(&o).copied().unwrap_or_else(|| base.get(o));
        let mut origins: BTreeSet<Uuid> =
            self.differs.keys().chain(differs.keys()).copied().collect();
        if *self.base != *base {
            origins.extend(self.base.iter().chain(base.iter()).map(|(o, _)| o));
        }
        let mut more = false;
        for o in origins {
            let (new, old) = (theirs(o), self.get(o));
            if new < old {
                return false;
            }
            more |= new > old;
        }
        more
    }

    /// Where the member differs from `mine`, given where this report's
    /// base differs from it (computed once per base).
    fn differs_from(&self, mine: &VersionVector, base_differs: &[(Uuid, u64)]) -> Vec<(Uuid, u64)> {
        let origins: BTreeSet<Uuid> = base_differs
            .iter()
            .map(|(o, _)| *o)
            .chain(self.differs.keys().copied())
            .collect();
        origins
            .into_iter()
            .filter_map(|o| {
                let seq = self.get(o);
                (seq != mine.get(o)).then_some((o, seq))
            })
            .collect()
    }
}

/// What this device knows of a paired peer.
#[derive(Debug, Clone, Default)]
pub(crate) struct PeerMemory {
    pub(crate) acked: Option<VersionVector>,
    pub(crate) last_seen: Option<u64>,
    pub(crate) expired: bool,
    pub(crate) connected: bool,
    /// Sessions open with it (a replaced connection's session may end after
    /// its successor's began).
    pub(crate) sessions: u32,
    /// Its vector, as of its last message.
    pub(crate) vector: Option<VersionVector>,
    /// Not yet written.
    pub(crate) dirty: bool,
    /// Changes from it held back here, per origin.
    pub(crate) held_back: BTreeMap<Uuid, HeldBack>,
    /// Changes of ours it holds back, as it said.
    pub(crate) held_back_there: Vec<HeldBack>,
    /// The devices it has a session with, as of its last heartbeat.
    pub(crate) links: Option<BTreeSet<Uuid>>,
    /// Commit to applied here, of its newest write received.
    pub(crate) latency_ms: Option<u64>,
}

impl PeerMemory {
    pub(crate) fn from_record(r: PeerRecord) -> Self {
        Self {
            acked: r.acked,
            last_seen: r.last_seen,
            expired: r.expired,
            ..Self::default()
        }
    }

    fn record(&self, peer: Uuid) -> PeerRecord {
        PeerRecord {
            peer,
            acked: self.acked.clone(),
            last_seen: self.last_seen,
            expired: self.expired,
        }
    }
}

/// How often, at most, what peers said is written, and the log pruned.
const BOOKKEEPING_MS: u64 = 1_000;

impl Engine {
    /// Pairs a peer: it may sync with this device, and pruning waits for its
    /// acknowledgements.
    ///
    /// Pairing also admits the peer into the library: this device signs an
    /// admission that every other member believes, so that devices that
    /// never meet the peer accept its changes relayed by others. A removed
    /// device cannot be paired again (it would need a new key, and so a new
    /// id).
    pub async fn pair(&self, peer: Uuid) -> Result<(), EngineError> {
        if peer == self.device() {
            return Err(EngineError::Membership(
                "a device cannot pair with itself".into(),
            ));
        }
        let (paired, admitted, removed) = {
            let m = self.memory();
            (
                m.peers.contains_key(&peer),
                m.membership.admitted(self.device(), peer),
                m.membership.is_removed(peer),
            )
        };
        if removed {
            return Err(EngineError::Membership(format!(
                "device {peer} was removed from the library"
            )));
        }
        if paired && admitted {
            return Ok(());
        }
        let now = self.now_ms();
        let memory = PeerMemory {
            last_seen: Some(now),
            ..PeerMemory::default()
        };
        let admission = crate::trust::MemberRecord::admit(self.key(), peer, now);
        let (id, bytes) = admission
            .id()
            .map_err(|e| EngineError::Malformed(e.to_string()))?;
        let w = self.write_tx().await?;
        if !paired {
            store::save_peers(&w.tx, &[memory.record(peer)]).await?;
        }
        let mut script = store::Script::default();
        store::save_members(&mut script, &[(id, bytes)]);
        script.run(&w.tx).await?;
        w.tx.commit().await?;
        let mut m = self.memory();
        if !paired {
            m.peers.insert(peer, memory);
        }
        m.membership.add(vec![(id, admission)]);
        let me = self.device();
        let peers: Vec<Uuid> = m.peers.keys().copied().collect();
        m.membership.recompute(me, peers);
        Ok(())
    }

    /// Forgets a peer: pruning no longer waits for it.
    pub async fn unpair(&self, peer: Uuid) -> Result<(), EngineError> {
        let w = self.write_tx().await?;
        store::remove_peer(&w.tx, peer).await?;
        w.tx.commit().await?;
        let mut m = self.memory();
        m.peers.remove(&peer);
        let me = self.device();
        let peers: Vec<Uuid> = m.peers.keys().copied().collect();
        m.membership.recompute(me, peers);
        Ok(())
    }

    /// Whether a peer is paired.
    pub fn is_paired(&self, peer: Uuid) -> bool {
        self.memory().peers.contains_key(&peer)
    }

    /// The paired peers.
    pub fn paired(&self) -> Vec<Uuid> {
        self.memory().peers.keys().copied().collect()
    }

    /// What `peer` is known to hold, as of its last message and its
    /// acknowledgements; `None` if it never said. A relay uses it to skip
    /// sending a peer what it already has.
    pub fn peer_vector(&self, peer: Uuid) -> Option<VersionVector> {
        let m = self.memory();
        let p = m.peers.get(&peer)?;
        match (&p.vector, &p.acked) {
            (None, None) => None,
            (Some(v), None) | (None, Some(v)) => Some(v.clone()),
            (Some(v), Some(a)) => {
                let mut v = v.clone();
                v.merge(a);
                Some(v)
            }
        }
    }

    /// Records that `peer` was heard from, with its vector if it sent one.
    pub(crate) fn heard_from(&self, peer: Uuid, vector: Option<&VersionVector>) {
        let now = self.now_ms();
        let mut m = self.memory();
        let mine = m.received.vector.clone();
        if let Some(p) = m.peers.get_mut(&peer) {
            p.last_seen = Some(now);
            p.dirty = true;
            if let Some(v) = vector {
                metrics::gauge!("syncable_peer_lag_changes", "peer" => peer.to_string())
                    .set(mine.behind(v) as f64);
                p.vector = Some(v.clone());
            }
        }
    }

    /// Notes a session with `peer` opening or closing: it is connected
    /// while any is open (a replaced connection's session may end after its
    /// successor's began).
    pub fn set_connected(&self, peer: Uuid, connected: bool) {
        if let Some(p) = self.memory().peers.get_mut(&peer) {
            p.sessions = if connected {
                p.sessions.saturating_add(1)
            } else {
                p.sessions.saturating_sub(1)
            };
            p.connected = p.sessions > 0;
            if !p.connected {
                p.links = None;
            }
        }
    }

    /// The peers this device has a session with now.
    pub fn connected_peers(&self) -> Vec<Uuid> {
        let m = self.memory();
        m.peers
            .iter()
            .filter(|(_, p)| p.connected)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Notes the devices `peer` said it has a session with.
    pub(crate) fn note_links(&self, peer: Uuid, links: &[Uuid]) {
        if let Some(p) = self.memory().peers.get_mut(&peer) {
            p.links = Some(links.iter().take(MAX_LINKS).copied().collect());
        }
    }

    /// Notes what a peer's heartbeat says members of the library hold
    /// (`base`: the heartbeat's vector, which the reports differ from). Of
    /// the reports of one member, the latest by that member's stamp is
    /// kept: not a merge, since a member rolled back to an earlier state (a
    /// restored backup, a power loss) holds less than it once reported; and
    /// not simply the last to arrive, since a relay echoes older reports.
    pub(crate) fn note_held(&self, base: &VersionVector, held: &[HeldReport]) {
        let now = self.now_ms();
        let me = self.device();
        let mut shared: Option<Arc<VersionVector>> = None;
        let mut base_total: Option<u64> = None;
        let mut m = self.memory();
        for report in held.iter().take(MAX_LINKS) {
            let device = report.device;
            if device == me || !m.membership.is_member(device) || m.membership.is_removed(device) {
                continue;
            }
            let known = m.heard.get(&device);
            if known.is_some_and(|h| report.stamp < h.stamp) {
                continue;
            }
            let mut differs: BTreeMap<Uuid, u64> = report.differs.iter().copied().collect();
            differs.retain(|o, s| *s != base.get(*o));
            let base_total = *base_total.get_or_insert_with(|| base.total());
            let total = differs.iter().fold(base_total, |t, (o, s)| {
                t.saturating_sub(base.get(*o)).saturating_add(*s)
            });
            // Two reports within one millisecond: the one that holds more.
            // Holding more means a larger sum, so a report whose sum is not
            // larger (most often the same report, relayed) is left at
            // that, without comparing the vectors origin by origin.
            if known.is_some_and(|h| {
                report.stamp == h.stamp && (total <= h.total || !h.holds_less(base, &differs))
            }) {
                continue;
            }
            let base = shared.get_or_insert_with(|| Arc::new(base.clone())).clone();
            // Ranges above the member's vector, normalised: a range that
            // is empty, at or below the vector, or overlapping another is
            // folded or dropped, never trusted as given.
            let mut above = Received::default();
            for (origin, start, end) in report.ahead.iter().take(MAX_AHEAD) {
                let held = differs
                    .get(origin)
                    .copied()
                    .unwrap_or_else(|| base.get(*origin));
                above.vector.set(*origin, held);
                above.insert(*origin, (*start).max(held.saturating_add(2)), *end);
            }
            m.heard.insert(
                device,
                Heard {
                    base,
                    differs,
                    total,
                    stamp: report.stamp,
                    fresh_at: now,
                    expired: false,
                    ahead: above.ahead,
                    pending: report
                        .pending
                        .iter()
                        .take(MAX_AHEAD)
                        .map(|(o, s)| (*o, (*s).max(1)))
                        .collect(),
                },
            );
        }
        // Reports kept from many heartbeats would keep as many vectors:
        // past a few, every report is rebased on this heartbeat's.
        if let Some(base) = shared {
            let bases: BTreeSet<*const VersionVector> =
                m.heard.values().map(|h| Arc::as_ptr(&h.base)).collect();
            if bases.len() > MAX_BASES {
                for h in m.heard.values_mut() {
                    if !Arc::ptr_eq(&h.base, &base) {
                        let v = h.vector();
                        h.differs = v.differs_from(&base).into_iter().collect();
                        h.base = base.clone();
                    }
                }
            }
        }
    }

    /// What this device knows each member holds, itself included, for a
    /// heartbeat whose vector is `mine`; reports `sent` says the peer has
    /// (by member, stamp and the sum of its numbers) are left out. This
    /// device's own report is stamped when what it holds last changed (or
    /// it opened), so reports of members whose holdings did not change are
    /// not sent again.
    pub(crate) fn held_by_members(
        &self,
        mine: &VersionVector,
        sent: impl Fn(Uuid, (u64, u64)) -> bool,
    ) -> Vec<HeldReport> {
        let now = self.now_ms();
        let me = self.device();
        let mut m = self.memory();
        let stamp = match &m.own_report {
            Some((stamp, r, p)) if *r == m.received && *p == m.held_floors => *stamp,
            // A new stamp for a new report, even within the millisecond
            // (held rows taken change the report, not the vector).
            last => {
                let stamp = last
                    .as_ref()
                    .map_or(now, |(s, _, _)| now.max(s.saturating_add(1)));
                m.own_report = Some((stamp, m.received.clone(), m.held_floors.clone()));
                stamp
            }
        };
        let mut out = Vec::new();
        if !sent(me, (stamp, m.received.vector.total())) {
            out.push(HeldReport {
                device: me,
                stamp,
                differs: m.received.vector.differs_from(mine),
                ahead: m.received.ahead_ranges().take(MAX_AHEAD).collect(),
                pending: m
                    .held_floors
                    .iter()
                    .take(MAX_AHEAD)
                    .map(|(o, s)| (*o, *s))
                    .collect(),
            });
        }
        // Where each base differs from `mine`, once per base.
        let mut bases: BTreeMap<*const VersionVector, Vec<(Uuid, u64)>> = BTreeMap::new();
        for (device, h) in m.heard.iter().take(MAX_LINKS.saturating_sub(1)) {
            if sent(*device, (h.stamp, h.total)) {
                continue;
            }
            let base_differs = bases
                .entry(Arc::as_ptr(&h.base))
                .or_insert_with(|| h.base.differs_from(mine));
            out.push(HeldReport {
                device: *device,
                stamp: h.stamp,
                differs: h.differs_from(mine, base_differs),
                ahead: crate::vector::ranges_of(&h.ahead).take(MAX_AHEAD).collect(),
                pending: h.pending.iter().map(|(o, s)| (*o, *s)).collect(),
            });
        }
        out
    }

    /// Whether `peer`, as of its last heartbeat, has a session with
    /// `device`: then `device` pushes its commits to it directly, and
    /// relaying them is redundant (a push it misses, it pulls).
    pub fn peer_linked_to(&self, peer: Uuid, device: Uuid) -> bool {
        self.memory()
            .peers
            .get(&peer)
            .and_then(|p| p.links.as_ref())
            .is_some_and(|links| links.contains(&device))
    }

    /// Notes what `peer` acknowledged (it also counts as hearing from it, and
    /// ends its expiry: an acknowledging peer has resynced). Written with
    /// the next bookkeeping.
    pub(crate) fn acknowledge(&self, peer: Uuid, vector: &VersionVector, held_back: Vec<HeldBack>) {
        let now = self.now_ms();
        let mut m = self.memory();
        if let Some(p) = m.peers.get_mut(&peer) {
            let mut acked = p.acked.take().unwrap_or_default();
            acked.merge(vector);
            p.acked = Some(acked);
            p.last_seen = Some(now);
            p.expired = false;
            p.dirty = true;
            p.held_back_there = held_back;
        }
    }

    /// Notes changes from `peer` held back here.
    pub(crate) fn note_held_back(&self, peer: Uuid, held: &[crate::receive::Rejection]) {
        let mut m = self.memory();
        let vector = m.received.vector.clone();
        let Some(p) = m.peers.get_mut(&peer) else {
            return;
        };
        p.held_back.retain(|origin, h| h.seq > vector.get(*origin));
        for r in held {
            let entry = p.held_back.entry(r.origin).or_insert(HeldBack {
                origin: r.origin,
                seq: r.seq,
                count: 0,
                reason: r.reason.to_string(),
            });
            entry.seq = entry.seq.min(r.seq);
            entry.count = entry.count.saturating_add(1);
            entry.reason = r.reason.to_string();
        }
    }

    /// What this device holds back of `peer`'s changes, to tell it.
    pub(crate) fn held_back_from(&self, peer: Uuid) -> Vec<HeldBack> {
        let m = self.memory();
        let vector = m.received.vector.clone();
        m.peers
            .get(&peer)
            .map(|p| {
                p.held_back
                    .values()
                    .filter(|h| h.seq > vector.get(h.origin))
                    .take(16)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Writes what peers said and prunes, if a second has passed since the
    /// last time. Returns the log entries pruned.
    pub async fn bookkeeping(&self) -> Result<u64, EngineError> {
        let now = self.now_ms();
        {
            let mut m = self.memory();
            if now.saturating_sub(m.last_prune_ms) < BOOKKEEPING_MS {
                return Ok(0);
            }
            m.last_prune_ms = now;
        }
        self.flush_peers().await?;
        self.prune().await
    }

    /// Writes what peers said since the last write.
    pub async fn flush_peers(&self) -> Result<(), EngineError> {
        let dirty: Vec<PeerRecord> = {
            let m = self.memory();
            m.peers
                .iter()
                .filter(|(_, p)| p.dirty)
                .map(|(id, p)| p.record(*id))
                .collect()
        };
        if dirty.is_empty() {
            return Ok(());
        }
        let w = self.write_tx().await?;
        store::save_peers(&w.tx, &dirty).await?;
        w.tx.commit().await?;
        let mut m = self.memory();
        for r in dirty {
            if let Some(p) = m.peers.get_mut(&r.peer)
                && p.record(r.peer) == r
            {
                p.dirty = false;
            }
        }
        Ok(())
    }

    /// Drops log entries every paired, unexpired peer has acknowledged (and
    /// this device holds). A paired peer that never acknowledged blocks all
    /// pruning; with no paired peer nothing is pruned. Returns the entries
    /// dropped.
    ///
    /// Entries held beyond a gap go too once every such peer holds them
    /// (by its acknowledgement, or its latest report of what it holds): if
    /// the only holder of a gap's numbers lost them (a power loss, a
    /// restored backup), no vector ever passes the gap, and they would be
    /// kept, and sent with every pull, for ever. The ranges are recorded:
    /// a peer that asks without holding one resyncs.
    pub async fn prune(&self) -> Result<u64, EngineError> {
        let (floors, ranges) = {
            let m = self.memory();
            let peers: Vec<(&Uuid, &PeerMemory)> =
                m.peers.iter().filter(|(_, p)| !p.expired).collect();
            if peers.is_empty() || peers.iter().any(|(_, p)| p.acked.is_none()) {
                return Ok(0);
            }
            let floors: Vec<(Uuid, u64)> = m
                .received
                .vector
                .iter()
                .filter_map(|(origin, mine)| {
                    let floor = peers
                        .iter()
                        .map(|(_, p)| p.acked.as_ref().map_or(0, |a| a.get(origin)))
                        .min()
                        .unwrap_or(0)
                        .min(mine);
                    (floor > m.pruned.vector.get(origin)).then_some((origin, floor))
                })
                .collect();
            let mut ranges: Vec<(Uuid, u64, u64)> = Vec::new();
            if !m.received.ahead.is_empty() {
                let holdings: Vec<Received> = peers
                    .iter()
                    .map(|(id, p)| {
                        let mut held = m
                            .heard
                            .get(*id)
                            .map(|h| h.holding().received)
                            .unwrap_or_default();
                        if let Some(acked) = &p.acked {
                            held.raise(acked);
                        }
                        held
                    })
                    .collect();
                for (origin, start, end) in m.received.ahead_ranges() {
                    let mut parts = m.pruned.missing_within(origin, start, end);
                    for held in &holdings {
                        parts = parts
                            .into_iter()
                            .flat_map(|(s, e)| held.held_within(origin, s, e))
                            .collect();
                    }
                    ranges.extend(parts.into_iter().map(|(s, e)| (origin, s, e)));
                }
            }
            (floors, ranges)
        };
        if floors.is_empty() && ranges.is_empty() {
            return Ok(0);
        }
        let w = self.write_tx().await?;
        let mut dropped = 0;
        let mut after = self.memory().pruned.clone();
        for (origin, floor) in &floors {
            dropped += store::prune_log(&w.tx, *origin, *floor).await?;
            store::prune_proofs(&w.tx, *origin, *floor).await?;
            after.insert(*origin, 1, *floor);
        }
        for (origin, start, end) in &ranges {
            dropped += store::prune_log_range(&w.tx, *origin, *start, *end).await?;
            after.insert(*origin, *start, *end);
        }
        let origins: BTreeSet<Uuid> = floors
            .iter()
            .map(|(o, _)| *o)
            .chain(ranges.iter().map(|(o, _, _)| *o))
            .collect();
        let mut script = store::Script::default();
        for origin in origins {
            store::save_pruned_ahead(&mut script, origin, &after)?;
        }
        script.run(&w.tx).await?;
        w.tx.commit().await?;
        {
            let mut m = self.memory();
            for (origin, floor) in &floors {
                m.pruned.insert(*origin, 1, *floor);
            }
            for (origin, start, end) in &ranges {
                m.pruned.insert(*origin, *start, *end);
            }
            m.log_len = m.log_len.saturating_sub(dropped);
        }
        metrics::counter!("syncable_log_pruned_total").increment(dropped);
        Ok(dropped)
    }

    /// Marks every paired peer not heard from within `horizon` as expired:
    /// pruning stops waiting for it, and when it returns it is told to
    /// resync from a snapshot. Returns the peers newly expired.
    pub async fn expire_peers(&self, horizon: Duration) -> Result<Vec<Uuid>, EngineError> {
        let now = self.now_ms();
        let limit = now.saturating_sub(horizon.as_millis() as u64);
        let expired: Vec<Uuid> = {
            let mut m = self.memory();
            let mut out = Vec::new();
            for (id, p) in m.peers.iter_mut() {
                if !p.expired && !p.connected && p.last_seen.is_some_and(|seen| seen < limit) {
                    p.expired = true;
                    p.dirty = true;
                    out.push(*id);
                }
            }
            // A member heard of only through others, whose holdings have
            // not changed for as long, stops holding collection back too.
            for h in m.heard.values_mut() {
                if h.fresh_at < limit {
                    h.expired = true;
                }
            }
            out
        };
        for peer in &expired {
            tracing::warn!(%peer, "peer away beyond the retention horizon; it must resync");
        }
        if !expired.is_empty() {
            self.flush_peers().await?;
        }
        Ok(expired)
    }

    /// Whether `peer` is expired.
    pub(crate) fn is_expired(&self, peer: Uuid) -> bool {
        self.memory().peers.get(&peer).is_some_and(|p| p.expired)
    }

    /// The device's sync status, from memory: it never waits for a write.
    pub fn status(&self) -> Status {
        let phase = self.backfill_phase();
        let now = self.now_ms();
        let m = self.memory();
        let vector = m.received.vector.clone();
        let total = VersionVector::new().behind(&vector);
        let peers: Vec<PeerStatus> = m
            .peers
            .iter()
            .map(|(id, p)| {
                let behind = p.acked.as_ref().map_or_else(
                    || VersionVector::new().behind(&vector),
                    |a| a.behind(&vector),
                );
                (id, p, behind)
            })
            .map(|(id, p, behind)| PeerStatus {
                peer: *id,
                connected: p.connected,
                last_seen_ms: p.last_seen,
                behind,
                ahead: p.vector.as_ref().map_or(0, |v| vector.behind(v)),
                lag_ms: match behind {
                    0 => 0,
                    _ => m
                        .growth
                        .since(total.saturating_sub(behind))
                        .map_or(0, |since| now.saturating_sub(since)),
                },
                latency_ms: p.latency_ms,
                acknowledged: p.acked.is_some(),
                expired: p.expired,
                held_back: p
                    .held_back
                    .values()
                    .filter(|h| h.seq > vector.get(h.origin))
                    .cloned()
                    .collect(),
                held_back_there: p.held_back_there.clone(),
            })
            .collect();
        let ready = peers.iter().filter(|p| p.connected).all(|p| p.ahead == 0);
        Status {
            device: self.device(),
            origin: self.origin(),
            phase: match phase {
                Phase::Ready if !ready => Phase::CatchingUp,
                other => other,
            },
            vector,
            peers,
            log_len: m.log_len,
            parked: m.waiting,
            conflicts: m.conflicts,
            held_rows: m.held_rows,
        }
    }

    /// How many changes the log holds.
    pub fn log_len(&self) -> u64 {
        self.memory().log_len
    }

    /// How many records wait for another before they are shown.
    pub fn parked_len(&self) -> u64 {
        self.memory().waiting
    }

    /// How many conflicts the conflict log holds.
    pub fn conflicts_len(&self) -> u64 {
        self.memory().conflicts
    }

    /// The conflict log, oldest first.
    pub async fn conflicts(&self) -> Result<Vec<crate::conflict::Conflict>, EngineError> {
        Ok(store::conflicts(self.db(), 0, u64::MAX >> 1).await?)
    }

    /// The conflict log after entry `after`, at most `limit` entries.
    pub async fn conflicts_since(
        &self,
        after: i64,
        limit: u64,
    ) -> Result<Vec<crate::conflict::Conflict>, EngineError> {
        Ok(store::conflicts(self.db(), after, limit).await?)
    }

    /// The shared changes in the log, by origin and number.
    pub async fn log(&self) -> Result<Vec<crate::change::Change>, EngineError> {
        store::log_all(self.db())
            .await?
            .iter()
            .map(|b| {
                b.decode()
                    .map_err(|e| EngineError::Malformed(e.to_string()))
            })
            .collect()
    }
}
