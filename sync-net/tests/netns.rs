//! Three nodes, each in its own network namespace, joined by veth pairs
//! (real interfaces, real routing, no loopback): everyone writes, one node's
//! links are taken down while everyone writes more, they come back up, and
//! every write reaches every node. Needs root and iproute2; where either is
//! missing the test says why and passes without running (the relay test in
//! `faults.rs` makes the same faults in user space on any machine).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    unreachable_pub
)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;

use common::*;
use nix::sched::{CloneFlags, setns};
use sync_net::{Node, PeerRecord};
use uuid::Uuid;

/// Runs `ip` with `args`; the error says what failed.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` (iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Three namespaces and the veth pair of each two of them, removed on drop.
struct Namespaces {
    names: [String; 3],
    /// Per link (i, j): the interface in i, in j, and the subnet's third
    /// byte (i's address ends in .1, j's in .2).
    links: Vec<(usize, usize, String, String, u8)>,
}

impl Namespaces {
    fn create() -> Result<Self, String> {
        let tag = std::process::id() % 100_000;
        let names = [0, 1, 2].map(|i| format!("syncable{tag}n{i}"));
        let mut made = Self {
            names: names.clone(),
            links: Vec::new(),
        };
        for name in &names {
            ip(&["netns", "add", name])?;
            ip(&["-n", name, "link", "set", "lo", "up"])?;
        }
        for (k, (i, j)) in [(0usize, 1usize), (1, 2), (0, 2)].into_iter().enumerate() {
            let subnet = 77 + k as u8;
            let (a, b) = (format!("s{tag}l{k}a"), format!("s{tag}l{k}b"));
            ip(&[
                "link", "add", &a, "netns", &names[i], "type", "veth", "peer", "name", &b, "netns",
                &names[j],
            ])?;
            ip(&[
                "-n",
                &names[i],
                "addr",
                "add",
                &format!("10.{subnet}.0.1/30"),
                "dev",
                &a,
            ])?;
            ip(&[
                "-n",
                &names[j],
                "addr",
                "add",
                &format!("10.{subnet}.0.2/30"),
                "dev",
                &b,
            ])?;
            ip(&["-n", &names[i], "link", "set", &a, "up"])?;
            ip(&["-n", &names[j], "link", "set", &b, "up"])?;
            made.links.push((i, j, a, b, subnet));
        }
        Ok(made)
    }

    /// Where node `to` is reached from node `from` (over their own link).
    fn address(&self, from: usize, to: usize) -> IpAddr {
        let (i, _, _, _, subnet) = self
            .links
            .iter()
            .find(|(i, j, ..)| (*i, *j) == (from, to) || (*i, *j) == (to, from))
            .expect("every two nodes share a link");
        let last = if *i == to { 1 } else { 2 };
        IpAddr::V4(Ipv4Addr::new(10, *subnet, 0, last))
    }

    /// Takes node `n`'s links down (or brings them back up).
    fn cut(&self, n: usize, down: bool) {
        let state = if down { "down" } else { "up" };
        for (i, j, a, b, _) in &self.links {
            if *i == n || *j == n {
                ip(&["-n", &self.names[*i], "link", "set", a, state]).unwrap();
                ip(&["-n", &self.names[*j], "link", "set", b, state]).unwrap();
            }
        }
    }

    /// Starts a node whose socket lives in namespace `n`: the thread enters
    /// it while the node binds, then returns (the socket stays there).
    async fn start_in(&self, n: usize, dir: &Path) -> Node {
        let home = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
        let there = std::fs::File::open(format!("/run/netns/{}", self.names[n])).unwrap();
        setns(&there, CloneFlags::CLONE_NEWNET).unwrap();
        let node = start_with(dir, |mut c| {
            c.listen = "0.0.0.0:0".parse().unwrap();
            c
        })
        .await;
        setns(&home, CloneFlags::CLONE_NEWNET).unwrap();
        node
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth ends in it, and their peers.
        for name in &self.names {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// Pairs `a` (node `i`) and `b` (node `j`), each reaching the other at its
/// address on their link.
async fn pair_over(ns: &Namespaces, nodes: &[Node], i: usize, j: usize) {
    let (a, b) = (&nodes[i], &nodes[j]);
    let at = |from: usize, to: usize| {
        SocketAddr::new(ns.address(from, to), nodes[to].addr().unwrap().port())
    };
    let mut code = a.invite().unwrap();
    code.addr = at(j, i);
    assert_eq!(b.accept(&code).await.unwrap(), a.device());
    let b_seen = a
        .peers()
        .into_iter()
        .find(|p| p.device == b.device())
        .unwrap();
    a.pin(PeerRecord {
        addr: Some(at(i, j)),
        ..b_seen
    })
    .await
    .unwrap();
    let a_seen = b
        .peers()
        .into_iter()
        .find(|p| p.device == a.device())
        .unwrap();
    b.pin(PeerRecord {
        addr: Some(at(j, i)),
        ..a_seen
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn three_nodes_in_their_own_network_namespaces_converge_through_a_cut() {
    let ns = match Namespaces::create() {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("network namespace test skipped: {why}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for n in 0..3 {
        nodes.push(ns.start_in(n, &dir.path().join(format!("n{n}"))).await);
    }
    for (i, j) in [(0, 1), (1, 2), (0, 2)] {
        pair_over(&ns, &nodes, i, j).await;
    }
    let all = || [&nodes[0], &nodes[1], &nodes[2]];
    let mut written: Vec<Uuid> = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        written.extend(write_tags(node, 10, &format!("n{i}-first-")).await);
    }
    eventually("the first writes converge across namespaces", || async {
        converged(&all()).await && tag_count(&nodes[2]).await == 30
    })
    .await;

    // Node 2's links go down while everyone writes.
    ns.cut(2, true);
    for (i, node) in nodes.iter().enumerate() {
        written.extend(write_tags(node, 5, &format!("n{i}-cut-")).await);
    }
    eventually("0 and 1 converge without 2", || async {
        converged(&[&nodes[0], &nodes[1]]).await && tag_count(&nodes[0]).await == 40
    })
    .await;
    assert_eq!(tag_count(&nodes[2]).await, 35, "2 holds only its own");

    ns.cut(2, false);
    eventually("all three converge once the links are back", || async {
        converged(&all()).await && tag_count(&nodes[2]).await == written.len() as u64
    })
    .await;
    assert_everywhere(&nodes, &written).await;
    for node in nodes {
        node.shutdown().await;
    }
}
