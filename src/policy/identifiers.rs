//! Which identifiers may be ordered: syntax of DNS names (RFC 1035, RFC 5890
//! A-labels only), wildcards (RFC 8555 §7.1.3), IP addresses (RFC 8738), and
//! the per-order limits.

use std::net::IpAddr;

use crate::acme::types::RawIdentifier;
use crate::acme::{Identifier, Problem, ProblemType};

/// At most this many identifiers in one order.
pub const MAX_IDENTIFIERS: usize = 100;

/// Turns the identifiers of a newOrder into checked, normalised identifiers
/// (lower-case, deduplicated, sorted), or the problem that refuses the order.
pub fn check_identifiers(raw: &[RawIdentifier]) -> Result<Vec<Identifier>, Box<Problem>> {
    if raw.is_empty() {
        return Err(Box::new(Problem::new(
            ProblemType::Malformed,
            "the order has no identifiers; list at least one {\"type\": \"dns\", \"value\": …}",
        )));
    }
    if raw.len() > MAX_IDENTIFIERS {
        return Err(Box::new(Problem::new(
            ProblemType::RejectedIdentifier,
            format!(
                "the order has {} identifiers; at most {MAX_IDENTIFIERS} are allowed",
                raw.len()
            ),
        )));
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut subproblems = Vec::new();
    for r in raw {
        match check_one(r) {
            Ok(id) => out.push(id),
            Err(p) => subproblems.push(p),
        }
    }
    if let [only] = subproblems.as_slice() {
        return Err(Box::new(only.clone()));
    }
    if !subproblems.is_empty() {
        let mut p = Problem::new(
            ProblemType::RejectedIdentifier,
            format!(
                "{} identifiers of the order were refused; see subproblems",
                subproblems.len()
            ),
        );
        if subproblems
            .iter()
            .all(|s| s.problem_type() == Some(ProblemType::UnsupportedIdentifier))
        {
            p = Problem::new(ProblemType::UnsupportedIdentifier, p.detail);
        }
        p.subproblems = subproblems;
        return Err(Box::new(p));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[allow(clippy::result_large_err)] // collected into subproblems, never propagated
fn check_one(r: &RawIdentifier) -> Result<Identifier, Problem> {
    match r.kind.as_str() {
        "dns" => check_dns(&r.value).map(Identifier::Dns).map_err(|m| {
            Problem::new(ProblemType::RejectedIdentifier, m)
                .with_identifier(Identifier::Dns(r.value.clone()))
        }),
        "ip" => {
            let ip: IpAddr = r.value.parse().map_err(|_| {
                Problem::new(
                    ProblemType::Malformed,
                    format!("{:?} is not an IP address (RFC 8738)", r.value),
                )
            })?;
            if ip.is_unspecified() || ip.is_multicast() {
                return Err(Problem::new(
                    ProblemType::RejectedIdentifier,
                    format!("{ip} cannot be certified"),
                )
                .with_identifier(Identifier::Ip(ip)));
            }
            Ok(Identifier::Ip(ip))
        }
        other => Err(Problem::new(
            ProblemType::UnsupportedIdentifier,
            format!("identifier type {other:?} is not supported; use \"dns\" or \"ip\""),
        )),
    }
}

/// Checks a DNS name (with at most one leading `*.` label) and lower-cases it.
pub fn check_dns(value: &str) -> Result<String, String> {
    let name = value.to_ascii_lowercase();
    if name.is_empty() {
        return Err("the DNS name is empty".to_owned());
    }
    if name.ends_with('.') {
        return Err(format!(
            "{value:?} ends with a dot; give the name without it"
        ));
    }
    if name.len() > 253 {
        return Err(format!("{value:?} is longer than 253 characters"));
    }
    if name.parse::<IpAddr>().is_ok() {
        return Err(format!(
            "{value:?} is an IP address; order it as {{\"type\": \"ip\", \"value\": \"{value}\"}}"
        ));
    }
    let (wild, rest) = match name.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, name.as_str()),
    };
    if wild && !rest.contains('.') {
        return Err(format!(
            "{value:?}: a wildcard needs at least two labels after \"*.\""
        ));
    }
    for label in rest.split('.') {
        if label.is_empty() {
            return Err(format!("{value:?} has an empty label"));
        }
        if label.len() > 63 {
            return Err(format!("{value:?} has a label longer than 63 characters"));
        }
        if label.contains('*') {
            return Err(format!(
                "{value:?}: a wildcard is allowed only as the whole leftmost label"
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!(
                "{value:?} has characters other than letters, digits and '-' (use the A-label form of an internationalised name)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "{value:?} has a label that starts or ends with '-'"
            ));
        }
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(kind: &str, value: &str) -> RawIdentifier {
        RawIdentifier {
            kind: kind.into(),
            value: value.into(),
        }
    }

    #[test]
    fn normalises_and_dedups() {
        let ids = check_identifiers(&[
            raw("dns", "WWW.Example.com"),
            raw("dns", "www.example.com"),
            raw("ip", "10.0.0.1"),
            raw("dns", "*.example.com"),
        ])
        .unwrap();
        assert_eq!(ids.len(), 3);
        assert!(ids.contains(&Identifier::Dns("www.example.com".into())));
        assert!(ids.contains(&Identifier::Dns("*.example.com".into())));
    }

    #[test]
    fn refuses_bad_names_with_reasons() {
        for bad in [
            "", "a..b", "-a.com", "a_b.com", "*.com", "a.*.com", "x.com.", "1.2.3.4",
        ] {
            let p = check_identifiers(&[raw("dns", bad)]).unwrap_err();
            assert_eq!(
                p.problem_type(),
                Some(ProblemType::RejectedIdentifier),
                "{bad}"
            );
        }
        let p = check_identifiers(&[raw("email", "a@b.c")]).unwrap_err();
        assert_eq!(p.problem_type(), Some(ProblemType::UnsupportedIdentifier));
        let p = check_identifiers(&[]).unwrap_err();
        assert_eq!(p.problem_type(), Some(ProblemType::Malformed));
        let p = check_identifiers(&[raw("dns", "a_b.com"), raw("dns", "c_d.com")]).unwrap_err();
        assert_eq!(p.subproblems.len(), 2);
    }
}
