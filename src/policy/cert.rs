//! Reading issued certificates: serial, validity and key of a DER
//! certificate, PEM chains from the upstream, and the ARI CertID
//! (RFC 9773 §4.1).
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-7.4.2>

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER;
use x509_parser::prelude::{FromDer, ParsedExtension};

use crate::acme::jws::PublicJwk;

/// What the RA needs to know of an issued certificate.
#[derive(Clone, Debug)]
pub struct CertInfo {
    /// The serial number as lower-case hex, two digits a byte, leading zero
    /// bytes removed ("0" for a zero serial).
    pub serial_hex: String,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// The subject public key.
    pub public_key: PublicJwk,
}

/// Why a certificate could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CertError(pub String);

/// Parses a DER certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo, CertError> {
    let cert = parse(der)?;
    let serial = cert.raw_serial();
    let significant = serial.iter().skip_while(|b| **b == 0);
    let mut serial_hex: String = significant.map(|b| format!("{b:02x}")).collect();
    if serial_hex.is_empty() {
        serial_hex.push('0');
    }
    let validity = cert.validity();
    let public_key = PublicJwk::from_spki_der(cert.public_key().raw)
        .map_err(|e| CertError(format!("the certificate public key is not usable: {e}")))?;
    Ok(CertInfo {
        serial_hex,
        not_before: validity.not_before.to_datetime(),
        not_after: validity.not_after.to_datetime(),
        public_key,
    })
}

/// The DER of every `CERTIFICATE` block in a PEM chain, in order; other
/// blocks are skipped. A chain without certificates is an error.
pub fn pem_chain_to_der(pem: &str) -> Result<Vec<Vec<u8>>, CertError> {
    let blocks =
        pem::parse_many(pem).map_err(|e| CertError(format!("the PEM chain is malformed: {e}")))?;
    let ders: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect();
    if ders.is_empty() {
        return Err(CertError("the PEM chain has no CERTIFICATE block".into()));
    }
    Ok(ders)
}

/// The ARI CertID: base64url(AuthorityKeyIdentifier keyIdentifier) "."
/// base64url(serial INTEGER content octets, as encoded).
///
/// <https://www.rfc-editor.org/rfc/rfc9773#section-4.1>
pub fn ari_cert_id(der: &[u8]) -> Result<String, CertError> {
    let cert = parse(der)?;
    let aki = cert
        .get_extension_unique(&OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER)
        .map_err(|e| CertError(format!("the certificate extensions are malformed: {e}")))?
        .ok_or_else(|| {
            CertError("the certificate has no Authority Key Identifier extension".into())
        })?;
    let key_id = match aki.parsed_extension() {
        ParsedExtension::AuthorityKeyIdentifier(aki) => aki.key_identifier.as_ref(),
        _ => None,
    }
    .ok_or_else(|| {
        CertError("the certificate Authority Key Identifier has no keyIdentifier".into())
    })?;
    Ok(format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(key_id.0),
        URL_SAFE_NO_PAD.encode(cert.raw_serial())
    ))
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, CertError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(CertError(
            "the certificate has trailing data after the DER".into(),
        )),
        Err(e) => Err(CertError(format!("the certificate is not DER X.509: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyIdMethod, KeyPair,
        PKCS_ECDSA_P256_SHA256, PKCS_ED25519, SerialNumber,
    };

    use super::*;

    struct Chain {
        ca_pem: String,
        leaf_der: Vec<u8>,
        leaf_pem: String,
        leaf_key: KeyPair,
        ca_ski: Vec<u8>,
    }

    fn chain(serial: &[u8]) -> Chain {
        chain_with_ca_key_id(serial, None)
    }

    fn chain_with_ca_key_id(serial: &[u8], ca_key_id: Option<Vec<u8>>) -> Chain {
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        if let Some(id) = ca_key_id {
            ca_params.key_identifier_method = KeyIdMethod::PreSpecified(id);
        }
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Test CA");
        let ca_ski = ca_params.key_identifier(&ca_key);
        let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf_key = KeyPair::generate_for(&PKCS_ED25519).unwrap();
        let mut params = CertificateParams::new(vec!["a.example".to_string()]).unwrap();
        params.serial_number = Some(SerialNumber::from_slice(serial));
        params.use_authority_key_identifier_extension = true;
        params.not_before = time::macros::datetime!(2026-01-02 03:04:05 UTC);
        params.not_after = time::macros::datetime!(2026-04-02 03:04:05 UTC);
        let leaf = params.signed_by(&leaf_key, &issuer).unwrap();
        Chain {
            ca_pem,
            leaf_der: leaf.der().to_vec(),
            leaf_pem: leaf.pem(),
            leaf_key,
            ca_ski,
        }
    }

    #[test]
    fn reads_serial_validity_and_key() {
        let c = chain(&[0x00, 0x8f, 0x01, 0xab]);
        let info = cert_info(&c.leaf_der).unwrap();
        assert_eq!(info.serial_hex, "8f01ab");
        assert_eq!(
            info.not_before,
            time::macros::datetime!(2026-01-02 03:04:05 UTC)
        );
        assert_eq!(
            info.not_after,
            time::macros::datetime!(2026-04-02 03:04:05 UTC)
        );
        let spki = rcgen::PublicKeyData::subject_public_key_info(&c.leaf_key);
        assert_eq!(info.public_key, PublicJwk::from_spki_der(&spki).unwrap());

        assert_eq!(
            cert_info(&chain(&[0x01, 0x02]).leaf_der)
                .unwrap()
                .serial_hex,
            "0102"
        );
    }

    #[test]
    fn ari_cert_id_keeps_the_serial_encoding() {
        // A serial with its high bit set is encoded with a leading 0x00.
        let c = chain(&[0x00, 0x8f, 0x01, 0xab]);
        let id = ari_cert_id(&c.leaf_der).unwrap();
        let expected = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(&c.ca_ski),
            URL_SAFE_NO_PAD.encode([0x00, 0x8f, 0x01, 0xab])
        );
        assert_eq!(id, expected);
        assert!(id.ends_with(".AI8Bqw"), "{id}");

        // The self-signed CA carries no AKI.
        let ca = pem_chain_to_der(&c.ca_pem).unwrap();
        match ari_cert_id(&ca[0]) {
            Err(CertError(m)) => assert!(m.contains("Authority Key Identifier"), "{m}"),
            Ok(id) => panic!("{id}"),
        }
    }

    #[test]
    fn ari_cert_id_rfc9773_example() {
        // RFC 9773 §4.1: keyIdentifier 69:88:5B:…:C8:D4, serial 00:87:65:43:21.
        let key_id = [
            0x69, 0x88, 0x5b, 0x6b, 0x87, 0x46, 0x40, 0x41, 0xe1, 0xb3, 0x7b, 0x84, 0x7b, 0xa0,
            0xae, 0x2c, 0xde, 0x01, 0xc8, 0xd4,
        ];
        let c = chain_with_ca_key_id(&[0x00, 0x87, 0x65, 0x43, 0x21], Some(key_id.to_vec()));
        assert_eq!(
            ari_cert_id(&c.leaf_der).unwrap(),
            "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
        );
        assert_eq!(cert_info(&c.leaf_der).unwrap().serial_hex, "87654321");
    }

    #[test]
    fn pem_chains() {
        let c = chain(&[0x42]);
        let pem = format!(
            "{}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n{}",
            c.leaf_pem, c.ca_pem
        );
        let ders = pem_chain_to_der(&pem).unwrap();
        assert_eq!(ders.len(), 2);
        assert_eq!(ders[0], c.leaf_der);
        assert!(cert_info(&ders[1]).is_ok());
        assert!(pem_chain_to_der("").is_err());
        assert!(
            pem_chain_to_der("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----").is_err()
        );
    }

    #[test]
    fn refuses_garbage() {
        assert!(cert_info(b"garbage").is_err());
        let mut der = chain(&[0x01]).leaf_der;
        der.push(0);
        assert!(cert_info(&der).is_err());
    }
}
