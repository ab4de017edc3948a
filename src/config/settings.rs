//! What a checked `ca.json` says, in the types the server uses: nothing here
//! can be wrong any more, so nothing that reads it returns an error about
//! configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use super::routes::{FailoverSettings, NamedUpstream, RouteSettings};
use super::{
    ConnectionLimits, ExternalCasSettings, RateLimitSettings, RetentionSettings, Secret,
    StepCasSettings, VaultCasSettings, X509PolicyConfig,
};
use crate::acme::types::ChallengeType;
use crate::validate::egress::EgressRules;

/// The largest `authority.upstreamConcurrency`.
pub const MAX_UPSTREAM_CONCURRENCY: u32 = 4096;

/// A checked configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// The ACME listener's address (`address`; `:port` is every interface).
    pub listen: SocketAddr,
    /// Names (and IP literals) of the RA's own TLS certificate.
    pub dns_names: Vec<String>,
    /// Where the RA keeps what it writes (default `/var/lib/acmeproxy`).
    pub data_dir: PathBuf,
    /// The store `db` selects.
    pub store: StoreChoice,
    /// `logger.format` is `json`.
    pub json_logs: bool,
    pub tls: TlsSettings,
    /// The metrics listener, if enabled: top-level `metrics`, else
    /// `authority.config.metrics`, else 127.0.0.1:9123.
    pub metrics: Option<SocketAddr>,
    /// The ACME listener's connection limits (`connections`).
    pub connections: ConnectionLimits,
    /// The root certificate files of `root`.
    pub root_files: Vec<PathBuf>,
    pub validation: ValidationSettings,
    /// The upstream CA that signs, with its settings (with
    /// `authority.upstreams`: the first of them).
    pub upstream: Upstream,
    /// `authority.upstreams`: several named upstreams, chosen by `routes`
    /// (empty: `upstream` alone signs).
    pub upstreams: Vec<NamedUpstream>,
    /// `authority.routes`, checked (with `upstreams`).
    pub routes: Vec<RouteSettings>,
    /// `authority.failover`.
    pub failover: FailoverSettings,
    /// Finalize jobs that talk to the upstream at once.
    pub upstream_concurrency: usize,
    /// `authority.rateLimits` (to apply over the limits' defaults).
    pub rate_limits: RateLimitSettings,
    /// `authority.retention`: when the purge removes expired records.
    pub retention: RetentionSettings,
    pub provisioners: Vec<ProvisionerSettings>,
    /// `authority.profiles`, by name (draft-ietf-acme-profiles); empty when
    /// none are configured.
    pub profiles: std::collections::BTreeMap<String, super::ProfileSettings>,
}

impl Settings {
    /// Every upstream configured: `upstreams`, or the single `upstream`.
    pub fn every_upstream(&self) -> Vec<&Upstream> {
        if self.upstreams.is_empty() {
            vec![&self.upstream]
        } else {
            self.upstreams.iter().map(|u| &u.upstream).collect()
        }
    }

    /// The stepcas issuer password from `--issuer-password-file`: it wins
    /// over `certificateIssuer.password` and `passwordFile`. Other upstreams
    /// have no use for it.
    pub fn set_issuer_password(&mut self, password: Secret) {
        if let Upstream::StepCas(s) = &mut self.upstream {
            s.password = Some(password.clone());
        }
        for named in &mut self.upstreams {
            if let Upstream::StepCas(s) = &mut named.upstream {
                s.password = Some(password.clone());
            }
        }
    }
}

/// The store the configuration selects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreChoice {
    Memory,
    Postgres(PostgresSettings),
    Sled(PathBuf),
}

impl std::fmt::Display for StoreChoice {
    /// For people: the kind and where (never a PostgreSQL URL, which may
    /// hold a password).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => f.write_str("memory (nothing kept on disk)"),
            Self::Postgres(pg) => write!(f, "postgresql, database {:?}", pg.database),
            Self::Sled(path) => write!(f, "sled in {}", path.display()),
        }
    }
}

/// `db` with `type: "postgresql"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostgresSettings {
    /// `dataSource`: a libpq URL or key-value string (may hold a password).
    pub data_source: Secret,
    /// `database` (default `acmeproxy`).
    pub database: String,
    /// From `passwordFile`, else `ACMEPROXY_DB_PASSWORD`; `None` leaves the
    /// one in `dataSource`, if any.
    pub password: Option<Secret>,
    /// `maxConnections` (default 16).
    pub max_connections: usize,
}

/// `tls`: the versions offered and the certificate files, if any.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TlsSettings {
    pub min_version: Option<f32>,
    pub max_version: Option<f32>,
    /// PEM certificate chain and key that replace the obtained certificate.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// `validation`: where challenge validation connects, and for how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationSettings {
    pub http_port: u16,
    pub tls_alpn_port: u16,
    /// Name servers; empty means the system's.
    pub resolvers: Vec<SocketAddr>,
    pub timeout: Duration,
    /// The networks validation never connects to.
    pub egress: EgressRules,
}

/// The upstream CA that `authority.type` selects, with its checked settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Upstream {
    SoftCas(SoftCasSettings),
    ExternalCas(ExternalCasSettings),
    StepCas(StepCasSettings),
    VaultCas(VaultCasSettings),
}

impl Upstream {
    /// The name `authority.type` gives it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::SoftCas(_) => "softcas",
            Self::ExternalCas(_) => "externalcas",
            Self::StepCas(_) => "stepcas",
            Self::VaultCas(_) => "vaultcas",
        }
    }
}

/// The checked softcas settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SoftCasSettings {
    /// CA name: `<name> Root CA` / `<name> Intermediate CA`.
    pub name: String,
    /// Leaf lifetime when none is asked for (`certlifetime`, default 90 days).
    pub lifetime: Duration,
    /// Wait before signing each certificate (benchmarks and tests).
    pub sign_delay: Duration,
}

/// One ACME provisioner, lifetimes resolved: the provisioner's claims, else
/// the authority's, else `certlifetime` days, else the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisionerSettings {
    pub name: String,
    /// Challenge types offered.
    pub challenges: Vec<ChallengeType>,
    /// Whether newAccount needs External Account Binding.
    pub require_eab: bool,
    /// `None` leaves the lifetime to the upstream.
    pub default_lifetime: Option<time::Duration>,
    pub min_lifetime: time::Duration,
    pub max_lifetime: time::Duration,
    /// The x509 name policies, authority's first, each with the level it
    /// comes from ("authority", "provisioner \"acme\"").
    pub policies: Vec<(String, X509PolicyConfig)>,
    /// Directory `meta`.
    pub terms_of_service: Option<String>,
    pub website: Option<String>,
    pub caa_identities: Vec<String>,
}

/// What a loaded configuration warns about (ignored keys, renamed backends).
#[derive(Clone, Debug, Default)]
pub struct Warnings(pub Vec<String>);
