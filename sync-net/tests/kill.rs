//! A node process killed with SIGKILL in the middle of a burst of writes,
//! then restarted from its data directory: everything it reported committed
//! is there, its log holds a change for each, and its peer converges with it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    unreachable_pub
)]

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;
use sync_core::SyncModel;
use uuid::Uuid;

const CHILD_DIR: &str = "SYNCABLE_KILL_CHILD_DIR";

/// The node that gets killed: run by the test below in its own process.
/// Prints its pairing code, waits for its peer, then writes one tag per
/// transaction forever, printing each id once its commit returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of a_node_killed_mid_burst_loses_nothing_it_committed"]
async fn writing_node_child() {
    let dir = std::env::var(CHILD_DIR).expect("run by the parent test");
    let node = start(std::path::Path::new(&dir)).await;
    println!("code {}", node.invite().unwrap().encode().unwrap());
    eventually("the parent paired", || async {
        !node.connected().is_empty()
    })
    .await;
    println!("paired");
    for i in 0.. {
        let ids = write_tags(&node, 1, &format!("burst-{i}-")).await;
        println!("committed {}", ids[0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_burst_loses_nothing_it_committed() {
    let dir = tempfile::tempdir().unwrap();
    let child_dir = dir.path().join("killed");
    let b = start(&dir.path().join("b")).await;

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "writing_node_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, &child_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });

    let mut committed = BTreeSet::new();
    while let Some(line) = lines.recv().await {
        // libtest prints "test writing_node_child ... " on the same line.
        if let Some(code) = line.split_once("code ").map(|(_, c)| c) {
            let code = sync_net::PairingCode::decode(code).unwrap();
            b.accept(&code).await.unwrap();
        } else if let Some(id) = line.strip_prefix("committed ") {
            committed.insert(Uuid::parse_str(id).unwrap());
            if committed.len() == 150 {
                // SIGKILL, mid-burst: the next transaction is in flight.
                child.kill().unwrap();
                break;
            }
        }
    }
    child.wait().unwrap();
    // Lines printed before the kill and not yet read are commits too.
    while let Ok(line) = lines.try_recv() {
        if let Some(id) = line.strip_prefix("committed ") {
            committed.insert(Uuid::parse_str(id).unwrap());
        }
    }
    assert!(committed.len() >= 150);

    let a = start(&child_dir).await;
    let log = a.engine().log().await.unwrap();
    for id in &committed {
        assert!(
            tag::Model::find_by_id(a.engine().database(), *id)
                .await
                .unwrap()
                .is_some(),
            "{id} was reported committed and is gone"
        );
    }
    // The log (what b had not acknowledged yet) agrees with the rows: every
    // change it holds is of a row that exists, and nothing waits.
    for change in &log {
        assert!(
            tag::Model::find_by_id(a.engine().database(), change.id)
                .await
                .unwrap()
                .is_some(),
            "the log holds a change of {} and the table has no such row",
            change.id
        );
    }
    assert_eq!(a.status().await.unwrap().parked, 0);
    eventually("the restarted node and its peer converge", || async {
        converged(&[&a, &b]).await
    })
    .await;
    for id in &committed {
        assert!(
            tag::Model::find_by_id(b.engine().database(), *id)
                .await
                .unwrap()
                .is_some(),
            "{id} never reached the peer"
        );
    }
    eprintln!(
        "killed after {} reported commits; all present after restart and on the peer",
        committed.len()
    );
    a.shutdown().await;
    b.shutdown().await;
}
