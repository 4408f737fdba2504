//! Unique constraints on synced data, resolved the same way on every device.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    unreachable_pub
)]

mod common;

use std::time::Duration;

use common::{Device, device, file, label};
use sea_orm::{ActiveValue::Set, EntityTrait, QueryOrder};
use sync_core::{Change, ConflictKind, PullRequest, SyncModel as _};
use uuid::Uuid;

async fn create_label(d: &Device, slug: &str, title: &str) -> (Uuid, Vec<Change>) {
    let gid = Uuid::new_v4();
    let mut tx = d.engine.begin().await.unwrap();
    tx.insert(label::ActiveModel {
        gid: Set(gid),
        slug: Set(slug.into()),
        title: Set(title.into()),
        ..Default::default()
    })
    .await
    .unwrap();
    (gid, tx.commit().await.unwrap())
}

async fn slugs(d: &Device) -> Vec<(Uuid, String)> {
    label::Entity::find()
        .order_by_asc(label::Column::Gid)
        .all(d.engine.database())
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.gid, l.slug))
        .collect()
}

#[tokio::test]
async fn concurrent_shared_rows_colliding_on_a_unique_column_resolve_alike_everywhere() {
    for b_first in [false, true] {
        let a = device(1).await;
        let b = device(2).await;
        let c = device(3).await;
        let (from_a, ca) = create_label(&a, "work", "a's").await;
        b.time.advance(Duration::from_millis(5));
        let (from_b, cb) = create_label(&b, "work", "b's").await;
        a.receive(&cb).await;
        b.receive(&ca).await;
        if b_first {
            c.receive(&cb).await;
            c.receive(&ca).await;
        } else {
            c.receive(&ca).await;
            c.receive(&cb).await;
        }
        let expected = {
            let mut v = vec![
                (
                    from_a,
                    format!("work~{}", &from_a.simple().to_string()[..8]),
                ),
                (from_b, "work".to_owned()),
            ];
            v.sort();
            v
        };
        for d in [&a, &b, &c] {
            assert_eq!(
                slugs(d).await,
                expected,
                "device {} (b first: {b_first})",
                d.id
            );
            let conflicts = d.engine.conflicts().await.unwrap();
            assert_eq!(conflicts.len(), 1);
            assert_eq!(conflicts[0].kind, ConflictKind::Unique);
            assert_eq!(
                conflicts[0].record, from_a,
                "the earlier write loses the value"
            );
        }
        assert_eq!(a.content().await, c.content().await);
        assert_eq!(b.content().await, c.content().await);
    }
}

#[tokio::test]
async fn a_catch_up_that_skips_an_owners_swap_still_reaches_its_final_state() {
    let owner = device(1).await;
    let peer = device(2).await;
    let mut tx = owner.engine.begin().await.unwrap();
    let make = |name: &str| file::ActiveModel {
        gid: Set(Uuid::new_v4()),
        device: Set(owner.id),
        name: Set(name.into()),
        ..Default::default()
    };
    let f1 = tx.insert(make("a.txt")).await.unwrap();
    let f2 = tx.insert(make("b.txt")).await.unwrap();
    let first = tx.commit().await.unwrap();
    peer.receive(&first).await;
    peer.engine.pair(owner.id).await.unwrap();

    // The owner swaps the two names through a temporary one.
    for (row, name) in [(&f1, "tmp"), (&f2, "a.txt"), (&f1, "b.txt")] {
        let mut tx = owner.engine.begin().await.unwrap();
        let mut current = file::Model::find_by_id(tx.connection(), row.gid)
            .await
            .unwrap()
            .unwrap();
        current.name = name.into();
        tx.update(current).await.unwrap();
        tx.commit().await.unwrap();
    }
    // Catch-up sends only the newest states: f2 = a.txt, f1 = b.txt, never
    // the state in which one of them was "tmp".
    let request = PullRequest {
        vector: peer.engine.vector(),
        limit: 100,
        ahead: Vec::new(),
    };
    let response = sync_core::__private::steps::serve_pull(&owner.engine, &request)
        .await
        .unwrap()
        .unwrap();
    let sent: usize = response.batches.iter().map(|b| b.changes.len()).sum();
    assert_eq!(sent, 2);
    let report = sync_core::__private::steps::apply_batches(&peer.engine, response.batches)
        .await
        .unwrap();
    assert!(report.rejected.is_empty() && report.held_back.is_empty());
    assert_eq!(owner.content().await, peer.content().await);
    assert!(
        peer.engine.conflicts().await.unwrap().is_empty(),
        "a transient collision is not a conflict"
    );
    let name = |id| {
        let db = peer.engine.database().clone();
        async move {
            file::Model::find_by_id(&db, id)
                .await
                .unwrap()
                .unwrap()
                .name
        }
    };
    assert_eq!(name(f1.gid).await, "b.txt");
    assert_eq!(name(f2.gid).await, "a.txt");
}

/// The winner of a collision deleted by the application, on a device that
/// shows the loser renamed: the loser gets its value back there as it does
/// where the delete arrives from a peer (found by the simulation: a volume's
/// owner deleted it while another device's volume of the same fingerprint
/// was shown renamed, and stayed so on that device alone).
#[tokio::test]
async fn a_loser_gets_its_value_back_when_the_winner_is_deleted_here() {
    let a = device(1).await;
    let b = device(2).await;
    let (loser, ca) = create_label(&a, "work", "a's").await;
    b.time.advance(Duration::from_millis(5));
    let (winner, cb) = create_label(&b, "work", "b's").await;
    a.receive(&cb).await;
    b.receive(&ca).await;
    let renamed = format!("work~{}", &loser.simple().to_string()[..8]);
    assert!(slugs(&b).await.contains(&(loser, renamed)));

    let mut tx = b.engine.begin().await.unwrap();
    assert!(tx.delete::<label::Model>(winner).await.unwrap());
    let delete = tx.commit().await.unwrap();
    assert_eq!(slugs(&b).await, vec![(loser, "work".to_owned())]);

    a.receive(&delete).await;
    assert_eq!(slugs(&a).await, vec![(loser, "work".to_owned())]);
    assert_eq!(a.content().await, b.content().await);
}
