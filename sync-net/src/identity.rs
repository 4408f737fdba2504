//! A device's identity: its id and a persisted key pair with a self-signed
//! certificate. Peers pin the certificate's fingerprint when they pair.

use std::fmt;
use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use sync_core::DeviceKey;
use uuid::Uuid;

use crate::error::NetError;

/// The SHA-256 of a device's certificate: what a peer pins.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a certificate.
    pub fn of(cert: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, cert);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// This device's id, key and certificate. The key is Ed25519; it signs the
/// TLS handshakes and the device's commits, and the device id is derived
/// from it ([`sync_core::PublicKey::device`]), so no one can claim the id
/// without the key.
pub struct Identity {
    device: Uuid,
    signing: DeviceKey,
    key: Vec<u8>,
    cert: Vec<u8>,
    fingerprint: Fingerprint,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("device", &self.device)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Option<Vec<u8>>, NetError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(NetError::File {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes a file atomically and durably: the bytes go to a temporary file
/// in the same directory, which is fsynced, renamed over `path`, and the
/// directory fsynced, so a crash or power loss leaves the old file or the
/// new one, never a torn or empty one. `secret` files are created readable
/// by their owner only (0600 on Unix) from the first byte.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], secret: bool) -> Result<(), NetError> {
    use std::io::Write;
    let tmp: PathBuf = path.with_extension("tmp");
    let file_error = |source| NetError::File {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(&tmp).map_err(file_error)?;
    file.write_all(bytes).map_err(file_error)?;
    file.sync_all().map_err(file_error)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(file_error)?;
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(file_error)?;
    }
    Ok(())
}

impl Identity {
    /// Loads the identity in `dir`, creating it (a new key, the device id
    /// it names, and a certificate) on first use.
    pub fn load_or_create(dir: &Path) -> Result<Self, NetError> {
        std::fs::create_dir_all(dir).map_err(|source| NetError::File {
            path: dir.to_owned(),
            source,
        })?;
        let id_path = dir.join("device.id");
        let key_path = dir.join("identity.key");
        let cert_path = dir.join("identity.crt");
        if let (Some(id), Some(key), Some(cert)) =
            (read(&id_path)?, read(&key_path)?, read(&cert_path)?)
        {
            let signing = DeviceKey::from_pkcs8(&key).map_err(|e| NetError::Corrupt {
                path: key_path.clone(),
                reason: format!(
                    "{e} (an identity made before device keys were Ed25519: move the data \
                     directory away and pair the device again)"
                ),
            })?;
            let text = String::from_utf8_lossy(&id);
            let stored = Uuid::parse_str(text.trim()).map_err(|e| NetError::Corrupt {
                path: id_path.clone(),
                reason: e.to_string(),
            })?;
            if stored != signing.device() {
                return Err(NetError::Corrupt {
                    path: id_path,
                    reason: format!(
                        "device id {stored} is not the one its key names ({})",
                        signing.device()
                    ),
                });
            }
            if crate::tls::cert_key(&cert) != Some(signing.public()) {
                return Err(NetError::Corrupt {
                    path: cert_path,
                    reason: "the certificate is not for this device's key".into(),
                });
            }
            return Ok(Self {
                device: stored,
                signing,
                fingerprint: Fingerprint::of(&cert),
                key,
                cert,
            });
        }
        let (signing, key) =
            DeviceKey::generate().map_err(|e| NetError::Certificate(e.to_string()))?;
        let device = signing.device();
        let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
            &rustls::pki_types::PrivatePkcs8KeyDer::from(key.as_slice()),
            &rcgen::PKCS_ED25519,
        )
        .map_err(|e| NetError::Certificate(e.to_string()))?;
        let params = rcgen::CertificateParams::new(vec![format!("{device}.syncable")])
            .map_err(|e| NetError::Certificate(e.to_string()))?;
        let cert = params
            .self_signed(&key_pair)
            .map_err(|e| NetError::Certificate(e.to_string()))?;
        let cert = cert.der().to_vec();
        write_atomic(&key_path, &key, true)?;
        write_atomic(&cert_path, &cert, false)?;
        write_atomic(&id_path, device.to_string().as_bytes(), false)?;
        Ok(Self {
            device,
            signing,
            fingerprint: Fingerprint::of(&cert),
            key,
            cert,
        })
    }

    /// The key that signs this device's commits (and its TLS handshakes).
    pub fn signing_key(&self) -> &DeviceKey {
        &self.signing
    }

    /// The device id.
    pub fn device(&self) -> Uuid {
        self.device
    }

    /// The certificate's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    pub(crate) fn cert_chain(&self) -> Vec<CertificateDer<'static>> {
        vec![CertificateDer::from(self.cert.clone())]
    }

    pub(crate) fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()))
    }
}
