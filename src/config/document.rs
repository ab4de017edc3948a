//! The `ca.json` document as written: serde types, both ways. Each object
//! refuses unknown keys; the step-ca keys acmeproxy does not use are declared
//! once, in the object's `ignores` list.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

use super::{
    ConnectionsConfig, DenyNetworks, Opaque, PolicyConfig, RateLimitsConfig, RetentionConfig,
};
use crate::acme::types::ChallengeType;

document! {
    /// The whole `ca.json`.
    #[derive(Clone, Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct Config {
        /// Listen address of the ACME server, `host:port` or `:port`.
        #[serde(default = "default_address")]
        pub address: String,
        /// Names (and IP literals) of the RA's own TLS certificate.
        #[serde(default)]
        pub dns_names: Vec<String>,
        /// Where the RA keeps what it writes (store, softcas keys, TLS, socket).
        pub data_dir: Option<PathBuf>,
        pub db: Option<DbConfig>,
        pub logger: Option<LoggerConfig>,
        pub tls: Option<TlsConfig>,
        pub authority: AuthorityConfig,
        #[serde(default)]
        pub validation: ValidationConfig,
        /// Metrics listener; `authority.config.metrics` (Go plugin) is read too.
        pub metrics: Option<MetricsConfig>,
        /// Timeouts and caps of the ACME listener's client connections.
        pub connections: Option<ConnectionsConfig>,
        /// step-ca's `root`: the root certificate file(s), PEM, that the RA's
        /// chains lead to; served at `/roots.pem`. A path or a list of paths.
        pub root: Option<OneOrMany<PathBuf>>,
    }
    ignores {
        "federatedRoots" federated_roots, "crt" crt, "key" key, "ssh" ssh,
        "templates" templates, "commonName" common_name,
        "insecureAddress" insecure_address, "kms" kms, "crl" crl, "password" password,
    }
}

/// A value or a list of values, as step-ca's `MultiString` keys take.
#[derive(Clone, Debug, Deserialize, Serialize)]
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

document! {
    /// `db`: which store.
    #[derive(Clone, Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct DbConfig {
        /// `sled` (default); step-ca's `badgerv2`, `badger`, `bbolt` mean the
        /// embedded store; `postgresql` for replicas.
        #[serde(rename = "type")]
        pub kind: String,
        /// Path (embedded) or connection URL (PostgreSQL, which may hold a
        /// password: a secret).
        pub data_source: Option<super::Secret>,
        /// PostgreSQL: the database (default `acmeproxy`), created at
        /// start-up when missing.
        pub database: Option<String>,
        /// PostgreSQL: a file holding the password (wins over
        /// `ACMEPROXY_DB_PASSWORD` and over one in `dataSource`).
        pub password_file: Option<PathBuf>,
        /// PostgreSQL: connections in the pool, at most (default 16).
        pub max_connections: Option<usize>,
    }
    ignores { "badgerFileLoadingMode" badger_file_loading_mode }
}

/// `logger`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoggerConfig {
    /// `text` (default) or `json`.
    pub format: Option<String>,
}

document! {
    /// `tls`: versions, and optionally a certificate and key from files.
    #[derive(Clone, Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct TlsConfig {
        pub min_version: Option<f32>,
        pub max_version: Option<f32>,
        /// PEM certificate chain; with `keyFile`, replaces the obtained certificate.
        pub cert_file: Option<PathBuf>,
        pub key_file: Option<PathBuf>,
    }
    ignores { "renegotiation" renegotiation, "cipherSuites" cipher_suites }
}

document! {
    /// `authority`: the upstream (`type`, `config` and step-ca's RA-mode
    /// keys, which step-ca keeps at this level) and the provisioners.
    /// [`Config::check`] reads the upstream's part into its settings type.
    #[derive(Clone, Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct AuthorityConfig {
        /// The upstream CA that signs.
        #[serde(rename = "type", default)]
        pub kind: UpstreamKind,
        /// The upstream's options: [`SoftCasConfig`],
        /// [`ExternalCasConfig`](super::ExternalCasConfig) or
        /// [`VaultCasConfig`](super::VaultCasConfig); free-form for stepcas.
        pub config: Option<Opaque>,
        #[serde(default)]
        pub provisioners: Vec<ProvisionerConfig>,
        pub claims: Option<ClaimsConfig>,
        /// Name policy for every provisioner.
        pub policy: Option<PolicyConfig>,
        /// Finalize jobs that talk to the upstream at once (default 32).
        pub upstream_concurrency: Option<u32>,
        /// Rate limits and the cap on concurrent validations.
        pub rate_limits: Option<RateLimitsConfig>,
        /// When expired orders and certificates are purged.
        pub retention: Option<RetentionConfig>,
        /// stepcas, vaultcas: the upstream's URL.
        pub certificate_authority: Option<String>,
        /// stepcas, vaultcas: SHA-256 of the root the upstream's HTTPS chains to.
        pub certificate_authority_fingerprint: Option<String>,
        /// stepcas: [`IssuerConfig`](super::IssuerConfig); free-form otherwise.
        pub certificate_issuer: Option<Opaque>,
        /// Several named upstreams, each as `type`, `config` and the
        /// step-ca keys above would give one (then those are not used).
        pub upstreams: Option<Vec<UpstreamEntry>>,
        /// Which upstreams sign which orders, tried in order (with
        /// `upstreams`; default: one route to all of them, in order).
        pub routes: Option<Vec<RouteConfig>>,
        /// When an upstream of a route is skipped, and how it comes back.
        pub failover: Option<FailoverConfig>,
        /// The certificate profiles clients may choose at newOrder
        /// (draft-ietf-acme-profiles), by name.
        pub profiles: Option<std::collections::BTreeMap<String, super::ProfileConfig>>,
    }
    ignores {
        "template" template, "backdate" backdate, "options" options,
        "enableAdmin" enable_admin, "disableIssuedAtCheck" disable_issued_at_check,
        "admins" admins,
    }
}

/// `authority.type`: the upstream CA that signs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamKind {
    /// A local two-level CA in `<dataDir>/softcas/`.
    #[default]
    SoftCas,
    /// An external ACME CA.
    ExternalCas,
    /// A step-ca, with a JWK or X5C provisioner.
    StepCas,
    /// HashiCorp Vault's (or OpenBao's) PKI engine.
    VaultCas,
}

impl UpstreamKind {
    const ALL: [Self; 4] = [
        Self::SoftCas,
        Self::ExternalCas,
        Self::StepCas,
        Self::VaultCas,
    ];

    /// The name `authority.type` gives it.
    pub fn name(self) -> &'static str {
        match self {
            Self::SoftCas => "softcas",
            Self::ExternalCas => "externalcas",
            Self::StepCas => "stepcas",
            Self::VaultCas => "vaultcas",
        }
    }
}

impl<'de> Deserialize<'de> for UpstreamKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Self::ALL.into_iter().find(|k| k.name() == name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown upstream {name:?}; use \"softcas\", \"externalcas\", \"stepcas\" or \"vaultcas\""
            ))
        })
    }
}

document! {
    /// One ACME provisioner: one directory at `/acme/<name>/directory`.
    #[derive(Clone, Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct ProvisionerConfig {
        /// Must be `ACME`.
        #[serde(rename = "type")]
        pub kind: String,
        pub name: String,
        /// Challenge types offered; default all three.
        pub challenges: Option<Vec<ChallengeType>>,
        /// Whether newAccount needs External Account Binding.
        #[serde(default, rename = "requireEAB")]
        pub require_eab: bool,
        pub claims: Option<ClaimsConfig>,
        /// Name policy of this provisioner, on top of the authority's.
        pub policy: Option<PolicyConfig>,
        /// Directory `meta.termsOfService`.
        pub terms_of_service: Option<String>,
        /// Directory `meta.website`.
        pub website: Option<String>,
        /// Directory `meta.caaIdentities`.
        pub caa_identities: Option<Vec<String>>,
    }
    ignores { "options" options, "forceCN" force_cn, "attestationFormats" attestation_formats }
}

document! {
    /// `claims`: certificate lifetimes, Go durations (`24h`, `720h`).
    #[derive(Clone, Debug, Default, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    pub struct ClaimsConfig {
        #[serde(rename = "minTLSCertDuration")]
        pub min_tls_cert_duration: Option<String>,
        #[serde(rename = "maxTLSCertDuration")]
        pub max_tls_cert_duration: Option<String>,
        #[serde(rename = "defaultTLSCertDuration")]
        pub default_tls_cert_duration: Option<String>,
    }
    ignores {
        "enableSSHCA" enable_ssh_ca, "disableRenewal" disable_renewal,
        "allowRenewalAfterExpiry" allow_renewal_after_expiry,
        "disableSmallstepExtensions" disable_smallstep_extensions,
    }
}

/// `validation`: where challenge validation connects.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ValidationConfig {
    pub http_port: u16,
    pub tls_alpn_port: u16,
    /// `host:port` name servers; empty means the system's.
    pub resolvers: Vec<String>,
    pub timeout_seconds: u64,
    /// Networks validation never connects to; absent, the defaults.
    pub deny_networks: DenyNetworks,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        Self {
            http_port: 80,
            tls_alpn_port: 443,
            resolvers: Vec::new(),
            timeout_seconds: 15,
            deny_networks: DenyNetworks::default(),
        }
    }
}

document! {
    /// `metrics`: the Prometheus listener.
    #[derive(Clone, Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    pub struct MetricsConfig {
        #[serde(default = "default_true")]
        pub enabled: bool,
        /// Port on 127.0.0.1 (the Go plugin's key).
        pub port: Option<u16>,
        /// Full listen address; wins over `port`.
        pub address: Option<String>,
    }
    ignores { "dataSource" data_source }
}

fn default_true() -> bool {
    true
}

/// The softcas upstream's `authority.config`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SoftCasConfig {
    /// Leaf lifetime in days (the Go plugin's key); default 90.
    pub certlifetime: Option<u32>,
    /// CA name: `<name> Root CA` / `<name> Intermediate CA`.
    pub name: Option<String>,
    pub metrics: Option<MetricsConfig>,
    /// For benchmarks and tests only: wait this long (a Go duration such as
    /// `10s`) before signing each certificate, to stand in for a slow upstream.
    pub sign_delay: Option<String>,
}

/// One of `authority.upstreams`: a name and what `authority` would say of
/// a single upstream.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpstreamEntry {
    /// How routes, logs, metrics and stored certificates name it.
    pub name: String,
    #[serde(rename = "type")]
    pub kind: UpstreamKind,
    pub config: Option<Opaque>,
    pub certificate_authority: Option<String>,
    pub certificate_authority_fingerprint: Option<String>,
    pub certificate_issuer: Option<Opaque>,
}

/// One of `authority.routes`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteConfig {
    /// For logs and errors (default `route <n>`, counted from 1).
    pub name: Option<String>,
    /// What an order must be for the route to take it; absent: every order.
    #[serde(rename = "match")]
    pub matches: Option<RouteMatchConfig>,
    /// The upstreams, in failover order.
    pub upstreams: Vec<String>,
}

/// `authority.routes[].match`: every key given must hold (and each list
/// holds if one of its entries does); `dns` and `ip` must cover every
/// identifier of the order.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteMatchConfig {
    /// DNS names: `host.example.org` exactly, `*.example.org` any name
    /// below it (wildcard names included).
    #[serde(default)]
    pub dns: Vec<String>,
    /// IP networks (CIDR) for IP identifiers.
    #[serde(default)]
    pub ip: Vec<String>,
    /// Provisioner names.
    #[serde(default)]
    pub provisioner: Vec<String>,
    /// EAB key ids the account was bound with.
    #[serde(default)]
    pub eab_key: Vec<String>,
}

/// `authority.failover`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FailoverConfig {
    /// Consecutive temporary failures that mark an upstream down (default 3).
    pub down_after: Option<u32>,
    /// How often each upstream's health is probed, a Go duration (default
    /// `30s`); a failed probe marks it down, a good one up.
    pub probe_every: Option<String>,
}
