//! The external ACME upstream's settings (`authority.type: "externalcas"`):
//! the Go acme-proxy plugin's keys, plus a CA bundle, timeouts and the EAB MAC
//! key from a file or the environment.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::checks::{LIFETIME_DAYS, TIMEOUT_SECONDS, check_url, in_range};
use super::upstream_challenge::{UpstreamChallengeConfig, UpstreamChallengeSettings};
use super::{ConfigError, MetricsConfig, Secret};

document! {
    /// The external ACME upstream's `authority.config` (`authority.type:
    /// "externalcas"`): the Go acme-proxy plugin's keys, plus the CA bundle,
    /// timeouts and secrets from files or the environment.
    #[derive(Clone, Debug, Default, Deserialize, Serialize)]
    #[serde(default, deny_unknown_fields)]
    pub struct ExternalCasConfig {
        /// The upstream's directory URL, e.g. `https://acme.sectigo.com/v2/InCommonRSAOV`.
        pub ca_url: String,
        /// Contact of the upstream account.
        pub account_email: String,
        /// External Account Binding key id.
        pub eab_kid: String,
        /// EAB MAC key, base64url (inline; prefer `eab_hmac_key_file` or `_env`).
        pub eab_hmac_key: Option<Secret>,
        /// A file holding the EAB MAC key.
        pub eab_hmac_key_file: Option<PathBuf>,
        /// An environment variable holding the EAB MAC key.
        pub eab_hmac_key_env: Option<String>,
        /// Certificate lifetime in days, sent upstream as notAfter.
        pub certlifetime: Option<u32>,
        /// PEM file of CAs trusted for the upstream's HTTPS, besides the system's.
        pub ca_bundle: Option<PathBuf>,
        /// Seconds to wait on the upstream per attempt (default 120).
        pub cert_obtain_timeout: Option<u64>,
        pub metrics: Option<MetricsConfig>,
        /// How the RA answers the upstream's own challenges (dns-01), for
        /// upstreams that validate every name themselves.
        pub upstream_challenge: Option<UpstreamChallengeConfig>,
    }
    // The plugin's block for upstreams that validate the RA with dns-01.
    ignores { "dns01_txt" dns01_txt }
}

/// External Account Binding: the key id and the MAC key the CA gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EabKey {
    pub kid: String,
    pub hmac_key: Secret<Vec<u8>>,
}

/// The checked externalcas settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalCasSettings {
    /// The upstream's directory URL.
    pub directory_url: String,
    /// Contact of the upstream account (may be empty).
    pub account_email: String,
    pub eab: Option<EabKey>,
    /// PEM file of CAs trusted for the upstream's HTTPS, besides the system's.
    pub ca_bundle: Option<PathBuf>,
    /// How long one attempt may wait on the upstream.
    pub timeout: Duration,
    /// How the upstream's dns-01 challenges are answered, if they are.
    pub upstream_challenge: Option<UpstreamChallengeSettings>,
}

impl ExternalCasConfig {
    /// The values, each in range.
    pub(super) fn check_values(&self) -> Result<(), ConfigError> {
        check_url("authority.config.ca_url", self.ca_url.trim())?;
        in_range(
            "authority.config.certlifetime",
            self.certlifetime,
            &LIFETIME_DAYS,
            "days",
        )?;
        in_range(
            "authority.config.cert_obtain_timeout",
            self.cert_obtain_timeout,
            &TIMEOUT_SECONDS,
            "seconds",
        )
    }

    /// The checked settings, the EAB MAC key read from its source.
    pub(super) fn settings(&self) -> Result<ExternalCasSettings, ConfigError> {
        let hmac_key = self.eab_hmac_key()?;
        if hmac_key.is_some() == self.eab_kid.is_empty() {
            return Err(ConfigError::invalid(
                "authority.config.eab_kid",
                "eab_kid and the EAB MAC key go together: give both or neither",
            ));
        }
        if let Some(b) = &self.ca_bundle {
            if !b.is_file() {
                return Err(ConfigError::invalid(
                    "authority.config.ca_bundle",
                    format!("{} is not a readable file", b.display()),
                ));
            }
        }
        Ok(ExternalCasSettings {
            directory_url: self.ca_url.trim().to_owned(),
            account_email: self.account_email.clone(),
            eab: hmac_key.map(|key| EabKey {
                kid: self.eab_kid.clone(),
                hmac_key: Secret::new(key),
            }),
            ca_bundle: self.ca_bundle.clone(),
            timeout: Duration::from_secs(self.cert_obtain_timeout.unwrap_or(120).max(1)),
            upstream_challenge: self
                .upstream_challenge
                .as_ref()
                .map(UpstreamChallengeConfig::settings)
                .transpose()?,
        })
    }

    /// The EAB MAC key from whichever source is configured, decoded from
    /// base64url (padding and standard base64 are accepted too).
    fn eab_hmac_key(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        let key = "authority.config.eab_hmac_key";
        let text = match (
            &self.eab_hmac_key,
            &self.eab_hmac_key_file,
            &self.eab_hmac_key_env,
        ) {
            (Some(s), None, None) if s.expose().is_empty() => return Ok(None),
            (Some(s), None, None) => s.expose().to_owned(),
            (None, Some(path), None) => std::fs::read_to_string(path).map_err(|e| {
                ConfigError::invalid(
                    format!("{key}_file"),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?,
            (None, None, Some(var)) => std::env::var(var).map_err(|_| {
                ConfigError::invalid(
                    format!("{key}_env"),
                    format!("the environment variable {var} is not set"),
                )
            })?,
            (None, None, None) => return Ok(None),
            _ => {
                return Err(ConfigError::invalid(
                    key,
                    "give the EAB MAC key one way only: eab_hmac_key, eab_hmac_key_file or eab_hmac_key_env",
                ));
            }
        };
        decode_b64_any(text.trim()).map(Some).ok_or_else(|| {
            ConfigError::invalid(key, "the EAB MAC key is not base64url (as the CA gave it)")
        })
    }
}

fn decode_b64_any(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
        .or_else(|| STANDARD.decode(s).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eab_secret_from_env_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hmac");
        std::fs::write(&file, "c2VjcmV0\n").unwrap();
        let ext = ExternalCasConfig {
            eab_kid: "k".into(),
            eab_hmac_key_file: Some(file),
            ..ExternalCasConfig::default()
        };
        assert_eq!(ext.eab_hmac_key().unwrap(), Some(b"secret".to_vec()));
        let ext = ExternalCasConfig {
            eab_kid: "k".into(),
            eab_hmac_key_env: Some("ACMEPROXY_TEST_SURELY_UNSET_VAR".into()),
            ..ExternalCasConfig::default()
        };
        let e = ext.eab_hmac_key().unwrap_err().to_string();
        assert!(e.contains("ACMEPROXY_TEST_SURELY_UNSET_VAR"), "{e}");
    }
}
