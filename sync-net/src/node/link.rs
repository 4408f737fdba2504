//! One link: a connection to one paired peer, its session, and three tasks
//! that keep each other from waiting: a reader that turns the stream into
//! messages, the session (which applies what arrives, in batches: what came
//! in while the last batch was written is applied next, together), and a
//! writer that sends replies and pushes while the session works.

use std::sync::Arc;

use sync_core::{Message, Session};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{Node, lock};
use crate::codec::{FrameError, read_message_within, write_message};
use crate::error::NetError;
use crate::tls::close_code;

/// Messages read ahead of the session, per link.
const READ_AHEAD: usize = 64;
/// Replies waiting for the writer, per link (the session waits when full).
const REPLIES: usize = 256;
/// The most messages the session takes at once.
const BURST: usize = 256;

impl Node {
    pub(crate) async fn run_link(
        &self,
        connection: quinn::Connection,
        peer: Uuid,
        initiator: Uuid,
    ) {
        let Some((id, pushes)) = self.register(peer, initiator, &connection) else {
            return;
        };
        tracing::info!(device = %self.device(), %peer, "connected");
        let result = self.link(&connection, peer, initiator, pushes).await;
        // The session, ending, said the peer is disconnected (unless
        // another connection's session with it is open).
        self.unregister(peer, id);
        if lock(&self.inner.links).contains_key(&peer) {
            // Replaced by another connection to the same peer: nothing
            // went wrong with the peer.
            tracing::debug!(%peer, "a replaced connection ended");
            return;
        }
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
        pushes: mpsc::Receiver<Arc<Message>>,
    ) -> Result<(), NetError> {
        let (send, recv) = if initiator == self.device() {
            connection.open_bi().await?
        } else {
            connection.accept_bi().await?
        };
        // Further streams the peer opens are sessions of their own (each
        // needs its own hello); one that misbehaves is closed alone.
        let extra = tokio::spawn(self.clone().extra_streams(connection.clone(), peer));
        let (frames_tx, mut frames) = mpsc::channel(READ_AHEAD);
        let reader = tokio::spawn(read_frames(
            recv,
            frames_tx,
            self.inner.config.frame_deadline,
        ));
        let (replies, replies_rx) = mpsc::channel::<Message>(REPLIES);
        let writer = tokio::spawn(self.clone().write_loop(peer, send, replies_rx, pushes));
        let mut session =
            Session::authenticated(self.inner.engine.clone(), self.session_config(), peer);
        let result = self
            .session_loop(&mut session, peer, &replies, &mut frames)
            .await;
        session.disconnect();
        if let Err(e) = &result {
            tracing::debug!(%peer, error = %e, "session ended");
        }
        // Let the writer flush what the session said last, then stop.
        drop(replies);
        let _ = tokio::time::timeout(std::time::Duration::from_millis(1_500), writer).await;
        // A protocol error closes the connection, unless the peer closed it
        // first: closing again would replace the peer's reason with ours.
        if let Err(NetError::Frame(_)) | Err(NetError::Engine(_)) = &result
            && connection.close_reason().is_none()
        {
            connection.close(close_code::PROTOCOL.into(), b"protocol error");
        }
        reader.abort();
        extra.abort();
        result
    }

    async fn session_loop(
        &self,
        session: &mut Session,
        peer: Uuid,
        replies: &mpsc::Sender<Message>,
        frames: &mut mpsc::Receiver<Result<Message, FrameError>>,
    ) -> Result<(), NetError> {
        let say = |m: Message| async { replies.send(m).await.map_err(|_| NetError::Shutdown) };
        for m in session.start().await? {
            say(m).await?;
        }
        let mut heartbeat = tokio::time::interval(self.inner.config.heartbeat);
        let mut anti_entropy = tokio::time::interval(self.inner.config.anti_entropy);
        anti_entropy.reset();
        let mut shutdown = self.inner.shutdown.subscribe();
        loop {
            tokio::select! {
                first = frames.recv() => {
                    let Some(first) = first else { return Ok(()) };
                    // Everything that arrived meanwhile goes in one batch.
                    let mut burst = vec![first];
                    while burst.len() < BURST {
                        match frames.try_recv() {
                            Ok(next) => burst.push(next),
                            Err(_) => break,
                        }
                    }
                    let mut messages = Vec::with_capacity(burst.len());
                    for frame in burst {
                        match frame {
                            Ok(message) => {
                                // Ask for the next page before this one is
                                // applied: the peer serves it meanwhile.
                                if let Some(ahead) = session.ahead_of(&message) {
                                    say(ahead).await?;
                                }
                                messages.push(message);
                            }
                            Err(e) => {
                                let (code, fatal) = frame_error_code(&e);
                                say(Message::Error(sync_core::ErrorMessage {
                                    code,
                                    message: e.to_string(),
                                }))
                                .await?;
                                if fatal {
                                    return Err(NetError::Frame(e));
                                }
                            }
                        }
                    }
                    let n = messages.len() as u64;
                    self.record(peer, |s| s.messages_received += n);
                    let output = session.handle_all(messages).await?;
                    for m in output.send {
                        say(m).await?;
                    }
                    if !output.relay.is_empty() {
                        self.relay(peer, output.relay);
                    }
                    if let Some(reason) = output.close {
                        return Err(NetError::PairingRefused(reason));
                    }
                }
                _ = heartbeat.tick() => {
                    if session.peer().is_some() {
                        say(session.heartbeat()).await?;
                    }
                }
                _ = anti_entropy.tick() => {
                    for m in session.anti_entropy().await? {
                        say(m).await?;
                    }
                }
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }

    /// Writes the session's replies and the pushes queued for the peer, as
    /// they come; reports each push's fate.
    async fn write_loop(
        self,
        peer: Uuid,
        mut send: quinn::SendStream,
        mut replies: mpsc::Receiver<Message>,
        mut pushes: mpsc::Receiver<Arc<Message>>,
    ) {
        loop {
            let (message, is_push) = tokio::select! {
                biased;
                reply = replies.recv() => match reply {
                    Some(m) => (Arc::new(m), false),
                    None => break,
                },
                push = pushes.recv() => match push {
                    Some(m) => (m, true),
                    None => break,
                },
            };
            if is_push && let Some(barrier) = &self.inner.config.send_barrier {
                barrier.wait().await;
            }
            match write_message(&mut send, &message).await {
                Ok(bytes) => self.record(peer, |s| {
                    s.bytes_sent += bytes as u64;
                    if is_push {
                        s.pushes_sent += 1;
                    }
                }),
                Err(e) => {
                    if is_push {
                        self.record(peer, |s| s.pushes_failed += 1);
                        metrics::counter!("syncable_push_failures_total", "peer" => peer.to_string())
                            .increment(1);
                    }
                    self.record(peer, |s| s.last_error = Some(e.to_string()));
                    return;
                }
            }
        }
        // The session ended: flush what is queued, then finish the stream.
        while let Ok(message) = pushes.try_recv() {
            if write_message(&mut send, &message).await.is_err() {
                break;
            }
        }
        let _ = send.finish();
        // Until the peer has it all (a refusal's reason included): closing
        // the connection earlier would drop what is still in flight.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), send.stopped()).await;
    }

    /// Further streams the peer opens: sessions of their own with the same
    /// authenticated peer, each answered and closed alone when it
    /// misbehaves. QUIC bounds how many may be open at once.
    async fn extra_streams(self, connection: quinn::Connection, peer: Uuid) {
        while let Ok((mut send, mut recv)) = connection.accept_bi().await {
            let engine = self.inner.engine.clone();
            let config = self.session_config();
            let deadline = self.inner.config.frame_deadline;
            tokio::spawn(async move {
                let mut session = Session::authenticated(engine, config, peer);
                loop {
                    let message = match read_message_within(&mut recv, Some(deadline)).await {
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
}

pub(crate) fn frame_error_code(e: &FrameError) -> (sync_core::ErrorCode, bool) {
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

async fn read_frames(
    mut recv: quinn::RecvStream,
    out: mpsc::Sender<Result<Message, FrameError>>,
    deadline: std::time::Duration,
) {
    loop {
        let frame = read_message_within(&mut recv, Some(deadline)).await;
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
