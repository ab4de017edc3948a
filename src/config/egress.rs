//! `validation.denyNetworks`: the networks challenge validation never
//! connects to (src/validate/egress.rs applies them).

use serde::Deserialize;

use crate::validate::egress::{EgressRules, IpNetwork};

/// `validation.denyNetworks`: a list of CIDR networks or addresses. Absent,
/// the defaults apply ([`crate::validate::egress::DEFAULT_DENY_NETWORKS`]:
/// loopback, link-local with the cloud metadata endpoints, multicast,
/// unspecified and reserved); `[]` denies nothing. Each entry is parsed when
/// `ca.json` is read, so a typo is a start-up error naming the entry.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(transparent)]
pub struct DenyNetworks(Option<Vec<IpNetwork>>);

impl DenyNetworks {
    /// The rules validation applies.
    pub fn rules(&self) -> EgressRules {
        match &self.0 {
            None => EgressRules::default(),
            Some(list) => EgressRules::new(list.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn parse(validation: &str, address: &str) -> Result<(Config, Vec<String>), String> {
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
        assert_eq!(cfg.validation.deny_networks.rules(), EgressRules::default());
        assert!(warnings.is_empty(), "{warnings:?}");
        let (cfg, _) = parse(r#"{"denyNetworks": []}"#, "127.0.0.1:8443").unwrap();
        assert!(cfg.validation.deny_networks.rules().denied().is_empty());
        let (cfg, _) = parse(
            r#"{"denyNetworks": ["10.0.0.0/8", "fd00::1"]}"#,
            "127.0.0.1:8443",
        )
        .unwrap();
        let rules = cfg.validation.deny_networks.rules();
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
}
