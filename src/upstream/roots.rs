//! Which root certificates `/roots.pem` serves: only self-signed roots that
//! the RA's chains lead to (its own TLS chain and the chains it hands out).
//! An intermediate is no trust anchor for OpenSSL- or Python-based clients,
//! so it is never served as one.
//!
//! Where a root comes from, in order:
//! 1. step-ca's `root` key in ca.json (a file or a list of files);
//! 2. the upstream's own root ([`CertificateAuthorityService::roots`]: step-ca
//!    `/roots`, Vault's CA chain, softcas), self-signed ones only;
//! 3. the top of the RA's own chain, when it is self-signed;
//! 4. the certificate in `ca_bundle` or the system trust store that issued
//!    the top of the chain (followed up to a self-signed one);
//! 5. the certificate at the top certificate's AIA caIssuers URL (RFC 5280
//!    4.2.2.1), fetched over plain HTTP, followed the same way.
//!
//! [`CertificateAuthorityService::roots`]: super::CertificateAuthorityService::roots

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::OID_PKIX_ACCESS_DESCRIPTOR_CA_ISSUERS;
use x509_parser::prelude::{FromDer, X509Certificate};

/// How many issuers [`resolve`] follows above the top of a chain.
const MAX_HOPS: usize = 4;
/// The largest certificate an AIA URL may answer with.
const MAX_AIA_BYTES: usize = 64 * 1024;

/// A `root` file that cannot serve as a root.
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    #[error("root {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

/// Where the roots came from, for the start-up log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootSource {
    /// The `root` key of ca.json.
    Configured,
    /// The upstream's own root.
    Upstream,
    /// The RA's chain ends at a self-signed certificate.
    Chain,
    /// `ca_bundle` or the system trust store.
    TrustStore,
    /// Fetched from an AIA caIssuers URL.
    Aia,
}

impl RootSource {
    /// Where the roots came from, for the log.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Configured => "ca.json root",
            Self::Upstream => "the upstream's root",
            Self::Chain => "the top of the server's chain",
            Self::TrustStore => "ca_bundle or the system trust store",
            Self::Aia => "the AIA caIssuers URL",
        }
    }
}

/// What [`resolve`] found.
#[derive(Debug)]
pub struct Resolved {
    /// Self-signed roots (DER); empty when none was found.
    pub roots: Vec<Vec<u8>>,
    pub source: Option<RootSource>,
    /// Something the operator should know (logged once as a warning).
    pub warning: Option<String>,
}

/// What [`resolve`] may look at.
#[derive(Debug, Default)]
pub struct RootSources {
    /// Roots read from ca.json's `root` ([`read_root_files`]).
    pub configured: Vec<Vec<u8>>,
    /// The upstream's own roots (filtered to self-signed ones here).
    pub upstream: Vec<Vec<u8>>,
    /// Certificates that may have issued the chain's top: `ca_bundle` and
    /// the system trust store.
    pub trust_store: Vec<Vec<u8>>,
    /// Whether to fetch AIA caIssuers URLs.
    pub fetch_aia: bool,
    /// Limit on each AIA fetch.
    pub timeout: Duration,
}

/// Reads ca.json's `root` files: each must hold at least one certificate,
/// and every certificate must be self-signed (a root, not an intermediate).
pub fn read_root_files(files: &[PathBuf]) -> Result<Vec<Vec<u8>>, RootsError> {
    let mut roots = Vec::new();
    for path in files {
        let err = |reason: String| RootsError::File {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read(path).map_err(|e| err(format!("cannot be read: {e}")))?;
        let certs = pem_certificates(&text).map_err(err)?;
        if certs.is_empty() {
            return Err(err("holds no PEM CERTIFICATE".to_owned()));
        }
        for der in certs {
            let (_, cert) = X509Certificate::from_der(&der)
                .map_err(|e| err(format!("holds a certificate that does not parse: {e}")))?;
            if !is_self_signed(&cert) {
                return Err(err(format!(
                    "holds \"{}\", issued by \"{}\": not a self-signed root. /roots.pem serves \
                     roots only; give the root at the top of the upstream's chain",
                    cert.subject(),
                    cert.issuer()
                )));
            }
            roots.push(der);
        }
    }
    Ok(roots)
}

/// The certificates (DER) of a PEM text (a ca_bundle, a trust store file).
pub fn pem_certificates(text: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let blocks = pem::parse_many(text).map_err(|e| format!("is not PEM: {e}"))?;
    Ok(blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect())
}

/// The roots that `chain` (DER, leaf first) leads to, from `sources` in the
/// order of the module documentation.
pub async fn resolve(sources: &RootSources, chain: &[Vec<u8>]) -> Resolved {
    let top = chain.last().and_then(|der| parsed(der).map(|c| (der, c)));
    if !sources.configured.is_empty() {
        let warning = match &top {
            Some((der, top)) if !leads_to(der, top, &sources.configured) => Some(format!(
                "the RA's certificate chain ends at \"{}\" (issued by \"{}\"), which none of \
                 ca.json's root certificates issued: clients that trust /roots.pem will not \
                 trust this server",
                top.subject(),
                top.issuer()
            )),
            _ => None,
        };
        return Resolved {
            roots: sources.configured.clone(),
            source: Some(RootSource::Configured),
            warning,
        };
    }
    let upstream = self_signed_only(&sources.upstream);
    if !upstream.is_empty() {
        return Resolved {
            roots: upstream,
            source: Some(RootSource::Upstream),
            warning: None,
        };
    }
    let Some((top_der, top)) = top else {
        return none("the RA has no certificate chain to look at");
    };
    if is_self_signed(&top) {
        return found(vec![top_der.clone()], RootSource::Chain);
    }
    // Walk up: trust store first, then AIA, one issuer at a time.
    let mut current = top_der.clone();
    let mut source = RootSource::TrustStore;
    for _ in 0..MAX_HOPS {
        let Some(cert) = parsed(&current) else { break };
        let issuer = match find_issuer(&cert, &sources.trust_store) {
            Some(der) => Some(der),
            None if sources.fetch_aia => {
                source = RootSource::Aia;
                fetch_issuer(&cert, sources.timeout).await
            }
            None => None,
        };
        let Some(issuer_der) = issuer else { break };
        let Some(issuer) = parsed(&issuer_der) else {
            break;
        };
        if is_self_signed(&issuer) {
            return found(vec![issuer_der], source);
        }
        current = issuer_der;
    }
    none(&format!(
        "no root found above \"{}\" (issued by \"{}\")",
        top.subject(),
        top.issuer()
    ))
}

fn found(roots: Vec<Vec<u8>>, source: RootSource) -> Resolved {
    Resolved {
        roots,
        source: Some(source),
        warning: None,
    }
}

fn none(why: &str) -> Resolved {
    Resolved {
        roots: Vec::new(),
        source: None,
        warning: Some(format!(
            "{why}; /roots.pem answers 404 until ca.json's \"root\" names the root certificate \
             file of the upstream CA"
        )),
    }
}

/// The self-signed certificates of `certs`.
pub fn self_signed_only(certs: &[Vec<u8>]) -> Vec<Vec<u8>> {
    certs
        .iter()
        .filter(|der| is_self_signed_der(der))
        .cloned()
        .collect()
}

/// Whether `der` is a certificate that signs itself (a root).
pub fn is_self_signed_der(der: &[u8]) -> bool {
    parsed(der).is_some_and(|c| is_self_signed(&c))
}

fn parsed(der: &[u8]) -> Option<X509Certificate<'_>> {
    X509Certificate::from_der(der).ok().map(|(_, c)| c)
}

/// Subject and issuer are the same and the certificate's own key verifies it.
fn is_self_signed(cert: &X509Certificate<'_>) -> bool {
    cert.subject() == cert.issuer() && cert.verify_signature(None).is_ok()
}

/// `cert` is issued by `issuer`: names match and the signature verifies.
fn issued_by(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
    cert.issuer() == issuer.subject() && cert.verify_signature(Some(issuer.public_key())).is_ok()
}

/// `top` (with DER `top_der`) is one of `roots` or issued by one of them.
fn leads_to(top_der: &[u8], top: &X509Certificate<'_>, roots: &[Vec<u8>]) -> bool {
    roots
        .iter()
        .any(|r| r.as_slice() == top_der || parsed(r).is_some_and(|root| issued_by(top, &root)))
}

fn find_issuer(cert: &X509Certificate<'_>, pool: &[Vec<u8>]) -> Option<Vec<u8>> {
    pool.iter()
        .find(|der| parsed(der).is_some_and(|c| issued_by(cert, &c)))
        .cloned()
}

/// The first certificate at one of `cert`'s AIA caIssuers URLs that issued
/// it (plain HTTP; RFC 5280 4.2.2.1 serves DER, PEM is accepted too).
async fn fetch_issuer(cert: &X509Certificate<'_>, timeout: Duration) -> Option<Vec<u8>> {
    for url in ca_issuer_urls(cert) {
        match fetch(&url, timeout).await {
            Ok(body) => {
                let candidates = if body.starts_with(b"-----BEGIN") {
                    pem_certificates(&body).unwrap_or_default()
                } else {
                    vec![body]
                };
                if let Some(der) = candidates
                    .into_iter()
                    .find(|der| parsed(der).is_some_and(|c| issued_by(cert, &c)))
                {
                    return Some(der);
                }
                tracing::warn!(%url, "the AIA caIssuers URL holds no issuer of the certificate");
            }
            Err(e) => tracing::warn!(%url, error = %e, "cannot fetch the AIA caIssuers URL"),
        }
    }
    None
}

fn ca_issuer_urls(cert: &X509Certificate<'_>) -> Vec<String> {
    let mut urls = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::AuthorityInfoAccess(aia) = ext.parsed_extension() {
            for desc in &aia.accessdescs {
                if desc.access_method == OID_PKIX_ACCESS_DESCRIPTOR_CA_ISSUERS {
                    if let GeneralName::URI(uri) = &desc.access_location {
                        if uri.starts_with("http://") {
                            urls.push((*uri).to_owned());
                        }
                    }
                }
            }
        }
    }
    urls
}

async fn fetch(url: &str, timeout: Duration) -> Result<Vec<u8>, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let work = async {
        let rsp = client.get(uri).await.map_err(|e| e.to_string())?;
        if !rsp.status().is_success() {
            return Err(format!("answered {}", rsp.status()));
        }
        let body = Limited::new(rsp.into_body(), MAX_AIA_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?;
        Ok(body.to_bytes().to_vec())
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("no answer within {} s", timeout.as_secs()))?
}

/// The system trust store's certificates (DER); broken entries are skipped.
pub fn system_trust_store() -> Vec<Vec<u8>> {
    rustls_native_certs::load_native_certs()
        .certs
        .into_iter()
        .map(|c| c.as_ref().to_vec())
        .collect()
}

/// `path`'s certificates, for `ca_bundle`; unreadable files give none (the
/// upstream's HTTPS client reports them).
pub fn bundle_certificates(path: &Path) -> Vec<Vec<u8>> {
    std::fs::read(path)
        .ok()
        .and_then(|t| pem_certificates(&t).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
