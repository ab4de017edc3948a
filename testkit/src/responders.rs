//! Challenge responders a test client runs: http-01 on a loopback port,
//! tls-alpn-01 with per-name certificates, and dns-01 through the mock DNS.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::MockDns;
use axum::extract::{Path, State};
use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// token → (key authorization, delay before answering)
type Tokens = Arc<Mutex<HashMap<String, (String, Option<std::time::Duration>)>>>;

#[derive(Debug, Default)]
struct AlpnCerts(Mutex<HashMap<String, Arc<CertifiedKey>>>);

impl ResolvesServerCert for AlpnCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_owned();
        self.0.lock().ok()?.get(&name).cloned()
    }
}

/// The three responders.
#[derive(Clone)]
pub struct Responders {
    tokens: Tokens,
    http_addr: SocketAddr,
    alpn: Arc<AlpnCerts>,
    alpn_addr: SocketAddr,
    pub dns: Arc<MockDns>,
}

impl Responders {
    /// Starts all three on free loopback ports.
    pub async fn start() -> Self {
        let tokens: Tokens = Arc::default();
        let app = axum::Router::new()
            .route(
                "/.well-known/acme-challenge/{token}",
                axum::routing::get(
                    |State(t): State<Tokens>, Path(token): Path<String>| async move {
                        let (answer, delay) = match t.lock().unwrap().get(&token) {
                            Some((v, d)) => ((http::StatusCode::OK, v.clone()), *d),
                            None => ((http::StatusCode::NOT_FOUND, String::new()), None),
                        };
                        if let Some(d) = delay {
                            tokio::time::sleep(d).await;
                        }
                        answer
                    },
                ),
            )
            .with_state(tokens.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });

        let alpn = Arc::new(AlpnCerts::default());
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(alpn.clone());
        cfg.alpn_protocols = vec![b"acme-tls/1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let alpn_addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // The validator only needs the handshake.
                    if let Ok(mut s) = acceptor.accept(tcp).await {
                        let _ = tokio::io::AsyncWriteExt::shutdown(&mut s).await;
                    }
                });
            }
        });

        let dns = Arc::new(MockDns::start("127.0.0.1:0".parse().unwrap()).unwrap());
        Self {
            tokens,
            http_addr,
            alpn,
            alpn_addr,
            dns,
        }
    }

    pub fn http_port(&self) -> u16 {
        self.http_addr.port()
    }
    pub fn tls_alpn_port(&self) -> u16 {
        self.alpn_addr.port()
    }
    pub fn dns_addr(&self) -> SocketAddr {
        self.dns.addr()
    }

    /// Serves `key_auth` at /.well-known/acme-challenge/`token`.
    pub fn set_http01(&self, token: &str, key_auth: &str) {
        self.tokens
            .lock()
            .unwrap()
            .insert(token.to_owned(), (key_auth.to_owned(), None));
    }

    /// Like [`set_http01`](Self::set_http01), answering only after `delay`.
    #[allow(dead_code)]
    pub fn set_http01_slow(&self, token: &str, key_auth: &str, delay: std::time::Duration) {
        self.tokens
            .lock()
            .unwrap()
            .insert(token.to_owned(), (key_auth.to_owned(), Some(delay)));
    }

    /// Publishes the dns-01 TXT value for `name` (without `_acme-challenge.`).
    pub fn set_dns01(&self, name: &str, value: &str) {
        self.dns
            .set_txt(&format!("_acme-challenge.{name}"), vec![value.to_owned()]);
    }

    /// Serves an RFC 8737 certificate for `name` (SNI) with `digest`
    /// (SHA-256 of the key authorization).
    pub fn set_tls_alpn01(&self, name: &str, san: &str, digest: &[u8]) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![san.to_owned()]).unwrap();
        params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
        let cert = params.self_signed(&key).unwrap();
        let provider = rustls::crypto::ring::default_provider();
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing = provider.key_provider.load_private_key(der).unwrap();
        let ck = CertifiedKey::new(vec![cert.der().clone()], signing);
        self.alpn
            .0
            .lock()
            .unwrap()
            .insert(name.to_owned(), Arc::new(ck));
    }
}
