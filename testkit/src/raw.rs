//! A raw ACME (RFC 8555) client for tests: flattened JWS (RFC 7515 §7.2.2)
//! signed with ring over any protected header, payload and signature, so a
//! test can send exactly the broken request a real client never would; plus
//! helpers to register accounts, order, answer challenges (RFC 8555 §8),
//! finalize and revoke, and the RFC 8555 §8.1 key authorization.
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-6.2>

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use reqwest::header::HeaderMap;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
    EcdsaSigningAlgorithm, Ed25519KeyPair, KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair,
};
use serde_json::{Value, json};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::RSAPublicKey;

use super::{Responders, TestServer};

/// A 2048-bit RSA key (PKCS#8), made once with `openssl genpkey`: ring and
/// rcgen cannot generate RSA keys. The server's unit tests use it too.
pub const RSA_2048_PKCS8_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQCOGED0Sf2W5uuH
pno/+cQ4GtxXTLTnQdG8oHaw8JpyXTuP6kMt80rdVjQrOdK/DLC8F5lUFnxx3O/4
77Td2DIUZEjAmThpnD4v4iiw0pptOXcxABaBp5lC7NJrmsRBPdmFo3gOKJJP7759
kONCaBDy7LgjVNkyPMpnAp2qJu0urAsFvt2hsAzck3V+XJOAlJU9VZ2VydMr9p2s
oRySkLD/4cB6czxcJT+VXV5qP9khiMHvW/S6BU+Kg0cgl9o/KheUAbMMkZOxKl2X
Y/NkJ3lHIzJPvA++CZIczpgwq3pncRvNz9QSzHCGo+vY/LwC2j2HCE/eSZ/6nq4o
jPThuMzZAgMBAAECggEAA/XX7PHD/DOhmbqxhRIec9bceyATma9wsPfC9HGxnaGM
wlkr4qkO1jDrzCRKLqd5TzYUK1m4wbP/9I76b5rHOItxU1GMluBIg8KjUjGoerCu
P6103cu7STglsY3oeDizqkEbsen+Zp/JY3az6CWo3/BqPcKEuYekDNoakAO85Wmn
qiu38C20hELi+jyBgS/R8//hBAQvY/dJdnEj+aae2HHU3PQnvGGgB21gsfUzADF0
mXsbEQmyMwiMslyp+5M6U5Ygm/F39z3CSimuKQMrtiwS+duhT3yWlX6r0t5hfh+q
u4wbqYJBoDmQXVC5JxPsacq2GIzMAcMDziSBIxlHhQKBgQDAm9jVFQmbVa0IjH9v
gbxuxgjA2R76oR6kGIvrEMkTN2UONU7HfgpM8+vAOJ6QqLZczmxER4QX+gsZdN55
DCMfqyipFWpENq4KLyDDpGHLn9XbCeRMj2QilWfs8JObRMDMRanHF/rMC2u4rjNJ
yXTlXTgrTC617fcPc/slGeA7vQKBgQC83F9p113IOkMRX30aOlcY1o6sYC90atc2
zfx90GpJe+ptdkZhwUnUYqsrGue0K7iH6zGxwjP1uA0L3xYNyW2M5OsXVxC2QzL2
oCz/Rq5MxZfnkbhwKRzb492pD4xqhDNijQSVVObPW+Fr3TBGmzYpN5bEJPEDLNoK
w52seJz5TQKBgCd3h83Z2rcWrjcjOvWpWuhD8gU6OEvY+gNb+Ee5j8o9PprTt4nP
POMZ1EP2Fh/EQmHv9mVjViDnnqCfvvqEzymtE87Z0YWawrzZfVg5dcSYwuR4OWyq
sTUY8kut3EEjrHHvEGP4eO6YpIEaSO4ktqxNFrZgjO3AjjB/boXisHztAoGBAIN6
w+4SYha4AOMCYDy3KtV+4Xq9x6u7ibJ8uu/3/VbFLtIfyiXaA4UZX+K1a2NyIJh3
M3R2J+hDxslh+J+GgH7bC5OHKHpK1BsALfNWCJgn43Xya72h0ZZ/z1wYGAA7ou5U
EEHKBpmLdKa8KRSuj4koSwyoTyWPvwhJYOamXVntAoGBALf2om/rGFXhqDPl0jCC
q63HrnkxRiDgiuCy5cu9OAzoifTP116+B2obmluy6JusuVw3QtPxT1FCQxLcujdX
JTD1gZLMrprruv4iVQp4NeJY7dHdzMDMJYZaV5Zui5/PkAK8c8pe4W/zBqL3rzjm
kCLbzcBGfP8cakO4gqzn49W1
-----END PRIVATE KEY-----
";

/// How long helpers poll an order or authorization before giving up.
const POLL_LIMIT: Duration = Duration::from_secs(15);
/// Interval between polls.
const POLL_EVERY: Duration = Duration::from_millis(25);

/// Unpadded base64url (RFC 7515 §2).
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

/// An account or certificate key that signs JWS: ES256, ES384, EdDSA or RS256.
pub enum Key {
    Ec(EcdsaKeyPair, &'static str, Vec<u8>),
    Ed25519(Ed25519KeyPair, Vec<u8>),
    Rsa(RsaKeyPair, Vec<u8>),
}

impl Key {
    /// A fresh P-256 key (ES256).
    pub fn es256() -> Self {
        Self::ec(&ECDSA_P256_SHA256_FIXED_SIGNING, "P-256")
    }

    /// A fresh P-384 key (ES384).
    pub fn es384() -> Self {
        Self::ec(&ECDSA_P384_SHA384_FIXED_SIGNING, "P-384")
    }

    fn ec(alg: &'static EcdsaSigningAlgorithm, crv: &'static str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).unwrap();
        Self::Ec(pair, crv, pkcs8.as_ref().to_vec())
    }

    /// A fresh Ed25519 key (EdDSA).
    pub fn ed25519() -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        Self::Ed25519(pair, pkcs8.as_ref().to_vec())
    }

    /// The embedded RSA-2048 key (RS256).
    pub fn rsa() -> Self {
        let pkcs8 = ::pem::parse(RSA_2048_PKCS8_PEM).unwrap().into_contents();
        Self::Rsa(RsaKeyPair::from_pkcs8(&pkcs8).unwrap(), pkcs8)
    }

    /// The P-256 key of an rcgen key pair (a certificate key).
    pub fn from_rcgen_p256(key: &KeyPair) -> Self {
        let pkcs8 = key.serialize_der();
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
            .expect("a P-256 rcgen key");
        Self::Ec(pair, "P-256", pkcs8)
    }

    /// The JWS `alg` that fits the key.
    pub fn alg(&self) -> &'static str {
        match self {
            Self::Ec(_, "P-256", _) => "ES256",
            Self::Ec(..) => "ES384",
            Self::Ed25519(..) => "EdDSA",
            Self::Rsa(..) => "RS256",
        }
    }

    /// The PKCS#8 DER of the private key.
    pub fn pkcs8(&self) -> &[u8] {
        match self {
            Self::Ec(_, _, p) | Self::Ed25519(_, p) | Self::Rsa(_, p) => p,
        }
    }

    /// The same key as an rcgen key pair (to sign a CSR with it).
    pub fn rcgen(&self) -> KeyPair {
        KeyPair::try_from(self.pkcs8()).unwrap()
    }

    /// The public JWK (RFC 7517), built from ring's raw public key.
    pub fn jwk(&self) -> Value {
        match self {
            Self::Ec(pair, crv, _) => {
                let point = pair.public_key().as_ref();
                let (x, y) = point[1..].split_at((point.len() - 1) / 2);
                json!({ "kty": "EC", "crv": crv, "x": b64(x), "y": b64(y) })
            }
            Self::Ed25519(pair, _) => {
                json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref()) })
            }
            Self::Rsa(pair, _) => {
                let (_, rsa) = RSAPublicKey::from_der(pair.public().as_ref()).unwrap();
                let strip = |b: &[u8]| {
                    let zeros = b.iter().take_while(|x| **x == 0).count();
                    b64(&b[zeros..])
                };
                json!({ "kty": "RSA", "n": strip(rsa.modulus), "e": strip(rsa.exponent) })
            }
        }
    }

    /// The RFC 7638 thumbprint, as the server computes it.
    pub fn thumbprint(&self) -> String {
        acmeproxy::acme::jws::PublicJwk::from_json(&self.jwk())
            .expect("a JWK the server accepts")
            .thumbprint()
    }

    /// Signs `msg` with the key's algorithm (ECDSA in the fixed r||s form).
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            Self::Ec(pair, _, _) => pair.sign(&rng, msg).unwrap().as_ref().to_vec(),
            Self::Ed25519(pair, _) => pair.sign(msg).as_ref().to_vec(),
            Self::Rsa(pair, _) => {
                let mut sig = vec![0; pair.public().modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &rng, msg, &mut sig).unwrap();
                sig
            }
        }
    }
}

/// A flattened JWS from its three parts, already encoded as they go on the wire.
pub fn jws_parts(protected_b64: &str, payload_b64: &str, signature: &[u8]) -> Value {
    json!({ "protected": protected_b64, "payload": payload_b64, "signature": b64(signature) })
}

/// A flattened JWS over `protected` (any bytes) and `payload`, signed by `key`.
pub fn jws_bytes(protected: &[u8], payload: &[u8], key: &Key) -> Value {
    let protected = b64(protected);
    let payload = b64(payload);
    let sig = key.sign(format!("{protected}.{payload}").as_bytes());
    jws_parts(&protected, &payload, &sig)
}

/// A flattened JWS over the JSON header `protected` and `payload`, signed by `key`.
pub fn jws(protected: &Value, payload: &[u8], key: &Key) -> Value {
    jws_bytes(protected.to_string().as_bytes(), payload, key)
}

/// An External Account Binding (RFC 8555 §7.3.4): HS256 over the account JWK.
pub fn eab(kid: &str, hmac_key: &[u8], account_jwk: &Value, url: &str) -> Value {
    let protected = b64(json!({ "alg": "HS256", "kid": kid, "url": url })
        .to_string()
        .as_bytes());
    let payload = b64(account_jwk.to_string().as_bytes());
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, hmac_key);
    let tag = ring::hmac::sign(&key, format!("{protected}.{payload}").as_bytes());
    jws_parts(&protected, &payload, tag.as_ref())
}

/// The key authorization `token.thumbprint` (RFC 8555 §8.1).
pub fn key_authorization(token: &str, key: &Key) -> String {
    format!("{token}.{}", key.thumbprint())
}

/// A `dns` identifier.
pub fn dns(name: &str) -> Value {
    json!({ "type": "dns", "value": name })
}

/// An `ip` identifier.
pub fn ip(addr: &str) -> Value {
    json!({ "type": "ip", "value": addr })
}

/// A CSR (DER) for `names` (DNS names or IP addresses), with an empty subject.
pub fn csr(names: &[&str], key: &KeyPair) -> Vec<u8> {
    let mut params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params.serialize_request(key).unwrap().der().to_vec()
}

/// Asserts `p` is an embedded problem document (in a challenge or an order)
/// of `kind` with `status`, and a detail a person can act on.
pub fn assert_problem_doc(p: &Value, status: u16, kind: &str) {
    assert_eq!(
        p["type"],
        format!("urn:ietf:params:acme:error:{kind}"),
        "problem type of {p}"
    );
    let detail = p["detail"].as_str().unwrap_or_default();
    assert!(detail.trim().len() >= 10, "detail too thin: {p}");
    if let Some(s) = p.get("status") {
        assert_eq!(s, status, "status member of {p}");
    }
}

/// An HTTP response, read fully.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// The answer to a POST (which must carry a Replay-Nonce, RFC 8555 §6.5).
    pub posted: bool,
}

impl Resp {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{e}: status {} body {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The Location header.
    pub fn location(&self) -> String {
        self.header("location")
            .expect("a Location header")
            .to_owned()
    }

    /// Asserts a success status and, for a POST, a `Replay-Nonce` (RFC 8555
    /// §6.5), and returns the JSON body.
    pub fn ok(&self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "body {}",
            String::from_utf8_lossy(&self.body)
        );
        if self.posted {
            assert!(self.header("replay-nonce").is_some(), "no Replay-Nonce");
        }
        self.json()
    }

    /// Asserts that this is an ACME error: `status`, the problem type
    /// `urn:ietf:params:acme:error:<kind>`, `Content-Type:
    /// application/problem+json`, a `Replay-Nonce` when it answers a POST,
    /// and a non-empty detail.
    /// Returns the problem document.
    pub fn problem(&self, status: u16, kind: &str) -> Value {
        let body = String::from_utf8_lossy(&self.body);
        assert_eq!(self.status, status, "HTTP status; body {body}");
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "content type; body {body}"
        );
        if self.posted {
            assert!(
                self.header("replay-nonce").is_some_and(|n| !n.is_empty()),
                "a Replay-Nonce on every error to a POST; body {body}"
            );
        }
        let doc = self.json();
        assert_problem_doc(&doc, status, kind);
        doc
    }
}

/// An account: its key and its URL (`kid`).
pub struct Account {
    pub key: Key,
    pub kid: String,
}

/// A finished issuance.
pub struct Issued {
    pub order_url: String,
    pub order: Value,
    pub cert_url: String,
    pub chain_pem: String,
    pub leaf_der: Vec<u8>,
    pub cert_key: KeyPair,
}

/// The raw client, bound to one directory.
pub struct Raw {
    http: reqwest::Client,
    /// The directory object.
    pub dir: Value,
    /// The server speaks plain HTTP although its URLs say https.
    plain: bool,
}

impl Raw {
    /// A client for the `acme` provisioner of `ts`.
    pub async fn new(ts: &TestServer) -> Self {
        Self::connect(&ts.directory_url(), ts.http()).await
    }

    /// A client for the directory at `url` (http:// for a plain server).
    pub async fn connect(url: &str, http: reqwest::Client) -> Self {
        let plain = url.starts_with("http://");
        let mut raw = Self {
            http,
            dir: Value::Null,
            plain,
        };
        raw.dir = raw.get(url).await.ok(200);
        raw
    }

    /// A URL of the directory (`newNonce`, `newAccount`, …).
    /// The keyChange body: an inner JWS signed by `new` (RFC 8555 §7.3.5).
    pub fn key_change_inner(&self, acct_kid: &str, old: &Key, new: &Key) -> Value {
        let url = self.url("keyChange");
        let protected = json!({"alg": new.alg(), "jwk": new.jwk(), "url": url});
        let payload = json!({"account": acct_kid, "oldKey": old.jwk()});
        jws(&protected, payload.to_string().as_bytes(), new)
    }

    pub fn url(&self, name: &str) -> String {
        self.dir[name]
            .as_str()
            .unwrap_or_else(|| panic!("no {name} in {}", self.dir))
            .to_owned()
    }

    fn transport(&self, url: &str) -> String {
        match url.strip_prefix("https://") {
            Some(rest) if self.plain => format!("http://{rest}"),
            _ => url.to_owned(),
        }
    }

    async fn read(resp: reqwest::Response, posted: bool) -> Resp {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.unwrap().to_vec();
        Resp {
            status,
            headers,
            body,
            posted,
        }
    }

    /// A fresh nonce from newNonce (HEAD).
    pub async fn new_nonce(&self) -> String {
        let resp = self
            .http
            .head(self.transport(&self.url("newNonce")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.headers()["replay-nonce"].to_str().unwrap().to_owned()
    }

    /// GET `url`.
    pub async fn get(&self, url: &str) -> Resp {
        Self::read(
            self.http.get(self.transport(url)).send().await.unwrap(),
            false,
        )
        .await
    }

    /// POST `body` with `content_type` to `url`, as is.
    pub async fn post_raw(&self, url: &str, content_type: &str, body: Vec<u8>) -> Resp {
        let resp = self
            .http
            .post(self.transport(url))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        Self::read(resp, true).await
    }

    /// POST a JWS object as `application/jose+json`.
    pub async fn post_jws(&self, url: &str, jws: &Value) -> Resp {
        self.post_raw(url, "application/jose+json", jws.to_string().into_bytes())
            .await
    }

    /// POST `payload` under any `protected` header, signed by `key`.
    pub async fn post(&self, url: &str, protected: &Value, payload: &[u8], key: &Key) -> Resp {
        self.post_jws(url, &jws(protected, payload, key)).await
    }

    /// A protected header with a fresh nonce, `url` and the key as `jwk`.
    pub async fn header_jwk(&self, key: &Key, url: &str) -> Value {
        json!({ "alg": key.alg(), "nonce": self.new_nonce().await, "url": url, "jwk": key.jwk() })
    }

    /// A protected header with a fresh nonce, `url` and the account's `kid`.
    pub async fn header_kid(&self, acct: &Account, url: &str) -> Value {
        json!({ "alg": acct.key.alg(), "nonce": self.new_nonce().await, "url": url, "kid": acct.kid })
    }

    /// POST signed with `key` as `jwk`; `None` is POST-as-GET.
    pub async fn post_jwk(&self, key: &Key, url: &str, payload: Option<&Value>) -> Resp {
        let header = self.header_jwk(key, url).await;
        let body = payload
            .map(|p| p.to_string().into_bytes())
            .unwrap_or_default();
        self.post(url, &header, &body, key).await
    }

    /// POST signed by the account (`kid`); `None` is POST-as-GET.
    pub async fn post_kid(&self, acct: &Account, url: &str, payload: Option<&Value>) -> Resp {
        let header = self.header_kid(acct, url).await;
        let body = payload
            .map(|p| p.to_string().into_bytes())
            .unwrap_or_default();
        self.post(url, &header, &body, &acct.key).await
    }

    /// newAccount with `payload`, signed by `key`.
    pub async fn new_account(&self, key: &Key, payload: &Value) -> Resp {
        self.post_jwk(key, &self.url("newAccount"), Some(payload))
            .await
    }

    /// Registers `key` (contact and terms agreed) and expects 201.
    pub async fn register(&self, key: Key) -> Account {
        let resp = self
            .new_account(
                &key,
                &json!({ "contact": ["mailto:raw@example.org"], "termsOfServiceAgreed": true }),
            )
            .await;
        let body = resp.ok(201);
        assert_eq!(body["status"], "valid");
        Account {
            key,
            kid: resp.location(),
        }
    }

    /// POST-as-GET `url` as the account, expecting 200 JSON.
    pub async fn fetch(&self, acct: &Account, url: &str) -> Value {
        self.post_kid(acct, url, None).await.ok(200)
    }

    /// newOrder for `identifiers`; returns the order URL and object.
    pub async fn new_order(&self, acct: &Account, identifiers: &[Value]) -> (String, Value) {
        let resp = self
            .post_kid(
                acct,
                &self.url("newOrder"),
                Some(&json!({ "identifiers": identifiers })),
            )
            .await;
        let body = resp.ok(201);
        (resp.location(), body)
    }

    /// The challenge of `kind` in an authorization object.
    pub fn challenge(authz: &Value, kind: &str) -> Value {
        authz["challenges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == kind)
            .unwrap_or_else(|| panic!("no {kind} challenge in {authz}"))
            .clone()
    }

    /// Publishes the correct response for `challenge` of `authz` with the
    /// responders, as a well-behaved client does.
    pub fn publish(responders: &Responders, acct: &Account, authz: &Value, challenge: &Value) {
        let token = challenge["token"].as_str().unwrap();
        let ka = key_authorization(token, &acct.key);
        let value = authz["identifier"]["value"].as_str().unwrap();
        match challenge["type"].as_str().unwrap() {
            "http-01" => responders.set_http01(token, &ka),
            "dns-01" => responders.set_dns01(value, &b64(&sha256(ka.as_bytes()))),
            "tls-alpn-01" => {
                let sni = match value.parse::<std::net::IpAddr>() {
                    Ok(ip) => acmeproxy::validate::tls_alpn01::reverse_dns_name(ip),
                    Err(_) => value.to_owned(),
                };
                responders.set_tls_alpn01(&sni, value, &sha256(ka.as_bytes()));
            }
            other => panic!("unknown challenge type {other}"),
        }
    }

    /// Tells the server a challenge is ready (`{}`), returns the response.
    pub async fn answer(&self, acct: &Account, challenge: &Value) -> Resp {
        self.post_kid(acct, challenge["url"].as_str().unwrap(), Some(&json!({})))
            .await
    }

    /// Polls `url` (POST-as-GET) until `done` holds for the object.
    pub async fn poll(&self, acct: &Account, url: &str, done: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let v = self.fetch(acct, url).await;
            if done(&v) {
                return v;
            }
            assert!(
                started.elapsed() < POLL_LIMIT,
                "gave up waiting on {url}: {v}"
            );
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Validates every authorization of the order with `kind`, publishing the
    /// correct answers, and waits until the order is ready.
    pub async fn make_ready(
        &self,
        responders: &Responders,
        acct: &Account,
        order_url: &str,
        kind: &str,
    ) -> Value {
        let order = self.fetch(acct, order_url).await;
        for a in order["authorizations"].as_array().unwrap() {
            let a = a.as_str().unwrap();
            let authz = self.fetch(acct, a).await;
            let ch = Self::challenge(&authz, kind);
            Self::publish(responders, acct, &authz, &ch);
            self.answer(acct, &ch).await.ok(200);
            self.poll(acct, a, |v| v["status"] != "pending").await;
        }
        let order = self
            .poll(acct, order_url, |v| v["status"] != "pending")
            .await;
        assert_eq!(order["status"], "ready", "{order}");
        order
    }

    /// Finalize with `csr_der`.
    pub async fn finalize(&self, acct: &Account, order: &Value, csr_der: &[u8]) -> Resp {
        self.post_kid(
            acct,
            order["finalize"].as_str().unwrap(),
            Some(&json!({ "csr": b64(csr_der) })),
        )
        .await
    }

    /// Orders `identifiers` (names or IPs), validates with http-01, finalizes
    /// with a fresh P-256 key and downloads the chain.
    pub async fn issue(&self, responders: &Responders, acct: &Account, names: &[&str]) -> Issued {
        let ids: Vec<Value> = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(_) => ip(n),
                Err(_) => dns(n),
            })
            .collect();
        let (order_url, _) = self.new_order(acct, &ids).await;
        self.issue_order(responders, acct, &order_url, names).await
    }

    /// Completes an existing order for `names` with http-01.
    pub async fn issue_order(
        &self,
        responders: &Responders,
        acct: &Account,
        order_url: &str,
        names: &[&str],
    ) -> Issued {
        let order = self
            .make_ready(responders, acct, order_url, "http-01")
            .await;
        let cert_key = KeyPair::generate().unwrap();
        self.finalize(acct, &order, &csr(names, &cert_key))
            .await
            .ok(200);
        let order = self
            .poll(acct, order_url, |v| {
                v["status"] != "processing" && v["status"] != "ready"
            })
            .await;
        assert_eq!(order["status"], "valid", "{order}");
        let cert_url = order["certificate"].as_str().unwrap().to_owned();
        let resp = self.post_kid(acct, &cert_url, None).await;
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.header("content-type"),
            Some("application/pem-certificate-chain")
        );
        let chain_pem = String::from_utf8(resp.body).unwrap();
        let leaf_der = ::pem::parse(&chain_pem).unwrap().into_contents();
        Issued {
            order_url: order_url.to_owned(),
            order,
            cert_url,
            chain_pem,
            leaf_der,
            cert_key,
        }
    }

    /// revokeCert signed by the account.
    pub async fn revoke_kid(&self, acct: &Account, der: &[u8], reason: Option<i64>) -> Resp {
        self.post_kid(
            acct,
            &self.url("revokeCert"),
            Some(&revocation(der, reason)),
        )
        .await
    }

    /// revokeCert signed by `key` given as `jwk` (the certificate's key).
    pub async fn revoke_jwk(&self, key: &Key, der: &[u8], reason: Option<i64>) -> Resp {
        self.post_jwk(key, &self.url("revokeCert"), Some(&revocation(der, reason)))
            .await
    }
}

fn revocation(der: &[u8], reason: Option<i64>) -> Value {
    match reason {
        Some(r) => json!({ "certificate": b64(der), "reason": r }),
        None => json!({ "certificate": b64(der) }),
    }
}
