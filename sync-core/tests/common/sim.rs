//! A deterministic network of devices running the real engine and protocol
//! sessions: messages are encoded and decoded in transit, and the network
//! can drop, duplicate, reorder and partition them. A seed replays a run.

use std::collections::{BTreeMap, BTreeSet};

use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use std::sync::Arc;

use sync_core::{Change, Commit, Message, Session, SessionConfig};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::Device;

pub const LIBRARY: Uuid = Uuid::from_u128(0x11B);

#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub drop: f64,
    pub duplicate: f64,
    pub reorder: bool,
}

pub struct Node {
    pub dev: Device,
    /// The device's commits, to push.
    commits: broadcast::Receiver<Arc<Commit>>,
    pub sessions: BTreeMap<usize, Session>,
    pub online: bool,
}

pub struct Net {
    pub nodes: Vec<Node>,
    queue: Vec<(usize, usize, Vec<u8>)>,
    pub rng: StdRng,
    pub faults: Faults,
    cut: BTreeSet<(usize, usize)>,
    pub config: SessionConfig,
    pub delivered: u64,
    pub dropped: u64,
    /// Every local change written, for loss checks.
    pub written: Vec<Change>,
}

impl Node {
    /// A device on the network, online, with no session yet.
    pub fn new(dev: Device) -> Self {
        Self {
            commits: dev.engine.subscribe(),
            dev,
            sessions: BTreeMap::new(),
            online: true,
        }
    }
}

impl Net {
    pub fn new(devices: Vec<Device>, seed: u64) -> Self {
        Self {
            nodes: devices
                .into_iter()
                .map(|dev| Node {
                    commits: dev.engine.subscribe(),
                    dev,
                    sessions: BTreeMap::new(),
                    online: true,
                })
                .collect(),
            queue: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
            faults: Faults::default(),
            cut: BTreeSet::new(),
            config: SessionConfig::new(LIBRARY),
            delivered: 0,
            dropped: 0,
            written: Vec::new(),
        }
    }

    /// Pairs every device with every other.
    pub async fn pair_all(&self) {
        for a in &self.nodes {
            for b in &self.nodes {
                if a.dev.id != b.dev.id {
                    a.dev.engine.pair(b.dev.id).await.unwrap();
                }
            }
        }
    }

    fn send(&mut self, from: usize, to: usize, message: &Message) {
        let bytes = sync_core::encode(message).unwrap();
        self.queue.push((from, to, bytes));
    }

    /// Opens sessions between `a` and `b` and queues both hellos.
    pub async fn connect(&mut self, a: usize, b: usize) {
        for (x, y) in [(a, b), (b, a)] {
            let engine = self.nodes[x].dev.engine.clone();
            let mut session = Session::new(engine, self.config.clone());
            let hello = session.start().await.unwrap();
            self.nodes[x].sessions.insert(y, session);
            for m in hello {
                self.send(x, y, &m);
            }
        }
    }

    pub async fn connect_all(&mut self) {
        let n = self.nodes.len();
        for a in 0..n {
            for b in a + 1..n {
                if self.nodes[a].online && self.nodes[b].online {
                    self.connect(a, b).await;
                }
            }
        }
    }

    /// Takes a device off the network: its sessions end, messages to and
    /// from it are lost.
    pub fn disconnect(&mut self, a: usize) {
        self.nodes[a].online = false;
        let peers: Vec<usize> = self.nodes[a].sessions.keys().copied().collect();
        for p in peers {
            if let Some(mut s) = self.nodes[a].sessions.remove(&p) {
                s.disconnect();
            }
            if let Some(mut s) = self.nodes[p].sessions.remove(&a) {
                s.disconnect();
            }
        }
        self.queue.retain(|(f, t, _)| *f != a && *t != a);
    }

    /// Drops every session and opens fresh ones between online devices, as
    /// a transport does when its connections break and come back.
    pub async fn reconnect_all(&mut self) {
        for node in &mut self.nodes {
            for (_, mut s) in std::mem::take(&mut node.sessions) {
                s.disconnect();
            }
        }
        self.queue.clear();
        self.connect_all().await;
    }

    /// Cuts or heals the link between two devices.
    pub fn partition(&mut self, a: usize, b: usize, cut: bool) {
        if cut {
            self.cut.insert((a.min(b), a.max(b)));
        } else {
            self.cut.remove(&(a.min(b), a.max(b)));
        }
    }

    /// Commits `changes` written on `a`: pushes them to its peers.
    pub fn committed(&mut self, a: usize, changes: Vec<Change>) {
        while let Ok(commit) = self.nodes[a].commits.try_recv() {
            for push in commit.pushes() {
                let peers: Vec<usize> = self.nodes[a].sessions.keys().copied().collect();
                for p in peers {
                    self.send(a, p, &push);
                }
            }
        }
        self.written.extend(changes);
    }

    /// Delivers one message; false when none is queued.
    pub async fn step(&mut self) -> bool {
        if self.queue.is_empty() {
            return false;
        }
        let i = if self.faults.reorder {
            self.rng.random_range(0..self.queue.len())
        } else {
            0
        };
        let (from, to, bytes) = self.queue.remove(i);
        if self.cut.contains(&(from.min(to), from.max(to)))
            || !self.nodes[to].online
            || self.rng.random_bool(self.faults.drop)
        {
            self.dropped += 1;
            return true;
        }
        if self.rng.random_bool(self.faults.duplicate) {
            self.queue.push((from, to, bytes.clone()));
        }
        let message = sync_core::decode(&bytes).unwrap();
        let Some(session) = self.nodes[to].sessions.get_mut(&from) else {
            self.dropped += 1;
            return true;
        };
        self.delivered += 1;
        let output = session.handle(message).await.unwrap();
        for m in &output.send {
            self.send(to, from, m);
        }
        if !output.relay.is_empty() {
            let relay = Message::Push(sync_core::Push {
                batches: output.relay,
            });
            let others: Vec<usize> = self.nodes[to]
                .sessions
                .keys()
                .copied()
                .filter(|p| *p != from)
                .collect();
            for p in others {
                self.send(to, p, &relay);
            }
        }
        true
    }

    /// Delivers until nothing is queued (or `max` messages).
    pub async fn run(&mut self, max: u64) -> u64 {
        let mut n = 0;
        while n < max && self.step().await {
            n += 1;
        }
        n
    }

    /// An anti-entropy round: every ready session pulls.
    pub async fn anti_entropy(&mut self) {
        for a in 0..self.nodes.len() {
            let peers: Vec<usize> = self.nodes[a].sessions.keys().copied().collect();
            for p in peers {
                let msgs = match self.nodes[a].sessions.get_mut(&p) {
                    Some(s) => s.anti_entropy().await.unwrap(),
                    None => Vec::new(),
                };
                for m in msgs {
                    self.send(a, p, &m);
                }
            }
        }
    }

    /// `rounds` rounds of anti-entropy and heartbeats, each delivered:
    /// what members hold travels one link a round.
    pub async fn gossip(&mut self, rounds: usize) {
        for _ in 0..rounds {
            self.anti_entropy().await;
            self.heartbeats();
            self.run(10_000).await;
        }
    }

    /// Every session sends its heartbeat.
    pub fn heartbeats(&mut self) {
        for a in 0..self.nodes.len() {
            let beats: Vec<(usize, Message)> = self.nodes[a]
                .sessions
                .iter_mut()
                .map(|(p, s)| (*p, s.heartbeat()))
                .collect();
            for (p, m) in beats {
                self.send(a, p, &m);
            }
        }
    }

    /// Runs with anti-entropy rounds until every online device holds the
    /// same content and nothing is queued; panics (with the seed in the
    /// caller's message) if that does not happen.
    pub async fn settle(&mut self, rounds: usize) -> bool {
        for _ in 0..rounds {
            self.run(100_000).await;
            if self.converged().await {
                return true;
            }
            self.anti_entropy().await;
        }
        self.run(100_000).await;
        self.converged().await
    }

    pub async fn converged(&self) -> bool {
        let mut contents = Vec::new();
        for n in self.nodes.iter().filter(|n| n.online) {
            contents.push(n.dev.content().await);
        }
        contents.windows(2).all(|w| w[0] == w[1])
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        items.shuffle(&mut self.rng);
    }
}
