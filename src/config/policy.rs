//! step-ca's x509 name policy as it appears in `ca.json`
//! (`authority.policy`, `authority.provisioners[].policy`).

use serde::{Deserialize, Serialize};

document! {
    /// `policy`.
    #[derive(Clone, Debug, Default, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    pub struct PolicyConfig {
        pub x509: Option<X509PolicyConfig>,
    }
    // acmeproxy issues no SSH certificates.
    ignores { "ssh" ssh }
}

/// `policy.x509`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct X509PolicyConfig {
    pub allow: Option<NamesConfig>,
    pub deny: Option<NamesConfig>,
    /// Whether wildcard names (`*.example.com`) may be ordered; default false
    /// once a policy is given, as in step-ca.
    pub allow_wildcard_names: bool,
}

/// `allow` / `deny`: names and networks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct NamesConfig {
    /// DNS names: `example.com` (exactly), `*.example.com` (one label below),
    /// `.example.com` (any depth below).
    pub dns: Vec<String>,
    /// IP addresses or CIDR networks.
    pub ip: Vec<String>,
    /// step-ca keys for names acmeproxy never certifies: accepted, warned
    /// about when not empty.
    pub email: Vec<String>,
    pub uri: Vec<String>,
    pub common_name: Vec<String>,
}

impl NamesConfig {
    /// The keys set here that name what acmeproxy never certifies.
    pub(super) fn ignored_keys(&self) -> Vec<&'static str> {
        [
            ("email", &self.email),
            ("uri", &self.uri),
            ("commonName", &self.common_name),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, _)| k)
        .collect()
    }
}
