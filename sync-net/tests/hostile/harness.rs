//! The hostile-input harness shared by the stable property test
//! (`sync-net/tests/hostile.rs`, run by `cargo test`) and the cargo-fuzz
//! targets (`fuzz/`, nightly): the same seeds, the same three entry points,
//! the same checks.
//!
//! - [`Harness::frames`]: bytes as a stream of frames, read as a link reads
//!   them: each frame decodes or is refused with an error; nothing panics,
//!   and no buffer grows ahead of the bytes that arrived.
//! - [`Harness::message`]: bytes as one message payload.
//! - [`Harness::apply`]: bytes as frames whose batches a device applies, as
//!   a session does with a push or a page: an input that applies nothing
//!   leaves the device's data exactly as it was.
//!
//! The seeds are real frames: a device's hello and pushes of inserts,
//! updates and deletes of a shared and a device-owned model, signed by it;
//! the receiving device is paired with it, so an intact seed applies and a
//! mutated one is refused by its decoder, its seal or its claim.

use sea_orm::{ActiveValue::Set, ConnectOptions, ConnectionTrait, Database, Schema};
use sync_core::{DeviceKey, Engine, EngineConfig, Message, Session, SessionConfig, SyncModel};
use uuid::Uuid;

#[path = "../common/models.rs"]
mod models;
pub use models::{tag, volume};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The harness of this process, built on first use (test threads and
/// fuzz iterations share it).
pub fn shared() -> &'static Harness {
    static SHARED: std::sync::OnceLock<Harness> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| match Harness::new() {
        Ok(h) => h,
        Err(e) => panic!("the hostile-input harness could not start: {e}"),
    })
}

/// A device under attack, and the seeds inputs are made from.
pub struct Harness {
    rt: tokio::runtime::Runtime,
    target: Engine,
    seeds: Vec<Vec<u8>>,
    /// One input at a time (tests share a harness across threads): the
    /// data compared before and after is this input's doing alone.
    applying: std::sync::Mutex<()>,
}

async fn database() -> Result<sea_orm::DatabaseConnection, Error> {
    let mut options = ConnectOptions::new("sqlite::memory:");
    options.max_connections(1).sqlx_logging(false);
    let db = Database::connect(options).await?;
    let backend = db.get_database_backend();
    let schema = Schema::new(backend);
    for stmt in [
        schema.create_table_from_entity(tag::Entity),
        schema.create_table_from_entity(volume::Entity),
    ] {
        db.execute(&stmt).await?;
    }
    Ok(db)
}

async fn engine(seed: u8) -> Result<Engine, Error> {
    let key = DeviceKey::from_seed([seed; 32])?;
    Ok(Engine::open(database().await?, key, EngineConfig::new()).await?)
}

async fn frame(message: &Message) -> Result<Vec<u8>, Error> {
    let mut bytes = Vec::new();
    sync_net::write_message(&mut bytes, message).await?;
    Ok(bytes)
}

/// The library the harness's devices sync.
const LIBRARY: Uuid = Uuid::from_u128(0xF022);

impl Harness {
    /// A source device writes on both models; its frames are the seeds. The
    /// target device is paired with it.
    pub fn new() -> Result<Self, Error> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (target, seeds) = rt.block_on(async {
            let source = engine(1).await?;
            let target = engine(2).await?;
            source.pair(target.device()).await?;
            target.pair(source.device()).await?;
            let mut commits = source.subscribe();
            let mut seeds = Vec::new();
            let mut session = Session::new(source.clone(), SessionConfig::new(LIBRARY));
            for m in session.start().await? {
                seeds.push(frame(&m).await?);
            }
            let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
            let mut tx = source.begin().await?;
            for (i, id) in ids.iter().enumerate() {
                tx.insert(tag::ActiveModel {
                    gid: Set(*id),
                    name: Set(format!("tag {i}")),
                    color: Set((i % 2 == 0).then(|| "red".into())),
                    ..Default::default()
                })
                .await?;
            }
            tx.insert(volume::ActiveModel {
                gid: Set(Uuid::new_v4()),
                device: Set(source.device()),
                name: Set("disk".into()),
                ..Default::default()
            })
            .await?;
            tx.commit().await?;
            let mut tx = source.begin().await?;
            if let Some(mut row) = tag::Model::find_by_id(tx.connection(), ids[0]).await? {
                row.name = "renamed".into();
                tx.update(row).await?;
            }
            tx.delete::<tag::Model>(ids[1]).await?;
            tx.commit().await?;
            while let Ok(commit) = commits.try_recv() {
                for m in commit.pushes() {
                    seeds.push(frame(&m).await?);
                }
            }
            Ok::<_, Error>((target, seeds))
        })?;
        Ok(Self {
            rt,
            target,
            seeds,
            applying: std::sync::Mutex::new(()),
        })
    }

    /// Valid frames: a hello and the pushes of two commits.
    pub fn seeds(&self) -> &[Vec<u8>] {
        &self.seeds
    }

    /// Reads `bytes` as a link reads a stream: frame after frame until one
    /// is refused or the bytes end. Returns the messages decoded.
    pub fn frames(&self, bytes: &[u8]) -> Vec<Message> {
        self.rt.block_on(read_all(bytes))
    }

    /// Decodes `bytes` as one message payload.
    pub fn message(bytes: &[u8]) -> Option<Message> {
        sync_core::decode(bytes).ok()
    }

    /// Applies the batches of every push or page in `bytes`. `Err` if an
    /// input that applied nothing changed the device's data.
    pub fn apply(&self, bytes: &[u8]) -> Result<(), String> {
        let _one = self
            .applying
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.rt.block_on(async {
            for message in read_all(bytes).await {
                let batches = match message {
                    Message::Push(p) => p.batches,
                    Message::PullResponse(p) => p.batches,
                    _ => continue,
                };
                let before = self.target.content().await.map_err(|e| e.to_string())?;
                let applied =
                    sync_core::__private::steps::apply_batches(&self.target, batches).await;
                let after = self.target.content().await.map_err(|e| e.to_string())?;
                let merged = applied.as_ref().map_or(0, |r| r.merged());
                if merged == 0 && before != after {
                    return Err(format!(
                        "an input that applied nothing ({applied:?}) changed the data"
                    ));
                }
            }
            Ok(())
        })
    }

    /// The target device, for checks beyond the harness's own.
    pub fn target(&self) -> &Engine {
        &self.target
    }
}

async fn read_all(bytes: &[u8]) -> Vec<Message> {
    let mut reader = bytes;
    let mut out = Vec::new();
    while let Ok(m) = sync_net::read_message(&mut reader).await {
        out.push(m);
    }
    out
}
