//! The one TLS verifier that does not check trust, named as rustls names
//! risky things. It accepts any server certificate chain (no roots, names,
//! dates or extensions) but still checks that the server signed the handshake
//! with the key of the certificate it sent. Two users, and only these:
//!
//! - challenge validation (`validate`): an http-01 redirect to https and the
//!   self-signed tls-alpn-01 certificate (RFC 8737 §3) are never checked
//!   against roots, as with Let's Encrypt: the challenge proves control, not
//!   a trusted certificate;
//! - an upstream's first fetch of its CA (`upstream`: step-ca's root, the CA
//!   behind Vault's HTTPS), whose answer is then pinned by a configured
//!   SHA-256 fingerprint; every later request is verified against the pinned
//!   certificate alone.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, PeerMisbehaved, SignatureScheme,
};

/// Accepts every certificate chain without checking trust, names, dates or
/// extensions, but still checks that the server signed the handshake with the
/// key of the certificate it sent. Validation needs only that: http-01 redirects to
/// https and tls-alpn-01 self-signed certificates (RFC 8737 §3) are never
/// checked against roots, as with Let's Encrypt.
#[derive(Debug)]
pub(crate) struct DangerousAcceptAnyServerCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl DangerousAcceptAnyServerCert {
    /// A client configuration (safe default protocol versions, no client
    /// certificate, no ALPN) that uses this verifier.
    pub(crate) fn client_config(
        provider: Arc<CryptoProvider>,
    ) -> Result<ClientConfig, rustls::Error> {
        let verifier = Self {
            algorithms: provider.signature_verification_algorithms,
        };
        Ok(ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth())
    }
}

impl ServerCertVerifier for DangerousAcceptAnyServerCert {
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
        verify_signature(&self.algorithms, message, cert, dss, false)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // RFC 8446 §4.2.3: no RSA-PKCS1, SHA-1 or SHA-224 in TLS 1.3.
        let tls13 = matches!(
            dss.scheme,
            SignatureScheme::ECDSA_NISTP256_SHA256
                | SignatureScheme::ECDSA_NISTP384_SHA384
                | SignatureScheme::ECDSA_NISTP521_SHA512
                | SignatureScheme::RSA_PSS_SHA256
                | SignatureScheme::RSA_PSS_SHA384
                | SignatureScheme::RSA_PSS_SHA512
                | SignatureScheme::ED25519
                | SignatureScheme::ED448
        );
        if !tls13 {
            return Err(PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme.into());
        }
        verify_signature(&self.algorithms, message, cert, dss, true)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Checks a handshake signature with the public key of `cert`, like rustls'
/// `verify_tls12_signature`/`verify_tls13_signature` (TLS 1.3: only the
/// first algorithm mapped to the scheme), but reading the key with
/// x509-parser: webpki refuses certificates with unknown critical extensions,
/// and the tls-alpn-01 certificate has one (acmeIdentifier, RFC 8737 §3).
fn verify_signature(
    algorithms: &WebPkiSupportedAlgorithms,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    first_only: bool,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let candidates = algorithms
        .mapping
        .iter()
        .find(|(scheme, _)| *scheme == dss.scheme)
        .map(|(_, algs)| *algs)
        .ok_or(PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme)?;
    let candidates = if first_only {
        candidates.get(..1).unwrap_or_default()
    } else {
        candidates
    };
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let spki = &parsed.tbs_certificate.subject_pki;
    let key_algorithm = spki_algorithm(spki.raw).ok_or(rustls::Error::InvalidCertificate(
        CertificateError::BadEncoding,
    ))?;
    let key = spki.subject_public_key.data.as_ref();
    for alg in candidates {
        if alg.public_key_alg_id().as_ref() != key_algorithm {
            continue;
        }
        return alg
            .verify_signature(key, message, dss.signature())
            .map(|()| HandshakeSignatureValid::assertion())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadSignature));
    }
    Err(rustls::Error::General(format!(
        "the certificate's public key cannot make {:?} signatures",
        dss.scheme
    )))
}

/// The contents of the AlgorithmIdentifier of a DER SubjectPublicKeyInfo
/// (what `AlgorithmIdentifier` in rustls-pki-types holds).
fn spki_algorithm(spki: &[u8]) -> Option<&[u8]> {
    let (tag, inner, _) = der_element(spki)?;
    let (alg_tag, algorithm, _) = der_element(inner)?;
    (tag == 0x30 && alg_tag == 0x30).then_some(algorithm)
}

/// One DER element: (tag, contents, rest). Single-byte tags only.
fn der_element(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = data.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let bytes = rest.get(..count)?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, rest.get(count..)?)
    };
    Some((tag, rest.get(..len)?, rest.get(len..)?))
}
