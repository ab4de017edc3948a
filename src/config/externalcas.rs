//! The external ACME upstream's settings (`authority.type: "externalcas"`):
//! the Go acme-proxy plugin's keys, plus a CA bundle, timeouts and the EAB MAC
//! key from a file or the environment.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use super::{ConfigError, MetricsConfig, Secret};

/// The external ACME upstream's `authority.config` (`authority.type:
/// "externalcas"`): the Go acme-proxy plugin's keys, plus the CA bundle,
/// timeouts and secrets from files or the environment.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalCasConfig {
    /// The upstream's directory URL, e.g. `https://acme.sectigo.com/v2/InCommonRSAOV`.
    #[serde(default)]
    pub ca_url: String,
    /// Contact of the upstream account.
    #[serde(default)]
    pub account_email: String,
    /// External Account Binding key id.
    #[serde(default)]
    pub eab_kid: String,
    /// EAB MAC key, base64url (inline; prefer `eab_hmac_key_file` or `_env`).
    #[serde(default)]
    pub eab_hmac_key: Option<Secret>,
    /// A file holding the EAB MAC key.
    #[serde(default)]
    pub eab_hmac_key_file: Option<PathBuf>,
    /// An environment variable holding the EAB MAC key.
    #[serde(default)]
    pub eab_hmac_key_env: Option<String>,
    /// Certificate lifetime in days, sent upstream as notAfter.
    #[serde(default)]
    pub certlifetime: Option<u32>,
    /// PEM file of CAs trusted for the upstream's HTTPS, besides the system's.
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// Seconds to wait on the upstream per attempt (default 120).
    #[serde(default)]
    pub cert_obtain_timeout: Option<u64>,
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// The plugin's dns01_txt block (for upstreams that validate the RA with
    /// dns-01); accepted, not used.
    #[serde(default)]
    pub dns01_txt: Option<Value>,
}

impl ExternalCasConfig {
    /// The EAB MAC key from whichever source is configured, decoded from
    /// base64url (padding and standard base64 are accepted too).
    pub fn eab_hmac_key(&self) -> Result<Option<Vec<u8>>, ConfigError> {
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
