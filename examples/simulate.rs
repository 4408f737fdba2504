//! A replayable fault simulation of a whole library: N devices (3 to 1,000),
//! each the real engine over its own SQLite file with the example's seven
//! models, talking through protocol sessions over a simulated network that a
//! seed drives. Each seed runs a random workload on every model under the
//! faults asked for, then heals everything, lets the system quiesce and
//! checks what every device holds.
//!
//! ```text
//! cargo run --release --example simulate -- --devices 5 --seeds 1..20
//! cargo run --release --example simulate -- --devices 200 --seed 7 --ops 400 --topology sparse
//! cargo run --release --example simulate -- --faults drop,dup,reorder --seed 3
//! ```
//!
//! Faults (`--faults`; the default is all but `power`): `drop`, `dup`
//! (messages), `reorder` (links interleave in any order; one link keeps its
//! order, as a QUIC stream does), `partition` (groups cut off and healed),
//! `crash` (a device's memory discarded, its engine reopened from its
//! database), `power` (a device's database copied, later rolled back to that
//! copy), `skew` (clocks apart within the drift bound, one beyond it for a
//! while), `join` (devices that join mid-run and backfill from a neighbour),
//! `pages` (small catch-up and snapshot pages), `collect` (tombstones
//! collected as soon as every member holds their delete: a retention horizon
//! of zero), `shuffle` (the batches of each push, pull answer and last
//! snapshot page delivered in an order the seed picks, not in the order
//! their sender put them: an engine may not rely on it). Topologies: `mesh`, `line`, `star`, `sparse` (a ring with
//! random chords); devices off each other's edges never meet and learn each
//! other's changes through relays.
//!
//! Checks after quiescence: identical synced data on every device (per
//! model), every record created and never deleted present (unless a
//! conflict names it, a power loss undid it, or it went with a record it
//! referenced), no deleted record anywhere, no dangling reference, nothing
//! parked (but a record waiting for one no device holds and a power loss
//! may have undone everywhere: counted in the report), equal version
//! vectors; with `collect`, no tombstone left once
//! every device collects, and the same checks after; last, no log entry
//! left once every device prunes after every peer acknowledged. A failing seed prints
//! the first divergence and the command that replays it; the run is
//! deterministic (the same output twice). `SIMULATE_DEBUG=1`,
//! `SIMULATE_DEBUG_MODEL=model` (every row of that model on the two devices
//! that differ), `SIMULATE_TRACE=model:uuid` (or `origin:uuid`) and
//! `SIMULATE_TRACE_LINK=a,b` print what a divergence needs to be understood;
//! `SIMULATE_PROFILE=1` prints, per message kind, how many were delivered,
//! the time spent handling them and their bytes.
#![allow(unreachable_pub)]

#[path = "library/mod.rs"]
mod library;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use library::{
    collection, collection_entry, device, entry, location, tag, user_metadata, user_metadata_tag,
    volume,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use sea_orm::{ActiveValue::Set, ConnectionTrait, DatabaseConnection};
use syncable::core::clock::{ManualTime, TimeSource};
use syncable::core::{DeviceKey, Engine, EngineConfig, Message, Session, SessionConfig, SyncModel};
use uuid::Uuid;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser, Debug, Clone)]
#[command(about = "A replayable fault simulation of a Syncable library")]
struct Args {
    /// Devices in the library (3 to 1,000).
    #[arg(long, default_value_t = 5)]
    devices: usize,
    /// Seeds to run, as A..B (B excluded).
    #[arg(long, value_parser = parse_range)]
    seeds: Option<Range<u64>>,
    /// One seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Operations per seed (writes and fault events).
    #[arg(long, default_value_t = 300)]
    ops: usize,
    /// Faults to inject (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "drop,dup,reorder,partition,crash,skew,join,pages,collect"
    )]
    faults: Vec<String>,
    /// mesh, line, star or sparse; default mesh up to 12 devices, else
    /// sparse.
    #[arg(long)]
    topology: Option<String>,
}

fn parse_range(s: &str) -> Result<Range<u64>, String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("{s:?}: write A..B"))?;
    let a: u64 = a.parse().map_err(|e| format!("{a:?}: {e}"))?;
    let b: u64 = b.parse().map_err(|e| format!("{b:?}: {e}"))?;
    if a >= b {
        return Err(format!("{s:?}: the range is empty"));
    }
    Ok(a..b)
}

/// The physical time every device starts near.
const EPOCH: Duration = Duration::from_secs(1_780_000_000);
/// The drift bound the engines run with.
const MAX_DRIFT: Duration = Duration::from_secs(5);

struct Sim {
    seed: u64,
    rng: StdRng,
    faults: BTreeSet<String>,
    dir: std::path::PathBuf,
    devices: Vec<Dev>,
    edges: BTreeSet<(usize, usize)>,
    cut: BTreeSet<usize>,
    queue: Queue,
    config: SessionConfig,
    // What the workload did, for the checks.
    created: BTreeMap<&'static str, BTreeSet<Uuid>>,
    deleted: BTreeMap<&'static str, BTreeSet<Uuid>>,
    // Counts for the report.
    writes: u64,
    delivered: u64,
    dropped: u64,
    duplicated: u64,
    crashes: u64,
    partitions: u64,
    joins: u64,
    skews: u64,
    refused: u64,
    collected: u64,
    power_losses: u64,
    // The most records a device keeps parked waiting for a record a power
    // loss may have undone on every device that held it.
    parked_for_lost: std::cell::Cell<u64>,
    // Records whose creating write a power loss undid before it was known
    // to have left the device.
    lost: BTreeSet<Uuid>,
    // The records each created record referenced: it may go with them.
    parents: BTreeMap<Uuid, Vec<Uuid>>,
    // `SIMULATE_TRACE=model:uuid`: how each device stores that record,
    // printed whenever it changes.
    trace: Option<(String, Uuid)>,
    traced: BTreeMap<usize, String>,
    // `SIMULATE_PROFILE=1`: per message kind, how many were delivered, the
    // time spent handling them and their bytes.
    profile: Option<BTreeMap<String, (u64, Duration, u64)>>,
}

/// Whether record `id`, or a record it refers to (transitively, by
/// `parents`), is one that `is` picks.
fn reaches(parents: &BTreeMap<Uuid, Vec<Uuid>>, id: Uuid, is: impl Fn(&Uuid) -> bool) -> bool {
    let mut todo = vec![id];
    let mut seen = BTreeSet::new();
    while let Some(x) = todo.pop() {
        if is(&x) {
            return true;
        }
        if seen.insert(x) {
            todo.extend(parents.get(&x).into_iter().flatten());
        }
    }
    false
}

/// Messages in flight: one queue per link (a QUIC stream keeps its order),
/// the links taking turns or, with reordering, picked by the seed.
#[derive(Default)]
struct Queue {
    links: BTreeMap<(usize, usize), VecDeque<Vec<u8>>>,
    // The links with messages waiting.
    waiting: Vec<(usize, usize)>,
    turn: usize,
}

impl Queue {
    fn push(&mut self, from: usize, to: usize, bytes: Vec<u8>) {
        let q = self.links.entry((from, to)).or_default();
        if q.is_empty() {
            self.waiting.push((from, to));
        }
        q.push_back(bytes);
    }

    fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// How many links have messages waiting.
    fn links(&self) -> usize {
        self.waiting.len()
    }

    /// The first message of the `pick`th waiting link, else of the next in
    /// turn.
    fn pop(&mut self, pick: Option<usize>) -> Option<(usize, usize, Vec<u8>)> {
        if self.waiting.is_empty() {
            return None;
        }
        let i = pick.unwrap_or(self.turn) % self.waiting.len();
        self.turn = self.turn.wrapping_add(1);
        let link = self.waiting[i];
        let q = self.links.get_mut(&link)?;
        let bytes = q.pop_front()?;
        if q.is_empty() {
            self.waiting.swap_remove(i);
        }
        Some((link.0, link.1, bytes))
    }

    /// Drops every message to or from device `i`.
    fn forget(&mut self, i: usize) {
        self.links.retain(|(f, t), _| *f != i && *t != i);
        self.waiting.retain(|(f, t)| *f != i && *t != i);
    }

    fn clear(&mut self) {
        self.links.clear();
        self.waiting.clear();
    }
}

struct Dev {
    n: usize,
    db: DatabaseConnection,
    time: ManualTime,
    engine: Option<Engine>,
    sessions: BTreeMap<usize, Session>,
    commits: Option<tokio::sync::broadcast::Receiver<Arc<syncable::core::Commit>>>,
    joined: bool,
    // A copy of the database at an earlier commit, that a power loss rolls
    // back to, and the records created here since.
    backup: Option<std::path::PathBuf>,
    since_backup: Vec<Uuid>,
    deleted_since_backup: Vec<(&'static str, Uuid)>,
    incarnation: u64,
}

fn key_of(seed: u64, n: usize) -> Result<DeviceKey, Error> {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&(n as u64).to_le_bytes());
    bytes[16] = 0x5A;
    Ok(DeviceKey::from_seed(bytes)?)
}

async fn open_db(path: &Path) -> Result<DatabaseConnection, Error> {
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut options = sea_orm::ConnectOptions::new(url);
    options
        .max_connections(1)
        .min_connections(1)
        .test_before_acquire(false)
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(|o| {
            o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Off)
                // A device keeps 16 prepared statements, not sqlx's 100:
                // the engine's multi-row statements are large when
                // prepared, and at 100 devices the default cache was
                // more than half the simulation's memory (433 MiB, 184
                // with 16).
                .statement_cache_capacity(16)
        });
    let db = sea_orm::Database::connect(options).await?;
    library::create_schema(&db).await?;
    Ok(db)
}

impl Sim {
    fn engine(&self, i: usize) -> Result<&Engine, Error> {
        self.devices[i]
            .engine
            .as_ref()
            .ok_or_else(|| format!("device {i} is down").into())
    }

    fn up(&self, i: usize) -> bool {
        self.devices[i].engine.is_some() && self.devices[i].joined
    }

    async fn open(&mut self, i: usize) -> Result<(), Error> {
        let seed = self.seed;
        let d = &mut self.devices[i];
        d.incarnation += 1;
        let origin = Uuid::from_u128(
            (u128::from(seed) << 64) | ((d.n as u128) << 20) | u128::from(d.incarnation),
        );
        let mut config = EngineConfig::new()
            .time(Arc::new(d.time.clone()))
            .max_drift(MAX_DRIFT);
        config.origin = Some(origin);
        let key = key_of(seed, d.n)?;
        let engine = Engine::open(d.db.clone(), key, config).await?;
        d.commits = Some(engine.subscribe());
        d.engine = Some(engine);
        Ok(())
    }

    /// Prints how device `i` stores the traced record when that changed.
    async fn trace(&mut self, i: usize, why: &str) -> Result<(), Error> {
        let Some((model, id)) = self.trace.clone() else {
            return Ok(());
        };
        let Some(engine) = self.devices[i].engine.as_ref() else {
            return Ok(());
        };
        let now = if model == "origin" {
            format!("holds {} of it", engine.vector().get(id))
        } else {
            syncable::core::__private::steps::describe_record(engine, &model, id).await?
        };
        if self.traced.get(&i) != Some(&now) {
            eprintln!("trace: device {i} after {why}: {now}");
            self.traced.insert(i, now);
        }
        Ok(())
    }

    fn send(&mut self, from: usize, to: usize, m: &Message) -> Result<(), Error> {
        self.queue.push(from, to, syncable::core::encode(m)?);
        Ok(())
    }

    async fn connect(&mut self, a: usize, b: usize) -> Result<(), Error> {
        if !self.up(a) || !self.up(b) || self.devices[a].sessions.contains_key(&b) {
            return Ok(());
        }
        for (x, y) in [(a, b), (b, a)] {
            let mut s = Session::new(self.engine(x)?.clone(), self.config.clone());
            let hello = s.start().await?;
            self.devices[x].sessions.insert(y, s);
            for m in hello {
                self.send(x, y, &m)?;
            }
        }
        Ok(())
    }

    async fn connect_neighbours(&mut self, i: usize) -> Result<(), Error> {
        let peers: Vec<usize> = self.neighbours(i);
        for p in peers {
            if !self.cut.contains(&i) && !self.cut.contains(&p) {
                self.connect(i, p).await?;
            }
        }
        Ok(())
    }

    fn neighbours(&self, i: usize) -> Vec<usize> {
        self.edges
            .iter()
            .filter_map(|&(a, b)| {
                if a == i {
                    Some(b)
                } else if b == i {
                    Some(a)
                } else {
                    None
                }
            })
            .collect()
    }

    /// The most links between two devices (by the shortest path).
    fn diameter(&self) -> usize {
        let n = self.devices.len();
        let mut adjacent = vec![Vec::new(); n];
        for &(a, b) in &self.edges {
            adjacent[a].push(b);
            adjacent[b].push(a);
        }
        let mut longest = 0;
        for start in 0..n {
            let mut hops = vec![usize::MAX; n];
            hops[start] = 0;
            let mut next = VecDeque::from([start]);
            while let Some(a) = next.pop_front() {
                for &b in &adjacent[a] {
                    if hops[b] == usize::MAX {
                        hops[b] = hops[a] + 1;
                        longest = longest.max(hops[b]);
                        next.push_back(b);
                    }
                }
            }
        }
        longest
    }

    fn disconnect(&mut self, i: usize) {
        let peers: Vec<usize> = self.devices[i].sessions.keys().copied().collect();
        for p in peers {
            if let Some(mut s) = self.devices[i].sessions.remove(&p) {
                s.disconnect();
            }
            if let Some(mut s) = self.devices[p].sessions.remove(&i) {
                s.disconnect();
            }
        }
        self.queue.forget(i);
    }

    /// Queues the pushes of `i`'s new commits to its sessions.
    fn publish(&mut self, i: usize) -> Result<(), Error> {
        let mut pushes = Vec::new();
        if let Some(rx) = self.devices[i].commits.as_mut() {
            while let Ok(commit) = rx.try_recv() {
                pushes.extend(commit.pushes());
            }
        }
        let peers: Vec<usize> = self.devices[i].sessions.keys().copied().collect();
        for m in &pushes {
            for &p in &peers {
                self.send(i, p, m)?;
            }
        }
        Ok(())
    }

    /// Delivers one queued message; false when none is queued.
    async fn step(&mut self) -> Result<bool, Error> {
        // Links interleave in any order; within one link (a QUIC stream)
        // messages keep theirs.
        let pick = if self.faults.contains("reorder") && !self.queue.is_empty() {
            Some(self.rng.random_range(0..self.queue.links()))
        } else {
            None
        };
        let Some((from, to, bytes)) = self.queue.pop(pick) else {
            return Ok(false);
        };
        let lossy = self.faults.contains("drop");
        if !self.devices[to].sessions.contains_key(&from) || (lossy && self.rng.random_bool(0.03)) {
            self.dropped += 1;
            return Ok(true);
        }
        if self.faults.contains("dup") && self.rng.random_bool(0.02) {
            self.duplicated += 1;
            self.queue.push(from, to, bytes.clone());
        }
        let mut message = syncable::core::decode(&bytes)?;
        if self.faults.contains("shuffle") {
            let batches = match &mut message {
                Message::Push(p) => Some(&mut p.batches),
                Message::PullResponse(p) => Some(&mut p.batches),
                Message::SnapshotResponse(p) => Some(&mut p.changes),
                _ => None,
            };
            if let Some(batches) = batches.filter(|b| b.len() > 1) {
                batches.shuffle(&mut self.rng);
            }
        }
        let Some(session) = self.devices[to].sessions.get_mut(&from) else {
            return Ok(true);
        };
        self.delivered += 1;
        let what = if let Some((_, id)) = &self.trace {
            if std::env::var("SIMULATE_TRACE_LINK")
                .is_ok_and(|l| l == format!("{from},{to}") || l == format!("{to},{from}"))
            {
                let text = format!("{message:?}");
                eprintln!("trace: {from} -> {to}: {}", &text[..text.len().min(300)]);
            }
            for line in mentions(&message, *id) {
                eprintln!("trace: {from} -> {to}: {line}");
            }
            format!("{} from {from}", message_kind(&message))
        } else {
            String::new()
        };
        let kind = self.profile.is_some().then(|| message_kind(&message));
        let started = Instant::now();
        let output = session.handle(message).await?;
        if let (Some(profile), Some(kind)) = (self.profile.as_mut(), kind) {
            let e = profile.entry(kind).or_default();
            e.0 += 1;
            e.1 += started.elapsed();
            e.2 += bytes.len() as u64;
        }
        self.trace(to, &what).await?;
        for m in &output.send {
            self.send(to, from, m)?;
        }
        if !output.relay.is_empty() {
            let relay = Message::Push(syncable::core::Push {
                batches: output.relay,
            });
            let others: Vec<usize> = self.devices[to]
                .sessions
                .keys()
                .copied()
                .filter(|p| *p != from)
                .collect();
            for p in others {
                self.send(to, p, &relay)?;
            }
        }
        if let Some(why) = &output.close {
            if std::env::var_os("SIMULATE_DEBUG").is_some() {
                eprintln!("  session {to} -> {from} closed: {why}");
            }
            if let Some(mut s) = self.devices[to].sessions.remove(&from) {
                s.disconnect();
            }
            if let Some(mut s) = self.devices[from].sessions.remove(&to) {
                s.disconnect();
            }
        }
        Ok(true)
    }

    async fn anti_entropy(&mut self) -> Result<(), Error> {
        for a in 0..self.devices.len() {
            let peers: Vec<usize> = self.devices[a].sessions.keys().copied().collect();
            for p in peers {
                let msgs = match self.devices[a].sessions.get_mut(&p) {
                    Some(s) => s.anti_entropy().await?,
                    None => Vec::new(),
                };
                for m in msgs {
                    self.send(a, p, &m)?;
                }
                let beat = self.devices[a].sessions.get_mut(&p).map(|s| s.heartbeat());
                if let Some(beat) = beat {
                    self.send(a, p, &beat)?;
                }
            }
        }
        Ok(())
    }

    async fn run_queue(&mut self, max: u64) -> Result<(), Error> {
        let mut n = 0;
        while n < max && self.step().await? {
            n += 1;
        }
        Ok(())
    }

    fn pick_up(&mut self) -> Option<usize> {
        let up: Vec<usize> = (0..self.devices.len()).filter(|&i| self.up(i)).collect();
        if up.is_empty() {
            return None;
        }
        Some(up[self.rng.random_range(0..up.len())])
    }

    fn pick_known(&mut self, model: &'static str) -> Option<Uuid> {
        let ids: Vec<Uuid> = self.created.get(model)?.iter().copied().collect();
        if ids.is_empty() {
            return None;
        }
        Some(ids[self.rng.random_range(0..ids.len())])
    }

    fn new_id(&mut self) -> Uuid {
        Uuid::from_u128(self.rng.random::<u128>() & !(0xF000 << 64) | (0x4000 << 64))
    }

    /// One random write on device `i`, on any of the models.
    async fn write(&mut self, i: usize) -> Result<(), Error> {
        let dt = Duration::from_millis(self.rng.random_range(1..50));
        self.devices[i].time.advance(dt);
        let kind = self.rng.random_range(0..18u32);
        let now = chrono::DateTime::from_timestamp(EPOCH.as_secs() as i64, 0).unwrap_or_default();
        let me = self.engine(i)?.device();
        let engine = self.engine(i)?.clone();
        let mut tx = engine.begin().await?;
        let mut created: Vec<(&'static str, Uuid)> = Vec::new();
        let mut deleted: Vec<(&'static str, Uuid)> = Vec::new();
        match kind {
            0 | 1 => {
                let gid = self.new_id();
                let name = format!("tag-{}", self.rng.random_range(0..40u32));
                tx.insert(tag::ActiveModel {
                    gid: Set(gid),
                    canonical_name: Set(name.clone()),
                    display_name: Set(name),
                    namespace: Set(None),
                    tag_type: Set("user".into()),
                    color: Set(None),
                    aliases: Set(None),
                    ..Default::default()
                })
                .await?;
                created.push(("tags", gid));
            }
            2 => {
                if let Some(id) = self.pick_known("tags")
                    && let Some(mut row) = tag::Model::find_by_id(tx.connection(), id).await?
                {
                    row.color = Some(format!("#{:06x}", self.rng.random_range(0..0xFFFFFFu32)));
                    tx.update(row).await?;
                }
            }
            3 => {
                if let Some(id) = self.pick_known("tags")
                    && tx.delete::<tag::Model>(id).await?
                {
                    deleted.push(("tags", id));
                }
            }
            4 => {
                let gid = self.new_id();
                tx.insert(collection::ActiveModel {
                    gid: Set(gid),
                    name: Set(format!("c{}", self.rng.random_range(0..1000u32))),
                    description: Set(None),
                    ..Default::default()
                })
                .await?;
                created.push(("collections", gid));
            }
            5 => {
                if let Some(id) = self.pick_known("collections")
                    && tx.delete::<collection::Model>(id).await?
                {
                    deleted.push(("collections", id));
                }
            }
            6 | 7 => {
                // An entry of this device's, in its own location (made on
                // first use), sometimes under another of its entries.
                let loc = match location::Entity::find_owned(tx.connection(), me).await? {
                    Some(l) => l,
                    None => {
                        let gid = self.new_id();
                        created.push(("locations", gid));
                        tx.insert(location::ActiveModel {
                            gid: Set(gid),
                            device: Set(me),
                            volume_id: Set(None),
                            root_entry_id: Set(None),
                            name: Set(format!("loc-{i}")),
                            path: Set(format!("/d{i}")),
                            index_mode: Set(location::IndexMode::Deep),
                            total_file_count: Set(0),
                            total_byte_size: Set(0),
                            scan_state: Set("done".into()),
                            error_message: Set(None),
                            ..Default::default()
                        })
                        .await?
                    }
                };
                let parent = if self.rng.random_bool(0.3) {
                    entry::Entity::any_of(tx.connection(), me).await?
                } else {
                    None
                };
                let gid = self.new_id();
                if let Some(p) = parent
                    && let Some(p) = <entry::Entity as sea_orm::EntityTrait>::find_by_id(p)
                        .one(tx.connection())
                        .await?
                {
                    self.parents.insert(gid, vec![p.gid]);
                }
                tx.insert(entry::ActiveModel {
                    gid: Set(gid),
                    device: Set(me),
                    location_id: Set(loc.id),
                    parent_id: Set(parent),
                    user_metadata_id: Set(None),
                    name: Set(format!("f{}", gid.as_u128() % 1_000_000)),
                    kind: Set(entry::Kind::File),
                    extension: Set(None),
                    size: Set(self.rng.random_range(0..1_000_000i64)),
                    modified_at: Set(now),
                    indexed_at: Set(None),
                    ..Default::default()
                })
                .await?;
                created.push(("entries", gid));
            }
            8 => {
                if let Some(id) = entry::Entity::gid_of_any(tx.connection(), me).await?
                    && tx.delete::<entry::Model>(id).await?
                {
                    deleted.push(("entries", id));
                }
            }
            9 | 10 => {
                // A shared row referencing a collection (shared) and an
                // entry (device-owned, often another device's).
                if let (Some(c), Some(e)) =
                    (self.pick_known("collections"), self.pick_known("entries"))
                {
                    let coll = collection::Model::find_by_id(tx.connection(), c).await?;
                    let ent = entry::Model::find_by_id(tx.connection(), e).await?;
                    if let (Some(coll), Some(ent)) = (coll, ent) {
                        let gid = self.new_id();
                        tx.insert(collection_entry::ActiveModel {
                            gid: Set(gid),
                            collection_id: Set(coll.id),
                            entry_id: Set(ent.id),
                            added_at: Set(now),
                            ..Default::default()
                        })
                        .await?;
                        created.push(("collection_entries", gid));
                        self.parents.insert(gid, vec![c, e]);
                    }
                }
            }
            11 => {
                if let Some(id) = self.pick_known("collection_entries")
                    && tx.delete::<collection_entry::Model>(id).await?
                {
                    deleted.push(("collection_entries", id));
                }
            }
            12 => {
                // Metadata (shared), then one of this device's entries
                // pointing at it (device-owned -> shared).
                let gid = self.new_id();
                let meta = tx
                    .insert(user_metadata::ActiveModel {
                        gid: Set(gid),
                        scope: Set("entry".into()),
                        notes: Set(Some(format!("n{}", self.rng.random_range(0..100u32)))),
                        favorite: Set(self.rng.random_bool(0.5)),
                        hidden: Set(false),
                        custom_data: Set(serde_json::json!({})),
                        ..Default::default()
                    })
                    .await?;
                created.push(("user_metadata", gid));
                if let Some(id) = entry::Entity::gid_of_any(tx.connection(), me).await?
                    && let Some(mut row) = entry::Model::find_by_id(tx.connection(), id).await?
                {
                    row.user_metadata_id = Some(meta.id);
                    tx.update(row).await?;
                }
            }
            14 => {
                // A volume of this device's (device-owned, unique
                // fingerprint: two devices seeing one disk collide), or
                // new free space on one it has; its location then points at
                // it (device-owned -> device-owned).
                use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
                let mine = volume::Entity::find()
                    .filter(volume::Column::Device.eq(me))
                    .one(tx.connection())
                    .await?;
                let vol = match mine {
                    Some(mut v) if self.rng.random_bool(0.5) => {
                        v.free = Some(self.rng.random_range(0..1_000_000i64));
                        tx.update(v.clone()).await?;
                        v
                    }
                    _ => {
                        let gid = self.new_id();
                        created.push(("volumes", gid));
                        let fingerprint = format!("fp-{}", self.rng.random_range(0..12u32));
                        tx.insert(volume::ActiveModel {
                            gid: Set(gid),
                            device: Set(me),
                            fingerprint: Set(fingerprint.clone()),
                            display_name: Set(fingerprint),
                            mount_point: Set(format!("/mnt/{gid}")),
                            volume_type: Set(None),
                            capacity: Set(Some(1_000_000)),
                            free: Set(None),
                            is_online: Set(true),
                            last_seen_at: Set(None),
                            ..Default::default()
                        })
                        .await?
                    }
                };
                if let Some(mut loc) = location::Entity::find_owned(tx.connection(), me).await? {
                    loc.volume_id = Some(vol.id);
                    tx.update(loc).await?;
                }
            }
            15 => {
                // One of this device's volumes deleted (its location may
                // point at it).
                use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
                if let Some(v) = volume::Entity::find()
                    .filter(volume::Column::Device.eq(me))
                    .one(tx.connection())
                    .await?
                    && tx.delete::<volume::Model>(v.gid).await?
                {
                    deleted.push(("volumes", v.gid));
                }
            }
            16 => {
                // A tag on a metadata record (shared -> shared, twice).
                if let (Some(m), Some(t)) =
                    (self.pick_known("user_metadata"), self.pick_known("tags"))
                {
                    let meta = user_metadata::Model::find_by_id(tx.connection(), m).await?;
                    let tag = tag::Model::find_by_id(tx.connection(), t).await?;
                    if let (Some(meta), Some(tag)) = (meta, tag) {
                        let gid = self.new_id();
                        tx.insert(user_metadata_tag::ActiveModel {
                            gid: Set(gid),
                            user_metadata_id: Set(meta.id),
                            tag_id: Set(tag.id),
                            source: Set(user_metadata_tag::Source::User),
                            confidence: Set(1.0),
                            ..Default::default()
                        })
                        .await?;
                        created.push(("user_metadata_tags", gid));
                        self.parents.insert(gid, vec![m, t]);
                    }
                }
            }
            17 => {
                if let Some(id) = self.pick_known("user_metadata_tags")
                    && tx.delete::<user_metadata_tag::Model>(id).await?
                {
                    deleted.push(("user_metadata_tags", id));
                }
            }
            _ => {
                // A device row (shared, unique slug: collisions on purpose).
                let gid = self.new_id();
                let slug = format!("dev-{}", self.rng.random_range(0..30u32));
                tx.insert(device::ActiveModel {
                    gid: Set(gid),
                    name: Set(slug.clone()),
                    slug: Set(slug),
                    os: Set("linux".into()),
                    os_version: Set(None),
                    addresses: Set(serde_json::json!([])),
                    is_online: Set(true),
                    last_seen_at: Set(now),
                    sync_enabled: Set(true),
                    ..Default::default()
                })
                .await?;
                created.push(("devices", gid));
            }
        }
        tx.commit().await?;
        self.trace(i, "a local write").await?;
        self.writes += 1;
        for (m, id) in created {
            self.created.entry(m).or_default().insert(id);
            if self.devices[i].backup.is_some() {
                self.devices[i].since_backup.push(id);
            }
        }
        for (m, id) in deleted {
            self.deleted.entry(m).or_default().insert(id);
            if self.devices[i].backup.is_some() {
                self.devices[i].deleted_since_backup.push((m, id));
            }
        }
        self.publish(i)?;
        Ok(())
    }

    async fn fault(&mut self, ops_left: usize) -> Result<(), Error> {
        let n = self.devices.len();
        match self.rng.random_range(0..6u32) {
            0 if self.faults.contains("partition") => {
                if self.cut.is_empty() {
                    // Cut off a group of up to a third of the devices.
                    let size = self.rng.random_range(1..=(n / 3).max(1));
                    for _ in 0..size {
                        let i = self.rng.random_range(0..n);
                        self.cut.insert(i);
                        self.disconnect(i);
                    }
                    self.partitions += 1;
                } else {
                    let healed: Vec<usize> = std::mem::take(&mut self.cut).into_iter().collect();
                    for i in healed {
                        self.connect_neighbours(i).await?;
                    }
                }
            }
            1 if self.faults.contains("power") && self.rng.random_bool(0.5) => {
                if let Some(i) = self.pick_up() {
                    self.power(i).await?;
                }
            }
            1 if self.faults.contains("crash") => {
                if let Some(i) = self.pick_up() {
                    self.disconnect(i);
                    self.devices[i].engine = None;
                    self.devices[i].commits = None;
                    self.open(i).await?;
                    self.trace(i, "a crash").await?;
                    self.connect_neighbours(i).await?;
                    self.crashes += 1;
                }
            }
            2 if self.faults.contains("skew") => {
                if let Some(i) = self.pick_up() {
                    // Mostly within the drift bound, sometimes beyond it.
                    let ahead = if self.rng.random_bool(0.2) {
                        MAX_DRIFT * 3
                    } else {
                        Duration::from_millis(self.rng.random_range(0..4_000))
                    };
                    self.devices[i].time.advance(ahead);
                    self.skews += 1;
                }
            }
            3 if self.faults.contains("join") && ops_left > 0 => {
                if let Some(i) = (0..n).find(|&i| !self.devices[i].joined) {
                    self.join(i).await?;
                }
            }
            4 if self.faults.contains("collect") => {
                if let Some(i) = self.pick_up() {
                    // A horizon of zero: whatever every peer acknowledged
                    // goes, at once.
                    let c = self.engine(i)?.collect_tombstones(Duration::ZERO).await?;
                    self.collected += c.shared + c.owned;
                    self.trace(i, "collecting tombstones").await?;
                }
            }
            _ => self.anti_entropy().await?,
        }
        Ok(())
    }

    /// Power to device `i`: the first time, its database is copied as it
    /// stands (a commit it will fall back to); the next, it loses power and
    /// comes back with that copy, every later commit gone.
    async fn power(&mut self, i: usize) -> Result<(), Error> {
        let path = self.dir.join(format!("d{i}.sqlite"));
        let copy = self.dir.join(format!("d{i}-earlier.sqlite"));
        if self.devices[i].backup.is_none() {
            let _ = std::fs::remove_file(&copy);
            self.devices[i]
                .db
                .execute_unprepared(&format!("VACUUM INTO '{}'", copy.display()))
                .await?;
            self.devices[i].backup = Some(copy);
            self.devices[i].since_backup.clear();
            self.devices[i].deleted_since_backup.clear();
            return Ok(());
        }
        self.disconnect(i);
        self.devices[i].engine = None;
        self.devices[i].commits = None;
        self.devices[i].db.clone().close().await?;
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        std::fs::copy(&copy, &path)?;
        self.devices[i].db = open_db(&path).await?;
        self.devices[i].backup = None;
        let since = std::mem::take(&mut self.devices[i].since_backup);
        self.lost.extend(since);
        // A delete the power loss undid may stand or not, as it reached a
        // peer first or not: neither is checked.
        for (m, id) in std::mem::take(&mut self.devices[i].deleted_since_backup) {
            if let Some(d) = self.deleted.get_mut(m) {
                d.remove(&id);
            }
            self.lost.insert(id);
        }
        self.open(i).await?;
        // A pairing made after the earlier commit is gone with it: the
        // device refuses that peer as not paired, until the user pairs the
        // two again, which the simulation does at once.
        let me = self.engine(i)?.device();
        for p in self.neighbours(i) {
            if self.devices[p].joined && self.devices[p].engine.is_some() {
                let them = self.engine(p)?.device();
                if !self.engine(i)?.is_paired(them) {
                    self.engine(i)?.pair(them).await?;
                    self.engine(p)?.pair(me).await?;
                }
            }
        }
        self.trace(i, "a power loss").await?;
        self.connect_neighbours(i).await?;
        self.power_losses += 1;
        Ok(())
    }

    /// Device `i` joins: it pairs with its neighbours (each admits the
    /// other) and backfills from them.
    async fn join(&mut self, i: usize) -> Result<(), Error> {
        self.devices[i].joined = true;
        let me = self.engine(i)?.device();
        for p in self.neighbours(i) {
            if self.devices[p].joined {
                let them = self.engine(p)?.device();
                self.engine(p)?.pair(me).await?;
                self.engine(i)?.pair(them).await?;
            }
        }
        self.joins += 1;
        self.connect_neighbours(i).await
    }

    /// Heals everything and runs until nothing moves.
    async fn quiesce(&mut self) -> Result<bool, Error> {
        let n = self.devices.len();
        for i in 0..n {
            if !self.devices[i].joined {
                self.join(i).await?;
            }
            if self.devices[i].engine.is_none() {
                self.open(i).await?;
            }
        }
        self.cut.clear();
        // Every clock to the latest, and on: held-back changes come due.
        let latest = self
            .devices
            .iter()
            .map(|d| d.time.now().to_duration())
            .max()
            .unwrap_or(EPOCH);
        for d in &self.devices {
            d.time.set(latest + MAX_DRIFT * 4);
        }
        // Fresh sessions everywhere, as a transport reconnects: a session
        // whose hello was lost would otherwise never become ready.
        for i in 0..n {
            self.disconnect(i);
        }
        self.queue.clear();
        for i in 0..n {
            self.connect_neighbours(i).await?;
        }
        self.faults.remove("drop");
        self.faults.remove("dup");
        for _ in 0..(n * 4).max(40) {
            self.run_queue(5_000_000).await?;
            if self.converged().await? {
                // One more round of acknowledgements and bookkeeping for
                // pruning.
                self.anti_entropy().await?;
                self.run_queue(5_000_000).await?;
                for d in &self.devices {
                    d.time.advance(Duration::from_secs(2));
                }
                self.anti_entropy().await?;
                self.run_queue(5_000_000).await?;
                return Ok(true);
            }
            self.anti_entropy().await?;
        }
        Ok(false)
    }

    /// Once everything converged and every peer acknowledged it: each
    /// device prunes, and no log entry may remain (every peer holds every
    /// change, so none is needed for catch-up).
    async fn pruned_all(&mut self) -> Result<Option<String>, Error> {
        self.anti_entropy().await?;
        self.run_queue(5_000_000).await?;
        for i in 0..self.devices.len() {
            let engine = self.engine(i)?;
            engine.flush_peers().await?;
            engine.prune().await?;
            let left = engine.status().log_len;
            if left > 0 && std::env::var_os("SIMULATE_DEBUG").is_some() {
                let rows = engine
                    .database()
                    .query_all_raw(sea_orm::Statement::from_string(
                        sea_orm::DbBackend::Sqlite,
                        "SELECT origin, seq FROM _sync_log ORDER BY origin, seq",
                    ))
                    .await?;
                for r in rows.iter().take(10) {
                    let o: Vec<u8> = r.try_get("", "origin")?;
                    let seq: i64 = r.try_get("", "seq")?;
                    let origin = Uuid::from_slice(&o)?;
                    let peers: Vec<(bool, bool, u64)> = engine
                        .status()
                        .peers
                        .iter()
                        .map(|p| (p.acknowledged, p.expired, p.behind))
                        .collect();
                    eprintln!(
                        "  log entry {origin} {seq}; the vector holds {}; peers \
                         (acknowledged, expired, behind): {peers:?}",
                        engine.vector().get(origin),
                    );
                }
            }
            if left > 0 && std::env::var_os("SIMULATE_DEBUG").is_some() {
                for (p, s) in &self.devices[i].sessions {
                    eprintln!("  session {i} -> {p}: {:?}", s.state());
                }
                for (p, d) in self.devices.iter().enumerate() {
                    eprintln!(
                        "  device {p}: {:?} sessions {:?}",
                        d.engine.as_ref().map(|e| e.device()),
                        d.sessions.keys().collect::<Vec<_>>()
                    );
                }
            }
            if left > 0 {
                return Ok(Some(format!(
                    "device {i} keeps {left} log entries after every peer acknowledged \
                     everything it holds"
                )));
            }
        }
        Ok(None)
    }

    /// Once everything converged: heartbeats until every device knows what
    /// every other holds, then each collects with a horizon of zero. Every
    /// tombstone must go (every device acknowledged every delete), and
    /// nothing may differ or come back after.
    async fn collect_all(&mut self) -> Result<Option<String>, Error> {
        let n = self.devices.len();
        // A report travels one link per round: after as many rounds as the
        // longest shortest path, and one for each end, every device holds
        // every member's report of what it holds now.
        for _ in 0..self.diameter() + 2 {
            self.anti_entropy().await?;
            self.run_queue(5_000_000).await?;
        }
        for i in 0..n {
            let c = self.engine(i)?.collect_tombstones(Duration::ZERO).await?;
            self.collected += c.shared + c.owned;
        }
        for i in 0..n {
            let kept = self
                .engine(i)?
                .database()
                .query_all_raw(sea_orm::Statement::from_string(
                    sea_orm::DbBackend::Sqlite,
                    "SELECT model, record FROM _sync_rows WHERE presence = 2",
                ))
                .await?;
            let left = kept.len();
            if left > 0 && std::env::var_os("SIMULATE_DEBUG").is_some() {
                for r in kept {
                    let model: String = r.try_get("", "model")?;
                    let record: Vec<u8> = r.try_get("", "record")?;
                    let id = uuid::Uuid::from_slice(&record).unwrap_or_default();
                    let how = syncable::core::__private::steps::describe_record(
                        self.engine(i)?,
                        &model,
                        id,
                    )
                    .await?;
                    eprintln!("  tombstone kept on {i}: {model} {id}: {how}");
                    // The same record on every other device: whether the
                    // tombstone is everywhere, or only here.
                    for j in (0..n).filter(|j| *j != i) {
                        let e = self.engine(j)?;
                        let there =
                            syncable::core::__private::steps::describe_record(e, &model, id)
                                .await?;
                        eprintln!("    on {j}: {there}");
                    }
                }
            }
            if left > 0 {
                return Ok(Some(format!(
                    "device {i} kept {left} tombstones after every device held every delete"
                )));
            }
        }
        self.anti_entropy().await?;
        self.run_queue(5_000_000).await?;
        Ok(self
            .check()
            .await?
            .map(|f| format!("after collecting every tombstone: {f}")))
    }

    async fn converged(&self) -> Result<bool, Error> {
        let v = self.engine(0)?.vector();
        if !(1..self.devices.len()).all(|i| self.engine(i).is_ok_and(|e| e.vector() == v)) {
            return Ok(false);
        }
        let first = self.engine(0)?.content().await?;
        for i in 1..self.devices.len() {
            if self.engine(i)?.content().await? != first {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Every check; the first failure as text.
    async fn check(&self) -> Result<Option<String>, Error> {
        let n = self.devices.len();
        let reference = self.engine(0)?.content().await?;
        for i in 1..n {
            let content = self.engine(i)?.content().await?;
            if content != reference {
                let mine: BTreeSet<_> = reference.iter().map(|r| (r.model, r.id)).collect();
                let theirs: BTreeSet<_> = content.iter().map(|r| (r.model, r.id)).collect();
                let only0 = mine.difference(&theirs).next();
                let only_i = theirs.difference(&mine).next();
                let differ = reference
                    .iter()
                    .zip(content.iter())
                    .find(|(a, b)| a != b)
                    .map(|(a, _)| (a.model, a.id));
                if std::env::var_os("SIMULATE_DEBUG").is_some() {
                    for (a, b) in reference
                        .iter()
                        .zip(content.iter())
                        .filter(|(a, b)| a != b)
                        .take(3)
                    {
                        eprintln!("  on 0: {a:?}\n  on {i}: {b:?}");
                    }
                }
                if let Ok(model) = std::env::var("SIMULATE_DEBUG_MODEL") {
                    for (j, rows) in [(0, &reference), (i, &content)] {
                        for r in rows.iter().filter(|r| r.model == model) {
                            let values: Vec<String> =
                                r.fields.iter().map(|f| format!("{:?}", f.value)).collect();
                            let state = syncable::core::__private::steps::describe_record(
                                self.engine(j)?,
                                &model,
                                r.id,
                            )
                            .await?;
                            eprintln!("  device {j}: {} {values:?}\n    {state}", r.id);
                        }
                    }
                }
                if std::env::var_os("SIMULATE_DEBUG").is_some() {
                    for (model, id) in only0.iter().chain(only_i.iter()) {
                        for (j, name) in [(0, "0"), (i, "i")] {
                            let d = syncable::core::__private::steps::describe_record(
                                self.engine(j)?,
                                model,
                                *id,
                            )
                            .await?;
                            eprintln!("  {model} {id} on {name}: {d}");
                        }
                    }
                }
                let (s0, si) = (self.engine(0)?.status(), self.engine(i)?.status());
                if std::env::var_os("SIMULATE_DEBUG").is_some() {
                    for (o, n) in s0.vector.iter() {
                        if si.vector.get(o) != n {
                            eprintln!("  vector of {o}: {n} on 0, {} on {i}", si.vector.get(o));
                        }
                    }
                    for (o, n) in si.vector.iter() {
                        if s0.vector.get(o) == 0 && n > 0 {
                            eprintln!("  vector of {o}: 0 on 0, {n} on {i}");
                        }
                    }
                }
                return Ok(Some(format!(
                    "device 0 and device {i} differ: only on 0 {only0:?}, only on {i} {only_i:?}, \
                     first differing row {differ:?}; vectors equal: {}; parked {} and {}; held \
                     back {:?} and {:?}; phases {:?} and {:?}",
                    s0.vector == si.vector,
                    s0.parked,
                    si.parked,
                    s0.peers
                        .iter()
                        .flat_map(|p| p.held_back.iter().map(|h| (
                            h.seq,
                            h.count,
                            h.reason.clone()
                        )))
                        .collect::<Vec<_>>(),
                    si.peers
                        .iter()
                        .flat_map(|p| p.held_back.iter().map(|h| (
                            h.seq,
                            h.count,
                            h.reason.clone()
                        )))
                        .collect::<Vec<_>>(),
                    s0.phase,
                    si.phase,
                )));
            }
        }
        let held: BTreeSet<(&str, Uuid)> = reference.iter().map(|r| (r.model, r.id)).collect();
        // Every record created and never deleted is here, unless it lost (a
        // conflict log names it: its parent deleted, a unique key taken) or
        // a power loss undid its creation.
        let mut named: BTreeSet<Uuid> = BTreeSet::new();
        for i in 0..n {
            named.extend(self.engine(i)?.conflicts().await?.iter().map(|c| c.record));
        }
        let deleted: BTreeSet<Uuid> = self.deleted.values().flatten().copied().collect();
        // May be gone: deleted, lost, named by a conflict, or referencing
        // (transitively) a record that may be gone.
        let may_go = |id: &Uuid| {
            reaches(&self.parents, *id, |x| {
                deleted.contains(x) || named.contains(x) || self.lost.contains(x)
            })
        };
        // Lost: a power loss undid its creation, or that of a record it
        // refers to (transitively).
        let lost_with = |id: &Uuid| reaches(&self.parents, *id, |x| self.lost.contains(x));
        for (model, ids) in &self.created {
            if let Some(id) = ids
                .iter()
                .find(|id| !held.contains(&(*model, **id)) && !may_go(id))
            {
                return Ok(Some(format!(
                    "{model} {id}, created and never deleted, is nowhere and no conflict names it"
                )));
            }
        }
        for (model, ids) in &self.deleted {
            if let Some(id) = ids.iter().find(|id| held.contains(&(*model, **id))) {
                return Ok(Some(format!("deleted {model} {id} came back")));
            }
        }
        for i in 0..n {
            let e = self.engine(i)?;
            let s = e.status();
            if s.parked > 0 {
                // A record parked waiting for one that no device holds and
                // that a power loss may have undone on every device that
                // held it waits as it must: nothing can show it. Any other
                // parked record fails the run.
                let waits = e
                    .database()
                    .query_all_raw(sea_orm::Statement::from_string(
                        sea_orm::DbBackend::Sqlite,
                        "SELECT r.model, r.record, w.parent_model, w.parent FROM _sync_rows r \
                         LEFT JOIN _sync_waiting w ON r.model = w.model AND r.record = w.record \
                         WHERE r.presence IN (5, 6)",
                    ))
                    .await?;
                let mut excused: BTreeMap<Uuid, bool> = BTreeMap::new();
                let mut which = Vec::new();
                for r in &waits {
                    let id = |column: &str| -> Uuid {
                        r.try_get::<Vec<u8>>("", column)
                            .ok()
                            .and_then(|b| Uuid::from_slice(&b).ok())
                            .unwrap_or_default()
                    };
                    let (record, parent) = (id("record"), id("parent"));
                    let model: String = r.try_get("", "model").unwrap_or_default();
                    let parent_model: String = r.try_get("", "parent_model").unwrap_or_default();
                    // No wait: incomplete (its creation is not here), or
                    // refused by the database. An incomplete record whose
                    // creation a power loss undid, shown nowhere, waits as
                    // a record waiting for a lost one does.
                    let (needed, needed_model) = if parent.is_nil() {
                        (record, &model)
                    } else {
                        (parent, &parent_model)
                    };
                    let gone = lost_with(&needed)
                        && !reference
                            .iter()
                            .any(|x| x.id == needed && x.model == *needed_model);
                    *excused.entry(record).or_insert(true) &= gone;
                    which.push(if parent.is_nil() {
                        format!("{model}:{record} waits for nothing named")
                    } else {
                        format!("{model}:{record} waits for {parent_model} {parent}")
                    });
                }
                let unexcused = s.parked as usize
                    - excused
                        .values()
                        .filter(|e| **e)
                        .count()
                        .min(s.parked as usize);
                if unexcused > 0 {
                    return Ok(Some(format!(
                        "device {i} holds {} parked records, {unexcused} waiting for records that \
                         may still come ({})",
                        s.parked,
                        which.join(", ")
                    )));
                }
                self.parked_for_lost
                    .set(self.parked_for_lost.get().max(s.parked));
            }
            let (mine, first) = (e.vector(), self.engine(0)?.vector());
            if mine != first {
                let differ: Vec<String> = mine
                    .iter()
                    .chain(first.iter())
                    .filter(|(o, _)| mine.get(*o) != first.get(*o))
                    .map(|(o, _)| {
                        let everywhere: Vec<u64> = (0..n)
                            .filter_map(|j| self.engine(j).ok().map(|e| e.vector().get(o)))
                            .collect();
                        format!(
                            "{o}: {} here, {} on 0, by device {everywhere:?}",
                            mine.get(o),
                            first.get(o)
                        )
                    })
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                return Ok(Some(format!(
                    "device {i}'s vector differs from device 0's ({}); held back {:?}",
                    differ.join(", "),
                    s.peers
                        .iter()
                        .flat_map(|p| p.held_back.iter().map(|h| h.reason.clone()))
                        .collect::<Vec<_>>()
                )));
            }
            for (table, column, target) in [
                ("entries", "location_id", "locations"),
                ("entries", "parent_id", "entries"),
                ("entries", "user_metadata_id", "user_metadata"),
                ("locations", "volume_id", "volumes"),
                ("collection_entries", "collection_id", "collections"),
                ("collection_entries", "entry_id", "entries"),
                ("user_metadata_tags", "tag_id", "tags"),
                ("user_metadata_tags", "user_metadata_id", "user_metadata"),
            ] {
                let sql = format!(
                    "SELECT COUNT(*) AS n FROM {table} t WHERE t.{column} IS NOT NULL AND NOT \
                     EXISTS (SELECT 1 FROM {target} r WHERE r.id = t.{column})"
                );
                let row = e
                    .database()
                    .query_one_raw(sea_orm::Statement::from_string(
                        e.database().get_database_backend(),
                        sql,
                    ))
                    .await?;
                let dangling: i64 = row.map_or(Ok(0), |r| r.try_get("", "n"))?;
                if dangling > 0 {
                    return Ok(Some(format!(
                        "device {i}: {dangling} dangling {table}.{column} references"
                    )));
                }
            }
        }
        Ok(None)
    }
}

/// Lookups the workload needs on this device's own rows.
trait Own {
    async fn find_owned(
        db: &impl ConnectionTrait,
        device: Uuid,
    ) -> Result<Option<location::Model>, Error>;
}

impl Own for location::Entity {
    async fn find_owned(
        db: &impl ConnectionTrait,
        device: Uuid,
    ) -> Result<Option<location::Model>, Error> {
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
        Ok(location::Entity::find()
            .filter(location::Column::Device.eq(device))
            .one(db)
            .await?)
    }
}

trait OwnEntries {
    async fn any_of(db: &impl ConnectionTrait, device: Uuid) -> Result<Option<i64>, Error>;
    async fn gid_of_any(db: &impl ConnectionTrait, device: Uuid) -> Result<Option<Uuid>, Error>;
}

impl OwnEntries for entry::Entity {
    async fn any_of(db: &impl ConnectionTrait, device: Uuid) -> Result<Option<i64>, Error> {
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
        Ok(entry::Entity::find()
            .filter(entry::Column::Device.eq(device))
            .order_by_desc(entry::Column::Id)
            .one(db)
            .await?
            .map(|e| e.id))
    }
    async fn gid_of_any(db: &impl ConnectionTrait, device: Uuid) -> Result<Option<Uuid>, Error> {
        use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
        Ok(entry::Entity::find()
            .filter(entry::Column::Device.eq(device))
            .order_by_asc(entry::Column::Id)
            .one(db)
            .await?
            .map(|e| e.gid))
    }
}

fn topology(kind: &str, n: usize, rng: &mut StdRng) -> Result<BTreeSet<(usize, usize)>, Error> {
    let mut edges = BTreeSet::new();
    match kind {
        "mesh" => {
            for a in 0..n {
                for b in a + 1..n {
                    edges.insert((a, b));
                }
            }
        }
        "line" => {
            for a in 0..n - 1 {
                edges.insert((a, a + 1));
            }
        }
        "star" => {
            for b in 1..n {
                edges.insert((0, b));
            }
        }
        "sparse" => {
            for a in 0..n {
                edges.insert((a.min((a + 1) % n), a.max((a + 1) % n)));
            }
            for _ in 0..n / 2 {
                let (a, b) = (rng.random_range(0..n), rng.random_range(0..n));
                if a != b {
                    edges.insert((a.min(b), a.max(b)));
                }
            }
        }
        other => {
            return Err(format!("unknown topology {other:?}: mesh, line, star or sparse").into());
        }
    }
    Ok(edges)
}

struct Outcome {
    failure: Option<String>,
    report: String,
}

/// What a message carries about record `id`, for the trace.
fn mentions(m: &Message, id: Uuid) -> Vec<String> {
    let mut out = Vec::new();
    let change = |out: &mut Vec<String>, what: &str, bytes: &syncable::core::EncodedChange| {
        if let Ok(c) = bytes.decode()
            && (c.id == id || c.origin == id)
        {
            let op = format!("{:?}", c.op);
            out.push(format!(
                "{what}: {} seq {} at {} {} {} {}",
                c.origin,
                c.seq,
                c.hlc,
                c.model,
                c.id,
                &op[..op.len().min(12)]
            ));
        }
    };
    let batches = |out: &mut Vec<String>, what: &str, batches: &[syncable::core::Batch]| {
        for b in batches {
            if b.origin == id {
                out.push(format!(
                    "{what}: batch of {} after {} up to {} with {} changes",
                    b.origin,
                    b.after,
                    b.upto,
                    b.changes.len()
                ));
            }
            for c in &b.changes {
                change(out, what, c);
            }
        }
    };
    match m {
        Message::Push(p) => batches(&mut out, "push", &p.batches),
        Message::PullResponse(p) => batches(&mut out, "pull response", &p.batches),
        Message::SnapshotResponse(s) => {
            for row in &s.rows {
                match row {
                    syncable::core::SnapshotRow::Owned(c) => change(&mut out, "snapshot row", c),
                    syncable::core::SnapshotRow::Shared { id: r, .. } if *r == id => {
                        out.push("snapshot row (shared)".into())
                    }
                    _ => {}
                }
            }
            if s.next.is_none() {
                out.push(format!("last snapshot page, vector {:?}", s.vector));
            }
        }
        _ => {}
    }
    out
}

/// A message's kind, for the trace.
fn message_kind(m: &Message) -> String {
    let s = format!("{m:?}");
    s.split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or("?")
        .to_owned()
}

async fn run_seed(args: &Args, seed: u64) -> Result<Outcome, Error> {
    let n = args.devices;
    let dir = tempfile::tempdir()?;
    let mut rng = StdRng::seed_from_u64(seed);
    let kind = args.topology.clone().unwrap_or_else(|| {
        if n <= 12 {
            "mesh".into()
        } else {
            "sparse".into()
        }
    });
    let edges = topology(&kind, n, &mut rng)?;
    let faults: BTreeSet<String> = args.faults.iter().map(|f| f.trim().to_owned()).collect();
    let mut config = SessionConfig::new(Uuid::from_u128(0x5EED_5EED));
    if faults.contains("pages") {
        let small = rng.random_bool(0.5);
        config.pull_limit = if small { 3 } else { 500 };
        config.snapshot_limit = if small { 4 } else { 1_000 };
    }
    let joiners = if faults.contains("join") {
        (n / 5).max(1)
    } else {
        0
    };
    let mut sim = Sim {
        seed,
        rng,
        faults,
        dir: dir.path().to_owned(),
        devices: Vec::with_capacity(n),
        edges,
        cut: BTreeSet::new(),
        queue: Queue::default(),
        config,
        created: BTreeMap::new(),
        deleted: BTreeMap::new(),
        writes: 0,
        delivered: 0,
        dropped: 0,
        duplicated: 0,
        crashes: 0,
        partitions: 0,
        joins: 0,
        skews: 0,
        refused: 0,
        collected: 0,
        power_losses: 0,
        parked_for_lost: std::cell::Cell::new(0),
        lost: BTreeSet::new(),
        parents: BTreeMap::new(),
        trace: std::env::var("SIMULATE_TRACE").ok().and_then(|t| {
            let (model, id) = t.split_once(':')?;
            Some((model.to_owned(), id.parse().ok()?))
        }),
        traced: BTreeMap::new(),
        profile: std::env::var_os("SIMULATE_PROFILE").map(|_| BTreeMap::new()),
    };
    for i in 0..n {
        let skew = if sim.faults.contains("skew") {
            Duration::from_millis(sim.rng.random_range(0..2_000))
        } else {
            Duration::ZERO
        };
        let db = open_db(&sim.dir.join(format!("d{i}.sqlite"))).await?;
        sim.devices.push(Dev {
            n: i,
            db,
            time: ManualTime::new(EPOCH + skew),
            engine: None,
            sessions: BTreeMap::new(),
            commits: None,
            joined: i < n - joiners,
            backup: None,
            since_backup: Vec::new(),
            deleted_since_backup: Vec::new(),
            incarnation: 0,
        });
        sim.open(i).await?;
    }
    // The founding devices pair along the topology's edges.
    for &(a, b) in &sim.edges.clone() {
        if sim.devices[a].joined && sim.devices[b].joined {
            let (da, db) = (sim.engine(a)?.device(), sim.engine(b)?.device());
            sim.engine(a)?.pair(db).await?;
            sim.engine(b)?.pair(da).await?;
        }
    }
    for i in 0..n {
        sim.connect_neighbours(i).await?;
    }
    let t = Instant::now();
    for op in 0..args.ops {
        if sim.rng.random_bool(0.8) {
            if let Some(i) = sim.pick_up() {
                match sim.write(i).await {
                    Ok(()) => {}
                    // The application's own insert broke a unique key that
                    // this device already holds: refused locally, as the
                    // user would see it; nothing was written.
                    Err(e) if e.to_string().contains("UNIQUE constraint failed") => {
                        sim.refused += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
        } else {
            sim.fault(args.ops - op).await?;
        }
        let burst = sim.rng.random_range(0..(4 * n as u64).max(8));
        sim.run_queue(burst).await?;
    }
    let settled = sim.quiesce().await?;
    if !settled && std::env::var_os("SIMULATE_DEBUG").is_some() {
        for i in 0..n {
            let e = sim.engine(i)?;
            for p in e.status().peers {
                for h in &p.held_back {
                    let Some(j) =
                        (0..n).find(|&j| sim.engine(j).is_ok_and(|x| x.device() == p.peer))
                    else {
                        continue;
                    };
                    let req = e.pull_request(sim.config.pull_limit);
                    let resp =
                        syncable::core::__private::steps::serve_pull(sim.engine(j)?, &req).await?;
                    println!(
                        "device {i} holds back {:?} from {j}; {j} serves:",
                        (h.origin, h.seq, h.count)
                    );
                    if let Ok(r) = resp {
                        for b in &r.batches {
                            let husks: Vec<_> = b
                                .seals
                                .iter()
                                .flat_map(|s| {
                                    s.husks
                                        .iter()
                                        .map(|h| (h.seq, h.model.clone(), h.record, h.hlc))
                                })
                                .collect();
                            println!(
                                "  batch {} of device {} after {} upto {} changes {} husks {:?}",
                                b.origin,
                                b.device,
                                b.after,
                                b.upto,
                                b.changes.len(),
                                husks
                            );
                            for c in b.changes.iter().filter_map(|c| c.decode().ok()) {
                                println!(
                                    "    change {} {} {} by {} at {}",
                                    c.seq, c.model, c.id, c.device, c.hlc
                                );
                            }
                            for (_, model, rec, _) in husks {
                                let here =
                                    sim.engine(i)?.content().await?.iter().any(|r| r.id == rec);
                                let how = syncable::core::__private::steps::describe_record(
                                    sim.engine(i)?,
                                    &model,
                                    rec,
                                )
                                .await?;
                                let there = syncable::core::__private::steps::describe_record(
                                    sim.engine(j)?,
                                    &model,
                                    rec,
                                )
                                .await?;
                                println!(
                                    "    record {model} {rec}: in requester's content: {here}; \
                                     requester: {how}; server: {there}"
                                );
                            }
                        }
                        let report = syncable::core::__private::steps::apply_batches(
                            sim.engine(i)?,
                            r.batches.clone(),
                        )
                        .await?;
                        println!(
                            "  applied: {} applied, {} dup, held {:?}, rejected {:?}",
                            report.applied,
                            report.duplicates,
                            report
                                .held_back
                                .iter()
                                .map(|h| (h.seq, h.reason.to_string()))
                                .collect::<Vec<_>>(),
                            report
                                .rejected
                                .iter()
                                .map(|h| (h.seq, h.reason.to_string()))
                                .collect::<Vec<_>>()
                        );
                    }
                }
            }
        }
    }
    let failure = if settled {
        sim.check().await?
    } else {
        Some(match sim.check().await? {
            Some(f) => format!("did not converge: {f}"),
            None => "did not converge (vectors differ)".into(),
        })
    };
    let failure = match failure {
        None if sim.faults.contains("collect") => sim.collect_all().await?,
        f => f,
    };
    let failure = match failure {
        None => sim.pruned_all().await?,
        f => f,
    };
    let log: u64 = (0..n)
        .filter_map(|i| sim.engine(i).ok())
        .map(|e| e.status().log_len)
        .sum();
    let records: usize = sim.created.values().map(BTreeSet::len).sum();
    let deleted: usize = sim.deleted.values().map(BTreeSet::len).sum();
    let report = format!(
        "seed {seed}: {n} devices ({kind}), {} writes ({records} records created, {deleted} deleted, \
         {} refused locally by a unique key), \
         {} messages delivered, {} dropped, {} duplicated, {} partitions, {} crashes, {} power losses, {} clock jumps, \
         {} joins, {} tombstones collected; log entries left {log}{}; {:.1} s",
        sim.writes,
        sim.refused,
        sim.delivered,
        sim.dropped,
        sim.duplicated,
        sim.partitions,
        sim.crashes,
        sim.power_losses,
        sim.skews,
        sim.joins,
        sim.collected,
        if sim.parked_for_lost.get() > 0 {
            format!(
                "; parked for a record lost to power {}",
                sim.parked_for_lost.get()
            )
        } else {
            String::new()
        },
        t.elapsed().as_secs_f64()
    );
    for (kind, (n, time, bytes)) in sim.profile.iter().flatten() {
        eprintln!(
            "  {kind}: {n} delivered, {:.2} s handling, {:.1} MB",
            time.as_secs_f64(),
            *bytes as f64 / 1e6
        );
    }
    for d in &mut sim.devices {
        d.sessions.clear();
        d.engine = None;
    }
    Ok(Outcome { failure, report })
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    // RUST_LOG=sync_core=debug (or warn) prints the engine's own log.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    if !(3..=1_000).contains(&args.devices) {
        return Err("--devices: between 3 and 1,000".into());
    }
    let seeds = match (&args.seeds, args.seed) {
        (Some(r), None) => r.clone(),
        (None, Some(s)) => s..s + 1,
        (None, None) => 0..1,
        (Some(_), Some(_)) => return Err("--seeds or --seed, not both".into()),
    };
    let mut failed = Vec::new();
    for seed in seeds.clone() {
        let outcome = run_seed(&args, seed).await?;
        println!("{}", outcome.report);
        if let Some(f) = outcome.failure {
            println!("  FAILED: {f}");
            println!(
                "  replay: cargo run --release --example simulate -- --devices {} --seed {seed} --ops {} --faults {}{}",
                args.devices,
                args.ops,
                args.faults.join(","),
                args.topology
                    .as_ref()
                    .map_or(String::new(), |t| format!(" --topology {t}"))
            );
            failed.push(seed);
        }
    }
    println!(
        "{} of {} seeds passed; peak memory {:.0} MiB",
        seeds.end - seeds.start - failed.len() as u64,
        seeds.end - seeds.start,
        peak_rss_mib()
    );
    if !failed.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
