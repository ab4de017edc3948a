//! The ACME (RFC 8555) client side of the load generator: the HTTPS
//! transport, JWS signing with ES256 account keys (RFC 8555 §6.2), nonces
//! (§7.2) with the `badNonce` retry (§6.5), and the timing of every request.
//!
//! Written by hand rather than with instant-acme so that every request is
//! classified and timed exactly, and so that polling follows the generator's
//! own interval instead of a client library's sleeps.
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-6.2>

use std::error::Error as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Method, Request, header};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde::Deserialize;

/// Largest response body read (a certificate chain is a few kB).
const BODY_LIMIT: usize = 1 << 20;
/// How often one request is re-sent after a `badNonce` problem (RFC 8555 §6.5).
const BAD_NONCE_RETRIES: usize = 3;
const BAD_NONCE: &str = "urn:ietf:params:acme:error:badNonce";

/// The request types the report separates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    NewNonce,
    NewAccount,
    NewOrder,
    AuthzGet,
    ChallengePost,
    OrderPoll,
    Finalize,
    CertDownload,
}

impl Kind {
    /// Every kind, in flow order.
    pub(crate) const ALL: [Self; 8] = [
        Self::NewNonce,
        Self::NewAccount,
        Self::NewOrder,
        Self::AuthzGet,
        Self::ChallengePost,
        Self::OrderPoll,
        Self::Finalize,
        Self::CertDownload,
    ];

    /// The key used in the report.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::NewNonce => "new_nonce",
            Self::NewAccount => "new_account",
            Self::NewOrder => "new_order",
            Self::AuthzGet => "authz_get",
            Self::ChallengePost => "challenge_post",
            Self::OrderPoll => "order_poll",
            Self::Finalize => "finalize",
            Self::CertDownload => "cert_download",
        }
    }

    /// Position in [`Kind::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Why a flow failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FlowError {
    #[error("{what}: {source}")]
    Crypto {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{what}: unreadable JSON: {source}")]
    Decode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what} became invalid: {problem_type}: {detail}")]
    Invalid {
        what: &'static str,
        problem_type: String,
        detail: String,
    },
    #[error("timed out polling the order (last status {status})")]
    PollTimeout { status: String },
    #[error("HTTP {status} {problem_type}: {detail}")]
    Problem {
        status: u16,
        problem_type: String,
        detail: String,
    },
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("HTTP {status} from {url} without a problem document")]
    Status { status: u16, url: String },
    #[error("{url}: {kind}: {detail}")]
    Transport {
        kind: &'static str,
        url: String,
        detail: String,
    },
}

impl FlowError {
    /// The key errors are counted under: the problem `type` urn, or
    /// `transport:<kind>`, `http:<status>`, `decode`, `protocol`, `poll-timeout`.
    pub(crate) fn key(&self) -> String {
        match self {
            Self::Crypto { .. } => "crypto".to_owned(),
            Self::Decode { .. } => "decode".to_owned(),
            Self::Invalid { problem_type, .. } => format!("{problem_type} (invalid)"),
            Self::PollTimeout { .. } => "poll-timeout".to_owned(),
            Self::Problem { problem_type, .. } => problem_type.clone(),
            Self::Protocol(_) => "protocol".to_owned(),
            Self::Status { status, .. } => format!("http:{status}"),
            Self::Transport { kind, .. } => format!("transport:{kind}"),
        }
    }
}

/// A problem document (RFC 8555 §6.7), as far as the generator reads it.
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct Problem {
    #[serde(rename = "type", default)]
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) detail: String,
}

/// The URLs of the directory (RFC 8555 §7.1.1) the generator uses.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Directory {
    pub(crate) new_nonce: String,
    pub(crate) new_account: String,
    pub(crate) new_order: String,
}

/// An HTTPS client; clones share the connection pool.
#[derive(Clone)]
pub(crate) struct Http {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    timeout: Duration,
}

impl Http {
    /// A client trusting `tls`'s roots, speaking HTTP/1.1, keeping at most
    /// `idle` idle connections per host.
    pub(crate) fn new(tls: &rustls::ClientConfig, timeout: Duration, idle: usize) -> Self {
        // Without TCP_NODELAY, a request's body record waits for the ACK of
        // its header record (Nagle), and delayed ACKs add ~40 ms.
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(idle)
            .build(connector);
        Self { client, timeout }
    }

    /// Sends one request and reads the whole answer.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response, FlowError> {
        let transport = |kind: &'static str, detail: String| FlowError::Transport {
            kind,
            url: url.to_owned(),
            detail,
        };
        let mut req = Request::builder().method(method).uri(url);
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/jose+json");
                Body::from(b)
            }
            None => Body::empty(),
        };
        let req = req
            .body(body)
            .map_err(|e| transport("request", e.to_string()))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| transport(classify(&e), error_chain(&e)))?;
            let (parts, body) = resp.into_parts();
            let body = axum::body::to_bytes(Body::new(body), BODY_LIMIT)
                .await
                .map_err(|e| transport("body", error_chain(&e)))?;
            Ok::<_, FlowError>((parts, body))
        };
        let (parts, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| transport("timeout", format!("no answer in {:?}", self.timeout)))??;
        let text = |name: header::HeaderName| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Ok(Response {
            status: parts.status.as_u16(),
            nonce: text(header::HeaderName::from_static("replay-nonce")),
            location: text(header::LOCATION),
            body,
        })
    }

    /// Fetches and parses the directory (RFC 8555 §7.1.1).
    pub(crate) async fn directory(&self, url: &str) -> Result<Directory, FlowError> {
        let resp = self.send(Method::GET, url, None).await?;
        if resp.status != 200 {
            return Err(FlowError::Status {
                status: resp.status,
                url: url.to_owned(),
            });
        }
        resp.json("directory")
    }
}

/// A response, read in full.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) nonce: Option<String>,
    pub(crate) location: Option<String>,
    pub(crate) body: Bytes,
}

impl Response {
    /// The body as JSON.
    pub(crate) fn json<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
    ) -> Result<T, FlowError> {
        serde_json::from_slice(&self.body).map_err(|source| FlowError::Decode { what, source })
    }

    /// The `Location` header, required on new accounts and orders.
    pub(crate) fn location(&self, what: &str) -> Result<String, FlowError> {
        self.location
            .clone()
            .ok_or_else(|| FlowError::Protocol(format!("{what} answered without Location")))
    }
}

/// An ES256 account key with its JWK (RFC 7517) and thumbprint (RFC 7638).
pub(crate) struct AccountKey {
    pair: EcdsaKeyPair,
    jwk: serde_json::Value,
    thumbprint: String,
}

impl AccountKey {
    /// A fresh P-256 key.
    pub(crate) fn generate(rng: &SystemRandom) -> Result<Self, FlowError> {
        let crypto = |what, e: ring::error::Unspecified| FlowError::Crypto {
            what,
            source: Box::new(e),
        };
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, rng)
            .map_err(|e| crypto("generating the account key", e))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), rng)
            .map_err(|e| FlowError::Crypto {
                what: "loading the account key",
                source: Box::new(e),
            })?;
        // An uncompressed point: 0x04 || x (32 bytes) || y (32 bytes).
        let point = pair.public_key().as_ref();
        let Some((x, y)) = point.get(1..33).zip(point.get(33..65)) else {
            return Err(FlowError::Protocol("short P-256 public key".to_owned()));
        };
        let (x, y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
        let jwk = serde_json::json!({"crv": "P-256", "kty": "EC", "x": x, "y": y});
        // RFC 7638: the server's own thumbprint, so both sides agree.
        let thumbprint = acmeproxy::acme::jws::PublicJwk::from_json(&jwk)
            .map_err(|e| FlowError::Protocol(format!("the account key's JWK: {e}")))?
            .thumbprint();
        Ok(Self {
            pair,
            jwk,
            thumbprint,
        })
    }

    /// The key authorization of `token` (RFC 8555 §8.1).
    pub(crate) fn key_authorization(&self, token: &str) -> String {
        format!("{token}.{}", self.thumbprint)
    }

    /// A flattened JWS (RFC 8555 §6.2): `kid` if given, else the JWK.
    /// `payload` `None` is POST-as-GET (an empty payload, §6.3).
    fn sign(
        &self,
        rng: &SystemRandom,
        kid: Option<&str>,
        nonce: &str,
        url: &str,
        payload: Option<&serde_json::Value>,
    ) -> Result<Vec<u8>, FlowError> {
        let mut protected = serde_json::json!({"alg": "ES256", "nonce": nonce, "url": url});
        match kid {
            Some(k) => protected["kid"] = serde_json::Value::from(k),
            None => protected["jwk"] = self.jwk.clone(),
        }
        let protected = URL_SAFE_NO_PAD.encode(protected.to_string());
        let payload = match payload {
            Some(p) => URL_SAFE_NO_PAD.encode(p.to_string()),
            None => String::new(),
        };
        let signing_input = format!("{protected}.{payload}");
        let sig = self
            .pair
            .sign(rng, signing_input.as_bytes())
            .map_err(|e| FlowError::Crypto {
                what: "signing a request",
                source: Box::new(e),
            })?;
        let jws = serde_json::json!({
            "protected": protected,
            "payload": payload,
            "signature": URL_SAFE_NO_PAD.encode(sig.as_ref()),
        });
        Ok(jws.to_string().into_bytes())
    }
}

/// One client's conversation: the nonce it holds, and the timed requests.
pub(crate) struct Session {
    http: Http,
    dir: Arc<Directory>,
    rng: SystemRandom,
    nonce: Option<String>,
    /// Every answered request: kind and latency in microseconds.
    pub(crate) samples: Vec<(Kind, u32)>,
    /// `badNonce` answers that were retried.
    pub(crate) bad_nonce_retries: u64,
}

impl Session {
    /// A session without a nonce: its first POST fetches one.
    pub(crate) fn new(http: Http, dir: Arc<Directory>) -> Self {
        Self {
            http,
            dir,
            rng: SystemRandom::new(),
            nonce: None,
            samples: Vec::with_capacity(16),
            bad_nonce_retries: 0,
        }
    }

    /// The directory this session talks to.
    pub(crate) fn directory(&self) -> &Directory {
        &self.dir
    }

    /// The random source for keys and signatures.
    pub(crate) fn rng(&self) -> &SystemRandom {
        &self.rng
    }

    fn record(&mut self, kind: Kind, started: Instant) {
        let micros = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
        self.samples.push((kind, micros));
    }

    /// HEAD newNonce (RFC 8555 §7.2).
    async fn new_nonce(&mut self) -> Result<String, FlowError> {
        let url = self.dir.new_nonce.clone();
        let started = Instant::now();
        let resp = self.http.send(Method::HEAD, &url, None).await?;
        self.record(Kind::NewNonce, started);
        if !(200..300).contains(&resp.status) {
            return Err(FlowError::Status {
                status: resp.status,
                url,
            });
        }
        resp.nonce
            .ok_or_else(|| FlowError::Protocol("newNonce answered without Replay-Nonce".to_owned()))
    }

    /// A signed POST (or POST-as-GET when `payload` is `None`), retried on
    /// `badNonce`. Errors carry the problem document's type.
    pub(crate) async fn post(
        &mut self,
        kind: Kind,
        url: &str,
        key: &AccountKey,
        kid: Option<&str>,
        payload: Option<&serde_json::Value>,
    ) -> Result<Response, FlowError> {
        let mut attempt = 0;
        loop {
            let nonce = match self.nonce.take() {
                Some(n) => n,
                None => self.new_nonce().await?,
            };
            let body = key.sign(&self.rng, kid, &nonce, url, payload)?;
            let started = Instant::now();
            let resp = self.http.send(Method::POST, url, Some(body)).await?;
            self.record(kind, started);
            self.nonce.clone_from(&resp.nonce);
            if resp.status < 400 {
                return Ok(resp);
            }
            let problem: Problem = match serde_json::from_slice(&resp.body) {
                Ok(p) => p,
                Err(_) => {
                    return Err(FlowError::Status {
                        status: resp.status,
                        url: url.to_owned(),
                    });
                }
            };
            if problem.kind == BAD_NONCE && attempt < BAD_NONCE_RETRIES {
                attempt += 1;
                self.bad_nonce_retries += 1;
                continue;
            }
            return Err(FlowError::Problem {
                status: resp.status,
                problem_type: problem.kind,
                detail: problem.detail,
            });
        }
    }
}

/// A short name for a transport failure.
fn classify(e: &hyper_util::client::legacy::Error) -> &'static str {
    if e.is_connect() {
        return "connect";
    }
    let mut source = e.source();
    while let Some(s) = source {
        if s.is::<rustls::Error>() {
            return "tls";
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionReset => "reset",
                std::io::ErrorKind::ConnectionRefused => "refused",
                std::io::ErrorKind::UnexpectedEof => "eof",
                _ => "io",
            };
        }
        if let Some(h) = s.downcast_ref::<hyper::Error>()
            && h.is_incomplete_message()
        {
            return "closed";
        }
        source = s.source();
    }
    "request"
}

/// `e` and its sources, joined with ": ".
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
