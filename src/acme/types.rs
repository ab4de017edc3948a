//! RFC 8555 resource objects and request payloads, as they travel on the wire.
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-7.1>

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::problem::Problem;

/// An identifier: a DNS name (RFC 8555 §9.7.7) or an IP address (RFC 8738).
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.1.3>
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "lowercase")]
pub enum Identifier {
    Dns(String),
    Ip(IpAddr),
}

impl Identifier {
    /// The value as it appears on the wire.
    pub fn value(&self) -> String {
        match self {
            Self::Dns(name) => name.clone(),
            Self::Ip(ip) => ip.to_string(),
        }
    }

    /// Whether this is a wildcard DNS name (`*.example.com`).
    pub fn is_wildcard(&self) -> bool {
        matches!(self, Self::Dns(name) if name.starts_with("*."))
    }

    /// The name without its wildcard label: what authorizations are for.
    pub fn base(&self) -> Self {
        match self {
            Self::Dns(name) => Self::Dns(name.strip_prefix("*.").unwrap_or(name).to_owned()),
            Self::Ip(ip) => Self::Ip(*ip),
        }
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns(name) => write!(f, "dns:{name}"),
            Self::Ip(ip) => write!(f, "ip:{ip}"),
        }
    }
}

/// An identifier as a client sends it: type and value unchecked, so that an
/// unknown type is an `unsupportedIdentifier` rather than a parse error.
#[derive(Clone, Debug, Deserialize)]
pub struct RawIdentifier {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

/// Account status, RFC 8555 §7.1.6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountStatus {
    Valid,
    Deactivated,
    Revoked,
}

/// Order status, RFC 8555 §7.1.6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    Pending,
    Ready,
    Processing,
    Valid,
    Invalid,
}

impl OrderStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Ready => "ready",
            Self::Processing => "processing",
            Self::Valid => "valid",
            Self::Invalid => "invalid",
        }
    }
}

/// Authorization status, RFC 8555 §7.1.6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthorizationStatus {
    Pending,
    Valid,
    Invalid,
    Deactivated,
    Expired,
    Revoked,
}

/// Challenge status, RFC 8555 §7.1.6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChallengeStatus {
    Pending,
    Processing,
    Valid,
    Invalid,
}

/// The challenge types acmeproxy validates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChallengeType {
    #[serde(rename = "http-01")]
    Http01,
    #[serde(rename = "dns-01")]
    Dns01,
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

impl ChallengeType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http01 => "http-01",
            Self::Dns01 => "dns-01",
            Self::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

impl fmt::Display for ChallengeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The directory object, RFC 8555 §7.1.1.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Directory {
    pub new_nonce: String,
    pub new_account: String,
    pub new_order: String,
    pub revoke_cert: String,
    pub key_change: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renewal_info: Option<String>,
    pub meta: DirectoryMeta,
}

/// The directory's `meta` field, RFC 8555 §7.1.1.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirectoryMeta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terms_of_service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub website: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub caa_identities: Vec<String>,
    pub external_account_required: bool,
    /// draft-ietf-acme-profiles: the profiles offered, by name, with their
    /// descriptions.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty", default)]
    pub profiles: std::collections::BTreeMap<String, String>,
}

/// An account object, RFC 8555 §7.1.2.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    pub status: AccountStatus,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub contact: Vec<String>,
    #[serde(default)]
    pub terms_of_service_agreed: bool,
    pub orders: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_account_binding: Option<serde_json::Value>,
}

/// The newAccount request payload, RFC 8555 §7.3.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewAccountRequest {
    #[serde(default)]
    pub contact: Option<Vec<String>>,
    #[serde(default)]
    pub terms_of_service_agreed: Option<bool>,
    #[serde(default)]
    pub only_return_existing: Option<bool>,
    #[serde(default)]
    pub external_account_binding: Option<serde_json::Value>,
}

/// An account update request payload, RFC 8555 §7.3.2 and §7.3.6.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountUpdateRequest {
    #[serde(default)]
    pub contact: Option<Vec<String>>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub terms_of_service_agreed: Option<bool>,
}

/// The inner payload of a keyChange request, RFC 8555 §7.3.5.
#[derive(Clone, Debug, Deserialize)]
pub struct KeyChangeInner {
    pub account: String,
    #[serde(rename = "oldKey")]
    pub old_key: serde_json::Value,
}

/// The newOrder request payload, RFC 8555 §7.4.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewOrderRequest {
    pub identifiers: Vec<RawIdentifier>,
    #[serde(default)]
    pub not_before: Option<String>,
    #[serde(default)]
    pub not_after: Option<String>,
    /// RFC 9773 §5: the certificate this order replaces.
    #[serde(default)]
    pub replaces: Option<String>,
    /// draft-ietf-acme-profiles: the profile asked for.
    #[serde(default)]
    pub profile: Option<String>,
}

/// An order object, RFC 8555 §7.1.3.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    pub status: OrderStatus,
    pub expires: String,
    pub identifiers: Vec<Identifier>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Problem>,
    pub authorizations: Vec<String>,
    pub finalize: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
    /// draft-ietf-acme-profiles: the profile the certificate is issued under.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub profile: Option<String>,
}

/// The account's orders list, RFC 8555 §7.1.2.1.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OrdersList {
    pub orders: Vec<String>,
}

/// An authorization object, RFC 8555 §7.1.4.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    pub identifier: Identifier,
    pub status: AuthorizationStatus,
    pub expires: String,
    pub challenges: Vec<Challenge>,
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub wildcard: bool,
}

/// A challenge object, RFC 8555 §7.1.5 and §8.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Challenge {
    #[serde(rename = "type")]
    pub kind: ChallengeType,
    pub url: String,
    pub status: ChallengeStatus,
    pub token: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validated: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<Problem>,
}

/// An authorization update (deactivation) payload, RFC 8555 §7.5.2.
#[derive(Clone, Debug, Deserialize)]
pub struct AuthorizationUpdateRequest {
    pub status: String,
}

/// The finalize request payload, RFC 8555 §7.4.
#[derive(Clone, Debug, Deserialize)]
pub struct FinalizeRequest {
    pub csr: String,
}

/// The revokeCert request payload, RFC 8555 §7.6.
#[derive(Clone, Debug, Deserialize)]
pub struct RevocationRequest {
    pub certificate: String,
    #[serde(default)]
    pub reason: Option<i64>,
}

/// An ARI renewalInfo response, RFC 9773 §4.2.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RenewalInfo {
    pub suggested_window: SuggestedWindow,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanation_url: Option<String>,
}

/// The suggested renewal window of RFC 9773 §4.2.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SuggestedWindow {
    pub start: String,
    pub end: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_serialize_as_rfc8555() {
        let id = Identifier::Dns("example.com".into());
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            r#"{"type":"dns","value":"example.com"}"#
        );
        let ip: Identifier = serde_json::from_str(r#"{"type":"ip","value":"10.0.0.1"}"#).unwrap();
        assert_eq!(ip, Identifier::Ip("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn wildcard_base() {
        let id = Identifier::Dns("*.example.com".into());
        assert!(id.is_wildcard());
        assert_eq!(id.base(), Identifier::Dns("example.com".into()));
    }
}
