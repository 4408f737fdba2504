//! Device keys: an Ed25519 key pair per device, and device ids derived from
//! public keys, so that an id names one key and no one can claim an
//! existing id for another key.

use std::fmt;
use std::sync::Arc;

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A device's public key (Ed25519, 32 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublicKey(#[serde(with = "serde_bytes")] pub [u8; 32]);

impl PublicKey {
    /// The device id this key names: the first 16 bytes of a domain-separated
    /// hash of the key, as a version 8 UUID.
    pub fn device(&self) -> Uuid {
        let mut hasher = blake3::Hasher::new_derive_key("syncable device id v1");
        hasher.update(&self.0);
        let digest = hasher.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest.as_bytes()[..16]);
        uuid::Builder::from_custom_bytes(bytes).into_uuid()
    }

    /// Whether `signature` is this key's over `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, signature)
            .is_ok()
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey(")?;
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// A key that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid device key: {0}")]
pub struct KeyError(String);

/// A device's signing key. The device id is derived from its public key
/// ([`PublicKey::device`]).
#[derive(Clone)]
pub struct DeviceKey {
    pair: Arc<Ed25519KeyPair>,
    public: PublicKey,
}

impl fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceKey")
            .field("device", &self.device())
            .finish_non_exhaustive()
    }
}

impl DeviceKey {
    fn from_pair(pair: Ed25519KeyPair) -> Result<Self, KeyError> {
        let bytes: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| KeyError("an Ed25519 public key is 32 bytes".into()))?;
        Ok(Self {
            pair: Arc::new(pair),
            public: PublicKey(bytes),
        })
    }

    /// A new random key, with its PKCS#8 encoding (to persist it).
    pub fn generate() -> Result<(Self, Vec<u8>), KeyError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| KeyError("no randomness for a key".into()))?;
        let key = Self::from_pkcs8(pkcs8.as_ref())?;
        Ok((key, pkcs8.as_ref().to_vec()))
    }

    /// A key from its PKCS#8 encoding (v1 or v2).
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, KeyError> {
        let pair =
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|e| KeyError(e.to_string()))?;
        Self::from_pair(pair)
    }

    /// A key from a 32-byte seed: the same seed gives the same key (tests
    /// and deterministic simulations; a real device generates its key).
    pub fn from_seed(seed: [u8; 32]) -> Result<Self, KeyError> {
        let pair =
            Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|e| KeyError(e.to_string()))?;
        Self::from_pair(pair)
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The device id this key names.
    pub fn device(&self) -> Uuid {
        self.public.device()
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_derive_from_keys_and_signatures_bind_to_them() {
        let a = DeviceKey::from_seed([1; 32]).unwrap();
        let b = DeviceKey::from_seed([2; 32]).unwrap();
        assert_eq!(a.device(), DeviceKey::from_seed([1; 32]).unwrap().device());
        assert_ne!(a.device(), b.device());
        assert_eq!(a.device().get_version_num(), 8);
        let sig = a.sign(b"hello");
        assert!(a.public().verifies(b"hello", &sig));
        assert!(!a.public().verifies(b"hellO", &sig));
        assert!(!b.public().verifies(b"hello", &sig));
        let (g, der) = DeviceKey::generate().unwrap();
        assert_eq!(DeviceKey::from_pkcs8(&der).unwrap().public(), g.public());
    }
}
