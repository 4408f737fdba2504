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
use crate::pairing::{
    PairReply, PairRequest, PairingCode, PeerRecord, PeerStore, read_pair, write_pair,
};
use crate::tls::{self, ALPN_PAIR, close_code};

pub(crate) use endpoint::LinkHandle;

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
    /// Pushes queued for one peer before further ones are dropped (the
    /// peer then catches up from the log: nothing is lost, and a slow peer
    /// holds no unbounded memory).
    pub queue: usize,
    /// Engine settings. Its device id is replaced by the identity's in the
    /// data directory.
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
            engine: EngineConfig::new(Uuid::nil()),
            send_barrier: None,
        }
    }
}

/// What a node reports about one peer's link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
        let mut engine_config = config.engine.clone();
        engine_config.device = identity.device();
        let engine = Engine::open(db, engine_config).await?;
        let server = tls::server_config(&identity)?;
        let endpoint = quinn::Endpoint::server(server, config.listen)
            .map_err(|e| NetError::Endpoint(e.to_string()))?;
        let peers = PeerStore::load(dir)?;
        // The peer file is written before the database (see `remember`):
        // whatever a crash left between the two, this brings them in line.
        for p in peers.all() {
            engine.pair(p.device).await?;
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
            }),
        };
        let accept = tokio::spawn(node.clone().accept_loop());
        let dial = tokio::spawn(node.clone().dial_loop());
        let broadcast = tokio::spawn(node.clone().broadcast_loop());
        lock(&node.inner.tasks).extend([accept, dial, broadcast]);
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
        if code.library != self.inner.config.library {
            return Err(NetError::WrongLibrary {
                code: code.library,
                ours: self.inner.config.library,
            });
        }
        let client = tls::client_config(&self.inner.identity, code.fingerprint, ALPN_PAIR)?;
        let connect = |e: String| NetError::Connect {
            addr: code.addr,
            reason: e,
        };
        let connection = self
            .inner
            .endpoint
            .connect_with(client, code.addr, "syncable")
            .map_err(|e| connect(e.to_string()))?
            .await
            .map_err(|e| connect(e.to_string()))?;
        let exchange = async {
            let (mut send, mut recv) = connection.open_bi().await?;
            write_pair(
                &mut send,
                &PairRequest {
                    device: self.device(),
                    library: self.inner.config.library,
                    token: code.token,
                    addr: self.addr().ok(),
                },
            )
            .await?;
            read_pair::<_, PairReply>(&mut recv).await
        };
        let reply = tokio::time::timeout(crate::pairing_server::STEP_DEADLINE * 2, exchange)
            .await
            .map_err(|_| NetError::PairingRefused("the inviting device did not answer".into()))??;
        connection.close(0u32.into(), b"paired");
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
