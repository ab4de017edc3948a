//! The one TLS verifier upstreams use before they know whom to trust: it
//! accepts any server certificate but still checks the handshake signatures.
//! Used only for a first fetch whose answer is then pinned by a configured
//! SHA-256 fingerprint (step-ca's root, the CA behind Vault's HTTPS); every
//! later request is verified against the pinned certificate alone.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Accepts every certificate, but checks that the server signed the handshake
/// with the key of the certificate it sent.
#[derive(Debug)]
pub(crate) struct DangerousUnpinnedFirstFetch(pub(crate) Arc<CryptoProvider>);

impl DangerousUnpinnedFirstFetch {
    /// A client configuration that trusts any server, for that first fetch.
    pub(crate) fn client_config(
        provider: Arc<CryptoProvider>,
    ) -> Result<rustls::ClientConfig, rustls::Error> {
        Ok(
            rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Self(provider)))
                .with_no_client_auth(),
        )
    }
}

impl ServerCertVerifier for DangerousUnpinnedFirstFetch {
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
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
