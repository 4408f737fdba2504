//! TLS for QUIC with the ring provider only, and pinned certificates.
//!
//! The dialling side accepts exactly the certificate it expects (the peer's
//! pinned fingerprint, or the one in a pairing code). The accepting side
//! requires a client certificate and proves the client holds its key; which
//! certificates are welcome is decided right after the handshake, because
//! pairing admits a certificate not yet pinned: a sync connection from a
//! certificate that is not pinned is closed at once with
//! [`close_code::NOT_PAIRED`], before any message is read.

use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DistinguishedName, SignatureScheme};

use crate::error::NetError;
use crate::identity::{Fingerprint, Identity};

/// ALPN of a sync connection.
pub const ALPN_SYNC: &[u8] = b"syncable/1";
/// ALPN of a pairing connection.
pub const ALPN_PAIR: &[u8] = b"syncable-pair/1";

/// QUIC application close codes.
pub mod close_code {
    /// The device is not paired (or its library differs).
    pub const NOT_PAIRED: u32 = 0x51;
    /// The node is shutting down.
    pub const SHUTDOWN: u32 = 0x52;
    /// A protocol error ended the session.
    pub const PROTOCOL: u32 = 0x53;
    /// Another connection to the same peer replaced this one.
    pub const REPLACED: u32 = 0x54;
    /// Too many connections of this kind at once; try again later.
    pub const BUSY: u32 = 0x55;
    /// The device was removed from the library.
    pub const REMOVED: u32 = 0x56;
    /// The node went offline (paused); it dials again when resumed.
    pub const PAUSED: u32 = 0x57;
}

/// The ring crypto provider.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process's default rustls provider, so that no
/// rustls configuration built anywhere in the application panics for want
/// of one. Installing twice is harmless.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// The handshake-signature checks both verifiers share: the ring
/// provider's algorithms, in a field named `algorithms`.
macro_rules! signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algorithms.supported_schemes()
        }
    };
}

#[derive(Debug)]
struct AnyClientCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Trust is decided by fingerprint once the handshake (which proves
        // possession of the key) completes.
        Ok(ClientCertVerified::assertion())
    }

    signature_checks!();
}

#[derive(Debug)]
struct PinnedServer {
    expected: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if Fingerprint::of(end_entity.as_ref()) == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the peer's certificate is not the pinned one ({})",
                self.expected
            )))
        }
    }

    signature_checks!();
}

/// Streams a peer may have open at once on one connection. A link uses one
/// for its session and a few for side requests; each stream holds at most
/// one frame being read, so this bounds the memory a peer can pin.
pub const MAX_STREAMS: u32 = 4;

fn transport() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(MAX_STREAMS));
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    transport.keep_alive_interval(Some(std::time::Duration::from_secs(2)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(std::time::Duration::from_secs(10)) {
        transport.max_idle_timeout(Some(idle));
    }
    Arc::new(transport)
}

/// The accepting side's configuration.
pub(crate) fn server_config(identity: &Identity) -> Result<quinn::ServerConfig, NetError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?
        .with_client_cert_verifier(Arc::new(AnyClientCert {
            algorithms: algorithms(),
        }))
        .with_single_cert(identity.cert_chain(), identity.private_key())
        .map_err(|e| NetError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN_SYNC.to_vec(), ALPN_PAIR.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| NetError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport());
    Ok(config)
}

/// The dialling side's configuration for a peer whose certificate is
/// `expected`.
pub(crate) fn client_config(
    identity: &Identity,
    expected: Fingerprint,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, NetError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| NetError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServer {
            expected,
            algorithms: algorithms(),
        }))
        .with_client_auth_cert(identity.cert_chain(), identity.private_key())
        .map_err(|e| NetError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| NetError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport());
    Ok(config)
}

/// The Ed25519 public key a certificate is for, parsed from its subject
/// public key info (the key the TLS handshake proved possession of).
pub(crate) fn cert_key(cert: &[u8]) -> Option<sync_core::PublicKey> {
    // SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING (32 bytes) }
    const ED25519_SPKI: [u8; 12] = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    let der = CertificateDer::from(cert);
    let parsed = webpki::EndEntityCert::try_from(&der).ok()?;
    let spki = parsed.subject_public_key_info();
    let bytes = spki.as_ref();
    if bytes.len() != 44 || bytes[..12] != ED25519_SPKI {
        return None;
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&bytes[12..]);
    Some(sync_core::PublicKey(key))
}

/// The device the other side authenticated as: the one its certificate's
/// key names.
pub(crate) fn peer_device(connection: &quinn::Connection) -> Option<uuid::Uuid> {
    let identity = connection.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    cert_key(certs.first()?.as_ref()).map(|k| k.device())
}

/// The fingerprint of the certificate the other side presented.
pub(crate) fn peer_fingerprint(connection: &quinn::Connection) -> Option<Fingerprint> {
    let identity = connection.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().map(|c| Fingerprint::of(c.as_ref()))
}

/// The ALPN the connection agreed on.
pub(crate) fn alpn(connection: &quinn::Connection) -> Option<Vec<u8>> {
    let data = connection.handshake_data()?;
    let data = data
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?;
    data.protocol
}

/// Connects to a device whose certificate is `expected`, as `identity`, for
/// a sync connection: the raw QUIC connection, for tools and tests that speak
/// frames themselves. Applications use [`crate::Node`].
pub async fn dial(
    identity: &Identity,
    expected: Fingerprint,
    addr: std::net::SocketAddr,
) -> Result<quinn::Connection, NetError> {
    dial_with(identity, expected, addr, ALPN_SYNC).await
}

/// [`dial`] with another protocol ([`ALPN_PAIR`] for a pairing
/// connection).
pub async fn dial_with(
    identity: &Identity,
    expected: Fingerprint,
    addr: std::net::SocketAddr,
    alpn: &[u8],
) -> Result<quinn::Connection, NetError> {
    install_provider();
    let bind: std::net::SocketAddr = if addr.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .map_err(|e: std::net::AddrParseError| NetError::Endpoint(e.to_string()))?;
    let endpoint = quinn::Endpoint::client(bind).map_err(|e| NetError::Endpoint(e.to_string()))?;
    let config = client_config(identity, expected, alpn)?;
    endpoint
        .connect_with(config, addr, "syncable")
        .map_err(|e| NetError::Connect {
            addr,
            reason: e.to_string(),
        })?
        .await
        .map_err(|e| NetError::Connect {
            addr,
            reason: e.to_string(),
        })
}
