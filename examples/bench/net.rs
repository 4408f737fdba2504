//! The network sections: real nodes over loopback QUIC, each figure beside a
//! baseline from the same run (a raw quinn round trip of the same payload,
//! plain sea-orm writing the same rows).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait, PaginatorTrait, TransactionTrait};
use syncable::core::Phase;
use syncable::net::{Node, NodeConfig, PairingCode};
use uuid::Uuid;

use super::library::{self, entry, location, tag};
use super::{Args, Error};

/// Nodes of one library, in data directories under `root`.
struct Fleet {
    root: PathBuf,
    library: Uuid,
    nodes: Vec<Node>,
}

async fn start_node(dir: &Path, library: Uuid) -> Result<Node, Error> {
    start_node_with(dir, library, false).await
}

/// A node over the example app's database settings, with synchronous=FULL
/// instead of NORMAL when `full`.
async fn start_node_with(dir: &Path, library: Uuid, full: bool) -> Result<Node, Error> {
    use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
    std::fs::create_dir_all(dir)?;
    let url = format!("sqlite://{}?mode=rwc", dir.join("library.sqlite").display());
    let mut options = sea_orm::ConnectOptions::new(url);
    options
        .max_connections(4)
        .min_connections(1)
        .test_before_acquire(false)
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(move |o| {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(if full {
                    SqliteSynchronous::Full
                } else {
                    SqliteSynchronous::Normal
                })
                .pragma("wal_autocheckpoint", "0")
        });
    let db = sea_orm::Database::connect(options).await?;
    library::create_schema(&db).await?;
    let config = NodeConfig::new(library, "127.0.0.1:0".parse()?);
    Ok(Node::start(db, dir, config).await?)
}

/// Appends 100 bytes to a file and fsyncs it, `n` times, spaced like the
/// writes: what one fsync costs on this disk in this run.
fn fsyncs(dir: &Path, n: usize, spacing: Duration) -> Result<Vec<Duration>, Error> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("fsync-probe"))?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        file.write_all(&[7u8; 100])?;
        let t = Instant::now();
        file.sync_all()?;
        out.push(t.elapsed());
        std::thread::sleep(spacing);
    }
    Ok(out)
}

async fn pair(a: &Node, b: &Node) -> Result<(), Error> {
    let code = a.invite()?;
    b.accept(&code).await?;
    Ok(())
}

/// Polls `check` every millisecond until it holds (or two minutes passed).
async fn until<F, Fut>(what: &str, check: F) -> Result<Instant, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, Error>>,
{
    until_within(what, Duration::from_secs(120), check).await
}

/// Polls `check` every millisecond until it holds (or `limit` passed).
async fn until_within<F, Fut>(what: &str, limit: Duration, mut check: F) -> Result<Instant, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, Error>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await? {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(format!("never happened: {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

impl Fleet {
    /// `n` nodes, every pair of them paired, all connected and ready.
    async fn mesh(root: &Path, n: usize) -> Result<Self, Error> {
        Self::mesh_with(root, n, false).await
    }

    async fn mesh_with(root: &Path, n: usize, full: bool) -> Result<Self, Error> {
        let library = Uuid::new_v4();
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            nodes.push(start_node_with(&root.join(format!("n{i}")), library, full).await?);
        }
        for i in 0..n {
            for j in i + 1..n {
                pair(&nodes[i], &nodes[j]).await?;
            }
        }
        let fleet = Self {
            root: root.to_owned(),
            library,
            nodes,
        };
        until("the mesh connected", || async {
            for node in &fleet.nodes {
                if node.connected().len() + 1 < n || node.status().await?.phase != Phase::Ready {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .await?;
        Ok(fleet)
    }

    async fn shutdown(self) {
        for node in self.nodes {
            node.shutdown().await;
        }
    }
}

fn new_tag(i: usize, prefix: &str) -> tag::ActiveModel {
    tag::ActiveModel {
        gid: Set(Uuid::new_v4()),
        canonical_name: Set(format!("{prefix}-{i}")),
        display_name: Set(format!("{prefix} {i}")),
        namespace: Set(None),
        tag_type: Set("user".into()),
        color: Set(None),
        aliases: Set(None),
        ..Default::default()
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn print_latency(what: &str, ours: &mut [Duration], base: &mut [Duration]) {
    ours.sort();
    base.sort();
    let (p50, p99) = (percentile(ours, 0.5), percentile(ours, 0.99));
    let (b50, b99) = (percentile(base, 0.5), percentile(base, 0.99));
    println!(
        "{what:<44} {:>9.2} {:>9.2} {:>10} | {:>9.3} {:>9.3} {:>10} | {:>5.1}x",
        ms(p50),
        ms(p99),
        ours.len(),
        ms(b50),
        ms(b99),
        base.len(),
        p50.as_secs_f64() / b50.as_secs_f64().max(1e-9),
    );
}

/// Round trips of `size` bytes on one quinn stream over loopback, spaced as
/// the writes are: what the network alone costs in this run.
async fn quinn_round_trips(
    size: usize,
    n: usize,
    spacing: Duration,
) -> Result<Vec<Duration>, Error> {
    syncable::net::install_provider();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    let der = cert.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let server = quinn::Endpoint::server(
        quinn::ServerConfig::with_single_cert(vec![der.clone()], key)?,
        "127.0.0.1:0".parse()?,
    )?;
    let addr = server.local_addr()?;
    let echo = tokio::spawn(async move {
        let Some(incoming) = server.accept().await else {
            return;
        };
        let Ok(connection) = incoming.await else {
            return;
        };
        let Ok((mut send, mut recv)) = connection.accept_bi().await else {
            return;
        };
        let mut buf = vec![0u8; size];
        while recv.read_exact(&mut buf).await.is_ok() {
            if send.write_all(&buf).await.is_err() {
                return;
            }
        }
    });
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der)?;
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    client.set_default_client_config(quinn::ClientConfig::with_root_certificates(Arc::new(
        roots,
    ))?);
    let connection = client.connect(addr, "localhost")?.await?;
    let (mut send, mut recv) = connection.open_bi().await?;
    let mut buf = vec![7u8; size];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        send.write_all(&buf).await?;
        recv.read_exact(&mut buf).await?;
        out.push(t.elapsed());
        tokio::time::sleep(spacing).await;
    }
    connection.close(0u32.into(), b"done");
    echo.abort();
    Ok(out)
}

/// Per (receiver, change number): when it was applied there.
type Seen = Arc<Mutex<HashMap<(usize, u64), Instant>>>;

/// Records, per receiver, when each change of `origin` was applied there.
fn watch_applied(fleet: &Fleet, writer: usize) -> (Seen, Vec<tokio::task::JoinHandle<()>>) {
    let seen: Seen = Arc::default();
    let origin = fleet.nodes[writer].engine().origin();
    let mut tasks = Vec::new();
    for (i, node) in fleet.nodes.iter().enumerate() {
        if i == writer {
            continue;
        }
        let mut rx = node.engine().subscribe_applied();
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(batch) => {
                        let now = Instant::now();
                        if let Ok(mut seen) = seen.lock() {
                            for c in batch.iter().filter(|c| c.origin == origin) {
                                seen.entry((i, c.seq)).or_insert(now);
                            }
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                }
            }
        }));
    }
    (seen, tasks)
}

/// One write at a time on node 0, `spacing` apart: the time from its commit
/// to the moment the last other node applied it.
async fn latency(
    fleet: &Fleet,
    writes: usize,
    spacing: Duration,
) -> Result<(Vec<Duration>, Vec<Duration>, Vec<Duration>), Error> {
    let (seen, tasks) = watch_applied(fleet, 0);
    let others = fleet.nodes.len() - 1;
    let writer = &fleet.nodes[0];
    let mut started = Vec::with_capacity(writes);
    let mut commits = Vec::with_capacity(writes);
    for i in 0..writes {
        let mut tx = writer.engine().begin().await?;
        tx.insert(new_tag(i, &format!("lat{spacing:?}"))).await?;
        let t = Instant::now();
        let changes = tx.commit().await?;
        commits.push(t.elapsed());
        let seq = changes.last().map(|c| c.seq).ok_or("nothing committed")?;
        started.push((seq, t));
        tokio::time::sleep(spacing).await;
    }
    let last = started.last().map_or(0, |s| s.0);
    until("every write applied everywhere", || {
        let seen = seen.clone();
        async move {
            let seen = seen.lock().map_err(|_| "poisoned")?;
            Ok(seen.keys().filter(|(_, seq)| *seq == last).count() == others)
        }
    })
    .await?;
    for t in tasks {
        t.abort();
    }
    let seen = seen.lock().map_err(|_| "poisoned")?;
    let mut out = Vec::with_capacity(writes);
    let mut each = Vec::with_capacity(writes * others);
    for (seq, t) in started {
        let times: Vec<Instant> = (0..fleet.nodes.len())
            .filter_map(|i| seen.get(&(i, seq)).copied())
            .collect();
        each.extend(times.iter().map(|d| d.saturating_duration_since(t)));
        if let Some(done) = times.iter().max() {
            out.push(done.saturating_duration_since(t));
        }
    }
    commits.sort();
    Ok((out, each, commits))
}

fn bytes_per_push(fleet: &Fleet) -> (f64, f64) {
    let (mut bytes, mut pushes) = (0u64, 0u64);
    for node in &fleet.nodes {
        for s in node.link_stats().values() {
            bytes += s.bytes_sent;
            pushes += s.pushes_sent;
        }
    }
    (bytes as f64, pushes as f64)
}

fn latency_header(title: &str) {
    println!();
    println!("{title}");
    println!(
        "{:<44} {:>9} {:>9} {:>10} | {:>9} {:>9} {:>10} | {:>6}",
        "", "p50 ms", "p99 ms", "writes", "p50 ms", "p99 ms", "trips", "p50/p50"
    );
    println!(
        "{:<44} {:>31} | {:>31} |",
        "", "Syncable, commit to applied", "raw quinn round trip, same bytes"
    );
}

pub(crate) async fn latency_section(args: &Args, root: &Path) -> Result<(), Error> {
    latency_header("net: one write, commit to applied on every other device (loopback QUIC)");
    for (devices, spacing, writes) in [
        (2usize, Duration::from_millis(20), args.writes),
        (10, Duration::from_millis(20), args.writes),
        (10, Duration::from_millis(300), args.writes / 4),
    ] {
        let fleet = Fleet::mesh(
            &root.join(format!("mesh{devices}-{}", spacing.as_millis())),
            devices,
        )
        .await?;
        let (bytes0, pushes0) = bytes_per_push(&fleet);
        let (mut ours, mut each, commits) = latency(&fleet, writes.max(4), spacing).await?;
        let (bytes1, pushes1) = bytes_per_push(&fleet);
        let size = ((bytes1 - bytes0) / (pushes1 - pushes0).max(1.0)).max(64.0) as usize;
        let mut base = quinn_round_trips(size, writes.max(4), spacing).await?;
        print_latency(
            &format!(
                "{devices} devices, a write every {} ms",
                spacing.as_millis()
            ),
            &mut ours,
            &mut base,
        );
        each.sort();
        println!(
            "{:<44} {:>9.2} {:>9.2}   of which the writer's own commit",
            "",
            ms(percentile(&commits, 0.5)),
            ms(percentile(&commits, 0.99))
        );
        if devices > 2 {
            println!(
                "{:<44} {:>9.2} {:>9.2}   to any one of them",
                "",
                ms(percentile(&each, 0.5)),
                ms(percentile(&each, 0.99))
            );
        }
        println!(
            "{:<44} {:.1} pushes and {:.0} bytes sent by the fleet per write",
            "",
            (pushes1 - pushes0) / writes.max(4) as f64,
            (bytes1 - bytes0) / writes.max(4) as f64,
        );
        fleet.shutdown().await;
    }

    // The two durability modes between two devices, beside one fsync.
    println!();
    println!(
        "net: one write to 1 other device under synchronous=NORMAL and FULL, beside one fsync"
    );
    println!(
        "{:<44} {:>9} {:>9} {:>10} | {:>9} {:>9} {:>10} |",
        "", "p50 ms", "p99 ms", "writes", "p50 ms", "p99 ms", "fsyncs"
    );
    let spacing = Duration::from_millis(20);
    let n = args.writes.max(4);
    for full in [false, true] {
        let dir = root.join(if full { "mode-full" } else { "mode-normal" });
        let fleet = Fleet::mesh_with(&dir, 2, full).await?;
        let (mut ours, _, _) = latency(&fleet, n, spacing).await?;
        fleet.shutdown().await;
        let probe = dir.clone();
        let mut sync = tokio::task::spawn_blocking(move || fsyncs(&probe, n, spacing)).await??;
        ours.sort();
        sync.sort();
        println!(
            "{:<44} {:>9.2} {:>9.2} {:>10} | {:>9.3} {:>9.3} {:>10} |",
            if full {
                "synchronous=FULL"
            } else {
                "synchronous=NORMAL"
            },
            ms(percentile(&ours, 0.5)),
            ms(percentile(&ours, 0.99)),
            ours.len(),
            ms(percentile(&sync, 0.5)),
            ms(percentile(&sync, 0.99)),
            sync.len()
        );
    }
    Ok(())
}

async fn plain_tx(root: &Path, rows: usize) -> Result<Duration, Error> {
    let db = library::open_database(&root.join(format!("plain-{}.sqlite", Uuid::new_v4()))).await?;
    let t = Instant::now();
    let tx = db.begin().await?;
    for i in 0..rows {
        new_tag(i, "plain").insert(&tx).await?;
    }
    tx.commit().await?;
    Ok(t.elapsed())
}

fn two_header(title: &str) {
    println!();
    println!("{title}");
    println!(
        "{:<44} {:>9} {:>9} {:>10} | {:>9} {:>9} {:>10} |",
        "", "link ms", "total ms", "changes/s", "", "plain ms", "rows/s"
    );
    println!(
        "{:<44} {:>31} | {:>31} |",
        "", "Syncable, over QUIC", "plain sea-orm, same rows, local"
    );
}

pub(crate) async fn transfer_section(args: &Args, root: &Path) -> Result<(), Error> {
    two_header("net: a big transaction, and catch-up after a restart (2 devices)");
    let Fleet {
        root: fleet_root,
        library,
        mut nodes,
    } = Fleet::mesh(&root.join("tx"), 2).await?;
    let (Some(mut b), Some(a)) = (nodes.pop(), nodes.pop()) else {
        return Err("the fleet has two nodes".into());
    };
    let b_dir = fleet_root.join("n1");
    let n = args.tx_rows;
    let origin = a.engine().origin();
    // One transaction a repetition: a single sample swings by 2x on a
    // shared machine.
    let mut times = Vec::with_capacity(args.reps.max(1));
    for rep in 0..args.reps.max(1) {
        let mut tx = a.engine().begin().await?;
        for i in 0..n {
            tx.insert(new_tag(i, &format!("tx{rep}"))).await?;
        }
        let t = Instant::now();
        let changes = tx.commit().await?;
        let last = changes.last().map_or(0, |c| c.seq);
        let done = until("the transaction applied on b", || async {
            Ok(b.engine().vector().get(origin) >= last)
        })
        .await?;
        times.push(done - t);
    }
    times.sort();
    let took = times[times.len() / 2];
    let plain = plain_tx(root, n).await?;
    println!(
        "{:<44} {:>9} {:>9.2} {:>10.0} | {:>9} {:>9.2} {:>10.0} |",
        format!("a {n}-write transaction, commit to applied"),
        "",
        ms(took),
        n as f64 / took.as_secs_f64(),
        "",
        ms(plain),
        n as f64 / plain.as_secs_f64()
    );
    println!(
        "{:<44} median of {} runs; min {:.2} ms, max {:.2} ms",
        "",
        times.len(),
        ms(times[0]),
        ms(times[times.len() - 1])
    );

    for missed in [args.missed_net, args.missed_net_large] {
        if missed == 0 {
            continue;
        }
        // Stop b, write what it will miss, restart it.
        b.shutdown().await;
        drop(b);
        let mut last = 0;
        for chunk in 0..missed.div_ceil(5_000) {
            let mut tx = a.engine().begin().await?;
            for i in chunk * 5_000..((chunk + 1) * 5_000).min(missed) {
                tx.insert(new_tag(i, &format!("missed{missed}"))).await?;
            }
            last = tx.commit().await?.last().map_or(last, |c| c.seq);
        }
        let t = Instant::now();
        b = start_node(&b_dir, library).await?;
        let link = until("b's link is up", || async { Ok(!b.connected().is_empty()) }).await?;
        let done = until("b caught up", || async {
            Ok(b.engine().vector().get(origin) >= last)
        })
        .await?;
        let plain = plain_tx(root, missed).await?;
        let after = done - link;
        println!(
            "{:<44} {:>9.2} {:>9.2} {:>10.0} | {:>9} {:>9.2} {:>10.0} |",
            format!("restart, {missed} missed: link up, all applied"),
            ms(link - t),
            ms(done - t),
            missed as f64 / after.as_secs_f64().max(1e-9),
            "",
            ms(plain),
            missed as f64 / plain.as_secs_f64()
        );
        println!("{:<44} {:.2} ms from link up to all applied", "", ms(after));
    }
    a.shutdown().await;
    b.shutdown().await;
    Ok(())
}

/// Fields of this process's `/proc/self/status`, in KiB (0 if missing).
fn status_kib<const N: usize>(names: [&str; N]) -> [u64; N] {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    names.map(|name| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    })
}

/// The resident set's anonymous and file-backed parts (shared memory, such
/// as SQLite's WAL index, counted with the files).
fn resident_parts_kib() -> (u64, u64) {
    let [anon, file, shmem] = status_kib(["RssAnon:", "RssFile:", "RssShmem:"]);
    (anon, file + shmem)
}

/// Peak and current resident memory of this process, in KiB.
pub(crate) fn memory_kib() -> (u64, u64) {
    let [peak, now] = status_kib(["VmHWM:", "VmRSS:"]);
    (peak, now)
}

/// Writes `n` entries of one location on `node`, in transactions of 5,000.
async fn write_entries(node: &Node, n: usize) -> Result<(), Error> {
    let mut tx = node.engine().begin().await?;
    let loc = tx
        .insert(location::ActiveModel {
            gid: Set(Uuid::new_v4()),
            device: Set(node.device()),
            volume_id: Set(None),
            root_entry_id: Set(None),
            name: Set("bench".into()),
            path: Set("/bench".into()),
            index_mode: Set(location::IndexMode::Deep),
            total_file_count: Set(n as i64),
            total_byte_size: Set(0),
            scan_state: Set("done".into()),
            error_message: Set(None),
            ..Default::default()
        })
        .await?;
    tx.commit().await?;
    let now = chrono::Utc::now();
    for chunk in 0..n.div_ceil(5_000) {
        let mut tx = node.engine().begin().await?;
        for i in chunk * 5_000..((chunk + 1) * 5_000).min(n) {
            tx.insert(entry::ActiveModel {
                gid: Set(Uuid::new_v4()),
                device: Set(node.device()),
                location_id: Set(loc.id),
                parent_id: Set(None),
                user_metadata_id: Set(None),
                name: Set(format!("file-{i}")),
                kind: Set(entry::Kind::File),
                extension: Set(Some("jpg".into())),
                size: Set(i as i64),
                modified_at: Set(now),
                indexed_at: Set(None),
                ..Default::default()
            })
            .await?;
        }
        tx.commit().await?;
    }
    Ok(())
}

pub(crate) async fn backfill_section(args: &Args, root: &Path) -> Result<(), Error> {
    println!();
    println!("net: a new device backfills while two others write (child process, loopback QUIC)");
    for rows in [args.backfill, args.backfill_large] {
        if rows == 0 {
            continue;
        }
        let fleet = Fleet::mesh(&root.join(format!("backfill{rows}")), 2).await?;
        let t = Instant::now();
        write_entries(&fleet.nodes[0], rows).await?;
        let wrote = t.elapsed();
        // The two devices keep writing tags while the new one backfills.
        let writers: Vec<_> = fleet
            .nodes
            .iter()
            .map(|node| {
                let node = node.clone();
                tokio::spawn(async move {
                    let mut i = 0;
                    loop {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        let Ok(mut tx) = node.engine().begin().await else {
                            return;
                        };
                        if tx.insert(new_tag(i, "during")).await.is_err()
                            || tx.commit().await.is_err()
                        {
                            return;
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        let code = fleet.nodes[0].invite()?.encode()?;
        let mut child = std::process::Command::new(std::env::current_exe()?);
        child
            .arg("__backfill-child")
            .arg("--child-dir")
            .arg(root.join(format!("child{rows}")))
            .arg("--code")
            .arg(&code)
            .arg("--backfill")
            .arg(rows.to_string());
        let output = tokio::task::spawn_blocking(move || child.output()).await??;
        for w in writers {
            w.abort();
        }
        let text = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            return Err(format!(
                "the backfilling child failed: {text}{}",
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
        let field = |name: &str| -> f64 {
            text.split_whitespace()
                .skip_while(|w| *w != name)
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        };
        let secs = field("secs");
        println!(
            "{:<44} {:>9.0} rows/s ({rows} entries in {:.2} s; the writer wrote them at {:.0} rows/s)",
            format!("backfill {rows} entries"),
            rows as f64 / secs.max(1e-9),
            secs,
            rows as f64 / wrote.as_secs_f64()
        );
        println!(
            "{:<44} idle {:.1} MiB before pairing, peak {:.1} MiB during the backfill",
            "  new device's memory",
            field("idle_kib") / 1024.0,
            field("peak_kib") / 1024.0
        );
        println!(
            "{:<44} of which at most {:.1} MiB heap and stacks, {:.1} MiB mapped files",
            "",
            field("anon_kib") / 1024.0,
            field("file_kib") / 1024.0
        );
        fleet.shutdown().await;
    }
    Ok(())
}

/// The backfilling device, in its own process so that its memory is its
/// own: prints `secs S idle_kib I peak_kib P`.
pub(crate) async fn backfill_child(args: &Args) -> Result<(), Error> {
    let dir = args.child_dir.clone().ok_or("--child-dir")?;
    let code = PairingCode::decode(args.code.as_deref().ok_or("--code")?)?;
    let node = start_node(&dir, code.library).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, idle) = memory_kib();
    // Samples what the resident set is made of while the backfill runs:
    // heap and stacks (anonymous) apart from pages of mapped files.
    let parts = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let sampler = tokio::spawn({
        let parts = parts.clone();
        async move {
            loop {
                let (anon, file) = resident_parts_kib();
                parts.0.fetch_max(anon, Ordering::Relaxed);
                parts.1.fetch_max(file, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let t = Instant::now();
    node.accept(&code).await?;
    let expect = args.backfill as u64;
    // A minute per 60,000 rows beyond two: slow enough for a profiler.
    let limit = Duration::from_secs(120) + Duration::from_millis(args.backfill as u64);
    let done = until_within("the backfill completed", limit, || async {
        Ok(
            !matches!(node.status().await?.phase, Phase::Backfilling { .. })
                && entry::Entity::find()
                    .count(node.engine().database())
                    .await?
                    >= expect,
        )
    })
    .await?;
    let (peak, _) = memory_kib();
    sampler.abort();
    println!(
        "secs {} idle_kib {idle} peak_kib {peak} anon_kib {} file_kib {}",
        (done - t).as_secs_f64(),
        parts.0.load(Ordering::Relaxed),
        parts.1.load(Ordering::Relaxed),
    );
    node.shutdown().await;
    Ok(())
}
