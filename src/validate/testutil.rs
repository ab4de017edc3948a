//! Helpers for the validators' unit tests: settings that resolve through a
//! [`MockDns`], rcgen challenge certificates and a TLS responder
//! (RFC 8737 §3 for tls-alpn-01, https for http-01 redirects).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::egress::EgressRules;
use super::{HickoryResolver, ValidationSettings};
use acmeproxy_testkit::MockDns;

/// 127.0.0.1, any port.
pub(crate) const LOCAL: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// Settings resolving through `dns`, with the given validation ports.
pub(crate) fn settings(dns: &MockDns, http_port: u16, tls_alpn_port: u16) -> ValidationSettings {
    ValidationSettings {
        http_port,
        tls_alpn_port,
        timeout: Duration::from_secs(10),
        resolver: Arc::new(HickoryResolver::new(&[dns.addr()], Duration::from_secs(2)).unwrap()),
        // The responders listen on loopback, which the defaults deny.
        egress: EgressRules::new(Vec::new()),
    }
}

/// A self-signed ECDSA P-256 certificate for `sans` with extra extensions.
pub(crate) fn certificate(
    sans: &[&str],
    extensions: Vec<CustomExtension>,
) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    certificate_with(&rcgen::PKCS_ECDSA_P256_SHA256, sans, extensions)
}

/// A self-signed certificate with a key for `alg`.
pub(crate) fn certificate_with(
    alg: &'static rcgen::SignatureAlgorithm,
    sans: &[&str],
    extensions: Vec<CustomExtension>,
) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
    let key = KeyPair::generate_for(alg).unwrap();
    let names: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params.custom_extensions = extensions;
    let cert = params.self_signed(&key).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    (cert.der().clone(), key)
}

/// The RFC 8737 acmeIdentifier extension for `key_authorization`.
pub(crate) fn acme_extension(key_authorization: &str) -> CustomExtension {
    let digest = ring::digest::digest(&ring::digest::SHA256, key_authorization.as_bytes());
    CustomExtension::new_acme_identifier(digest.as_ref())
}

/// How a [`TlsResponder`] behaves.
#[derive(Default)]
pub(crate) struct TlsOptions {
    /// ALPN protocols the server accepts (empty: ALPN ignored).
    pub(crate) alpn: Vec<Vec<u8>>,
    /// Only TLS 1.2, to exercise the TLS 1.2 signature check.
    pub(crate) tls12_only: bool,
    /// Bytes written after reading an HTTP request head, or none.
    pub(crate) http_response: Option<Vec<u8>>,
    /// Sign the handshake with another key than the certificate's.
    pub(crate) wrong_signing_key: bool,
}

/// A TLS server on a test listener, recording the SNI of each handshake.
pub(crate) struct TlsResponder {
    pub(crate) snis: Arc<Mutex<Vec<Option<String>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsResponder {
    /// Serves on `listener` with `cert` until dropped.
    pub(crate) fn start(
        listener: TcpListener,
        cert: (CertificateDer<'static>, PrivateKeyDer<'static>),
        options: TlsOptions,
    ) -> Self {
        let provider = rustls::crypto::ring::default_provider();
        // Not `from_der`: its key check parses the certificate with webpki,
        // which refuses the critical acmeIdentifier extension.
        let key_der = if options.wrong_signing_key {
            let other = KeyPair::generate().unwrap();
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(other.serialize_der()))
        } else {
            cert.1
        };
        let key = provider.key_provider.load_private_key(key_der).unwrap();
        let certified = CertifiedKey::new(vec![cert.0], key);
        let snis = Arc::new(Mutex::new(Vec::new()));
        let resolver = RecordingResolver {
            key: Arc::new(certified),
            snis: snis.clone(),
        };
        let builder = rustls::ServerConfig::builder_with_provider(Arc::new(provider));
        let builder = if options.tls12_only {
            builder.with_protocol_versions(&[&rustls::version::TLS12])
        } else {
            builder.with_safe_default_protocol_versions()
        };
        let mut config = builder
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = options.alpn;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let response = options.http_response;
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let response = response.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while let Ok(n) = tls.read(&mut chunk).await {
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(response) = &response {
                            if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                                let _ = tls.write_all(response).await;
                                let _ = tls.shutdown().await;
                                return;
                            }
                        }
                    }
                });
            }
        });
        Self { snis, task }
    }
}

impl Drop for TlsResponder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug)]
struct RecordingResolver {
    key: Arc<CertifiedKey>,
    snis: Arc<Mutex<Vec<Option<String>>>>,
}

impl ResolvesServerCert for RecordingResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.snis
            .lock()
            .unwrap()
            .push(hello.server_name().map(str::to_owned));
        Some(self.key.clone())
    }
}
