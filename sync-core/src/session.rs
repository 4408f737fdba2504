//! The protocol state machine for one peer, sans-IO: it turns each incoming
//! message into the messages to send back (and the engine's storage
//! effects). It reads time only through the engine's time source and opens
//! no socket, so a simulated network drives it exactly as QUIC does.

use uuid::Uuid;

use crate::engine::Engine;
use crate::error::EngineError;
use crate::protocol::{
    Ack, Batch, ErrorCode, ErrorMessage, Heartbeat, Hello, MIN_PROTOCOL_VERSION, Message,
    PROTOCOL_VERSION, PullResponse, Push, SnapshotResponse, VectorSince, vector_digest,
};
use crate::receive::{InBatch, Incoming, Outcome};
use crate::snapshot::BackfillWith;
use crate::vector::VersionVector;

/// How a session behaves.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The library both sides must sync.
    pub library: Uuid,
    /// The most changes asked for in one pull.
    pub pull_limit: u32,
    /// The most rows asked for in one snapshot page.
    pub snapshot_limit: u32,
}

impl SessionConfig {
    /// Defaults for `library`.
    pub fn new(library: Uuid) -> Self {
        Self {
            library,
            pull_limit: 1_000,
            snapshot_limit: 2_000,
        }
    }
}

/// Where a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Waiting for the peer's hello.
    Handshake,
    /// Loading a snapshot from the peer.
    Backfilling,
    /// Pulling what the peer has and this device lacks.
    CatchingUp,
    /// Caught up; changes flow as they are written.
    Ready,
    /// Ended, by an error on either side.
    Closed,
}

/// What handling a message produced.
#[derive(Debug, Default)]
pub struct Output {
    /// Messages to send to this session's peer, in order.
    pub send: Vec<Message>,
    /// Batches received from the peer that brought this device something
    /// new: the node forwards them to its other peers (relay).
    pub relay: Vec<Batch>,
    /// Set when the session must end; the error message, if any, is the
    /// last entry of `send`.
    pub close: Option<String>,
}

impl Output {
    fn send(message: Message) -> Self {
        Self {
            send: vec![message],
            ..Self::default()
        }
    }

    fn refuse(code: ErrorCode, message: String) -> Self {
        Self {
            send: vec![Message::Error(ErrorMessage {
                code,
                message: message.clone(),
            })],
            relay: Vec::new(),
            close: Some(message),
        }
    }
}

/// The protocol with one peer.
#[derive(Debug)]
pub struct Session {
    engine: Engine,
    config: SessionConfig,
    peer: Option<Uuid>,
    /// The device the transport authenticated, if it did: a hello in any
    /// other name is refused.
    authenticated: Option<Uuid>,
    state: SessionState,
    /// The vector sent with the pull in flight.
    pulled_from: Option<VersionVector>,
    /// The next page was asked for before this one was applied.
    asked_ahead: bool,
    /// Whether this session counts among its peer's open sessions.
    counted: bool,
    /// Heartbeats sent: every [`FULL_HEARTBEAT_EVERY`]th carries every
    /// member's report, the others only those not sent yet.
    beats: u64,
    /// The stamp (and sum of numbers) of each member's report sent to the
    /// peer.
    reported: std::collections::HashMap<Uuid, (u64, u64)>,
    /// The membership digests (this device's, the peer's) for which this
    /// device last sent its records: the same disagreement is not answered
    /// again until a full heartbeat.
    members_answered: Option<(crate::trust::Hash, crate::trust::Hash)>,
    /// The membership digest the peer last gave.
    members_heard: Option<crate::trust::Hash>,
    /// The membership records the peer holds, as far as this device knows:
    /// those sent to it and those it sent. Each is sent once, and all again
    /// only when a disagreement outlasts a full heartbeat unchanged (a
    /// message lost on the way).
    members_sent: std::collections::HashSet<crate::trust::Hash>,
    /// The vector this device last sent the peer whole, with its digest:
    /// the heartbeats between full ones carry their difference from it.
    vector_sent: Option<(crate::trust::Hash, VersionVector)>,
    /// The vector the peer last sent whole, with its digest.
    vector_heard: Option<(crate::trust::Hash, VersionVector)>,
}

/// Every how many heartbeats a session sends every member's report again,
/// and its membership records if the digests still differ (whatever the
/// peer missed).
pub const FULL_HEARTBEAT_EVERY: u64 = 8;

impl Drop for Session {
    /// A session dropped without [`disconnect`](Session::disconnect) (an
    /// extra stream that ended, a task aborted) no longer counts as open.
    fn drop(&mut self) {
        self.close();
    }
}

pub(crate) fn in_batches(batches: Vec<Batch>) -> Vec<InBatch> {
    batches
        .into_iter()
        .map(|b| InBatch {
            origin: b.origin,
            device: b.device,
            claim: Some((b.after, b.upto)),
            changes: b.changes,
            handed: Vec::new(),
            proofs: Some(b.seals),
        })
        .collect()
}

impl Session {
    /// A session of `engine` with a peer not yet known (a transport that
    /// authenticates nobody: tests, in-process channels).
    pub fn new(engine: Engine, config: SessionConfig) -> Self {
        Self {
            engine,
            config,
            peer: None,
            authenticated: None,
            state: SessionState::Handshake,
            pulled_from: None,
            asked_ahead: false,
            counted: false,
            beats: 0,
            reported: std::collections::HashMap::new(),
            members_answered: None,
            members_heard: None,
            members_sent: std::collections::HashSet::new(),
            vector_sent: None,
            vector_heard: None,
        }
    }

    /// A session with the device the transport authenticated (by its
    /// pinned certificate): everything the session believes of its peer is
    /// about that device, and a hello in another device's name is refused.
    pub fn authenticated(engine: Engine, config: SessionConfig, peer: Uuid) -> Self {
        let mut session = Self::new(engine, config);
        session.authenticated = Some(peer);
        session
    }

    /// The peer, once it said hello.
    pub fn peer(&self) -> Option<Uuid> {
        self.peer
    }

    /// Where the session stands.
    pub fn state(&self) -> SessionState {
        self.state
    }

    /// The first message: this device's hello.
    pub async fn start(&mut self) -> Result<Vec<Message>, EngineError> {
        Ok(vec![Message::Hello(Hello {
            device: self.engine.device(),
            library: self.config.library,
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            vector: self.engine.vector(),
            needs_backfill: self.engine.needs_backfill(),
            members: self.engine.members_digest(),
        })])
    }

    /// Handles one message from the peer.
    #[tracing::instrument(skip_all, fields(device = %self.engine.device(), peer = ?self.peer, kind = message.kind_name()))]
    pub async fn handle(&mut self, message: Message) -> Result<Output, EngineError> {
        if self.state == SessionState::Closed {
            return Ok(Output::default());
        }
        let kind = message.kind_name();
        metrics::counter!("syncable_messages_received_total", "kind" => kind).increment(1);
        if let Some(peer) = self.peer {
            // Any message is a sign of life, for the retention horizon.
            self.engine.heard_from(peer, None);
        }
        let output = match (self.state, message) {
            (SessionState::Handshake, Message::Hello(hello)) => {
                let members = self.members_if_differ(&hello.members);
                let mut out = self.hello(hello).await?;
                // Membership first: the peer checks what follows against it.
                if let (None, Some(m)) = (&out.close, members) {
                    out.send.insert(0, m);
                }
                out
            }
            (SessionState::Handshake, Message::Error(e)) => self.remote_error(e).await?,
            (SessionState::Handshake, _) => Output::refuse(
                ErrorCode::Unexpected,
                format!("a {kind} message before hello"),
            ),
            (_, Message::Hello(_)) => {
                Output::refuse(ErrorCode::Unexpected, "a second hello".into())
            }
            (_, Message::PullRequest(request)) => match self.engine.serve_pull(&request).await? {
                Ok(response) => Output::send(Message::PullResponse(response)),
                Err(mut e) => {
                    // Changes we no longer keep, for a peer that was away
                    // too long: tombstones may be gone too.
                    if e.code == ErrorCode::ResyncRequired
                        && self.peer.is_some_and(|p| self.engine.is_expired(p))
                    {
                        e.code = ErrorCode::Expired;
                    }
                    Output::send(Message::Error(e))
                }
            },
            (_, Message::PullResponse(response)) => self.pulled(response).await?,
            (_, Message::SnapshotRequest(request)) => {
                match self.engine.serve_snapshot(&request).await? {
                    Ok(response) => Output::send(Message::SnapshotResponse(response)),
                    Err(e) => Output::send(Message::Error(e)),
                }
            }
            (_, Message::SnapshotResponse(page)) => self.snapshot_page(page).await?,
            (_, Message::Push(push)) => self.pushed(push).await?,
            (_, Message::Ack(ack)) => {
                if let Some(peer) = self.peer {
                    self.engine.heard_from(peer, Some(&ack.vector));
                    self.engine.acknowledge(peer, &ack.vector, ack.held_back);
                    self.engine.bookkeeping().await?;
                }
                Output::default()
            }
            (_, Message::Members(members)) => {
                // The peer holds what it sent: none of it goes back.
                let (_, ids) = self.engine.merge_members(members.records).await?;
                self.members_sent.extend(ids);
                Output::default()
            }
            (_, Message::Heartbeat(beat)) => {
                let vector = self.vector_of(&beat);
                if let Some(peer) = self.peer {
                    self.engine.heard_from(peer, vector.as_ref());
                    self.engine.note_links(peer, &beat.links);
                    // Reports are given against the sender's vector: without
                    // it they say nothing.
                    if let Some(v) = &vector {
                        self.engine.note_held(v, &beat.held);
                    }
                }
                let members = self.members_if_differ(&beat.members);
                // The peer holds something this device lacks (a push that
                // was lost, or never sent): fetch it now.
                let mine = self.engine.vector();
                if let Some(theirs) = vector
                    .as_ref()
                    .filter(|_| self.state == SessionState::Ready && self.pulled_from.is_none())
                    && mine.behind(theirs) > 0
                    && theirs
                        .iter()
                        .any(|(o, s)| o != self.engine.origin() && s > mine.get(o))
                {
                    let mut out = Output::send(self.pull());
                    out.send.extend(members);
                    out
                } else {
                    Output {
                        send: members.into_iter().collect(),
                        ..Output::default()
                    }
                }
            }
            (_, Message::Error(e)) => self.remote_error(e).await?,
        };
        if output.close.is_some() {
            self.close();
        }
        Ok(output)
    }

    fn close(&mut self) {
        self.state = SessionState::Closed;
        if let (Some(peer), true) = (self.peer, self.counted) {
            self.counted = false;
            self.engine.set_connected(peer, false);
        }
    }

    /// Ends the session from this side (the connection dropped).
    pub fn disconnect(&mut self) {
        self.close();
    }

    async fn hello(&mut self, hello: Hello) -> Result<Output, EngineError> {
        if hello.max_version < MIN_PROTOCOL_VERSION || hello.min_version > PROTOCOL_VERSION {
            return Ok(Output::refuse(
                ErrorCode::UnsupportedVersion {
                    min: MIN_PROTOCOL_VERSION,
                    max: PROTOCOL_VERSION,
                },
                format!(
                    "peer speaks protocol {}..={}, this device {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}",
                    hello.min_version, hello.max_version
                ),
            ));
        }
        if hello.library != self.config.library {
            return Ok(Output::refuse(
                ErrorCode::WrongLibrary,
                format!(
                    "peer syncs library {}, not {}",
                    hello.library, self.config.library
                ),
            ));
        }
        if let Some(authenticated) = self.authenticated
            && hello.device != authenticated
        {
            metrics::counter!("syncable_impersonations_refused_total").increment(1);
            self.engine
                .inner
                .counters
                .impersonations
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(%authenticated, claimed = %hello.device, "a peer said hello in another device's name");
            return Ok(Output::refuse(
                ErrorCode::NotPaired,
                format!(
                    "this connection authenticated device {authenticated}; it cannot speak as {}",
                    hello.device
                ),
            ));
        }
        if hello.device == self.engine.device() || !self.engine.is_paired(hello.device) {
            return Ok(Output::refuse(
                ErrorCode::NotPaired,
                format!("device {} is not paired with this device", hello.device),
            ));
        }
        let peer = hello.device;
        self.peer = Some(peer);
        if !self.counted {
            self.counted = true;
            self.engine.set_connected(peer, true);
        }
        self.engine.heard_from(peer, Some(&hello.vector));
        if self.engine.is_expired(peer) && !hello.needs_backfill {
            tracing::warn!(%peer, "peer returned after the retention horizon; asking it to resync");
            // It stays connected: once it has resynced from a snapshot and
            // acknowledged, it is a peer like any other.
            self.state = SessionState::Ready;
            return Ok(Output::send(Message::Error(ErrorMessage {
                code: ErrorCode::Expired,
                message: "away beyond the retention horizon: resync from a snapshot".into(),
            })));
        }
        if self.engine.needs_backfill() {
            let others_hold_data = hello
                .vector
                .iter()
                .any(|(o, s)| o != self.engine.origin() && s > 0);
            match self.engine.backfill_with(peer, others_hold_data) {
                BackfillWith::Ask => {
                    self.state = SessionState::Backfilling;
                    let request = self.engine.backfill_request(self.config.snapshot_limit);
                    return Ok(Output::send(Message::SnapshotRequest(request)));
                }
                BackfillWith::Skip => self.engine.skip_backfill().await?,
                BackfillWith::Pull => {}
            }
        }
        Ok(Output::send(self.pull()))
    }

    fn pull(&mut self) -> Message {
        let request = self.engine.pull_request(self.config.pull_limit);
        self.pulled_from = Some(request.vector.clone());
        self.state = SessionState::CatchingUp;
        Message::PullRequest(request)
    }

    /// A pull to run now and then even when ready: anything a lost push or
    /// a relay missed, or a pull whose answer was lost, is fetched by it.
    /// Snapshot rows held back for now are tried again first. While
    /// backfilling, the next snapshot page is asked again instead, if this
    /// peer serves the backfill.
    pub async fn anti_entropy(&mut self) -> Result<Vec<Message>, EngineError> {
        if self.state == SessionState::Backfilling && !self.engine.needs_backfill() {
            // The backfill was completed through another peer.
            return Ok(vec![self.pull()]);
        }
        if self.state == SessionState::Backfilling
            && self.peer.is_none_or(|p| self.engine.drives_backfill(p))
        {
            // A page lost on the way, or a backfill whose serving peer went
            // away, resumes here.
            let request = self.engine.backfill_request(self.config.snapshot_limit);
            return Ok(vec![Message::SnapshotRequest(request)]);
        }
        // A pull whose answer was lost is asked again.
        if !matches!(self.state, SessionState::Ready | SessionState::CatchingUp) {
            return Ok(Vec::new());
        }
        self.engine.retry_held().await?;
        Ok(vec![self.pull()])
    }

    fn ack(&self) -> Message {
        Message::Ack(Ack {
            vector: self.engine.vector(),
            held_back: self
                .peer
                .map(|p| self.engine.held_back_from(p))
                .unwrap_or_default(),
        })
    }

    async fn receive(
        &mut self,
        batches: Vec<Batch>,
        pushed: bool,
    ) -> Result<Vec<crate::receive::ChangeOutcome>, EngineError> {
        let (report, outcomes) = self
            .engine
            .receive(Incoming {
                batches: in_batches(batches),
                pushed,
                ..Incoming::default()
            })
            .await?;
        if let Some(peer) = self.peer {
            self.engine.note_held_back(peer, &report.held_back);
        }
        Ok(outcomes)
    }

    async fn pulled(&mut self, response: PullResponse) -> Result<Output, EngineError> {
        let from = self.pulled_from.take().unwrap_or_default();
        self.receive(response.batches, false).await?;
        let vector = self.engine.vector();
        let progressed = vector != from;
        if response.has_more && progressed {
            return Ok(Output::send(self.pull()));
        }
        self.state = SessionState::Ready;
        Ok(Output::send(self.ack()))
    }

    async fn snapshot_page(&mut self, page: SnapshotResponse) -> Result<Output, EngineError> {
        let asked = std::mem::take(&mut self.asked_ahead);
        if !self.engine.continues_backfill(&page, self.peer) {
            if self.state == SessionState::Backfilling && !self.engine.needs_backfill() {
                // The backfill was completed through another peer.
                return Ok(Output::send(self.pull()));
            }
            // A stale or repeated page, or one of a peer that does not serve
            // this backfill: the page asked for is on its way, or is asked
            // again at the next anti-entropy round.
            return Ok(Output::default());
        }
        let (_, complete) = self.engine.apply_snapshot(page, self.peer).await?;
        if complete {
            return Ok(Output::send(self.pull()));
        }
        if asked {
            return Ok(Output::default());
        }
        let request = self.engine.backfill_request(self.config.snapshot_limit);
        Ok(Output::send(Message::SnapshotRequest(request)))
    }

    /// What to send *before* handling `message`, so that the peer works on
    /// the next page while this device applies this one: the next snapshot
    /// page's request. The transport sends it, then calls
    /// [`handle`](Self::handle) with the same message.
    pub fn ahead_of(&mut self, message: &Message) -> Option<Message> {
        match message {
            Message::SnapshotResponse(page)
                if self.state == SessionState::Backfilling
                    && self.engine.continues_backfill(page, self.peer) =>
            {
                let cursor = page.next.clone()?;
                self.asked_ahead = true;
                Some(Message::SnapshotRequest(crate::protocol::SnapshotRequest {
                    cursor: Some(cursor),
                    limit: self.config.snapshot_limit,
                }))
            }
            _ => None,
        }
    }

    /// Handles messages that arrived together: consecutive pushes are
    /// applied as one batch, in one transaction, so a burst costs a few
    /// commits rather than one per push.
    pub async fn handle_all(&mut self, messages: Vec<Message>) -> Result<Output, EngineError> {
        let mut out = Output::default();
        let mut pushes: Vec<Batch> = Vec::new();
        for message in messages {
            if let Message::Push(push) = message {
                if self.state != SessionState::Handshake && self.state != SessionState::Closed {
                    pushes.extend(push.batches);
                    continue;
                }
                self.absorb(&mut out, Message::Push(push)).await?;
                continue;
            }
            if !pushes.is_empty() {
                let batches = std::mem::take(&mut pushes);
                self.absorb(&mut out, Message::Push(Push { batches }))
                    .await?;
            }
            self.absorb(&mut out, message).await?;
            if out.close.is_some() {
                return Ok(out);
            }
        }
        if !pushes.is_empty() {
            self.absorb(&mut out, Message::Push(Push { batches: pushes }))
                .await?;
        }
        Ok(out)
    }

    async fn absorb(&mut self, out: &mut Output, message: Message) -> Result<(), EngineError> {
        if out.close.is_some() {
            return Ok(());
        }
        let o = self.handle(message).await?;
        // Acknowledgements say the same thing twice: keep the last.
        if o.send.iter().any(|m| matches!(m, Message::Ack(_))) {
            out.send.retain(|m| !matches!(m, Message::Ack(_)));
        }
        out.send.extend(o.send);
        out.relay.extend(o.relay);
        out.close = o.close;
        Ok(())
    }

    async fn pushed(&mut self, push: Push) -> Result<Output, EngineError> {
        let before = self.engine.vector();
        let gap = push.batches.iter().any(|b| before.get(b.origin) < b.after);
        let outcomes = self.receive(push.batches.clone(), true).await?;
        // Relay what was new here: another peer may lack it too.
        let relay: Vec<Batch> = push
            .batches
            .into_iter()
            .filter(|b| {
                outcomes.iter().any(|(o, s, outcome)| {
                    *o == b.origin
                        && *s > b.after
                        && *s <= b.upto
                        && !matches!(outcome, Outcome::Duplicate | Outcome::HeldBack(_))
                })
            })
            .collect();
        let mut send = vec![self.ack()];
        // Changes before this batch never reached us: fetch them now rather
        // than at the next anti-entropy round.
        if gap && self.state == SessionState::Ready {
            send.push(self.pull());
        }
        Ok(Output {
            send,
            relay,
            close: None,
        })
    }

    async fn remote_error(&mut self, error: ErrorMessage) -> Result<Output, EngineError> {
        if matches!(error.code, ErrorCode::ResyncRequired | ErrorCode::Expired) {
            tracing::warn!(peer = ?self.peer, code = ?error.code, "told to resync from a snapshot");
            self.engine
                .restart_backfill(error.code == ErrorCode::Expired)
                .await?;
            self.state = SessionState::Backfilling;
            let request = self.engine.backfill_request(self.config.snapshot_limit);
            return Ok(Output::send(Message::SnapshotRequest(request)));
        }
        tracing::warn!(peer = ?self.peer, ?error, "peer refused");
        Ok(Output {
            close: Some(format!("peer refused: {:?}: {}", error.code, error.message)),
            ..Output::default()
        })
    }

    /// A heartbeat carrying this device's vector, and the reports of what
    /// members hold that the peer was not sent yet.
    pub fn heartbeat(&mut self) -> Message {
        if self.beats.is_multiple_of(FULL_HEARTBEAT_EVERY) {
            self.reported.clear();
            // A disagreement answered and unchanged since: what was sent
            // may not have arrived, so everything goes again.
            let stuck = self.members_heard.is_some_and(|theirs| {
                self.members_answered == Some((self.engine.members_digest(), theirs))
            });
            if stuck {
                self.members_sent.clear();
            }
            self.members_answered = None;
        }
        let full = self.beats.is_multiple_of(FULL_HEARTBEAT_EVERY);
        self.beats += 1;
        let vector = self.engine.vector();
        // The peer's own report it knows better.
        let held = self.engine.held_by_members(&vector, |d, key| {
            Some(d) == self.peer || self.reported.get(&d) == Some(&key)
        });
        let base_total = vector.total();
        for r in &held {
            let total = r.differs.iter().fold(base_total, |t, (o, s)| {
                t.saturating_sub(vector.get(*o)).saturating_add(*s)
            });
            self.reported.insert(r.device, (r.stamp, total));
        }
        // Between full heartbeats, the vector goes as its difference from
        // the one last sent whole.
        let (vector, since) = match &self.vector_sent {
            Some((digest, base)) if !full => (
                VersionVector::new(),
                Some(VectorSince {
                    base: *digest,
                    differs: vector.differs_from(base),
                }),
            ),
            _ => {
                self.vector_sent = Some((vector_digest(&vector), vector.clone()));
                (vector, None)
            }
        };
        Message::Heartbeat(Heartbeat {
            held,
            vector,
            members: self.engine.members_digest(),
            links: self.engine.connected_peers(),
            since,
        })
    }

    /// The vector a heartbeat gives, whole or as a difference from one the
    /// peer sent whole; `None` when that one is not the last heard whole
    /// (lost, or out of order).
    fn vector_of(&mut self, beat: &Heartbeat) -> Option<VersionVector> {
        match &beat.since {
            None => {
                self.vector_heard = Some((vector_digest(&beat.vector), beat.vector.clone()));
                Some(beat.vector.clone())
            }
            Some(since) => {
                let (digest, base) = self.vector_heard.as_ref()?;
                if *digest != since.base {
                    return None;
                }
                let mut v = base.clone();
                for (origin, seq) in &since.differs {
                    v.set(*origin, *seq);
                }
                Some(v)
            }
        }
    }

    /// This device's membership records not sent to the peer yet, if the
    /// peer's digest says it holds others (once per pair of digests): each
    /// side then merges the other's, and the digests agree.
    fn members_if_differ(&mut self, theirs: &crate::trust::Hash) -> Option<Message> {
        self.members_heard = Some(*theirs);
        let mine = self.engine.members_digest();
        if *theirs == mine || self.members_answered == Some((mine, *theirs)) {
            return None;
        }
        self.members_answered = Some((mine, *theirs));
        let fresh = self
            .engine
            .member_records_but(|id| self.members_sent.contains(id));
        if fresh.is_empty() {
            return None;
        }
        let mut records = Vec::with_capacity(fresh.len());
        for (id, record) in fresh {
            self.members_sent.insert(id);
            records.push(record);
        }
        Some(Message::Members(crate::protocol::Members { records }))
    }
}
