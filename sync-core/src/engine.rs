//! The engine: one per device and database. It owns the clock, serialises
//! writes, applies received changes, and publishes committed ones.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sea_orm::{DatabaseConnection, TransactionTrait};
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::apply::{Applier, ApplyReport, RejectReason, Rejection};
use crate::catchup::{Claim, claim_reach};
use crate::change::Change;
use crate::clock::{Hlc, NTP64, SystemTime, TimeSource, Timestamp};
use crate::conflict::Conflict;
use crate::error::EngineError;
use crate::registry::Registry;
use crate::store;
use crate::transaction::SyncTransaction;

/// One synced row as it would travel: see [`Engine::content`].
#[derive(Debug, Clone, PartialEq)]
pub struct SyncedRow {
    /// The model's wire name.
    pub model: &'static str,
    /// The row's global id.
    pub id: Uuid,
    /// Its synced fields.
    pub fields: Vec<crate::model::FieldValue>,
}

/// How an engine is opened.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// This device's id. A database remembers the device it was opened as.
    pub device: Uuid,
    /// How far ahead of this device's clock a received timestamp may be.
    pub max_drift: Duration,
    /// Where physical time comes from.
    pub time: Arc<dyn TimeSource>,
    /// The models to sync; `None`: every model in the program.
    pub registry: Option<Registry>,
    /// Faults to inject, for tests of atomicity.
    pub faults: Faults,
}

impl EngineConfig {
    /// Defaults for `device`: the system clock, a 60 s drift bound, every
    /// registered model.
    pub fn new(device: Uuid) -> Self {
        Self {
            device,
            max_drift: Duration::from_secs(60),
            time: Arc::new(SystemTime),
            registry: None,
            faults: Faults::default(),
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

    /// Injects faults.
    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }
}

/// Places where a test can make the engine fail, to prove that a failure
/// there leaves nothing half-written.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Fail a commit after the rows are written, before the log is.
    pub fail_before_log_write: Arc<std::sync::atomic::AtomicBool>,
}

/// What the engine has done since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Changes written by this device.
    pub written: u64,
    /// Received changes that took effect.
    pub applied: u64,
    /// Received changes refused (unknown model, malformed, not the owner).
    pub rejected: u64,
    /// Received changes refused because their clock was beyond the drift
    /// bound.
    pub clock_refused: u64,
    /// Received changes parked to wait for a record.
    pub parked: u64,
    /// Conflict log entries added.
    pub conflicts: u64,
}

#[derive(Default)]
struct Counters {
    written: AtomicU64,
    applied: AtomicU64,
    rejected: AtomicU64,
    clock_refused: AtomicU64,
    parked: AtomicU64,
    conflicts: AtomicU64,
}

pub(crate) struct Inner {
    pub(crate) db: DatabaseConnection,
    pub(crate) device: Uuid,
    pub(crate) registry: Registry,
    pub(crate) clock: Mutex<Hlc>,
    pub(crate) time: Arc<dyn TimeSource>,
    pub(crate) writer: tokio::sync::Mutex<()>,
    pub(crate) faults: Faults,
    publisher: broadcast::Sender<Arc<[Change]>>,
    counters: Counters,
    pub(crate) live: Mutex<std::collections::BTreeMap<Uuid, crate::peers::LivePeer>>,
    pub(crate) last_prune_ms: Mutex<u64>,
    applied: broadcast::Sender<Arc<[Change]>>,
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
            .finish_non_exhaustive()
    }
}

const META_DEVICE: &str = "device";
pub(crate) const META_CLOCK: &str = "clock";
pub(crate) const META_NEXT_SEQ: &str = "next_seq";

impl Engine {
    /// Opens the engine on `db`: creates or upgrades the `_sync_*` tables,
    /// and resumes the clock from its persisted value.
    pub async fn open(db: DatabaseConnection, config: EngineConfig) -> Result<Self, EngineError> {
        let registry = match config.registry {
            Some(registry) => registry,
            None => Registry::global()?,
        };
        let tx = db.begin().await?;
        store::migrate(&tx).await?;
        match store::get_meta(&tx, META_DEVICE).await? {
            Some(bytes) => {
                let stored = Uuid::from_slice(&bytes).map_err(|e| store::StoreError::Corrupt {
                    table: "_sync_meta",
                    reason: e.to_string(),
                })?;
                if stored != config.device {
                    return Err(EngineError::WrongDevice {
                        stored,
                        configured: config.device,
                    });
                }
            }
            None => store::set_meta(&tx, META_DEVICE, config.device.as_bytes().to_vec()).await?,
        }
        let last = store::get_meta_u64(&tx, META_CLOCK).await?;
        tx.commit().await?;
        let clock = Hlc::new(config.device, NTP64(last), config.max_drift)?;
        let (publisher, _) = broadcast::channel(1024);
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                device: config.device,
                registry,
                clock: Mutex::new(clock),
                time: config.time,
                writer: tokio::sync::Mutex::new(()),
                faults: config.faults,
                publisher,
                counters: Counters::default(),
                live: Mutex::new(std::collections::BTreeMap::new()),
                last_prune_ms: Mutex::new(0),
                applied: broadcast::channel(1024).0,
            }),
        })
    }

    /// This device's id.
    pub fn device(&self) -> Uuid {
        self.inner.device
    }

    /// The database.
    pub fn db(&self) -> &DatabaseConnection {
        &self.inner.db
    }

    /// The synced models.
    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Starts a write: inserts, updates and deletes of synced models through
    /// it commit together with their sync state, or not at all.
    pub async fn begin(&self) -> Result<SyncTransaction<'_>, EngineError> {
        SyncTransaction::begin(self).await
    }

    /// Committed changes of this device, batch by batch, as they commit. A
    /// subscriber that falls more than 1024 batches behind misses some (it
    /// is told so by the channel); catch-up from the log covers them.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<[Change]>> {
        self.inner.publisher.subscribe()
    }

    /// Changes received from peers, batch by batch, once they are applied
    /// and committed: what an application listens to in order to refresh
    /// what it shows. Lagging subscribers miss batches (the channel says
    /// so); the database has them all.
    pub fn subscribe_applied(&self) -> broadcast::Receiver<Arc<[Change]>> {
        self.inner.applied.subscribe()
    }

    pub(crate) fn publish(&self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let n = changes.len() as u64;
        self.inner.counters.written.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("syncable_changes_written_total").increment(n);
        // No subscriber is not an error: the log keeps every change.
        let _ = self.inner.publisher.send(changes.into());
    }

    pub(crate) fn clock(&self) -> MutexGuard<'_, Hlc> {
        // A poisoned lock means a panic while ticking, which cannot leave the
        // clock inconsistent (it is one integer); keep going.
        self.inner
            .clock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new timestamp of this device's clock.
    pub(crate) fn tick(&self) -> Timestamp {
        let now = self.inner.time.now();
        self.clock().tick(now)
    }

    /// Applies changes received from peers, in one transaction: merged per
    /// field (shared) or by owner version (device-owned), parents before
    /// children, waiting (durably) for parents that have not arrived.
    /// Applying the same changes again changes nothing. A change is refused,
    /// and reported, when its clock is too far ahead, its model unknown, its
    /// record malformed, or it changes a device-owned row it does not own.
    pub async fn apply(&self, changes: Vec<Change>) -> Result<ApplyReport, EngineError> {
        self.apply_claimed(changes, &[]).await
    }

    /// Applies changes as [`apply`](Self::apply) does, and in the same
    /// transaction advances this device's version vector by the senders'
    /// claims, never past a change that was refused.
    #[tracing::instrument(skip_all, fields(device = %self.inner.device, changes = changes.len()))]
    pub async fn apply_claimed(
        &self,
        changes: Vec<Change>,
        claims: &[Claim],
    ) -> Result<ApplyReport, EngineError> {
        // Wall time only for the histogram; nothing the engine decides
        // depends on it.
        let started = std::time::Instant::now();
        let received = changes.len() as u64;
        metrics::counter!("syncable_changes_received_total").increment(received);
        let _writer = self.inner.writer.lock().await;
        let mut accepted = Vec::with_capacity(changes.len());
        let mut refused = Vec::new();
        {
            let now = self.inner.time.now();
            let mut clock = self.clock();
            for change in changes {
                match clock.observe(&change.hlc, now) {
                    Ok(()) => accepted.push(change),
                    Err(e) => refused.push(Rejection {
                        origin: change.origin,
                        seq: change.seq,
                        model: change.model,
                        reason: RejectReason::ClockAhead(e.to_string()),
                    }),
                }
            }
        }
        if !refused.is_empty() {
            tracing::warn!(
                count = refused.len(),
                "changes refused: clock beyond the drift bound"
            );
            metrics::counter!("syncable_clock_refused_total").increment(refused.len() as u64);
        }
        let tx = self.inner.db.begin().await?;
        let mut applier = Applier::new(&self.inner.registry, &tx, self.inner.device);
        applier.apply_all(accepted).await?;
        let renames = std::mem::take(&mut applier.renames);
        let applied = std::mem::take(&mut applier.applied);
        let mut report = applier.report;
        let emitted = self.write_renames(&tx, renames).await?;
        report.rejected.extend(refused);
        if !claims.is_empty() {
            let vector = store::load_vector(&tx).await?;
            for claim in claims {
                if claim.origin == self.inner.device || vector.get(claim.origin) < claim.after {
                    continue;
                }
                let reach = claim_reach(claim, &report.rejected);
                if reach > vector.get(claim.origin) {
                    store::advance_vector(&tx, claim.origin, reach).await?;
                }
            }
        }
        let last = self.clock().last();
        store::set_meta_u64(&tx, META_CLOCK, last.0).await?;
        tx.commit().await?;
        self.publish(emitted);
        if !applied.is_empty() {
            // Nobody listening is fine: the database has every change.
            let _ = self.inner.applied.send(applied.into());
        }

        let c = &self.inner.counters;
        let clock_refused = report
            .rejected
            .iter()
            .filter(|r| matches!(r.reason, RejectReason::ClockAhead(_)))
            .count() as u64;
        c.clock_refused.fetch_add(clock_refused, Ordering::Relaxed);
        c.applied.fetch_add(report.applied, Ordering::Relaxed);
        c.rejected.fetch_add(
            report.rejected.len() as u64 - clock_refused,
            Ordering::Relaxed,
        );
        c.parked.fetch_add(report.parked, Ordering::Relaxed);
        c.conflicts.fetch_add(report.conflicts, Ordering::Relaxed);
        metrics::counter!("syncable_changes_applied_total").increment(report.applied);
        metrics::counter!("syncable_changes_parked_total").increment(report.parked);
        metrics::histogram!("syncable_apply_seconds").record(started.elapsed().as_secs_f64());
        if let Ok(len) = store::log_len(&self.inner.db).await {
            metrics::gauge!("syncable_log_entries").set(len as f64);
        }
        Ok(report)
    }

    /// Writes the renames that unique collisions forced, as this device's
    /// own changes, in the apply's transaction.
    async fn write_renames(
        &self,
        tx: &sea_orm::DatabaseTransaction,
        renames: Vec<crate::apply::Rename>,
    ) -> Result<Vec<Change>, EngineError> {
        if renames.is_empty() {
            return Ok(Vec::new());
        }
        let mut next_seq = store::get_meta_u64(tx, META_NEXT_SEQ).await?.max(1);
        let mut changes = Vec::with_capacity(renames.len());
        for rename in renames {
            let mut state = store::load_row(tx, rename.model, rename.id)
                .await?
                .unwrap_or_default();
            if state.deleted {
                continue;
            }
            // A later write in the same batch may have moved the field on
            // (settling the collision its own way): then there is nothing to
            // rename.
            let current = match self.inner.registry.get(rename.model) {
                Some(desc) => desc.capture(tx, rename.id).await?.unwrap_or_default(),
                None => continue,
            };
            if !current
                .iter()
                .any(|f| f.name == rename.field && f.value == rename.value)
            {
                continue;
            }
            let hlc = self.tick();
            let field = crate::change::FieldChange {
                base: state.clocks.get(&rename.field).map(|c| c.hlc),
                name: rename.field,
                value: rename.value,
            };
            state.clocks.insert(
                field.name.clone(),
                store::FieldClock {
                    hlc,
                    base: field.base,
                },
            );
            store::save_row(tx, rename.model, rename.id, &state).await?;
            changes.push(Change {
                origin: self.inner.device,
                seq: next_seq,
                hlc,
                model: rename.model.to_owned(),
                id: rename.id,
                op: crate::change::Op::Upsert(vec![field]),
            });
            next_seq += 1;
        }
        let refs: Vec<&Change> = changes.iter().collect();
        store::append_log(tx, &refs).await?;
        store::set_meta_u64(tx, META_NEXT_SEQ, next_seq).await?;
        if next_seq > 1 {
            store::advance_vector(tx, self.inner.device, next_seq - 1).await?;
        }
        Ok(changes)
    }

    pub(crate) fn count_conflicts(&self, n: u64) {
        self.inner
            .counters
            .conflicts
            .fetch_add(n, Ordering::Relaxed);
    }

    /// Counters since the engine was opened.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        Stats {
            written: c.written.load(Ordering::Relaxed),
            applied: c.applied.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            clock_refused: c.clock_refused.load(Ordering::Relaxed),
            parked: c.parked.load(Ordering::Relaxed),
            conflicts: c.conflicts.load(Ordering::Relaxed),
        }
    }

    /// The conflict log, oldest first.
    pub async fn conflicts(&self) -> Result<Vec<Conflict>, EngineError> {
        Ok(store::conflicts(&self.inner.db).await?)
    }

    /// The shared changes in the log, by origin and number.
    pub async fn log(&self) -> Result<Vec<Change>, EngineError> {
        Ok(store::log_entries(&self.inner.db).await?)
    }

    /// How many changes wait for a record that has not arrived.
    pub async fn parked_len(&self) -> Result<u64, EngineError> {
        Ok(store::parked_len(&self.inner.db).await?)
    }

    /// How many changes the log holds.
    pub async fn log_len(&self) -> Result<u64, EngineError> {
        Ok(store::log_len(&self.inner.db).await?)
    }

    /// How many conflicts the conflict log holds.
    pub async fn conflicts_len(&self) -> Result<u64, EngineError> {
        Ok(store::conflicts_len(&self.inner.db).await?)
    }

    /// Every synced row in wire form, model by model in dependency order and
    /// by global id within a model: two devices that have converged return
    /// equal contents, whatever their local keys.
    pub async fn content(&self) -> Result<Vec<SyncedRow>, EngineError> {
        let tx = self.inner.db.begin().await?;
        let mut out = Vec::new();
        for desc in self.inner.registry.models() {
            let mut rows = Vec::new();
            let mut after = i64::MIN;
            loop {
                let page = desc.page(&tx, after, 1_000).await?;
                let Some((last, _, _)) = page.last() else {
                    break;
                };
                after = *last;
                rows.extend(page.into_iter().map(|(_, id, fields)| SyncedRow {
                    model: desc.name(),
                    id,
                    fields,
                }));
            }
            rows.sort_by_key(|r| r.id);
            out.extend(rows);
        }
        tx.commit().await?;
        Ok(out)
    }

    /// The latest time of this device's clock.
    pub fn clock_time(&self) -> NTP64 {
        self.clock().last()
    }
}
