//! HTTPS to step-ca: a client that trusts only the CA's root, and one that
//! trusts nothing, for the single root fetch whose answer is checked against
//! the configured fingerprint (RFC 8446 handshake signatures are still
//! verified).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Method, StatusCode};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use serde_json::Value;

use super::internal;
use crate::danger::DangerousAcceptAnyServerCert;
use crate::upstream::UpstreamError;

/// Largest response body read from step-ca.
const MAX_BODY: usize = 1 << 20;

/// Why a request to step-ca got no answer.
#[derive(Debug)]
pub(super) enum CallError {
    Timeout,
    Io(Box<dyn std::error::Error + Send + Sync>),
}

impl CallError {
    pub(super) fn unavailable(self, url: &str) -> UpstreamError {
        let why = match self {
            Self::Timeout => "no answer in time".to_owned(),
            Self::Io(e) => {
                // The whole chain: hyper's outer error says only "client error (Connect)".
                let mut text = e.to_string();
                let mut source = e.source();
                while let Some(s) = source {
                    text.push_str(": ");
                    text.push_str(&s.to_string());
                    source = s.source();
                }
                text
            }
        };
        UpstreamError::Unavailable {
            context: format!("cannot reach step-ca at {url}: {why}"),
            source: None,
        }
    }
}

/// HTTPS to step-ca with one TLS configuration and a limit per request.
#[derive(Clone)]
pub(super) struct Https {
    client: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Body>,
    timeout: Duration,
}

impl Https {
    pub(super) fn new(tls: rustls::ClientConfig, timeout: Duration) -> Self {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        Self {
            client: HyperClient::builder(TokioExecutor::new()).build(connector),
            timeout,
        }
    }

    pub(super) async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Bytes), CallError> {
        let mut req = http::Request::builder().method(method).uri(url);
        let body = match body {
            Some(v) => {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        let req = req.body(body).map_err(|e| CallError::Io(Box::new(e)))?;
        let exchange = async {
            let rsp = self
                .client
                .request(req)
                .await
                .map_err(|e| CallError::Io(Box::new(e)))?;
            let status = rsp.status();
            let bytes = axum::body::to_bytes(Body::new(rsp.into_body()), MAX_BODY)
                .await
                .map_err(|e| CallError::Io(Box::new(e)))?;
            Ok((status, bytes))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or(Err(CallError::Timeout))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS trusting only `root` (DER).
pub(super) fn trusting(root: &[u8]) -> Result<rustls::ClientConfig, UpstreamError> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(root.to_vec()))
        .map_err(|e| {
            internal(
                "the CA's root is unusable as a trust anchor".into(),
                Some(Box::new(e)),
            )
        })?;
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| internal("TLS versions".into(), Some(Box::new(e))))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// TLS that accepts any server certificate, for the one root fetch whose
/// answer is checked against the fingerprint.
pub(super) fn insecure_tls() -> Result<rustls::ClientConfig, UpstreamError> {
    DangerousAcceptAnyServerCert::client_config(provider())
        .map_err(|e| internal("TLS versions".into(), Some(Box::new(e))))
}
