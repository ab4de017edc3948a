//! The `ca.json` document: a step-ca style configuration, so that users of
//! step-ca and of the Go `acme-proxy` plugin bring the file they have.
//!
//! Two layers: [`Config`] and its parts are the document as written (serde,
//! both ways; parsing is strict: unknown keys are errors that name their
//! path; keys that step-ca defines and acmeproxy does not use are accepted
//! with one warning). [`Config::check`] turns a document into [`Settings`]:
//! addresses, durations, secrets and the upstream as types, so that nothing
//! after it can fail on configuration. `acmeproxy check-config` runs exactly
//! [`Config::load`].

/// Declares a `ca.json` object and the step-ca keys it accepts without using
/// them: each such key is named once, here, and `ignored_keys` lists the ones
/// a document sets (to be warned about).
macro_rules! document {
    (
        $(#[$meta:meta])*
        pub struct $name:ident { $($body:tt)* }
        ignores { $($json:literal $field:ident),* $(,)? }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $($body)*
            $(
                #[doc = concat!("step-ca's `", $json, "`: accepted, warned about, not used.")]
                #[serde(rename = $json, skip_serializing_if = "Option::is_none")]
                pub $field: Option<$crate::config::Opaque>,
            )*
        }

        impl $name {
            /// The step-ca keys set here that acmeproxy accepts and ignores.
            pub(crate) fn ignored_keys(&self) -> Vec<&'static str> {
                let mut keys = Vec::new();
                $(if self.$field.is_some() { keys.push($json); })*
                keys
            }
        }
    };
}

mod checks;
mod connections;
mod document;
mod duration;
mod egress;
mod externalcas;
mod policy;
mod profiles;
mod ratelimits;
mod retention;
mod routes;
mod secret;
mod settings;
mod stepcas;
mod upstream_challenge;
mod validate;
mod vaultcas;

use std::path::{Path, PathBuf};

pub use connections::{ConnectionLimits, ConnectionsConfig};
pub use document::{
    AuthorityConfig, ClaimsConfig, Config, DbConfig, LoggerConfig, MetricsConfig, OneOrMany,
    ProvisionerConfig, SoftCasConfig, TlsConfig, UpstreamKind, ValidationConfig,
};
pub use duration::parse_go_duration;
pub use egress::{DenyNetworks, loopback_demo_networks};
pub use externalcas::{EabKey, ExternalCasConfig, ExternalCasSettings};
pub use policy::{NamesConfig, PolicyConfig, X509PolicyConfig};
pub use profiles::{DEFAULT_PROFILE, ProfileConfig, ProfileSettings};
pub use ratelimits::{
    DEFAULT_CONCURRENT_VALIDATIONS, DEFAULT_MAX_TRACKED_KEYS, LimitConfig, LimitSetting,
    RateLimitSettings, RateLimitsConfig,
};
pub use retention::{RetentionConfig, RetentionSettings};
pub use secret::{Opaque, Secret};
pub use settings::{
    FailoverSettings, MAX_UPSTREAM_CONCURRENCY, NamedUpstream, PostgresSettings,
    ProvisionerSettings, RouteSettings, Settings, SoftCasSettings, StoreChoice, TlsSettings,
    Upstream, ValidationSettings, Warnings,
};
pub use stepcas::{IssuerConfig, IssuerType, StepCasSettings, read_password_file};
pub use upstream_challenge::{
    Dns01Provider, TSIG_ALGORITHMS, TsigKey, UpstreamChallengeConfig, UpstreamChallengeSettings,
};
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

impl Config {
    /// Reads, parses and checks a `ca.json`. A relative `dataDir` is taken
    /// relative to the directory that holds the file (not the working
    /// directory, which is `/` under systemd).
    pub fn load(path: &Path) -> Result<(Settings, Warnings), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut doc = Self::from_json(&text)?;
        if let Some(dir) = doc.data_dir.as_ref().filter(|d| d.is_relative()) {
            let base = std::path::absolute(path)
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .unwrap_or_default();
            doc.data_dir = Some(base.join(dir));
        }
        doc.check_text(&text)
    }

    /// Parses and checks a document.
    pub fn parse(text: &str) -> Result<(Settings, Warnings), ConfigError> {
        Self::from_json(text)?.check_text(text)
    }

    /// Parses a document, without the checks across keys. An error names
    /// the key path at fault.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| ConfigError::Parse {
            path: e.path().to_string(),
            message: e.inner().to_string(),
        })
    }

    /// [`Config::check`], the line of the key at fault in `text` added to an
    /// error.
    fn check_text(&self, text: &str) -> Result<(Settings, Warnings), ConfigError> {
        self.check().map_err(|e| match e {
            ConfigError::Invalid { key, message } => {
                let message = match checks::line_of(text, &key) {
                    Some(line) => format!("{message} (line {line})"),
                    None => message,
                };
                ConfigError::Invalid { key, message }
            }
            other => other,
        })
    }

    /// A document for tests: softcas, in-memory store, one provisioner
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
}

#[cfg(test)]
mod tests;
