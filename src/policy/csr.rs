//! CSR parsing and checks for order finalization (RFC 8555 §7.4): the
//! PKCS#10 self-signature, the key, and the names against the order.
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-7.4>

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use x509_parser::oid_registry::{
    OID_PKCS1_SHA1WITHRSA, OID_SHA1_WITH_RSA, OID_X509_EXT_SUBJECT_ALT_NAME,
};
use x509_parser::prelude::{
    FromDer, GeneralName, ParsedCriAttribute, ParsedExtension, X509CertificationRequest,
};

use crate::acme::Identifier;
use crate::acme::jws::PublicJwk;

/// Why a CSR was refused; the message is shown to the client as `badCSR`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CsrError(pub String);

/// A CSR whose signature verified.
#[derive(Clone, Debug)]
pub struct ParsedCsr {
    /// SAN dNSName entries, lower-cased, in CSR order.
    pub dns_names: Vec<String>,
    /// SAN iPAddress entries, in CSR order.
    pub ips: Vec<IpAddr>,
    /// The subject common name, lower-cased, if there is one.
    pub common_name: Option<String>,
    /// The subject public key.
    pub public_key: PublicJwk,
}

/// Parses a CSR (DER) and verifies its self-signature and key: RSA 2048 to
/// 8192 bits, EC P-256/P-384 or Ed25519, signed with SHA-256 or better.
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.4>
pub fn parse_csr(der: &[u8]) -> Result<ParsedCsr, CsrError> {
    let csr = match X509CertificationRequest::from_der(der) {
        Ok(([], csr)) => csr,
        Ok(_) => {
            return Err(CsrError(
                "the CSR has trailing data after the DER request".into(),
            ));
        }
        Err(e) => {
            return Err(CsrError(format!(
                "the CSR is not a DER PKCS#10 request: {e}"
            )));
        }
    };
    let info = &csr.certification_request_info;
    // The key first: a weak or unsupported key is a clearer answer than a
    // signature that cannot be checked.
    let public_key = PublicJwk::from_spki_der(info.subject_pki.raw)
        .map_err(|e| CsrError(format!("the CSR public key is not accepted: {e}")))?;
    let sig_alg = &csr.signature_algorithm.algorithm;
    if *sig_alg == OID_PKCS1_SHA1WITHRSA || *sig_alg == OID_SHA1_WITH_RSA {
        return Err(CsrError(
            "the CSR is signed with SHA-1; sign it with SHA-256 or better".into(),
        ));
    }
    csr.verify_signature().map_err(|e| {
        CsrError(format!(
            "the CSR signature does not verify with its own key ({e})"
        ))
    })?;

    let mut common_names = info.subject.iter_common_name();
    let common_name = match common_names.next() {
        None => None,
        Some(cn) => {
            let cn = cn
                .as_str()
                .map_err(|_| CsrError("the CSR common name is not a readable string".into()))?;
            Some(cn.to_ascii_lowercase())
        }
    };
    if common_names.next().is_some() {
        return Err(CsrError(
            "the CSR subject has more than one common name".into(),
        ));
    }

    let mut dns_names = Vec::new();
    let mut ips = Vec::new();
    for attr in info.iter_attributes() {
        let ParsedCriAttribute::ExtensionRequest(req) = attr.parsed_attribute() else {
            continue;
        };
        for ext in req
            .extensions
            .iter()
            .filter(|e| e.oid == OID_X509_EXT_SUBJECT_ALT_NAME)
        {
            let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() else {
                return Err(CsrError(
                    "the CSR subjectAltName extension cannot be parsed".into(),
                ));
            };
            for name in &san.general_names {
                match name {
                    GeneralName::DNSName(dns) if !dns.is_empty() => {
                        dns_names.push(dns.to_ascii_lowercase());
                    }
                    GeneralName::IPAddress(bytes) => ips.push(ip_from_san(bytes)?),
                    other => {
                        return Err(CsrError(format!(
                            "the CSR subjectAltName contains {other}; only DNS names and IP \
                             addresses can be requested"
                        )));
                    }
                }
            }
        }
    }
    Ok(ParsedCsr {
        dns_names,
        ips,
        common_name,
        public_key,
    })
}

/// Checks the CSR names exactly the order's identifiers and is not the account key.
///
/// The CSR names are its SAN DNS names and IP addresses plus the common
/// name; DNS names compare case-insensitively, wildcards literally.
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-7.4>
pub fn check_against_order(
    csr: &ParsedCsr,
    identifiers: &[Identifier],
    account_key: &PublicJwk,
) -> Result<(), CsrError> {
    let wanted: BTreeSet<Name> = identifiers.iter().map(Name::from).collect();
    let mut requested: BTreeSet<Name> = csr.dns_names.iter().map(|d| Name::dns(d)).collect();
    requested.extend(csr.ips.iter().copied().map(Name::Ip));
    if let Some(cn) = &csr.common_name {
        let cn = cn.parse().map_or_else(|_| Name::dns(cn), Name::Ip);
        if !wanted.contains(&cn) {
            return Err(CsrError(format!(
                "the CSR common name {cn} is not one of the order's identifiers"
            )));
        }
        requested.insert(cn);
    }
    if requested != wanted {
        let list = |names: Vec<&Name>| {
            if names.is_empty() {
                "none".to_owned()
            } else {
                names
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        return Err(CsrError(format!(
            "the CSR names must be exactly the order's identifiers; missing from the CSR: {}; \
             not in the order: {}",
            list(wanted.difference(&requested).collect()),
            list(requested.difference(&wanted).collect()),
        )));
    }
    if csr.public_key == *account_key {
        return Err(CsrError(
            "the CSR must not use the account key; generate a separate key for the certificate"
                .into(),
        ));
    }
    Ok(())
}

/// A name as compared between CSR and order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Name {
    Dns(String),
    Ip(IpAddr),
}

impl Name {
    fn dns(name: &str) -> Self {
        Self::Dns(name.to_ascii_lowercase())
    }
}

impl From<&Identifier> for Name {
    fn from(id: &Identifier) -> Self {
        match id {
            Identifier::Dns(name) => Self::dns(name),
            Identifier::Ip(ip) => Self::Ip(*ip),
        }
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns(name) => write!(f, "dns:{name}"),
            Self::Ip(ip) => write!(f, "ip:{ip}"),
        }
    }
}

fn ip_from_san(bytes: &[u8]) -> Result<IpAddr, CsrError> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        Ok(IpAddr::V4(Ipv4Addr::from(v4)))
    } else if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        Ok(IpAddr::V6(Ipv6Addr::from(v6)))
    } else {
        Err(CsrError(format!(
            "the CSR subjectAltName has an IP address of {} bytes; it must be 4 or 16",
            bytes.len()
        )))
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use rcgen::{
        CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256,
        PKCS_ECDSA_P384_SHA384, PKCS_ED25519, SanType,
    };

    use super::*;
    use crate::acme::jws::tests::{RSA_2048_PKCS8_PEM, TestKey};

    /// `openssl req` with a 1024-bit RSA key, SAN weak.example.
    const RSA_1024_CSR: &str = "MIIBgDCB6gIBADAXMRUwEwYDVQQDDAx3ZWFrLmV4YW1wbGUwgZ8wDQYJKoZIhvcNAQEBBQADgY0AMIGJAoGBAMKEC1rckfQXp6x7VJ4vuELFqcCoYkKFs7FrIW+aZwnjn8p23e8l7Ph6zcvH62VD8qPB20QctoCt18G+xvXf/LuUz+SR1LynAOMqdz5Y4VQNrXFOKzPWAadZkb5ledAWpez9cfaHmK3wB/uS7ny0BgWxlwyAf9td1vOZwmoRFg3LAgMBAAGgKjAoBgkqhkiG9w0BCQ4xGzAZMBcGA1UdEQQQMA6CDHdlYWsuZXhhbXBsZTANBgkqhkiG9w0BAQsFAAOBgQB02NtkSmwDk6tNed5y7ftR6e1x5RqZCgkXWSrhFndUSwgZYZMuQQyaz5tsnJK5RHrDqHM95VTKgAosRylkNjFWpdxSKG5O1UL0QMcIxZ8D7RlG8nHbYate4EeLKdpnRnYaHhBNgKPbi0KZN7pzUoBp2FTbnr16DsqyUEwgRBi7hQ==";
    /// `openssl req` with a P-521 key, SAN p521.example.
    const P521_CSR: &str = "MIIBhDCB5gIBADAXMRUwEwYDVQQDDAxwNTIxLmV4YW1wbGUwgZswEAYHKoZIzj0CAQYFK4EEACMDgYYABAHv3rEtUG4E5hYGGD/IsQ9Buirubdlivv5fiOwSNDK0VFJHLYi1/nn4y2lTrl28M9ggo1D7uuSU0lURpMbyupXZ8AHNIQuyhVe54Lp89t7kzvZQxmyM1bkHK2o9uSzMQxaVnRGKJ4spg4vm2kvvuuG0uQf6ieoBT22bDK/xG9c0syXQtaAqMCgGCSqGSIb3DQEJDjEbMBkwFwYDVR0RBBAwDoIMcDUyMS5leGFtcGxlMAoGCCqGSM49BAMCA4GMADCBiAJCARS9QWoSaFSf5SiQ0xI3ZMKOJPu+wXxXLBBuzPyWzDYJ+j+IVeLMWTBm2lVBKqvK5SXiD9QtgXzazy3EGRES5uMSAkIA4E7V12C31JhRhmW8IIUHnQS3bBd2fbXqRhQgiwns8e7Me+MWPJ23EQAL25IDBrhWs3E/swU5Tv4E115hXS1v7lA=";

    fn csr_der(key: &KeyPair, sans: &[&str], cn: Option<&str>) -> Vec<u8> {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params.serialize_request(key).unwrap().der().to_vec()
    }

    fn dns(name: &str) -> Identifier {
        Identifier::Dns(name.into())
    }

    fn account() -> PublicJwk {
        TestKey::p256().jwk()
    }

    fn refused<T: fmt::Debug>(r: Result<T, CsrError>, needle: &str) {
        match r {
            Err(CsrError(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
            Ok(v) => panic!("expected CsrError {needle:?}, got {v:?}"),
        }
    }

    #[test]
    fn parses_ec_ed25519_and_rsa_csrs() {
        let rsa = KeyPair::from_pem(RSA_2048_PKCS8_PEM).unwrap();
        for key in [
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap(),
            KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap(),
            KeyPair::generate_for(&PKCS_ED25519).unwrap(),
            rsa,
        ] {
            let der = csr_der(&key, &["WWW.Example.com", "192.0.2.1", "2001:db8::1"], None);
            let csr = parse_csr(&der).unwrap();
            assert_eq!(csr.dns_names, ["www.example.com"]);
            assert_eq!(
                csr.ips,
                [
                    "192.0.2.1".parse::<IpAddr>().unwrap(),
                    "2001:db8::1".parse().unwrap()
                ]
            );
            assert_eq!(csr.common_name, None);
            let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
            assert_eq!(csr.public_key, PublicJwk::from_spki_der(&spki).unwrap());
            let ids = [
                dns("www.example.com"),
                Identifier::Ip("192.0.2.1".parse().unwrap()),
                Identifier::Ip("2001:db8::1".parse().unwrap()),
            ];
            check_against_order(&csr, &ids, &account()).unwrap();
        }
    }

    #[test]
    fn common_name_counts_as_a_name() {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = parse_csr(&csr_der(&key, &["a.example"], Some("B.example"))).unwrap();
        assert_eq!(csr.common_name.as_deref(), Some("b.example"));
        check_against_order(&csr, &[dns("a.example"), dns("b.example")], &account()).unwrap();
        refused(
            check_against_order(&csr, &[dns("a.example")], &account()),
            "common name dns:b.example is not one of the order's identifiers",
        );
        let csr = parse_csr(&csr_der(&key, &["a.example"], Some("a.example"))).unwrap();
        check_against_order(&csr, &[dns("A.EXAMPLE")], &account()).unwrap();
    }

    #[test]
    fn names_must_match_exactly() {
        let key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
        let csr = parse_csr(&csr_der(&key, &["a.example", "*.b.example"], None)).unwrap();
        check_against_order(&csr, &[dns("*.b.example"), dns("a.example")], &account()).unwrap();
        refused(
            check_against_order(&csr, &[dns("a.example")], &account()),
            "missing from the CSR: none; not in the order: dns:*.b.example",
        );
        refused(
            check_against_order(
                &csr,
                &[dns("a.example"), dns("b.example"), dns("c.example")],
                &account(),
            ),
            "missing from the CSR: dns:b.example, dns:c.example; not in the order: dns:*.b.example",
        );
        let ip_csr = parse_csr(&csr_der(&key, &["192.0.2.1"], None)).unwrap();
        refused(
            check_against_order(
                &ip_csr,
                &[Identifier::Ip("192.0.2.2".parse().unwrap())],
                &account(),
            ),
            "missing from the CSR: ip:192.0.2.2; not in the order: ip:192.0.2.1",
        );
    }

    #[test]
    fn refuses_the_account_key() {
        let account = TestKey::p256();
        let key = KeyPair::try_from(account.pkcs8()).unwrap();
        let csr = parse_csr(&csr_der(&key, &["a.example"], None)).unwrap();
        refused(
            check_against_order(&csr, &[dns("a.example")], &account.jwk()),
            "account key",
        );
    }

    #[test]
    fn refuses_bad_csrs() {
        refused(parse_csr(b"garbage"), "not a DER PKCS#10 request");
        refused(
            parse_csr(&STANDARD.decode(RSA_1024_CSR).unwrap()),
            "1024 bits",
        );
        refused(
            parse_csr(&STANDARD.decode(P521_CSR).unwrap()),
            "unsupported EC curve",
        );

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut der = csr_der(&key, &["a.example"], None);
        let at = der.windows(9).position(|w| w == b"a.example").unwrap();
        der[at] = b'b';
        refused(parse_csr(&der), "signature does not verify");
        let mut trailing = csr_der(&key, &["a.example"], None);
        trailing.push(0);
        refused(parse_csr(&trailing), "trailing data");

        let mut params = CertificateParams::new(vec!["a.example".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::Rfc822Name("me@a.example".try_into().unwrap()));
        let der = params.serialize_request(&key).unwrap().der().to_vec();
        refused(parse_csr(&der), "only DNS names and IP addresses");
    }
}
