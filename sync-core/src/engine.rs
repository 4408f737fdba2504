//! The engine: one per device and database. It owns the clock and the
//! device's incarnation, serialises writes, and keeps in memory what status
//! and the receive path read on every message (the vector, counters, peers).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sea_orm::{
    DatabaseConnection, DatabaseTransaction, SqliteTransactionMode, TransactionOptions,
    TransactionTrait,
};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::change::Change;
use crate::clock::{Hlc, NTP64, SystemTime, TimeSource, Timestamp};
use crate::error::EngineError;
use crate::peers::PeerMemory;
use crate::project::TableInfo;
use crate::registry::Registry;
use crate::snapshot::Backfill;
use crate::store;
use crate::transaction::Commit;
use crate::trust::DeviceKey;
use crate::vector::{Received, VersionVector};

/// Frames (pages written) past which [`Engine::checkpoint`] truncates the
/// write-ahead log instead of only copying it: 8,192 frames, 32 MiB with
/// SQLite's 4 KiB pages.
pub const WAL_RESTART_FRAMES: i64 = 8192;

/// How an engine is opened (besides its database and key: see
/// [`Engine::open`]).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// How far ahead of this device's clock a received timestamp may be.
    pub max_drift: Duration,
    /// Where physical time comes from.
    pub time: Arc<dyn TimeSource>,
    /// The models to sync; `None`: every model in the program.
    pub registry: Option<Registry>,
    /// How long a write waits for the engine's writer (held by another
    /// write, or by an open [`SyncTransaction`](crate::SyncTransaction))
    /// before it fails with [`EngineError::Busy`].
    pub writer_timeout: Duration,
    /// What the incarnation to open as derives from; `None` (always,
    /// outside tests): a new random one. See `docs/architecture.md`.
    #[doc(hidden)]
    pub origin: Option<Uuid>,
    #[doc(hidden)]
    pub faults: crate::__private::Faults,
}

impl EngineConfig {
    /// Defaults: the system clock, a 60 s drift bound, every registered
    /// model, a 30 s writer timeout.
    pub fn new() -> Self {
        Self {
            max_drift: Duration::from_secs(60),
            time: Arc::new(SystemTime),
            registry: None,
            writer_timeout: Duration::from_secs(30),
            origin: None,
            faults: crate::__private::Faults::default(),
        }
    }

    /// Sets the drift bound.
    pub fn max_drift(mut self, bound: Duration) -> Self {
        self.max_drift = bound;
        self
    }

    /// Sets the time source.
    pub fn time(mut self, time: Arc<dyn TimeSource>) -> Self {
        self.time = time;
        self
    }

    /// Syncs only these models.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Injects faults (tests of atomicity).
    #[doc(hidden)]
    pub fn faults(mut self, faults: crate::__private::Faults) -> Self {
        self.faults = faults;
        self
    }

    /// Opens as this incarnation (deterministic simulations only: a real
    /// device must take a new random one each time).
    #[doc(hidden)]
    pub fn origin(mut self, origin: Uuid) -> Self {
        self.origin = Some(origin);
        self
    }

    /// Sets how long a write waits for the writer.
    pub fn writer_timeout(mut self, timeout: Duration) -> Self {
        self.writer_timeout = timeout;
        self
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// What the engine has done since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Changes written by this device.
    pub written: u64,
    /// Received changes that took effect.
    pub applied: u64,
    /// Received changes refused for good (malformed, not the owner).
    pub rejected: u64,
    /// Received changes held back for now (clock beyond the drift bound,
    /// model unknown here), each counted once.
    pub held_back: u64,
    /// Received changes whose record waits for another to be shown.
    pub parked: u64,
    /// Conflict log entries added.
    pub conflicts: u64,
    /// Received changes no seal proved to be their device's (forged,
    /// tampered with, from a device not or no longer in the library).
    pub unverified: u64,
    /// Claims ("everything of this origin up to n") from peers that their
    /// seals did not prove, so the vector did not follow them.
    pub claims_refused: u64,
    /// Hellos refused because they named another device than the one the
    /// transport authenticated.
    pub impersonations: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) written: AtomicU64,
    pub(crate) applied: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) held_back: AtomicU64,
    pub(crate) parked: AtomicU64,
    pub(crate) conflicts: AtomicU64,
    pub(crate) unverified: AtomicU64,
    pub(crate) claims_refused: AtomicU64,
    pub(crate) impersonations: AtomicU64,
}

/// What the engine keeps in memory, always equal to what is committed.
#[derive(Debug, Default)]
pub(crate) struct Memory {
    pub(crate) received: Received,
    /// What can no longer be served as changes: per origin, the floor up to
    /// which the log was pruned (or came as a snapshot's states), and the
    /// ranges above it pruned too.
    pub(crate) pruned: Received,
    /// Origin -> device.
    pub(crate) origins: HashMap<Uuid, Uuid>,
    /// The next change number of this incarnation.
    pub(crate) next_seq: u64,
    pub(crate) log_len: u64,
    pub(crate) waiting: u64,
    pub(crate) conflicts: u64,
    pub(crate) held_rows: u64,
    /// Per origin, the lowest number a held snapshot row carries: counted
    /// in the vector, not merged yet (see `collect::held_floors`).
    pub(crate) held_floors: BTreeMap<Uuid, u64>,
    /// The running backfill forgot records (`_sync_forgotten` holds some).
    pub(crate) forgotten: bool,
    /// Records stored per model.
    pub(crate) rows: BTreeMap<String, u64>,
    pub(crate) peers: BTreeMap<Uuid, PeerMemory>,
    pub(crate) backfill: Backfill,
    /// Changes held back for now, and why: each is counted once.
    pub(crate) held_back: BTreeMap<(Uuid, u64), String>,
    /// The library's membership.
    pub(crate) membership: crate::trust::members::Membership,
    pub(crate) last_prune_ms: u64,
    /// When the vector grew, for lag in seconds.
    pub(crate) growth: Growth,
    /// A resync remembers records to settle (see `collect`).
    pub(crate) resyncing: bool,
    /// What each member of the library is known to hold, as heartbeats
    /// relay it (see `collect`): never written, rebuilt after a restart.
    pub(crate) heard: BTreeMap<Uuid, crate::peers::Heard>,
    /// This device's own report to members: what it last reported held
    /// (and held back as snapshot rows) and since when (its stamp), so that
    /// the report changes only when what it holds does.
    pub(crate) own_report: Option<(u64, crate::vector::Received, BTreeMap<Uuid, u64>)>,
}

impl Memory {
    /// This device's vector grew (a commit, or changes received): notes
    /// when, for peers' lag in seconds.
    pub(crate) fn vector_grew(&mut self, now_ms: u64) {
        let total = VersionVector::new().behind(&self.received.vector);
        self.growth.note(total, now_ms);
    }
}

/// When this device's vector grew: marks of (changes held, since when),
/// so that a peer's lag in changes reads as the age of the oldest change
/// it lacks. Marks closer than [`Growth::GRAIN_MS`] merge; past
/// [`Growth::MARKS`], neighbours merge pairwise, keeping the earlier time,
/// so a lag is never under-reported.
#[derive(Debug, Default)]
pub(crate) struct Growth {
    marks: std::collections::VecDeque<(u64, u64)>,
}

impl Growth {
    const GRAIN_MS: u64 = 10;
    const MARKS: usize = 2048;

    pub(crate) fn note(&mut self, total: u64, now_ms: u64) {
        match self.marks.back_mut() {
            Some((t, since)) if now_ms.saturating_sub(*since) < Self::GRAIN_MS => {
                *t = (*t).max(total);
                return;
            }
            Some((t, _)) if *t >= total => return,
            _ => {}
        }
        self.marks.push_back((total, now_ms));
        if self.marks.len() > Self::MARKS {
            let old = std::mem::take(&mut self.marks);
            let mut pairs = old.into_iter();
            while let Some((t, since)) = pairs.next() {
                let t = pairs.next().map_or(t, |(t2, _)| t2);
                self.marks.push_back((t, since));
            }
        }
    }

    /// Since when this device has held more than `held` changes: the
    /// arrival of the oldest change a peer holding `held` of them lacks.
    pub(crate) fn since(&self, held: u64) -> Option<u64> {
        let i = self.marks.partition_point(|(t, _)| *t <= held);
        self.marks.get(i).map(|(_, since)| *since)
    }
}

pub(crate) struct Inner {
    pub(crate) db: DatabaseConnection,
    pub(crate) device: Uuid,
    pub(crate) key: DeviceKey,
    pub(crate) origin: Uuid,
    /// What `origin` derives from (see [`crate::trust::origin_of`]).
    pub(crate) nonce: Uuid,
    pub(crate) registry: Registry,
    pub(crate) tables: Vec<TableInfo>,
    pub(crate) clock: Mutex<Hlc>,
    pub(crate) time: Arc<dyn TimeSource>,
    pub(crate) writer: tokio::sync::Mutex<()>,
    pub(crate) writer_timeout: Duration,
    pub(crate) memory: Mutex<Memory>,
    pub(crate) faults: crate::__private::Faults,
    pub(crate) publisher: broadcast::Sender<Arc<Commit>>,
    pub(crate) applied: broadcast::Sender<Arc<[Change]>>,
    pub(crate) counters: Counters,
}

/// A device's sync engine over its SQLite database.
#[derive(Clone)]
pub struct Engine {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("device", &self.inner.device)
            .field("origin", &self.inner.origin)
            .finish_non_exhaustive()
    }
}

const META_DEVICE: &str = "device";
pub(crate) const META_CLOCK: &str = "clock";
const META_ORIGIN: &str = "origin";

/// The engine's write transaction: it holds the writer and began
/// `IMMEDIATE`, so it never meets another writer's lock.
pub(crate) struct WriteTx<'e> {
    pub(crate) tx: DatabaseTransaction,
    pub(crate) _writer: tokio::sync::MutexGuard<'e, ()>,
}

impl Engine {
    /// Opens the engine on `db` as the device whose key is `key` (its id is
    /// the key's, [`DeviceKey::device`]; a database remembers the device it
    /// was opened as): creates or checks the `_sync_*` tables, checks every
    /// synced model's table, starts a new incarnation of this device (see
    /// `docs/architecture.md`: change numbers are never reused, even after
    /// the database was rolled back or copied), and resumes the clock from
    /// its persisted value.
    pub async fn open(
        db: DatabaseConnection,
        key: DeviceKey,
        config: EngineConfig,
    ) -> Result<Self, EngineError> {
        let device = key.device();
        let registry = match config.registry {
            Some(registry) => registry,
            None => Registry::global()?,
        };
        let tx = db
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..TransactionOptions::default()
            })
            .await?;
        store::migrate(&tx).await?;
        match store::get_meta(&tx, META_DEVICE).await? {
            Some(bytes) => {
                let stored =
                    Uuid::from_slice(&bytes).map_err(|e| store::corrupt("_sync_meta", e))?;
                if stored != device {
                    return Err(EngineError::WrongDevice {
                        stored,
                        configured: device,
                    });
                }
            }
            None => store::set_meta(&tx, META_DEVICE, device.as_bytes().to_vec()).await?,
        }
        let (tables, problems) = crate::schema::inspect(&tx, &registry).await?;
        if !problems.is_empty() {
            return Err(EngineError::Schema(problems));
        }
        // A new incarnation: numbers and clock ids this device hands out
        // from now on can be no peer's already. It commits before any
        // write of it, and a rollback that loses it loses those writes too.
        let nonce = config.origin.unwrap_or_else(Uuid::new_v4);
        let origin = crate::trust::origin_of(device, nonce);
        store::set_meta(&tx, META_ORIGIN, origin.as_bytes().to_vec()).await?;
        let mut script = store::Script::default();
        store::save_origins(&mut script, &[(origin, device)]);
        script.run(&tx).await?;
        let last = store::get_meta_u64(&tx, META_CLOCK).await?;
        let received = store::load_received(&tx).await?;
        let pruned = store::load_pruned(&tx).await?;
        let origins = store::load_origins(&tx).await?;
        let log_len = store::log_len(&tx).await?;
        let waiting = store::count_waiting(&tx).await?;
        let conflicts = store::conflicts_len(&tx).await?;
        let rows = store::row_counts(&tx).await?;
        let held = store::held_rows(&tx).await?;
        let (held_rows, held_floors) = (held.len() as u64, crate::collect::held_floors(&held));
        let forgotten = !store::forgotten_records(&tx).await?.is_empty();
        let peers = store::load_peers(&tx).await?;
        let backfill = crate::snapshot::load_backfill(&tx).await?;
        let mut membership = crate::trust::members::Membership::default();
        membership.add(store::load_members(&tx).await?);
        membership.recompute(device, peers.iter().map(|p| p.peer));
        tx.commit().await?;
        let clock = Hlc::new(origin, NTP64(last), config.max_drift)?;
        let memory = Memory {
            received,
            pruned,
            origins,
            next_seq: 1,
            log_len,
            waiting,
            conflicts,
            held_rows,
            held_floors,
            forgotten,
            rows,
            peers: peers
                .into_iter()
                .map(|p| (p.peer, PeerMemory::from_record(p)))
                .collect(),
            backfill,
            held_back: BTreeMap::new(),
            membership,
            last_prune_ms: 0,
            growth: Growth::default(),
            resyncing: false,
            heard: BTreeMap::new(),
            own_report: None,
        };
        tracing::info!(%device, %origin, "engine opened");
        let engine = Self {
            inner: Arc::new(Inner {
                db,
                device,
                key,
                origin,
                nonce,
                registry,
                tables,
                clock: Mutex::new(clock),
                time: config.time,
                writer: tokio::sync::Mutex::new(()),
                writer_timeout: config.writer_timeout,
                memory: Mutex::new(memory),
                faults: config.faults,
                publisher: broadcast::channel(1024).0,
                applied: broadcast::channel(1024).0,
                counters: Counters::default(),
            }),
        };
        // What peers lack of the changes held at open is counted from now.
        let now = engine.now_ms();
        engine.memory().vector_grew(now);
        engine.resume_resync().await?;
        Ok(engine)
    }

    /// This device's id.
    pub fn device(&self) -> Uuid {
        self.inner.device
    }

    /// This incarnation of the device: the origin of the changes it writes
    /// from the moment the engine opened.
    pub fn origin(&self) -> Uuid {
        self.inner.origin
    }

    /// The database, for reads. A write through it bypasses sync: it is not
    /// captured, sent, or merged, and can make this device's tables differ
    /// from its peers' for good. Write synced models through
    /// [`begin`](Self::begin).
    pub fn database(&self) -> &DatabaseConnection {
        &self.inner.db
    }

    /// Copies what the write-ahead log holds into the database file without
    /// blocking writers or readers (`PRAGMA wal_checkpoint(PASSIVE)`), and
    /// returns the log's frames and how many were copied. SQLite otherwise
    /// checkpoints inside whichever commit crosses `wal_autocheckpoint`
    /// pages, and that commit pays an fsync of the database file: on a busy
    /// machine the slowest 1% of commits (and of changes applied from
    /// peers). Call it every second or so from a background task (the
    /// network node does) and open the database with
    /// `wal_autocheckpoint=0` to keep checkpoints off the commit path.
    ///
    /// A passive checkpoint never starts the log over while writes keep
    /// coming (SQLite restarts it only when a write begins with every frame
    /// copied and no reader in it), so under a sustained load, a backfill or
    /// a big indexing run, the log would grow without end: 6 GB during a
    /// million-entry backfill, with every page read searching its index and
    /// every frame appended to a growing file. When the log holds more than
    /// [`WAL_RESTART_FRAMES`] frames, this call therefore takes the writer
    /// and truncates it (`wal_checkpoint(TRUNCATE)`, which waits for the
    /// readers in it to finish): writes wait for that one checkpoint, and
    /// the log stays bounded.
    pub async fn checkpoint(&self) -> Result<(i64, i64), EngineError> {
        let (_, (frames, copied)) = self.wal_checkpoint("PASSIVE").await?;
        if frames <= WAL_RESTART_FRAMES {
            return Ok((frames, copied));
        }
        let Ok(_writer) =
            tokio::time::timeout(self.inner.writer_timeout, self.inner.writer.lock()).await
        else {
            // A write held the writer all along: the next call tries again.
            return Ok((frames, copied));
        };
        let (busy, after) = self.wal_checkpoint("TRUNCATE").await?;
        tracing::debug!(frames, busy, after = ?after, "the write-ahead log was truncated");
        metrics::counter!("syncable_wal_truncations_total").increment(1);
        Ok(after)
    }

    /// `PRAGMA wal_checkpoint(mode)`: whether it was kept from completing,
    /// the log's frames and how many of them were copied.
    async fn wal_checkpoint(&self, mode: &str) -> Result<(bool, (i64, i64)), EngineError> {
        use sea_orm::{ConnectionTrait, Statement};
        let row = self
            .inner
            .db
            .query_one_raw(Statement::from_string(
                self.inner.db.get_database_backend(),
                format!("PRAGMA wal_checkpoint({mode})"),
            ))
            .await?;
        Ok(row.map_or((false, (0, 0)), |r| {
            (
                r.try_get_by_index::<i64>(0).unwrap_or(0) != 0,
                (
                    r.try_get_by_index::<i64>(1).unwrap_or(0),
                    r.try_get_by_index::<i64>(2).unwrap_or(0),
                ),
            )
        }))
    }

    pub(crate) fn db(&self) -> &DatabaseConnection {
        &self.inner.db
    }

    /// The synced models.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Starts a write: inserts, updates and deletes of synced models through
    /// it commit together with their sync state, or not at all. It holds
    /// the engine's writer until it commits or is dropped; other writes
    /// wait (and fail with [`EngineError::Busy`] after the writer timeout).
    pub async fn begin(&self) -> Result<crate::transaction::SyncTransaction<'_>, EngineError> {
        crate::transaction::SyncTransaction::begin(self).await
    }

    /// Takes the writer and begins an `IMMEDIATE` transaction.
    pub(crate) async fn write_tx(&self) -> Result<WriteTx<'_>, EngineError> {
        let writer = tokio::time::timeout(self.inner.writer_timeout, self.inner.writer.lock())
            .await
            .map_err(|_| EngineError::Busy {
                waited: self.inner.writer_timeout,
            })?;
        let tx = self
            .inner
            .db
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..TransactionOptions::default()
            })
            .await?;
        Ok(WriteTx {
            tx,
            _writer: writer,
        })
    }

    /// This device's commits, as they commit, with their seals: what a
    /// transport pushes to peers ([`Commit::pushes`]). A subscriber that
    /// falls more than 1024 commits behind misses some (it is told so by the
    /// channel); catch-up from the log covers them.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Commit>> {
        self.inner.publisher.subscribe()
    }

    /// Changes received from peers, batch by batch, once they took effect
    /// and committed: what an application listens to in order to refresh
    /// what it shows. Lagging subscribers miss batches (the channel says
    /// so); the database has them all.
    pub fn subscribe_applied(&self) -> broadcast::Receiver<Arc<[Change]>> {
        self.inner.applied.subscribe()
    }

    pub(crate) fn publish(&self, commit: Commit) {
        if commit.changes.is_empty() {
            return;
        }
        let n = commit.changes.len() as u64;
        self.inner.counters.written.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("syncable_changes_written_total").increment(n);
        // No subscriber is not an error: the log keeps every change.
        if self.inner.publisher.receiver_count() > 0 {
            let _ = self.inner.publisher.send(Arc::new(commit));
        }
    }

    /// This device's key.
    pub(crate) fn key(&self) -> &DeviceKey {
        &self.inner.key
    }

    pub(crate) fn clock(&self) -> MutexGuard<'_, Hlc> {
        // A poisoned lock means a panic while ticking, which cannot leave the
        // clock inconsistent (it is one integer); keep going.
        self.inner
            .clock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn memory(&self) -> MutexGuard<'_, Memory> {
        self.inner
            .memory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new timestamp of this device's clock.
    pub(crate) fn tick(&self) -> Timestamp {
        let now = self.inner.time.now();
        self.clock().tick(now)
    }

    pub(crate) fn now(&self) -> NTP64 {
        self.inner.time.now()
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.inner.time.now().to_duration().as_millis() as u64
    }

    /// Counters since the engine was opened.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        Stats {
            written: c.written.load(Ordering::Relaxed),
            applied: c.applied.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            held_back: c.held_back.load(Ordering::Relaxed),
            parked: c.parked.load(Ordering::Relaxed),
            conflicts: c.conflicts.load(Ordering::Relaxed),
            unverified: c.unverified.load(Ordering::Relaxed),
            claims_refused: c.claims_refused.load(Ordering::Relaxed),
            impersonations: c.impersonations.load(Ordering::Relaxed),
        }
    }

    /// The latest time of this device's clock.
    pub fn clock_time(&self) -> NTP64 {
        self.clock().last()
    }

    /// This device's version vector: for every origin, the number up to
    /// which it holds everything.
    pub fn vector(&self) -> VersionVector {
        self.memory().received.vector.clone()
    }

    /// The device an origin is an incarnation of, if known here.
    pub fn device_of(&self, origin: Uuid) -> Option<Uuid> {
        self.memory().origins.get(&origin).copied()
    }
}

/// One synced row as the application's table shows it: see
/// [`Engine::content`].
#[derive(Debug, Clone, PartialEq)]
pub struct SyncedRow {
    /// The model's wire name.
    pub model: &'static str,
    /// The row's global id.
    pub id: Uuid,
    /// Its synced fields, references as global ids.
    pub fields: Vec<crate::model::FieldValue>,
}

impl Engine {
    /// Every synced row of the application's tables in wire form, model by
    /// model in dependency order and by global id within a model: two
    /// devices that have converged return equal contents, whatever their
    /// local keys.
    pub async fn content(&self) -> Result<Vec<SyncedRow>, EngineError> {
        use sea_orm::TransactionTrait;
        let registry = self.registry();
        let tx = self.db().begin().await?;
        let mut out = Vec::new();
        for desc in registry.models() {
            let meta = desc.meta();
            let mut rows = Vec::new();
            let mut after = i64::MIN;
            loop {
                let page = store::table_page(&tx, desc, after, 1_000).await?;
                let Some((last, _, _)) = page.last() else {
                    break;
                };
                after = *last;
                rows.extend(page);
            }
            // References: local keys to global ids, per target model.
            let mut keys: BTreeMap<&'static str, std::collections::BTreeSet<i64>> = BTreeMap::new();
            for r in meta.references() {
                for (_, _, values) in &rows {
                    if let Some(crate::value::WireValue::I64(Some(k))) = values.get(r.index) {
                        keys.entry(r.target).or_default().insert(*k);
                    }
                }
            }
            let mut gids: BTreeMap<&'static str, HashMap<i64, Uuid>> = BTreeMap::new();
            for (target, keys) in keys {
                if let Some(t) = registry.get(target) {
                    gids.insert(target, store::gids_of_keys(&tx, t, &keys).await?);
                }
            }
            let mut synced: Vec<SyncedRow> = rows
                .into_iter()
                .map(|(_, id, values)| SyncedRow {
                    model: meta.name,
                    id,
                    fields: meta
                        .fields
                        .iter()
                        .zip(values)
                        .map(|(f, v)| {
                            let v = match (f.role, v) {
                                (
                                    crate::model::FieldRole::Reference { target },
                                    crate::value::WireValue::I64(k),
                                ) => crate::value::WireValue::Uuid(
                                    k.and_then(|k| gids.get(target)?.get(&k).copied()),
                                ),
                                (_, v) => v,
                            };
                            crate::model::FieldValue::new(f.name, v)
                        })
                        .collect(),
                })
                .collect();
            synced.sort_by_key(|r| r.id);
            out.extend(synced);
        }
        tx.commit().await?;
        Ok(out)
    }
}

#[cfg(test)]
mod growth_tests {
    use super::Growth;

    #[test]
    fn the_oldest_change_a_peer_lacks_is_dated_and_never_too_late() {
        let mut g = Growth::default();
        g.note(0, 0);
        for i in 1..=10_000u64 {
            g.note(i, i * 100);
        }
        assert!(g.marks.len() <= Growth::MARKS);
        // A peer holding all: nothing to date.
        assert_eq!(g.since(10_000), None);
        // Exact where marks were not merged (the newest), earlier (never
        // later) where they were.
        assert_eq!(g.since(9_999), Some(1_000_000));
        for held in [0u64, 1, 17, 5_000, 9_000] {
            let since = g.since(held).unwrap();
            assert!(since <= (held + 1) * 100, "held {held}: {since}");
        }
        // Writes closer than the grain share one mark.
        let mut g = Growth::default();
        g.note(1, 1_000);
        g.note(2, 1_005);
        assert_eq!(g.since(1), Some(1_000));
        g.note(3, 2_000);
        assert_eq!(g.since(2), Some(2_000));
    }
}
