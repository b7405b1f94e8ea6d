//! The TLS client configuration of the tls modes (rustls with the ring provider).
//!
//! TLS 1.3 and 1.2 are offered (rustls's safe defaults, 1.3 preferred); the server's
//! certificate is accepted without verification (the benchmark measures the server, not a PKI;
//! the handshake signature is still checked), and session resumption is off, so every
//! connection makes a full handshake.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};

/// The name sent in SNI and given to the (non-)verifier.
pub const SERVER_NAME: &str = "localhost";

/// Accepts any certificate, but checks that the handshake was signed with its key.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The client configuration shared by every connection of a run.
pub fn client_config() -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// A new client session for one connection, with no limit on buffered plaintext (a whole
/// message is handed over at once, 100 KiB included).
pub fn connection(config: &Arc<ClientConfig>) -> Result<ClientConnection, rustls::Error> {
    let name = ServerName::try_from(SERVER_NAME).expect("a valid DNS name");
    let mut conn = ClientConnection::new(config.clone(), name)?;
    conn.set_buffer_limit(None);
    Ok(conn)
}

/// What a session negotiated: "TLSv1_3 TLS13_AES_256_GCM_SHA384 X25519".
pub fn describe(conn: &ClientConnection) -> Option<String> {
    let version = conn.protocol_version()?;
    let suite = conn.negotiated_cipher_suite()?;
    let group = conn
        .negotiated_key_exchange_group()
        .map(|g| format!(" {:?}", g.name()))
        .unwrap_or_default();
    Some(format!("{version:?} {:?}{group}", suite.suite()))
}

/// `Read` and `Write` on a raw non-blocking socket, for `read_tls` and `write_tls`.
pub struct Fd(pub std::os::unix::io::RawFd);

impl std::io::Read for Fd {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        crate::net::read(self.0, buf)
    }
}

impl std::io::Write for Fd {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        crate::net::write(self.0, buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
