//! Paired peers: acknowledgements, pruning, the retention horizon, and the
//! status an application shows.

use std::collections::BTreeMap;
use std::time::Duration;

use sea_orm::TransactionTrait;
use uuid::Uuid;

use crate::engine::Engine;
use crate::error::EngineError;
use crate::store;
use crate::vector::VersionVector;

/// Where the device stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Whether it acknowledged anything yet.
    pub acknowledged: bool,
    /// Away beyond the retention horizon: it must resync from a snapshot.
    pub expired: bool,
}

/// The device's sync status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// This device.
    pub device: Uuid,
    /// Backfilling, catching up or ready.
    pub phase: Phase,
    /// This device's version vector.
    pub vector: VersionVector,
    /// Every paired peer.
    pub peers: Vec<PeerStatus>,
    /// Changes in the log.
    pub log_len: u64,
    /// Changes waiting for a record that has not arrived.
    pub parked: u64,
    /// Entries in the conflict log.
    pub conflicts: u64,
}

/// What the session layer knows of a peer right now.
#[derive(Debug, Clone, Default)]
pub(crate) struct LivePeer {
    pub(crate) connected: bool,
    pub(crate) vector: Option<VersionVector>,
    /// When `last_seen` was last written, to write it at most once a second.
    pub(crate) stored_seen_ms: u64,
}

/// How often, at most, a peer's last-seen time is written, and the log
/// pruned after acknowledgements: both are bookkeeping, not on the path of
/// a change.
const BOOKKEEPING_MS: u64 = 1_000;

impl Engine {
    pub(crate) fn now_ms(&self) -> u64 {
        self.inner.time.now().to_duration().as_millis() as u64
    }

    /// Records that `peer` was heard from, with its vector if it sent one.
    pub(crate) async fn heard_from(
        &self,
        peer: Uuid,
        vector: Option<&VersionVector>,
    ) -> Result<(), EngineError> {
        let now = self.now_ms();
        let due = {
            let mut live = self.live_peers();
            let entry = live.entry(peer).or_default();
            let due = now.saturating_sub(entry.stored_seen_ms) >= BOOKKEEPING_MS;
            if due {
                entry.stored_seen_ms = now;
            }
            due
        };
        if due {
            store::touch_peer(self.db(), peer, now).await?;
        }
        if let Some(vector) = vector {
            self.live_peers().entry(peer).or_default().vector = Some(vector.clone());
            let behind = self.vector().await?.behind(vector);
            metrics::gauge!("syncable_peer_lag_changes", "peer" => peer.to_string())
                .set(behind as f64);
        }
        Ok(())
    }

    /// Marks a session with `peer` as open or closed.
    pub fn set_connected(&self, peer: Uuid, connected: bool) {
        self.live_peers().entry(peer).or_default().connected = connected;
    }

    pub(crate) fn live_peers(&self) -> std::sync::MutexGuard<'_, BTreeMap<Uuid, LivePeer>> {
        self.inner
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stores what `peer` acknowledged (it also counts as hearing from it,
    /// and ends its expiry: an acknowledging peer has resynced), then prunes
    /// what every paired peer now holds.
    pub async fn acknowledge(
        &self,
        peer: Uuid,
        vector: &VersionVector,
    ) -> Result<u64, EngineError> {
        if !self.is_paired(peer).await? {
            return Ok(0);
        }
        store::record_ack(self.db(), peer, vector).await?;
        store::touch_peer(self.db(), peer, self.now_ms()).await?;
        store::set_expired(self.db(), peer, false).await?;
        let now = self.now_ms();
        let due = {
            let mut last = self
                .inner
                .last_prune_ms
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let due = now.saturating_sub(*last) >= BOOKKEEPING_MS;
            if due {
                *last = now;
            }
            due
        };
        if due { self.prune().await } else { Ok(0) }
    }

    /// Drops log entries every paired, unexpired peer has acknowledged. A
    /// paired peer that never acknowledged blocks all pruning; with no
    /// paired peer nothing is pruned. Returns the entries dropped.
    pub async fn prune(&self) -> Result<u64, EngineError> {
        let _writer = self.inner.writer.lock().await;
        let tx = self.db().begin().await?;
        let peers: Vec<_> = store::peers(&tx)
            .await?
            .into_iter()
            .filter(|p| !p.expired)
            .collect();
        if peers.is_empty() || peers.iter().any(|p| p.acked.is_none()) {
            tx.commit().await?;
            return Ok(0);
        }
        let mine = store::load_vector(&tx).await?;
        let pruned_before = store::load_pruned(&tx).await?;
        let mut dropped = 0;
        for (origin, _) in mine.iter() {
            let floor = peers
                .iter()
                .map(|p| p.acked.as_ref().map_or(0, |a| a.get(origin)))
                .min()
                .unwrap_or(0);
            if floor > pruned_before.get(origin) {
                dropped += store::prune_log(&tx, origin, floor).await?;
            }
        }
        tx.commit().await?;
        metrics::counter!("syncable_log_pruned_total").increment(dropped);
        Ok(dropped)
    }

    /// Marks every paired peer not heard from within `horizon` as expired:
    /// pruning stops waiting for it, and when it returns it is told to
    /// resync from a snapshot. Returns the peers newly expired.
    pub async fn expire_peers(&self, horizon: Duration) -> Result<Vec<Uuid>, EngineError> {
        let now = self.now_ms();
        let limit = now.saturating_sub(horizon.as_millis() as u64);
        let mut expired = Vec::new();
        for peer in store::peers(self.db()).await? {
            if !peer.expired && peer.last_seen.is_some_and(|seen| seen < limit) {
                store::set_expired(self.db(), peer.peer, true).await?;
                tracing::warn!(peer = %peer.peer, "peer away beyond the retention horizon; it must resync");
                expired.push(peer.peer);
            }
        }
        Ok(expired)
    }

    /// Whether `peer` is expired.
    pub(crate) async fn is_expired(&self, peer: Uuid) -> Result<bool, EngineError> {
        Ok(store::peers(self.db())
            .await?
            .iter()
            .any(|p| p.peer == peer && p.expired))
    }

    /// The device's sync status.
    pub async fn status(&self) -> Result<Status, EngineError> {
        let vector = self.vector().await?;
        let live = self.live_peers().clone();
        let peers = store::peers(self.db())
            .await?
            .into_iter()
            .map(|p| {
                let l = live.get(&p.peer).cloned().unwrap_or_default();
                PeerStatus {
                    peer: p.peer,
                    connected: l.connected,
                    last_seen_ms: p.last_seen,
                    behind: p.acked.as_ref().map_or_else(
                        || VersionVector::new().behind(&vector),
                        |a| a.behind(&vector),
                    ),
                    ahead: l.vector.as_ref().map_or(0, |v| vector.behind(v)),
                    acknowledged: p.acked.is_some(),
                    expired: p.expired,
                }
            })
            .collect::<Vec<_>>();
        let phase = self.phase().await?;
        let ready = peers.iter().filter(|p| p.connected).all(|p| p.ahead == 0);
        Ok(Status {
            device: self.device(),
            phase: match phase {
                Phase::Ready if !ready => Phase::CatchingUp,
                other => other,
            },
            vector,
            peers,
            log_len: self.log_len().await?,
            parked: self.parked_len().await?,
            conflicts: self.conflicts_len().await?,
        })
    }
}
