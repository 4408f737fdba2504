//! Transport errors.

use uuid::Uuid;

use crate::codec::FrameError;

/// A transport operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A file in the data directory could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file in the data directory is damaged.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Generating the device's certificate failed.
    #[error("certificate: {0}")]
    Certificate(String),
    /// Configuring TLS or QUIC failed.
    #[error("tls: {0}")]
    Tls(String),
    /// Binding or using the endpoint failed.
    #[error("endpoint: {0}")]
    Endpoint(String),
    /// Connecting to a peer failed.
    #[error("connecting to {addr}: {reason}")]
    Connect {
        /// The address dialled.
        addr: std::net::SocketAddr,
        /// Why it failed.
        reason: String,
    },
    /// A connection ended.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// A frame could not be read or written.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] sync_core::EngineError),
    /// A pairing code that does not decode.
    #[error("invalid pairing code: {0}")]
    BadCode(String),
    /// A pairing code for another library.
    #[error("the pairing code is for library {code}, this device syncs {ours}")]
    WrongLibrary {
        /// The code's library.
        code: Uuid,
        /// Ours.
        ours: Uuid,
    },
    /// The other device refused to pair.
    #[error("pairing refused: {0}")]
    PairingRefused(String),
    /// The node is shutting down.
    #[error("the node is shut down")]
    Shutdown,
    /// The node is paused (offline): it connects to nobody until resumed.
    #[error("the node is paused; resume it to connect")]
    Paused,
}
