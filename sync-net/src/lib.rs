//! QUIC transport for Syncable (quinn, rustls with the ring provider).
//!
//! The transport moves the engine's messages between paired devices; it never
//! decides what to sync. A [`Node`] embeds it in a few lines: open the
//! database, start the endpoint, pair, run.
//!
//! ```no_run
//! # async fn run(db: sea_orm::DatabaseConnection, code_from_laptop: &str) -> Result<(), sync_net::NetError> {
//! use sync_net::{Node, NodeConfig, PairingCode};
//!
//! let library = uuid::Uuid::nil(); // shared by every device of the library
//! let config = NodeConfig::new(library, "0.0.0.0:0".parse().unwrap());
//! let node = Node::start(db, std::path::Path::new("./device-data"), config).await?;
//!
//! // On one device: print an invitation.
//! println!("{}", node.invite()?.encode()?);
//! // On the other: accept it. Both now sync, and reconnect on their own.
//! node.accept(&PairingCode::decode(code_from_laptop)?).await?;
//!
//! // Writes through the engine are pushed to every connected peer.
//! let mut tx = node.engine().begin().await?;
//! // tx.insert(...).await?;
//! tx.commit().await?;
//! node.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! What is in the data directory: `device.id`, the key pair
//! (`identity.key`, PKCS#8) and self-signed certificate (`identity.crt`),
//! and `peers.json` (paired devices: id, pinned fingerprint, last address).

mod codec;
mod error;
#[cfg(feature = "http")]
mod http;
mod identity;
mod node;
mod pairing;
mod pairing_server;
mod tls;

pub use codec::{
    COMPRESS_ABOVE, COMPRESSED, FrameError, HEADER_BYTES, MAX_FRAME_BYTES, read_message,
    read_message_within, write_message,
};
pub use error::NetError;
#[cfg(feature = "http")]
pub use http::HttpStatus;
pub use identity::{Fingerprint, Identity};
pub use node::{DEFAULT_RETENTION, LinkStats, Node, NodeConfig, NodeCounters};
pub use pairing::{PairingCode, PeerRecord, request_as};
pub use tls::{ALPN_PAIR, ALPN_SYNC, MAX_STREAMS, close_code, dial, dial_with, install_provider};
