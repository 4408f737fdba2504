//! One device as a process: run it in a terminal per device, on one machine
//! or several. See `examples/README.md` for a walk-through.
//!
//! ```text
//! cargo run --release --example node -- --dir ./laptop init
//! cargo run --release --example node -- --dir ./laptop --listen 0.0.0.0:7001 invite
//! cargo run --release --example node -- --dir ./phone --listen 0.0.0.0:7002 join SYNC-...
//! ```
//!
//! While it runs it reads commands on standard input: `tag NAME`,
//! `collection NAME`, `index PATH`, `tags`, `status`, `peers`,
//! `remove DEVICE`, `invite`, `quit`. Run with the node stopped, `status`,
//! `peers` and `remove DEVICE` do the same once and exit; `watch` runs and
//! prints the status every second. `--json` prints status as JSON.
#![allow(unreachable_pub)]

#[path = "library/mod.rs"]
mod library;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use sea_orm::{ActiveValue::Set, EntityTrait};
use syncable::net::{Node, NodeConfig, PairingCode};
use tokio::io::AsyncBufReadExt;
use uuid::Uuid;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser, Debug)]
#[command(about = "One Syncable device of a file library")]
struct Args {
    /// The device's data directory (database, identity, peers).
    #[arg(long)]
    dir: PathBuf,
    /// Where to listen for peers.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Print status as JSON (one object per line).
    #[arg(long)]
    json: bool,
    /// Serve the status page, /status and /metrics here (for example
    /// 127.0.0.1:8080; it has no authentication, keep it on loopback).
    #[arg(long)]
    http: Option<SocketAddr>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Creates a new library in the data directory.
    Init,
    /// Runs, and prints a pairing code another device can accept.
    Invite,
    /// Accepts another device's pairing code (joining its library), then runs.
    Join {
        /// The code printed by `invite`.
        code: String,
    },
    /// Runs.
    Run,
    /// Runs, printing the status every second.
    Watch,
    /// Prints this device's status and exits.
    Status,
    /// Lists the paired devices and exits.
    Peers,
    /// Removes a device from the library (its key is refused from now on,
    /// everywhere the removal spreads) and exits.
    Remove {
        /// The device id, as `peers` prints it.
        device: Uuid,
    },
}

fn library_file(dir: &Path) -> PathBuf {
    dir.join("library.id")
}

fn read_library(dir: &Path) -> Result<Uuid, Error> {
    let text = std::fs::read_to_string(library_file(dir)).map_err(|_| {
        format!(
            "{} holds no library: run `init` or `join` first",
            dir.display()
        )
    })?;
    Ok(Uuid::parse_str(text.trim())?)
}

async fn start(args: &Args, library: Uuid) -> Result<Node, Error> {
    let dir = &args.dir;
    let db = library::open_database(&dir.join("library.sqlite")).await?;
    let node = Node::start(db, dir, NodeConfig::new(library, args.listen)).await?;
    eprintln!("device {} listening on {}", node.device(), node.addr()?);
    if let Some(addr) = args.http {
        let bound = node.serve_http(addr).await?;
        eprintln!("status page at http://{bound}/");
    }
    Ok(node)
}

async fn status(node: &Node, json: bool) -> Result<(), Error> {
    let s = node.status().await?;
    if json {
        println!("{}", serde_json::to_string(&s)?);
        return Ok(());
    }
    println!("device {}  phase {:?}", s.device, s.phase);
    println!(
        "log {}  waiting {}  conflicts {}",
        s.log_len, s.parked, s.conflicts
    );
    for p in s.peers {
        println!(
            "  peer {}  {}  last seen {}  it lacks {}  we lack {}{}",
            p.peer,
            if p.connected { "connected" } else { "offline" },
            p.last_seen_ms
                .and_then(|ms| chrono::DateTime::from_timestamp_millis(ms as i64))
                .map_or("never".into(), |t| t.format("%H:%M:%S").to_string()),
            p.behind,
            p.ahead,
            if p.expired {
                "  (expired: must resync)"
            } else {
                ""
            }
        );
    }
    for c in node.engine().conflicts().await?.iter().rev().take(5) {
        println!(
            "  conflict {:?} {}.{}",
            c.kind,
            c.model,
            c.field.as_deref().unwrap_or("*")
        );
    }
    Ok(())
}

async fn peers(node: &Node, json: bool) -> Result<(), Error> {
    let s = node.status().await?;
    if json {
        println!("{}", serde_json::to_string(&s.peers)?);
        return Ok(());
    }
    let connected = node.connected();
    for p in node.peers() {
        let status = s.peers.iter().find(|s| s.peer == p.device);
        println!(
            "{}  {}  {}{}",
            p.device,
            p.addr.map_or("address unknown".into(), |a| a.to_string()),
            if connected.contains(&p.device) {
                "connected"
            } else {
                "offline"
            },
            if status.is_some_and(|s| s.expired) {
                "  (expired)"
            } else {
                ""
            }
        );
    }
    for removed in node
        .engine()
        .member_records()
        .iter()
        .filter_map(|r| match r {
            syncable::core::MemberRecord::Remove(r) => Some(r.device),
            _ => None,
        })
    {
        println!("{removed}  removed");
    }
    Ok(())
}

async fn remove(node: &Node, device: &str) -> Result<(), Error> {
    let device = Uuid::parse_str(device.trim())
        .map_err(|e| format!("{device:?} is not a device id ({e}); `peers` lists them"))?;
    node.remove(device).await?;
    println!("device {device} removed from the library");
    Ok(())
}

async fn command(node: &Node, line: &str, json: bool) -> Result<bool, Error> {
    let (verb, rest) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
    let rest = rest.trim();
    match verb {
        "" => {}
        "quit" | "exit" => return Ok(false),
        "status" => status(node, json || rest == "json").await?,
        "peers" => peers(node, json).await?,
        "remove" if !rest.is_empty() => remove(node, rest).await?,
        "invite" => println!("{}", node.invite()?.encode()?),
        "tag" if !rest.is_empty() => {
            let mut tx = node.engine().begin().await?;
            tx.insert(library::tag::ActiveModel {
                gid: Set(Uuid::new_v4()),
                canonical_name: Set(rest.to_lowercase()),
                display_name: Set(rest.into()),
                namespace: Set(None),
                tag_type: Set("user".into()),
                color: Set(None),
                aliases: Set(None),
                ..Default::default()
            })
            .await?;
            tx.commit().await?;
            println!("tag {rest:?} written");
        }
        "collection" if !rest.is_empty() => {
            let mut tx = node.engine().begin().await?;
            tx.insert(library::collection::ActiveModel {
                gid: Set(Uuid::new_v4()),
                name: Set(rest.into()),
                description: Set(None),
                ..Default::default()
            })
            .await?;
            tx.commit().await?;
            println!("collection {rest:?} written");
        }
        "index" if !rest.is_empty() => {
            let (_, n) = library::index_directory(node.engine(), Path::new(rest), |_| {}).await?;
            println!("indexed {n} entries");
        }
        "tags" => {
            for t in library::tag::Entity::find()
                .all(node.engine().database())
                .await?
            {
                println!("  {} {}", t.gid, t.display_name);
            }
        }
        _ => println!(
            "commands: tag NAME | collection NAME | index PATH | tags | status [json] | peers | remove DEVICE | invite | quit"
        ),
    }
    Ok(true)
}

async fn run(node: Node, json: bool, watch: bool) -> Result<(), Error> {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = ticks.tick(), if watch => status(&node, json).await?,
            line = lines.next_line(), if stdin_open => match line? {
                Some(line) => match command(&node, &line, json).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => println!("error: {e}"),
                },
                None => stdin_open = false,
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    node.shutdown().await;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir)?;
    match args.command {
        Command::Init => {
            if library_file(&args.dir).exists() {
                return Err(format!(
                    "{} already holds library {}",
                    args.dir.display(),
                    read_library(&args.dir)?
                )
                .into());
            }
            let library = Uuid::new_v4();
            std::fs::write(library_file(&args.dir), library.to_string())?;
            let node = start(&args, library).await?;
            println!("library {library} created");
            node.shutdown().await;
        }
        Command::Invite => {
            let node = start(&args, read_library(&args.dir)?).await?;
            println!(
                "pairing code (valid 10 minutes, once):\n{}",
                node.invite()?.encode()?
            );
            run(node, args.json, false).await?;
        }
        Command::Join { ref code } => {
            let code = PairingCode::decode(code)?;
            match read_library(&args.dir) {
                Ok(library) if library != code.library => {
                    return Err(format!(
                        "this device syncs library {library}; the code is for {}",
                        code.library
                    )
                    .into());
                }
                Ok(_) => {}
                Err(_) => std::fs::write(library_file(&args.dir), code.library.to_string())?,
            }
            let node = start(&args, code.library).await?;
            let peer = node.accept(&code).await?;
            println!("paired with {peer}");
            run(node, args.json, false).await?;
        }
        Command::Run | Command::Watch => {
            let node = start(&args, read_library(&args.dir)?).await?;
            run(node, args.json, matches!(args.command, Command::Watch)).await?;
        }
        Command::Status | Command::Peers | Command::Remove { .. } => {
            let node = start(&args, read_library(&args.dir)?).await?;
            let done = match &args.command {
                Command::Status => status(&node, args.json).await,
                Command::Peers => peers(&node, args.json).await,
                Command::Remove { device } => remove(&node, &device.to_string()).await,
                _ => Ok(()),
            };
            node.shutdown().await;
            done?;
        }
    }
    Ok(())
}
