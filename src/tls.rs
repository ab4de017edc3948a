//! The RA's own HTTPS identity: a certificate and key from files,
//! or one obtained from the upstream for `dnsNames` and kept in `<dataDir>/tls/`,
//! reused across restarts and renewed at two thirds of its lifetime without a
//! restart. rustls asks [`ServerIdentity`] for the certificate on every handshake.
//!
//! ACME is served over HTTPS only: <https://www.rfc-editor.org/rfc/rfc8555#section-6.1>

use std::fmt;
use std::fs::{self, DirBuilder};
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rcgen::string::Ia5String;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls::crypto::ring;
use rustls::pki_types::pem::{Error as PemError, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::version::{TLS12, TLS13};
use rustls::{ServerConfig, SupportedProtocolVersion};
use time::OffsetDateTime;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::acme::Identifier;
use crate::upstream::softcas::write_atomic;
use crate::upstream::{CertificateAuthorityService, NoCheckpoint, SignRequest, UpstreamError};

pub mod shared;

pub use shared::{SharedIdentity, StoredIdentity};

const CERT_FILE: &str = "server.crt";
const KEY_FILE: &str = "server.key";
/// The renewal task looks at the clock at least this often.
const RECHECK: Duration = Duration::from_secs(3600);
/// First wait after a failed renewal; it doubles up to [`RECHECK`].
const FIRST_BACKOFF: Duration = Duration::from_secs(30);

/// Where the RA's certificate comes from (`dnsNames`, `dataDir` and `tls` in ca.json).
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// Names and IP literals the certificate is for.
    pub dns_names: Vec<String>,
    /// The data directory; an obtained certificate lives in `<data_dir>/tls/`.
    pub data_dir: PathBuf,
    /// A PEM certificate chain to serve instead of obtaining one (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// The PEM private key (PKCS#8, SEC1 or PKCS#1) for `cert_file`.
    pub key_file: Option<PathBuf>,
    /// Lowest TLS version, as step-ca writes it: 1.2 or 1.3 (default 1.2).
    pub min_version: Option<f32>,
    /// Highest TLS version: 1.2 or 1.3 (default 1.3).
    pub max_version: Option<f32>,
    /// With no usable stored certificate and an unreachable upstream, wait
    /// and retry (back-off up to a minute) until the upstream answers or
    /// this token is cancelled, instead of failing at once: a service
    /// manager restarting the process would only make it flap.
    pub wait_for_upstream: Option<CancellationToken>,
}

/// Why the RA's certificate could not be loaded, obtained or served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A setting that cannot work.
    #[error("tls: {0}")]
    Config(String),
    /// The certificate in `path` does not parse.
    #[error("tls: cannot parse the certificate in {path}")]
    Certificate {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A key or CSR could not be made.
    #[error("tls: cannot create a key and CSR")]
    Csr(#[source] rcgen::Error),
    /// The key is unusable or does not belong to the certificate.
    #[error("tls: the key {key} is unusable with the certificate {cert}")]
    Key {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// `path` holds no PEM item of the kind wanted.
    #[error("tls: {path} holds no usable {what}")]
    Pem {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: PemError,
    },
    /// A file could not be read.
    #[error("tls: cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// rustls refused the configuration.
    #[error("tls: cannot build the server configuration")]
    Rustls(#[source] rustls::Error),
    /// The upstream did not issue the certificate.
    #[error("tls: the upstream did not issue the server certificate")]
    Upstream(#[source] UpstreamError),
    /// A file could not be written.
    #[error("tls: cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The RA's current certificate and key, swappable without a restart.
pub struct ServerIdentity {
    current: RwLock<Arc<Loaded>>,
    source: Source,
    versions: Vec<&'static SupportedProtocolVersion>,
}

impl ServerIdentity {
    /// Loads `cert_file`/`key_file` when given (never calling the upstream);
    /// otherwise reuses the certificate stored in `<data_dir>/tls/` while it
    /// covers `dns_names` and is short of two thirds of its lifetime, and
    /// obtains and stores a new one from `upstream` when it is not.
    pub async fn load_or_obtain(
        opts: &TlsOptions,
        upstream: Arc<dyn CertificateAuthorityService>,
    ) -> Result<Arc<Self>, TlsError> {
        Self::load_or_obtain_shared(opts, upstream, None).await
    }

    /// As [`load_or_obtain`](Self::load_or_obtain); with `shared` (replicas
    /// on a shared store), an obtained certificate is the one kept in the
    /// store: obtained and renewed by one replica at a time, loaded and
    /// periodically reloaded by the others ([`shared`]).
    pub async fn load_or_obtain_shared(
        opts: &TlsOptions,
        upstream: Arc<dyn CertificateAuthorityService>,
        shared: Option<Arc<dyn SharedIdentity>>,
    ) -> Result<Arc<Self>, TlsError> {
        let versions = protocol_versions(opts.min_version, opts.max_version)?;
        let (source, loaded) = match (&opts.cert_file, &opts.key_file) {
            (Some(cert), Some(key)) => {
                let loaded = Loaded::read(cert, key)?;
                let (cert, key) = (cert.clone(), key.clone());
                (Source::Files { cert, key }, loaded)
            }
            (None, None) => {
                let names = parse_names(&opts.dns_names)?;
                let dir = opts.data_dir.join("tls");
                let wait = opts.wait_for_upstream.as_ref();
                let loaded = match &shared {
                    Some(s) => shared::start(upstream.as_ref(), &names, &dir, s, wait).await?,
                    None => stored_or_obtain(upstream.as_ref(), &names, &dir, wait).await?,
                };
                (
                    Source::Upstream {
                        upstream,
                        dir,
                        names,
                        shared,
                    },
                    loaded,
                )
            }
            _ => {
                return Err(TlsError::Config(
                    "certFile and keyFile must be given together".to_owned(),
                ));
            }
        };
        Ok(Arc::new(Self {
            current: RwLock::new(Arc::new(loaded)),
            source,
            versions,
        }))
    }

    /// A rustls server configuration (ring provider, the configured TLS
    /// versions) that serves this identity and offers `alpn`.
    pub fn server_config(
        self: &Arc<Self>,
        alpn: Vec<Vec<u8>>,
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = Arc::new(ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&self.versions)
            .map_err(TlsError::Rustls)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = alpn;
        Ok(Arc::new(config))
    }

    /// Renews an obtained certificate at two thirds of its lifetime and swaps
    /// it in, until `shutdown`. For file certificates the task only waits for
    /// `shutdown` ([`Self::reload_files`] handles those).
    pub fn spawn_renewal(self: &Arc<Self>, shutdown: CancellationToken) -> JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move { this.renew_until(shutdown).await })
    }

    /// Reloads `cert_file`/`key_file` (on SIGHUP). The certificate in use is
    /// kept when the new files do not load. Does nothing for an obtained
    /// certificate, which renews itself. True when files were reloaded.
    pub fn reload_files(&self) -> Result<bool, TlsError> {
        if let Source::Files { cert, key } = &self.source {
            let loaded = Loaded::read(cert, key)?;
            let not_after = loaded.not_after;
            tracing::info!(cert = %cert.display(), %not_after, "reloaded the TLS certificate");
            self.swap(loaded);
            return Ok(true);
        }
        Ok(false)
    }

    /// When the certificate in use expires.
    pub fn not_after(&self) -> OffsetDateTime {
        self.current().not_after
    }

    /// The certificate chain in use, PEM, leaf first.
    pub fn chain_pem(&self) -> String {
        self.current().chain_pem.clone()
    }

    fn current(&self) -> Arc<Loaded> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn swap(&self, loaded: Loaded) {
        crate::metrics::own_certificate_expiry(loaded.not_after);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(loaded);
    }

    async fn renew_until(&self, shutdown: CancellationToken) {
        let Source::Upstream {
            upstream,
            dir,
            names,
            shared,
        } = &self.source
        else {
            shutdown.cancelled().await;
            return;
        };
        if let Some(shared) = shared {
            return self
                .renew_shared(upstream.as_ref(), names, dir, shared.as_ref(), shutdown)
                .await;
        }
        let mut backoff = FIRST_BACKOFF;
        loop {
            let current = self.current();
            let wait = to_std(current.renew_at() - OffsetDateTime::now_utc());
            let pause = if !wait.is_zero() {
                wait.min(RECHECK)
            } else {
                match obtain(upstream.as_ref(), names, dir).await {
                    Ok(loaded) => {
                        let not_after = loaded.not_after;
                        tracing::info!(%not_after, "renewed the TLS certificate");
                        // Never ask again at once, even if the upstream's
                        // certificate is already past two thirds of its life.
                        let pause = to_std((loaded.not_after - loaded.not_before) / 10);
                        self.swap(loaded);
                        backoff = FIRST_BACKOFF;
                        pause.clamp(Duration::from_secs(1), Duration::from_secs(300))
                    }
                    Err(e) => {
                        let (error, retry_in) = (chain(&e), backoff);
                        tracing::warn!(%error, ?retry_in, "TLS certificate renewal failed");
                        let pause = backoff;
                        backoff = (backoff * 2).min(RECHECK);
                        pause
                    }
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
}

impl ServerIdentity {
    /// Replicas: every [`shared::RELOAD_EVERY`], takes a newer certificate
    /// another replica stored; once the one in use is two thirds through
    /// its life, renews it under the lease (or leaves it to the replica
    /// that holds the lease).
    async fn renew_shared(
        &self,
        upstream: &dyn CertificateAuthorityService,
        names: &[Identifier],
        dir: &Path,
        shared: &dyn SharedIdentity,
        shutdown: CancellationToken,
    ) {
        // As in the single-process loop: failures back off, and a renewal is
        // never asked again at once, even for an upstream certificate already
        // past two thirds of its life.
        let mut backoff = FIRST_BACKOFF;
        let mut pause = FIRST_BACKOFF;
        loop {
            let current = self.current();
            let wait = to_std(current.renew_at() - OffsetDateTime::now_utc());
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(if wait.is_zero() { pause } else { wait.min(shared::RELOAD_EVERY) }) => {}
            }
            self.reload_shared(shared, names).await;
            if self.current().renew_at() > OffsetDateTime::now_utc() {
                continue;
            }
            pause = match shared::obtain_locked(upstream, names, dir, shared).await {
                Ok(Some(l)) => {
                    let not_after = l.not_after;
                    tracing::info!(%not_after, "renewed the shared TLS certificate");
                    let after = to_std((l.not_after - l.not_before) / 10);
                    self.swap(l);
                    backoff = FIRST_BACKOFF;
                    after.clamp(Duration::from_secs(1), Duration::from_secs(300))
                }
                // Another replica renews it; the next reload picks it up.
                Ok(None) => FIRST_BACKOFF,
                Err(e) => {
                    let retry_in = backoff;
                    tracing::warn!(error = %chain(&e), ?retry_in, "TLS certificate renewal failed");
                    backoff = (backoff * 2).min(RECHECK);
                    retry_in
                }
            };
        }
    }
}

impl ServerIdentity {
    /// Replicas: swaps in the stored certificate when it outlives the one
    /// in use (another replica renewed it); true if it did.
    async fn reload_shared(&self, shared: &dyn SharedIdentity, names: &[Identifier]) -> bool {
        match shared::stored(shared, names).await {
            Ok(Some(l)) if l.not_after > self.current().not_after => {
                let not_after = l.not_after;
                tracing::info!(%not_after, "loaded the TLS certificate renewed by another replica");
                self.swap(l);
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(error = %chain(&e), "cannot read the shared TLS certificate");
                false
            }
        }
    }
}

impl ResolvesServerCert for ServerIdentity {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current().certified))
    }
}

impl fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match &self.source {
            Source::Files { cert, .. } => format!("file {}", cert.display()),
            Source::Upstream { upstream, .. } => format!("upstream {}", upstream.name()),
        };
        f.debug_struct("ServerIdentity")
            .field("source", &source)
            .field("not_after", &self.not_after())
            .finish_non_exhaustive()
    }
}

/// Where the certificate comes from.
enum Source {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    Upstream {
        upstream: Arc<dyn CertificateAuthorityService>,
        dir: PathBuf,
        names: Vec<Identifier>,
        /// Replicas: the certificate they share in the store.
        shared: Option<Arc<dyn SharedIdentity>>,
    },
}

/// A certificate chain with its key, ready for rustls.
struct Loaded {
    certified: Arc<CertifiedKey>,
    chain_pem: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    sans: Vec<Identifier>,
}

impl Loaded {
    /// Reads a PEM chain and a PEM key.
    fn read(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let read = |path: &Path| {
            fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        Self::parse(&cert_pem, &key_pem, cert_path, key_path)
    }

    /// A PEM chain and a PEM key held in memory (the store's copy).
    fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let (cert, key) = (Path::new("<store: chain>"), Path::new("<store: key>"));
        Self::parse(cert_pem, key_pem, cert, key)
    }

    /// Parses a PEM chain and key; the paths name them in errors.
    fn parse(
        cert_pem: &[u8],
        key_pem: &[u8],
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<Self, TlsError> {
        let pem_error = |path: &Path, what, source| TlsError::Pem {
            path: path.to_owned(),
            what,
            source,
        };
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error(cert_path, "certificate", e))?;
        if chain.is_empty() {
            return Err(pem_error(cert_path, "certificate", PemError::NoItemsFound));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| pem_error(key_path, "private key", e))?;
        Self::new(chain, key, cert_path, key_path)
    }

    /// Pairs `chain` (leaf first) with `key`; the paths name them in errors.
    fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        cert_path: &Path,
        key_path: &Path,
    ) -> Result<Self, TlsError> {
        let chain_pem = chain
            .iter()
            .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec())))
            .collect();
        let certified =
            CertifiedKey::from_der(chain, key, &ring::default_provider()).map_err(|source| {
                TlsError::Key {
                    cert: cert_path.to_owned(),
                    key: key_path.to_owned(),
                    source,
                }
            })?;
        let bad_cert = |source: Box<dyn std::error::Error + Send + Sync>| TlsError::Certificate {
            path: cert_path.to_owned(),
            source,
        };
        let leaf_der = certified
            .end_entity_cert()
            .map_err(|e| bad_cert(Box::new(e)))?;
        let (_, leaf) = X509Certificate::from_der(leaf_der).map_err(|e| bad_cert(Box::new(e)))?;
        let mut sans = Vec::new();
        if let Some(ext) = leaf
            .subject_alternative_name()
            .map_err(|e| bad_cert(Box::new(e)))?
        {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => {
                        sans.push(Identifier::Dns(dns.to_ascii_lowercase()))
                    }
                    GeneralName::IPAddress(bytes) => {
                        if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                            sans.push(Identifier::Ip(IpAddr::from(v4)));
                        } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                            sans.push(Identifier::Ip(IpAddr::from(v6)));
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(Self {
            not_before: leaf.validity().not_before.to_datetime(),
            not_after: leaf.validity().not_after.to_datetime(),
            certified: Arc::new(certified),
            chain_pem,
            sans,
        })
    }

    /// Two thirds into the certificate's lifetime.
    fn renew_at(&self) -> OffsetDateTime {
        self.not_before + (self.not_after - self.not_before) * 2 / 3
    }

    fn covers(&self, names: &[Identifier]) -> bool {
        names.iter().all(|name| self.sans.contains(name))
    }
}

/// The certificate stored in `dir`, if it loads and covers `names`.
fn stored(dir: &Path, names: &[Identifier]) -> Option<Loaded> {
    let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    if !cert.exists() && !key.exists() {
        return None;
    }
    let loaded = match Loaded::read(&cert, &key) {
        Ok(loaded) => loaded,
        Err(e) => {
            tracing::warn!(error = %chain(&e), "not reusing the stored TLS certificate");
            return None;
        }
    };
    if !loaded.covers(names) {
        let cert = cert.display();
        tracing::info!(%cert, "the stored TLS certificate does not cover dnsNames");
        return None;
    }
    if let Ok(meta) = fs::metadata(&key) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(key = %key.display(), "tightening the TLS key file to mode 0600");
            if let Err(e) = fs::set_permissions(&key, fs::Permissions::from_mode(0o600)) {
                tracing::warn!(key = %key.display(), error = %e, "cannot change the key file mode");
            }
        }
    }
    Some(loaded)
}

/// At start: the stored certificate while it is short of two thirds of its
/// life; otherwise a new one, or the stored one while it is still valid if the
/// upstream fails (the renewal task retries).
async fn stored_or_obtain(
    upstream: &dyn CertificateAuthorityService,
    names: &[Identifier],
    dir: &Path,
    wait: Option<&CancellationToken>,
) -> Result<Loaded, TlsError> {
    let now = OffsetDateTime::now_utc();
    let mut stale = match stored(dir, names) {
        Some(stored) if stored.renew_at() > now => return Ok(stored),
        stale => stale,
    };
    let mut delay = Duration::from_secs(2);
    loop {
        match (obtain(upstream, names, dir).await, stale.take()) {
            (Ok(loaded), _) => return Ok(loaded),
            (Err(e), Some(stale)) if stale.not_after > now => {
                let error = chain(&e);
                tracing::warn!(%error, "cannot renew the stored TLS certificate yet; serving it");
                return Ok(stale);
            }
            (Err(e @ TlsError::Upstream(UpstreamError::Unavailable { .. })), _) => {
                let Some(token) = wait else { return Err(e) };
                tracing::warn!(
                    error = %chain(&e),
                    retry_in_seconds = delay.as_secs(),
                    upstream = %upstream.name(),
                    "the upstream cannot be reached, so the server cannot get its own certificate \
                     yet; it waits and retries (nothing is served meanwhile)"
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = token.cancelled() => {
                        return Err(TlsError::Config(
                            "stopped while waiting for the upstream to issue the server's certificate"
                                .to_owned(),
                        ));
                    }
                }
                delay = (delay * 2).min(Duration::from_secs(60));
            }
            (Err(e), _) => return Err(e),
        }
    }
}

/// Asks `upstream` for a certificate for `names` with a fresh EC P-256 key and
/// stores chain and key in `dir`.
async fn obtain(
    upstream: &dyn CertificateAuthorityService,
    names: &[Identifier],
    dir: &Path,
) -> Result<Loaded, TlsError> {
    obtain_with_key(upstream, names, dir)
        .await
        .map(|(loaded, _)| loaded)
}

/// As [`obtain`], with the new key's PEM (for the store's copy).
async fn obtain_with_key(
    upstream: &dyn CertificateAuthorityService,
    names: &[Identifier],
    dir: &Path,
) -> Result<(Loaded, String), TlsError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(TlsError::Csr)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    for name in names {
        params.subject_alt_names.push(match name {
            Identifier::Dns(dns) => {
                SanType::DnsName(Ia5String::try_from(dns.as_str()).map_err(TlsError::Csr)?)
            }
            Identifier::Ip(ip) => SanType::IpAddress(*ip),
        });
    }
    let csr = params.serialize_request(&key).map_err(TlsError::Csr)?;
    let req = SignRequest {
        csr_der: csr.der().to_vec(),
        csr_verified: true,
        identifiers: names.to_vec(),
        not_before: None,
        not_after: None,
        resume: None,
        replaces: None,
        profile: None,
    };
    let issued = upstream
        .create_certificate(&req, &NoCheckpoint)
        .await
        .map_err(TlsError::Upstream)?;
    let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
    let chain = issued
        .certificates
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let loaded = Loaded::new(chain, key_der, &cert_path, &key_path)?;
    if !loaded.covers(names) {
        return Err(TlsError::Config(format!(
            "the upstream {} issued a certificate that does not cover dnsNames",
            upstream.name()
        )));
    }

    let (dir, chain_pem, key_pem) = (
        dir.to_owned(),
        loaded.chain_pem.clone(),
        key.serialize_pem(),
    );
    let returned_key = key_pem.clone();
    tokio::task::spawn_blocking(move || {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| TlsError::Write {
                path: dir.clone(),
                source,
            })?;
        // The key first: a crash in between leaves a pair that does not match,
        // which the next start replaces.
        write_atomic(&key_path, key_pem.as_bytes(), 0o600).map_err(|source| TlsError::Write {
            path: key_path,
            source,
        })?;
        write_atomic(&cert_path, chain_pem.as_bytes(), 0o644).map_err(|source| TlsError::Write {
            path: cert_path,
            source,
        })
    })
    .await
    .map_err(|e| TlsError::Write {
        path: PathBuf::from("<tls dir>"),
        source: io::Error::other(e),
    })??;
    let (upstream, not_after) = (upstream.name(), loaded.not_after);
    tracing::info!(upstream = %upstream, %not_after, "obtained a TLS certificate");
    Ok((loaded, returned_key))
}

/// `dnsNames` as identifiers: IP literals as IPs, everything else as DNS names.
fn parse_names(names: &[String]) -> Result<Vec<Identifier>, TlsError> {
    if names.is_empty() {
        return Err(TlsError::Config(
            "dnsNames is empty: there is no name to obtain a certificate for".to_owned(),
        ));
    }
    Ok(names
        .iter()
        .map(|name| {
            let name = name.trim();
            match name
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
            {
                Ok(ip) => Identifier::Ip(ip),
                Err(_) => Identifier::Dns(name.to_ascii_lowercase()),
            }
        })
        .collect())
}

/// The rustls versions for step-ca's `minVersion`/`maxVersion`.
fn protocol_versions(
    min: Option<f32>,
    max: Option<f32>,
) -> Result<Vec<&'static SupportedProtocolVersion>, TlsError> {
    let tenths = |value: f32, key: &str| {
        let scaled = (value * 10.0).round();
        if (10.0..=13.0).contains(&scaled) && (value * 10.0 - scaled).abs() < 0.01 {
            Ok(scaled as u8)
        } else {
            Err(TlsError::Config(format!(
                "{key} {value} is not a TLS version (1.2 or 1.3)"
            )))
        }
    };
    let mut min = tenths(min.unwrap_or(1.2), "minVersion")?;
    let max = tenths(max.unwrap_or(1.3), "maxVersion")?;
    if min < 12 {
        tracing::warn!(
            "TLS 1.0 and 1.1 are not supported: minVersion 1.{} is treated as 1.2",
            min - 10
        );
        min = 12;
    }
    if max < 12 {
        return Err(TlsError::Config(format!(
            "maxVersion 1.{} is below TLS 1.2, the lowest supported",
            max - 10
        )));
    }
    if min > max {
        return Err(TlsError::Config(format!(
            "minVersion 1.{} is above maxVersion 1.{}",
            min - 10,
            max - 10
        )));
    }
    let mut versions = Vec::new();
    if max >= 13 {
        versions.push(&TLS13);
    }
    if min <= 12 {
        versions.push(&TLS12);
    }
    Ok(versions)
}

/// A negative or huge span as a std duration (zero when negative).
fn to_std(span: time::Duration) -> Duration {
    Duration::try_from(span).unwrap_or(Duration::ZERO)
}

/// An error and its causes on one line, for logs.
fn chain(e: &TlsError) -> String {
    crate::telemetry::causes(e)
}

#[cfg(test)]
mod tests;
