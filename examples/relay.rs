//! A fault-injecting UDP relay between two nodes on this machine: each node
//! is told the other is at the relay's socket that faces it (see
//! `docs/reliability.md`). Drops, delays with jitter (which reorders) and
//! duplicates datagrams; `cut` and `heal` on standard input partition the
//! link and restore it.
//!
//! ```text
//! cargo run --example relay -- --a 127.0.0.1:7001 --b 127.0.0.1:7002 --drop 0.05 --delay-ms 50 --jitter-ms 20
//! ```
#![allow(unreachable_pub, dead_code)]

#[path = "../sync-net/tests/common/relay.rs"]
mod relay;

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tokio::io::AsyncBufReadExt;

#[derive(Parser, Debug)]
#[command(about = "Relays UDP between two endpoints, with faults")]
struct Args {
    /// One endpoint (a node's listening address).
    #[arg(long)]
    a: SocketAddr,
    /// The other endpoint.
    #[arg(long)]
    b: SocketAddr,
    /// Chance a datagram is dropped.
    #[arg(long, default_value_t = 0.05)]
    drop: f64,
    /// Chance a datagram is sent twice.
    #[arg(long, default_value_t = 0.01)]
    dup: f64,
    /// Delay of every datagram, in ms.
    #[arg(long, default_value_t = 50)]
    delay_ms: u64,
    /// Up to this much more delay per datagram, in ms.
    #[arg(long, default_value_t = 20)]
    jitter_ms: u64,
    /// Seed of the faults.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if !(0.0..=1.0).contains(&args.drop) || !(0.0..=1.0).contains(&args.dup) {
        return Err("--drop and --dup are chances between 0 and 1".into());
    }
    let faults = relay::Faults {
        drop: args.drop,
        duplicate: args.dup,
        delay: Duration::from_millis(args.delay_ms),
        jitter: Duration::from_millis(args.jitter_ms),
    };
    let link = relay::Relay::start(args.a, args.b, faults, args.seed).await?;
    println!("{} reaches {} at {}", args.a, args.b, link.for_a);
    println!("{} reaches {} at {}", args.b, args.a, link.for_b);
    println!("commands: cut | heal | stats | quit");
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line?.as_deref().map(str::trim) {
                Some("cut") => { link.set_cut(true); println!("cut"); }
                Some("heal") => { link.set_cut(false); println!("healed"); }
                Some("stats") => {
                    let (f, d, u, c) = link.report();
                    println!("{f} forwarded, {d} dropped, {u} duplicated, {c} discarded while cut");
                }
                Some("quit") | None => break,
                Some(other) => println!("unknown command {other:?}: cut | heal | stats | quit"),
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    Ok(())
}
