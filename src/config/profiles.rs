//! `authority.profiles`: the certificate profiles clients may choose at
//! newOrder (draft-ietf-acme-profiles), as written and as checked. A profile
//! sets the lifetime of the certificates ordered under it and the profile
//! asked of an ACME upstream; the provisioners' claims bound the lifetime.
//!
//! <https://datatracker.ietf.org/doc/draft-ietf-acme-profiles/>

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Config, ConfigError, ProvisionerSettings, parse_go_duration};

/// The profile that applies to an order that names none.
pub const DEFAULT_PROFILE: &str = "default";

/// Longest profile name.
const MAX_NAME_LEN: usize = 64;

/// One profile of `authority.profiles`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProfileConfig {
    /// Shown to clients in the directory's `meta.profiles`.
    pub description: Option<String>,
    /// The certificate lifetime (a Go duration such as `168h`) when the
    /// order names no notAfter; unset, the provisioner's.
    #[serde(rename = "defaultTLSCertDuration")]
    pub default_tls_cert_duration: Option<String>,
    /// The profile asked of an ACME upstream (`externalcas`); `null` asks
    /// for none (the upstream's default).
    pub upstream_profile: Option<String>,
}

/// A checked profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProfileSettings {
    /// The directory's description of it (`description`, else a summary).
    pub description: String,
    /// `defaultTLSCertDuration`; `None` leaves the provisioner's default.
    pub lifetime: Option<time::Duration>,
    /// `upstreamProfile`.
    pub upstream_profile: Option<String>,
}

impl Config {
    /// `authority.profiles`, checked: names, durations, and each lifetime
    /// within every provisioner's `minTLSCertDuration` ..
    /// `maxTLSCertDuration` (the provisioners' settings, resolved). An
    /// error names the profile.
    pub(super) fn profile_settings(
        &self,
        provisioners: &[ProvisionerSettings],
    ) -> Result<BTreeMap<String, ProfileSettings>, ConfigError> {
        let Some(profiles) = &self.authority.profiles else {
            return Ok(BTreeMap::new());
        };
        profiles
            .iter()
            .map(|(name, p)| {
                let key = format!("authority.profiles.{name}");
                check_name(&key, name)?;
                let lifetime = p
                    .default_tls_cert_duration
                    .as_deref()
                    .map(|d| lifetime(&key, name, d, provisioners))
                    .transpose()?;
                let upstream_profile = match p.upstream_profile.as_deref() {
                    Some(u) if u.trim().is_empty() => {
                        return Err(ConfigError::invalid(
                            format!("{key}.upstreamProfile"),
                            format!(
                                "profile {name:?}: give the name of a profile the upstream CA \
                                 offers (its directory's meta.profiles), or null for its default"
                            ),
                        ));
                    }
                    other => other.map(str::to_owned),
                };
                let description = p
                    .description
                    .clone()
                    .filter(|d| !d.trim().is_empty())
                    .unwrap_or_else(|| summary(lifetime, upstream_profile.as_deref()));
                Ok((
                    name.clone(),
                    ProfileSettings {
                        description,
                        lifetime,
                        upstream_profile,
                    },
                ))
            })
            .collect()
    }
}

/// A profile name: 1 to 64 letters, digits, `-` and `_`.
fn check_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            format!(
                "profile name {name:?}: use 1 to {MAX_NAME_LEN} letters, digits, '-' and '_' \
                 (such as \"shortlived\")"
            ),
        ))
    }
}

/// `defaultTLSCertDuration` of profile `name`: a duration above zero that
/// every provisioner's claims allow.
fn lifetime(
    key: &str,
    name: &str,
    text: &str,
    provisioners: &[ProvisionerSettings],
) -> Result<time::Duration, ConfigError> {
    let key = format!("{key}.defaultTLSCertDuration");
    let parsed = parse_go_duration(text)
        .map_err(|m| ConfigError::invalid(&key, format!("profile {name:?}: {m}")))?;
    let life = time::Duration::try_from(parsed)
        .ok()
        .filter(|l| l.is_positive())
        .ok_or_else(|| {
            ConfigError::invalid(
                &key,
                format!(
                    "profile {name:?}: {text:?} is not a usable lifetime; give one such as \"168h\""
                ),
            )
        })?;
    for p in provisioners {
        if life < p.min_lifetime || life > p.max_lifetime {
            return Err(ConfigError::invalid(
                &key,
                format!(
                    "profile {name:?}: {text} is outside what provisioner {:?} allows \
                     (minTLSCertDuration {} .. maxTLSCertDuration {}); shorten or lengthen \
                     it, or change the provisioner's claims",
                    p.name,
                    hours(p.min_lifetime),
                    hours(p.max_lifetime)
                ),
            ));
        }
    }
    Ok(life)
}

/// A lifetime for messages, as a Go duration: `168h`, `5m`, `90s`.
fn hours(d: time::Duration) -> String {
    let s = d.whole_seconds();
    if s % 3600 == 0 {
        format!("{}h", s / 3600)
    } else if s % 60 == 0 {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

/// The description of a profile given none.
fn summary(lifetime: Option<time::Duration>, upstream: Option<&str>) -> String {
    match (lifetime, upstream) {
        (Some(l), Some(u)) => format!("certificates valid for {}, upstream profile {u}", hours(l)),
        (Some(l), None) => format!("certificates valid for {}", hours(l)),
        (None, Some(u)) => format!("upstream profile {u}"),
        (None, None) => "the server's default certificates".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn with_profiles(profiles: Value) -> Value {
        json!({
            "address": "127.0.0.1:8443",
            "dnsNames": ["localhost"],
            "authority": {
                "type": "softcas",
                "profiles": profiles,
                "provisioners": [{"type": "ACME", "name": "acme"}]
            }
        })
    }

    fn parse(v: &Value) -> Result<super::super::Settings, ConfigError> {
        Config::parse(&v.to_string()).map(|(s, _)| s)
    }

    fn error(v: &Value) -> String {
        parse(v).unwrap_err().to_string()
    }

    #[test]
    fn no_profiles_key_means_no_profiles() {
        let v = json!({
            "address": "127.0.0.1:8443",
            "dnsNames": ["localhost"],
            "authority": {"type": "softcas", "provisioners": [{"type": "ACME", "name": "acme"}]}
        });
        assert!(parse(&v).unwrap().profiles.is_empty());
        assert!(
            parse(&with_profiles(Value::Null))
                .unwrap()
                .profiles
                .is_empty()
        );
    }

    #[test]
    fn the_issue_example_parses() {
        let s = parse(&with_profiles(json!({
            "default": {"upstreamProfile": null},
            "shortlived": {
                "description": "7-day certificates",
                "defaultTLSCertDuration": "168h",
                "upstreamProfile": "shortlived"
            }
        })))
        .unwrap();
        assert_eq!(s.profiles.len(), 2);
        let short = &s.profiles["shortlived"];
        assert_eq!(short.description, "7-day certificates");
        assert_eq!(short.lifetime, Some(time::Duration::days(7)));
        assert_eq!(short.upstream_profile.as_deref(), Some("shortlived"));
        let default = &s.profiles[DEFAULT_PROFILE];
        assert_eq!(default.lifetime, None);
        assert_eq!(default.upstream_profile, None);
        assert_eq!(default.description, "the server's default certificates");
    }

    #[test]
    fn a_missing_description_is_a_summary_of_the_settings() {
        let s = parse(&with_profiles(json!({
            "short": {"defaultTLSCertDuration": "24h", "upstreamProfile": "tlsserver"}
        })))
        .unwrap();
        assert_eq!(
            s.profiles["short"].description,
            "certificates valid for 24h, upstream profile tlsserver"
        );
    }

    #[test]
    fn an_unknown_key_names_the_profile_and_the_key() {
        let e = error(&with_profiles(json!({
            "shortlived": {"defaultTlsCertDuration": "168h"}
        })));
        assert!(e.contains("authority.profiles.shortlived"), "{e}");
        assert!(e.contains("defaultTlsCertDuration"), "{e}");
    }

    #[test]
    fn a_bad_duration_names_the_profile() {
        for bad in ["7d", "", "-1h", "0"] {
            let e = error(&with_profiles(json!({
                "shortlived": {"defaultTLSCertDuration": bad}
            })));
            assert!(
                e.contains("authority.profiles.shortlived.defaultTLSCertDuration"),
                "{bad:?}: {e}"
            );
            assert!(e.contains("profile \"shortlived\""), "{bad:?}: {e}");
        }
        // A number where a string belongs is a parse error with its path.
        let e = error(&with_profiles(json!({
            "shortlived": {"defaultTLSCertDuration": 168}
        })));
        assert!(e.contains("authority.profiles.shortlived"), "{e}");
    }

    #[test]
    fn a_lifetime_outside_the_provisioners_claims_is_refused() {
        let mut v = with_profiles(json!({"long": {"defaultTLSCertDuration": "2400h"}}));
        v["authority"]["provisioners"][0]["claims"] =
            json!({"maxTLSCertDuration": "2160h", "minTLSCertDuration": "1h"});
        let e = error(&v);
        assert!(
            e.contains("authority.profiles.long.defaultTLSCertDuration"),
            "{e}"
        );
        assert!(e.contains("provisioner \"acme\""), "{e}");
        assert!(e.contains("maxTLSCertDuration 2160h"), "{e}");

        // The authority's claims bound it as well, through the provisioner.
        let mut v = with_profiles(json!({"tiny": {"defaultTLSCertDuration": "30m"}}));
        v["authority"]["claims"] = json!({"minTLSCertDuration": "1h"});
        let e = error(&v);
        assert!(e.contains("minTLSCertDuration 1h"), "{e}");

        // The default maximum (398 days) applies without claims.
        let e = error(&with_profiles(
            json!({"year": {"defaultTLSCertDuration": "9600h"}}),
        ));
        assert!(e.contains("maxTLSCertDuration 9552h"), "{e}");

        // Inside the limits, it is accepted.
        let mut v = with_profiles(json!({"long": {"defaultTLSCertDuration": "2160h"}}));
        v["authority"]["provisioners"][0]["claims"] = json!({"maxTLSCertDuration": "2160h"});
        assert_eq!(
            parse(&v).unwrap().profiles["long"].lifetime,
            Some(time::Duration::days(90))
        );
    }

    #[test]
    fn bad_names_and_empty_upstream_profiles_are_refused() {
        for bad in ["", "short lived", "a.b", &"x".repeat(65)] {
            let e = error(&with_profiles(json!({ bad: {} })));
            assert!(e.contains("profile name"), "{bad:?}: {e}");
        }
        let e = error(&with_profiles(json!({"short": {"upstreamProfile": " "}})));
        assert!(
            e.contains("authority.profiles.short.upstreamProfile"),
            "{e}"
        );
    }

    #[test]
    fn the_go_plugin_configuration_is_still_accepted() {
        let text = include_str!("../../tests/fixtures/esnet-plugin-ca.json");
        let (s, _) = Config::parse(text).unwrap();
        assert!(s.profiles.is_empty());
    }
}
