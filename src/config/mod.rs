//! The `ca.json` document: a step-ca style configuration, so that users of
//! step-ca and of the Go `acme-proxy` plugin bring the file they have.
//! Parsing is strict (unknown keys are errors that name their path); keys that
//! step-ca defines and acmeproxy does not use are accepted with one warning.
//! `acmeproxy check-config` runs exactly [`Config::load`].

mod checks;
mod connections;
mod duration;
mod egress;
mod externalcas;
mod policy;
mod ratelimits;
mod secret;
mod stepcas;
mod validate;
mod vaultcas;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::acme::types::ChallengeType;

pub use connections::{ConnectionLimits, ConnectionsConfig};
pub use duration::parse_go_duration;
pub use egress::{DenyNetworks, loopback_demo_networks};
pub use externalcas::ExternalCasConfig;
pub use policy::{NamesConfig, PolicyConfig, X509PolicyConfig};
pub use ratelimits::{LimitConfig, RateLimitsConfig};
pub use secret::Secret;
pub use stepcas::{IssuerType, StepCasConfig, read_password_file};
pub use vaultcas::{
    DEFAULT_KUBERNETES_TOKEN_PATH, SecretIdSource, VaultAuth, VaultAuthOptions, VaultCasConfig,
    VaultCasSettings,
};

/// Errors in the configuration; each names the key or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// The whole `ca.json`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// Listen address of the ACME server, `host:port` or `:port`.
    #[serde(default = "default_address")]
    pub address: String,
    /// Names (and IP literals) of the RA's own TLS certificate.
    #[serde(default)]
    pub dns_names: Vec<String>,
    /// Where the RA keeps what it writes (store, softcas keys, TLS, socket).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub db: Option<DbConfig>,
    #[serde(default)]
    pub logger: Option<LoggerConfig>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    pub authority: AuthorityConfig,
    #[serde(default)]
    pub validation: ValidationConfig,
    /// Metrics listener; `authority.config.metrics` (Go plugin) is read too.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// Timeouts and caps of the ACME listener's client connections.
    #[serde(default)]
    pub connections: Option<ConnectionsConfig>,
    /// step-ca's `root`: the root certificate file(s), PEM, that the RA's
    /// chains lead to; served at `/roots.pem`. A path or a list of paths.
    #[serde(default)]
    pub root: Option<OneOrMany<PathBuf>>,
    // step-ca keys that acmeproxy does not use: accepted, warned about.
    #[serde(default)]
    federated_roots: Option<Value>,
    #[serde(default)]
    crt: Option<Value>,
    #[serde(default)]
    key: Option<Value>,
    #[serde(default)]
    ssh: Option<Value>,
    #[serde(default)]
    templates: Option<Value>,
    #[serde(default)]
    common_name: Option<Value>,
    #[serde(default)]
    insecure_address: Option<Value>,
    #[serde(default)]
    kms: Option<Value>,
    #[serde(default)]
    crl: Option<Value>,
    #[serde(default)]
    password: Option<Value>,
}

/// A value or a list of values, as step-ca's `MultiString` keys take.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    /// The values, in order.
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            Self::One(v) => vec![v.clone()],
            Self::Many(v) => v.clone(),
        }
    }
}

fn default_address() -> String {
    ":443".to_owned()
}

/// `db`: which store. Its `Debug` hides a connection URL's password.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DbConfig {
    /// `sled` (default); step-ca's `badgerv2`, `badger`, `bbolt` mean the
    /// embedded store; `postgresql` for replicas.
    #[serde(rename = "type")]
    pub kind: String,
    /// Path (embedded) or connection URL (PostgreSQL).
    #[serde(default)]
    pub data_source: Option<String>,
    #[serde(default)]
    badger_file_loading_mode: Option<Value>,
}

/// `logger`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoggerConfig {
    /// `text` (default) or `json`.
    #[serde(default)]
    pub format: Option<String>,
}

/// `tls`: versions, and optionally a certificate and key from files.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsConfig {
    #[serde(default)]
    pub min_version: Option<f32>,
    #[serde(default)]
    pub max_version: Option<f32>,
    /// PEM certificate chain; with `keyFile`, replaces the obtained certificate.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    renegotiation: Option<Value>,
    #[serde(default)]
    cipher_suites: Option<Value>,
}

/// `authority`. Its `Debug` hides secrets inside `config` and
/// `certificateIssuer`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorityConfig {
    /// `softcas`, `externalcas`, `stepcas` or `vaultcas`.
    #[serde(rename = "type", default = "default_authority_type")]
    pub kind: String,
    /// Upstream-specific settings.
    #[serde(default)]
    pub config: Option<Value>,
    #[serde(default)]
    pub provisioners: Vec<ProvisionerConfig>,
    #[serde(default)]
    pub claims: Option<ClaimsConfig>,
    /// Name policy for every provisioner.
    #[serde(default)]
    pub policy: Option<PolicyConfig>,
    /// Finalize jobs that talk to the upstream at once (default 32).
    #[serde(default)]
    pub upstream_concurrency: Option<u32>,
    /// Rate limits and the cap on concurrent validations.
    #[serde(default)]
    pub rate_limits: Option<RateLimitsConfig>,
    // stepcas / vaultcas keys (step-ca RA mode).
    #[serde(default)]
    pub certificate_authority: Option<String>,
    #[serde(default)]
    pub certificate_authority_fingerprint: Option<String>,
    #[serde(default)]
    pub certificate_issuer: Option<Value>,
    /// The stepcas issuer password from `--issuer-password-file`; wins over
    /// `certificateIssuer.password`. Never read from the file.
    #[serde(skip)]
    pub issuer_password: Option<Secret>,
    // step-ca keys acmeproxy does not use.
    #[serde(default)]
    template: Option<Value>,
    #[serde(default)]
    backdate: Option<Value>,
    #[serde(default)]
    options: Option<Value>,
    #[serde(default)]
    enable_admin: Option<Value>,
    #[serde(default)]
    disable_issued_at_check: Option<Value>,
    #[serde(default)]
    admins: Option<Value>,
}

impl std::fmt::Debug for AuthorityConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityConfig")
            .field("kind", &self.kind)
            .field("config", &self.config.as_ref().map(redacted))
            .field("provisioners", &self.provisioners)
            .field("claims", &self.claims)
            .field("policy", &self.policy)
            .field("upstream_concurrency", &self.upstream_concurrency)
            .field("rate_limits", &self.rate_limits)
            .field("certificate_authority", &self.certificate_authority)
            .field(
                "certificate_authority_fingerprint",
                &self.certificate_authority_fingerprint,
            )
            .field(
                "certificate_issuer",
                &self.certificate_issuer.as_ref().map(redacted),
            )
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = self.data_source.as_ref().map(|s| {
            if s.contains('@') || s.contains("password") {
                "***".to_owned()
            } else {
                s.clone()
            }
        });
        f.debug_struct("DbConfig")
            .field("kind", &self.kind)
            .field("data_source", &source)
            .finish_non_exhaustive()
    }
}

/// A copy of `v` with the values of secret-looking keys replaced by `***`.
pub fn redacted(v: &Value) -> Value {
    const SECRET_WORDS: [&str; 6] = ["hmac", "password", "secret", "token", "key", "env_vars"];
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let lower = k.to_ascii_lowercase();
                    let secret = SECRET_WORDS.iter().any(|w| lower.contains(w))
                        && !lower.ends_with("_file")
                        && !lower.ends_with("file")
                        && !lower.ends_with("_env")
                        && !lower.ends_with("kid");
                    if secret && !v.is_null() {
                        (k.clone(), Value::String("***".into()))
                    } else {
                        (k.clone(), redacted(v))
                    }
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(redacted).collect()),
        other => other.clone(),
    }
}

fn default_authority_type() -> String {
    "softcas".to_owned()
}

/// One ACME provisioner: one directory at `/acme/<name>/directory`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProvisionerConfig {
    /// Must be `ACME`.
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    /// Challenge types offered; default all three.
    #[serde(default)]
    pub challenges: Option<Vec<ChallengeType>>,
    /// Whether newAccount needs External Account Binding.
    #[serde(default, rename = "requireEAB")]
    pub require_eab: bool,
    #[serde(default)]
    pub claims: Option<ClaimsConfig>,
    /// Name policy of this provisioner, on top of the authority's.
    #[serde(default)]
    pub policy: Option<PolicyConfig>,
    #[serde(default)]
    options: Option<Value>,
    #[serde(default, rename = "forceCN")]
    force_cn: Option<Value>,
    #[serde(default)]
    terms_of_service: Option<String>,
    #[serde(default)]
    website: Option<String>,
    #[serde(default)]
    caa_identities: Option<Vec<String>>,
    #[serde(default)]
    attestation_formats: Option<Value>,
}

/// `claims`: certificate lifetimes, Go durations (`24h`, `720h`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClaimsConfig {
    #[serde(default, rename = "minTLSCertDuration")]
    pub min_tls_cert_duration: Option<String>,
    #[serde(default, rename = "maxTLSCertDuration")]
    pub max_tls_cert_duration: Option<String>,
    #[serde(default, rename = "defaultTLSCertDuration")]
    pub default_tls_cert_duration: Option<String>,
    #[serde(default, rename = "enableSSHCA")]
    enable_ssh_ca: Option<Value>,
    #[serde(default)]
    disable_renewal: Option<Value>,
    #[serde(default)]
    allow_renewal_after_expiry: Option<Value>,
    #[serde(default)]
    disable_smallstep_extensions: Option<Value>,
}

/// `validation`: where challenge validation connects.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ValidationConfig {
    #[serde(default = "default_http_port")]
    pub http_port: u16,
    #[serde(default = "default_tls_alpn_port")]
    pub tls_alpn_port: u16,
    /// `host:port` name servers; empty means the system's.
    #[serde(default)]
    pub resolvers: Vec<String>,
    #[serde(default = "default_validation_timeout")]
    pub timeout_seconds: u64,
    /// Networks validation never connects to; absent, the defaults.
    #[serde(default)]
    pub deny_networks: DenyNetworks,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        Self {
            http_port: default_http_port(),
            tls_alpn_port: default_tls_alpn_port(),
            resolvers: Vec::new(),
            timeout_seconds: default_validation_timeout(),
            deny_networks: DenyNetworks::default(),
        }
    }
}

fn default_http_port() -> u16 {
    80
}
fn default_tls_alpn_port() -> u16 {
    443
}
fn default_validation_timeout() -> u64 {
    15
}

/// `metrics`: the Prometheus listener.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricsConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Port on all interfaces (the Go plugin's key).
    #[serde(default)]
    pub port: Option<u16>,
    /// Full listen address; wins over `port`.
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    data_source: Option<Value>,
}

fn default_true() -> bool {
    true
}

/// The softcas upstream's `authority.config`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SoftCasConfig {
    /// Leaf lifetime in days (the Go plugin's key); default 90.
    #[serde(default)]
    pub certlifetime: Option<u32>,
    /// CA name: `<name> Root CA` / `<name> Intermediate CA`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// For benchmarks and tests only: wait this long (a Go duration such as
    /// `10s`) before signing each certificate, to stand in for a slow upstream.
    #[serde(default)]
    pub sign_delay: Option<String>,
}

impl SoftCasConfig {
    /// `signDelay` parsed; zero when absent.
    pub fn sign_delay(&self) -> Result<std::time::Duration, ConfigError> {
        match &self.sign_delay {
            None => Ok(std::time::Duration::ZERO),
            Some(s) => parse_go_duration(s)
                .map_err(|e| ConfigError::invalid("authority.config.signDelay", e)),
        }
    }
}

/// The largest `authority.upstreamConcurrency`.
pub const MAX_UPSTREAM_CONCURRENCY: u32 = 4096;

/// The two places a metrics listener can be configured.
struct MetricsListenSource {
    top: Option<MetricsConfig>,
    plugin: Option<MetricsConfig>,
}

/// What a loaded configuration warns about (ignored keys, renamed backends).
#[derive(Clone, Debug, Default)]
pub struct Warnings(pub Vec<String>);

/// The embedded store the configuration selects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreChoice {
    Memory,
    Sled(PathBuf),
    Postgres(Secret),
}

impl std::fmt::Display for StoreChoice {
    /// For people: the kind and where, never a connection URL (it may hold a
    /// password).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => f.write_str("memory (nothing kept on disk)"),
            Self::Sled(path) => write!(f, "sled in {}", path.display()),
            Self::Postgres(_) => f.write_str("postgresql"),
        }
    }
}

/// The metrics listener, if enabled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsListen(pub Option<SocketAddr>);

impl Config {
    /// Reads, parses and validates a `ca.json`. A relative `dataDir` is
    /// taken relative to the directory that holds the file (not the working
    /// directory, which is `/` under systemd).
    pub fn load(path: &Path) -> Result<(Self, Warnings), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let (mut cfg, warnings) = Self::parse(&text)?;
        if let Some(dir) = cfg.data_dir.as_ref().filter(|d| d.is_relative()) {
            let base = std::path::absolute(path)
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .unwrap_or_default();
            cfg.data_dir = Some(base.join(dir));
        }
        Ok((cfg, warnings))
    }

    /// Parses and validates a document.
    pub fn parse(text: &str) -> Result<(Self, Warnings), ConfigError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let cfg: Self = serde_path_to_error::deserialize(de).map_err(|e| ConfigError::Parse {
            path: e.path().to_string(),
            message: e.inner().to_string(),
        })?;
        let warnings = cfg.validate().map_err(|e| match e {
            ConfigError::Invalid { key, message } => {
                let message = match checks::line_of(text, &key) {
                    Some(line) => format!("{message} (line {line})"),
                    None => message,
                };
                ConfigError::Invalid { key, message }
            }
            other => other,
        })?;
        Ok((cfg, warnings))
    }

    /// A configuration for tests: softcas, in-memory store, one provisioner
    /// `acme`, loopback.
    pub fn for_test(data_dir: &Path) -> Self {
        let text = serde_json::json!({
            "address": "127.0.0.1:0",
            "dnsNames": ["localhost", "127.0.0.1"],
            "dataDir": data_dir,
            "db": {"type": "memory"},
            "metrics": {"enabled": false},
            "authority": {"type": "softcas", "provisioners": [{"type": "ACME", "name": "acme"}]},
        });
        match serde_json::from_value(text) {
            Ok(c) => c,
            Err(e) => unreachable!("the test configuration is valid: {e}"),
        }
    }

    /// The data directory (default `/var/lib/acmeproxy`).
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/lib/acmeproxy"))
    }

    /// The listen address, with `:port` meaning all interfaces.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        parse_listen(&self.address).map_err(|m| ConfigError::invalid("address", m))
    }

    /// The store selected by `db`.
    pub fn store(&self) -> Result<StoreChoice, ConfigError> {
        let default_path = || self.data_dir().join("db");
        let Some(db) = &self.db else {
            return Ok(StoreChoice::Sled(default_path()));
        };
        match db.kind.as_str() {
            "sled" | "badgerv2" | "badger" | "badgerV2" | "bbolt" => Ok(StoreChoice::Sled(
                db.data_source
                    .as_ref()
                    .filter(|_| db.kind == "sled")
                    .map_or_else(default_path, PathBuf::from),
            )),
            "memory" => Ok(StoreChoice::Memory),
            "postgresql" | "postgres" => match &db.data_source {
                Some(url) if !url.is_empty() => Ok(StoreChoice::Postgres(Secret::new(url.clone()))),
                _ => Err(ConfigError::invalid(
                    "db.dataSource",
                    "postgresql needs a connection URL in db.dataSource",
                )),
            },
            other => Err(ConfigError::invalid(
                "db.type",
                format!("unknown store {other:?}; use \"sled\" or \"postgresql\""),
            )),
        }
    }

    /// The metrics listener: top-level `metrics`, else `authority.config.metrics`,
    /// else port 9123 on 127.0.0.1. Only `address` listens beyond loopback:
    /// the metrics need no credentials, so exposing them is a choice.
    pub fn metrics_listen(&self) -> Result<MetricsListen, ConfigError> {
        let MetricsListenSource { top, plugin } = self.metrics_sources()?;
        let m = top.or(plugin);
        let Some(m) = m else {
            return Ok(MetricsListen(Some(SocketAddr::from((
                [127, 0, 0, 1],
                9123,
            )))));
        };
        if !m.enabled {
            return Ok(MetricsListen(None));
        }
        let addr = match (&m.address, m.port) {
            (Some(a), _) => {
                parse_listen(a).map_err(|e| ConfigError::invalid("metrics.address", e))?
            }
            (None, Some(p)) => SocketAddr::from(([127, 0, 0, 1], p)),
            (None, None) => SocketAddr::from(([127, 0, 0, 1], 9123)),
        };
        Ok(MetricsListen(Some(addr)))
    }

    /// A warning when `metrics.port` is given without `address`: the Go
    /// plugin listened on every interface there, acmeproxy on 127.0.0.1.
    fn metrics_port_warning(&self) -> Option<String> {
        let MetricsListenSource { top, plugin } = self.metrics_sources().ok()?;
        let m = top.or(plugin)?;
        match (m.enabled, &m.address, m.port) {
            (true, None, Some(p)) => Some(format!(
                "metrics.port {p} listens on 127.0.0.1 only; set metrics.address to \"0.0.0.0:{p}\" if Prometheus scrapes from another host"
            )),
            _ => None,
        }
    }

    fn metrics_sources(&self) -> Result<MetricsListenSource, ConfigError> {
        let plugin = self
            .authority
            .config
            .as_ref()
            .and_then(|c| c.get("metrics"))
            .map(|m| serde_json::from_value::<MetricsConfig>(m.clone()))
            .transpose()
            .map_err(|e| ConfigError::invalid("authority.config.metrics", e.to_string()))?;
        Ok(MetricsListenSource {
            top: self.metrics.clone(),
            plugin,
        })
    }

    /// The connection limits of the ACME listener (`connections`).
    pub fn connection_limits(&self) -> Result<ConnectionLimits, ConfigError> {
        self.connections.clone().unwrap_or_default().limits()
    }

    /// The validation resolvers as socket addresses.
    pub fn resolvers(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        self.validation
            .resolvers
            .iter()
            .map(|r| {
                r.parse::<SocketAddr>()
                    .or_else(|_| {
                        r.parse::<std::net::IpAddr>()
                            .map(|ip| SocketAddr::new(ip, 53))
                    })
                    .map_err(|_| {
                        ConfigError::invalid(
                            "validation.resolvers",
                            format!("{r:?} is not an IP address or ip:port"),
                        )
                    })
            })
            .collect()
    }

    /// The root certificate files of `root` (none when unset).
    pub fn root_files(&self) -> Vec<PathBuf> {
        self.root
            .as_ref()
            .map(OneOrMany::to_vec)
            .unwrap_or_default()
    }

    /// The external ACME upstream's settings (`authority.type: "externalcas"`).
    pub fn externalcas(&self) -> Result<ExternalCasConfig, ConfigError> {
        self.sub_config()
    }

    /// How many finalize jobs talk to the upstream at once
    /// (`authority.upstreamConcurrency`, default 32, at most
    /// [`MAX_UPSTREAM_CONCURRENCY`]).
    pub fn upstream_concurrency(&self) -> Result<usize, ConfigError> {
        match self.authority.upstream_concurrency {
            None => Ok(32),
            Some(n) if (1..=MAX_UPSTREAM_CONCURRENCY).contains(&n) => {
                Ok(usize::try_from(n).unwrap_or(32))
            }
            Some(n) => Err(ConfigError::invalid(
                "authority.upstreamConcurrency",
                format!(
                    "{n} is out of range; give 1 to {MAX_UPSTREAM_CONCURRENCY} (default 32), more for a slow remote CA"
                ),
            )),
        }
    }

    /// The rate limits in force (`authority.rateLimits` over the defaults).
    pub fn rate_limits(&self) -> Result<crate::ra::limits::RateLimits, ConfigError> {
        self.authority
            .rate_limits
            .clone()
            .unwrap_or_default()
            .resolve()
    }

    /// The softcas settings (`authority.config` when `type` is `softcas`).
    pub fn softcas(&self) -> Result<SoftCasConfig, ConfigError> {
        self.sub_config()
    }
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_owned()
    };
    full.parse::<SocketAddr>().map_err(|_| {
        match full.rsplit_once(':') {
            Some((host, port))
                if port.parse::<u16>().is_ok()
                    && host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_err() =>
            {
                format!(
                    "{s:?} names a host; acmeproxy binds one address and does not resolve names \
                     (a name may stand for several addresses, or change): give an IP address, \
                     e.g. \"127.0.0.1:{port}\" or \"[::1]:{port}\", or \":{port}\" for every interface"
                )
            }
            _ => format!(
                "{s:?} is not a listen address: give an IP and a port, like \":443\" or \"127.0.0.1:8443\""
            ),
        }
    })
}

impl ProvisionerConfig {
    /// The challenge types this provisioner offers.
    pub fn challenge_types(&self) -> Vec<ChallengeType> {
        self.challenges.clone().unwrap_or_else(|| {
            vec![
                ChallengeType::Http01,
                ChallengeType::Dns01,
                ChallengeType::TlsAlpn01,
            ]
        })
    }

    /// Directory `meta.termsOfService`.
    pub fn terms_of_service(&self) -> Option<&str> {
        self.terms_of_service.as_deref()
    }

    /// Directory `meta.website`.
    pub fn website(&self) -> Option<&str> {
        self.website.as_deref()
    }

    /// Directory `meta.caaIdentities`.
    pub fn caa_identities(&self) -> &[String] {
        self.caa_identities.as_deref().unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests;
