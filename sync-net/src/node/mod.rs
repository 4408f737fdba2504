//! A device on the network: the QUIC endpoint, pairing, one link per
//! connected peer, parallel broadcast of committed changes, relay, and
//! reconnection with backoff.
//!
//! `mod.rs` is the node's API; `endpoint.rs` accepts, dials and keeps the
//! registry of links and broadcasts to them; `link.rs` runs one link: its
//! session, its frame reader and its writer.

mod endpoint;
mod link;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sea_orm::DatabaseConnection;
use sync_core::{Engine, EngineConfig, SessionConfig, Status};
use tokio::sync::{Barrier, Notify, watch};
use uuid::Uuid;

use crate::error::NetError;
use crate::identity::{Fingerprint, Identity};
use crate::pairing::{PairReply, PairingCode, PeerRecord, PeerStore};
use crate::tls::{self, close_code};

pub(crate) use endpoint::LinkHandle;

/// The default retention horizon: 30 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// How a node runs.
#[derive(Clone)]
pub struct NodeConfig {
    /// The library this device syncs.
    pub library: Uuid,
    /// Where to listen (port 0: any free port).
    pub listen: SocketAddr,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Period of the pull that fetches whatever a lost push missed.
    pub anti_entropy: Duration,
    /// First and longest wait before redialling a peer that could not be
    /// reached.
    pub redial: (Duration, Duration),
    /// How long invitations stay valid.
    pub invite_ttl: Duration,
    /// Session paging.
    pub pull_limit: u32,
    /// Snapshot paging.
    pub snapshot_limit: u32,
    /// How long a frame may take to arrive once it started: a peer that
    /// starts frames and stalls holds a stream no longer.
    pub frame_deadline: Duration,
    /// How long each step of a pairing may take (the other device opening
    /// its stream, sending its request, reading the answer).
    pub pairing_deadline: Duration,
    /// Pushes queued for one peer before further ones are dropped (the
    /// peer then catches up from the log: nothing is lost, and a slow peer
    /// holds no unbounded memory).
    pub queue: usize,
    /// How long a paired device may stay silent before it stops holding
    /// back pruning here; when it returns it must resync from a snapshot.
    /// `None` keeps every device's changes until it acknowledges them.
    pub retention: Option<Duration>,
    /// How often the write-ahead log is checkpointed in the background
    /// (see [`Engine::checkpoint`](sync_core::Engine::checkpoint)); `None`
    /// leaves checkpoints to SQLite, inside commits.
    pub checkpoint: Option<Duration>,
    /// Engine settings (the device and its key are the identity's in the
    /// data directory).
    pub engine: EngineConfig,
    /// For tests: every push waits here before it is written, so a test can
    /// prove that pushes to all peers are in flight at once.
    #[doc(hidden)]
    pub send_barrier: Option<Arc<Barrier>>,
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("library", &self.library)
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

impl NodeConfig {
    /// Defaults for `library`, listening on `listen`.
    pub fn new(library: Uuid, listen: SocketAddr) -> Self {
        Self {
            library,
            listen,
            heartbeat: Duration::from_secs(1),
            anti_entropy: Duration::from_secs(5),
            redial: (Duration::from_millis(100), Duration::from_secs(5)),
            invite_ttl: Duration::from_secs(600),
            pull_limit: 1_000,
            snapshot_limit: 2_000,
            queue: 1_024,
            retention: Some(DEFAULT_RETENTION),
            checkpoint: Some(Duration::from_secs(1)),
            frame_deadline: Duration::from_secs(30),
            pairing_deadline: Duration::from_secs(5),
            engine: EngineConfig::new(),
            send_barrier: None,
        }
    }
}

/// What a node refused since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct NodeCounters {
    /// Sync connections refused at the handshake (a device not paired, or
    /// removed from the library).
    pub connections_refused: u64,
    /// Pairing attempts refused (too many at once, a bad or spent code, a
    /// device already known, a step past its deadline).
    pub pairing_refused: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) connections_refused: std::sync::atomic::AtomicU64,
    pub(crate) pairing_refused: std::sync::atomic::AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &std::sync::atomic::AtomicU64) {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What a node reports about one peer's link.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LinkStats {
    /// Pushes written to the peer.
    pub pushes_sent: u64,
    /// Pushes that failed to be written.
    pub pushes_failed: u64,
    /// Pushes not queued because the peer's queue was full (it catches up
    /// from the log instead).
    pub pushes_dropped: u64,
    /// Bytes written to the peer.
    pub bytes_sent: u64,
    /// Messages received from the peer.
    pub messages_received: u64,
    /// The last error on the link, if any.
    pub last_error: Option<String>,
}

pub(crate) struct Inner {
    pub(crate) identity: Identity,
    pub(crate) engine: Engine,
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) config: NodeConfig,
    pub(crate) dir: PathBuf,
    pub(crate) peers: Mutex<PeerStore>,
    pub(crate) invites: Mutex<Vec<([u8; 16], Instant)>>,
    pub(crate) links: Mutex<HashMap<Uuid, LinkHandle>>,
    pub(crate) stats: Mutex<HashMap<Uuid, LinkStats>>,
    pub(crate) next_link: std::sync::atomic::AtomicU64,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Wakes the dial loop (at start, when a peer is added).
    pub(crate) dial_now: Notify,
    /// Pairing connections being served now.
    pub(crate) pairing: std::sync::atomic::AtomicUsize,
    pub(crate) counters: Counters,
    /// Offline by the application's choice: no links, no dials.
    pub(crate) paused: std::sync::atomic::AtomicBool,
}

/// A device on the network.
#[derive(Clone)]
pub struct Node {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("device", &self.inner.identity.device())
            .finish_non_exhaustive()
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Node {
    /// Starts a node over `db` (whose application tables exist) with its
    /// identity and peers in `dir`: opens the engine, binds the endpoint,
    /// and starts accepting, dialling and broadcasting.
    pub async fn start(
        db: DatabaseConnection,
        dir: &Path,
        config: NodeConfig,
    ) -> Result<Self, NetError> {
        tls::install_provider();
        let identity = Identity::load_or_create(dir)?;
        let engine =
            Engine::open(db, identity.signing_key().clone(), config.engine.clone()).await?;
        let server = tls::server_config(&identity)?;
        let endpoint = quinn::Endpoint::server(server, config.listen)
            .map_err(|e| NetError::Endpoint(e.to_string()))?;
        let mut peers = PeerStore::load(dir)?;
        // The peer file is written before the database (see `remember`):
        // whatever a crash left between the two, this brings them in line.
        // A peer removed from the library meanwhile is forgotten.
        for p in peers.all().to_vec() {
            if engine.is_removed(p.device) {
                peers.remove(p.device)?;
            } else {
                engine.pair(p.device).await?;
            }
        }
        let (shutdown, _) = watch::channel(false);
        let node = Self {
            inner: Arc::new(Inner {
                identity,
                engine,
                endpoint,
                config,
                dir: dir.to_owned(),
                peers: Mutex::new(peers),
                invites: Mutex::new(Vec::new()),
                links: Mutex::new(HashMap::new()),
                stats: Mutex::new(HashMap::new()),
                next_link: std::sync::atomic::AtomicU64::new(1),
                shutdown,
                tasks: Mutex::new(Vec::new()),
                dial_now: Notify::new(),
                pairing: std::sync::atomic::AtomicUsize::new(0),
                counters: Counters::default(),
                paused: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        let accept = tokio::spawn(node.clone().accept_loop());
        let dial = tokio::spawn(node.clone().dial_loop());
        let broadcast = tokio::spawn(node.clone().broadcast_loop());
        lock(&node.inner.tasks).extend([accept, dial, broadcast]);
        if let Some(period) = node.inner.config.checkpoint {
            let engine = node.inner.engine.clone();
            let mut shutdown = node.inner.shutdown.subscribe();
            let checkpoints = tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(period) => {}
                        _ = shutdown.changed() => return,
                    }
                    if let Err(e) = engine.checkpoint().await {
                        tracing::debug!(error = %e, "checkpoint failed");
                    }
                }
            });
            lock(&node.inner.tasks).push(checkpoints);
        }
        node.inner.dial_now.notify_one();
        tracing::info!(device = %node.device(), addr = ?node.addr(), "node started");
        Ok(node)
    }

    /// This device's id.
    pub fn device(&self) -> Uuid {
        self.inner.identity.device()
    }

    /// This device's certificate fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.inner.identity.fingerprint()
    }

    /// The engine, to write through.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Where the endpoint listens.
    pub fn addr(&self) -> Result<SocketAddr, NetError> {
        self.inner
            .endpoint
            .local_addr()
            .map_err(|e| NetError::Endpoint(e.to_string()))
    }

    /// The engine's status, with which peers are connected.
    pub async fn status(&self) -> Result<Status, NetError> {
        Ok(self.inner.engine.status())
    }

    /// The peers with an open link.
    pub fn connected(&self) -> Vec<Uuid> {
        let mut v: Vec<Uuid> = lock(&self.inner.links).keys().copied().collect();
        v.sort();
        v
    }

    /// What this node refused since it started.
    pub fn counters(&self) -> NodeCounters {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.inner.counters;
        NodeCounters {
            connections_refused: c.connections_refused.load(Relaxed),
            pairing_refused: c.pairing_refused.load(Relaxed),
        }
    }

    /// Per-peer link counters.
    pub fn link_stats(&self) -> HashMap<Uuid, LinkStats> {
        lock(&self.inner.stats).clone()
    }

    /// The paired peers.
    pub fn peers(&self) -> Vec<PeerRecord> {
        lock(&self.inner.peers).all().to_vec()
    }

    /// A pairing code another device can accept, valid once, for the
    /// configured time.
    pub fn invite(&self) -> Result<PairingCode, NetError> {
        let mut token = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut token)
            .map_err(|_| NetError::Certificate("no randomness for a pairing token".into()))?;
        lock(&self.inner.invites).push((token, Instant::now()));
        Ok(PairingCode {
            device: self.device(),
            library: self.inner.config.library,
            fingerprint: self.fingerprint(),
            addr: self.addr()?,
            token,
        })
    }

    /// Accepts another device's pairing code: both devices pin each other
    /// and start syncing. Returns the new peer's id.
    pub async fn accept(&self, code: &PairingCode) -> Result<Uuid, NetError> {
        if self.is_paused() {
            return Err(NetError::Paused);
        }
        if code.library != self.inner.config.library {
            return Err(NetError::WrongLibrary {
                code: code.library,
                ours: self.inner.config.library,
            });
        }
        let reply = crate::pairing::request(
            &self.inner.endpoint,
            &self.inner.identity,
            code,
            self.device(),
            self.addr().ok(),
            self.inner.config.pairing_deadline * 2,
        )
        .await?;
        match reply {
            PairReply::Accepted { device } if device == code.device => {
                self.remember(PeerRecord {
                    device,
                    fingerprint: code.fingerprint,
                    addr: Some(code.addr),
                })
                .await?;
                tracing::info!(peer = %device, "paired");
                Ok(device)
            }
            PairReply::Accepted { device } => Err(NetError::PairingRefused(format!(
                "the code names {}, the device answered as {device}",
                code.device
            ))),
            PairReply::Refused { reason } => Err(NetError::PairingRefused(reason)),
        }
    }

    /// Pins a peer without the pairing exchange: this device will accept
    /// and dial it. The peer must pin this device too (or the two must pair
    /// by code) before they can sync.
    pub async fn pin(&self, record: PeerRecord) -> Result<(), NetError> {
        self.remember(record).await
    }

    /// Remembers a peer: first in the peer file, then in the engine. A
    /// crash between the two leaves the peer in the file only, and the next
    /// start pairs it in the engine too; the other order could leave a peer
    /// the engine waits for (to prune) that the node can never reach.
    pub(crate) async fn remember(&self, record: PeerRecord) -> Result<(), NetError> {
        let device = record.device;
        lock(&self.inner.peers).upsert(record)?;
        self.inner.engine.pair(device).await?;
        self.inner.dial_now.notify_one();
        Ok(())
    }

    /// Removes a device from the library: this device signs its removal
    /// (which spreads to every member with the membership), forgets it,
    /// closes its connection, and refuses its key from now on; every member
    /// refuses its changes past what this device held of it.
    pub async fn remove(&self, device: Uuid) -> Result<(), NetError> {
        self.inner.engine.remove(device).await?;
        self.enforce_removals()?;
        Ok(())
    }

    /// Closes links to, and forgets, peers removed from the library (by
    /// this device or, as the membership says, by another).
    pub(crate) fn enforce_removals(&self) -> Result<(), NetError> {
        let removed: Vec<Uuid> = self
            .peers()
            .iter()
            .map(|p| p.device)
            .chain(lock(&self.inner.links).keys().copied())
            .filter(|d| self.inner.engine.is_removed(*d))
            .collect();
        for device in removed {
            lock(&self.inner.peers).remove(device)?;
            if let Some(link) = lock(&self.inner.links).remove(&device) {
                link.connection
                    .close(close_code::REMOVED.into(), b"removed from the library");
            }
            tracing::warn!(%device, "removed from the library: disconnected and forgotten");
        }
        Ok(())
    }

    /// Takes the node offline without stopping it (airplane mode, a
    /// metered network): its links close, it dials nobody and refuses
    /// connections and pairings until [`resume`](Self::resume). Writes go
    /// on locally; peers see it offline, and what either side wrote
    /// meanwhile syncs on resume.
    pub fn pause(&self) {
        if self
            .inner
            .paused
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let links: Vec<quinn::Connection> = lock(&self.inner.links)
            .values()
            .map(|l| l.connection.clone())
            .collect();
        for c in links {
            c.close(close_code::PAUSED.into(), b"the device went offline");
        }
        tracing::info!(device = %self.device(), "paused: offline until resumed");
    }

    /// Brings a paused node back online: it dials its peers at once.
    pub fn resume(&self) {
        if self
            .inner
            .paused
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            tracing::info!(device = %self.device(), "resumed");
            self.inner.dial_now.notify_one();
        }
    }

    /// Whether the node is paused.
    pub fn is_paused(&self) -> bool {
        self.inner.paused.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Fires when the node shuts down.
    #[cfg(feature = "http")]
    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    /// Keeps a task of the node's, aborted when it shuts down.
    #[cfg(feature = "http")]
    pub(crate) fn keep_task(&self, task: tokio::task::JoinHandle<()>) {
        lock(&self.inner.tasks).push(task);
    }

    /// Stops the node: pushes already queued are written, links close, the
    /// endpoint closes. What was not sent is in the log for the next
    /// catch-up: nothing is lost.
    pub async fn shutdown(&self) {
        let _ = self.inner.shutdown.send(true);
        let links: Vec<quinn::Connection> = lock(&self.inner.links)
            .values()
            .map(|l| l.connection.clone())
            .collect();
        // Give link tasks a moment to flush their queues.
        let deadline = Instant::now() + Duration::from_millis(500);
        while !lock(&self.inner.links).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for c in links {
            c.close(close_code::SHUTDOWN.into(), b"shutting down");
        }
        self.inner
            .endpoint
            .close(close_code::SHUTDOWN.into(), b"shutting down");
        let tasks: Vec<_> = std::mem::take(&mut *lock(&self.inner.tasks));
        for t in tasks {
            t.abort();
        }
        if let Err(e) = self.inner.engine.flush_peers().await {
            tracing::warn!(error = %e, "what peers acknowledged last could not be written");
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.endpoint.wait_idle()).await;
        tracing::info!(device = %self.device(), "node stopped");
    }

    pub(crate) fn stopping(&self) -> bool {
        *self.inner.shutdown.borrow()
    }

    pub(crate) fn record(&self, peer: Uuid, f: impl FnOnce(&mut LinkStats)) {
        f(lock(&self.inner.stats).entry(peer).or_default());
    }

    pub(crate) fn session_config(&self) -> SessionConfig {
        let mut config = SessionConfig::new(self.inner.config.library);
        config.pull_limit = self.inner.config.pull_limit;
        config.snapshot_limit = self.inner.config.snapshot_limit;
        config
    }
}
