//! externalcas's `upstream_challenge`: how the RA answers the dns-01
//! challenges of an upstream CA that validates every name itself (Let's
//! Encrypt, ZeroSSL without pre-validation): RFC 2136 dynamic updates signed
//! with TSIG (RFC 8945), or an operator's script with lego's exec-provider
//! contract.
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-8.4>

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::checks::is_dns_name;
use super::{ConfigError, Secret, parse_go_duration};

/// The TSIG algorithms the RA signs with (RFC 8945 §6).
pub const TSIG_ALGORITHMS: [&str; 3] = ["hmac-sha256", "hmac-sha384", "hmac-sha512"];

const KEY: &str = "authority.config.upstream_challenge";

/// `authority.config.upstream_challenge` as written in ca.json.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamChallengeConfig {
    /// The challenge type; only `dns-01`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `rfc2136` (DNS UPDATE) or `exec` (a script).
    pub provider: String,
    /// `host:port` of the primary name server that takes the updates
    /// (rfc2136), or that is asked for the zone's name servers (exec).
    pub nameserver: Option<String>,
    /// The zone the records go into, e.g. `example.org.`.
    pub zone: Option<String>,
    /// Name of the TSIG key, e.g. `acmeproxy.`.
    pub tsig_key_name: Option<String>,
    /// `hmac-sha256` (default), `hmac-sha384` or `hmac-sha512`.
    pub tsig_algorithm: Option<String>,
    /// The TSIG secret, base64 (inline; prefer `tsig_secret_file` or `_env`).
    pub tsig_secret: Option<Secret>,
    /// A file holding the TSIG secret: base64, or a key block as
    /// `tsig-keygen` writes it.
    pub tsig_secret_file: Option<PathBuf>,
    /// An environment variable holding the TSIG secret, base64.
    pub tsig_secret_env: Option<String>,
    /// The exec provider's program, called `present|cleanup FQDN VALUE`.
    pub command: Option<PathBuf>,
    /// How long to wait until every authoritative server answers the record
    /// (Go duration, default `120s`).
    pub propagation_timeout: Option<String>,
    /// How often to ask them meanwhile (Go duration, default `2s`).
    pub polling_interval: Option<String>,
    /// TTL of the TXT records, seconds (default 60).
    pub ttl: Option<u32>,
}

/// How the TXT records are written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dns01Provider {
    /// lego's exec contract: `command present|cleanup FQDN VALUE`.
    Exec { command: PathBuf },
    /// RFC 2136 DNS UPDATE to `nameserver`, signed when `tsig` is set.
    Rfc2136 { tsig: Option<TsigKey> },
}

/// A TSIG key (RFC 8945): its name, algorithm and secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TsigKey {
    /// Key name, fully qualified (trailing dot).
    pub name: String,
    /// One of [`TSIG_ALGORITHMS`].
    pub algorithm: String,
    pub secret: Secret<Vec<u8>>,
}

/// The checked `upstream_challenge`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamChallengeSettings {
    pub provider: Dns01Provider,
    /// `host:port` of the primary (rfc2136: required).
    pub nameserver: Option<String>,
    /// The zone, fully qualified (rfc2136: required).
    pub zone: Option<String>,
    pub propagation_timeout: Duration,
    pub polling_interval: Duration,
    pub ttl: u32,
}

impl UpstreamChallengeConfig {
    /// The checked settings, the TSIG secret read from its source.
    pub(super) fn settings(&self) -> Result<UpstreamChallengeSettings, ConfigError> {
        if self.kind != "dns-01" {
            return Err(ConfigError::invalid(
                format!("{KEY}.type"),
                format!(
                    "{:?} is not supported; the RA answers upstream challenges with \"dns-01\"",
                    self.kind
                ),
            ));
        }
        let nameserver = self
            .nameserver
            .as_deref()
            .map(|ns| check_nameserver(ns.trim()).map(|()| ns.trim().to_owned()))
            .transpose()?;
        let zone = self
            .zone
            .as_deref()
            .map(|z| fqdn(&format!("{KEY}.zone"), z))
            .transpose()?;
        let provider = match self.provider.as_str() {
            "rfc2136" => {
                if nameserver.is_none() {
                    return Err(ConfigError::invalid(
                        format!("{KEY}.nameserver"),
                        "the rfc2136 provider needs the primary name server's host:port",
                    ));
                }
                if zone.is_none() {
                    return Err(ConfigError::invalid(
                        format!("{KEY}.zone"),
                        "the rfc2136 provider needs the zone to update, e.g. \"example.org.\"",
                    ));
                }
                if self.command.is_some() {
                    return Err(ConfigError::invalid(
                        format!("{KEY}.command"),
                        "command belongs to the exec provider",
                    ));
                }
                Dns01Provider::Rfc2136 {
                    tsig: self.tsig_key()?,
                }
            }
            "exec" => {
                let Some(command) = &self.command else {
                    return Err(ConfigError::invalid(
                        format!("{KEY}.command"),
                        "the exec provider needs the program to run (called `present|cleanup FQDN VALUE`)",
                    ));
                };
                check_executable(command)?;
                if self.tsig_key_name.is_some() || self.has_tsig_secret() {
                    return Err(ConfigError::invalid(
                        format!("{KEY}.tsig_key_name"),
                        "the TSIG keys belong to the rfc2136 provider; the exec provider's script holds its own credentials",
                    ));
                }
                Dns01Provider::Exec {
                    command: command.clone(),
                }
            }
            other => {
                return Err(ConfigError::invalid(
                    format!("{KEY}.provider"),
                    format!("{other:?} is not a provider; use \"rfc2136\" or \"exec\""),
                ));
            }
        };
        let duration = |key: &str, v: &Option<String>, default: u64| -> Result<_, ConfigError> {
            let d = match v {
                None => Duration::from_secs(default),
                Some(s) => parse_go_duration(s)
                    .map_err(|e| ConfigError::invalid(format!("{KEY}.{key}"), e))?,
            };
            if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
                return Err(ConfigError::invalid(
                    format!("{KEY}.{key}"),
                    format!("{d:?} is out of range; give 100ms to 1h"),
                ));
            }
            Ok(d)
        };
        let ttl = self.ttl.unwrap_or(60);
        if !(1..=86_400).contains(&ttl) {
            return Err(ConfigError::invalid(
                format!("{KEY}.ttl"),
                format!("{ttl} is out of range; give 1 to 86400 seconds"),
            ));
        }
        Ok(UpstreamChallengeSettings {
            provider,
            nameserver,
            zone,
            propagation_timeout: duration("propagation_timeout", &self.propagation_timeout, 120)?,
            polling_interval: duration("polling_interval", &self.polling_interval, 2)?,
            ttl,
        })
    }

    fn has_tsig_secret(&self) -> bool {
        self.tsig_secret.is_some()
            || self.tsig_secret_file.is_some()
            || self.tsig_secret_env.is_some()
    }

    /// The TSIG key, if one is configured; name and secret go together.
    fn tsig_key(&self) -> Result<Option<TsigKey>, ConfigError> {
        let Some(name) = self.tsig_key_name.as_deref() else {
            if self.has_tsig_secret() {
                return Err(ConfigError::invalid(
                    format!("{KEY}.tsig_key_name"),
                    "a TSIG secret is given without tsig_key_name; give both or neither",
                ));
            }
            return Ok(None);
        };
        let name = fqdn(&format!("{KEY}.tsig_key_name"), name)?;
        let algorithm = self
            .tsig_algorithm
            .as_deref()
            .unwrap_or("hmac-sha256")
            .trim()
            .to_ascii_lowercase();
        let algorithm = algorithm.trim_end_matches('.').to_owned();
        if !TSIG_ALGORITHMS.contains(&algorithm.as_str()) {
            return Err(ConfigError::invalid(
                format!("{KEY}.tsig_algorithm"),
                format!(
                    "{algorithm:?} is not supported; use one of {}",
                    TSIG_ALGORITHMS.join(", ")
                ),
            ));
        }
        let secret = self.tsig_secret()?;
        Ok(Some(TsigKey {
            name,
            algorithm,
            secret: Secret::new(secret),
        }))
    }

    /// The TSIG secret from whichever source is configured, decoded from
    /// base64. The error never holds the secret.
    fn tsig_secret(&self) -> Result<Vec<u8>, ConfigError> {
        let key = format!("{KEY}.tsig_secret");
        let text = match (
            &self.tsig_secret,
            &self.tsig_secret_file,
            &self.tsig_secret_env,
        ) {
            (Some(s), None, None) => s.expose().to_owned(),
            (None, Some(path), None) => {
                let raw = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::invalid(
                        format!("{key}_file"),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                secret_in_key_file(&raw).ok_or_else(|| {
                    ConfigError::invalid(
                        format!("{key}_file"),
                        format!(
                            "{} holds neither a base64 secret nor a key block with `secret \"…\";` (as tsig-keygen writes)",
                            path.display()
                        ),
                    )
                })?
            }
            (None, None, Some(var)) => std::env::var(var).map_err(|_| {
                ConfigError::invalid(
                    format!("{key}_env"),
                    format!("the environment variable {var} is not set"),
                )
            })?,
            (None, None, None) => {
                return Err(ConfigError::invalid(
                    key,
                    "tsig_key_name is set but no secret: give tsig_secret_file, tsig_secret_env or tsig_secret",
                ));
            }
            _ => {
                return Err(ConfigError::invalid(
                    key,
                    "give the TSIG secret one way only: tsig_secret, tsig_secret_file or tsig_secret_env",
                ));
            }
        };
        use base64::Engine;
        use base64::engine::general_purpose::STANDARD;
        match STANDARD.decode(text.trim()) {
            Ok(secret) if !secret.is_empty() => Ok(secret),
            _ => Err(ConfigError::invalid(
                key,
                "the TSIG secret is not base64 (as tsig-keygen or keymgr print it)",
            )),
        }
    }
}

/// The secret of a key file: the value of `secret "…";` in a BIND or
/// tsig-keygen key block, or the whole (trimmed) text when it has no block.
fn secret_in_key_file(raw: &str) -> Option<String> {
    if !raw.contains('{') {
        let t = raw.trim();
        return (!t.is_empty()).then(|| t.to_owned());
    }
    let after = raw.split_once("secret")?.1.trim_start();
    let quoted = after.strip_prefix('"')?;
    let (secret, _) = quoted.split_once('"')?;
    Some(secret.trim().to_owned())
}

/// A DNS name made fully qualified (trailing dot), checked.
fn fqdn(key: &str, name: &str) -> Result<String, ConfigError> {
    let bare = name.trim().trim_end_matches('.');
    if !is_dns_name(bare) {
        return Err(ConfigError::invalid(
            key,
            format!("{name:?} is not a DNS name"),
        ));
    }
    Ok(format!("{}.", bare.to_ascii_lowercase()))
}

/// `host:port`, `host`, `[v6]:port` or a bare IP address.
fn check_nameserver(ns: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| {
        ConfigError::invalid(
            format!("{KEY}.nameserver"),
            format!("{ns:?} {why}; give host:port, e.g. \"ns1.example.org:53\""),
        )
    };
    if ns.parse::<std::net::IpAddr>().is_ok() || ns.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = match ns.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (ns, None),
    };
    if let Some(p) = port {
        if !p.parse::<u16>().is_ok_and(|p| p > 0) {
            return Err(bad("has no valid port"));
        }
    }
    if is_dns_name(host.trim_end_matches('.')) || host.parse::<std::net::IpAddr>().is_ok() {
        Ok(())
    } else {
        Err(bad("is not a host name or address"))
    }
}

fn check_executable(path: &std::path::Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let bad = |why: String| ConfigError::invalid(format!("{KEY}.command"), why);
    let meta =
        std::fs::metadata(path).map_err(|e| bad(format!("cannot use {}: {e}", path.display())))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(bad(format!("{} is not an executable file", path.display())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rfc2136() -> UpstreamChallengeConfig {
        UpstreamChallengeConfig {
            kind: "dns-01".into(),
            provider: "rfc2136".into(),
            nameserver: Some("127.0.0.1:5353".into()),
            zone: Some("Example.org".into()),
            tsig_key_name: Some("acmeproxy".into()),
            tsig_secret: Some(Secret::new("c2VjcmV0c2VjcmV0".into())),
            ..UpstreamChallengeConfig::default()
        }
    }

    #[test]
    fn rfc2136_settings_with_defaults() {
        let s = rfc2136().settings().unwrap();
        assert_eq!(s.zone.as_deref(), Some("example.org."));
        assert_eq!(s.ttl, 60);
        assert_eq!(s.propagation_timeout, Duration::from_secs(120));
        let Dns01Provider::Rfc2136 { tsig: Some(k) } = &s.provider else {
            panic!("{s:?}");
        };
        assert_eq!(k.name, "acmeproxy.");
        assert_eq!(k.algorithm, "hmac-sha256");
        assert_eq!(k.secret.expose(), b"secretsecret");
        // The secret never shows.
        assert!(!format!("{s:?}").contains("c2VjcmV0"));
    }

    #[test]
    fn refusals_name_the_key() {
        let cases: Vec<(UpstreamChallengeConfig, &str)> = vec![
            (
                UpstreamChallengeConfig {
                    kind: "http-01".into(),
                    ..rfc2136()
                },
                "upstream_challenge.type",
            ),
            (
                UpstreamChallengeConfig {
                    provider: "route53".into(),
                    ..rfc2136()
                },
                "upstream_challenge.provider",
            ),
            (
                UpstreamChallengeConfig {
                    zone: None,
                    ..rfc2136()
                },
                "upstream_challenge.zone",
            ),
            (
                UpstreamChallengeConfig {
                    nameserver: Some("ns1 example:53".into()),
                    ..rfc2136()
                },
                "upstream_challenge.nameserver",
            ),
            (
                UpstreamChallengeConfig {
                    tsig_algorithm: Some("hmac-md5".into()),
                    ..rfc2136()
                },
                "upstream_challenge.tsig_algorithm",
            ),
            (
                UpstreamChallengeConfig {
                    tsig_secret: Some(Secret::new("not base64!".into())),
                    ..rfc2136()
                },
                "upstream_challenge.tsig_secret",
            ),
            (
                UpstreamChallengeConfig {
                    propagation_timeout: Some("forever".into()),
                    ..rfc2136()
                },
                "upstream_challenge.propagation_timeout",
            ),
            (
                UpstreamChallengeConfig {
                    provider: "exec".into(),
                    command: Some("/nonexistent/hook".into()),
                    tsig_key_name: None,
                    tsig_secret: None,
                    ..rfc2136()
                },
                "upstream_challenge.command",
            ),
        ];
        for (cfg, key) in cases {
            let e = cfg.settings().unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
            assert!(!e.contains("c2VjcmV0"), "{e}");
        }
    }

    #[test]
    fn secret_from_a_tsig_keygen_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tsig.key");
        std::fs::write(
            &file,
            "key \"acmeproxy\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0c2VjcmV0\";\n};\n",
        )
        .unwrap();
        let cfg = UpstreamChallengeConfig {
            tsig_secret: None,
            tsig_secret_file: Some(file),
            ..rfc2136()
        };
        let Dns01Provider::Rfc2136 { tsig: Some(k) } = cfg.settings().unwrap().provider else {
            panic!("no key");
        };
        assert_eq!(k.secret.expose(), b"secretsecret");
    }
}
