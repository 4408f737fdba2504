//! QUIC transport for Syncable (quinn, rustls with the ring provider).
//!
//! The transport moves the engine's messages between paired devices; it never
//! decides what to sync. A [`Node`] embeds it in a few lines: open the
//! database, start the endpoint, pair, run.

mod codec;
mod error;
mod identity;
mod node;
mod pairing;
mod tls;

pub use codec::{
    COMPRESS_ABOVE, COMPRESSED, FrameError, HEADER_BYTES, MAX_FRAME_BYTES, read_message,
    write_message,
};
pub use error::NetError;
pub use identity::{Fingerprint, Identity};
pub use node::{LinkStats, Node, NodeConfig};
pub use pairing::{PairingCode, PeerRecord};
pub use tls::{ALPN_PAIR, ALPN_SYNC, close_code, dial, install_provider};
