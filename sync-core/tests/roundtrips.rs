//! How many statements a local write and the receive path send to SQLite
//! for one change: each is a round trip to sqlx's SQLite thread (0.15-0.25 ms on a
//! busy 2-core machine), which is most of what a small batch costs. The
//! transaction's BEGIN and COMMIT come on top (sea-orm does not report
//! them to the callback).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    unreachable_pub
)]

mod common;

use std::sync::{Arc, Mutex};

use common::{Device, tag};
use sea_orm::{ActiveValue::Set, ConnectOptions, Database, EntityTrait};
use sync_core::__private::steps;
use sync_core::Change;
use uuid::Uuid;

/// A shared model whose name on the wire is not its table's.
pub mod renamed {
    use sea_orm::entity::prelude::*;
    use sync_core::Syncable;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel, Syncable)]
    #[sea_orm(table_name = "renamed_rows")]
    #[sync(shared, name = "renamed")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i32,
        #[sea_orm(unique)]
        #[sync(id)]
        pub gid: Uuid,
        pub note: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A device whose every statement is recorded in `seen`.
async fn counted(n: u128, seen: &Arc<Mutex<Vec<String>>>) -> Device {
    let mut options = ConnectOptions::new("sqlite::memory:");
    options.max_connections(1).sqlx_logging(false);
    let mut db = Database::connect(options).await.unwrap();
    common::create_all(&db).await;
    common::create_table(&db, renamed::Entity).await;
    let log = seen.clone();
    db.set_metric_callback(move |info| {
        log.lock().unwrap().push(info.statement.sql.clone());
    });
    common::open_device(db, n, sync_core::clock::ManualTime::new(common::EPOCH)).await
}

/// The statements `b` runs to apply `changes` of `a`, pushed.
async fn statements(
    a: &Device,
    b: &Device,
    seen: &Arc<Mutex<Vec<String>>>,
    changes: &[Change],
) -> Vec<String> {
    let batch = steps::sealed_batch(&a.engine, changes).unwrap();
    seen.lock().unwrap().clear();
    let report = steps::apply_pushed(&b.engine, vec![batch]).await.unwrap();
    assert_eq!(report.applied, changes.len() as u64, "{report:?}");
    seen.lock().unwrap().clone()
}

#[tokio::test]
async fn one_pushed_change_is_applied_in_two_statements() {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let a = counted(1, &Arc::default()).await;
    let b = counted(2, &seen).await;
    common::pair_each(&[&a, &b]).await;
    for round in 0..3 {
        // A new record: its row, its waiters and its table's highest key
        // in one query; the writes in another.
        let mut tx = a.engine.begin().await.unwrap();
        let row = tx
            .insert(common::new_tag(&format!("t{round}")))
            .await
            .unwrap();
        let created = tx.commit().await.unwrap();
        let run = statements(&a, &b, &seen, &created).await;
        assert_eq!(run.len(), 2, "a create, round {round}: {run:#?}");

        // An update of it.
        let mut tx = a.engine.begin().await.unwrap();
        tx.update(tag::Model {
            name: format!("renamed {round}"),
            ..row
        })
        .await
        .unwrap();
        let updated = tx.commit().await.unwrap();
        let run = statements(&a, &b, &seen, &updated).await;
        assert_eq!(run.len(), 2, "an update, round {round}: {run:#?}");
    }
    assert_eq!(
        tag::Entity::find().all(b.engine.database()).await.unwrap(),
        tag::Entity::find().all(a.engine.database()).await.unwrap()
    );
}

/// A local insert: the row (RETURNING the row sea-orm hands back), then,
/// at commit, one query for the record's state and what waits for it, and
/// one batch of writes.
#[tokio::test]
async fn one_local_insert_commits_in_three_statements() {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let a = counted(1, &seen).await;
    for round in 0..3 {
        seen.lock().unwrap().clear();
        let mut tx = a.engine.begin().await.unwrap();
        tx.insert(common::new_tag(&format!("t{round}")))
            .await
            .unwrap();
        let changes = tx.commit().await.unwrap();
        assert_eq!(changes.len(), 1);
        let run = seen.lock().unwrap().clone();
        assert_eq!(run.len(), 3, "round {round}: {run:#?}");
    }
    assert_eq!(a.engine.status().log_len, 3);
}

/// A model named apart from its table: its highest key comes in the same
/// query (found by the model's name, the sequence by the table's), and a
/// received row does not take the key of a row deleted since.
#[tokio::test]
async fn a_renamed_models_highest_key_comes_in_the_same_query() {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let a = counted(1, &Arc::default()).await;
    let b = counted(2, &seen).await;
    common::pair_each(&[&a, &b]).await;
    let insert = |note: &str| renamed::ActiveModel {
        gid: Set(Uuid::new_v4()),
        note: Set(note.into()),
        ..Default::default()
    };
    // b's own row, with the highest key, deleted.
    let mut tx = b.engine.begin().await.unwrap();
    let own = tx.insert(insert("own")).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = b.engine.begin().await.unwrap();
    assert!(tx.delete::<renamed::Model>(own.gid).await.unwrap());
    tx.commit().await.unwrap();

    let mut tx = a.engine.begin().await.unwrap();
    let row = tx.insert(insert("from a")).await.unwrap();
    let created = tx.commit().await.unwrap();
    let run = statements(&a, &b, &seen, &created).await;
    assert_eq!(run.len(), 2, "{run:#?}");
    let here = renamed::Entity::find()
        .all(b.engine.database())
        .await
        .unwrap();
    assert_eq!(here.len(), 1);
    assert_eq!(here[0].gid, row.gid);
    assert!(here[0].id > own.id, "key {} reused", here[0].id);
}
