//! The Vault HTTP API's wire details for the vaultcas upstream: the sign
//! request, the chain in its answer, Vault's serial form, and what Vault's
//! status codes and `errors` mean for the RA.
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-7.4>

use http::StatusCode;
use serde_json::{Value, json};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;

use crate::acme::{Identifier, ProblemType};
use crate::config::{Secret, SecretIdSource, VaultCasSettings};
use crate::upstream::{SignRequest, UpstreamError};

/// The PKI role for the CSR's key type and the body of
/// `POST /v1/<pki>/sign/<role>`.
pub(super) fn sign_body(
    req: &SignRequest,
    s: &VaultCasSettings,
) -> Result<(String, Value), UpstreamError> {
    let (_, csr) =
        X509CertificationRequest::from_der(&req.csr_der).map_err(|e| UpstreamError::Rejected {
            kind: ProblemType::BadCsr,
            detail: format!("the CSR cannot be parsed: {e}"),
        })?;
    let info = &csr.certification_request_info;
    let key = &info.subject_pki.algorithm.algorithm;
    let role = if *key == OID_PKCS1_RSAENCRYPTION {
        &s.role_rsa
    } else if *key == OID_KEY_TYPE_EC_PUBLIC_KEY {
        &s.role_ec
    } else if *key == OID_SIG_ED25519 {
        &s.role_ed25519
    } else {
        &s.role_default
    };
    let dns: Vec<&str> = req
        .identifiers
        .iter()
        .filter_map(|i| match i {
            Identifier::Dns(d) => Some(d.as_str()),
            Identifier::Ip(_) => None,
        })
        .collect();
    let ips: Vec<String> = req
        .identifiers
        .iter()
        .filter_map(|i| match i {
            Identifier::Ip(ip) => Some(ip.to_string()),
            Identifier::Dns(_) => None,
        })
        .collect();
    let csr_cn = info
        .subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok());
    let common_name = csr_cn
        .filter(|cn| dns.contains(cn))
        .or_else(|| dns.first().copied());
    let mut body = json!({
        "csr": pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", req.csr_der.clone())),
        "format": "pem",
    });
    if let Some(cn) = common_name {
        body["common_name"] = cn.into();
    }
    if !dns.is_empty() {
        body["alt_names"] = dns.join(",").into();
    }
    if !ips.is_empty() {
        body["ip_sans"] = ips.join(",").into();
    }
    if let Some(not_after) = req.not_after {
        let secs = (not_after - OffsetDateTime::now_utc()).whole_seconds();
        if secs > 0 {
            body["ttl"] = format!("{secs}s").into();
        }
    }
    Ok((role.clone(), body))
}

/// Whether Vault refused a sign request for lack of a common name (a role
/// with Vault's default `require_cn=true`, and an order without DNS names).
pub(super) fn requires_common_name(e: &UpstreamError) -> bool {
    matches!(e, UpstreamError::Rejected { detail, .. } if detail.contains("common_name field is required"))
}

/// A sign body without `common_name` again, with its first IP address as
/// the common name, for a role that requires one. Vault checks that CN
/// against the role's names, so only roles that accept any name
/// (`allow_any_name`, or `cn_validations=disabled`) take it; a role with
/// `require_cn=false` takes the first body as it is. Vault would also copy
/// a CN that looks like a host name into the DNS SANs (`192.0.2.7` as a DNS
/// name); the address is an IP SAN already, so the CN stays out of them.
pub(super) fn with_ip_common_name(body: &Value) -> Option<Value> {
    if body.get("common_name").is_some() {
        return None;
    }
    let ip = body["ip_sans"].as_str()?.split(',').next()?;
    let mut amended = body.clone();
    amended["common_name"] = ip.into();
    amended["exclude_cn_from_sans"] = true.into();
    Some(amended)
}

/// What the operator can change when Vault refuses an IP-only order.
pub(super) const IP_ONLY_HINT: &str = "for an order of IP addresses only, set the PKI role's \
    require_cn=false, or let it take the address as common name (allow_any_name=true or \
    cn_validations=disabled), with allow_ip_sans=true";

/// The certificates (DER) in a sign answer.
pub(super) struct Signed {
    /// What the RA serves: leaf first, then the issuers without the root.
    pub(super) served: Vec<Vec<u8>>,
    /// Every issuer Vault sent, the root included, for `/roots.pem`.
    pub(super) issuers: Vec<Vec<u8>>,
}

/// The chain in a sign answer's `data`.
pub(super) fn issued_chain(data: &Value, what: &str) -> Result<Signed, UpstreamError> {
    let leaf = pem_certificates(&data["certificate"]);
    let issuers: Vec<Vec<u8>> = match &data["ca_chain"] {
        Value::Array(items) if !items.is_empty() => {
            items.iter().flat_map(pem_certificates).collect()
        }
        _ => pem_certificates(&data["issuing_ca"]),
    };
    if leaf.is_empty() {
        return Err(UpstreamError::Internal {
            context: format!("Vault's answer to {what} has no certificate in data.certificate"),
            source: None,
        });
    }
    // The served chain ends below the root; duplicates are dropped.
    let mut certificates = leaf;
    for c in &issuers {
        if !is_self_signed(c) && !certificates.contains(c) {
            certificates.push(c.clone());
        }
    }
    Ok(Signed {
        served: certificates,
        issuers,
    })
}

/// The AppRole secret ID from its source (files and variables are read at
/// each login, so they may be rotated).
pub(super) fn read_secret_id(source: &SecretIdSource) -> Result<Secret, UpstreamError> {
    let text = match source {
        SecretIdSource::Inline(s) => return Ok(s.clone()),
        SecretIdSource::File(path) => std::fs::read_to_string(path).map_err(|e| {
            internal(
                format!("reading the AppRole secretIDFile {}", path.display()),
                e,
            )
        })?,
        SecretIdSource::Env(var) => std::env::var(var).map_err(|e| {
            internal(
                format!("reading the AppRole secret ID from the environment variable {var}"),
                e,
            )
        })?,
    };
    Ok(Secret::new(text.trim().to_owned()))
}

/// The body of a successful answer, or the error Vault's status means.
pub(super) fn checked(status: StatusCode, body: Value, what: &str) -> Result<Value, UpstreamError> {
    if status.is_success() {
        Ok(body)
    } else {
        Err(vault_error(status, &body, what))
    }
}

/// Vault's `errors` array, joined; the status when there is none.
pub(super) fn errors_text(body: &Value, status: StatusCode) -> String {
    let said: Vec<&str> = body["errors"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if said.is_empty() {
        format!("HTTP {status}")
    } else {
        said.join("; ")
    }
}

/// 4xx: refused for good, with Vault's words; 5xx, 429 and the rest: try later.
pub(super) fn vault_error(status: StatusCode, body: &Value, what: &str) -> UpstreamError {
    let said = errors_text(body, status);
    if !status.is_client_error() || status == StatusCode::TOO_MANY_REQUESTS {
        return UpstreamError::Unavailable {
            context: format!("Vault failed {what}: {said}"),
            source: None,
        };
    }
    let lower = said.to_ascii_lowercase();
    let kind = match status {
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => ProblemType::Unauthorized,
        // A missing mount or role is the RA's configuration, not the client's.
        StatusCode::NOT_FOUND => ProblemType::ServerInternal,
        _ if lower.contains("unknown role") || lower.contains("no handler for route") => {
            ProblemType::ServerInternal
        }
        _ if [
            "not allowed",
            "common name",
            "alt name",
            "ip san",
            "subject alternative",
        ]
        .iter()
        .any(|w| lower.contains(w)) =>
        {
            ProblemType::RejectedIdentifier
        }
        _ if [
            "csr",
            "certificate request",
            "key type",
            "key bits",
            "public key",
        ]
        .iter()
        .any(|w| lower.contains(w)) =>
        {
            ProblemType::BadCsr
        }
        _ => ProblemType::Malformed,
    };
    UpstreamError::Rejected {
        kind,
        detail: format!("Vault refused {what}: {said}"),
    }
}

/// The certificates (DER) in a PEM string value.
pub(super) fn pem_certificates(v: &Value) -> Vec<Vec<u8>> {
    v.as_str()
        .and_then(|s| pem::parse_many(s).ok())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect()
}

/// The last self-signed certificate of `chain` (its root), if any.
pub(super) fn self_signed_root(chain: &[Vec<u8>]) -> Option<&[u8]> {
    chain
        .iter()
        .rev()
        .find(|c| is_self_signed(c))
        .map(Vec::as_slice)
}

pub(super) use crate::upstream::roots::is_self_signed_der as is_self_signed;

/// Vault's serial form, `1f:0a:…`: from the certificate, else from `hex`.
pub(super) fn vault_serial(certificate_der: &[u8], serial_hex: &str) -> String {
    let bytes = match X509Certificate::from_der(certificate_der) {
        Ok((_, c)) => c.raw_serial().to_vec(),
        Err(_) => {
            let padded = if serial_hex.len() % 2 == 1 {
                format!("0{serial_hex}")
            } else {
                serial_hex.to_owned()
            };
            padded
                .as_bytes()
                .chunks(2)
                .filter_map(|p| {
                    std::str::from_utf8(p)
                        .ok()
                        .and_then(|p| u8::from_str_radix(p, 16).ok())
                })
                .collect()
        }
    };
    let start = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or_else(|| bytes.len().saturating_sub(1));
    bytes
        .get(start..)
        .unwrap_or_default()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Lower-case hex.
pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An [`UpstreamError::Internal`] with its source.
pub(super) fn internal(
    context: impl Into<String>,
    e: impl std::error::Error + Send + Sync + 'static,
) -> UpstreamError {
    UpstreamError::Internal {
        context: context.into(),
        source: Some(Box::new(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_colon_hex_without_leading_zeros() {
        assert_eq!(vault_serial(b"not a certificate", "0a1b"), "0a:1b");
        assert_eq!(vault_serial(b"", "a1b"), "0a:1b");
        assert_eq!(vault_serial(b"", "00ff10"), "ff:10");
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["x.test".into()]).unwrap();
        params.serial_number = Some(vec![0, 0x80, 0x01, 0xfe].into());
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(vault_serial(cert.der(), "ignored"), "80:01:fe");
        assert!(is_self_signed(cert.der()));
    }

    fn settings() -> VaultCasSettings {
        VaultCasSettings {
            address: "https://vault.test:8200".into(),
            fingerprint: None,
            pki_mount_path: "pki".into(),
            role_default: "any".into(),
            role_rsa: "rsa".into(),
            role_ec: "ec".into(),
            role_ed25519: "ed".into(),
            auth_mount_path: "approle".into(),
            auth: crate::config::VaultAuth::Kubernetes {
                role: "r".into(),
                token_path: "/t".into(),
            },
        }
    }

    fn request(alg: &'static rcgen::SignatureAlgorithm, cn: &str) -> SignRequest {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["b.test".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        SignRequest {
            csr_der: params.serialize_request(&key).unwrap().der().to_vec(),
            csr_verified: false,
            identifiers: vec![
                Identifier::Dns("a.test".into()),
                Identifier::Dns("b.test".into()),
                Identifier::Ip("192.0.2.7".parse().unwrap()),
                Identifier::Ip("2001:db8::1".parse().unwrap()),
            ],
            not_before: None,
            not_after: Some(OffsetDateTime::now_utc() + time::Duration::hours(24)),
            resume: None,
            replaces: None,
            profile: None,
        }
    }

    #[test]
    fn sign_body_picks_the_role_by_key_type_and_lists_the_names() {
        let (role, body) = sign_body(
            &request(&rcgen::PKCS_ECDSA_P384_SHA384, "b.test"),
            &settings(),
        )
        .unwrap();
        assert_eq!(role, "ec");
        assert_eq!(
            body["common_name"], "b.test",
            "the CSR's CN when it is ordered"
        );
        assert_eq!(body["alt_names"], "a.test,b.test");
        assert_eq!(body["ip_sans"], "192.0.2.7,2001:db8::1");
        assert_eq!(body["format"], "pem");
        let ttl: i64 = body["ttl"]
            .as_str()
            .unwrap()
            .trim_end_matches('s')
            .parse()
            .unwrap();
        assert!((86_390..=86_400).contains(&ttl), "{ttl}");
        assert!(
            body["csr"]
                .as_str()
                .unwrap()
                .starts_with("-----BEGIN CERTIFICATE REQUEST-----")
        );

        let (role, body) =
            sign_body(&request(&rcgen::PKCS_ED25519, "other.test"), &settings()).unwrap();
        assert_eq!(role, "ed");
        assert_eq!(
            body["common_name"], "a.test",
            "else the first DNS identifier"
        );

        let bad = SignRequest {
            csr_der: b"junk".to_vec(),
            csr_verified: false,
            ..request(&rcgen::PKCS_ED25519, "a.test")
        };
        let e = sign_body(&bad, &settings()).unwrap_err();
        assert!(
            matches!(
                e,
                UpstreamError::Rejected {
                    kind: ProblemType::BadCsr,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn an_ip_only_request_can_send_the_address_as_common_name() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["192.0.2.7".into(), "2001:db8::1".into()]).unwrap();
        let req = SignRequest {
            csr_der: params.serialize_request(&key).unwrap().der().to_vec(),
            csr_verified: false,
            identifiers: vec![
                Identifier::Ip("192.0.2.7".parse().unwrap()),
                Identifier::Ip("2001:db8::1".parse().unwrap()),
            ],
            not_before: None,
            not_after: None,
            resume: None,
            replaces: None,
            profile: None,
        };
        let (role, body) = sign_body(&req, &settings()).unwrap();
        assert_eq!(role, "ec");
        assert!(
            body.get("common_name").is_none(),
            "first without: a role with require_cn=false takes it as it is: {body}"
        );
        assert_eq!(body["ip_sans"], "192.0.2.7,2001:db8::1");
        assert!(body.get("alt_names").is_none(), "{body}");
        assert!(
            body.get("ttl").is_none(),
            "no lifetime asked: the role's default applies: {body}"
        );

        let refused = vault_error(
            StatusCode::BAD_REQUEST,
            &json!({"errors": ["the common_name field is required, or must be provided in a CSR with \"use_csr_common_name\" set to true, unless \"require_cn\" is set to false"]}),
            "signing",
        );
        assert!(requires_common_name(&refused), "{refused}");
        assert!(!requires_common_name(&vault_error(
            StatusCode::BAD_REQUEST,
            &json!({"errors": ["common name 192.0.2.7 not allowed by this role"]}),
            "signing",
        )));
        let again = with_ip_common_name(&body).unwrap();
        assert_eq!(again["common_name"], "192.0.2.7");
        assert_eq!(again["exclude_cn_from_sans"], true);
        assert_eq!(again["ip_sans"], body["ip_sans"]);
        assert_eq!(again["csr"], body["csr"]);

        // With a DNS name the CN is that name, and there is nothing to amend.
        let (_, body) = sign_body(
            &request(&rcgen::PKCS_ECDSA_P256_SHA256, "b.test"),
            &settings(),
        )
        .unwrap();
        assert_eq!(body["common_name"], "b.test");
        assert!(with_ip_common_name(&body).is_none());
    }

    #[test]
    fn the_served_chain_leaves_out_the_root() {
        let ca = |name: &str| {
            let mut p = rcgen::CertificateParams::default();
            p.distinguished_name.push(rcgen::DnType::CommonName, name);
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p
        };
        let root =
            rcgen::CertifiedIssuer::self_signed(ca("root"), rcgen::KeyPair::generate().unwrap())
                .unwrap();
        let int = rcgen::CertifiedIssuer::signed_by(
            ca("int"),
            rcgen::KeyPair::generate().unwrap(),
            &root,
        )
        .unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["a.test".into()])
            .unwrap()
            .signed_by(&rcgen::KeyPair::generate().unwrap(), &int)
            .unwrap();
        assert_eq!(
            self_signed_root(&[int.der().to_vec(), root.der().to_vec()]),
            Some(root.der().as_ref())
        );
        assert_eq!(
            self_signed_root(&[leaf.der().to_vec(), int.der().to_vec()]),
            None,
            "a chain without its root has none: the intermediate is no root"
        );
        let data = json!({"certificate": leaf.pem(), "issuing_ca": int.pem(), "ca_chain": [int.pem(), root.pem()]});
        let signed = issued_chain(&data, "signing").unwrap();
        assert_eq!(signed.served, [leaf.der().to_vec(), int.der().to_vec()]);
        assert_eq!(signed.issuers.last(), Some(&root.der().to_vec()));
        let old = json!({"certificate": leaf.pem(), "issuing_ca": int.pem()});
        assert_eq!(issued_chain(&old, "signing").unwrap().served.len(), 2);
        assert!(issued_chain(&json!({}), "signing").is_err());
    }

    #[test]
    fn vault_errors_map_to_problems() {
        let kind = |status: u16, msg: &str| match vault_error(
            StatusCode::from_u16(status).unwrap(),
            &json!({"errors": [msg]}),
            "signing",
        ) {
            UpstreamError::Rejected { kind, detail } => {
                assert!(detail.contains(msg), "{detail}");
                Some(kind)
            }
            UpstreamError::Unavailable { context, .. } => {
                assert!(context.contains(msg), "{context}");
                None
            }
            UpstreamError::Internal { .. } => unreachable!(),
        };
        assert_eq!(
            kind(403, "permission denied"),
            Some(ProblemType::Unauthorized)
        );
        assert_eq!(
            kind(400, "common name evil.test not allowed by this role"),
            Some(ProblemType::RejectedIdentifier)
        );
        assert_eq!(
            kind(400, "certificate request could not be parsed"),
            Some(ProblemType::BadCsr)
        );
        assert_eq!(
            kind(400, "unknown role: nope"),
            Some(ProblemType::ServerInternal)
        );
        assert_eq!(kind(400, "something else"), Some(ProblemType::Malformed));
        assert_eq!(kind(503, "Vault is sealed"), None);
        assert_eq!(kind(429, "standby"), None);
        let bare = vault_error(StatusCode::BAD_GATEWAY, &Value::Null, "x").to_string();
        assert!(bare.contains("502"), "{bare}");
    }
}
