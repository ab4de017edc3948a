//! A strict DER reading of X.509 certificates with rust-asn1, the parser
//! behind Python `cryptography` (and so certbot). It refuses what DER
//! forbids and lenient parsers let through: an encoded DEFAULT value
//! (`cA FALSE`, `critical FALSE`, `version v1`, X.690 11.5), unsorted SET OF,
//! non-minimal lengths and integers, trailing bytes.
//!
//! `check` reads the certificate's frame, its names, and the value of every
//! extension the project writes; an unknown extension must still be one
//! well-formed DER value.

#![allow(clippy::result_large_err)] // the derives return asn1::ParseError

use asn1::{BigInt, BitString, ObjectIdentifier, SequenceOf, SetOf, Tlv};

#[derive(asn1::Asn1Read)]
struct Certificate<'a> {
    tbs: TbsCertificate<'a>,
    _signature_algorithm: AlgorithmIdentifier<'a>,
    _signature: BitString<'a>,
}

#[derive(asn1::Asn1Read)]
struct TbsCertificate<'a> {
    #[explicit(0)]
    #[default(0u8)]
    _version: u8,
    _serial: BigInt<'a>,
    _signature: AlgorithmIdentifier<'a>,
    issuer: Name<'a>,
    _validity: Validity,
    subject: Name<'a>,
    _spki: SubjectPublicKeyInfo<'a>,
    #[implicit(1)]
    _issuer_unique_id: Option<BitString<'a>>,
    #[implicit(2)]
    _subject_unique_id: Option<BitString<'a>>,
    #[explicit(3)]
    extensions: Option<SequenceOf<'a, Extension<'a>>>,
}

#[derive(asn1::Asn1Read)]
struct AlgorithmIdentifier<'a> {
    _algorithm: ObjectIdentifier,
    _parameters: Option<Tlv<'a>>,
}

#[derive(asn1::Asn1Read)]
struct SubjectPublicKeyInfo<'a> {
    _algorithm: AlgorithmIdentifier<'a>,
    _key: BitString<'a>,
}

/// Read only to check its encoding; the value itself is not used.
#[allow(dead_code)]
#[derive(asn1::Asn1Read)]
enum Time {
    Utc(asn1::UtcTime),
    Generalized(asn1::X509GeneralizedTime),
}

#[derive(asn1::Asn1Read)]
struct Validity {
    _not_before: Time,
    _not_after: Time,
}

type Name<'a> = SequenceOf<'a, SetOf<'a, AttributeTypeAndValue<'a>>>;

#[derive(asn1::Asn1Read, PartialEq, Eq, Hash)]
struct AttributeTypeAndValue<'a> {
    _kind: ObjectIdentifier,
    _value: Tlv<'a>,
}

#[derive(asn1::Asn1Read)]
struct Extension<'a> {
    id: ObjectIdentifier,
    #[default(false)]
    critical: bool,
    value: &'a [u8],
}

#[derive(asn1::Asn1Read)]
struct BasicConstraints {
    #[default(false)]
    ca: bool,
    _path_len: Option<u64>,
}

#[derive(asn1::Asn1Read)]
struct AuthorityKeyIdentifier<'a> {
    #[implicit(0)]
    _key_id: Option<&'a [u8]>,
    #[implicit(1)]
    _issuer: Option<SequenceOf<'a, Tlv<'a>>>,
    #[implicit(2)]
    _serial: Option<BigInt<'a>>,
}

#[derive(asn1::Asn1Read)]
struct AccessDescription<'a> {
    _method: ObjectIdentifier,
    _location: Tlv<'a>,
}

/// What a strict reading found in one certificate.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reading {
    /// basicConstraints: `None` when absent, else (cA, critical).
    pub basic_constraints: Option<(bool, bool)>,
    pub self_signed_name: bool,
}

fn oid(s: &str) -> ObjectIdentifier {
    ObjectIdentifier::from_string(s).unwrap()
}

/// Reads `der` strictly; the error names what DER forbids and where.
pub fn check(der: &[u8]) -> Result<Reading, String> {
    let cert = asn1::parse_single::<Certificate<'_>>(der).map_err(|e| e.to_string())?;
    // SEQUENCE OF and SET OF are read (and SET OF order checked) as they
    // are parsed.
    let tbs = &cert.tbs;
    let mut reading = Reading {
        self_signed_name: tbs.issuer == tbs.subject,
        ..Reading::default()
    };
    let Some(exts) = &tbs.extensions else {
        return Ok(reading);
    };
    let err = |what: &str, e: asn1::ParseError| format!("{what}: {e}");
    for ext in exts.clone() {
        let v = ext.value;
        let id = &ext.id;
        if *id == oid("2.5.29.19") {
            let bc = asn1::parse_single::<BasicConstraints>(v)
                .map_err(|e| err("basicConstraints", e))?;
            reading.basic_constraints = Some((bc.ca, ext.critical));
        } else if *id == oid("2.5.29.15") {
            asn1::parse_single::<BitString<'_>>(v).map_err(|e| err("keyUsage", e))?;
        } else if *id == oid("2.5.29.37") {
            asn1::parse_single::<SequenceOf<'_, ObjectIdentifier>>(v)
                .map_err(|e| err("extKeyUsage", e))?;
        } else if *id == oid("2.5.29.17") {
            asn1::parse_single::<SequenceOf<'_, Tlv<'_>>>(v)
                .map_err(|e| err("subjectAltName", e))?;
        } else if *id == oid("2.5.29.14") {
            asn1::parse_single::<&[u8]>(v).map_err(|e| err("subjectKeyIdentifier", e))?;
        } else if *id == oid("2.5.29.35") {
            asn1::parse_single::<AuthorityKeyIdentifier<'_>>(v)
                .map_err(|e| err("authorityKeyIdentifier", e))?;
        } else if *id == oid("1.3.6.1.5.5.7.1.1") {
            asn1::parse_single::<SequenceOf<'_, AccessDescription<'_>>>(v)
                .map_err(|e| err("authorityInfoAccess", e))?;
        } else {
            asn1::parse_single::<Tlv<'_>>(v).map_err(|e| err(&format!("extension {id}"), e))?;
        }
    }
    Ok(reading)
}

/// Every certificate of a PEM text, checked strictly; panics naming the
/// certificate (`what` and its position) that is not DER.
pub fn check_pem(what: &str, pem: &str) -> Vec<Reading> {
    let blocks = pem::parse_many(pem).unwrap();
    assert!(!blocks.is_empty(), "{what}: no certificate");
    blocks
        .iter()
        .enumerate()
        .map(|(i, b)| {
            check(b.contents())
                .unwrap_or_else(|e| panic!("{what}, certificate {i}: not strict DER: {e}"))
        })
        .collect()
}
