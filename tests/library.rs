//! The file-library app syncing over QUIC on loopback: every model created,
//! updated and deleted across devices, and the three hard cases of its data
//! model.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    missing_docs,
    unreachable_pub
)]

#[path = "../examples/library/mod.rs"]
mod library;

use std::time::Duration;

use library::{
    collection, collection_entry, device, entry, location, tag, user_metadata, user_metadata_tag,
    volume,
};
use sea_orm::{ActiveValue::Set, EntityTrait};
use syncable::core::{ConflictKind, SyncModel};
use syncable::net::{Node, NodeConfig};
use uuid::Uuid;

const LIBRARY: Uuid = Uuid::from_u128(0x11B_7E57);

struct Devices {
    _dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

async fn start(dir: &std::path::Path, name: &str) -> Node {
    let path = dir.join(name);
    std::fs::create_dir_all(&path).unwrap();
    let db = library::open_database(&path.join("library.sqlite"))
        .await
        .unwrap();
    let mut config = NodeConfig::new(LIBRARY, "127.0.0.1:0".parse().unwrap());
    config.heartbeat = Duration::from_millis(200);
    config.anti_entropy = Duration::from_millis(500);
    Node::start(db, &path, config).await.unwrap()
}

async fn pair(a: &Node, b: &Node) {
    b.accept(&a.invite().unwrap()).await.unwrap();
}

impl Devices {
    async fn new(n: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for i in 0..n {
            nodes.push(start(dir.path(), &format!("d{i}")).await);
        }
        for i in 0..n {
            for j in i + 1..n {
                pair(&nodes[i], &nodes[j]).await;
            }
        }
        let d = Self { _dir: dir, nodes };
        d.eventually("all connected", || async {
            d.nodes.iter().all(|x| x.connected().len() == n - 1)
        })
        .await;
        d
    }

    async fn eventually<F, Fut>(&self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        // A liveness bound, not a measurement.
        for _ in 0..1500 {
            if check().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("never happened: {what}");
    }

    async fn converged(&self) -> bool {
        let first = self.nodes[0].engine().content().await.unwrap();
        for n in &self.nodes[1..] {
            if n.engine().content().await.unwrap() != first {
                return false;
            }
        }
        true
    }

    async fn settle(&self) {
        self.eventually("converged", || self.converged()).await;
    }

    /// Waits until `check` holds on every device.
    async fn everywhere<M: SyncModel>(&self, id: Uuid, check: impl Fn(Option<M>) -> bool) {
        for n in &self.nodes {
            let db = n.engine().database().clone();
            self.eventually(&format!("{} {id} on {}", M::NAME, n.device()), || {
                let db = db.clone();
                let ok = &check;
                async move { ok(M::find_by_id(&db, id).await.unwrap()) }
            })
            .await;
        }
    }

    async fn shutdown(self) {
        for n in &self.nodes {
            n.shutdown().await;
        }
    }
}

/// Runs `$body` in a write transaction of `$node` and commits it.
macro_rules! write {
    ($node:expr, |$tx:ident| $body:block) => {{
        let mut $tx = $node.engine().begin().await.unwrap();
        let out = $body;
        $tx.commit().await.unwrap();
        out
    }};
}

async fn update<M: SyncModel>(node: &Node, id: Uuid, change: impl FnOnce(&mut M)) {
    let mut tx = node.engine().begin().await.unwrap();
    let mut row = M::find_by_id(tx.connection(), id).await.unwrap().unwrap();
    change(&mut row);
    tx.update(row).await.unwrap();
    tx.commit().await.unwrap();
}

async fn delete<M: SyncModel>(node: &Node, id: Uuid) {
    let mut tx = node.engine().begin().await.unwrap();
    assert!(tx.delete::<M>(id).await.unwrap());
    tx.commit().await.unwrap();
}

/// Puts an entry (by global id) into a new collection on `node`; returns
/// the collection entry's id.
async fn collect_entry(node: &Node, collection_name: &str, entry_gid: Uuid) -> Uuid {
    write!(node, |tx| {
        let coll = tx
            .insert(collection::ActiveModel {
                gid: Set(Uuid::new_v4()),
                name: Set(collection_name.into()),
                description: Set(None),
                ..Default::default()
            })
            .await
            .unwrap();
        let e = entry::Model::find_by_id(tx.connection(), entry_gid)
            .await
            .unwrap()
            .unwrap();
        let ce = tx
            .insert(collection_entry::ActiveModel {
                gid: Set(Uuid::new_v4()),
                collection_id: Set(coll.id),
                entry_id: Set(e.id),
                added_at: Set(chrono::Utc::now()),
                ..Default::default()
            })
            .await
            .unwrap();
        ce.gid
    })
}

fn new_tag(name: &str) -> tag::ActiveModel {
    tag::ActiveModel {
        gid: Set(Uuid::new_v4()),
        canonical_name: Set(name.into()),
        display_name: Set(name.into()),
        namespace: Set(None),
        tag_type: Set("user".into()),
        color: Set(None),
        aliases: Set(Some(serde_json::json!(["alias"]))),
        ..Default::default()
    }
}

fn new_device(name: &str, slug: &str) -> device::ActiveModel {
    device::ActiveModel {
        gid: Set(Uuid::new_v4()),
        name: Set(name.into()),
        slug: Set(slug.into()),
        os: Set("linux".into()),
        os_version: Set(Some("6.1".into())),
        addresses: Set(serde_json::json!(["127.0.0.1"])),
        is_online: Set(true),
        last_seen_at: Set(chrono::Utc::now()),
        sync_enabled: Set(true),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shared_model_is_created_updated_and_deleted_everywhere() {
    let d = Devices::new(3).await;
    let (a, b, c) = (&d.nodes[0], &d.nodes[1], &d.nodes[2]);

    // device
    let dev = write!(a, |tx| {
        let r = tx.insert(new_device("Laptop", "laptop")).await.unwrap();
        r.gid
    });
    d.everywhere::<device::Model>(dev, |r| r.is_some()).await;
    update::<device::Model>(b, dev, |r| r.name = "Work laptop".into()).await;
    d.everywhere::<device::Model>(dev, |r| r.is_some_and(|r| r.name == "Work laptop"))
        .await;
    delete::<device::Model>(c, dev).await;
    d.everywhere::<device::Model>(dev, |r| r.is_none()).await;

    // tag
    let t = write!(a, |tx| {
        let r = tx.insert(new_tag("music")).await.unwrap();
        r.gid
    });
    d.everywhere::<tag::Model>(t, |r| r.is_some()).await;
    update::<tag::Model>(b, t, |r| r.color = Some("teal".into())).await;
    d.everywhere::<tag::Model>(t, |r| r.is_some_and(|r| r.color.as_deref() == Some("teal")))
        .await;

    // collection
    let coll = write!(b, |tx| {
        let r = tx
            .insert(collection::ActiveModel {
                gid: Set(Uuid::new_v4()),
                name: Set("trip".into()),
                description: Set(None),
                ..Default::default()
            })
            .await
            .unwrap();
        r.gid
    });
    d.everywhere::<collection::Model>(coll, |r| r.is_some())
        .await;
    update::<collection::Model>(c, coll, |r| r.description = Some("summer".into())).await;
    d.everywhere::<collection::Model>(coll, |r| {
        r.is_some_and(|r| r.description.as_deref() == Some("summer"))
    })
    .await;

    // user metadata and its tag
    let (meta, mtag) = write!(c, |tx| {
        let m = tx
            .insert(user_metadata::ActiveModel {
                gid: Set(Uuid::new_v4()),
                scope: Set("content".into()),
                notes: Set(Some("first".into())),
                favorite: Set(false),
                hidden: Set(false),
                custom_data: Set(serde_json::json!({"k": 1})),
                ..Default::default()
            })
            .await
            .unwrap();
        let local_tag = tag::Model::find_by_id(tx.connection(), t)
            .await
            .unwrap()
            .unwrap();
        let mt = tx
            .insert(user_metadata_tag::ActiveModel {
                gid: Set(Uuid::new_v4()),
                user_metadata_id: Set(m.id),
                tag_id: Set(local_tag.id),
                source: Set(user_metadata_tag::Source::Import),
                confidence: Set(0.25),
                ..Default::default()
            })
            .await
            .unwrap();
        (m.gid, mt.gid)
    });
    d.everywhere::<user_metadata_tag::Model>(mtag, |r| r.is_some_and(|r| r.confidence == 0.25))
        .await;
    update::<user_metadata::Model>(a, meta, |r| r.favorite = true).await;
    update::<user_metadata_tag::Model>(b, mtag, |r| r.source = user_metadata_tag::Source::User)
        .await;
    d.everywhere::<user_metadata::Model>(meta, |r| r.is_some_and(|r| r.favorite))
        .await;
    d.everywhere::<user_metadata_tag::Model>(mtag, |r| {
        r.is_some_and(|r| r.source == user_metadata_tag::Source::User)
    })
    .await;
    // Deleting the tag takes the rows that need it along, everywhere.
    delete::<tag::Model>(a, t).await;
    d.everywhere::<tag::Model>(t, |r| r.is_none()).await;
    d.everywhere::<user_metadata_tag::Model>(mtag, |r| r.is_none())
        .await;
    delete::<user_metadata::Model>(b, meta).await;
    d.everywhere::<user_metadata::Model>(meta, |r| r.is_none())
        .await;
    delete::<collection::Model>(a, coll).await;
    d.everywhere::<collection::Model>(coll, |r| r.is_none())
        .await;
    d.settle().await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_owned_models_and_joins_sync_and_follow_their_owner() {
    let d = Devices::new(3).await;
    let (a, b, c) = (&d.nodes[0], &d.nodes[1], &d.nodes[2]);
    let tree = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tree.path().join("photos/2024")).unwrap();
    std::fs::write(tree.path().join("photos/cat.jpg"), b"meow").unwrap();
    std::fs::write(tree.path().join("photos/2024/dog.png"), b"woof").unwrap();
    std::fs::write(tree.path().join("notes.txt"), b"hello").unwrap();
    let (loc, n) = library::index_directory(a.engine(), tree.path(), |_| {})
        .await
        .unwrap();
    assert_eq!(n, 6);
    d.everywhere::<location::Model>(loc, |r| {
        r.is_some_and(|l| l.root_entry_id.is_some() && l.total_file_count == 3)
    })
    .await;
    d.settle().await;
    let cat = entry::Entity::find()
        .all(b.engine().database())
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.name == "cat")
        .unwrap();
    let vol = volume::Entity::find()
        .one(c.engine().database())
        .await
        .unwrap()
        .unwrap();

    // The owner updates its rows; everyone sees it.
    update::<location::Model>(a, loc, |l| l.index_mode = location::IndexMode::Shallow).await;
    d.everywhere::<location::Model>(loc, |r| {
        r.is_some_and(|l| l.index_mode == location::IndexMode::Shallow)
    })
    .await;
    update::<volume::Model>(a, vol.gid, |v| v.display_name = "Backup".into()).await;
    update::<entry::Model>(a, cat.gid, |e| e.size = 99).await;
    d.everywhere::<volume::Model>(vol.gid, |r| r.is_some_and(|v| v.display_name == "Backup"))
        .await;
    d.everywhere::<entry::Model>(cat.gid, |r| r.is_some_and(|e| e.size == 99))
        .await;

    // Another device puts the owner's entry in a collection (a shared row
    // that needs a device-owned one)...
    let ce = collect_entry(b, "pets", cat.gid).await;
    d.everywhere::<collection_entry::Model>(ce, |r| r.is_some())
        .await;
    // ...and only the owner may change the entry.
    let mut tx = b.engine().begin().await.unwrap();
    let mut stolen = entry::Model::find_by_id(tx.connection(), cat.gid)
        .await
        .unwrap()
        .unwrap();
    stolen.name = "mine".into();
    assert!(tx.update(stolen).await.is_err());
    drop(tx);

    // The owner deletes the entry: the collection entry goes with it on
    // every device, and so does a concurrent one made by c.
    let late = collect_entry(c, "late", cat.gid).await;
    delete::<entry::Model>(a, cat.gid).await;
    d.everywhere::<entry::Model>(cat.gid, |r| r.is_none()).await;
    d.everywhere::<collection_entry::Model>(ce, |r| r.is_none())
        .await;
    d.everywhere::<collection_entry::Model>(late, |r| r.is_none())
        .await;

    // Deleting the location takes its entries on every device.
    delete::<location::Model>(a, loc).await;
    d.everywhere::<location::Model>(loc, |r| r.is_none()).await;
    d.settle().await;
    for n in &d.nodes {
        assert_eq!(
            entry::Entity::find()
                .all(n.engine().database())
                .await
                .unwrap()
                .len(),
            0
        );
    }
    delete::<volume::Model>(a, vol.gid).await;
    d.everywhere::<volume::Model>(vol.gid, |r| r.is_none())
        .await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_location_entry_cycle_arrives_in_any_order() {
    // The index travels in reverse: every entry before its location, the
    // location's root entry before the entry exists.
    let dir = tempfile::tempdir().unwrap();
    let a = start(dir.path(), "a").await;
    let b = start(dir.path(), "b").await;
    let mut committed = a.engine().subscribe();
    let tree = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tree.path().join("x/y")).unwrap();
    std::fs::write(tree.path().join("x/y/z.txt"), b"z").unwrap();
    library::index_directory(a.engine(), tree.path(), |_| {})
        .await
        .unwrap();
    let mut changes = Vec::new();
    while let Ok(batch) = committed.try_recv() {
        changes.extend(batch.changes.iter().cloned());
    }
    changes.reverse();
    for change in changes {
        let report = b.engine().apply(vec![change]).await.unwrap();
        assert!(report.rejected.is_empty());
    }
    assert_eq!(b.engine().parked_len(), 0);
    assert_eq!(
        a.engine().content().await.unwrap(),
        b.engine().content().await.unwrap()
    );
    let loc = location::Entity::find()
        .one(b.engine().database())
        .await
        .unwrap()
        .unwrap();
    assert!(loc.root_entry_id.is_some());
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_columns_are_settled_alike_on_every_device() {
    // Two devices pick the same slug before they ever meet.
    let dir = tempfile::tempdir().unwrap();
    let a = start(dir.path(), "a").await;
    let b = start(dir.path(), "b").await;
    let first = write!(a, |tx| {
        let r = tx.insert(new_device("Mac", "studio")).await.unwrap();
        r.gid
    });
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = write!(b, |tx| {
        let r = tx.insert(new_device("PC", "studio")).await.unwrap();
        r.gid
    });
    pair(&a, &b).await;
    let d2 = Devices {
        _dir: dir,
        nodes: vec![a.clone(), b.clone()],
    };
    d2.settle().await;
    let slug = |n: &Node, id: Uuid| {
        let db = n.engine().database().clone();
        async move {
            device::Model::find_by_id(&db, id)
                .await
                .unwrap()
                .unwrap()
                .slug
        }
    };
    for n in [&a, &b] {
        assert_eq!(
            slug(n, second).await,
            "studio",
            "the later write keeps the slug"
        );
        assert_eq!(
            slug(n, first).await,
            format!("studio~{}", &first.simple().to_string()[..8])
        );
    }
    let conflicts = a.engine().conflicts().await.unwrap();
    assert!(
        conflicts
            .iter()
            .any(|c| c.kind == ConflictKind::Unique && c.record == first)
    );

    // The owner swaps two entries' names while b is away; b catches up with
    // only the final states.
    let tree = tempfile::tempdir().unwrap();
    std::fs::write(tree.path().join("left.txt"), b"l").unwrap();
    std::fs::write(tree.path().join("right.txt"), b"r").unwrap();
    library::index_directory(a.engine(), tree.path(), |_| {})
        .await
        .unwrap();
    d2.settle().await;
    b.shutdown().await;
    let files: Vec<entry::Model> = entry::Entity::find()
        .all(a.engine().database())
        .await
        .unwrap();
    let left = files.iter().find(|e| e.name == "left").unwrap().gid;
    let right = files.iter().find(|e| e.name == "right").unwrap().gid;
    update::<entry::Model>(&a, left, |e| e.name = "swap".into()).await;
    update::<entry::Model>(&a, right, |e| e.name = "left".into()).await;
    update::<entry::Model>(&a, left, |e| e.name = "right".into()).await;
    let path = b.dir().to_owned();
    let db = library::open_database(&path.join("library.sqlite"))
        .await
        .unwrap();
    let mut config = NodeConfig::new(LIBRARY, "127.0.0.1:0".parse().unwrap());
    config.anti_entropy = Duration::from_millis(500);
    let b2 = Node::start(db, &path, config).await.unwrap();
    let pair_ab = Devices {
        _dir: tempfile::tempdir().unwrap(),
        nodes: vec![a.clone(), b2.clone()],
    };
    pair_ab.settle().await;
    let name = |id| {
        let db = b2.engine().database().clone();
        async move {
            entry::Model::find_by_id(&db, id)
                .await
                .unwrap()
                .unwrap()
                .name
        }
    };
    assert_eq!(name(left).await, "right");
    assert_eq!(name(right).await, "left");
    a.shutdown().await;
    b2.shutdown().await;
}
