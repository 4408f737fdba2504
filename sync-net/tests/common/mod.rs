//! What the QUIC tests share: two models, nodes over SQLite files in a
//! temporary directory, pairing, and waiting for a condition.
#![allow(dead_code)]

pub mod relay;

use std::path::Path;
use std::time::Duration;

use sea_orm::{ActiveValue::Set, ConnectOptions, ConnectionTrait, Database, Schema};
use sync_core::SyncModel;
use sync_net::{Node, NodeConfig};
use uuid::Uuid;

mod models;
pub use models::{tag, volume};

pub const LIBRARY: Uuid = Uuid::from_u128(0x5EED);

pub async fn start(dir: &Path) -> Node {
    start_with(dir, |c| c).await
}

pub async fn start_with(dir: &Path, tune: impl FnOnce(NodeConfig) -> NodeConfig) -> Node {
    std::fs::create_dir_all(dir).unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.join("library.sqlite").display());
    let mut options = ConnectOptions::new(url);
    options.max_connections(1).sqlx_logging(false);
    let db = Database::connect(options).await.unwrap();
    let schema = Schema::new(db.get_database_backend());
    for mut stmt in [
        schema.create_table_from_entity(tag::Entity),
        schema.create_table_from_entity(volume::Entity),
    ] {
        stmt.if_not_exists();
        db.execute(&stmt).await.unwrap();
    }
    let mut config = NodeConfig::new(LIBRARY, "127.0.0.1:0".parse().unwrap());
    config.heartbeat = Duration::from_millis(200);
    config.anti_entropy = Duration::from_millis(500);
    Node::start(db, dir, tune(config)).await.unwrap()
}

pub async fn pair(a: &Node, b: &Node) {
    let code = a.invite().unwrap();
    let text = code.encode().unwrap();
    let code = sync_net::PairingCode::decode(&text).unwrap();
    assert_eq!(b.accept(&code).await.unwrap(), a.device());
}

/// Waits for a condition that the system must reach; the bound only keeps a
/// broken build from hanging, it measures nothing.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never happened: {what}");
}

pub async fn converged(nodes: &[&Node]) -> bool {
    let mut contents = Vec::new();
    for n in nodes {
        contents.push(n.engine().content().await.unwrap());
    }
    contents.windows(2).all(|w| w[0] == w[1])
}

pub async fn write_tags(node: &Node, n: usize, prefix: &str) -> Vec<Uuid> {
    let mut tx = node.engine().begin().await.unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        let gid = Uuid::new_v4();
        tx.insert(tag::ActiveModel {
            gid: Set(gid),
            name: Set(format!("{prefix}{i}")),
            color: Set(None),
            ..Default::default()
        })
        .await
        .unwrap();
        ids.push(gid);
    }
    tx.commit().await.unwrap();
    ids
}

pub async fn add_volume(node: &Node, name: &str) {
    let mut tx = node.engine().begin().await.unwrap();
    tx.insert(volume::ActiveModel {
        gid: Set(Uuid::new_v4()),
        device: Set(node.device()),
        name: Set(name.into()),
        ..Default::default()
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

pub async fn rename(node: &Node, id: Uuid, name: &str) {
    let mut tx = node.engine().begin().await.unwrap();
    let mut row = tag::Model::find_by_id(tx.connection(), id)
        .await
        .unwrap()
        .unwrap();
    row.name = name.into();
    tx.update(row).await.unwrap();
    tx.commit().await.unwrap();
}

pub async fn tag_count(node: &Node) -> u64 {
    use sea_orm::{EntityTrait, PaginatorTrait};
    tag::Entity::find()
        .count(node.engine().database())
        .await
        .unwrap()
}

/// Every one of `written` is on every node.
pub async fn assert_everywhere(nodes: &[Node], written: &[Uuid]) {
    for id in written {
        for node in nodes {
            assert!(
                tag::Model::find_by_id(node.engine().database(), *id)
                    .await
                    .unwrap()
                    .is_some(),
                "{id} missing on {}",
                node.device()
            );
        }
    }
}
