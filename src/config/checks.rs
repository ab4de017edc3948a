//! Value checks that `check-config` and start-up share: every key that
//! `serve` would refuse later, or run with to no good end, is refused here
//! with its path, the value, what is allowed and how to fix it.

use std::net::{IpAddr, SocketAddr};

use serde::de::DeserializeOwned;

use super::{Config, ConfigError, Opaque, parse_go_duration};

/// Lifetimes in days (`certlifetime`): at least a day, at most ten years.
pub(super) const LIFETIME_DAYS: std::ops::RangeInclusive<u32> = 1..=3650;
/// Seconds to wait on an upstream (`cert_obtain_timeout`).
pub(super) const TIMEOUT_SECONDS: std::ops::RangeInclusive<u64> = 1..=3600;

/// `authority.config` read as `T`; an error names the key inside it.
pub(super) fn sub_config<T: DeserializeOwned + Default>(
    config: Option<&Opaque>,
) -> Result<T, ConfigError> {
    let Some(v) = config else {
        return Ok(T::default());
    };
    serde_path_to_error::deserialize(v.0.clone()).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." || path.is_empty() {
            "authority.config".to_owned()
        } else {
            format!("authority.config.{path}")
        };
        let mut message = e.inner().to_string();
        let allowed = match path.as_str() {
            "certlifetime" => Some(format!(
                "{} to {} days",
                LIFETIME_DAYS.start(),
                LIFETIME_DAYS.end()
            )),
            "cert_obtain_timeout" => Some(format!(
                "{} to {} seconds",
                TIMEOUT_SECONDS.start(),
                TIMEOUT_SECONDS.end()
            )),
            _ => None,
        };
        if let Some(allowed) = allowed {
            message = format!("{message}; give a whole number from {allowed}");
        }
        ConfigError::invalid(key, message)
    })
}

impl Config {
    /// The checks of single values (the cross-field ones are in
    /// `validate`).
    pub(super) fn check_values(&self) -> Result<(), ConfigError> {
        if let Some(dir) = &self.data_dir {
            if dir.exists() && !dir.is_dir() {
                return Err(ConfigError::invalid(
                    "dataDir",
                    format!(
                        "{} exists and is not a directory; give a directory (it is created when missing)",
                        dir.display()
                    ),
                ));
            }
        }
        for (i, name) in self.dns_names.iter().enumerate() {
            if !is_dns_name(name) && name.parse::<IpAddr>().is_err() {
                return Err(ConfigError::invalid(
                    format!("dnsNames[{i}]"),
                    format!(
                        "{name:?} is neither a DNS name (letters, digits and '-' in dot-separated \
                         labels of 1 to 63 characters) nor an IP address"
                    ),
                ));
            }
        }
        if let Some(format) = self.logger.as_ref().and_then(|l| l.format.as_deref()) {
            if format != "text" && format != "json" {
                return Err(ConfigError::invalid(
                    "logger.format",
                    format!("{format:?} is not a log format; use \"text\" or \"json\""),
                ));
            }
        }
        self.check_claims()
    }

    /// Each claims block (authority and provisioners): min ≤ default ≤ max.
    fn check_claims(&self) -> Result<(), ConfigError> {
        let blocks = std::iter::once(("authority.claims".to_owned(), &self.authority.claims))
            .chain(
                self.authority
                    .provisioners
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (format!("authority.provisioners[{i}].claims"), &p.claims)),
            );
        for (key, claims) in blocks {
            let Some(c) = claims else { continue };
            let parse = |v: &Option<String>| v.as_deref().map(parse_go_duration).transpose();
            let (Ok(min), Ok(max), Ok(default)) = (
                parse(&c.min_tls_cert_duration),
                parse(&c.max_tls_cert_duration),
                parse(&c.default_tls_cert_duration),
            ) else {
                // Unparsable durations are reported by `validate`.
                continue;
            };
            let text = |v: &Option<String>| v.clone().unwrap_or_default();
            if let (Some(lo), Some(hi)) = (min, max) {
                if lo > hi {
                    return Err(ConfigError::invalid(
                        format!("{key}.minTLSCertDuration"),
                        format!(
                            "{} is above maxTLSCertDuration {}; lower the minimum or raise the maximum",
                            text(&c.min_tls_cert_duration),
                            text(&c.max_tls_cert_duration)
                        ),
                    ));
                }
            }
            if let Some(d) = default {
                let below = min.is_some_and(|lo| d < lo);
                let above = max.is_some_and(|hi| d > hi);
                if below || above {
                    return Err(ConfigError::invalid(
                        format!("{key}.defaultTLSCertDuration"),
                        format!(
                            "{} is outside minTLSCertDuration {} .. maxTLSCertDuration {}",
                            text(&c.default_tls_cert_duration),
                            c.min_tls_cert_duration.as_deref().unwrap_or("(unset)"),
                            c.max_tls_cert_duration.as_deref().unwrap_or("(unset)")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `value`, when set, lies in `range` (`unit` names it in the message).
pub(super) fn in_range<T: PartialOrd + std::fmt::Display>(
    key: &str,
    value: Option<T>,
    range: &std::ops::RangeInclusive<T>,
    unit: &str,
) -> Result<(), ConfigError> {
    match value {
        Some(v) if !range.contains(&v) => Err(ConfigError::invalid(
            key,
            format!(
                "{v} is out of range: give {} to {} {unit}",
                range.start(),
                range.end()
            ),
        )),
        _ => Ok(()),
    }
}

/// An http(s) URL with a host, as the HTTP client will need it.
pub(super) fn check_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let host = url
        .parse::<http::Uri>()
        .ok()
        .filter(|u| matches!(u.scheme_str(), Some("https" | "http")))
        .and_then(|u| u.host().map(str::to_owned))
        .filter(|h| !h.is_empty());
    if host.is_none() {
        return Err(ConfigError::invalid(
            key,
            format!(
                "{url:?} is not an http(s) URL with a host; give the upstream ACME directory URL, \
                 e.g. https://acme.sectigo.com/v2/InCommonRSAOV"
            ),
        ));
    }
    Ok(())
}

/// A DNS name as a certificate's subjectAltName takes it (RFC 1123 labels;
/// a trailing dot is not allowed).
pub(super) fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The line (1-based) of `key`'s last segment in `text`, for messages: the
/// first `"segment":` after the key's earlier segments, when they can be
/// followed.
pub(super) fn line_of(text: &str, key: &str) -> Option<usize> {
    let mut from = 0;
    let segments: Vec<&str> = key
        .split('.')
        .map(|s| s.split('[').next().unwrap_or(s))
        .filter(|s| !s.is_empty())
        .collect();
    for seg in &segments {
        let needle = format!("\"{seg}\"");
        let at = text[from..].find(&needle)? + from;
        from = at + needle.len();
    }
    let start = from.checked_sub(segments.last()?.len() + 2)?;
    Some(text[..start].matches('\n').count() + 1)
}

/// A listen address: `ip:port`, or `:port` for every interface.
pub(super) fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_owned()
    };
    full.parse::<SocketAddr>().map_err(|_| {
        match full.rsplit_once(':') {
            Some((host, port))
                if port.parse::<u16>().is_ok()
                    && host.trim_matches(['[', ']']).parse::<IpAddr>().is_err() =>
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

/// A validation resolver: `ip:port`, or an IP (port 53).
pub(super) fn parse_resolver(r: &str) -> Result<SocketAddr, ConfigError> {
    r.parse::<SocketAddr>()
        .or_else(|_| r.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| {
            ConfigError::invalid(
                "validation.resolvers",
                format!("{r:?} is not an IP address or ip:port"),
            )
        })
}
