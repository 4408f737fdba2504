//! The node's endpoint: accepting and dialling connections, the registry of
//! links (one per peer), and broadcasting to them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sync_core::{Batch, Message, Push};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{Node, lock};
use crate::error::NetError;
use crate::identity::Fingerprint;
use crate::tls::{self, ALPN_PAIR, ALPN_SYNC, close_code};

/// A link in the registry: how to reach its writer, and its connection.
pub(crate) struct LinkHandle {
    pub(crate) id: u64,
    pub(crate) initiator: Uuid,
    /// Pushes for the peer, bounded: a full queue drops the push, and the
    /// peer catches up from the log.
    pub(crate) pushes: mpsc::Sender<Arc<Message>>,
    pub(crate) connection: quinn::Connection,
}

/// How often the dial loop looks for peers to reach when nothing wakes it.
const DIAL_TICK: Duration = Duration::from_millis(100);
/// How often silent peers are checked against the retention horizon.
const EXPIRY_TICK: Duration = Duration::from_secs(10);
/// How often tombstones past the retention horizon are looked for.
const COLLECT_TICK: Duration = Duration::from_secs(60);

impl Node {
    pub(crate) async fn accept_loop(self) {
        let mut shutdown = self.inner.shutdown.subscribe();
        loop {
            let incoming = tokio::select! {
                incoming = self.inner.endpoint.accept() => incoming,
                _ = shutdown.changed() => return,
            };
            let Some(incoming) = incoming else { return };
            if self.is_paused() {
                // Offline: not even a handshake.
                incoming.refuse();
                continue;
            }
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

    /// A sync connection: its certificate must be a paired device's, and
    /// that device is who the link speaks with.
    async fn accept_sync(&self, connection: quinn::Connection) {
        let device = tls::peer_device(&connection);
        if let Some(d) = device
            && self.inner.engine.is_removed(d)
        {
            tracing::warn!(device = %d, "refused a device removed from the library");
            metrics::counter!("syncable_connections_refused_total", "why" => "removed")
                .increment(1);
            super::Counters::bump(&self.inner.counters.connections_refused);
            connection.close(close_code::REMOVED.into(), b"removed from the library");
            return;
        }
        // The pinned certificate, and the device its key names.
        let peer = tls::peer_fingerprint(&connection)
            .and_then(|fp| lock(&self.inner.peers).by_fingerprint(fp).map(|p| p.device))
            .filter(|p| Some(*p) == device);
        let Some(peer) = peer else {
            tracing::warn!(addr = %connection.remote_address(), "refused a device that is not paired");
            metrics::counter!("syncable_connections_refused_total", "why" => "not paired")
                .increment(1);
            super::Counters::bump(&self.inner.counters.connections_refused);
            connection.close(
                close_code::NOT_PAIRED.into(),
                b"this device is not paired with the library",
            );
            return;
        };
        let _ = lock(&self.inner.peers).set_addr(peer, connection.remote_address());
        self.run_link(connection, peer, peer).await;
    }

    pub(crate) async fn dial_loop(self) {
        let mut backoff: HashMap<Uuid, (Instant, Duration)> = HashMap::new();
        let mut shutdown = self.inner.shutdown.subscribe();
        let mut next_expiry = Instant::now();
        let mut next_collect = Instant::now();
        loop {
            if let Err(e) = self.enforce_removals() {
                tracing::warn!(error = %e, "a removed peer could not be forgotten");
            }
            if let Some(horizon) = self.inner.config.retention
                && Instant::now() >= next_expiry
            {
                next_expiry = Instant::now() + EXPIRY_TICK.min(horizon);
                if let Err(e) = self.inner.engine.expire_peers(horizon).await {
                    tracing::warn!(error = %e, "peers could not be expired");
                }
                if Instant::now() >= next_collect {
                    next_collect = Instant::now() + COLLECT_TICK.min(horizon);
                    if let Err(e) = self.inner.engine.collect_tombstones(horizon).await {
                        tracing::warn!(error = %e, "tombstones could not be collected");
                    }
                }
            }
            let peers = if self.is_paused() {
                backoff.clear();
                Vec::new()
            } else {
                self.peers()
            };
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
                        // A refusal can end the handshake before a link
                        // exists: the peer's reason is the link's error too.
                        node.record(peer.device, |s| s.last_error = Some(e.to_string()));
                    }
                });
            }
            tokio::select! {
                _ = tokio::time::sleep(DIAL_TICK) => {}
                _ = self.inner.dial_now.notified() => {}
                _ = shutdown.changed() => return,
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
    pub(crate) fn register(
        &self,
        peer: Uuid,
        initiator: Uuid,
        connection: &quinn::Connection,
    ) -> Option<(u64, mpsc::Receiver<Arc<Message>>)> {
        let mut links = lock(&self.inner.links);
        // A dial or handshake that was under way when the node paused.
        if self.is_paused() {
            connection.close(close_code::PAUSED.into(), b"the device went offline");
            return None;
        }
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
        let (pushes, rx) = mpsc::channel(self.inner.config.queue.max(1));
        links.insert(
            peer,
            LinkHandle {
                id,
                initiator,
                pushes,
                connection: connection.clone(),
            },
        );
        Some((id, rx))
    }

    pub(crate) fn unregister(&self, peer: Uuid, id: u64) {
        let mut links = lock(&self.inner.links);
        if links.get(&peer).is_some_and(|l| l.id == id) {
            links.remove(&peer);
        }
    }

    /// Queues a push to one peer without waiting: a full queue drops it
    /// (counted), and the peer fetches it from the log when it sees, in this
    /// device's next heartbeat, that it lacks something.
    fn offer(&self, peer: Uuid, link: &LinkHandle, push: Arc<Message>) {
        match link.pushes.try_send(push) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("syncable_pushes_dropped_total", "peer" => peer.to_string())
                    .increment(1);
                self.record(peer, |s| s.pushes_dropped += 1);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.record(peer, |s| s.pushes_failed += 1);
            }
        }
    }

    /// Relays batches received from `from` to every other connected peer
    /// that, as far as its last message said, lacks them and has no session
    /// with their origin device (which pushes them to it directly).
    pub(crate) fn relay(&self, from: Uuid, batches: Vec<Batch>) {
        let links = lock(&self.inner.links);
        for (peer, link) in links.iter() {
            if *peer == from {
                continue;
            }
            let known = self.inner.engine.peer_vector(*peer);
            let wanted: Vec<Batch> = batches
                .iter()
                .filter(|b| {
                    b.device != *peer
                        && known.as_ref().is_none_or(|v| v.get(b.origin) < b.upto)
                        && !self.inner.engine.peer_linked_to(*peer, b.device)
                })
                .cloned()
                .collect();
            if wanted.is_empty() {
                continue;
            }
            let push = Arc::new(Message::Push(Push { batches: wanted }));
            self.offer(*peer, link, push);
        }
    }

    /// Sends each commit of this device to every connected peer, in
    /// parallel: each link writes on its own, so one slow or failing peer
    /// holds up no other.
    pub(crate) async fn broadcast_loop(self) {
        let mut committed = self.inner.engine.subscribe();
        let mut shutdown = self.inner.shutdown.subscribe();
        loop {
            let batch = tokio::select! {
                batch = committed.recv() => batch,
                _ = shutdown.changed() => return,
            };
            match batch {
                Ok(commit) => {
                    let pushes = commit.pushes();
                    let links = lock(&self.inner.links);
                    for push in pushes {
                        let push = Arc::new(push);
                        for (peer, link) in links.iter() {
                            self.offer(*peer, link, push.clone());
                        }
                    }
                }
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
