//! A device on the network: the QUIC endpoint, pairing, one session per
//! connected peer, parallel broadcast of committed changes, relay, and
//! reconnection with backoff.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sea_orm::DatabaseConnection;
use sync_core::{Engine, EngineConfig, Message, Push, Session, SessionConfig, Status};
use tokio::sync::{Barrier, mpsc, watch};
use uuid::Uuid;

use crate::codec::{FrameError, read_message, write_message};
use crate::error::NetError;
use crate::identity::{Fingerprint, Identity};
use crate::pairing::{
    PairReply, PairRequest, PairingCode, PeerRecord, PeerStore, read_pair, write_pair,
};
use crate::tls::{self, ALPN_PAIR, ALPN_SYNC, close_code};

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
    /// How pinned invitations stay valid.
    pub invite_ttl: Duration,
    /// Session paging.
    pub pull_limit: u32,
    /// Snapshot paging.
    pub snapshot_limit: u32,
    /// Engine settings other than the device id (which comes from the
    /// identity in the data directory).
    pub engine: fn(EngineConfig) -> EngineConfig,
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
            engine: |c| c,
            send_barrier: None,
        }
    }
}

struct Link {
    id: u64,
    initiator: Uuid,
    queue: mpsc::UnboundedSender<Arc<Message>>,
    connection: quinn::Connection,
}

/// What a node reports about one peer's link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Pushes written to the peer.
    pub pushes_sent: u64,
    /// Pushes that failed to be written.
    pub pushes_failed: u64,
    /// Bytes written to the peer.
    pub bytes_sent: u64,
    /// The last error on the link, if any.
    pub last_error: Option<String>,
}

struct Inner {
    identity: Identity,
    engine: Engine,
    endpoint: quinn::Endpoint,
    config: NodeConfig,
    dir: PathBuf,
    peers: Mutex<PeerStore>,
    invites: Mutex<Vec<([u8; 16], Instant)>>,
    links: Mutex<HashMap<Uuid, Link>>,
    stats: Mutex<HashMap<Uuid, LinkStats>>,
    next_link: std::sync::atomic::AtomicU64,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// A device on the network.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("device", &self.inner.identity.device())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
            Engine::open(db, (config.engine)(EngineConfig::new(identity.device()))).await?;
        let server = tls::server_config(&identity)?;
        let endpoint = quinn::Endpoint::server(server, config.listen)
            .map_err(|e| NetError::Endpoint(e.to_string()))?;
        let peers = PeerStore::load(dir)?;
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
            }),
        };
        let accept = tokio::spawn(node.clone().accept_loop());
        let dial = tokio::spawn(node.clone().dial_loop());
        let broadcast = tokio::spawn(node.clone().broadcast_loop());
        lock(&node.inner.tasks).extend([accept, dial, broadcast]);
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

    /// The peers with an open session.
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
        let connection = self
            .inner
            .endpoint
            .connect_with(client, code.addr, "syncable")
            .map_err(|e| NetError::Connect {
                addr: code.addr,
                reason: e.to_string(),
            })?
            .await
            .map_err(|e| NetError::Connect {
                addr: code.addr,
                reason: e.to_string(),
            })?;
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
        let reply: PairReply = read_pair(&mut recv).await?;
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

    async fn remember(&self, record: PeerRecord) -> Result<(), NetError> {
        self.inner.engine.pair(record.device).await?;
        lock(&self.inner.peers).upsert(record)?;
        Ok(())
    }

    /// Stops the node: pushes already queued are written, sessions close,
    /// the endpoint closes. What was not sent is in the log for the next
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
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.endpoint.wait_idle()).await;
        tracing::info!(device = %self.device(), "node stopped");
    }

    fn stopping(&self) -> bool {
        *self.inner.shutdown.borrow()
    }

    async fn accept_loop(self) {
        let mut shutdown = self.inner.shutdown.subscribe();
        loop {
            let incoming = tokio::select! {
                incoming = self.inner.endpoint.accept() => incoming,
                _ = shutdown.changed() => return,
            };
            let Some(incoming) = incoming else { return };
            let node = self.clone();
            tokio::spawn(async move {
                let connection = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(error = %e, "incoming handshake failed");
                        return;
                    }
                };
                match tls::alpn(&connection).as_deref() {
                    Some(ALPN_PAIR) => node.serve_pairing(connection).await,
                    Some(ALPN_SYNC) => node.accept_sync(connection).await,
                    _ => connection.close(close_code::PROTOCOL.into(), b"unknown protocol"),
                }
            });
        }
    }

    async fn serve_pairing(&self, connection: quinn::Connection) {
        let result: Result<(), NetError> = async {
            let fingerprint = tls::peer_fingerprint(&connection)
                .ok_or_else(|| NetError::PairingRefused("no client certificate".into()))?;
            let (mut send, mut recv) = connection.accept_bi().await?;
            let request: PairRequest = read_pair(&mut recv).await?;
            let ttl = self.inner.config.invite_ttl;
            let valid = {
                let mut invites = lock(&self.inner.invites);
                invites.retain(|(_, at)| at.elapsed() < ttl);
                let found = invites.iter().position(|(t, _)| *t == request.token);
                found.map(|i| invites.remove(i)).is_some()
            };
            let reply = if request.library != self.inner.config.library {
                PairReply::Refused {
                    reason: "another library".into(),
                }
            } else if !valid {
                PairReply::Refused {
                    reason: "unknown or expired pairing code".into(),
                }
            } else {
                self.remember(PeerRecord {
                    device: request.device,
                    fingerprint,
                    addr: request.addr.or(Some(connection.remote_address())),
                })
                .await?;
                tracing::info!(peer = %request.device, "paired");
                PairReply::Accepted {
                    device: self.device(),
                }
            };
            write_pair(&mut send, &reply).await?;
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(2), connection.closed()).await;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "pairing failed");
        }
    }

    async fn accept_sync(&self, connection: quinn::Connection) {
        let peer = tls::peer_fingerprint(&connection)
            .and_then(|fp| lock(&self.inner.peers).by_fingerprint(fp).map(|p| p.device));
        let Some(peer) = peer else {
            tracing::warn!(addr = %connection.remote_address(), "refused a device that is not paired");
            metrics::counter!("syncable_connections_refused_total").increment(1);
            connection.close(
                close_code::NOT_PAIRED.into(),
                b"this device is not paired with the library",
            );
            return;
        };
        let _ = lock(&self.inner.peers).set_addr(peer, connection.remote_address());
        self.run_link(connection, peer, peer).await;
    }

    async fn dial_loop(self) {
        let mut backoff: HashMap<Uuid, (Instant, Duration)> = HashMap::new();
        let mut shutdown = self.inner.shutdown.subscribe();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = shutdown.changed() => return,
            }
            let peers = self.peers();
            for peer in peers {
                let Some(addr) = peer.addr else { continue };
                if lock(&self.inner.links).contains_key(&peer.device) {
                    backoff.remove(&peer.device);
                    continue;
                }
                let now = Instant::now();
                let (next, wait) = backoff
                    .get(&peer.device)
                    .copied()
                    .unwrap_or((now, self.inner.config.redial.0));
                if now < next {
                    continue;
                }
                backoff.insert(
                    peer.device,
                    (now + wait, (wait * 2).min(self.inner.config.redial.1)),
                );
                let node = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = node.dial(peer.device, peer.fingerprint, addr).await {
                        tracing::debug!(peer = %peer.device, error = %e, "dial failed");
                    }
                });
            }
        }
    }

    async fn dial(
        &self,
        peer: Uuid,
        fingerprint: Fingerprint,
        addr: SocketAddr,
    ) -> Result<(), NetError> {
        let client = tls::client_config(&self.inner.identity, fingerprint, ALPN_SYNC)?;
        let connection = self
            .inner
            .endpoint
            .connect_with(client, addr, "syncable")
            .map_err(|e| NetError::Connect {
                addr,
                reason: e.to_string(),
            })?
            .await
            .map_err(|e| NetError::Connect {
                addr,
                reason: e.to_string(),
            })?;
        self.run_link(connection, peer, self.device()).await;
        Ok(())
    }

    /// Registers a link; when two connections to one peer race, both sides
    /// keep the one dialled by the lower device id.
    fn register(
        &self,
        peer: Uuid,
        initiator: Uuid,
        connection: &quinn::Connection,
    ) -> Option<(u64, mpsc::UnboundedReceiver<Arc<Message>>)> {
        let mut links = lock(&self.inner.links);
        if let Some(existing) = links.get(&peer) {
            let keep_new = initiator < existing.initiator;
            if !keep_new {
                connection.close(
                    close_code::REPLACED.into(),
                    b"a connection to this peer exists",
                );
                return None;
            }
            existing
                .connection
                .close(close_code::REPLACED.into(), b"replaced");
        }
        let id = self
            .inner
            .next_link
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (queue, rx) = mpsc::unbounded_channel();
        links.insert(
            peer,
            Link {
                id,
                initiator,
                queue,
                connection: connection.clone(),
            },
        );
        Some((id, rx))
    }

    fn unregister(&self, peer: Uuid, id: u64) {
        let mut links = lock(&self.inner.links);
        if links.get(&peer).is_some_and(|l| l.id == id) {
            links.remove(&peer);
        }
    }

    fn record(&self, peer: Uuid, f: impl FnOnce(&mut LinkStats)) {
        f(lock(&self.inner.stats).entry(peer).or_default());
    }

    async fn run_link(&self, connection: quinn::Connection, peer: Uuid, initiator: Uuid) {
        let Some((id, queue)) = self.register(peer, initiator, &connection) else {
            return;
        };
        tracing::info!(device = %self.device(), %peer, "connected");
        let result = self.link(&connection, peer, initiator, queue).await;
        self.unregister(peer, id);
        self.inner.engine.set_connected(peer, false);
        // Whatever ended the link first, a peer that closed the connection
        // said why: report its words (a refusal reads "not paired").
        let refused = match connection.close_reason() {
            Some(quinn::ConnectionError::ApplicationClosed(close)) => Some(format!(
                "closed by the peer (code {}): {}",
                close.error_code,
                String::from_utf8_lossy(&close.reason)
            )),
            _ => None,
        };
        match (result, refused) {
            (_, Some(reason)) => {
                tracing::warn!(device = %self.device(), %peer, %reason, "link ended");
                self.record(peer, |s| s.last_error = Some(reason));
            }
            (Ok(()), None) => tracing::info!(device = %self.device(), %peer, "disconnected"),
            (Err(e), None) => {
                tracing::warn!(device = %self.device(), %peer, error = %e, "link ended");
                self.record(peer, |s| s.last_error = Some(e.to_string()));
            }
        }
    }

    async fn link(
        &self,
        connection: &quinn::Connection,
        peer: Uuid,
        initiator: Uuid,
        mut queue: mpsc::UnboundedReceiver<Arc<Message>>,
    ) -> Result<(), NetError> {
        let (mut send, recv) = if initiator == self.device() {
            connection.open_bi().await?
        } else {
            connection.accept_bi().await?
        };
        // Further streams the peer opens are sessions of their own (each
        // needs its own hello); one that misbehaves is closed alone.
        let extra = tokio::spawn(self.clone().extra_streams(connection.clone()));
        let (frames_tx, mut frames) = mpsc::channel(64);
        let reader = tokio::spawn(read_frames(recv, frames_tx));
        let mut session = Session::new(self.inner.engine.clone(), self.session_config());
        for m in session.start().await? {
            write_message(&mut send, &m).await?;
        }
        let mut heartbeat = tokio::time::interval(self.inner.config.heartbeat);
        let mut anti_entropy = tokio::time::interval(self.inner.config.anti_entropy);
        let mut shutdown = self.inner.shutdown.subscribe();
        let result = loop {
            tokio::select! {
                frame = frames.recv() => {
                    let Some(frame) = frame else { break Ok(()) };
                    match frame {
                        Ok(message) => {
                            let output = session.handle(message).await?;
                            for m in &output.send {
                                self.send_to(peer, &mut send, m).await?;
                            }
                            if !output.relay.is_empty() {
                                self.broadcast_except(peer, Message::Push(Push { batches: output.relay }));
                            }
                            if let Some(reason) = output.close {
                                connection.close(close_code::PROTOCOL.into(), reason.as_bytes());
                                break Ok(());
                            }
                        }
                        Err(e) => {
                            let (code, fatal) = frame_error_code(&e);
                            let m = Message::Error(sync_core::ErrorMessage { code, message: e.to_string() });
                            let _ = write_message(&mut send, &m).await;
                            if fatal {
                                break Err(NetError::Frame(e));
                            }
                        }
                    }
                }
                pushed = queue.recv() => {
                    let Some(message) = pushed else { break Ok(()) };
                    if let Some(barrier) = &self.inner.config.send_barrier {
                        barrier.wait().await;
                    }
                    match self.send_to(peer, &mut send, &message).await {
                        Ok(()) => self.record(peer, |s| s.pushes_sent += 1),
                        Err(e) => {
                            self.record(peer, |s| s.pushes_failed += 1);
                            metrics::counter!("syncable_push_failures_total", "peer" => peer.to_string()).increment(1);
                            break Err(e);
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    if session.peer().is_some() {
                        let m = session.heartbeat();
                        self.send_to(peer, &mut send, &m).await?;
                    }
                }
                _ = anti_entropy.tick() => {
                    for m in session.anti_entropy().await? {
                        self.send_to(peer, &mut send, &m).await?;
                    }
                }
                _ = shutdown.changed() => {
                    // Flush what is queued, then leave.
                    while let Ok(message) = queue.try_recv() {
                        let _ = self.send_to(peer, &mut send, &message).await;
                    }
                    let _ = send.finish();
                    break Ok(());
                }
            }
        };
        session.disconnect();
        reader.abort();
        extra.abort();
        result
    }

    async fn send_to(
        &self,
        peer: Uuid,
        send: &mut quinn::SendStream,
        message: &Message,
    ) -> Result<(), NetError> {
        let bytes = write_message(send, message).await?;
        self.record(peer, |s| s.bytes_sent += bytes as u64);
        Ok(())
    }

    async fn extra_streams(self, connection: quinn::Connection) {
        while let Ok((mut send, mut recv)) = connection.accept_bi().await {
            let engine = self.inner.engine.clone();
            let config = self.session_config();
            tokio::spawn(async move {
                let mut session = Session::new(engine, config);
                loop {
                    let message = match read_message(&mut recv).await {
                        Ok(m) => m,
                        Err(FrameError::Closed) => return,
                        Err(e) => {
                            let (code, _) = frame_error_code(&e);
                            let m = Message::Error(sync_core::ErrorMessage {
                                code,
                                message: e.to_string(),
                            });
                            let _ = write_message(&mut send, &m).await;
                            let _ = send.finish();
                            return;
                        }
                    };
                    let Ok(output) = session.handle(message).await else {
                        return;
                    };
                    for m in &output.send {
                        if write_message(&mut send, m).await.is_err() {
                            return;
                        }
                    }
                    if output.close.is_some() {
                        let _ = send.finish();
                        return;
                    }
                }
            });
        }
    }

    fn session_config(&self) -> SessionConfig {
        let mut config = SessionConfig::new(self.inner.config.library);
        config.pull_limit = self.inner.config.pull_limit;
        config.snapshot_limit = self.inner.config.snapshot_limit;
        config
    }

    /// Queues a message to every connected peer but one. Each peer's link
    /// writes on its own, so the sends run in parallel and one slow or
    /// failing peer holds up no other.
    fn broadcast_except(&self, except: Uuid, message: Message) {
        let message = Arc::new(message);
        for (peer, link) in lock(&self.inner.links).iter() {
            if *peer != except && link.queue.send(message.clone()).is_err() {
                self.record(*peer, |s| s.pushes_failed += 1);
            }
        }
    }

    async fn broadcast_loop(self) {
        let mut committed = self.inner.engine.subscribe();
        let mut shutdown = self.inner.shutdown.subscribe();
        loop {
            let batch = tokio::select! {
                batch = committed.recv() => batch,
                _ = shutdown.changed() => return,
            };
            match batch {
                Ok(changes) => match Push::of_commit(&changes) {
                    Ok(pushes) => {
                        for push in pushes {
                            self.broadcast_except(Uuid::nil(), push);
                        }
                    }
                    // The log has them: the next pull sends them.
                    Err(e) => {
                        tracing::warn!(error = %e, "a commit could not be encoded for its push")
                    }
                },
                // Missed batches are in the log: the next pull sends them.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "broadcast fell behind; catch-up will send the rest"
                    );
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
            if self.stopping() {
                return;
            }
        }
    }
}

fn frame_error_code(e: &FrameError) -> (sync_core::ErrorCode, bool) {
    match e {
        FrameError::UnsupportedVersion { min, max, .. } => (
            sync_core::ErrorCode::UnsupportedVersion {
                min: *min,
                max: *max,
            },
            true,
        ),
        FrameError::Decode(_) | FrameError::Decompress(_) => {
            (sync_core::ErrorCode::Malformed, false)
        }
        _ => (sync_core::ErrorCode::Malformed, true),
    }
}

async fn read_frames(mut recv: quinn::RecvStream, out: mpsc::Sender<Result<Message, FrameError>>) {
    loop {
        let frame = read_message(&mut recv).await;
        let stop = match &frame {
            Ok(_) => false,
            Err(e) => !e.frame_consumed(),
        };
        if matches!(frame, Err(FrameError::Closed)) {
            return;
        }
        if out.send(frame).await.is_err() || stop {
            return;
        }
    }
}
