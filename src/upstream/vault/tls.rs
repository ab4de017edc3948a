//! Vault's HTTPS client. With `certificateAuthorityFingerprint`, one first
//! handshake without verification reads the chain Vault presents; the
//! certificate with that SHA-256 becomes the only trust anchor, and every
//! request after that is verified against it (host name included).
//! Without a fingerprint the system's roots are trusted.

use std::sync::Arc;

use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ring::digest::{SHA256, digest};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName};

use super::REQUEST_TIMEOUT;
use super::wire::{hex, internal};
use crate::config::VaultCasSettings;
use crate::danger::DangerousAcceptAnyServerCert;
use crate::upstream::UpstreamError;

/// The client the upstream sends its requests with.
pub(super) type HttpsClient = HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, String>;

/// The HTTPS client: trusting only the pinned CA when a fingerprint is set,
/// else the system's roots.
pub(super) async fn https_client(s: &VaultCasSettings) -> Result<HttpsClient, UpstreamError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match &s.fingerprint {
        Some(fp) => {
            let ca = pinned_ca(&s.address, fp, Arc::clone(&provider)).await?;
            roots
                .add(ca)
                .map_err(|e| internal("the pinned Vault CA certificate is unusable", e))?;
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                // A broken system certificate is skipped, as browsers do.
                let _ = roots.add(cert);
            }
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| internal("TLS versions", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(HyperClient::builder(TokioExecutor::new()).build(connector))
}

/// Fetches the chain Vault's HTTPS presents (one handshake without
/// verification) and returns the certificate whose SHA-256 is `fp`.
async fn pinned_ca(
    address: &str,
    fp: &[u8; 32],
    provider: Arc<CryptoProvider>,
) -> Result<CertificateDer<'static>, UpstreamError> {
    let uri: http::Uri = address
        .parse()
        .map_err(|e| internal("parsing certificateAuthority", e))?;
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let config = DangerousAcceptAnyServerCert::client_config(provider)
        .map_err(|e| internal("TLS versions", e))?;
    let name = ServerName::try_from(host.clone()).map_err(|e| internal("Vault's host name", e))?;
    let unavailable = |e: std::io::Error| UpstreamError::Unavailable {
        context: format!("fetching Vault's TLS chain from {host}:{port}"),
        source: Some(Box::new(e)),
    };
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(unavailable)?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(unavailable)
    };
    let tls = tokio::time::timeout(REQUEST_TIMEOUT, handshake)
        .await
        .map_err(|_| UpstreamError::Unavailable {
            context: format!("fetching Vault's TLS chain from {host}:{port} timed out"),
            source: None,
        })??;
    let presented = tls.get_ref().1.peer_certificates().unwrap_or_default();
    presented
        .iter()
        .find(|c| digest(&SHA256, c).as_ref() == fp.as_slice())
        .map(|c| c.clone().into_owned())
        .ok_or_else(|| UpstreamError::Internal {
            context: format!(
                "none of the {} certificates Vault presents at {host}:{port} has the SHA-256 fingerprint in \
                 authority.certificateAuthorityFingerprint (they have {}); give the fingerprint of a CA \
                 certificate in Vault's TLS chain",
                presented.len(),
                presented.iter().map(|c| hex(digest(&SHA256, c).as_ref())).collect::<Vec<_>>().join(", ")
            ),
            source: None,
        })
}
