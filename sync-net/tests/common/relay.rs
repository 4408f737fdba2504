//! A fault-injecting UDP relay between two endpoints on this machine: each
//! side sends to the relay's socket that faces it, and the relay forwards
//! each datagram to the other side, dropping, delaying (with jitter, which
//! reorders), duplicating or, while the link is cut, discarding it. QUIC runs
//! over it unchanged. Used by the tests and by `cargo run --example relay`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::net::UdpSocket;

/// What the relay does to each datagram.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    /// Chance a datagram is dropped.
    pub drop: f64,
    /// Chance a datagram is sent twice.
    pub duplicate: f64,
    /// Delay of every datagram.
    pub delay: Duration,
    /// Up to this much more, drawn per datagram (so datagrams reorder).
    pub jitter: Duration,
}

impl Faults {
    /// A clean link.
    pub const NONE: Self = Self {
        drop: 0.0,
        duplicate: 0.0,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
    };
}

/// What a relay did, for the test's report.
#[derive(Debug, Default)]
pub struct Counts {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
    pub duplicated: AtomicU64,
    pub cut: AtomicU64,
}

/// One relayed link between `a` and `b`.
pub struct Relay {
    /// Where `a` sends to reach `b`.
    pub for_a: SocketAddr,
    /// Where `b` sends to reach `a`.
    pub for_b: SocketAddr,
    cut: Arc<AtomicBool>,
    pub counts: Arc<Counts>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Relay {
    /// Starts relaying between the endpoints at `a` and `b`, with faults
    /// drawn from `seed`.
    pub async fn start(
        a: SocketAddr,
        b: SocketAddr,
        faults: Faults,
        seed: u64,
    ) -> std::io::Result<Self> {
        let facing_a = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let facing_b = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let cut = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(seed)));
        let forward = |from: Arc<UdpSocket>, to: Arc<UdpSocket>, dest: SocketAddr| {
            let (cut, counts, rng) = (cut.clone(), counts.clone(), rng.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                loop {
                    let Ok((n, _)) = from.recv_from(&mut buf).await else {
                        return;
                    };
                    if cut.load(Ordering::Relaxed) {
                        counts.cut.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let (drop, copies, delay) = {
                        let mut rng = rng.lock().unwrap_or_else(|e| e.into_inner());
                        let drop = rng.random_bool(faults.drop);
                        let copies = if rng.random_bool(faults.duplicate) {
                            2
                        } else {
                            1
                        };
                        let jitter = if faults.jitter.is_zero() {
                            Duration::ZERO
                        } else {
                            faults.jitter.mul_f64(rng.random_range(0.0..1.0))
                        };
                        (drop, copies, faults.delay + jitter)
                    };
                    if drop {
                        counts.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    if copies > 1 {
                        counts.duplicated.fetch_add(1, Ordering::Relaxed);
                    }
                    counts.forwarded.fetch_add(1, Ordering::Relaxed);
                    let datagram = buf[..n].to_vec();
                    let to = to.clone();
                    let send = async move {
                        for _ in 0..copies {
                            let _ = to.send_to(&datagram, dest).await;
                        }
                    };
                    if delay.is_zero() {
                        send.await;
                    } else {
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            send.await;
                        });
                    }
                }
            })
        };
        let tasks = vec![
            forward(facing_a.clone(), facing_b.clone(), b),
            forward(facing_b.clone(), facing_a.clone(), a),
        ];
        Ok(Self {
            for_a: facing_a.local_addr()?,
            for_b: facing_b.local_addr()?,
            cut,
            counts,
            tasks,
        })
    }

    /// Cuts the link (every datagram is discarded) or heals it.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Relaxed);
    }

    /// Datagrams forwarded, dropped, duplicated and discarded while cut.
    pub fn report(&self) -> (u64, u64, u64, u64) {
        let c = &self.counts;
        (
            c.forwarded.load(Ordering::Relaxed),
            c.dropped.load(Ordering::Relaxed),
            c.duplicated.load(Ordering::Relaxed),
            c.cut.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
