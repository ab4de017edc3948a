//! Domain records and their identifiers, as the store keeps them and the
//! Authority changes them. Wire objects are rendered from these at the HTTP edge.

mod clock;
mod ids;
mod net;

pub use clock::{Clock, FakeClock, SystemClock};
pub use ids::{AccountId, AuthzId, CertId, OrderId, random_token};
pub use net::IpNetwork;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::acme::Problem;
use crate::acme::jws::PublicJwk;
use crate::acme::types::{
    AccountStatus, AuthorizationStatus, ChallengeStatus, ChallengeType, Identifier, OrderStatus,
};

/// An ACME account, RFC 8555 §7.1.2.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AccountRecord {
    pub id: AccountId,
    /// The provisioner (directory) the account was created under.
    pub provisioner: String,
    /// The account's public key, stored as its JWK (RFC 7517), public
    /// members only.
    pub jwk: PublicJwk,
    /// RFC 7638 thumbprint of `jwk`, base64url.
    pub thumbprint: String,
    pub status: AccountStatus,
    pub contact: Vec<String>,
    pub terms_of_service_agreed: bool,
    /// The EAB key id the account was bound with, if any.
    pub eab_kid: Option<String>,
    /// The name policy of that key, copied when the account was bound, so
    /// that removing the key does not lift it. `None` with an `eab_kid`: an
    /// account bound before the copy was made (the key is looked up).
    #[serde(default)]
    pub eab_policy: Option<Box<EabPolicy>>,
    /// The externalAccountBinding JWS as the client sent it, echoed back.
    pub eab_jws: Option<serde_json::Value>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// An order, RFC 8555 §7.1.3.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OrderRecord {
    pub id: OrderId,
    pub account_id: AccountId,
    pub provisioner: String,
    pub status: OrderStatus,
    pub identifiers: Vec<Identifier>,
    pub authz_ids: Vec<AuthzId>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub not_before: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub not_after: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub expires: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub error: Option<Problem>,
    pub certificate_id: Option<CertId>,
    /// RFC 9773 `replaces`: the ARI certificate id of the certificate replaced.
    pub replaces: Option<String>,
    /// The certificate profile (draft-ietf-acme-profiles) the order is
    /// issued under: the one asked for, else `default` when configured.
    /// Absent in records stored before profiles existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

/// An authorization with its challenges, RFC 8555 §7.1.4.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuthzRecord {
    pub id: AuthzId,
    pub account_id: AccountId,
    pub order_id: OrderId,
    /// The identifier without any wildcard label.
    pub identifier: Identifier,
    pub wildcard: bool,
    pub status: AuthorizationStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub expires: OffsetDateTime,
    pub challenges: Vec<ChallengeRecord>,
}

/// One challenge of an authorization, RFC 8555 §7.1.5.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChallengeRecord {
    pub kind: ChallengeType,
    pub token: String,
    pub status: ChallengeStatus,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub validated: Option<OffsetDateTime>,
    pub error: Option<Problem>,
}

/// A revocation, as recorded on a certificate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Revocation {
    /// RFC 5280 §5.3.1 reason code.
    pub reason: u8,
    #[serde(with = "time::serde::rfc3339")]
    pub revoked_at: OffsetDateTime,
}

/// An issued certificate chain, as the upstream returned it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CertificateRecord {
    pub id: CertId,
    pub account_id: AccountId,
    pub order_id: OrderId,
    /// Serial number, lower-case hex without leading zeros stripped.
    pub serial_hex: String,
    /// PEM chain, leaf first.
    pub chain_pem: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// Which upstream issued it (`softcas`, `externalcas`, …).
    pub upstream: String,
    pub revocation: Option<Revocation>,
}

/// A durable unit of finalize work. Written in the same
/// transaction that moves the order to `processing`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinalizeJob {
    pub order_id: OrderId,
    /// The client's CSR, DER.
    #[serde(with = "b64")]
    pub csr_der: Vec<u8>,
    pub attempts: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub next_attempt_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// What the upstream asked to keep between attempts (for the ACME upstream,
    /// the upstream order URL), so that a retry resumes instead of starting over.
    pub upstream_state: Option<String>,
    /// The last transient failure, for operators.
    pub last_error: Option<String>,
}

/// An External Account Binding key (RFC 8555 §7.3.4), created by an operator.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct EabKeyRecord {
    pub kid: String,
    /// The provisioner it may be used with.
    pub provisioner: String,
    /// The MAC key, raw bytes.
    #[serde(with = "b64")]
    pub hmac_key: Vec<u8>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The account bound with this key; a key binds one account only.
    pub bound_account: Option<AccountId>,
    /// Names the account bound with this key may order (a team's key limited
    /// to its own domains), on top of the authority's and provisioner's.
    #[serde(default)]
    pub policy: Option<EabPolicy>,
}

/// A name policy attached to an EAB key (step-ca's x509 policy shape).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EabPolicy {
    #[serde(default)]
    pub allow_dns: Vec<String>,
    #[serde(default)]
    pub allow_ip: Vec<String>,
    #[serde(default)]
    pub deny_dns: Vec<String>,
    #[serde(default)]
    pub deny_ip: Vec<String>,
    #[serde(default)]
    pub allow_wildcard_names: bool,
    /// Names the policy allows are pre-validated for the bound account: its
    /// authorizations are created valid, without challenges. For a trusted
    /// downstream RA that validates its own clients (chained RAs), as a
    /// commercial CA pre-validates an organisation's domains.
    #[serde(default)]
    pub prevalidated: bool,
}

impl std::fmt::Debug for EabKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EabKeyRecord")
            .field("kid", &self.kid)
            .field("provisioner", &self.provisioner)
            .field("hmac_key", &"***")
            .field("created_at", &self.created_at)
            .field("bound_account", &self.bound_account)
            .field("policy", &self.policy)
            .finish()
    }
}

mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&URL_SAFE_NO_PAD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        URL_SAFE_NO_PAD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An account as the server stored it before the key was typed: it must
    /// load, and be written back byte for byte.
    #[test]
    fn a_stored_account_record_loads_and_is_written_back_unchanged() {
        for stored in [
            r#"{"id":"AAAAAAAAAAAAAAAAAAAAAA","provisioner":"acme","jwk":{"crv":"P-256","kty":"EC","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},"thumbprint":"oKIywvGUpTVTyxMQ3bwIIeQUudfr_CkLMjCE19ECD-U","status":"valid","contact":["mailto:a@example.org"],"terms_of_service_agreed":true,"eab_kid":"team","eab_policy":{"allow_dns":["*.team.test"],"allow_ip":[],"deny_dns":[],"deny_ip":[],"allow_wildcard_names":false,"prevalidated":false},"eab_jws":{"payload":"e30","protected":"e30","signature":"AA"},"created_at":"1970-01-01T00:00:00Z"}"#,
            r#"{"id":"AAAAAAAAAAAAAAAAAAAAAA","provisioner":"acme","jwk":{"crv":"P-256","kty":"EC","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},"thumbprint":"oKIywvGUpTVTyxMQ3bwIIeQUudfr_CkLMjCE19ECD-U","status":"valid","contact":["mailto:a@example.org"],"terms_of_service_agreed":true,"eab_kid":null,"eab_policy":null,"eab_jws":null,"created_at":"1970-01-01T00:00:00Z"}"#,
        ] {
            let record: AccountRecord = serde_json::from_str(stored).unwrap();
            assert_eq!(record.jwk.thumbprint(), record.thumbprint);
            assert_eq!(serde_json::to_string(&record).unwrap(), stored);
        }
    }

    #[test]
    fn a_stored_key_with_private_members_is_refused() {
        let stored = r#"{"id":"AAAAAAAAAAAAAAAAAAAAAA","provisioner":"acme","jwk":{"crv":"P-256","d":"AA","kty":"EC","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},"thumbprint":"x","status":"valid","contact":[],"terms_of_service_agreed":true,"eab_kid":null,"eab_policy":null,"eab_jws":null,"created_at":"1970-01-01T00:00:00Z"}"#;
        let e = serde_json::from_str::<AccountRecord>(stored).unwrap_err();
        assert!(e.to_string().contains("private key material"), "{e}");
    }
}
