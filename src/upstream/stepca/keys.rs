//! The keys that sign step-ca one-time tokens: JWK files (RFC 7517), JWE
//! files encrypted with a password (PBES2, RFC 7518 §4.8, with AES Key Wrap,
//! RFC 3394, and AES-GCM, RFC 7518 §5.3) as step-ca keeps JWK provisioner
//! keys, and PEM keys (PKCS#8, SEC1); compact JWS signing (RFC 7515 §7.1)
//! and JWK thumbprints (RFC 7638).

use std::path::Path;

use aes_kw::{KekAes128, KekAes192, KekAes256};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use ring::{aead, pbkdf2};
use serde_json::{Value, json};

use crate::acme::jws::PublicJwk;

/// Most PBKDF2 iterations accepted from a JWE header (step uses 100,000 to
/// 600,000); bounds the work a hostile CA can ask for.
const MAX_P2C: u32 = 10_000_000;

/// Errors reading or using a token key.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "it is encrypted: give certificateIssuer.password, passwordFile or --issuer-password-file"
    )]
    NeedPassword,
    #[error("wrong password?")]
    WrongPassword,
    #[error(
        "{0} is an encrypted PEM key, which acmeproxy does not read; store it unencrypted (`openssl pkey -in KEY -out PLAIN`) with tight permissions, or use a JWK/JWE file"
    )]
    EncryptedPem(String),
    #[error("malformed key: {0}")]
    Malformed(String),
    #[error("unsupported key: {0}")]
    Unsupported(String),
    #[error("signing failed")]
    Sign,
}

/// A private key that signs tokens, with its JWS `alg`.
pub(crate) struct TokenKey {
    signer: Signer,
}

enum Signer {
    Ecdsa(EcdsaKeyPair, &'static str),
    Ed25519(Ed25519KeyPair),
    Rsa(RsaKeyPair),
}

impl TokenKey {
    /// Reads a key file: a JWK (JSON), a JWE holding a JWK (compact or JSON
    /// serialization, decrypted with `password`), or a PEM key. Returns the
    /// key and the JWK's `kid`, if it has one.
    pub(crate) fn from_file(
        path: &Path,
        password: Option<&[u8]>,
    ) -> Result<(Self, Option<String>), KeyError> {
        let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let text = String::from_utf8_lossy(&bytes);
        let text = text.trim();
        if text.starts_with("-----BEGIN") {
            return Ok((Self::from_pem(text, &path.display().to_string())?, None));
        }
        let jwk = if is_jwe(text) {
            decrypt_jwe(text, password.ok_or(KeyError::NeedPassword)?)?
        } else {
            bytes.clone()
        };
        Self::from_jwk(&jwk)
    }

    /// A private JWK (EC P-256/P-384 or Ed25519) and its `kid`.
    pub(crate) fn from_jwk(json: &[u8]) -> Result<(Self, Option<String>), KeyError> {
        let jwk: Value = serde_json::from_slice(json)
            .map_err(|e| KeyError::Malformed(format!("not a JWK: {e}")))?;
        let field = |name: &str| -> Result<Vec<u8>, KeyError> {
            let v = jwk[name]
                .as_str()
                .ok_or_else(|| KeyError::Malformed(format!("the JWK has no {name:?}")))?;
            B64URL
                .decode(v)
                .map_err(|_| KeyError::Malformed(format!("the JWK's {name:?} is not base64url")))
        };
        let kid = jwk["kid"].as_str().map(str::to_owned);
        let signer = match (jwk["kty"].as_str(), jwk["crv"].as_str()) {
            (Some("EC"), Some(crv)) => {
                let (alg, name) = ecdsa_alg(crv)?;
                let public = [vec![4], field("x")?, field("y")?].concat();
                let key = EcdsaKeyPair::from_private_key_and_public_key(
                    alg,
                    &field("d")?,
                    &public,
                    &SystemRandom::new(),
                )
                .map_err(|e| KeyError::Malformed(format!("EC JWK: {e}")))?;
                Signer::Ecdsa(key, name)
            }
            (Some("OKP"), Some("Ed25519")) => Signer::Ed25519(
                Ed25519KeyPair::from_seed_and_public_key(&field("d")?, &field("x")?)
                    .map_err(|e| KeyError::Malformed(format!("Ed25519 JWK: {e}")))?,
            ),
            (kty, crv) => {
                return Err(KeyError::Unsupported(format!(
                    "JWK kty {kty:?} crv {crv:?} (use EC P-256, P-384 or Ed25519)"
                )));
            }
        };
        Ok((Self { signer }, kid))
    }

    /// A PEM private key: PKCS#8 (EC, Ed25519, RSA) or SEC1 (`EC PRIVATE
    /// KEY`), unencrypted. `name` names the file in errors.
    pub(crate) fn from_pem(text: &str, name: &str) -> Result<Self, KeyError> {
        let blocks = pem::parse_many(text)
            .map_err(|e| KeyError::Malformed(format!("{name}: not PEM: {e}")))?;
        let Some(block) = blocks.iter().find(|b| b.tag().ends_with("PRIVATE KEY")) else {
            return Err(KeyError::Malformed(format!("{name} holds no private key")));
        };
        if block.tag() == "ENCRYPTED PRIVATE KEY"
            || block
                .headers()
                .get("Proc-Type")
                .is_some_and(|v| v.contains("ENCRYPTED"))
        {
            return Err(KeyError::EncryptedPem(name.to_owned()));
        }
        let der = block.contents();
        let rng = SystemRandom::new();
        let signer = match block.tag() {
            "PRIVATE KEY" => {
                if let Ok(k) =
                    EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
                {
                    Signer::Ecdsa(k, "ES256")
                } else if let Ok(k) =
                    EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, der, &rng)
                {
                    Signer::Ecdsa(k, "ES384")
                } else if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
                    Signer::Ed25519(k)
                } else if let Ok(k) = RsaKeyPair::from_pkcs8(der) {
                    Signer::Rsa(k)
                } else {
                    return Err(KeyError::Unsupported(format!(
                        "{name}: not an EC P-256/P-384, Ed25519 or RSA PKCS#8 key"
                    )));
                }
            }
            "EC PRIVATE KEY" => {
                let p256 = sec1_to_pkcs8(der, &OID_P256);
                let p384 = sec1_to_pkcs8(der, &OID_P384);
                if let Ok(k) = EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    &p256,
                    &rng,
                ) {
                    Signer::Ecdsa(k, "ES256")
                } else if let Ok(k) = EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                    &p384,
                    &rng,
                ) {
                    Signer::Ecdsa(k, "ES384")
                } else {
                    return Err(KeyError::Unsupported(format!(
                        "{name}: not a P-256 or P-384 SEC1 key (with its public key)"
                    )));
                }
            }
            other => {
                return Err(KeyError::Unsupported(format!(
                    "{name}: PEM {other:?} (use PKCS#8 \"PRIVATE KEY\" or \"EC PRIVATE KEY\")"
                )));
            }
        };
        Ok(Self { signer })
    }

    /// The JWS `alg` this key signs with.
    pub(crate) fn alg(&self) -> &'static str {
        match &self.signer {
            Signer::Ecdsa(_, alg) => alg,
            Signer::Ed25519(_) => "EdDSA",
            Signer::Rsa(_) => "RS256",
        }
    }

    /// The public key as a certificate's SubjectPublicKeyInfo holds it (EC
    /// point, Ed25519 bytes, RSAPublicKey DER).
    pub(crate) fn public_key_bytes(&self) -> &[u8] {
        match &self.signer {
            Signer::Ecdsa(k, _) => k.public_key().as_ref(),
            Signer::Ed25519(k) => k.public_key().as_ref(),
            Signer::Rsa(k) => k.public_key().as_ref(),
        }
    }

    /// The RFC 7638 thumbprint of the public key, base64url (what step uses
    /// as `kid`): the ACME layer's, over the public JWK.
    pub(crate) fn thumbprint(&self) -> Result<String, KeyError> {
        let jwk = match &self.signer {
            Signer::Ecdsa(k, alg) => {
                let point = k.public_key().as_ref();
                let n = (point.len().saturating_sub(1)) / 2;
                let (x, y) = point.get(1..).unwrap_or_default().split_at(n);
                let crv = if *alg == "ES256" { "P-256" } else { "P-384" };
                json!({"crv": crv, "kty": "EC", "x": B64URL.encode(x), "y": B64URL.encode(y)})
            }
            Signer::Ed25519(k) => {
                json!({"crv": "Ed25519", "kty": "OKP", "x": B64URL.encode(k.public_key().as_ref())})
            }
            Signer::Rsa(k) => {
                let (n, e) = rsa_public_components(k.public_key().as_ref())?;
                json!({"e": B64URL.encode(e), "kty": "RSA", "n": B64URL.encode(n)})
            }
        };
        let public = PublicJwk::from_json(&jwk)
            .map_err(|e| KeyError::Malformed(format!("the public key as a JWK: {e}")))?;
        Ok(public.thumbprint())
    }

    /// A compact JWS (RFC 7515 §7.1) of `claims` with protected `header`.
    pub(crate) fn sign_jws(&self, header: &Value, claims: &Value) -> Result<String, KeyError> {
        let input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let rng = SystemRandom::new();
        let sig = match &self.signer {
            Signer::Ecdsa(k, _) => k
                .sign(&rng, input.as_bytes())
                .map_err(|_| KeyError::Sign)?
                .as_ref()
                .to_vec(),
            Signer::Ed25519(k) => k.sign(input.as_bytes()).as_ref().to_vec(),
            Signer::Rsa(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    input.as_bytes(),
                    &mut sig,
                )
                .map_err(|_| KeyError::Sign)?;
                sig
            }
        };
        Ok(format!("{input}.{}", B64URL.encode(sig)))
    }
}

fn ecdsa_alg(
    crv: &str,
) -> Result<(&'static signature::EcdsaSigningAlgorithm, &'static str), KeyError> {
    match crv {
        "P-256" => Ok((&signature::ECDSA_P256_SHA256_FIXED_SIGNING, "ES256")),
        "P-384" => Ok((&signature::ECDSA_P384_SHA384_FIXED_SIGNING, "ES384")),
        other => Err(KeyError::Unsupported(format!("EC curve {other}"))),
    }
}

/// Whether `text` looks like a JWE: five compact parts, or a JSON object
/// with a `ciphertext`.
pub(crate) fn is_jwe(text: &str) -> bool {
    let text = text.trim();
    if text.starts_with('{') {
        return serde_json::from_str::<Value>(text).is_ok_and(|v| v.get("ciphertext").is_some());
    }
    text.split('.').count() == 5
}

/// Decrypts a password-protected JWE (compact or flattened JSON
/// serialization): PBES2-HS256+A128KW (also HS384+A192KW, HS512+A256KW)
/// wrapping an A128GCM or A256GCM content key, as step's `EncryptJWK` writes.
pub(crate) fn decrypt_jwe(text: &str, password: &[u8]) -> Result<Vec<u8>, KeyError> {
    let text = text.trim();
    let (protected_b64, encrypted_key, iv, ciphertext, tag, aad) = if text.starts_with('{') {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| KeyError::Malformed(format!("JWE JSON: {e}")))?;
        let part = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        let protected = part("protected");
        let aad = match v["aad"].as_str() {
            Some(a) => format!("{protected}.{a}"),
            None => protected.clone(),
        };
        (
            protected,
            part("encrypted_key"),
            part("iv"),
            part("ciphertext"),
            part("tag"),
            aad,
        )
    } else {
        let parts: Vec<&str> = text.split('.').collect();
        let [p, k, iv, c, t] = parts.as_slice() else {
            return Err(KeyError::Malformed("a compact JWE has five parts".into()));
        };
        let s = |x: &str| x.to_owned();
        (s(p), s(k), s(iv), s(c), s(t), s(p))
    };
    let decode = |what: &str, v: &str| {
        B64URL
            .decode(v)
            .map_err(|_| KeyError::Malformed(format!("the JWE's {what} is not base64url")))
    };
    let header: Value = serde_json::from_slice(&decode("header", &protected_b64)?)
        .map_err(|e| KeyError::Malformed(format!("JWE header: {e}")))?;
    let alg = header["alg"].as_str().unwrap_or_default();
    let (prf, kek_len) = match alg {
        "PBES2-HS256+A128KW" => (pbkdf2::PBKDF2_HMAC_SHA256, 16),
        "PBES2-HS384+A192KW" => (pbkdf2::PBKDF2_HMAC_SHA384, 24),
        "PBES2-HS512+A256KW" => (pbkdf2::PBKDF2_HMAC_SHA512, 32),
        other => {
            return Err(KeyError::Unsupported(format!(
                "JWE key algorithm {other:?} (need PBES2)"
            )));
        }
    };
    let content_alg = match header["enc"].as_str().unwrap_or_default() {
        "A256GCM" => &aead::AES_256_GCM,
        "A128GCM" => &aead::AES_128_GCM,
        other => {
            return Err(KeyError::Unsupported(format!(
                "JWE content encryption {other:?} (need A128GCM or A256GCM)"
            )));
        }
    };
    let p2c = header["p2c"]
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| (1..=MAX_P2C).contains(n))
        .and_then(std::num::NonZeroU32::new)
        .ok_or_else(|| KeyError::Malformed("the JWE's p2c is missing or out of range".into()))?;
    let p2s = decode("p2s", header["p2s"].as_str().unwrap_or_default())?;
    // RFC 7518 §4.8.1.1: salt = UTF8(alg) || 0x00 || p2s.
    let salt = [alg.as_bytes(), &[0], &p2s].concat();
    let mut kek = vec![0; kek_len];
    pbkdf2::derive(prf, p2c, &salt, password, &mut kek);
    let wrapped = decode("encrypted_key", &encrypted_key)?;
    let unwrapped = match kek_len {
        16 => KekAes128::try_from(kek.as_slice()).map(|k| k.unwrap_vec(&wrapped)),
        24 => KekAes192::try_from(kek.as_slice()).map(|k| k.unwrap_vec(&wrapped)),
        _ => KekAes256::try_from(kek.as_slice()).map(|k| k.unwrap_vec(&wrapped)),
    };
    // The key wrap's integrity check fails when the password is wrong.
    let Ok(Ok(cek)) = unwrapped else {
        return Err(KeyError::WrongPassword);
    };
    let key = aead::UnboundKey::new(content_alg, &cek)
        .map_err(|_| KeyError::Malformed("the JWE's content key has the wrong length".into()))?;
    let nonce = aead::Nonce::try_assume_unique_for_key(&decode("iv", &iv)?)
        .map_err(|_| KeyError::Malformed("the JWE's iv is not 96 bits".into()))?;
    let mut in_out = [decode("ciphertext", &ciphertext)?, decode("tag", &tag)?].concat();
    let plain = aead::LessSafeKey::new(key)
        .open_in_place(nonce, aead::Aad::from(aad.as_bytes()), &mut in_out)
        .map_err(|_| KeyError::Malformed("the JWE does not decrypt (tampered?)".into()))?;
    Ok(plain.to_vec())
}

/// DER of the P-256 and P-384 curve OIDs (RFC 5480 §2.1.1.1).
const OID_P256: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: [u8; 7] = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
/// DER of id-ecPublicKey.
const OID_EC_PUBLIC_KEY: [u8; 9] = [0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];

/// Wraps a SEC1 `ECPrivateKey` in PKCS#8 (RFC 5208 §5) for `curve`.
fn sec1_to_pkcs8(sec1: &[u8], curve: &[u8]) -> Vec<u8> {
    let algorithm = der(0x30, &[&OID_EC_PUBLIC_KEY[..], curve].concat());
    let body = [&[0x02, 0x01, 0x00][..], &algorithm, &der(0x04, sec1)].concat();
    der(0x30, &body)
}

/// One DER TLV.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// `n` and `e` of an RSAPublicKey (RFC 8017 §A.1.1), without sign bytes.
fn rsa_public_components(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>), KeyError> {
    use x509_parser::der_parser::parse_der;
    let bad = || KeyError::Malformed("RSA public key".into());
    let (_, obj) = parse_der(der).map_err(|_| bad())?;
    let seq = obj.as_sequence().map_err(|_| bad())?;
    let int = |i: usize| -> Result<Vec<u8>, KeyError> {
        let bytes = seq.get(i).ok_or_else(bad)?.as_slice().map_err(|_| bad())?;
        Ok(bytes.iter().copied().skip_while(|b| *b == 0).collect())
    };
    Ok((int(0)?, int(1)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encrypts `plain` as step's `EncryptJWK` does, to test decryption
    /// against (step-ca's own encryption is tested in tests/upstreams/stepca.rs).
    fn encrypt(plain: &[u8], password: &[u8], p2s: &[u8], p2c: u32) -> String {
        let alg = "PBES2-HS256+A128KW";
        let header = json!({"alg": alg, "enc": "A256GCM", "p2c": p2c,
            "p2s": B64URL.encode(p2s), "cty": "jwk+json"});
        let protected = B64URL.encode(header.to_string());
        let salt = [alg.as_bytes(), &[0], p2s].concat();
        let mut kek = [0; 16];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            std::num::NonZeroU32::new(p2c).unwrap(),
            &salt,
            password,
            &mut kek,
        );
        let cek = [7u8; 32];
        let wrapped = KekAes128::from(kek).wrap_vec(&cek).unwrap();
        let iv = [9u8; 12];
        let key = aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_256_GCM, &cek).unwrap());
        let mut buf = plain.to_vec();
        let tag = key
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(iv),
                aead::Aad::from(protected.as_bytes()),
                &mut buf,
            )
            .unwrap();
        [
            protected,
            B64URL.encode(wrapped),
            B64URL.encode(iv),
            B64URL.encode(buf),
            B64URL.encode(tag.as_ref()),
        ]
        .join(".")
    }

    #[test]
    fn rfc3394_unwrap_matches_the_rfc_vector() {
        // RFC 3394 §4.1: 128-bit key data with a 128-bit KEK.
        let kek: [u8; 16] = hex("000102030405060708090A0B0C0D0E0F").try_into().unwrap();
        let wrapped = hex("1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5");
        let key = KekAes128::from(kek).unwrap_vec(&wrapped).unwrap();
        assert_eq!(key, hex("00112233445566778899AABBCCDDEEFF"));
    }

    #[test]
    fn jwe_round_trip_and_wrong_password() {
        let jwe = encrypt(b"{\"secret\":1}", b"correct horse", b"saltsaltsalt", 1000);
        assert!(is_jwe(&jwe));
        assert_eq!(
            decrypt_jwe(&jwe, b"correct horse").unwrap(),
            b"{\"secret\":1}"
        );
        assert!(matches!(
            decrypt_jwe(&jwe, b"battery staple"),
            Err(KeyError::WrongPassword)
        ));
        // The flattened JSON serialization of the same JWE.
        let p: Vec<&str> = jwe.split('.').collect();
        let flat = json!({"protected": p[0], "encrypted_key": p[1], "iv": p[2],
            "ciphertext": p[3], "tag": p[4]})
        .to_string();
        assert!(is_jwe(&flat));
        assert_eq!(
            decrypt_jwe(&flat, b"correct horse").unwrap(),
            b"{\"secret\":1}"
        );
    }

    #[test]
    fn an_absurd_iteration_count_is_refused() {
        let jwe = encrypt(b"x", b"pw", b"salt", 1);
        let mut parts: Vec<String> = jwe.split('.').map(str::to_owned).collect();
        let mut header: Value = serde_json::from_slice(&B64URL.decode(&parts[0]).unwrap()).unwrap();
        header["p2c"] = json!(u32::MAX);
        parts[0] = B64URL.encode(header.to_string());
        assert!(matches!(
            decrypt_jwe(&parts.join("."), b"pw"),
            Err(KeyError::Malformed(_))
        ));
    }

    #[test]
    fn pem_keys_sign_verifiable_tokens() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let tk = TokenKey::from_pem(&key.serialize_pem(), "test").unwrap();
        assert_eq!(tk.alg(), "ES256");
        let jws = tk
            .sign_jws(&json!({"alg": "ES256"}), &json!({"sub": "x"}))
            .unwrap();
        let (input, sig) = jws.rsplit_once('.').unwrap();
        signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            key.public_key_raw(),
        )
        .verify(input.as_bytes(), &B64URL.decode(sig).unwrap())
        .unwrap();

        // The same key as SEC1, as openssl and Go write it.
        let out = std::process::Command::new("openssl")
            .args(["ec", "-inform", "PEM"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn();
        if let Ok(mut child) = out {
            use std::io::Write;
            let pem = key.serialize_pem();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(pem.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            let sec1 = String::from_utf8(out.stdout).unwrap();
            assert!(sec1.contains("BEGIN EC PRIVATE KEY"), "{sec1}");
            let again = TokenKey::from_pem(&sec1, "sec1").unwrap();
            assert_eq!(again.thumbprint().unwrap(), tk.thumbprint().unwrap());
        }

        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(matches!(
            TokenKey::from_pem(encrypted, "enc.pem"),
            Err(KeyError::EncryptedPem(_))
        ));
    }

    #[test]
    fn thumbprint_matches_rfc7638_example_shape() {
        // RFC 7638 §3.1 computes over {"e","kty","n"}; for EC the members
        // are crv, kty, x, y. A JWK read back gives the same thumbprint.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let tk = TokenKey::from_pem(&key.serialize_pem(), "test").unwrap();
        let raw = key.public_key_raw();
        let d = {
            // The private scalar sits at the end of rcgen's PKCS#8 for P-256
            // only inside the SEC1 structure; take it from there.
            let der = key.serialized_der();
            let pos = der
                .windows(4)
                .position(|w| w == [0x02, 0x01, 0x01, 0x04])
                .unwrap();
            der[pos + 5..pos + 5 + 32].to_vec()
        };
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": "k1",
            "x": B64URL.encode(&raw[1..33]), "y": B64URL.encode(&raw[33..]),
            "d": B64URL.encode(d)});
        let (from_jwk, kid) = TokenKey::from_jwk(jwk.to_string().as_bytes()).unwrap();
        assert_eq!(kid.as_deref(), Some("k1"));
        assert_eq!(from_jwk.thumbprint().unwrap(), tk.thumbprint().unwrap());
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            B64URL.encode(&raw[1..33]),
            B64URL.encode(&raw[33..])
        );
        let expected = B64URL.encode(ring::digest::digest(
            &ring::digest::SHA256,
            canonical.as_bytes(),
        ));
        assert_eq!(tk.thumbprint().unwrap(), expected);
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
