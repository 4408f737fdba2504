//! What the engine reports: counters through the `metrics` facade, and the
//! status API.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    unreachable_pub
)]

mod common;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use sea_orm::ActiveValue::Set;
use uuid::Uuid;

fn counter(snapshot: &[(metrics_util::CompositeKey, DebugValue)], name: &str) -> u64 {
    snapshot
        .iter()
        .filter(|(k, _)| k.key().name() == name)
        .map(|(_, v)| match v {
            DebugValue::Counter(n) => *n,
            _ => 0,
        })
        .sum()
}

#[test]
fn writes_applies_rejections_and_conflicts_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let a = common::device(1).await;
            let b = common::device(2).await;
            let mut tx = a.engine.begin().await.unwrap();
            for i in 0..3 {
                tx.insert(common::tag::ActiveModel {
                    gid: Set(Uuid::new_v4()),
                    name: Set(format!("t{i}")),
                    color: Set(None),
                    weight: Set(0),
                    parent_id: Set(None),
                    ..Default::default()
                })
                .await
                .unwrap();
            }
            let changes = tx.commit().await.unwrap();
            b.receive(&changes).await;
            let mut unknown = changes[0].clone();
            unknown.model = "nope".into();
            unknown.seq = 99;
            let mut malformed = changes[0].clone();
            malformed.seq = 100;
            if let sync_core::Op::Upsert(fields) = &mut malformed.op {
                fields[1].value = sync_core::WireValue::Bool(Some(true));
            }
            b.engine.apply(vec![unknown, malformed]).await.unwrap();
        });
    });
    let snapshot: Vec<_> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(k, _, _, v)| (k, v))
        .collect();
    assert_eq!(counter(&snapshot, "syncable_changes_written_total"), 3);
    assert_eq!(counter(&snapshot, "syncable_changes_received_total"), 5);
    assert_eq!(counter(&snapshot, "syncable_changes_applied_total"), 3);
    assert_eq!(counter(&snapshot, "syncable_changes_rejected_total"), 1);
    assert_eq!(counter(&snapshot, "syncable_changes_held_back_total"), 1);
    assert!(
        snapshot
            .iter()
            .any(|(k, v)| k.key().name() == "syncable_apply_seconds"
                && matches!(v, DebugValue::Histogram(h) if h.len() == 2))
    );
}
