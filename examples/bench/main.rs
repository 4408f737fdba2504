//! Benchmarks of the engine against plain sea-orm on the same rows, in the
//! same run, on the same machine: only the ratios are stable on a shared
//! machine, so every figure is printed beside its baseline.
//!
//! ```sh
//! cargo run --release --example bench                 # every section
//! cargo run --release --example bench -- write apply  # some of them
//! cargo run --release --example bench -- --synchronous normal --reps 7
//! ```
//!
//! Sections: `write` (local writes: batched, one-row transactions, updates),
//! `apply` (received shared inserts and one-field updates), `trust` (the
//! same inserts signed by their origin and verified on receipt, beside the
//! trusted apply), `catchup` (a device that missed changes catches up
//! through the protocol, in memory), `collect` (a tombstone collection pass
//! over the inserts' records, 1% of them deleted, beside a plain read of
//! them). Over loopback QUIC, with real nodes on
//! a two-worker runtime: `latency` (one write to 2 and 10 devices, beside a
//! raw quinn round trip of the same bytes), `transfer` (a 1,000-write
//! transaction; a restarted device catching up 1,000 and 100,000 missed
//! changes), `backfill` (a new device, in a child process, backfills 100,000
//! entries while two others write: rows/s, idle and peak memory).
//! `net` names the three network sections. Databases are SQLite files in WAL
//! mode, on disk; the network sections use the example app's settings
//! (synchronous=NORMAL).

#[path = "../library/mod.rs"]
mod library;
mod net;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use library::tag;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ConnectOptions, ConnectionTrait, Database,
    DatabaseConnection, EntityTrait, IntoActiveModel, TransactionTrait,
};
use syncable::core::{
    Change, DeviceKey, Engine, EngineConfig, Message, Session, SessionConfig, SyncModel,
};
use uuid::Uuid;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser, Debug)]
#[command(about = "Syncable against plain sea-orm, same rows, same run")]
struct Args {
    /// Sections to run: write, apply, trust, catchup, collect, latency,
    /// transfer, backfill, net (all when none is named).
    sections: Vec<String>,
    /// Repetitions of each measurement (min and median are printed).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// SQLite synchronous mode: full or normal.
    #[arg(long, default_value = "full")]
    synchronous: String,
    /// Rows in a batched write.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// One-row transactions in a run.
    #[arg(long, default_value_t = 200)]
    single: usize,
    /// Received inserts in the apply section.
    #[arg(long, default_value_t = 10_000)]
    inserts: usize,
    /// Received one-field updates in the apply section.
    #[arg(long, default_value_t = 1_000)]
    updates: usize,
    /// Missed changes in the catch-up section.
    #[arg(long, default_value_t = 1_000)]
    missed: usize,
    /// Writes timed in each latency run (net section).
    #[arg(long, default_value_t = 200)]
    writes: usize,
    /// Writes of the big transaction (net section).
    #[arg(long, default_value_t = 1_000)]
    tx_rows: usize,
    /// Changes a restarted node missed (net section).
    #[arg(long, default_value_t = 1_000)]
    missed_net: usize,
    /// A second, larger catch-up after a restart (0: skip).
    #[arg(long, default_value_t = 100_000)]
    missed_net_large: usize,
    /// Entries a new device backfills (backfill section).
    #[arg(long, default_value_t = 100_000)]
    backfill: usize,
    /// A second, larger backfill (0: skip; 1000000 for the big one).
    #[arg(long, default_value_t = 0)]
    backfill_large: usize,
    /// Skip the plain sea-orm baselines of the apply section (to profile
    /// Syncable's own work with nothing else in the process).
    #[arg(long)]
    no_baseline: bool,
    #[arg(long, hide = true)]
    child_dir: Option<PathBuf>,
    #[arg(long, hide = true)]
    code: Option<String>,
}

async fn open(path: &Path, synchronous: &str) -> Result<DatabaseConnection, Error> {
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut options = ConnectOptions::new(url);
    options
        .max_connections(1)
        .test_before_acquire(false)
        .sqlx_logging(false);
    let db = Database::connect(options).await?;
    db.execute_unprepared(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={synchronous};"
    ))
    .await?;
    library::create_schema(&db).await?;
    Ok(db)
}

fn new_tag(i: usize) -> tag::ActiveModel {
    tag::ActiveModel {
        gid: Set(Uuid::new_v4()),
        canonical_name: Set(format!("tag-{i}")),
        display_name: Set(format!("Tag {i}")),
        namespace: Set(Some("bench".into())),
        tag_type: Set("user".into()),
        color: Set(None),
        aliases: Set(None),
        ..Default::default()
    }
}

/// `row` as plain sea-orm inserts it: every column set, the local key left
/// to SQLite.
fn insertable(row: &tag::Model) -> tag::ActiveModel {
    let mut am = row.clone().into_active_model();
    am.id = sea_orm::ActiveValue::NotSet;
    for c in [
        tag::Column::Gid,
        tag::Column::CanonicalName,
        tag::Column::DisplayName,
        tag::Column::Namespace,
        tag::Column::TagType,
        tag::Column::Color,
        tag::Column::Aliases,
    ] {
        am.reset(c);
    }
    am
}

/// Min and median of a measurement.
#[derive(Clone, Copy)]
struct Figure {
    min: Duration,
    median: Duration,
}

async fn measure<F, Fut>(reps: usize, mut run: F) -> Result<Figure, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Duration, Error>>,
{
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        times.push(run().await?);
    }
    times.sort();
    Ok(Figure {
        min: times[0],
        median: times[times.len() / 2],
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn row(what: &str, n: usize, ours: Figure, base: Figure) {
    let per_sec = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "{what:<44} {:>9.2} {:>9.2} {:>10.0} | {:>9.2} {:>9.2} {:>10.0} | {:>5.2}x",
        ms(ours.min),
        ms(ours.median),
        per_sec(ours.median),
        ms(base.min),
        ms(base.median),
        per_sec(base.median),
        ours.median.as_secs_f64() / base.median.as_secs_f64(),
    );
}

/// A figure printed without its baseline (`--no-baseline`).
fn row_alone(what: &str, n: usize, ours: Figure) {
    println!(
        "{what:<44} {:>9.2} {:>9.2} {:>10.0} | (baseline skipped)",
        ms(ours.min),
        ms(ours.median),
        n as f64 / ours.median.as_secs_f64(),
    );
}

fn header(title: &str, unit: &str) {
    println!();
    println!("{title}");
    println!(
        "{:<44} {:>9} {:>9} {:>10} | {:>9} {:>9} {:>10} | {:>6}",
        "", "min ms", "med ms", unit, "min ms", "med ms", unit, "ratio"
    );
    println!(
        "{:<44} {:>31} | {:>31} |",
        "", "Syncable", "plain sea-orm, same rows"
    );
}

async fn write_section(args: &Args) -> Result<(), Error> {
    header("write: local writes through the engine", "rows/s");
    let n = args.batch;
    let ours = measure(args.reps, || async {
        let engine = fresh_engine().await?;
        let t = Instant::now();
        let mut tx = engine.begin().await?;
        for i in 0..n {
            tx.insert(new_tag(i)).await?;
        }
        tx.commit().await?;
        Ok(t.elapsed())
    });
    let ours = ours.await?;
    let base = measure(args.reps, || async {
        let db = plain().await?;
        let t = Instant::now();
        let tx = db.begin().await?;
        for i in 0..n {
            new_tag(i).insert(&tx).await?;
        }
        tx.commit().await?;
        Ok(t.elapsed())
    })
    .await?;
    row(&format!("insert {n} rows, one transaction"), n, ours, base);

    let n = args.single;
    let ours = measure(args.reps, || async {
        let engine = fresh_engine().await?;
        let t = Instant::now();
        for i in 0..n {
            let mut tx = engine.begin().await?;
            tx.insert(new_tag(i)).await?;
            tx.commit().await?;
        }
        Ok(t.elapsed())
    })
    .await?;
    let base = measure(args.reps, || async {
        let db = plain().await?;
        let t = Instant::now();
        for i in 0..n {
            let tx = db.begin().await?;
            new_tag(i).insert(&tx).await?;
            tx.commit().await?;
        }
        Ok(t.elapsed())
    })
    .await?;
    row(
        &format!("insert {n} rows, a transaction each"),
        n,
        ours,
        base,
    );

    let n = args.batch;
    let ours = measure(args.reps, || async {
        let engine = fresh_engine().await?;
        let mut tx = engine.begin().await?;
        let mut rows = Vec::with_capacity(n);
        for i in 0..n {
            rows.push(tx.insert(new_tag(i)).await?);
        }
        tx.commit().await?;
        let t = Instant::now();
        let mut tx = engine.begin().await?;
        for mut r in rows {
            r.color = Some("red".into());
            tx.update(r).await?;
        }
        tx.commit().await?;
        Ok(t.elapsed())
    })
    .await?;
    let base = measure(args.reps, || async {
        let db = plain().await?;
        let tx = db.begin().await?;
        let mut rows = Vec::with_capacity(n);
        for i in 0..n {
            rows.push(new_tag(i).insert(&tx).await?);
        }
        tx.commit().await?;
        let t = Instant::now();
        let tx = db.begin().await?;
        for r in rows {
            let mut am = r.into_active_model();
            am.color = Set(Some("red".into()));
            am.update(&tx).await?;
        }
        tx.commit().await?;
        Ok(t.elapsed())
    })
    .await?;
    row(
        &format!("update one field of {n} rows (update), one tx"),
        n,
        ours,
        base,
    );
    let fields = measure(args.reps, || async {
        let engine = fresh_engine().await?;
        let mut tx = engine.begin().await?;
        let mut rows = Vec::with_capacity(n);
        for i in 0..n {
            rows.push(tx.insert(new_tag(i)).await?);
        }
        tx.commit().await?;
        let t = Instant::now();
        let mut tx = engine.begin().await?;
        for r in rows {
            tx.update_fields(tag::ActiveModel {
                id: Set(r.id),
                color: Set(Some("red".into())),
                ..Default::default()
            })
            .await?;
        }
        tx.commit().await?;
        Ok(t.elapsed())
    })
    .await?;
    row(
        &format!("update one field of {n} rows (update_fields)"),
        n,
        fields,
        base,
    );
    Ok(())
}

thread_local! {
    static SYNCHRONOUS: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    static SCRATCH: std::cell::RefCell<Option<PathBuf>> = const { std::cell::RefCell::new(None) };
}

fn scratch() -> PathBuf {
    SCRATCH.with(|s| s.borrow().clone().unwrap_or_else(std::env::temp_dir))
}

async fn plain() -> Result<DatabaseConnection, Error> {
    let path = scratch().join(format!("{}.sqlite", Uuid::new_v4()));
    open(&path, &SYNCHRONOUS.with(|s| s.borrow().clone())).await
}

async fn fresh_engine() -> Result<Engine, Error> {
    let path = scratch().join(format!("{}.sqlite", Uuid::new_v4()));
    let db = open(&path, &SYNCHRONOUS.with(|s| s.borrow().clone())).await?;
    let (key, _) = DeviceKey::generate()?;
    Ok(Engine::open(db, key, EngineConfig::new()).await?)
}

/// `n` tag creations written by a fresh engine, as changes.
async fn created(n: usize) -> Result<(Vec<tag::Model>, Vec<Change>), Error> {
    let source = fresh_engine().await?;
    let mut tx = source.begin().await?;
    let mut rows = Vec::with_capacity(n);
    for i in 0..n {
        rows.push(tx.insert(new_tag(i)).await?);
    }
    let changes = tx.commit().await?;
    Ok((rows, changes))
}

/// `n` tag creations written by `source`, as changes.
async fn created_by(source: &Engine, n: usize) -> Result<Vec<Change>, Error> {
    let mut tx = source.begin().await?;
    for i in 0..n {
        tx.insert(new_tag(i)).await?;
    }
    Ok(tx.commit().await?)
}

/// A tombstone collection pass over a library of `inserts` shared records,
/// 1% of them deleted and none old enough to drop: the pass a node makes
/// every minute, beside a plain sea-orm read of the same table, for scale:
/// the pass reads the deleted records only, however many live ones there
/// are.
async fn collect_section(args: &Args) -> Result<(), Error> {
    header(
        "collect: one tombstone collection pass, 1% deleted",
        "records/s",
    );
    let n = args.inserts;
    let engine = fresh_engine().await?;
    let created = created_by(&engine, n).await?;
    let mut tx = engine.begin().await?;
    for change in created.iter().step_by(100) {
        tx.delete::<tag::Model>(change.id).await?;
    }
    tx.commit().await?;
    // Ten years: every tombstone here is younger, so none is dropped and
    // every pass does the same work.
    let horizon = Duration::from_secs(10 * 365 * 24 * 3600);
    let ours = measure(args.reps, || {
        let engine = &engine;
        async move {
            let t = Instant::now();
            let collected = engine.collect_tombstones(horizon).await?;
            if collected.shared + collected.owned > 0 {
                return Err("a young tombstone was collected".into());
            }
            Ok(t.elapsed())
        }
    })
    .await?;
    let what = format!("{n} records, {} deleted", n.div_ceil(100));
    if args.no_baseline {
        row_alone(&what, n, ours);
        return Ok(());
    }
    let base = measure(args.reps, || {
        let engine = &engine;
        async move {
            let t = Instant::now();
            let rows = tag::Entity::find().all(engine.database()).await?;
            if rows.len() + n.div_ceil(100) != n {
                return Err(format!("read {} tags", rows.len()).into());
            }
            Ok(t.elapsed())
        }
    })
    .await?;
    row(&what, n, ours, base);
    Ok(())
}

async fn trust_section(args: &Args) -> Result<(), Error> {
    use syncable::core::__private::steps;
    println!();
    println!("trust: received inserts signed by their origin, checked on receipt");
    println!(
        "{:<44} {:>9} {:>9} {:>10} | {:>9} {:>9} {:>10} | {:>6}",
        "", "min ms", "med ms", "changes/s", "min ms", "med ms", "changes/s", "ratio"
    );
    println!(
        "{:<44} {:>31} | {:>31} |",
        "", "sealed, verified, applied", "trusted apply, same changes"
    );
    let n = args.inserts;
    let source = fresh_engine().await?;
    let changes = created_by(&source, n).await?;
    let batch = 1_000.min(n);
    let signed = measure(args.reps, || {
        let changes = changes.clone();
        let source = &source;
        async move {
            let target = fresh_engine().await?;
            target.pair(source.device()).await?;
            let t = Instant::now();
            for chunk in changes.chunks(batch) {
                let sealed = steps::sealed_batch(source, chunk)?;
                let report = steps::apply_batches(&target, vec![sealed]).await?;
                if report.applied != chunk.len() as u64 {
                    return Err(format!("applied {} of {}", report.applied, chunk.len()).into());
                }
            }
            Ok(t.elapsed())
        }
    })
    .await?;
    let trusted = measure(args.reps, || {
        let changes = changes.clone();
        async move {
            let target = fresh_engine().await?;
            let t = Instant::now();
            for chunk in changes.chunks(batch) {
                target.apply(chunk.to_vec()).await?;
            }
            Ok(t.elapsed())
        }
    })
    .await?;
    row(
        &format!("{n} inserts, batches of {batch}"),
        n,
        signed,
        trusted,
    );
    // Signing alone, as the origin pays it per commit.
    let sign = measure(args.reps, || {
        let changes = changes.clone();
        let source = &source;
        async move {
            let t = Instant::now();
            for chunk in changes.chunks(batch) {
                steps::sealed_batch(source, chunk)?;
            }
            Ok(t.elapsed())
        }
    })
    .await?;
    println!(
        "{:<44} {:>9.2} {:>9.2} {:>10.0} |",
        "  of which encoding, hashing, signing",
        ms(sign.min),
        ms(sign.median),
        n as f64 / sign.median.as_secs_f64()
    );
    Ok(())
}

async fn apply_section(args: &Args) -> Result<(), Error> {
    header("apply: received shared changes", "changes/s");
    let n = args.inserts;
    let (rows, changes) = created(n).await?;
    for batch in [1_000usize, n] {
        let batch = batch.min(n);
        let ours = measure(args.reps, || {
            let changes = changes.clone();
            async move {
                let target = fresh_engine().await?;
                // The batches are cut before the clock starts: copying them
                // is the bench's work, not the engine's.
                let batches: Vec<Vec<Change>> = changes.chunks(batch).map(<[_]>::to_vec).collect();
                let t = Instant::now();
                for chunk in batches {
                    let len = chunk.len() as u64;
                    let report = target.apply(chunk).await?;
                    if report.applied != len {
                        return Err(format!("applied {} of {len}", report.applied).into());
                    }
                }
                Ok(t.elapsed())
            }
        })
        .await?;
        if args.no_baseline {
            row_alone(&format!("{n} inserts, batches of {batch}"), n, ours);
            continue;
        }
        let base = measure(args.reps, || {
            let rows = rows.clone();
            async move {
                let db = plain().await?;
                let t = Instant::now();
                for chunk in rows.chunks(batch) {
                    let tx = db.begin().await?;
                    for r in chunk {
                        insertable(r).insert(&tx).await?;
                    }
                    tx.commit().await?;
                }
                Ok(t.elapsed())
            }
        })
        .await?;
        row(&format!("{n} inserts, batches of {batch}"), n, ours, base);
        // The fastest plain sea-orm: multi-row INSERTs of 500 rows.
        let bulk = measure(args.reps, || {
            let rows = rows.clone();
            async move {
                let db = plain().await?;
                let t = Instant::now();
                for chunk in rows.chunks(batch) {
                    let tx = db.begin().await?;
                    for part in chunk.chunks(500) {
                        tag::Entity::insert_many(part.iter().map(insertable))
                            .exec(&tx)
                            .await?;
                    }
                    tx.commit().await?;
                }
                Ok(t.elapsed())
            }
        })
        .await?;
        row("  the same, plain insert_many of 500 rows", n, ours, bulk);
        // What any receiver that keeps what this engine keeps must write: per
        // change, the row, a state row (keyed by model and record) and a log
        // entry (keyed by origin and number) holding the change's bytes,
        // each table in plain multi-row INSERTs of 500 rows. Syncable's
        // ratio to this is its own overhead; the rest is storage.
        let encoded: Vec<(Uuid, Uuid, u64, Vec<u8>)> = changes
            .iter()
            .map(|c| Ok((c.id, c.origin, c.seq, c.encode()?.as_bytes().to_vec())))
            .collect::<Result<_, Error>>()?;
        let floor = measure(args.reps, || {
            let (rows, encoded) = (rows.clone(), encoded.clone());
            async move {
                let db = plain().await?;
                db.execute_unprepared(
                    "CREATE TABLE plain_state (model TEXT NOT NULL, record BLOB NOT NULL, \
                       presence INTEGER NOT NULL, local_key INTEGER, state BLOB NOT NULL, \
                       UNIQUE (model, record));
                     CREATE TABLE plain_log (origin BLOB NOT NULL, seq INTEGER NOT NULL, \
                       change BLOB NOT NULL, UNIQUE (origin, seq));",
                )
                .await?;
                let t = Instant::now();
                for (chunk, side) in rows.chunks(batch).zip(encoded.chunks(batch)) {
                    let tx = db.begin().await?;
                    for part in chunk.chunks(500) {
                        tag::Entity::insert_many(part.iter().map(insertable))
                            .exec(&tx)
                            .await?;
                    }
                    for part in side.chunks(500) {
                        let mut states = Vec::with_capacity(part.len() * 5);
                        let mut log = Vec::with_capacity(part.len() * 3);
                        for (i, (id, origin, seq, bytes)) in part.iter().enumerate() {
                            states.extend([
                                sea_orm::Value::from("tags"),
                                id.as_bytes().to_vec().into(),
                                1i64.into(),
                                (i as i64).into(),
                                bytes.clone().into(),
                            ]);
                            log.extend([
                                sea_orm::Value::from(origin.as_bytes().to_vec()),
                                (*seq as i64).into(),
                                bytes.clone().into(),
                            ]);
                        }
                        let rows_of = |width: usize| {
                            vec![format!("({})", vec!["?"; width].join(", ")); part.len()]
                                .join(", ")
                        };
                        tx.execute_raw(sea_orm::Statement::from_sql_and_values(
                            sea_orm::DbBackend::Sqlite,
                            format!(
                                "INSERT INTO plain_state (model, record, presence, local_key, \
                                 state) VALUES {}",
                                rows_of(5)
                            ),
                            states,
                        ))
                        .await?;
                        tx.execute_raw(sea_orm::Statement::from_sql_and_values(
                            sea_orm::DbBackend::Sqlite,
                            format!(
                                "INSERT INTO plain_log (origin, seq, change) VALUES {}",
                                rows_of(3)
                            ),
                            log,
                        ))
                        .await?;
                    }
                    tx.commit().await?;
                }
                Ok(t.elapsed())
            }
        })
        .await?;
        row(
            "  the same, plus a state and a log row, plain",
            n,
            ours,
            floor,
        );
    }

    let n = args.updates;
    let (rows, created_changes) = created(n).await?;
    // The updates, written by a device that holds the rows.
    let writer = fresh_engine().await?;
    writer.apply(created_changes.clone()).await?;
    let mut tx = writer.begin().await?;
    for r in &rows {
        let mut r = tag::Model::find_by_id(tx.connection(), r.gid)
            .await?
            .ok_or("row missing")?;
        r.color = Some("blue".into());
        tx.update(r).await?;
    }
    let updates = tx.commit().await?;
    let ours = measure(args.reps, || {
        let (created_changes, updates) = (created_changes.clone(), updates.clone());
        async move {
            let target = fresh_engine().await?;
            target.apply(created_changes).await?;
            let len = updates.len() as u64;
            let t = Instant::now();
            let report = target.apply(updates).await?;
            let took = t.elapsed();
            if report.applied != len {
                return Err(format!("applied {} of {len}", report.applied).into());
            }
            Ok(took)
        }
    })
    .await?;
    if args.no_baseline {
        row_alone(&format!("{n} one-field updates, one batch"), n, ours);
        return Ok(());
    }
    let base = measure(args.reps, || {
        let rows = rows.clone();
        async move {
            let db = plain().await?;
            let tx = db.begin().await?;
            let mut stored = Vec::with_capacity(rows.len());
            for r in &rows {
                let mut am = r.clone().into_active_model();
                am.id = sea_orm::ActiveValue::NotSet;
                am.gid = Set(r.gid);
                am.canonical_name = Set(r.canonical_name.clone());
                am.display_name = Set(r.display_name.clone());
                am.namespace = Set(r.namespace.clone());
                am.tag_type = Set(r.tag_type.clone());
                am.color = Set(r.color.clone());
                am.aliases = Set(r.aliases.clone());
                stored.push(am.insert(&tx).await?);
            }
            tx.commit().await?;
            let t = Instant::now();
            let tx = db.begin().await?;
            for r in stored {
                let mut am = r.into_active_model();
                am.color = Set(Some("blue".into()));
                am.update(&tx).await?;
            }
            tx.commit().await?;
            Ok(t.elapsed())
        }
    })
    .await?;
    row(&format!("{n} one-field updates, one batch"), n, ours, base);
    Ok(())
}

/// Runs two sessions against each other in memory until nothing is left
/// to say; returns the messages exchanged.
async fn converse(a: &mut Session, b: &mut Session) -> Result<usize, Error> {
    let mut to_b: Vec<Message> = a.start().await?;
    let mut to_a: Vec<Message> = b.start().await?;
    let mut messages = 0;
    while !to_a.is_empty() || !to_b.is_empty() {
        let mut next_a = Vec::new();
        let mut next_b = Vec::new();
        for m in to_b.drain(..) {
            messages += 1;
            let bytes = syncable::core::encode(&m)?;
            next_a.extend(b.handle(syncable::core::decode(&bytes)?).await?.send);
        }
        for m in to_a.drain(..) {
            messages += 1;
            let bytes = syncable::core::encode(&m)?;
            next_b.extend(a.handle(syncable::core::decode(&bytes)?).await?.send);
        }
        to_a = next_a;
        to_b = next_b;
    }
    Ok(messages)
}

async fn catchup_section(args: &Args) -> Result<(), Error> {
    header(
        "catchup: a device that missed changes, in memory",
        "changes/s",
    );
    let n = args.missed;
    let library = Uuid::from_u128(1);
    let ours = measure(args.reps, || async {
        let a = fresh_engine().await?;
        let b = fresh_engine().await?;
        a.pair(b.device()).await?;
        b.pair(a.device()).await?;
        a.skip_backfill().await?;
        b.skip_backfill().await?;
        let mut tx = a.begin().await?;
        for i in 0..n {
            tx.insert(new_tag(i)).await?;
        }
        tx.commit().await?;
        let mut sa = Session::new(a.clone(), SessionConfig::new(library));
        let mut sb = Session::new(b.clone(), SessionConfig::new(library));
        let t = Instant::now();
        converse(&mut sa, &mut sb).await?;
        let took = t.elapsed();
        if b.vector().get(a.origin()) != n as u64 {
            return Err("the catch-up did not complete".into());
        }
        Ok(took)
    })
    .await?;
    let base = measure(args.reps, || async {
        let db = plain().await?;
        let t = Instant::now();
        let tx = db.begin().await?;
        for i in 0..n {
            new_tag(i).insert(&tx).await?;
        }
        tx.commit().await?;
        Ok(t.elapsed())
    })
    .await?;
    row(&format!("catch up {n} missed inserts"), n, ours, base);
    Ok(())
}

fn main() -> Result<(), Error> {
    let args = Args::parse();
    // RUST_LOG=sync_core=debug prints the receive path's phase timings.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let net_runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    };
    if args.sections.iter().any(|s| s == "__backfill-child") {
        return net_runtime()?.block_on(net::backfill_child(&args));
    }
    let dir = tempfile::tempdir()?;
    SYNCHRONOUS.with(|s| *s.borrow_mut() = args.synchronous.to_uppercase());
    SCRATCH.with(|s| *s.borrow_mut() = Some(dir.path().to_owned()));
    let all = args.sections.is_empty();
    let wants = |s: &str| {
        all || args
            .sections
            .iter()
            .any(|x| x == s || (x == "net" && ["latency", "transfer", "backfill"].contains(&s)))
    };
    println!(
        "Syncable bench: SQLite WAL, synchronous={}, {} repetitions, files in {}",
        args.synchronous.to_uppercase(),
        args.reps,
        dir.path().display()
    );
    let local = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    local.block_on(async {
        if wants("write") {
            write_section(&args).await?;
        }
        if wants("apply") {
            apply_section(&args).await?;
        }
        if wants("trust") {
            trust_section(&args).await?;
        }
        if wants("catchup") {
            catchup_section(&args).await?;
        }
        if wants("collect") {
            collect_section(&args).await?;
        }
        Ok::<_, Error>(())
    })?;
    drop(local);
    let net = net_runtime()?;
    let root = dir.path().join("net");
    net.block_on(async {
        if wants("latency") {
            net::latency_section(&args, &root).await?;
        }
        if wants("transfer") {
            net::transfer_section(&args, &root).await?;
        }
        if wants("backfill") {
            net::backfill_section(&args, &root).await?;
        }
        Ok::<_, Error>(())
    })?;
    drop(net);
    drop(dir);
    Ok(())
}
