//! stepcas: a smallstep step-ca signs for the RA, as step-ca's own RA mode
//! (`cas/stepcas`) has it sign. Each request carries a one-time token (a
//! compact JWS, RFC 7515/7519) from a JWK or an X5C provisioner of that CA.
//!
//! At start-up the CA's root is fetched once over unverified HTTPS
//! (`GET /root/<fingerprint>`) and accepted only if its SHA-256 is the
//! configured fingerprint; from then on that root is the only trust anchor.
//! A JWK provisioner's key comes from a file or, encrypted (RFC 7516 JWE with
//! PBES2, RFC 7518 §4.8), from the CA's provisioner list.
//!
//! API: `POST /1.0/sign` {csr, ott, notAfter}, `POST /1.0/revoke` {serial,
//! ott, reasonCode, passive}, `GET /provisioners`, `GET /health`.

mod http;
mod keys;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ::http::{Method, StatusCode};
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::{FromDer, X509Certificate};

use self::http::{Https, insecure_tls, trusting};
use self::keys::{KeyError, TokenKey};
use super::{
    CertificateAuthorityService, Checkpoint, IssuedChain, RevokeRequest, SignRequest, UpstreamError,
};
use crate::acme::ProblemType;
use crate::acme::types::Identifier;
use crate::config::{IssuerType, Secret};

/// Lifetime of a one-time token (step's default).
const TOKEN_LIFETIME: time::Duration = time::Duration::minutes(5);

/// Settings of the step-ca upstream (from `authority.certificateAuthority`,
/// `certificateAuthorityFingerprint` and `certificateIssuer`).
#[derive(Clone, Debug)]
pub struct StepCaOptions {
    /// `https://host[:port]` of the CA, no trailing slash.
    pub ca_url: String,
    /// SHA-256 of the CA's root certificate (DER), lower-case hex.
    pub fingerprint: String,
    /// JWK or X5C provisioner.
    pub issuer: IssuerType,
    /// The provisioner's name.
    pub provisioner: String,
    /// JWK: key file (JWK, JWE or PEM), or none to download the encrypted
    /// key from the CA. X5C: the certificate's key (PEM).
    pub key: Option<PathBuf>,
    /// X5C: the certificate chain (PEM), leaf first.
    pub crt: Option<PathBuf>,
    /// Decrypts the JWK provisioner key.
    pub password: Option<Secret>,
    /// Limit on each request to the CA.
    pub timeout: Duration,
}

impl From<&crate::config::StepCasSettings> for StepCaOptions {
    fn from(sc: &crate::config::StepCasSettings) -> Self {
        Self {
            ca_url: sc.ca_url.clone(),
            fingerprint: sc.fingerprint.clone(),
            issuer: sc.issuer,
            provisioner: sc.provisioner.clone(),
            key: sc.key.clone(),
            crt: sc.crt.clone(),
            password: sc.password.clone(),
            timeout: Duration::from_secs(30),
        }
    }
}

/// The step-ca upstream.
pub struct StepCa {
    opts: StepCaOptions,
    http: Https,
    root_der: Vec<u8>,
    issuer: Issuer,
}

impl std::fmt::Debug for StepCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepCa")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// What signs the tokens.
enum Issuer {
    Jwk { key: Box<TokenKey>, kid: String },
    X5c(Mutex<Arc<X5cCredential>>),
}

/// An X5C client certificate and its key, as read from the files at `stamp`.
struct X5cCredential {
    key: TokenKey,
    kid: String,
    /// Standard base64 of each certificate's DER, leaf first (RFC 7515 §4.1.6).
    chain: Vec<String>,
    not_after: OffsetDateTime,
    stamp: Option<(SystemTime, SystemTime)>,
}

impl StepCa {
    /// Fetches and checks the CA's root, loads (or downloads and decrypts)
    /// the issuer key, and checks that the CA answers.
    pub async fn connect(opts: StepCaOptions) -> Result<Self, UpstreamError> {
        let insecure = Https::new(insecure_tls()?, opts.timeout);
        let root_der = fetch_root(&insecure, &opts).await?;
        let http = Https::new(trusting(&root_der)?, opts.timeout);
        let password = opts.password.as_ref().map(|p| p.expose().as_bytes());
        let issuer = match opts.issuer {
            IssuerType::Jwk => {
                let (key, kid) = match &opts.key {
                    Some(path) => {
                        let (key, kid) = TokenKey::from_file(path, password)
                            .map_err(|e| key_error(&e, &format!("{}", path.display())))?;
                        let kid = match kid {
                            Some(k) => k,
                            None => key.thumbprint().map_err(|e| key_error(&e, "the key"))?,
                        };
                        (key, kid)
                    }
                    None => download_jwk(&http, &opts, password).await?,
                };
                Issuer::Jwk {
                    key: Box::new(key),
                    kid,
                }
            }
            IssuerType::X5c => {
                let cred = load_x5c(&opts)?;
                Issuer::X5c(Mutex::new(Arc::new(cred)))
            }
        };
        let ca = Self {
            opts,
            http,
            root_der,
            issuer,
        };
        ca.health().await?;
        tracing::info!(ca = %ca.opts.ca_url, provisioner = %ca.opts.provisioner,
            issuer = ?ca.opts.issuer, "connected to step-ca");
        Ok(ca)
    }

    /// A one-time token for `path` (`/1.0/sign` or `/1.0/revoke`): `iss`
    /// the provisioner, `aud` the endpoint (for X5C with `#x5c/<name>`,
    /// which is how step-ca picks the provisioner), valid for five minutes.
    fn token(
        &self,
        path: &str,
        sub: &str,
        sans: Option<&[String]>,
    ) -> Result<String, UpstreamError> {
        let now = OffsetDateTime::now_utc();
        let aud = format!("{}{path}", self.opts.ca_url);
        let mut claims = json!({
            "iss": self.opts.provisioner,
            "aud": aud,
            "sub": sub,
            "iat": now.unix_timestamp(),
            "nbf": now.unix_timestamp(),
            "exp": (now + TOKEN_LIFETIME).unix_timestamp(),
            "jti": random_hex(32)?,
            "sha": self.opts.fingerprint,
        });
        if let Some(sans) = sans {
            claims["sans"] = json!(sans);
        }
        let signed = match &self.issuer {
            Issuer::Jwk { key, kid } => {
                let header = json!({"alg": key.alg(), "kid": kid, "typ": "JWT"});
                key.sign_jws(&header, &claims)
            }
            Issuer::X5c(cell) => {
                let cred = self.x5c_credential(cell);
                claims["aud"] = json!(format!("{aud}#x5c/{}", self.opts.provisioner));
                let header = json!({"alg": cred.key.alg(), "kid": cred.kid, "typ": "JWT",
                    "x5c": cred.chain});
                cred.key.sign_jws(&header, &claims)
            }
        };
        signed.map_err(|e| internal("signing the one-time token".into(), Some(Box::new(e))))
    }

    /// The X5C credential, read again when its files changed (a renewed RA
    /// certificate is picked up without a restart, as step-ca does).
    fn x5c_credential(&self, cell: &Mutex<Arc<X5cCredential>>) -> Arc<X5cCredential> {
        let current = match cell.lock() {
            Ok(c) => Arc::clone(&c),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        };
        if current.stamp.is_some() && x5c_stamp(&self.opts) == current.stamp {
            return current;
        }
        match load_x5c(&self.opts) {
            Ok(fresh) => {
                tracing::info!(crt = %self.opts.crt.as_deref().unwrap_or_else(|| Path::new("-")).display(), not_after = %fresh.not_after, "reloaded the x5c certificate");
                let fresh = Arc::new(fresh);
                if let Ok(mut c) = cell.lock() {
                    *c = Arc::clone(&fresh);
                }
                fresh
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot reload the x5c certificate; using the one loaded before");
                current
            }
        }
    }

    /// `notAfter` for a sign request: the requested one, but for X5C never
    /// past the RA certificate's expiry (step-ca refuses that).
    fn not_after(
        &self,
        requested: Option<OffsetDateTime>,
    ) -> Result<Option<OffsetDateTime>, UpstreamError> {
        let Issuer::X5c(cell) = &self.issuer else {
            return Ok(requested);
        };
        let limit = self.x5c_credential(cell).not_after - time::Duration::minutes(1);
        let now = OffsetDateTime::now_utc();
        if limit <= now {
            return Err(internal(
                format!(
                    "the x5c certificate {:?} has expired; renew it",
                    self.opts.crt
                ),
                None,
            ));
        }
        // step-ca's default lifetime is 24 h when no notAfter is sent.
        let wanted = requested.unwrap_or(now + time::Duration::hours(24));
        Ok(if wanted > limit {
            Some(limit)
        } else {
            requested
        })
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Value, UpstreamError> {
        let url = format!("{}{path}", self.opts.ca_url);
        let (status, bytes) = self
            .http
            .call(Method::POST, &url, Some(body))
            .await
            .map_err(|e| e.unavailable(&url))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| UpstreamError::Unavailable {
                context: format!("step-ca answered {path} with unreadable JSON"),
                source: Some(Box::new(e)),
            });
        }
        let mut message = error_message(status, &bytes);
        let kind = match status.as_u16() {
            // 403 "requested duration of 2160h1m0s is more than the
            // authorized maximum certificate duration of 24h1m0s": a setting
            // to change, not a fault of the client.
            400..=499 if path.ends_with("/sign") && message.contains("duration") => {
                message.truncate(message.trim_end_matches('.').len());
                message.push_str(
                    "; the lifetime asked for is the order's notAfter, else \
                     authority.claims.defaultTLSCertDuration (or the provisioner's claims, or \
                     certlifetime) in acmeproxy's ca.json: lower it to what step-ca allows, \
                     remove it to take the step-ca provisioner's default, or raise the step-ca \
                     provisioner's maxTLSCertDuration",
                );
                ProblemType::ServerInternal
            }
            401 | 403 => ProblemType::Unauthorized,
            400 if path.ends_with("/sign") => ProblemType::BadCsr,
            400 if message.contains("already revoked") => ProblemType::AlreadyRevoked,
            400..=499 => ProblemType::Malformed,
            _ => {
                return Err(UpstreamError::Unavailable {
                    context: format!("step-ca answered {path} with {status}: {message}"),
                    source: None,
                });
            }
        };
        tracing::warn!(%status, %message, path, "step-ca refused the request");
        Err(UpstreamError::Rejected {
            kind,
            detail: format!("step-ca: {message}"),
        })
    }
}

#[async_trait]
impl CertificateAuthorityService for StepCa {
    fn name(&self) -> &'static str {
        "stepcas"
    }

    async fn create_certificate(
        &self,
        req: &SignRequest,
        _checkpoint: &dyn Checkpoint,
    ) -> Result<IssuedChain, UpstreamError> {
        let sans: Vec<String> = req.identifiers.iter().map(identifier_value).collect();
        let Ok((_, csr)) = X509CertificationRequest::from_der(&req.csr_der) else {
            return Err(UpstreamError::Rejected {
                kind: ProblemType::BadCsr,
                detail: "the CSR does not parse".into(),
            });
        };
        let cn = csr
            .certification_request_info
            .subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let Some(sub) = cn.or_else(|| sans.first().cloned()) else {
            return Err(UpstreamError::Rejected {
                kind: ProblemType::BadCsr,
                detail: "the request names no identifier".into(),
            });
        };
        let ott = self.token("/1.0/sign", &sub, Some(&sans))?;
        let mut body = json!({
            "csr": pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", req.csr_der.clone())),
            "ott": ott,
        });
        if let Some(t) = self.not_after(req.not_after)? {
            body["notAfter"] = json!(
                t.format(&Rfc3339)
                    .map_err(|e| internal("formatting notAfter".into(), Some(Box::new(e))))?
            );
        }
        let reply = self.post("/1.0/sign", &body).await?;
        let mut pems: Vec<&str> = reply["certChain"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if pems.is_empty() {
            pems = ["crt", "ca"]
                .iter()
                .filter_map(|k| reply[*k].as_str())
                .collect();
        }
        let mut certificates = Vec::new();
        for p in pems {
            let blocks = pem::parse_many(p).map_err(|e| UpstreamError::Unavailable {
                context: "step-ca returned an unreadable certificate".into(),
                source: Some(Box::new(e)),
            })?;
            certificates.extend(
                blocks
                    .into_iter()
                    .filter(|b| b.tag() == "CERTIFICATE")
                    .map(pem::Pem::into_contents),
            );
        }
        if certificates.is_empty() {
            return Err(UpstreamError::Unavailable {
                context: "step-ca returned no certificate".into(),
                source: None,
            });
        }
        Ok(IssuedChain { certificates })
    }

    async fn revoke_certificate(&self, req: &RevokeRequest) -> Result<(), UpstreamError> {
        let serial = x509_parser::num_bigint::BigUint::parse_bytes(req.serial_hex.as_bytes(), 16)
            .ok_or_else(|| internal(format!("serial {:?} is not hex", req.serial_hex), None))?
            .to_string();
        let ott = self.token("/1.0/revoke", &serial, None)?;
        let body = json!({
            "serial": serial,
            "ott": ott,
            "reasonCode": req.reason,
            "passive": true,
        });
        self.post("/1.0/revoke", &body).await?;
        tracing::info!(%serial, reason = req.reason, "revoked at step-ca");
        Ok(())
    }

    fn roots(&self) -> Vec<Vec<u8>> {
        vec![self.root_der.clone()]
    }

    async fn health(&self) -> Result<(), UpstreamError> {
        let url = format!("{}/health", self.opts.ca_url);
        let (status, bytes) = self
            .http
            .call(Method::GET, &url, None)
            .await
            .map_err(|e| e.unavailable(&url))?;
        if status.is_success() {
            Ok(())
        } else {
            Err(UpstreamError::Unavailable {
                context: format!(
                    "step-ca health: {status}: {}",
                    error_message(status, &bytes)
                ),
                source: None,
            })
        }
    }
}

/// `GET /root/<fingerprint>` over unverified HTTPS; the root is accepted only
/// if its SHA-256 is the fingerprint.
async fn fetch_root(http: &Https, opts: &StepCaOptions) -> Result<Vec<u8>, UpstreamError> {
    let url = format!("{}/root/{}", opts.ca_url, opts.fingerprint);
    let (status, bytes) = http
        .call(Method::GET, &url, None)
        .await
        .map_err(|e| e.unavailable(&opts.ca_url))?;
    let pems: Vec<String> = if status.is_success() {
        let v: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        v["ca"].as_str().map(str::to_owned).into_iter().collect()
    } else if status == StatusCode::NOT_FOUND {
        // No root with that fingerprint: name the ones the CA has.
        let url = format!("{}/roots", opts.ca_url);
        let (_, bytes) = http
            .call(Method::GET, &url, None)
            .await
            .map_err(|e| e.unavailable(&opts.ca_url))?;
        let v: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        v["crts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    } else {
        return Err(UpstreamError::Unavailable {
            context: format!(
                "step-ca at {} answered GET /root/… with {status}: {}",
                opts.ca_url,
                error_message(status, &bytes)
            ),
            source: None,
        });
    };
    let roots: Vec<Vec<u8>> = pems
        .iter()
        .filter_map(|p| pem::parse(p).ok())
        .map(pem::Pem::into_contents)
        .collect();
    if let Some(root) = roots.iter().find(|r| sha256_hex(r) == opts.fingerprint) {
        return Ok(root.clone());
    }
    let found: Vec<String> = roots.iter().map(|r| sha256_hex(r)).collect();
    Err(internal(
        format!(
            "the CA's root has fingerprint {}, not the configured {} (certificateAuthorityFingerprint)",
            if found.is_empty() {
                "(none returned)".to_owned()
            } else {
                found.join(" or ")
            },
            opts.fingerprint
        ),
        None,
    ))
}

/// The JWK provisioner's encrypted key from `GET /provisioners`, decrypted.
async fn download_jwk(
    http: &Https,
    opts: &StepCaOptions,
    password: Option<&[u8]>,
) -> Result<(TokenKey, String), UpstreamError> {
    let mut cursor = String::new();
    for _ in 0..100 {
        let url = format!("{}/provisioners?cursor={cursor}", opts.ca_url);
        let (status, bytes) = http
            .call(Method::GET, &url, None)
            .await
            .map_err(|e| e.unavailable(&opts.ca_url))?;
        if !status.is_success() {
            return Err(UpstreamError::Unavailable {
                context: format!("step-ca answered GET /provisioners with {status}"),
                source: None,
            });
        }
        let page: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        let found = page["provisioners"].as_array().and_then(|list| {
            list.iter().find(|p| {
                p["type"].as_str() == Some("JWK") && p["name"].as_str() == Some(&opts.provisioner)
            })
        });
        if let Some(p) = found {
            let Some(encrypted) = p["encryptedKey"].as_str() else {
                return Err(internal(
                    format!(
                        "the JWK provisioner {:?} has no encrypted key at the CA; give certificateIssuer.key",
                        opts.provisioner
                    ),
                    None,
                ));
            };
            let password = password
                .ok_or_else(|| key_error(&KeyError::NeedPassword, "the provisioner key"))?;
            let jwk = keys::decrypt_jwe(encrypted, password).map_err(|e| match e {
                KeyError::WrongPassword => internal(
                    "cannot decrypt the provisioner key: wrong password?".into(),
                    None,
                ),
                other => key_error(&other, "the provisioner key"),
            })?;
            let (key, inner_kid) =
                TokenKey::from_jwk(&jwk).map_err(|e| key_error(&e, "the provisioner key"))?;
            let kid = match (p["key"]["kid"].as_str(), inner_kid) {
                (Some(k), _) => k.to_owned(),
                (None, Some(k)) => k,
                (None, None) => key
                    .thumbprint()
                    .map_err(|e| key_error(&e, "the provisioner key"))?,
            };
            return Ok((key, kid));
        }
        cursor = page["nextCursor"].as_str().unwrap_or_default().to_owned();
        if cursor.is_empty() {
            break;
        }
    }
    Err(internal(
        format!(
            "step-ca at {} has no JWK provisioner named {:?}",
            opts.ca_url, opts.provisioner
        ),
        None,
    ))
}

/// Modification times of the x5c certificate and key files.
fn x5c_stamp(opts: &StepCaOptions) -> Option<(SystemTime, SystemTime)> {
    let mtime = |p: &Option<PathBuf>| {
        p.as_deref()
            .and_then(|p| std::fs::metadata(p).ok())
            .and_then(|m| m.modified().ok())
    };
    Some((mtime(&opts.crt)?, mtime(&opts.key)?))
}

/// Reads the x5c chain and key and checks that they belong together.
fn load_x5c(opts: &StepCaOptions) -> Result<X5cCredential, UpstreamError> {
    let (Some(crt), Some(key_path)) = (&opts.crt, &opts.key) else {
        return Err(internal("x5c needs crt and key".into(), None));
    };
    let stamp = x5c_stamp(opts);
    let password = opts.password.as_ref().map(|p| p.expose().as_bytes());
    let (key, _) = TokenKey::from_file(key_path, password)
        .map_err(|e| key_error(&e, &key_path.display().to_string()))?;
    let text = read(crt)?;
    let chain: Vec<Vec<u8>> = pem::parse_many(&text)
        .map_err(|e| internal(format!("{} is not PEM", crt.display()), Some(Box::new(e))))?
        .into_iter()
        .filter(|b| b.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect();
    let Some(leaf_der) = chain.first() else {
        return Err(internal(
            format!("{} holds no certificate", crt.display()),
            None,
        ));
    };
    let (_, leaf) = X509Certificate::from_der(leaf_der).map_err(|e| {
        internal(
            format!("the certificate in {} does not parse", crt.display()),
            Some(Box::new(e)),
        )
    })?;
    if leaf.public_key().subject_public_key.data.as_ref() != key.public_key_bytes() {
        return Err(internal(
            format!(
                "the key in {} does not belong to the first certificate in {}",
                key_path.display(),
                crt.display()
            ),
            None,
        ));
    }
    let kid = key.thumbprint().map_err(|e| key_error(&e, "the x5c key"))?;
    Ok(X5cCredential {
        kid,
        chain: chain.iter().map(|d| B64.encode(d)).collect(),
        not_after: leaf.validity().not_after.to_datetime(),
        key,
        stamp,
    })
}

fn read(path: &Path) -> Result<String, UpstreamError> {
    std::fs::read_to_string(path)
        .map_err(|e| internal(format!("cannot read {}", path.display()), Some(Box::new(e))))
}

fn identifier_value(id: &Identifier) -> String {
    match id {
        Identifier::Dns(n) => n.clone(),
        Identifier::Ip(ip) => ip.to_string(),
    }
}

/// step-ca's `{"status": N, "message": "…"}`, or the status text.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned())
}

fn sha256_hex(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn random_hex(bytes: usize) -> Result<String, UpstreamError> {
    let mut buf = vec![0; bytes];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf)
        .map_err(|_| internal("no randomness".into(), None))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn internal(
    context: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
) -> UpstreamError {
    UpstreamError::Internal { context, source }
}

fn key_error(e: &KeyError, what: &str) -> UpstreamError {
    match e {
        KeyError::WrongPassword => {
            internal(format!("cannot decrypt {what}: wrong password?"), None)
        }
        other => internal(format!("{what}: {other}"), None),
    }
}
