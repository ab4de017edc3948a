//! The x509 name policy (step-ca's shape): allow and deny lists of DNS names
//! and IP networks, and whether wildcards may be ordered. Policies apply at the
//! authority and the provisioner level; an identifier must pass every level.

use std::net::IpAddr;

use crate::acme::Identifier;

/// A DNS rule.
#[derive(Clone, Debug, PartialEq, Eq)]
enum DnsRule {
    /// `example.com`: that name only.
    Exact(String),
    /// `*.example.com`: names exactly one label below.
    OneLevel(String),
    /// `.example.com`: names any depth below.
    AnyDepth(String),
}

impl DnsRule {
    fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        let valid = |d: &str| !d.is_empty() && !d.contains('*') && !d.starts_with('.');
        if let Some(d) = s.strip_prefix("*.") {
            return valid(d)
                .then(|| Self::OneLevel(d.to_owned()))
                .ok_or_else(|| format!("{s:?} is not a DNS rule"));
        }
        if let Some(d) = s.strip_prefix('.') {
            return valid(d)
                .then(|| Self::AnyDepth(d.to_owned()))
                .ok_or_else(|| format!("{s:?} is not a DNS rule"));
        }
        valid(&s)
            .then(|| Self::Exact(s.clone()))
            .ok_or_else(|| format!("{s:?} is not a DNS rule"))
    }

    /// Whether `name` (lower-case; a wildcard's `*` counts as one label)
    /// falls under the rule.
    fn matches(&self, name: &str) -> bool {
        match self {
            Self::Exact(d) => name == d,
            Self::OneLevel(d) => name
                .strip_suffix(d.as_str())
                .and_then(|p| p.strip_suffix('.'))
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
            Self::AnyDepth(d) => name
                .strip_suffix(d.as_str())
                .is_some_and(|p| p.len() > 1 && p.ends_with('.')),
        }
    }

    fn text(&self) -> String {
        match self {
            Self::Exact(d) => d.clone(),
            Self::OneLevel(d) => format!("*.{d}"),
            Self::AnyDepth(d) => format!(".{d}"),
        }
    }
}

/// An IP network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    fn parse(s: &str) -> Result<Self, String> {
        let err = || format!("{s:?} is not an IP address or CIDR network");
        let (a, p) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = a.parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(err)?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let (a, b, bits) = match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                (u128::from(u32::from(a)), u128::from(u32::from(b)), 32u32)
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
            _ => return false,
        };
        let prefix = u32::from(self.prefix);
        if prefix == 0 {
            return true;
        }
        let shift = bits - prefix;
        (a >> shift) == (b >> shift)
    }

    fn text(&self) -> String {
        format!("{}/{}", self.addr, self.prefix)
    }
}

/// One level's name policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamePolicy {
    /// Which level this is, for messages ("authority", "provisioner acme").
    pub level: String,
    allow_dns: Vec<DnsRule>,
    deny_dns: Vec<DnsRule>,
    allow_ip: Vec<IpNet>,
    deny_ip: Vec<IpNet>,
    allow_wildcards: bool,
}

impl NamePolicy {
    /// Builds a policy from its lists; errors name the bad entry.
    pub fn new(
        level: impl Into<String>,
        allow_dns: &[String],
        deny_dns: &[String],
        allow_ip: &[String],
        deny_ip: &[String],
        allow_wildcards: bool,
    ) -> Result<Self, String> {
        let dns = |v: &[String]| {
            v.iter()
                .map(|s| DnsRule::parse(s))
                .collect::<Result<Vec<_>, _>>()
        };
        let ip = |v: &[String]| {
            v.iter()
                .map(|s| IpNet::parse(s))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self {
            level: level.into(),
            allow_dns: dns(allow_dns)?,
            deny_dns: dns(deny_dns)?,
            allow_ip: ip(allow_ip)?,
            deny_ip: ip(deny_ip)?,
            allow_wildcards,
        })
    }

    /// Checks one identifier; the error names the identifier and the rule.
    pub fn check(&self, id: &Identifier) -> Result<(), String> {
        let level = &self.level;
        match id {
            Identifier::Dns(name) => {
                if name.starts_with("*.") && !self.allow_wildcards {
                    return Err(format!(
                        "{id} is refused by the {level} policy: wildcard names are not allowed (allowWildcardNames is false)"
                    ));
                }
                if let Some(r) = self.deny_dns.iter().find(|r| r.matches(name)) {
                    return Err(format!(
                        "{id} is refused by the {level} policy: it matches the deny rule {:?}",
                        r.text()
                    ));
                }
                let allowed_by_none = self.allow_dns.is_empty() && !self.allow_ip.is_empty();
                if allowed_by_none
                    || (!self.allow_dns.is_empty()
                        && !self.allow_dns.iter().any(|r| r.matches(name)))
                {
                    return Err(format!(
                        "{id} is refused by the {level} policy: it matches no allow rule ({})",
                        rules_text(self.allow_dns.iter().map(DnsRule::text))
                    ));
                }
                Ok(())
            }
            Identifier::Ip(ip) => {
                if let Some(n) = self.deny_ip.iter().find(|n| n.contains(*ip)) {
                    return Err(format!(
                        "{id} is refused by the {level} policy: it is in the denied network {}",
                        n.text()
                    ));
                }
                let allowed_by_none = self.allow_ip.is_empty() && !self.allow_dns.is_empty();
                if allowed_by_none
                    || (!self.allow_ip.is_empty() && !self.allow_ip.iter().any(|n| n.contains(*ip)))
                {
                    return Err(format!(
                        "{id} is refused by the {level} policy: it is in no allowed network ({})",
                        rules_text(self.allow_ip.iter().map(IpNet::text))
                    ));
                }
                Ok(())
            }
        }
    }
}

fn rules_text(rules: impl Iterator<Item = String>) -> String {
    let v: Vec<String> = rules.collect();
    if v.is_empty() {
        "none for this identifier type".to_owned()
    } else {
        v.join(", ")
    }
}

/// Checks identifiers against several levels; the first refusal wins.
pub fn check_all(policies: &[NamePolicy], ids: &[Identifier]) -> Result<(), (Identifier, String)> {
    for id in ids {
        for p in policies {
            p.check(id).map_err(|why| (id.clone(), why))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    fn dns(n: &str) -> Identifier {
        Identifier::Dns(n.into())
    }

    #[test]
    fn dns_rules() {
        let p = NamePolicy::new(
            "authority",
            &s(&["*.example.com", "example.com", ".corp.test"]),
            &s(&["bad.example.com", ".secret.corp.test"]),
            &[],
            &[],
            false,
        )
        .unwrap();
        assert!(p.check(&dns("example.com")).is_ok());
        assert!(p.check(&dns("www.example.com")).is_ok());
        assert!(p.check(&dns("a.b.example.com")).is_err(), "one level only");
        assert!(p.check(&dns("a.b.corp.test")).is_ok(), "any depth");
        assert!(
            p.check(&dns("corp.test")).is_err(),
            ".corp.test is below only"
        );
        let e = p.check(&dns("bad.example.com")).unwrap_err();
        assert!(e.contains("deny rule \"bad.example.com\""), "{e}");
        assert!(p.check(&dns("x.secret.corp.test")).is_err());
        let e = p.check(&dns("other.test")).unwrap_err();
        assert!(
            e.contains("no allow rule") && e.contains("*.example.com"),
            "{e}"
        );
        let e = p.check(&dns("*.example.com")).unwrap_err();
        assert!(e.contains("allowWildcardNames"), "{e}");
        // With only DNS rules, IPs are not allowed.
        assert!(
            p.check(&Identifier::Ip("10.0.0.1".parse().unwrap()))
                .is_err()
        );
    }

    #[test]
    fn ip_rules_and_wildcards() {
        let p = NamePolicy::new(
            "provisioner acme",
            &s(&["*.example.com"]),
            &[],
            &s(&["10.0.0.0/8", "::1"]),
            &s(&["10.66.0.0/16"]),
            true,
        )
        .unwrap();
        assert!(
            p.check(&Identifier::Ip("10.1.2.3".parse().unwrap()))
                .is_ok()
        );
        assert!(p.check(&Identifier::Ip("::1".parse().unwrap())).is_ok());
        assert!(
            p.check(&Identifier::Ip("10.66.1.1".parse().unwrap()))
                .is_err()
        );
        assert!(
            p.check(&Identifier::Ip("192.168.1.1".parse().unwrap()))
                .is_err()
        );
        assert!(p.check(&dns("*.example.com")).is_ok());
        assert!(NamePolicy::new("x", &s(&["a*.b"]), &[], &[], &[], false).is_err());
        assert!(NamePolicy::new("x", &[], &[], &s(&["10.0.0.0/33"]), &[], false).is_err());
    }

    #[test]
    fn deny_only_allows_everything_else() {
        let p = NamePolicy::new("authority", &[], &s(&[".internal"]), &[], &[], true).unwrap();
        assert!(p.check(&dns("a.example.com")).is_ok());
        assert!(p.check(&dns("db.internal")).is_err());
        assert!(
            p.check(&Identifier::Ip("10.0.0.1".parse().unwrap()))
                .is_ok()
        );
    }
}
