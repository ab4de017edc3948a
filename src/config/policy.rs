//! step-ca's x509 name policy as it appears in `ca.json`
//! (`authority.policy`, `authority.provisioners[].policy`).

use serde::Deserialize;
use serde_json::Value;

/// `policy`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(default)]
    pub x509: Option<X509PolicyConfig>,
    /// SSH policy: acmeproxy issues no SSH certificates; accepted, warned about.
    #[serde(default)]
    pub ssh: Option<Value>,
}

/// `policy.x509`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct X509PolicyConfig {
    #[serde(default)]
    pub allow: Option<NamesConfig>,
    #[serde(default)]
    pub deny: Option<NamesConfig>,
    /// Whether wildcard names (`*.example.com`) may be ordered; default false
    /// once a policy is given, as in step-ca.
    #[serde(default)]
    pub allow_wildcard_names: bool,
}

/// `allow` / `deny`: names and networks.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamesConfig {
    /// DNS names: `example.com` (exactly), `*.example.com` (one label below),
    /// `.example.com` (any depth below).
    #[serde(default)]
    pub dns: Vec<String>,
    /// IP addresses or CIDR networks.
    #[serde(default)]
    pub ip: Vec<String>,
    /// step-ca keys for names acmeproxy never certifies: accepted, warned about.
    #[serde(default)]
    pub email: Vec<String>,
    #[serde(default)]
    pub uri: Vec<String>,
    #[serde(default)]
    pub common_name: Vec<String>,
}
