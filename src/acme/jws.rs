//! Flattened JWS (RFC 7515 §7.2.2) as RFC 8555 §6.2 uses it: parsing, the
//! public JWK (RFC 7517) with its RFC 7638 thumbprint, and signature checks
//! for RS256, ES256, ES384 and EdDSA (Ed25519).
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-6.2>

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::{FromDer, SubjectPublicKeyInfo};
use x509_parser::public_key::PublicKey;

/// The JWS algorithms the server accepts, for the `algorithms` member of a
/// `badSignatureAlgorithm` problem.
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-6.2>
pub const SUPPORTED_ALGS: [&str; 4] = ["RS256", "ES256", "ES384", "EdDSA"];

/// Members that only a private JWK has (RFC 7518 §6.2.2, §6.3.2; RFC 8037 §2).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Why a JWS or JWK was refused.
#[derive(Debug, thiserror::Error)]
pub enum JwsError {
    /// Not a well-formed flattened JWS / JWK.
    #[error("{0}")]
    Malformed(String),
    /// `alg` is not one the server accepts, or does not fit the key.
    #[error("{0}")]
    BadSignatureAlgorithm(String),
    /// The key is of an unsupported type or too weak.
    #[error("{0}")]
    BadPublicKey(String),
    /// The signature does not verify.
    #[error("JWS signature does not verify with the key")]
    BadSignature,
}

/// A public key as a JWK (RFC 7517), RSA, EC P-256/P-384 or Ed25519.
///
/// Two values are equal when their key material is equal, whatever optional
/// members (`kid`, `use`, …) or leading zeros the original JSON carried.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicJwk {
    key: KeyMaterial,
}

impl PublicJwk {
    /// Parses a JWK object, public members only.
    ///
    /// <https://www.rfc-editor.org/rfc/rfc7518#section-6>
    pub fn from_json(v: &Value) -> Result<Self, JwsError> {
        let obj = v
            .as_object()
            .ok_or_else(|| JwsError::Malformed("the JWK must be a JSON object".into()))?;
        if let Some(m) = PRIVATE_MEMBERS.iter().find(|m| obj.contains_key(**m)) {
            return Err(JwsError::BadPublicKey(format!(
                "the JWK contains private key material (member \"{m}\"); send the public key only"
            )));
        }
        let kty = str_member(obj, "kty", "JWK")?
            .ok_or_else(|| JwsError::Malformed("the JWK has no \"kty\" member".into()))?;
        let key = match kty {
            "RSA" => KeyMaterial::rsa(jwk_bytes(obj, "n")?, jwk_bytes(obj, "e")?)?,
            "EC" => {
                let curve = match jwk_crv(obj)? {
                    "P-256" => EcCurve::P256,
                    "P-384" => EcCurve::P384,
                    other => {
                        return Err(JwsError::BadPublicKey(format!(
                            "unsupported EC curve \"{other}\"; accepted: P-256, P-384"
                        )));
                    }
                };
                KeyMaterial::ec(curve, jwk_bytes(obj, "x")?, jwk_bytes(obj, "y")?)?
            }
            "OKP" => match jwk_crv(obj)? {
                "Ed25519" => KeyMaterial::ed25519(jwk_bytes(obj, "x")?)?,
                other => {
                    return Err(JwsError::BadPublicKey(format!(
                        "unsupported OKP curve \"{other}\"; accepted: Ed25519"
                    )));
                }
            },
            other => {
                return Err(JwsError::BadPublicKey(format!(
                    "unsupported key type \"{other}\"; accepted: RSA, EC, OKP"
                )));
            }
        };
        Ok(Self { key })
    }

    /// Converts a SubjectPublicKeyInfo (DER) to a JWK: RSA, EC P-256/P-384 or
    /// Ed25519, with the same size limits as [`PublicJwk::from_json`].
    ///
    /// <https://www.rfc-editor.org/rfc/rfc5280#section-4.1.2.7>
    pub fn from_spki_der(der: &[u8]) -> Result<Self, JwsError> {
        let Ok(([], spki)) = SubjectPublicKeyInfo::from_der(der) else {
            return Err(JwsError::Malformed(
                "the public key is not a DER SubjectPublicKeyInfo".into(),
            ));
        };
        let oid = &spki.algorithm.algorithm;
        let key = if *oid == OID_PKCS1_RSAENCRYPTION {
            match spki.parsed() {
                Ok(PublicKey::RSA(rsa)) => {
                    KeyMaterial::rsa(rsa.modulus.to_vec(), rsa.exponent.to_vec())?
                }
                _ => {
                    return Err(JwsError::Malformed(
                        "the RSA public key is malformed".into(),
                    ));
                }
            }
        } else if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve_oid = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .ok_or_else(|| JwsError::Malformed("the EC public key names no curve".into()))?;
            let curve = if curve_oid == OID_EC_P256 {
                EcCurve::P256
            } else if curve_oid == OID_NIST_EC_P384 {
                EcCurve::P384
            } else {
                return Err(JwsError::BadPublicKey(format!(
                    "unsupported EC curve {curve_oid}; accepted: P-256, P-384"
                )));
            };
            let point: &[u8] = &spki.subject_public_key.data;
            let len = curve.coordinate_len();
            match point.split_first() {
                Some((4, xy)) if xy.len() == 2 * len => {
                    let (x, y) = xy.split_at(len);
                    KeyMaterial::ec(curve, x.to_vec(), y.to_vec())?
                }
                _ => {
                    return Err(JwsError::BadPublicKey(format!(
                        "the {} public key must be an uncompressed point",
                        curve.name()
                    )));
                }
            }
        } else if *oid == OID_SIG_ED25519 {
            KeyMaterial::ed25519(spki.subject_public_key.data.to_vec())?
        } else {
            return Err(JwsError::BadPublicKey(format!(
                "unsupported public key algorithm {oid}; accepted: RSA, EC P-256, EC P-384, Ed25519"
            )));
        };
        Ok(Self { key })
    }

    /// The JWK, public members only.
    pub fn to_json(&self) -> Value {
        match &self.key {
            KeyMaterial::Rsa { n, e } => {
                serde_json::json!({ "kty": "RSA", "n": b64(n), "e": b64(e) })
            }
            KeyMaterial::Ec { curve, x, y } => serde_json::json!({
                "kty": "EC", "crv": curve.name(), "x": b64(x), "y": b64(y)
            }),
            KeyMaterial::Ed25519 { x } => {
                serde_json::json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(x) })
            }
        }
    }

    /// RFC 7638 thumbprint, SHA-256, base64url.
    ///
    /// <https://www.rfc-editor.org/rfc/rfc7638#section-3>
    pub fn thumbprint(&self) -> String {
        // Required members in lexicographic order, no whitespace; base64url
        // values need no JSON escaping.
        let canonical = match &self.key {
            KeyMaterial::Rsa { n, e } => {
                format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, b64(e), b64(n))
            }
            KeyMaterial::Ec { curve, x, y } => format!(
                r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
                curve.name(),
                b64(x),
                b64(y)
            ),
            KeyMaterial::Ed25519 { x } => {
                format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, b64(x))
            }
        };
        b64(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()).as_ref())
    }

    /// Verifies `signature` over `signing_input` with `alg`, which must be one
    /// of [`SUPPORTED_ALGS`] and fit the key.
    ///
    /// <https://www.rfc-editor.org/rfc/rfc7518#section-3.1>
    pub fn verify(
        &self,
        alg: &str,
        signing_input: &[u8],
        signature: &[u8],
    ) -> Result<(), JwsError> {
        let result = match (alg, &self.key) {
            ("RS256", KeyMaterial::Rsa { n, e }) => RsaPublicKeyComponents { n, e }.verify(
                &signature::RSA_PKCS1_2048_8192_SHA256,
                signing_input,
                signature,
            ),
            (
                "ES256",
                KeyMaterial::Ec {
                    curve: EcCurve::P256,
                    x,
                    y,
                },
            ) => UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, ec_point(x, y))
                .verify(signing_input, signature),
            (
                "ES384",
                KeyMaterial::Ec {
                    curve: EcCurve::P384,
                    x,
                    y,
                },
            ) => UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, ec_point(x, y))
                .verify(signing_input, signature),
            ("EdDSA", KeyMaterial::Ed25519 { x }) => {
                UnparsedPublicKey::new(&signature::ED25519, x).verify(signing_input, signature)
            }
            _ => {
                check_alg(alg)?;
                return Err(JwsError::BadSignatureAlgorithm(format!(
                    "alg \"{alg}\" does not fit the {} key; use \"{}\"",
                    self.key.describe(),
                    self.key.fitting_alg()
                )));
            }
        };
        result.map_err(|_| JwsError::BadSignature)
    }
}

/// Serialized as its JWK object, public members only ([`PublicJwk::to_json`]).
impl serde::Serialize for PublicJwk {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

/// Read from a JWK object with the checks of [`PublicJwk::from_json`].
impl<'de> serde::Deserialize<'de> for PublicJwk {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Self::from_json(&v).map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for PublicJwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicJwk")
            .field("key", &self.key.describe())
            .field("thumbprint", &self.thumbprint())
            .finish()
    }
}

/// The protected header of an ACME JWS.
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-6.2>
#[derive(Clone, Debug)]
pub struct ProtectedHeader {
    /// One of [`SUPPORTED_ALGS`].
    pub alg: String,
    /// `nonce`; the caller checks presence.
    pub nonce: Option<String>,
    /// `url`; the caller checks presence and value.
    pub url: Option<String>,
    /// `jwk`, as sent; parse it with [`PublicJwk::from_json`].
    pub jwk: Option<Value>,
    /// `kid`, the account URL. Never present together with `jwk`.
    pub kid: Option<String>,
}

/// A parsed flattened JWS whose signature is not yet checked.
///
/// <https://www.rfc-editor.org/rfc/rfc7515#section-7.2.2>
#[derive(Clone, Debug)]
pub struct FlattenedJws {
    /// The decoded protected header.
    pub header: ProtectedHeader,
    /// The decoded payload; empty for POST-as-GET.
    pub payload: Vec<u8>,
    protected_b64: String,
    payload_b64: String,
    signature: Vec<u8>,
}

impl FlattenedJws {
    /// Parses a request body: a flattened JWS JSON object.
    pub fn parse(body: &[u8]) -> Result<Self, JwsError> {
        let v: Value = serde_json::from_slice(body).map_err(|e| {
            let compact = body.iter().filter(|b| **b == b'.').count() == 2
                && body.iter().all(|b| b.is_ascii_graphic());
            if compact {
                JwsError::Malformed(
                    "the JWS compact serialization is not accepted; send the flattened JSON \
                     serialization (RFC 8555 §6.2)"
                        .into(),
                )
            } else {
                JwsError::Malformed(format!("the request body is not JSON: {e}"))
            }
        })?;
        Self::parse_value(&v)
    }

    /// Parses an inner JWS given as a JSON value (e.g. the keyChange payload).
    pub fn parse_value(v: &Value) -> Result<Self, JwsError> {
        let raw = RawJws::from_value(v)?;
        let alg = str_member(&raw.header, "alg", "protected header")?
            .ok_or_else(|| JwsError::Malformed("the protected header has no \"alg\"".into()))?;
        check_alg(alg)?;
        let jwk = match raw.header.get("jwk") {
            None => None,
            Some(j @ Value::Object(_)) => Some(j.clone()),
            Some(_) => {
                return Err(JwsError::Malformed(
                    "the protected header \"jwk\" must be a JSON object".into(),
                ));
            }
        };
        let header = ProtectedHeader {
            alg: alg.to_owned(),
            nonce: str_member(&raw.header, "nonce", "protected header")?.map(str::to_owned),
            url: str_member(&raw.header, "url", "protected header")?.map(str::to_owned),
            jwk,
            kid: str_member(&raw.header, "kid", "protected header")?.map(str::to_owned),
        };
        if header.jwk.is_some() && header.kid.is_some() {
            return Err(JwsError::Malformed(
                "the protected header must contain either \"jwk\" or \"kid\", not both".into(),
            ));
        }
        Ok(Self {
            header,
            payload: raw.payload,
            protected_b64: raw.protected_b64,
            payload_b64: raw.payload_b64,
            signature: raw.signature,
        })
    }

    /// Verifies the signature with `key` and the header's `alg`.
    pub fn verify(&self, key: &PublicJwk) -> Result<(), JwsError> {
        let input = signing_input(&self.protected_b64, &self.payload_b64);
        key.verify(&self.header.alg, &input, &self.signature)
    }

    /// POST-as-GET: empty payload.
    ///
    /// <https://www.rfc-editor.org/rfc/rfc8555#section-6.3>
    pub fn is_post_as_get(&self) -> bool {
        self.payload.is_empty()
    }

    /// Decodes the payload as JSON.
    pub fn payload_json<T: DeserializeOwned>(&self) -> Result<T, JwsError> {
        serde_json::from_slice(&self.payload).map_err(|e| JwsError::Malformed(e.to_string()))
    }
}

/// The key authorization `token || '.' || thumbprint` (RFC 8555 §8.1).
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-8.1>
pub fn key_authorization(token: &str, jwk: &PublicJwk) -> String {
    format!("{token}.{}", jwk.thumbprint())
}

/// The three members of a flattened JWS, decoded, with the protected header
/// as an untyped object; shared with the EAB check, whose `alg` is a MAC.
#[derive(Clone, Debug)]
pub(crate) struct RawJws {
    pub(crate) protected_b64: String,
    pub(crate) header: Map<String, Value>,
    pub(crate) payload_b64: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) signature: Vec<u8>,
}

impl RawJws {
    /// Splits and decodes a flattened JWS object, refusing the forms that
    /// RFC 8555 §6.2 forbids.
    pub(crate) fn from_value(v: &Value) -> Result<Self, JwsError> {
        let obj = v.as_object().ok_or_else(|| {
            JwsError::Malformed("a JWS must be a flattened JSON object (RFC 8555 §6.2)".into())
        })?;
        if obj.contains_key("signatures") {
            return Err(JwsError::Malformed(
                "the JWS general serialization (\"signatures\") is not accepted; send a \
                 flattened JWS with one signature"
                    .into(),
            ));
        }
        if obj.contains_key("header") {
            return Err(JwsError::Malformed(
                "the JWS must not have an unprotected \"header\"; put every header parameter \
                 in \"protected\""
                    .into(),
            ));
        }
        if let Some(k) = obj
            .keys()
            .find(|k| !matches!(k.as_str(), "protected" | "payload" | "signature"))
        {
            return Err(JwsError::Malformed(format!(
                "the JWS has an unexpected member \"{k}\"; only \"protected\", \"payload\" and \
                 \"signature\" are allowed"
            )));
        }
        let member = |name: &str| -> Result<String, JwsError> {
            let s = str_member(obj, name, "JWS")?
                .ok_or_else(|| JwsError::Malformed(format!("the JWS has no \"{name}\" member")))?;
            Ok(s.to_owned())
        };
        let protected_b64 = member("protected")?;
        let payload_b64 = member("payload")?;
        let signature_b64 = member("signature")?;
        let protected = decode_b64(&protected_b64, "JWS protected")?;
        let Ok(Value::Object(header)) = serde_json::from_slice(&protected) else {
            return Err(JwsError::Malformed(
                "the JWS protected header is not a JSON object".into(),
            ));
        };
        if header.contains_key("crit") || header.contains_key("b64") {
            return Err(JwsError::Malformed(
                "the protected header must not use \"crit\" or \"b64\" (RFC 8555 §6.2)".into(),
            ));
        }
        Ok(Self {
            payload: decode_b64(&payload_b64, "JWS payload")?,
            signature: decode_b64(&signature_b64, "JWS signature")?,
            protected_b64,
            header,
            payload_b64,
        })
    }

    /// `b64(protected) || '.' || b64(payload)`.
    pub(crate) fn signing_input(&self) -> Vec<u8> {
        signing_input(&self.protected_b64, &self.payload_b64)
    }
}

/// Decoded key material, big-endian integers without leading zeros.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum KeyMaterial {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    Ec {
        curve: EcCurve,
        x: Vec<u8>,
        y: Vec<u8>,
    },
    Ed25519 {
        x: Vec<u8>,
    },
}

impl KeyMaterial {
    fn rsa(n: Vec<u8>, e: Vec<u8>) -> Result<Self, JwsError> {
        let n = strip_leading_zeros(n);
        let e = strip_leading_zeros(e);
        let bits = match n.first() {
            Some(first) => n.len() * 8 - first.leading_zeros() as usize,
            None => 0,
        };
        if !(2048..=8192).contains(&bits) {
            return Err(JwsError::BadPublicKey(format!(
                "the RSA key is {bits} bits; RSA keys must be 2048 to 8192 bits"
            )));
        }
        // ring accepts odd exponents from 3 to 2^33 - 1.
        let exponent = match e.len() {
            1..=8 => e.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
            _ => 0,
        };
        if !(3..1 << 33).contains(&exponent) || exponent % 2 == 0 {
            return Err(JwsError::BadPublicKey(
                "the RSA public exponent must be odd and between 3 and 2^33 - 1".into(),
            ));
        }
        Ok(Self::Rsa { n, e })
    }

    fn ec(curve: EcCurve, x: Vec<u8>, y: Vec<u8>) -> Result<Self, JwsError> {
        let len = curve.coordinate_len();
        if x.len() != len || y.len() != len {
            return Err(JwsError::BadPublicKey(format!(
                "{} coordinates must be {len} bytes each",
                curve.name()
            )));
        }
        Ok(Self::Ec { curve, x, y })
    }

    fn ed25519(x: Vec<u8>) -> Result<Self, JwsError> {
        if x.len() != 32 {
            return Err(JwsError::BadPublicKey(
                "an Ed25519 key must be 32 bytes".into(),
            ));
        }
        Ok(Self::Ed25519 { x })
    }

    fn describe(&self) -> String {
        match self {
            Self::Rsa { n, .. } => format!("RSA-{}", n.len() * 8),
            Self::Ec { curve, .. } => format!("EC {}", curve.name()),
            Self::Ed25519 { .. } => "Ed25519".into(),
        }
    }

    fn fitting_alg(&self) -> &'static str {
        match self {
            Self::Rsa { .. } => "RS256",
            Self::Ec {
                curve: EcCurve::P256,
                ..
            } => "ES256",
            Self::Ec {
                curve: EcCurve::P384,
                ..
            } => "ES384",
            Self::Ed25519 { .. } => "EdDSA",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum EcCurve {
    P256,
    P384,
}

impl EcCurve {
    fn name(self) -> &'static str {
        match self {
            Self::P256 => "P-256",
            Self::P384 => "P-384",
        }
    }

    fn coordinate_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
        }
    }
}

/// Refuses `none`, MACs and anything else outside [`SUPPORTED_ALGS`].
fn check_alg(alg: &str) -> Result<(), JwsError> {
    if SUPPORTED_ALGS.contains(&alg) {
        return Ok(());
    }
    let why = if alg == "none" {
        "unsigned requests (alg \"none\") are not accepted".to_owned()
    } else if alg.starts_with("HS") {
        format!("MAC algorithm \"{alg}\" is not accepted for requests")
    } else {
        format!("alg \"{alg}\" is not supported")
    };
    Err(JwsError::BadSignatureAlgorithm(format!(
        "{why}; accepted algorithms: {}",
        SUPPORTED_ALGS.join(", ")
    )))
}

/// An optional string member; a non-string value is malformed.
pub(crate) fn str_member<'a>(
    obj: &'a Map<String, Value>,
    name: &str,
    what: &str,
) -> Result<Option<&'a str>, JwsError> {
    match obj.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(JwsError::Malformed(format!(
            "the {what} member \"{name}\" must be a string"
        ))),
    }
}

fn jwk_crv(obj: &Map<String, Value>) -> Result<&str, JwsError> {
    str_member(obj, "crv", "JWK")?
        .ok_or_else(|| JwsError::Malformed("the JWK has no \"crv\" member".into()))
}

fn jwk_bytes(obj: &Map<String, Value>, name: &str) -> Result<Vec<u8>, JwsError> {
    let s = str_member(obj, name, "JWK")?
        .ok_or_else(|| JwsError::Malformed(format!("the JWK has no \"{name}\" member")))?;
    decode_b64(s, &format!("JWK \"{name}\""))
}

fn decode_b64(s: &str, what: &str) -> Result<Vec<u8>, JwsError> {
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| JwsError::Malformed(format!("the {what} value is not unpadded base64url")))
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn signing_input(protected_b64: &str, payload_b64: &str) -> Vec<u8> {
    format!("{protected_b64}.{payload_b64}").into_bytes()
}

fn strip_leading_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let zeros = v.iter().take_while(|b| **b == 0).count();
    v.drain(..zeros);
    v
}

fn ec_point(x: &[u8], y: &[u8]) -> Vec<u8> {
    let mut point = Vec::with_capacity(1 + x.len() + y.len());
    point.push(4);
    point.extend_from_slice(x);
    point.extend_from_slice(y);
    point
}

#[cfg(test)]
pub(crate) mod tests;
