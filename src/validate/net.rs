//! Connection helpers shared by http-01 (RFC 8555 §8.3) and tls-alpn-01
//! (RFC 8737 §3): resolving through the configured resolver, connecting with
//! fallback (IPv6 first), and a TLS client that accepts any certificate, as
//! validators do (the challenge proves control, not a trusted certificate).
//!
//! <https://www.rfc-editor.org/rfc/rfc8737#section-3>

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, PeerMisbehaved, SignatureScheme,
};
use tokio::net::TcpStream;

use super::{ValidationError, ValidationSettings};

/// Upper bound for connecting to one address, so that a dead IPv6 address
/// leaves time to try IPv4 within the validation timeout.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A host to connect to: a DNS name (resolved through the settings' resolver)
/// or an IP address (used as is).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Host {
    Ip(IpAddr),
    Name(String),
}

impl Host {
    /// Resolves the host to addresses to try, IPv6 before IPv4 (RFC 8555
    /// §8.3 leaves the order open; Boulder tries IPv6 first).
    pub(crate) async fn resolve(
        &self,
        settings: &ValidationSettings,
    ) -> Result<Vec<IpAddr>, ValidationError> {
        match self {
            Self::Ip(ip) => Ok(vec![*ip]),
            Self::Name(name) => {
                let mut ips = settings.resolver.lookup_ip(name).await?;
                ips.sort_by_key(|ip| ip.is_ipv4());
                ips.dedup();
                Ok(ips)
            }
        }
    }
}

impl fmt::Display for Host {
    /// The host as written in a URL authority (IPv6 in brackets).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]"),
            Self::Ip(IpAddr::V4(v4)) => write!(f, "{v4}"),
            Self::Name(name) => f.write_str(name),
        }
    }
}

/// Connects to the first of `ips` (on `port`) that accepts. `what` names the
/// validation for messages (`"http-01 of example.com"`).
pub(crate) async fn connect(
    settings: &ValidationSettings,
    ips: &[IpAddr],
    port: u16,
    what: &str,
) -> Result<(TcpStream, SocketAddr), ValidationError> {
    let limit = settings.timeout.min(MAX_CONNECT_TIMEOUT);
    let mut failures = Vec::new();
    for ip in ips {
        let addr = SocketAddr::new(*ip, port);
        match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok((stream, addr)),
            Ok(Err(e)) => failures.push((addr, describe_io(&e))),
            Err(_) => failures.push((addr, format!("timed out after {} ms", limit.as_millis()))),
        }
    }
    let message = match failures.as_slice() {
        [] => format!("could not connect for {what}: no address to connect to"),
        [(addr, why)] => format!("could not connect to {addr} for {what}: {why}"),
        many => {
            let each: Vec<String> = many.iter().map(|(a, why)| format!("{a}: {why}")).collect();
            format!(
                "could not connect to any address for {what}: {}",
                each.join("; ")
            )
        }
    };
    Err(ValidationError::Connection(message))
}

/// A short, lower-case description of an I/O error for problem details.
pub(crate) fn describe_io(err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        io::ErrorKind::ConnectionReset => "connection reset by peer".to_owned(),
        io::ErrorKind::TimedOut => "timed out".to_owned(),
        io::ErrorKind::UnexpectedEof => "connection closed early".to_owned(),
        _ => err.to_string(),
    }
}

/// A TLS client configuration that accepts any server certificate (see
/// [`DangerousAcceptAnyServerCert`]) and offers `alpn` protocols.
pub(crate) fn insecure_client_config(alpn: Vec<Vec<u8>>) -> Result<ClientConfig, ValidationError> {
    let provider: Arc<CryptoProvider> = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = DangerousAcceptAnyServerCert {
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ValidationError::Tls(format!("TLS client setup failed: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = alpn;
    Ok(config)
}

/// The server name to present: a DNS name as SNI, an IP address as is (no SNI).
pub(crate) fn server_name(name: &str) -> Result<ServerName<'static>, ValidationError> {
    ServerName::try_from(name.to_owned())
        .map_err(|_| ValidationError::Malformed(format!("{name} is not a valid TLS server name")))
}

/// Accepts every certificate chain without checking trust, names, dates or
/// extensions, but still checks that the server signed the handshake with the
/// key of the certificate it sent. Validation needs only that: http-01 redirects to
/// https and tls-alpn-01 self-signed certificates (RFC 8737 §3) are never
/// checked against roots, as with Let's Encrypt.
#[derive(Debug)]
pub(crate) struct DangerousAcceptAnyServerCert {
    algorithms: WebPkiSupportedAlgorithms,
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
