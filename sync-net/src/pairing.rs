//! Pairing: one device prints a code, the other accepts it, and from then on
//! each pins the other's certificate. The code carries the inviting device's
//! id, library, certificate fingerprint and address, and a one-time token
//! that proves the accepting device saw the code.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use uuid::Uuid;

use crate::error::NetError;
use crate::identity::{Fingerprint, Identity, write_atomic};
use crate::tls;

const CODE_PREFIX: &str = "SYNC-";
/// The largest pairing message accepted.
const MAX_PAIR_MESSAGE: usize = 4 * 1024;

/// An invitation to pair with a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingCode {
    /// The inviting device.
    pub device: Uuid,
    /// Its library.
    pub library: Uuid,
    /// Its certificate's fingerprint.
    pub fingerprint: Fingerprint,
    /// Where it listens.
    pub addr: SocketAddr,
    /// A one-time secret.
    pub token: [u8; 16],
}

impl PairingCode {
    /// The code as text to show a user.
    pub fn encode(&self) -> Result<String, NetError> {
        let bytes = rmp_serde::to_vec(self).map_err(|e| NetError::BadCode(e.to_string()))?;
        Ok(format!(
            "{CODE_PREFIX}{}",
            data_encoding::BASE32_NOPAD.encode(&bytes)
        ))
    }

    /// Reads a code a user typed or pasted.
    pub fn decode(text: &str) -> Result<Self, NetError> {
        let body = text
            .trim()
            .strip_prefix(CODE_PREFIX)
            .ok_or_else(|| NetError::BadCode(format!("a code starts with {CODE_PREFIX}")))?;
        if body.len() > MAX_PAIR_MESSAGE {
            return Err(NetError::BadCode("too long".into()));
        }
        let bytes = data_encoding::BASE32_NOPAD
            .decode(body.as_bytes())
            .map_err(|e| NetError::BadCode(e.to_string()))?;
        rmp_serde::from_slice(&bytes).map_err(|e| NetError::BadCode(e.to_string()))
    }
}

/// What the accepting device sends over a pairing connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PairRequest {
    pub(crate) device: Uuid,
    pub(crate) library: Uuid,
    pub(crate) token: [u8; 16],
    pub(crate) addr: Option<SocketAddr>,
}

/// The inviting device's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum PairReply {
    Accepted { device: Uuid },
    Refused { reason: String },
}

pub(crate) async fn write_pair<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    value: &T,
) -> Result<(), NetError> {
    let bytes = rmp_serde::to_vec(value).map_err(|e| NetError::PairingRefused(e.to_string()))?;
    let len = u32::try_from(bytes.len())
        .map_err(|_| NetError::PairingRefused("message too large".into()))?;
    let io = |e: std::io::Error| NetError::PairingRefused(e.to_string());
    w.write_all(&len.to_be_bytes()).await.map_err(io)?;
    w.write_all(&bytes).await.map_err(io)?;
    w.flush().await.map_err(io)
}

pub(crate) async fn read_pair<R: AsyncRead + Unpin, T: for<'de> Deserialize<'de>>(
    r: &mut R,
) -> Result<T, NetError> {
    let io = |e: std::io::Error| NetError::PairingRefused(e.to_string());
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.map_err(io)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_PAIR_MESSAGE {
        return Err(NetError::PairingRefused(format!(
            "pairing message of {len} bytes"
        )));
    }
    let mut bytes = vec![0u8; len];
    r.read_exact(&mut bytes).await.map_err(io)?;
    rmp_serde::from_slice(&bytes).map_err(|e| NetError::PairingRefused(e.to_string()))
}

/// Asks the device that printed `code` to pair with `device` (this
/// device, as `identity`): connects with the pairing protocol, checks that
/// the inviting device's key names the code's device, and sends the
/// request. Returns the answer.
pub(crate) async fn request(
    endpoint: &quinn::Endpoint,
    identity: &Identity,
    code: &PairingCode,
    device: Uuid,
    addr: Option<SocketAddr>,
    deadline: std::time::Duration,
) -> Result<PairReply, NetError> {
    let client = tls::client_config(identity, code.fingerprint, tls::ALPN_PAIR)?;
    let connect = |e: String| NetError::Connect {
        addr: code.addr,
        reason: e,
    };
    let connection = endpoint
        .connect_with(client, code.addr, "syncable")
        .map_err(|e| connect(e.to_string()))?
        .await
        .map_err(|e| connect(e.to_string()))?;
    if tls::peer_device(&connection) != Some(code.device) {
        connection.close(tls::close_code::PROTOCOL.into(), b"wrong device");
        return Err(NetError::PairingRefused(format!(
            "the inviting device's key does not name {}",
            code.device
        )));
    }
    let exchange = async {
        let (mut send, mut recv) = connection.open_bi().await?;
        write_pair(
            &mut send,
            &PairRequest {
                device,
                library: code.library,
                token: code.token,
                addr,
            },
        )
        .await?;
        read_pair::<_, PairReply>(&mut recv).await
    };
    let reply = tokio::time::timeout(deadline, exchange)
        .await
        .map_err(|_| NetError::PairingRefused("the inviting device did not answer".into()))?;
    connection.close(0u32.into(), b"paired");
    reply
}

/// A pairing request in any device's name, from a throwaway endpoint:
/// what a holder of a code could send (tests of what the inviting side
/// refuses). Returns the answer: the inviting device's id, or its refusal.
#[doc(hidden)]
pub async fn request_as(
    identity: &Identity,
    code: &PairingCode,
    device: Uuid,
) -> Result<Uuid, NetError> {
    tls::install_provider();
    let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))
        .map_err(|e| NetError::Endpoint(e.to_string()))?;
    match request(
        &endpoint,
        identity,
        code,
        device,
        None,
        std::time::Duration::from_secs(10),
    )
    .await?
    {
        PairReply::Accepted { device } => Ok(device),
        PairReply::Refused { reason } => Err(NetError::PairingRefused(reason)),
    }
}

/// A paired peer as remembered in the data directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    /// The peer's device id.
    pub device: Uuid,
    /// Its pinned certificate fingerprint.
    pub fingerprint: Fingerprint,
    /// Where it was last reached.
    pub addr: Option<SocketAddr>,
}

/// The paired peers, persisted as `peers.json` in the data directory.
#[derive(Debug)]
pub(crate) struct PeerStore {
    path: PathBuf,
    peers: Vec<PeerRecord>,
}

impl PeerStore {
    pub(crate) fn load(dir: &Path) -> Result<Self, NetError> {
        let path = dir.join("peers.json");
        let peers = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| NetError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(NetError::File { path, source }),
        };
        Ok(Self { path, peers })
    }

    fn save(&self) -> Result<(), NetError> {
        let bytes = serde_json::to_vec_pretty(&self.peers).map_err(|e| NetError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&self.path, &bytes, false)
    }

    pub(crate) fn all(&self) -> &[PeerRecord] {
        &self.peers
    }

    pub(crate) fn by_fingerprint(&self, fingerprint: Fingerprint) -> Option<&PeerRecord> {
        self.peers.iter().find(|p| p.fingerprint == fingerprint)
    }

    /// Adds or replaces a peer.
    pub(crate) fn upsert(&mut self, record: PeerRecord) -> Result<(), NetError> {
        self.peers.retain(|p| p.device != record.device);
        self.peers.push(record);
        self.save()
    }

    /// Forgets a peer.
    pub(crate) fn remove(&mut self, device: Uuid) -> Result<(), NetError> {
        let before = self.peers.len();
        self.peers.retain(|p| p.device != device);
        if self.peers.len() != before {
            self.save()?;
        }
        Ok(())
    }

    /// Remembers where a peer was reached.
    pub(crate) fn set_addr(&mut self, device: Uuid, addr: SocketAddr) -> Result<(), NetError> {
        let mut changed = false;
        for p in &mut self.peers {
            if p.device == device && p.addr != Some(addr) {
                p.addr = Some(addr);
                changed = true;
            }
        }
        if changed {
            self.save()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_round_trips_through_text() {
        let code = PairingCode {
            device: Uuid::from_u128(1),
            library: Uuid::from_u128(2),
            fingerprint: Fingerprint([7; 32]),
            addr: "127.0.0.1:4433".parse().unwrap(),
            token: [9; 16],
        };
        let text = code.encode().unwrap();
        assert!(text.starts_with("SYNC-"));
        assert_eq!(PairingCode::decode(&text).unwrap(), code);
        assert!(PairingCode::decode("SYNC-!!!").is_err());
        assert!(PairingCode::decode("hello").is_err());
    }
}
