//! `authority.upstreams`, `authority.routes` and `authority.failover`:
//! several named upstreams, which of them sign which orders, and when one
//! is skipped for the next of its route (docs/admin.md, "Several
//! upstreams"). A `ca.json` without these keys has one upstream, as before.

use std::collections::BTreeSet;
use std::time::Duration;

use super::document::{AuthorityConfig, RouteMatchConfig};
use super::{ConfigError, Upstream, parse_go_duration};
use crate::model::IpNetwork;

/// Consecutive temporary failures that mark an upstream down, by default.
const DEFAULT_DOWN_AFTER: u32 = 3;
/// How often upstreams are probed, by default.
const DEFAULT_PROBE_EVERY: Duration = Duration::from_secs(30);

/// One of `authority.upstreams`, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedUpstream {
    pub name: String,
    pub upstream: Upstream,
}

/// One of `authority.routes`, checked. Empty lists do not constrain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSettings {
    pub name: String,
    /// `name.example.org`, or `*.example.org` for any name below it.
    pub dns: Vec<String>,
    pub ip: Vec<IpNetwork>,
    pub provisioner: Vec<String>,
    pub eab_key: Vec<String>,
    /// Upstream names, in failover order.
    pub upstreams: Vec<String>,
}

/// `authority.failover`, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailoverSettings {
    /// Consecutive temporary failures that mark an upstream down.
    pub down_after: u32,
    /// How often each upstream's health is probed.
    pub probe_every: Duration,
}

impl Default for FailoverSettings {
    fn default() -> Self {
        Self {
            down_after: DEFAULT_DOWN_AFTER,
            probe_every: DEFAULT_PROBE_EVERY,
        }
    }
}

/// `authority.upstreams`, each read by `build` from an `authority` that
/// holds only that upstream (so every upstream type reads its keys as it
/// does alone); errors name the entry.
pub(super) fn named_upstreams(
    a: &AuthorityConfig,
    warnings: &mut Vec<String>,
    mut build: impl FnMut(&AuthorityConfig) -> Result<Upstream, ConfigError>,
) -> Result<Vec<NamedUpstream>, ConfigError> {
    let Some(entries) = &a.upstreams else {
        return Ok(Vec::new());
    };
    if entries.is_empty() {
        return Err(ConfigError::invalid(
            "authority.upstreams",
            "list at least one upstream, or leave the key out and give authority.type",
        ));
    }
    let unused: Vec<&str> = [
        ("authority.config", a.config.is_some()),
        (
            "authority.certificateAuthority",
            a.certificate_authority.is_some(),
        ),
        (
            "authority.certificateIssuer",
            a.certificate_issuer.is_some(),
        ),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    if !unused.is_empty() {
        warnings.push(format!(
            "{} not used with authority.upstreams (each upstream has its own type, config, \
             certificateAuthority and certificateIssuer)",
            unused.join(", ")
        ));
    }
    let mut names = BTreeSet::new();
    let mut out = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let key = format!("authority.upstreams[{i}]");
        check_name(&e.name).map_err(|m| ConfigError::invalid(format!("{key}.name"), m))?;
        if !names.insert(e.name.clone()) {
            return Err(ConfigError::invalid(
                format!("{key}.name"),
                format!("upstream {:?} is defined twice", e.name),
            ));
        }
        let mut one = a.clone();
        one.kind = e.kind;
        one.config = e.config.clone();
        one.certificate_authority = e.certificate_authority.clone();
        one.certificate_authority_fingerprint = e.certificate_authority_fingerprint.clone();
        one.certificate_issuer = e.certificate_issuer.clone();
        one.upstreams = None;
        one.routes = None;
        let upstream = build(&one).map_err(|err| match err {
            ConfigError::Invalid { key: k, message } => ConfigError::Invalid {
                key: match k.strip_prefix("authority.") {
                    Some(rest) => format!("{key} ({:?}).{rest}", e.name),
                    None => format!("{key} ({:?}): {k}", e.name),
                },
                message,
            },
            other => other,
        })?;
        out.push(NamedUpstream {
            name: e.name.clone(),
            upstream,
        });
    }
    Ok(out)
}

/// `authority.routes` (default: one route to every upstream, in order) and
/// `authority.failover`, checked against the `upstreams` defined.
pub(super) fn check(
    a: &AuthorityConfig,
    upstreams: &[NamedUpstream],
) -> Result<(Vec<RouteSettings>, FailoverSettings), ConfigError> {
    if upstreams.is_empty() {
        for (key, given) in [
            ("authority.routes", a.routes.is_some()),
            ("authority.failover", a.failover.is_some()),
        ] {
            if given {
                return Err(ConfigError::invalid(
                    key,
                    "needs authority.upstreams (the named upstreams it chooses between)",
                ));
            }
        }
        return Ok((Vec::new(), FailoverSettings::default()));
    }
    let known: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
    let routes = match &a.routes {
        None => vec![RouteSettings {
            name: "default".to_owned(),
            dns: Vec::new(),
            ip: Vec::new(),
            provisioner: Vec::new(),
            eab_key: Vec::new(),
            upstreams: known.iter().map(|n| (*n).to_owned()).collect(),
        }],
        Some(routes) if routes.is_empty() => {
            return Err(ConfigError::invalid(
                "authority.routes",
                "list at least one route, or leave the key out to use every upstream in order",
            ));
        }
        Some(routes) => routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let key = format!("authority.routes[{i}]");
                let name = r.name.clone().unwrap_or_else(|| format!("route {}", i + 1));
                if r.upstreams.is_empty() {
                    return Err(ConfigError::invalid(
                        format!("{key}.upstreams"),
                        "name at least one upstream",
                    ));
                }
                for u in &r.upstreams {
                    if !known.contains(&u.as_str()) {
                        return Err(ConfigError::invalid(
                            format!("{key}.upstreams"),
                            format!(
                                "{u:?} is not one of authority.upstreams ({})",
                                known.join(", ")
                            ),
                        ));
                    }
                }
                let m = r.matches.clone().unwrap_or_default();
                route_match(&key, name, &m, r.upstreams.clone())
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let f = a.failover.clone().unwrap_or_default();
    let down_after = f.down_after.unwrap_or(DEFAULT_DOWN_AFTER);
    if !(1..=1000).contains(&down_after) {
        return Err(ConfigError::invalid(
            "authority.failover.downAfter",
            format!("{down_after} is out of range; give 1 to 1000 (default {DEFAULT_DOWN_AFTER})"),
        ));
    }
    let probe_every = match &f.probe_every {
        None => DEFAULT_PROBE_EVERY,
        Some(s) => parse_go_duration(s)
            .map_err(|m| ConfigError::invalid("authority.failover.probeEvery", m))?,
    };
    if probe_every < Duration::from_secs(1) {
        return Err(ConfigError::invalid(
            "authority.failover.probeEvery",
            "give at least 1s (default 30s)",
        ));
    }
    Ok((
        routes,
        FailoverSettings {
            down_after,
            probe_every,
        },
    ))
}

fn route_match(
    key: &str,
    name: String,
    m: &RouteMatchConfig,
    upstreams: Vec<String>,
) -> Result<RouteSettings, ConfigError> {
    let dns = m
        .dns
        .iter()
        .map(|p| {
            let p = p.trim().trim_end_matches('.').to_ascii_lowercase();
            let bare = p.strip_prefix("*.").unwrap_or(&p);
            let ok = !bare.is_empty()
                && bare.split('.').all(|l| {
                    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if ok {
                Ok(p)
            } else {
                Err(ConfigError::invalid(
                    format!("{key}.match.dns"),
                    format!(
                        "{p:?} is not a DNS name or \"*.\" followed by one (e.g. \"*.internal.example.org\")"
                    ),
                ))
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let ip =
        m.ip.iter()
            .map(|n| {
                IpNetwork::parse(n).map_err(|e| ConfigError::invalid(format!("{key}.match.ip"), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
    Ok(RouteSettings {
        name,
        dns,
        ip,
        provisioner: m.provisioner.clone(),
        eab_key: m.eab_key.clone(),
        upstreams,
    })
}

/// An upstream name: what routes, metrics labels and stored certificates
/// carry.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?}: an upstream name must be 1 to 64 letters, digits, '-', '_' or '.'"
        ))
    }
}
