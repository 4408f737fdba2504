//! A writer killed at an arbitrary instant leaves, for every write, its row,
//! its sync state and its log entry together, or none of them.
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
use std::time::Duration;

use sea_orm::{ActiveValue::Set, EntityTrait};
use sync_core::clock::ManualTime;
use uuid::Uuid;

const CHILD_ENV: &str = "SYNCABLE_CRASH_CHILD_DB";

async fn write_forever(path: &std::path::Path) {
    let d = common::device_at(path, 1, ManualTime::new(common::EPOCH)).await;
    for batch in 0u64.. {
        let mut tx = d.engine.begin().await.unwrap();
        for i in 0..50 {
            tx.insert(common::tag::ActiveModel {
                gid: Set(Uuid::new_v4()),
                name: Set(format!("tag {batch}/{i}")),
                color: Set(None),
                weight: Set(i),
                parent_id: Set(None),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
        println!("committed {batch}");
    }
}

#[test]
fn a_writer_killed_mid_transaction_leaves_rows_and_log_entries_together() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(write_forever(std::path::Path::new(&path)));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.sqlite");
    for round in 0..3u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_writer_killed_mid_transaction_leaves_rows_and_log_entries_together",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        // Let it commit a few batches, then kill it while it writes the next.
        let mut committed = 0;
        while committed < 3 + round {
            let line = lines.next().expect("the writer stopped early").unwrap();
            if line.starts_with("committed") {
                committed += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(3 + 7 * round));
        child.kill().unwrap();
        child.wait().unwrap();

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let d = common::device_at(&path, 1, ManualTime::new(common::EPOCH)).await;
            let rows: BTreeSet<Uuid> = common::tag::Entity::find()
                .all(d.engine.database())
                .await
                .unwrap()
                .into_iter()
                .map(|t| t.gid)
                .collect();
            let logged: BTreeSet<Uuid> = d
                .engine
                .log()
                .await
                .unwrap()
                .into_iter()
                .map(|c| c.id)
                .collect();
            assert!(rows.len() >= 150, "round {round}: only {} rows", rows.len());
            assert_eq!(rows.len() % 50, 0, "round {round}: a transaction was torn");
            assert_eq!(rows, logged, "round {round}: rows and log entries differ");
            // Each incarnation of the writer numbered its changes 1, 2, 3,
            // ... with no number lost or used twice.
            let mut numbers: std::collections::BTreeMap<Uuid, Vec<u64>> = Default::default();
            for c in d.engine.log().await.unwrap() {
                numbers.entry(c.origin).or_default().push(c.seq);
            }
            for (origin, seqs) in numbers {
                assert_eq!(
                    seqs,
                    (1..=seqs.len() as u64).collect::<Vec<_>>(),
                    "round {round}: numbers of {origin}"
                );
            }
        });
    }
}
