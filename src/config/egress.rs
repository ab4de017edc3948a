//! `validation.denyNetworks`: the networks challenge validation never
//! connects to (src/validate/egress.rs applies them).

use serde::{Deserialize, Serialize, Serializer};

use crate::validate::egress::{EgressRules, IpNetwork};

/// `validation.denyNetworks`: a list of CIDR networks or addresses. Absent,
/// the defaults apply ([`crate::validate::egress::DEFAULT_DENY_NETWORKS`]:
/// loopback, link-local with the cloud metadata endpoints, multicast,
/// unspecified and reserved); `[]` denies nothing. Each entry is parsed when
/// `ca.json` is read, so a typo is a start-up error naming the entry.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(transparent)]
pub struct DenyNetworks(Option<Vec<IpNetwork>>);

impl Serialize for DenyNetworks {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            None => s.serialize_none(),
            Some(list) => s.collect_seq(list.iter().map(ToString::to_string)),
        }
    }
}

impl DenyNetworks {
    /// The rules validation applies.
    pub fn rules(&self) -> EgressRules {
        match &self.0 {
            None => EgressRules::default(),
            Some(list) => EgressRules::new(list.clone()),
        }
    }
}

/// The default deny list without loopback, which `acmeproxy init` writes for
/// a server that listens on loopback only: there every client runs on the
/// machine itself (certbot's standalone responder on 127.0.0.1), and letting
/// the validator reach loopback gives no one a reach they lack.
pub fn loopback_demo_networks() -> Vec<String> {
    crate::validate::egress::DEFAULT_DENY_NETWORKS
        .iter()
        .filter(|n| !matches!(**n, "127.0.0.0/8" | "::1/128"))
        .map(|n| (*n).to_owned())
        .collect()
}

/// A warning when validation may reach loopback while the server is
/// reachable from other machines (`listen` is not a loopback address): any
/// client could then point the validator at the RA's own local services.
pub(super) fn loopback_warning(
    rules: &EgressRules,
    listen: std::net::SocketAddr,
) -> Option<String> {
    if listen.ip().is_loopback() {
        return None;
    }
    let open: Vec<&str> = ["127.0.0.1", "::1"]
        .into_iter()
        .filter(|ip| ip.parse().is_ok_and(|ip| rules.denied_by(ip).is_none()))
        .collect();
    if open.is_empty() {
        return None;
    }
    Some(format!(
        "validation.denyNetworks lets validation connect to loopback ({}) while the server \
         listens on {listen}: any ACME client can then make the RA fetch from its own local \
         services; remove the key to get the default, or add 127.0.0.0/8 and ::1/128",
        open.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Settings};

    fn parse(validation: &str, address: &str) -> Result<(Settings, Vec<String>), String> {
        let text = format!(
            r#"{{"address": "{address}", "dnsNames": ["localhost"], "db": {{"type": "memory"}},
                "authority": {{"type": "softcas", "provisioners": [{{"type": "ACME", "name": "acme"}}]}},
                "validation": {validation}}}"#
        );
        Config::parse(&text)
            .map(|(c, w)| (c, w.0))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn absent_means_the_defaults_and_empty_means_none() {
        let (cfg, warnings) = parse("{}", "127.0.0.1:8443").unwrap();
        assert_eq!(cfg.validation.egress, EgressRules::default());
        assert!(warnings.is_empty(), "{warnings:?}");
        let (cfg, _) = parse(r#"{"denyNetworks": []}"#, "127.0.0.1:8443").unwrap();
        assert!(cfg.validation.egress.denied().is_empty());
        let (cfg, _) = parse(
            r#"{"denyNetworks": ["10.0.0.0/8", "fd00::1"]}"#,
            "127.0.0.1:8443",
        )
        .unwrap();
        let rules = cfg.validation.egress.clone();
        assert!(rules.denied_by("10.2.3.4".parse().unwrap()).is_some());
        assert!(rules.denied_by("127.0.0.1".parse().unwrap()).is_none());
    }

    #[test]
    fn a_bad_entry_is_an_error_naming_it() {
        let err = parse(
            r#"{"denyNetworks": ["10.0.0.0/8", "10.0.0.0/40"]}"#,
            "127.0.0.1:8443",
        )
        .unwrap_err();
        assert!(
            err.contains("validation.denyNetworks[1]") && err.contains("10.0.0.0/40"),
            "{err}"
        );
    }

    #[test]
    fn loopback_allowed_on_a_reachable_server_is_warned_about() {
        for (deny, address, warned) in [
            ("[]", ":8443", true),
            ("[]", "127.0.0.1:8443", false),
            (r#"["127.0.0.0/8"]"#, "0.0.0.0:8443", true),
            (r#"["127.0.0.0/8", "::1/128"]"#, "0.0.0.0:8443", false),
        ] {
            let (_, warnings) = parse(&format!(r#"{{"denyNetworks": {deny}}}"#), address).unwrap();
            assert_eq!(
                warnings.iter().any(|w| w.contains("loopback")),
                warned,
                "{deny} {address}: {warnings:?}"
            );
        }
        let (_, warnings) = parse("{}", ":8443").unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn the_loopback_demo_list_is_the_default_without_loopback() {
        let list = loopback_demo_networks();
        assert_eq!(
            list.len(),
            crate::validate::egress::DEFAULT_DENY_NETWORKS.len() - 2
        );
        assert!(list.iter().any(|n| n == "169.254.0.0/16"));
        assert!(!list.iter().any(|n| n.starts_with("127.") || n == "::1/128"));
    }
}
