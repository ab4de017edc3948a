//! Checks across keys of a parsed `ca.json`, and the [`Settings`] it gives:
//! the one place start-up and `check-config` decide what is an error and
//! what only a warning.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::checks::{LIFETIME_DAYS, in_range, parse_listen, parse_resolver, sub_config};
use super::{
    AuthorityConfig, ClaimsConfig, Config, ConfigError, DbConfig, ExternalCasConfig,
    MAX_UPSTREAM_CONCURRENCY, MetricsConfig, PostgresSettings, ProvisionerConfig,
    ProvisionerSettings, Secret, Settings, SoftCasConfig, SoftCasSettings, StoreChoice,
    TlsSettings, Upstream, UpstreamKind, ValidationSettings, Warnings, parse_go_duration, stepcas,
    vaultcas,
};
use crate::acme::types::ChallengeType;

/// `authority.config` read as the type of the upstream `authority.type`
/// names (vaultcas reads its own, without regard to case).
enum UpstreamOptions {
    Soft(SoftCasConfig),
    External(Box<ExternalCasConfig>),
    /// step-ca RA mode reads no `config`; the plugin's keys are honoured.
    Step {
        metrics: Option<MetricsConfig>,
        certlifetime: Option<u64>,
    },
    Vault,
}

impl UpstreamOptions {
    /// `authority.config.metrics` (the Go plugin's metrics listener).
    fn metrics(&self) -> Option<&MetricsConfig> {
        match self {
            Self::Soft(c) => c.metrics.as_ref(),
            Self::External(c) => c.metrics.as_ref(),
            Self::Step { metrics, .. } => metrics.as_ref(),
            Self::Vault => None,
        }
    }

    /// `authority.config.certlifetime` in days.
    fn certlifetime(&self) -> Option<u64> {
        match self {
            Self::Soft(c) => c.certlifetime.map(u64::from),
            Self::External(c) => c.certlifetime.map(u64::from),
            Self::Step { certlifetime, .. } => *certlifetime,
            Self::Vault => None,
        }
    }
}

/// Adds `keys`, each after `prefix`, to the ignored keys.
fn note(ignored: &mut BTreeSet<String>, prefix: &str, keys: Vec<&str>) {
    ignored.extend(keys.into_iter().map(|k| format!("{prefix}{k}")));
}

impl Config {
    /// Checks the document and gives its settings, with what to warn about.
    /// An error names the key at fault.
    pub fn check(&self) -> Result<(Settings, Warnings), ConfigError> {
        let mut warnings = Vec::new();
        let mut ignored = BTreeSet::new();
        let a = &self.authority;
        note(&mut ignored, "", self.ignored_keys());
        note(&mut ignored, "authority.", a.ignored_keys());
        if let Some(m) = &self.metrics {
            note(&mut ignored, "metrics.", m.ignored_keys());
        }
        if let Some(tls) = &self.tls {
            note(&mut ignored, "tls.", tls.ignored_keys());
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err(ConfigError::invalid(
                    "tls",
                    "certFile and keyFile go together: give both or neither",
                ));
            }
        }
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/lib/acmeproxy"));
        if let Some(db) = &self.db {
            note(&mut ignored, "db.", db.ignored_keys());
            if matches!(
                db.kind.as_str(),
                "badgerv2" | "badger" | "badgerV2" | "bbolt"
            ) {
                warnings.push(format!(
                    "db.type {:?} is read as the embedded sled store in {} (the step-ca database is not read)",
                    db.kind,
                    data_dir.join("db").display()
                ));
            }
        }
        for c in a
            .claims
            .iter()
            .chain(a.provisioners.iter().filter_map(|p| p.claims.as_ref()))
        {
            note(&mut ignored, "claims.", c.ignored_keys());
            for (k, v) in [
                ("minTLSCertDuration", &c.min_tls_cert_duration),
                ("maxTLSCertDuration", &c.max_tls_cert_duration),
                ("defaultTLSCertDuration", &c.default_tls_cert_duration),
            ] {
                if let Some(v) = v {
                    parse_go_duration(v)
                        .map_err(|m| ConfigError::invalid(format!("claims.{k}"), m))?;
                }
            }
        }
        self.check_provisioners(&mut ignored)?;
        self.check_values()?;
        let options = self.upstream_options()?;
        if let Some(m) = options.metrics() {
            note(&mut ignored, "authority.config.metrics.", m.ignored_keys());
        }
        let upstream_concurrency = match a.upstream_concurrency {
            None => 32,
            Some(n) if (1..=MAX_UPSTREAM_CONCURRENCY).contains(&n) => {
                usize::try_from(n).unwrap_or(32)
            }
            Some(n) => {
                return Err(ConfigError::invalid(
                    "authority.upstreamConcurrency",
                    format!(
                        "{n} is out of range; give 1 to {MAX_UPSTREAM_CONCURRENCY} (default 32), more for a slow remote CA"
                    ),
                ));
            }
        };
        let rate_limits = a.rate_limits.clone().unwrap_or_default().check()?;
        let retention = a.retention.clone().unwrap_or_default().check()?;
        let upstreams = super::routes::named_upstreams(a, &mut warnings, |entry| {
            let options = upstream_options(entry)?;
            upstream_settings(entry, &options, &mut ignored)
        })?;
        let (routes, failover) = super::routes::check(a, &upstreams)?;
        let upstream = match upstreams.first() {
            Some(first) => first.upstream.clone(),
            None => upstream_settings(a, &options, &mut ignored)?,
        };
        let tls = self.tls_settings()?;
        if tls.cert_file.is_none() && self.dns_names.is_empty() {
            return Err(ConfigError::invalid(
                "dnsNames",
                "name at least one DNS name (or IP) for the server's own certificate",
            ));
        }
        let listen = parse_listen(&self.address).map_err(|m| ConfigError::invalid("address", m))?;
        let store = self.store_choice(&data_dir)?;
        let metrics_config = self.metrics.as_ref().or_else(|| options.metrics());
        let metrics = metrics_listen(metrics_config)?;
        warnings.extend(metrics_config.and_then(metrics_port_warning));
        let connections = self.connections.clone().unwrap_or_default().limits()?;
        let v = &self.validation;
        let resolvers = v
            .resolvers
            .iter()
            .map(|r| parse_resolver(r))
            .collect::<Result<Vec<SocketAddr>, _>>()?;
        if v.timeout_seconds == 0 {
            return Err(ConfigError::invalid(
                "validation.timeoutSeconds",
                "must be at least 1",
            ));
        }
        let egress = v.deny_networks.rules();
        warnings.extend(super::egress::loopback_warning(&egress, listen));
        let certlifetime = options
            .certlifetime()
            .map(|d| time::Duration::days(i64::try_from(d).unwrap_or(i64::MAX).min(3650)));
        let provisioners = a
            .provisioners
            .iter()
            .map(|p| self.provisioner_settings(p, certlifetime))
            .collect::<Result<Vec<_>, _>>()?;
        let profiles = self.profile_settings(&provisioners)?;
        if !ignored.is_empty() {
            warnings.insert(
                0,
                format!(
                    "ignoring step-ca keys that acmeproxy does not use: {}",
                    ignored.into_iter().collect::<Vec<_>>().join(", ")
                ),
            );
        }
        let settings = Settings {
            listen,
            dns_names: self.dns_names.clone(),
            data_dir,
            store,
            json_logs: self.logger.as_ref().and_then(|l| l.format.as_deref()) == Some("json"),
            tls,
            metrics,
            connections,
            root_files: self
                .root
                .as_ref()
                .map(super::OneOrMany::to_vec)
                .unwrap_or_default(),
            validation: ValidationSettings {
                http_port: v.http_port,
                tls_alpn_port: v.tls_alpn_port,
                resolvers,
                timeout: Duration::from_secs(v.timeout_seconds),
                egress,
            },
            upstream,
            upstreams,
            routes,
            failover,
            upstream_concurrency,
            rate_limits,
            retention,
            provisioners,
            profiles,
        };
        Ok((settings, Warnings(warnings)))
    }

    /// Each provisioner: an ACME one, named once, with a challenge; the
    /// step-ca keys it sets noted in `ignored`.
    fn check_provisioners(&self, ignored: &mut BTreeSet<String>) -> Result<(), ConfigError> {
        let mut names = BTreeSet::new();
        for (i, p) in self.authority.provisioners.iter().enumerate() {
            let key = format!("authority.provisioners[{i}]");
            if p.kind != "ACME" {
                return Err(ConfigError::invalid(
                    format!("{key}.type"),
                    format!("only ACME provisioners are served, not {:?}", p.kind),
                ));
            }
            if p.name.is_empty()
                || !p
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(ConfigError::invalid(
                    format!("{key}.name"),
                    "a provisioner name must be non-empty and use only letters, digits, '-', '_' and '.'",
                ));
            }
            if !names.insert(p.name.clone()) {
                return Err(ConfigError::invalid(
                    format!("{key}.name"),
                    format!("provisioner {:?} is defined twice", p.name),
                ));
            }
            if matches!(&p.challenges, Some(c) if c.is_empty()) {
                return Err(ConfigError::invalid(
                    format!("{key}.challenges"),
                    "offer at least one challenge type",
                ));
            }
            note(ignored, &format!("{key}."), p.ignored_keys());
        }
        let policies = std::iter::once(("authority.policy".to_owned(), &self.authority.policy))
            .chain(
                self.authority
                    .provisioners
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (format!("authority.provisioners[{i}].policy"), &p.policy)),
            );
        for (key, policy) in policies {
            let Some(policy) = policy else { continue };
            note(ignored, &format!("{key}."), policy.ignored_keys());
            let Some(x) = &policy.x509 else { continue };
            for (side, names) in [("allow", &x.allow), ("deny", &x.deny)] {
                if let Some(n) = names {
                    note(ignored, &format!("{key}.x509.{side}."), n.ignored_keys());
                }
            }
        }
        if self.authority.provisioners.is_empty() {
            return Err(ConfigError::invalid(
                "authority.provisioners",
                "define at least one provisioner, e.g. {\"type\": \"ACME\", \"name\": \"acme\"}",
            ));
        }
        Ok(())
    }

    /// `authority.config` read as the upstream's type, its values in range.
    fn upstream_options(&self) -> Result<UpstreamOptions, ConfigError> {
        upstream_options(&self.authority)
    }
}

/// `a.config` read as the type `a.type` names, its values in range.
fn upstream_options(a: &AuthorityConfig) -> Result<UpstreamOptions, ConfigError> {
    {
        let config = a.config.as_ref();
        Ok(match a.kind {
            UpstreamKind::SoftCas => {
                let c: SoftCasConfig = sub_config(config)?;
                in_range(
                    "authority.config.certlifetime",
                    c.certlifetime,
                    &LIFETIME_DAYS,
                    "days",
                )?;
                UpstreamOptions::Soft(c)
            }
            UpstreamKind::ExternalCas => {
                let c: ExternalCasConfig = sub_config(config)?;
                c.check_values()?;
                UpstreamOptions::External(Box::new(c))
            }
            UpstreamKind::StepCas => {
                let get = |k: &str| config.and_then(|c| c.0.get(k));
                UpstreamOptions::Step {
                    metrics: get("metrics")
                        .map(|m| serde_json::from_value(m.clone()))
                        .transpose()
                        .map_err(|e| {
                            ConfigError::invalid("authority.config.metrics", e.to_string())
                        })?,
                    certlifetime: get("certlifetime").and_then(Value::as_u64),
                }
            }
            UpstreamKind::VaultCas => UpstreamOptions::Vault,
        })
    }
}

/// The upstream `a` describes (`type`, `config` and the step-ca keys),
/// checked; the keys it ignores noted in `ignored`.
fn upstream_settings(
    a: &AuthorityConfig,
    options: &UpstreamOptions,
    ignored: &mut BTreeSet<String>,
) -> Result<Upstream, ConfigError> {
    Ok(match options {
        UpstreamOptions::Soft(c) => Upstream::SoftCas(SoftCasSettings {
            name: c.name.clone().unwrap_or_else(|| "acmeproxy".to_owned()),
            lifetime: Duration::from_secs(u64::from(c.certlifetime.unwrap_or(90)) * 86_400),
            sign_delay: match &c.sign_delay {
                None => Duration::ZERO,
                Some(s) => parse_go_duration(s)
                    .map_err(|e| ConfigError::invalid("authority.config.signDelay", e))?,
            },
        }),
        UpstreamOptions::External(c) => {
            note(ignored, "authority.config.", c.ignored_keys());
            Upstream::ExternalCas(c.settings()?)
        }
        UpstreamOptions::Vault => Upstream::VaultCas(vaultcas::settings(a)?),
        UpstreamOptions::Step { .. } => Upstream::StepCas(stepcas::settings(a)?),
    })
}

impl Config {
    /// `tls`, the versions checked.
    fn tls_settings(&self) -> Result<TlsSettings, ConfigError> {
        let Some(tls) = &self.tls else {
            return Ok(TlsSettings::default());
        };
        if tls.max_version.is_some_and(|v| v < 1.2) {
            return Err(ConfigError::invalid(
                "tls.maxVersion",
                "acmeproxy speaks TLS 1.2 and 1.3 only; set maxVersion to 1.2 or 1.3",
            ));
        }
        if let (Some(lo), Some(hi)) = (tls.min_version, tls.max_version) {
            if lo > hi {
                return Err(ConfigError::invalid(
                    "tls.minVersion",
                    "minVersion is above maxVersion",
                ));
            }
        }
        for (k, v) in [
            ("minVersion", tls.min_version),
            ("maxVersion", tls.max_version),
        ] {
            if let Some(v) = v {
                if !(1.0..=1.3).contains(&v) {
                    return Err(ConfigError::invalid(
                        format!("tls.{k}"),
                        format!("{v} is not a TLS version (1.2 or 1.3)"),
                    ));
                }
            }
        }
        Ok(TlsSettings {
            min_version: tls.min_version,
            max_version: tls.max_version,
            cert_file: tls.cert_file.clone(),
            key_file: tls.key_file.clone(),
        })
    }

    /// The store `db` selects.
    fn store_choice(&self, data_dir: &std::path::Path) -> Result<StoreChoice, ConfigError> {
        let default_path = || data_dir.join("db");
        let Some(db) = &self.db else {
            return Ok(StoreChoice::Sled(default_path()));
        };
        let source = db.data_source.as_ref().map(|s| s.expose());
        if !matches!(db.kind.as_str(), "postgresql" | "postgres") {
            refuse_postgres_keys(db)?;
        }
        match db.kind.as_str() {
            "sled" | "badgerv2" | "badger" | "badgerV2" | "bbolt" => Ok(StoreChoice::Sled(
                source
                    .filter(|_| db.kind == "sled")
                    .map_or_else(default_path, PathBuf::from),
            )),
            "memory" => Ok(StoreChoice::Memory),
            "postgresql" | "postgres" => postgres_settings(db).map(StoreChoice::Postgres),
            other => Err(ConfigError::invalid(
                "db.type",
                format!("unknown store {other:?}; use \"sled\" or \"postgresql\""),
            )),
        }
    }

    /// One provisioner's settings, lifetimes resolved.
    fn provisioner_settings(
        &self,
        p: &ProvisionerConfig,
        certlifetime: Option<time::Duration>,
    ) -> Result<ProvisionerSettings, ConfigError> {
        type Field = fn(&ClaimsConfig) -> Option<&String>;
        let claim = |k: &str, f: Field| -> Result<Option<time::Duration>, ConfigError> {
            let v = p
                .claims
                .as_ref()
                .and_then(f)
                .or_else(|| self.authority.claims.as_ref().and_then(f));
            v.map(|s| {
                parse_go_duration(s)
                    .ok()
                    .and_then(|d| time::Duration::try_from(d).ok())
                    .ok_or_else(|| {
                        ConfigError::invalid(format!("claims.{k}"), format!("{s:?} is too long"))
                    })
            })
            .transpose()
        };
        // Unset: the upstream's own default applies (nothing is sent).
        let default = claim("defaultTLSCertDuration", |c| {
            c.default_tls_cert_duration.as_ref()
        })?
        .or(certlifetime);
        let max = claim("maxTLSCertDuration", |c| c.max_tls_cert_duration.as_ref())?
            .unwrap_or(time::Duration::days(398))
            .max(default.unwrap_or(time::Duration::ZERO));
        let min = claim("minTLSCertDuration", |c| c.min_tls_cert_duration.as_ref())?
            .unwrap_or(time::Duration::minutes(5))
            .min(default.unwrap_or(max));
        let policies = [
            ("authority".to_owned(), &self.authority.policy),
            (format!("provisioner {:?}", p.name), &p.policy),
        ]
        .into_iter()
        .filter_map(|(level, policy)| Some((level, policy.as_ref()?.x509.clone()?)))
        .collect();
        Ok(ProvisionerSettings {
            name: p.name.clone(),
            challenges: p.challenges.clone().unwrap_or_else(|| {
                vec![
                    ChallengeType::Http01,
                    ChallengeType::Dns01,
                    ChallengeType::TlsAlpn01,
                ]
            }),
            require_eab: p.require_eab,
            default_lifetime: default,
            min_lifetime: min,
            max_lifetime: max,
            policies,
            terms_of_service: p.terms_of_service.clone(),
            website: p.website.clone(),
            caa_identities: p.caa_identities.clone().unwrap_or_default(),
        })
    }
}

/// The metrics listener of `m` (top-level `metrics`, else the plugin's):
/// absent, 127.0.0.1:9123. Only `address` listens beyond loopback: the
/// metrics need no credentials, so exposing them is a choice.
fn metrics_listen(m: Option<&MetricsConfig>) -> Result<Option<SocketAddr>, ConfigError> {
    let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let Some(m) = m else {
        return Ok(Some(loopback(9123)));
    };
    if !m.enabled {
        return Ok(None);
    }
    Ok(Some(match (&m.address, m.port) {
        (Some(a), _) => parse_listen(a).map_err(|e| ConfigError::invalid("metrics.address", e))?,
        (None, port) => loopback(port.unwrap_or(9123)),
    }))
}

/// A warning when `metrics.port` is given without `address`: the Go plugin
/// listened on every interface there, acmeproxy on 127.0.0.1.
fn metrics_port_warning(m: &MetricsConfig) -> Option<String> {
    match (m.enabled, &m.address, m.port) {
        (true, None, Some(p)) => Some(format!(
            "metrics.port {p} listens on 127.0.0.1 only; set metrics.address to \"0.0.0.0:{p}\" if Prometheus scrapes from another host"
        )),
        _ => None,
    }
}

/// The environment variable that may hold the PostgreSQL password.
const DB_PASSWORD_ENV: &str = "ACMEPROXY_DB_PASSWORD";

/// Connections in the PostgreSQL pool when `maxConnections` is not set.
const DEFAULT_MAX_CONNECTIONS: usize = 16;

/// `db` for `type: "postgresql"`. The password comes from `passwordFile`,
/// else [`DB_PASSWORD_ENV`], else `dataSource`; no message here holds any
/// of them.
fn postgres_settings(db: &DbConfig) -> Result<PostgresSettings, ConfigError> {
    let data_source = match &db.data_source {
        Some(s) if !s.expose().trim().is_empty() => s.clone(),
        _ => {
            return Err(ConfigError::invalid(
                "db.dataSource",
                "postgresql needs a connection URL in db.dataSource, such as \
                 \"postgresql://acmeproxy@127.0.0.1:5432/\"",
            ));
        }
    };
    let database = db
        .database
        .clone()
        .unwrap_or_else(|| "acmeproxy".to_owned());
    if database.is_empty() || database.len() > 63 {
        return Err(ConfigError::invalid(
            "db.database",
            "a PostgreSQL database name of 1 to 63 bytes",
        ));
    }
    let max_connections = db.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if !(1..=1000).contains(&max_connections) {
        return Err(ConfigError::invalid(
            "db.maxConnections",
            "between 1 and 1000",
        ));
    }
    let password = match &db.password_file {
        Some(path) => Some(super::read_password_file(path)?),
        None => std::env::var(DB_PASSWORD_ENV)
            .ok()
            .filter(|p| !p.is_empty())
            .map(Secret::new),
    };
    Ok(PostgresSettings {
        data_source,
        database,
        password,
        max_connections,
    })
}

/// Refuses the PostgreSQL keys on another store.
fn refuse_postgres_keys(db: &DbConfig) -> Result<(), ConfigError> {
    for (key, set) in [
        ("db.database", db.database.is_some()),
        ("db.passwordFile", db.password_file.is_some()),
        ("db.maxConnections", db.max_connections.is_some()),
    ] {
        if set {
            return Err(ConfigError::invalid(
                key,
                format!(
                    "only the postgresql store reads it, and db.type is {:?}",
                    db.kind
                ),
            ));
        }
    }
    Ok(())
}
