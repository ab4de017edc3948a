//! A stand-in for HashiCorp Vault over HTTPS, following Vault's documented
//! HTTP API for exactly the endpoints the `vaultcas` upstream calls: AppRole
//! and Kubernetes login, token renew-self and lookup-self, response-wrapping
//! unwrap, PKI `sign/<role>`, revoke and cert/ca_chain, and sys/health. Tokens
//! expire (short TTLs and a max TTL are configurable); an unknown or expired
//! token gets `403 {"errors":["permission denied"]}`. It signs with an rcgen
//! root → intermediate it holds and records roles, names and revoked serials.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, Method, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, CertifiedIssuer, DnType,
    IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use time::OffsetDateTime;

/// How the stand-in behaves.
#[derive(Clone, Debug)]
pub struct StandinOptions {
    pub role_id: String,
    pub secret_id: String,
    pub kubernetes_role: String,
    pub kubernetes_jwt: String,
    /// TTL of tokens from a login, and the increment a renewal grants.
    pub token_ttl: Duration,
    /// No token lives longer than this after its login.
    pub token_max_ttl: Duration,
    pub renewable: bool,
    /// Near the max TTL: `true` caps the renewed lease at what is left (as
    /// Vault documents); `false` refuses a renewal that would pass it.
    pub cap_at_max_ttl: bool,
    /// PKI roles that exist.
    pub roles: Vec<String>,
}

impl Default for StandinOptions {
    fn default() -> Self {
        Self {
            role_id: "7a1c3e0b-role-id".into(),
            secret_id: "5b9d2f44-secret-id".into(),
            kubernetes_role: "acmeproxy".into(),
            kubernetes_jwt: "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhY21lcHJveHkifQ.c2ln".into(),
            token_ttl: Duration::from_secs(3600),
            token_max_ttl: Duration::from_secs(86_400),
            renewable: true,
            cap_at_max_ttl: true,
            roles: ["default", "rsa", "ec", "ed25519"]
                .map(String::from)
                .to_vec(),
        }
    }
}

/// One signing the stand-in did.
#[derive(Clone, Debug)]
pub struct Signed {
    pub role: String,
    pub common_name: Option<String>,
    pub alt_names: Vec<String>,
    pub ip_sans: Vec<String>,
    pub ttl: Option<String>,
    /// Vault's form, `aa:bb:…`.
    pub serial: String,
}

/// What the stand-in counted.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    /// Logins per auth mount (`approle`, `kubernetes`).
    pub logins: HashMap<String, usize>,
    pub failed_logins: usize,
    pub renewals: usize,
    pub refused_renewals: usize,
    pub lookups: usize,
    pub unwraps: usize,
    /// `403 permission denied` answers to sign and revoke.
    pub denied: usize,
}

impl Counters {
    pub fn total_logins(&self) -> usize {
        self.logins.values().sum()
    }
}

struct TokenRec {
    expires: Instant,
    max_expires: Instant,
    issued: Instant,
    mount: String,
}

#[derive(Default)]
struct Records {
    tokens: HashMap<String, TokenRec>,
    wrapped: HashMap<String, String>,
    signed: Vec<Signed>,
    revoked: Vec<String>,
    counters: Counters,
    sealed: bool,
}

struct Shared {
    opts: StandinOptions,
    root: CertifiedIssuer<'static, KeyPair>,
    issuing: CertifiedIssuer<'static, KeyPair>,
    records: Mutex<Records>,
}

/// A running stand-in.
pub struct VaultStandin {
    pub addr: SocketAddr,
    /// The CA certificate (DER) that the stand-in's HTTPS chains to.
    pub tls_ca_der: Vec<u8>,
    shared: Arc<Shared>,
    stop: tokio_util::sync::CancellationToken,
}

impl VaultStandin {
    /// Starts on a free loopback port.
    pub async fn start(opts: StandinOptions) -> Self {
        let root = CertifiedIssuer::self_signed(
            ca_params("Vault Stand-in Root CA"),
            KeyPair::generate().unwrap(),
        )
        .unwrap();
        let issuing = CertifiedIssuer::signed_by(
            ca_params("Vault Stand-in Issuing CA"),
            KeyPair::generate().unwrap(),
            &root,
        )
        .unwrap();
        let tls_ca = CertifiedIssuer::self_signed(
            ca_params("Vault Stand-in TLS CA"),
            KeyPair::generate().unwrap(),
        )
        .unwrap();
        let tls_key = KeyPair::generate().unwrap();
        let tls_leaf = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .unwrap()
            .signed_by(&tls_key, &tls_ca)
            .unwrap();
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![tls_leaf.der().clone(), tls_ca.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(tls_key.serialize_der())),
        )
        .unwrap();
        let shared = Arc::new(Shared {
            opts,
            root,
            issuing,
            records: Mutex::default(),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let token = stop.clone();
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    r = listener.accept() => match r { Ok((tcp, _)) => tcp, Err(_) => continue },
                    () = token.cancelled() => return,
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                        .await;
                });
            }
        });
        Self {
            addr,
            tls_ca_der: tls_ca.der().to_vec(),
            shared,
            stop,
        }
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    /// Hex SHA-256 of the TLS CA certificate, as `certificateAuthorityFingerprint`.
    pub fn tls_fingerprint(&self) -> String {
        ring::digest::digest(&ring::digest::SHA256, &self.tls_ca_der)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The PKI root (DER).
    pub fn pki_root_der(&self) -> Vec<u8> {
        self.shared.root.der().to_vec()
    }

    /// A `vaultcas` authority block pointing at this stand-in.
    pub fn authority_json(&self, config: Value) -> Value {
        json!({
            "type": "vaultcas",
            "certificateAuthority": self.url(),
            "certificateAuthorityFingerprint": self.tls_fingerprint(),
            "config": config,
            "provisioners": [{"type": "ACME", "name": "acme"}],
        })
    }

    /// A response-wrapping token that unwraps (once) to the AppRole secret ID,
    /// as `vault write -wrap-ttl=… -f auth/approle/role/<r>/secret-id` gives.
    pub fn wrap_secret_id(&self) -> String {
        let token = format!("hvs.wrap{}", random_hex(12));
        self.records()
            .wrapped
            .insert(token.clone(), self.shared.opts.secret_id.clone());
        token
    }

    pub fn signed(&self) -> Vec<Signed> {
        self.records().signed.clone()
    }

    pub fn revoked(&self) -> Vec<String> {
        self.records().revoked.clone()
    }

    pub fn counters(&self) -> Counters {
        self.records().counters.clone()
    }

    /// Seals (503 on sys/health) or unseals.
    pub fn set_sealed(&self, sealed: bool) {
        self.records().sealed = sealed;
    }

    /// Revokes every client token (as `vault token revoke` would).
    pub fn revoke_all_tokens(&self) {
        self.records().tokens.clear();
    }

    fn records(&self) -> std::sync::MutexGuard<'_, Records> {
        self.shared.records.lock().unwrap()
    }
}

impl Drop for VaultStandin {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn ca_params(name: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    SystemRandom::new().fill(&mut b).unwrap();
    b
}

fn random_hex(n: usize) -> String {
    random_bytes(n).iter().map(|b| format!("{b:02x}")).collect()
}

fn reply(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn errors(status: StatusCode, msg: &str) -> Response {
    reply(status, json!({"errors": [msg]}))
}

fn denied() -> Response {
    errors(StatusCode::FORBIDDEN, "permission denied")
}

/// Vault's envelope around `data` or `auth`.
fn envelope(data: Value, auth: Value) -> Value {
    json!({
        "request_id": random_hex(8), "lease_id": "", "renewable": false, "lease_duration": 0,
        "data": data, "wrap_info": null, "warnings": null, "auth": auth,
    })
}

async fn handle(
    State(s): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let token = headers
        .get("x-vault-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let path = uri.path().trim_start_matches("/v1/").to_owned();
    let parts: Vec<&str> = path.split('/').collect();
    let now = Instant::now();
    let mut r = s.records.lock().unwrap();
    match (method, parts.as_slice()) {
        (Method::GET, ["sys", "health"]) => {
            let sealed = r.sealed;
            let status = if sealed {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            reply(
                status,
                json!({"initialized": true, "sealed": sealed, "standby": false, "version": "1.17.0-standin"}),
            )
        }
        (Method::POST, ["sys", "wrapping", "unwrap"]) => {
            let wrapping = token
                .or_else(|| body["token"].as_str().map(str::to_owned))
                .unwrap_or_default();
            match r.wrapped.remove(&wrapping) {
                Some(secret_id) => {
                    r.counters.unwraps += 1;
                    reply(
                        StatusCode::OK,
                        envelope(
                            json!({"secret_id": secret_id, "secret_id_accessor": random_hex(8), "secret_id_ttl": 0, "secret_id_num_uses": 0}),
                            Value::Null,
                        ),
                    )
                }
                None => errors(
                    StatusCode::BAD_REQUEST,
                    "wrapping token is not valid or does not exist",
                ),
            }
        }
        // Unauthenticated in Vault, like the other CA reads.
        (Method::GET, ["pki", "cert", "ca_chain"]) => reply(
            StatusCode::OK,
            envelope(
                json!({"certificate": format!("{}{}", s.issuing.pem(), s.root.pem())}),
                Value::Null,
            ),
        ),
        (Method::POST, ["auth", mount, "login"]) => {
            let o = &s.opts;
            let ok = match *mount {
                "approle" => {
                    if body["role_id"] != o.role_id.as_str()
                        || body["secret_id"] != o.secret_id.as_str()
                    {
                        r.counters.failed_logins += 1;
                        return errors(StatusCode::BAD_REQUEST, "invalid role or secret ID");
                    }
                    true
                }
                "kubernetes" => {
                    if body["role"] != o.kubernetes_role.as_str() {
                        r.counters.failed_logins += 1;
                        return errors(
                            StatusCode::BAD_REQUEST,
                            &format!("invalid role name {:?}", body["role"]),
                        );
                    }
                    body["jwt"] == o.kubernetes_jwt.as_str()
                }
                _ => {
                    return errors(
                        StatusCode::NOT_FOUND,
                        &format!("no handler for route \"auth/{mount}/login\""),
                    );
                }
            };
            if !ok {
                r.counters.failed_logins += 1;
                return denied();
            }
            *r.counters.logins.entry((*mount).to_owned()).or_default() += 1;
            let client_token = format!("hvs.{}", random_hex(16));
            let ttl = o.token_ttl.min(o.token_max_ttl);
            r.tokens.insert(
                client_token.clone(),
                TokenRec {
                    expires: now + ttl,
                    max_expires: now + o.token_max_ttl,
                    issued: now,
                    mount: (*mount).to_owned(),
                },
            );
            reply(
                StatusCode::OK,
                envelope(
                    Value::Null,
                    json!({
                        "client_token": client_token, "accessor": random_hex(8), "policies": ["default", "pki-sign"],
                        "token_policies": ["default", "pki-sign"], "metadata": {"role_name": "acmeproxy"},
                        "lease_duration": ttl.as_secs(), "renewable": o.renewable, "entity_id": "", "token_type": "service", "orphan": true,
                    }),
                ),
            )
        }
        (method, rest) => {
            let Some(rec) = token
                .as_ref()
                .and_then(|t| r.tokens.get(t))
                .filter(|t| now < t.expires)
            else {
                if matches!(rest, [_, "sign", _] | [_, "revoke"]) {
                    r.counters.denied += 1;
                }
                return denied();
            };
            let (expires, max_expires, issued, mount) =
                (rec.expires, rec.max_expires, rec.issued, rec.mount.clone());
            let token = token.unwrap_or_default();
            match (method, rest) {
                (Method::POST, ["auth", "token", "renew-self"]) => {
                    let o = &s.opts;
                    let left = max_expires.saturating_duration_since(now);
                    if !o.renewable {
                        r.counters.refused_renewals += 1;
                        return errors(StatusCode::BAD_REQUEST, "lease is not renewable");
                    }
                    if left < Duration::from_secs(1) || (!o.cap_at_max_ttl && o.token_ttl > left) {
                        r.counters.refused_renewals += 1;
                        return errors(StatusCode::BAD_REQUEST, "past the max TTL, cannot renew");
                    }
                    let granted = Duration::from_secs(o.token_ttl.min(left).as_secs());
                    r.counters.renewals += 1;
                    if let Some(t) = r.tokens.get_mut(&token) {
                        t.expires = now + granted;
                    }
                    reply(
                        StatusCode::OK,
                        envelope(
                            Value::Null,
                            json!({
                                "client_token": token, "policies": ["default", "pki-sign"], "lease_duration": granted.as_secs(), "renewable": true,
                            }),
                        ),
                    )
                }
                (Method::GET, ["auth", "token", "lookup-self"]) => {
                    r.counters.lookups += 1;
                    let ttl = expires.saturating_duration_since(now).as_secs();
                    let expire_time =
                        OffsetDateTime::now_utc() + expires.saturating_duration_since(now);
                    reply(
                        StatusCode::OK,
                        envelope(
                            json!({
                                "accessor": random_hex(8), "creation_time": (OffsetDateTime::now_utc() - now.duration_since(issued)).unix_timestamp(),
                                "creation_ttl": s.opts.token_ttl.as_secs(), "display_name": format!("{mount}-acmeproxy"),
                                "expire_time": expire_time.format(&time::format_description::well_known::Rfc3339).unwrap(),
                                "explicit_max_ttl": 0, "id": token, "meta": {"role_name": "acmeproxy"}, "num_uses": 0, "orphan": true,
                                "path": format!("auth/{mount}/login"), "policies": ["default", "pki-sign"], "renewable": s.opts.renewable,
                                "ttl": ttl, "type": "service",
                            }),
                            Value::Null,
                        ),
                    )
                }
                (Method::POST, ["pki", "sign", role]) => sign(&s, &mut r, role, &body),
                (Method::POST, ["pki", "revoke"]) => {
                    let serial = body["serial_number"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    if !r.signed.iter().any(|c| c.serial == serial) {
                        return errors(
                            StatusCode::BAD_REQUEST,
                            &format!("certificate with serial {serial} not found"),
                        );
                    }
                    r.revoked.push(serial);
                    let t = OffsetDateTime::now_utc();
                    reply(
                        StatusCode::OK,
                        envelope(
                            json!({"revocation_time": t.unix_timestamp(), "revocation_time_rfc3339": t.format(&time::format_description::well_known::Rfc3339).unwrap()}),
                            Value::Null,
                        ),
                    )
                }
                _ => errors(
                    StatusCode::NOT_FOUND,
                    &format!("no handler for route \"{path}\""),
                ),
            }
        }
    }
}

/// `POST /v1/pki/sign/<role>`: the names come from the request (as with a
/// role that does not use the CSR's), the key from the CSR.
fn sign(s: &Shared, r: &mut Records, role: &str, body: &Value) -> Response {
    if !s.opts.roles.iter().any(|x| x == role) {
        return errors(StatusCode::BAD_REQUEST, &format!("unknown role: {role}"));
    }
    let Some(csr) = body["csr"]
        .as_str()
        .and_then(|p| pem::parse(p).ok())
        .and_then(|p| {
            CertificateSigningRequestParams::from_der(&p.contents().to_vec().into()).ok()
        })
    else {
        return errors(
            StatusCode::BAD_REQUEST,
            "certificate request could not be parsed",
        );
    };
    let list = |k: &str| -> Vec<String> {
        body[k]
            .as_str()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let common_name = body["common_name"].as_str().map(str::to_owned);
    let alt_names = list("alt_names");
    let ip_sans = list("ip_sans");
    if let Some(bad) = common_name
        .iter()
        .chain(&alt_names)
        .find(|n| n.ends_with(".forbidden.test"))
    {
        return errors(
            StatusCode::BAD_REQUEST,
            &format!("subject alternative name {bad} not allowed by this role"),
        );
    }
    let ttl = body["ttl"].as_str().map(str::to_owned);
    let secs = ttl.as_deref().map_or(72 * 3600, |t| {
        t.trim_end_matches('s').parse::<i64>().unwrap_or(72 * 3600)
    });
    let mut serial = random_bytes(16);
    serial[0] = (serial[0] & 0x7f).max(1);
    let mut params = CertificateParams::default();
    if let Some(cn) = &common_name {
        params
            .distinguished_name
            .push(DnType::CommonName, cn.as_str());
    }
    let mut sans: Vec<String> = common_name.iter().cloned().collect();
    sans.extend(alt_names.iter().cloned());
    sans.dedup();
    for n in &sans {
        params
            .subject_alt_names
            .push(SanType::DnsName(n.as_str().try_into().unwrap()));
    }
    for ip in &ip_sans {
        params
            .subject_alt_names
            .push(SanType::IpAddress(ip.parse().unwrap()));
    }
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::seconds(secs);
    params.serial_number = Some(serial.clone().into());
    params.use_authority_key_identifier_extension = true;
    let cert = CertificateSigningRequestParams {
        params,
        public_key: csr.public_key,
    }
    .signed_by(&s.issuing)
    .unwrap();
    let serial_text = serial
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    r.signed.push(Signed {
        role: role.to_owned(),
        common_name,
        alt_names,
        ip_sans,
        ttl,
        serial: serial_text.clone(),
    });
    reply(
        StatusCode::OK,
        envelope(
            json!({
                "certificate": cert.pem(), "issuing_ca": s.issuing.pem(),
                "ca_chain": [s.issuing.pem(), s.root.pem()], "serial_number": serial_text,
                "expiration": (now + time::Duration::seconds(secs)).unix_timestamp(),
            }),
            Value::Null,
        ),
    )
}
