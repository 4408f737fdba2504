//! The one-command showcase: devices syncing a file library over QUIC on
//! loopback.
//!
//! Three devices start, each with its own SQLite file, and pair. Each indexes
//! a real directory tree into entries (its own files), then all three create
//! and edit tags, collections and metadata at once, and delete some. One
//! device goes offline while the others write, and comes back. A fourth device
//! joins and backfills. The run ends with a table (per device and model: row
//! count and content hash) and the figures measured on the way, and exits 0
//! only if every device holds the same library.
//!
//! `cargo run --release --example demo -- --help` lists the knobs.
#![allow(unreachable_pub)]

#[path = "library/mod.rs"]
mod library;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use library::{collection, collection_entry, device, entry, tag, user_metadata, user_metadata_tag};
use sea_orm::{ActiveValue::Set, EntityTrait, PaginatorTrait, QueryOrder};
use syncable::core::Phase;
use syncable::net::{Node, NodeConfig};
use uuid::Uuid;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser, Debug)]
#[command(about = "Devices syncing a file library over QUIC on loopback")]
struct Args {
    /// Keep the devices' databases and identities here (default: a
    /// temporary directory, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Directories to index, one per device (default: this project's own
    /// crates).
    #[arg(long = "index")]
    index: Vec<PathBuf>,
    /// Tags each device creates.
    #[arg(long, default_value_t = 30)]
    tags: usize,
    /// Rounds of concurrent edits.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Changes written while one device is offline.
    #[arg(long, default_value_t = 200)]
    offline_writes: usize,
    /// Samples of commit-to-visible latency.
    #[arg(long, default_value_t = 50)]
    samples: usize,
}

const LIBRARY: Uuid = Uuid::from_u128(0x5_1b_2a_77);

async fn start_device(root: &Path, name: &str) -> Result<Node, Error> {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir)?;
    let db = library::open_database(&dir.join("library.sqlite")).await?;
    let mut config = NodeConfig::new(LIBRARY, "127.0.0.1:0".parse()?);
    config.heartbeat = Duration::from_millis(500);
    config.anti_entropy = Duration::from_secs(2);
    config.snapshot_limit = 500;
    Ok(Node::start(db, &dir, config).await?)
}

async fn pair(a: &Node, b: &Node) -> Result<(), Error> {
    let code = a.invite()?.encode()?;
    b.accept(&syncable::net::PairingCode::decode(&code)?)
        .await?;
    Ok(())
}

fn bar(multi: &MultiProgress, len: u64, label: &str) -> ProgressBar {
    let pb = multi.add(ProgressBar::new(len));
    pb.set_style(
        ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_prefix(label.to_owned());
    pb
}

async fn all_equal(nodes: &[&Node]) -> Result<bool, Error> {
    let first = nodes[0].engine().content().await?;
    for n in &nodes[1..] {
        if n.engine().content().await? != first {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn wait_converged(nodes: &[&Node], limit: Duration) -> Result<Duration, Error> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if all_equal(nodes).await? {
            return Ok(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err("devices did not converge in time".into())
}

async fn register_device(node: &Node, name: &str) -> Result<(), Error> {
    let mut tx = node.engine().begin().await?;
    tx.insert(device::ActiveModel {
        gid: Set(node.device()),
        name: Set(name.into()),
        slug: Set(name.to_lowercase()),
        os: Set(std::env::consts::OS.into()),
        os_version: Set(None),
        addresses: Set(serde_json::json!([node.addr()?.to_string()])),
        is_online: Set(true),
        last_seen_at: Set(chrono::Utc::now()),
        sync_enabled: Set(true),
        ..Default::default()
    })
    .await?;
    tx.commit().await?;
    Ok(())
}

/// One device's share of the concurrent edits: tags, a collection with some
/// of its own entries, metadata on entries, and edits of everyone's tags.
async fn edit_library(node: &Node, name: &str, tags: usize, rounds: usize) -> Result<(), Error> {
    let engine = node.engine();
    let mut tx = engine.begin().await?;
    let mut my_tags = Vec::new();
    for i in 0..tags {
        my_tags.push(
            tx.insert(tag::ActiveModel {
                gid: Set(Uuid::new_v4()),
                canonical_name: Set(format!("{name}-{i}")),
                display_name: Set(format!("{name} #{i}")),
                namespace: Set(None),
                tag_type: Set("user".into()),
                color: Set(None),
                aliases: Set(None),
                ..Default::default()
            })
            .await?,
        );
    }
    let coll = tx
        .insert(collection::ActiveModel {
            gid: Set(Uuid::new_v4()),
            name: Set(format!("{name}'s picks")),
            description: Set(None),
            ..Default::default()
        })
        .await?;
    let mine: Vec<entry::Model> = entry::Entity::find()
        .order_by_asc(entry::Column::Id)
        .all(tx.connection())
        .await?
        .into_iter()
        .filter(|e| e.device == node.device())
        .take(10)
        .collect();
    for e in &mine {
        tx.insert(collection_entry::ActiveModel {
            gid: Set(Uuid::new_v4()),
            collection_id: Set(coll.id),
            entry_id: Set(e.id),
            added_at: Set(chrono::Utc::now()),
            ..Default::default()
        })
        .await?;
        let meta = tx
            .insert(user_metadata::ActiveModel {
                gid: Set(Uuid::new_v4()),
                scope: Set("entry".into()),
                notes: Set(Some(format!("seen by {name}"))),
                favorite: Set(false),
                hidden: Set(false),
                custom_data: Set(serde_json::json!({ "rating": 3 })),
                ..Default::default()
            })
            .await?;
        if let Some(t) = my_tags.first() {
            tx.insert(user_metadata_tag::ActiveModel {
                gid: Set(Uuid::new_v4()),
                user_metadata_id: Set(meta.id),
                tag_id: Set(t.id),
                source: Set(user_metadata_tag::Source::User),
                confidence: Set(0.9),
                ..Default::default()
            })
            .await?;
        }
        let mut e = e.clone();
        e.user_metadata_id = Some(meta.id);
        tx.update(e).await?;
    }
    tx.commit().await?;
    // Rounds of edits of every tag this device can see, mine and others'.
    for round in 0..rounds {
        let mut tx = engine.begin().await?;
        for (i, t) in tag::Entity::find()
            .all(tx.connection())
            .await?
            .into_iter()
            .enumerate()
        {
            if i % 3 == round % 3 {
                let mut t = t;
                t.color = Some(format!("{name}-{round}"));
                tx.update(t).await?;
            }
        }
        tx.commit().await?;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // And deletes: a few of its own tags.
    let mut tx = engine.begin().await?;
    for t in my_tags.iter().rev().take(3) {
        tx.delete::<tag::Model>(t.gid).await?;
    }
    tx.commit().await?;
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn content_hash(node: &Node, model: &str) -> Result<(usize, String), Error> {
    let rows: Vec<_> = node
        .engine()
        .content()
        .await?
        .into_iter()
        .filter(|r| r.model == model)
        .collect();
    let bytes = rmp_serde::to_vec(&rows.iter().map(|r| (r.id, &r.fields)).collect::<Vec<_>>())?;
    Ok((rows.len(), blake3::hash(&bytes).to_hex()[..12].to_owned()))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let temp = tempfile::tempdir()?;
    let root = args.dir.clone().unwrap_or_else(|| temp.path().to_owned());
    let project = Path::new(env!("CARGO_MANIFEST_DIR"));
    let trees: Vec<PathBuf> = if args.index.is_empty() {
        ["sync-core", "sync-net", "sync-derive"]
            .iter()
            .map(|d| project.join(d))
            .collect()
    } else {
        args.index.clone()
    };
    let names = ["laptop", "desktop", "phone"];
    let started = Instant::now();

    println!("Starting 3 devices in {}", root.display());
    let mut nodes = Vec::new();
    for name in names {
        nodes.push(start_device(&root, name).await?);
    }
    pair(&nodes[0], &nodes[1]).await?;
    pair(&nodes[0], &nodes[2]).await?;
    pair(&nodes[1], &nodes[2]).await?;
    let wait_links = Instant::now();
    while nodes.iter().any(|n| n.connected().len() < 2) {
        if wait_links.elapsed() > Duration::from_secs(20) {
            return Err("devices did not connect".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (n, name) in nodes.iter().zip(names) {
        register_device(n, name).await?;
    }
    println!("Paired and connected: {}", names.join(", "));

    // Each device indexes its own tree, all at once.
    let multi = MultiProgress::new();
    let mut indexing = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let tree = trees[i % trees.len()].clone();
        let total = walkdir::WalkDir::new(&tree).into_iter().count() as u64;
        let pb = bar(&multi, total, names[i]);
        pb.set_message(format!("indexing {}", tree.display()));
        let node = node.clone();
        indexing.push(tokio::spawn(async move {
            let result =
                library::index_directory(node.engine(), &tree, |n| pb.set_position(n)).await;
            pb.finish_with_message("indexed");
            result
        }));
    }
    let mut indexed = 0;
    for task in indexing {
        indexed += task.await??.1;
    }
    println!("Indexed {indexed} entries across the three devices");

    // Concurrent edits on all three.
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let (ra, rb, rc) = tokio::join!(
        edit_library(a, names[0], args.tags, args.rounds),
        edit_library(b, names[1], args.tags, args.rounds),
        edit_library(c, names[2], args.tags, args.rounds),
    );
    ra?;
    rb?;
    rc?;
    let t = wait_converged(&[a, b, c], Duration::from_secs(60)).await?;
    println!(
        "Concurrent edits on all three converged in {:.0} ms",
        t.as_secs_f64() * 1e3
    );

    // The phone goes offline; the others keep writing; it comes back.
    let phone_dir = root.join(names[2]);
    nodes[2].shutdown().await;
    let offline = nodes.remove(2);
    drop(offline);
    let pb = bar(&multi, args.offline_writes as u64, "offline");
    pb.set_message("laptop and desktop write while the phone is away");
    for i in 0..args.offline_writes {
        let node = &nodes[i % 2];
        let mut tx = node.engine().begin().await?;
        tx.insert(tag::ActiveModel {
            gid: Set(Uuid::new_v4()),
            canonical_name: Set(format!("while-away-{i}")),
            display_name: Set(format!("While away {i}")),
            namespace: Set(Some("demo".into())),
            tag_type: Set("user".into()),
            color: Set(None),
            aliases: Set(None),
            ..Default::default()
        })
        .await?;
        tx.commit().await?;
        pb.inc(1);
    }
    pb.finish_with_message("written");
    let back = Instant::now();
    let db = library::open_database(&phone_dir.join("library.sqlite")).await?;
    let mut config = NodeConfig::new(LIBRARY, "127.0.0.1:0".parse()?);
    config.heartbeat = Duration::from_millis(500);
    config.anti_entropy = Duration::from_secs(2);
    nodes.push(Node::start(db, &phone_dir, config).await?);
    let t = wait_converged(&[&nodes[0], &nodes[1], &nodes[2]], Duration::from_secs(60)).await?;
    println!(
        "The phone came back and caught up {} changes in {:.0} ms",
        args.offline_writes,
        back.elapsed().max(t).as_secs_f64() * 1e3
    );

    // A fourth device joins and backfills.
    let tablet = start_device(&root, "tablet").await?;
    let join = Instant::now();
    pair(&nodes[0], &tablet).await?;
    let total = nodes[0].engine().content().await?.len() as u64;
    let pb = bar(&multi, total, "tablet");
    pb.set_message("backfilling");
    loop {
        match tablet.engine().status().phase {
            Phase::Backfilling { done, total } => {
                pb.set_length(total.max(1));
                pb.set_position(done);
            }
            _ if !tablet.engine().needs_backfill() => break,
            _ => {}
        }
        if join.elapsed() > Duration::from_secs(60) {
            return Err("the tablet did not backfill".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pb.finish_with_message("backfilled");
    nodes.push(tablet);
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_converged(&refs, Duration::from_secs(60)).await?;
    let backfill = join.elapsed();
    println!(
        "The tablet joined and holds the whole library after {:.0} ms",
        backfill.as_secs_f64() * 1e3
    );

    // Commit-to-applied latency on every other device, observed through
    // each device's stream of applied changes.
    let mut latencies = Vec::new();
    for i in 0..args.samples {
        let writer = &nodes[i % nodes.len()];
        let mut watchers: Vec<_> = nodes
            .iter()
            .filter(|n| n.device() != writer.device())
            .map(|n| n.engine().subscribe_applied())
            .collect();
        let gid = Uuid::new_v4();
        let t0 = Instant::now();
        let mut tx = writer.engine().begin().await?;
        tx.insert(collection::ActiveModel {
            gid: Set(gid),
            name: Set(format!("latency {i}")),
            description: Set(None),
            ..Default::default()
        })
        .await?;
        tx.commit().await?;
        for w in &mut watchers {
            loop {
                let batch = tokio::time::timeout(Duration::from_secs(10), w.recv())
                    .await
                    .map_err(|_| "a write never reached a device")??;
                if batch.iter().any(|c| c.id == gid) {
                    break;
                }
            }
        }
        latencies.push(t0.elapsed());
    }
    latencies.sort();
    let refs: Vec<&Node> = nodes.iter().collect();
    let final_wait = wait_converged(&refs, Duration::from_secs(60)).await?;

    // The table.
    let models = [
        "devices",
        "volumes",
        "locations",
        "entries",
        "tags",
        "collections",
        "user_metadata",
        "collection_entries",
        "user_metadata_tags",
    ];
    let names = ["laptop", "desktop", "phone", "tablet"];
    print!("\n{:<20}", "model");
    for n in names {
        print!("{n:>22}");
    }
    println!();
    let mut all_match = true;
    for model in models {
        print!("{model:<20}");
        let mut seen = None;
        for node in &nodes {
            let (count, hash) = content_hash(node, model).await?;
            print!("{:>22}", format!("{count} {hash}"));
            match &seen {
                None => seen = Some(hash),
                Some(h) if *h != hash => all_match = false,
                _ => {}
            }
        }
        println!();
    }
    let written: u64 = {
        let mut n = 0;
        for node in &nodes {
            n += node.engine().stats().written;
        }
        n
    };
    let bytes: u64 = nodes
        .iter()
        .flat_map(|n| n.link_stats().into_values())
        .map(|s| s.bytes_sent)
        .sum();
    let conflicts = nodes[0].engine().conflicts_len();
    println!("\nchanges written (this run's processes): {written}");
    println!(
        "entries indexed: {indexed}; rows per device: {}",
        nodes[0].engine().content().await?.len()
    );
    println!("conflicts recorded on the laptop: {conflicts}");
    println!(
        "commit to applied on all other devices, {} samples: p50 {:.2} ms, p99 {:.2} ms",
        latencies.len(),
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "last convergence check: {:.0} ms",
        final_wait.as_secs_f64() * 1e3
    );
    println!("bytes sent between devices: {bytes}");
    println!("total time: {:.1} s", started.elapsed().as_secs_f64());
    let entries = entry::Entity::find()
        .count(nodes[0].engine().database())
        .await?;
    for node in &nodes {
        node.shutdown().await;
    }
    if !all_match || entries == 0 {
        println!("\nDEVICES DIFFER");
        std::process::exit(1);
    }
    println!("\nAll {} devices hold the same library.", nodes.len());
    Ok(())
}
