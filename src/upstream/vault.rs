//! vaultcas: HashiCorp Vault's PKI secrets engine as the upstream (step-ca's
//! `vaultcas`). The RA logs in with AppRole or Kubernetes auth, signs the
//! client's CSR with `POST /v1/<pki>/sign/<role>` (the role chosen by the
//! CSR's key type) and forwards revocations (RFC 8555 §7.6) to
//! `POST /v1/<pki>/revoke`.
//!
//! Unlike step-ca (smallstep/certificates#1222), the Vault token is kept
//! alive: a background task renews it at two thirds of its TTL, and logs in
//! again when Vault refuses the renewal, the token is not renewable or its
//! max TTL is near. A `403` on a signing request triggers one more login and
//! a retry. An AppRole secret ID given as a response-wrapping token is
//! unwrapped once at start and kept in memory (a wrapping token is single-use).
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-7.4>

mod tls;
mod wire;

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderValue, Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use self::tls::{HttpsClient, https_client};
use self::wire::{
    checked, errors_text, internal, pem_certificates, read_secret_id, self_signed_root,
    vault_error, vault_serial,
};
use super::{
    CertificateAuthorityService, Checkpoint, IssuedChain, RevokeRequest, SignRequest, UpstreamError,
};
use crate::acme::ProblemType;
use crate::config::{Secret, VaultAuth, VaultCasSettings};

/// How long one request to Vault may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read from Vault.
const MAX_BODY: usize = 4 << 20;

/// The Vault PKI upstream.
pub struct VaultCas {
    inner: Arc<Inner>,
    /// Stops the token renewal task when the upstream is dropped.
    _renewal: DropGuard,
}

struct Inner {
    settings: VaultCasSettings,
    http: HttpsClient,
    /// The AppRole secret ID after unwrapping, when it came wrapped.
    unwrapped_secret_id: Option<Secret>,
    token: RwLock<Option<Token>>,
    /// Serialises logins and renewals.
    login_lock: Mutex<()>,
    /// Wakes the renewal task when the token changes.
    changed: Notify,
    /// The top of Vault's CA chain, for `/roots.pem`.
    roots: RwLock<Vec<Vec<u8>>>,
}

/// A Vault client token and its lease.
#[derive(Clone)]
struct Token {
    secret: Secret,
    obtained: Instant,
    /// Zero: the token does not expire.
    lease: Duration,
    renewable: bool,
    /// The lease the login granted; renewals ask for it again.
    login_lease: Duration,
    /// A renewal came back shorter than asked: the max TTL is near.
    exhausted: bool,
    /// Changes at each login (not at renewals).
    generation: u64,
}

impl Token {
    fn expired(&self, now: Instant) -> bool {
        !self.lease.is_zero() && now >= self.obtained + self.lease
    }
}

/// What the renewal task does next.
enum Step {
    Login,
    Renew,
}

impl VaultCas {
    /// Connects to Vault: pins its TLS CA when a fingerprint is configured,
    /// unwraps a wrapped secret ID, logs in (an error names Vault's reason),
    /// reads the CA chain and starts the token renewal task.
    pub async fn connect(settings: VaultCasSettings) -> Result<Self, UpstreamError> {
        let http = https_client(&settings).await?;
        let mut inner = Inner {
            settings,
            http,
            unwrapped_secret_id: None,
            token: RwLock::new(None),
            login_lock: Mutex::new(()),
            changed: Notify::new(),
            roots: RwLock::new(Vec::new()),
        };
        if let VaultAuth::AppRole {
            secret_id,
            wrapped: true,
            ..
        } = &inner.settings.auth
        {
            let wrapping = read_secret_id(secret_id)?;
            inner.unwrapped_secret_id = Some(inner.unwrap_secret_id(&wrapping).await?);
        }
        let inner = Arc::new(inner);
        inner.relogin(None).await?;
        if let Err(e) = inner.fetch_roots().await {
            tracing::warn!(error = %e, "cannot read Vault's CA chain yet; /roots.pem fills at the first issuance");
        }
        let stop = CancellationToken::new();
        tokio::spawn(keep_token_fresh(Arc::clone(&inner), stop.clone()));
        Ok(Self {
            inner,
            _renewal: stop.drop_guard(),
        })
    }
}

impl std::fmt::Debug for VaultCas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.inner.settings;
        f.debug_struct("VaultCas")
            .field("address", &s.address)
            .field("pki_mount_path", &s.pki_mount_path)
            .field("auth_mount_path", &s.auth_mount_path)
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// One request to Vault; the status and the JSON body (`Null` if empty).
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&Secret>,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), UpstreamError> {
        let uri = format!("{}/v1/{path}", self.settings.address);
        let mut req = http::Request::builder()
            .method(method)
            .uri(&uri)
            .header(ACCEPT, "application/json");
        if let Some(t) = token {
            let mut value = HeaderValue::from_str(t.expose())
                .map_err(|e| internal("the Vault token is not a valid header value", e))?;
            value.set_sensitive(true);
            req = req.header("X-Vault-Token", value);
        }
        let payload = match body {
            Some(v) => {
                req = req.header(CONTENT_TYPE, "application/json");
                v.to_string()
            }
            None => String::new(),
        };
        let req = req
            .body(payload)
            .map_err(|e| internal("building a Vault request", e))?;
        let unavailable = |context: String, source: Box<dyn std::error::Error + Send + Sync>| {
            UpstreamError::Unavailable {
                context,
                source: Some(source),
            }
        };
        let exchange = async {
            let rsp = self
                .http
                .request(req)
                .await
                .map_err(|e| unavailable(format!("Vault at {uri} did not answer"), e.into()))?;
            let status = rsp.status();
            let bytes = axum::body::to_bytes(axum::body::Body::new(rsp.into_body()), MAX_BODY)
                .await
                .map_err(|e| unavailable(format!("reading Vault's answer from {uri}"), e.into()))?;
            let json = if bytes.iter().all(u8::is_ascii_whitespace) {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).map_err(|e| {
                    unavailable(
                        format!("Vault's answer from {uri} ({status}) is not JSON"),
                        e.into(),
                    )
                })?
            };
            Ok((status, json))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| UpstreamError::Unavailable {
                context: format!("Vault at {uri} did not answer within {REQUEST_TIMEOUT:?}"),
                source: None,
            })?
    }

    /// A request with the client token; a `403` logs in again and retries once.
    async fn authed(
        &self,
        method: Method,
        path: &str,
        body: &Value,
        what: &str,
    ) -> Result<Value, UpstreamError> {
        let (token, generation) = self.current_token().await?;
        let (status, reply) = self
            .call(method.clone(), path, Some(&token), Some(body))
            .await?;
        if status != StatusCode::FORBIDDEN {
            return checked(status, reply, what);
        }
        tracing::info!(what, reason = %errors_text(&reply, status), "Vault refused the token; logging in again");
        let (token, _) = self.relogin(Some(generation)).await?;
        let (status, reply) = self.call(method, path, Some(&token), Some(body)).await?;
        checked(status, reply, what)
    }

    /// The current token, after a login if there is none or it has expired.
    async fn current_token(&self) -> Result<(Secret, u64), UpstreamError> {
        match self.token_now() {
            Some(t) if !t.expired(Instant::now()) => Ok((t.secret, t.generation)),
            _ => self.relogin(None).await,
        }
    }

    fn token_now(&self) -> Option<Token> {
        self.token
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn install(&self, token: Token) -> (Secret, u64) {
        let out = (token.secret.clone(), token.generation);
        *self.token.write().unwrap_or_else(PoisonError::into_inner) = Some(token);
        self.changed.notify_waiters();
        out
    }

    /// Logs in unless another task already did: `stale` is the generation
    /// Vault refused (`None`: log in unless the token is valid).
    async fn relogin(&self, stale: Option<u64>) -> Result<(Secret, u64), UpstreamError> {
        let _guard = self.login_lock.lock().await;
        if let Some(t) = self.token_now() {
            let fresh = match stale {
                Some(g) => t.generation != g,
                None => !t.expired(Instant::now()),
            };
            if fresh {
                return Ok((t.secret, t.generation));
            }
        }
        let token = self.login().await?;
        Ok(self.install(token))
    }

    async fn login(&self) -> Result<Token, UpstreamError> {
        let s = &self.settings;
        let (method, body) = match &s.auth {
            VaultAuth::AppRole {
                role_id, secret_id, ..
            } => {
                let secret = match &self.unwrapped_secret_id {
                    Some(sid) => sid.clone(),
                    None => read_secret_id(secret_id)?,
                };
                (
                    "AppRole",
                    json!({"role_id": role_id, "secret_id": secret.expose()}),
                )
            }
            VaultAuth::Kubernetes { role, token_path } => {
                let jwt = std::fs::read_to_string(token_path).map_err(|e| {
                    internal(
                        format!(
                            "reading the Kubernetes service account token {}",
                            token_path.display()
                        ),
                        e,
                    )
                })?;
                ("Kubernetes", json!({"role": role, "jwt": jwt.trim()}))
            }
        };
        let path = format!("auth/{}/login", s.auth_mount_path);
        let (status, reply) = self.call(Method::POST, &path, None, Some(&body)).await?;
        let reply = checked(status, reply, &format!("the {method} login at {path}"))?;
        let auth = &reply["auth"];
        let secret = auth["client_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .map(|t| Secret::new(t.to_owned()))
            .ok_or_else(|| UpstreamError::Unavailable {
                context: format!("Vault's answer to the {method} login has no auth.client_token"),
                source: None,
            })?;
        let login_lease = Duration::from_secs(auth["lease_duration"].as_u64().unwrap_or(0));
        let mut token = Token {
            secret,
            obtained: Instant::now(),
            lease: login_lease,
            renewable: auth["renewable"].as_bool().unwrap_or(false),
            login_lease,
            exhausted: false,
            generation: self.token_now().map_or(1, |t| t.generation + 1),
        };
        // lookup-self is authoritative for the TTL (periodic tokens, role caps).
        match self
            .call(
                Method::GET,
                "auth/token/lookup-self",
                Some(&token.secret),
                None,
            )
            .await
        {
            Ok((st, v)) if st.is_success() => {
                if let Some(ttl) = v["data"]["ttl"].as_u64() {
                    token.lease = Duration::from_secs(ttl);
                }
                if let Some(r) = v["data"]["renewable"].as_bool() {
                    token.renewable = r;
                }
            }
            Ok((st, v)) => {
                tracing::debug!(reason = %errors_text(&v, st), "token lookup-self refused; using the login's lease")
            }
            Err(e) => {
                tracing::debug!(error = %e, "token lookup-self failed; using the login's lease")
            }
        }
        tracing::info!(
            auth = method,
            ttl_seconds = token.lease.as_secs(),
            renewable = token.renewable,
            "logged in to Vault"
        );
        Ok(token)
    }

    /// `POST /v1/auth/token/renew-self`; logs in again when Vault refuses.
    async fn renew(&self, generation: u64) -> Result<(), UpstreamError> {
        let _guard = self.login_lock.lock().await;
        let Some(t) = self.token_now().filter(|t| t.generation == generation) else {
            return Ok(()); // a login replaced the token meanwhile
        };
        let body = json!({"increment": format!("{}s", t.login_lease.as_secs())});
        let (status, reply) = self
            .call(
                Method::POST,
                "auth/token/renew-self",
                Some(&t.secret),
                Some(&body),
            )
            .await?;
        if status.is_server_error() {
            return Err(vault_error(status, &reply, "renewing the token"));
        }
        let lease = Duration::from_secs(reply["auth"]["lease_duration"].as_u64().unwrap_or(0));
        if !status.is_success() || lease.is_zero() {
            tracing::info!(reason = %errors_text(&reply, status), "Vault refused to renew the token; logging in again");
            let token = self.login().await?;
            self.install(token);
            return Ok(());
        }
        let exhausted = lease < t.login_lease;
        tracing::debug!(
            ttl_seconds = lease.as_secs(),
            exhausted,
            "renewed the Vault token"
        );
        self.install(Token {
            obtained: Instant::now(),
            lease,
            renewable: reply["auth"]["renewable"].as_bool().unwrap_or(t.renewable),
            exhausted,
            ..t
        });
        Ok(())
    }

    /// When and how the token must be refreshed; `None` if it never expires.
    fn next_step(&self) -> Option<(Instant, Step, u64)> {
        let t = self.token_now()?;
        if t.lease.is_zero() {
            return None;
        }
        let at = t.obtained + t.lease * 2 / 3;
        let step = if t.renewable && !t.exhausted {
            Step::Renew
        } else {
            Step::Login
        };
        Some((at, step, t.generation))
    }

    /// `POST /v1/sys/wrapping/unwrap` with the wrapping token.
    async fn unwrap_secret_id(&self, wrapping: &Secret) -> Result<Secret, UpstreamError> {
        let what = "unwrapping the AppRole secret ID (isWrappingToken)";
        let (status, reply) = self
            .call(Method::POST, "sys/wrapping/unwrap", Some(wrapping), None)
            .await?;
        let reply = checked(status, reply, what)?;
        reply["data"]["secret_id"]
            .as_str()
            .map(|s| Secret::new(s.to_owned()))
            .ok_or_else(|| UpstreamError::Rejected {
                kind: ProblemType::ServerInternal,
                detail: format!("{what}: the wrapped answer has no data.secret_id"),
            })
    }

    /// Reads `GET /v1/<pki>/cert/ca_chain` and keeps its self-signed root.
    async fn fetch_roots(&self) -> Result<(), UpstreamError> {
        let path = format!("{}/cert/ca_chain", self.settings.pki_mount_path);
        let (status, reply) = self.call(Method::GET, &path, None, None).await?;
        let reply = checked(status, reply, "reading the CA chain")?;
        let chain = pem_certificates(&reply["data"]["certificate"]);
        if !self.note_chain(&chain) {
            tracing::warn!(
                path,
                certificates = chain.len(),
                "Vault's CA chain holds no self-signed root, so /roots.pem stays empty; import the \
                 root into the mount with the intermediate (sign the intermediate with \
                 format=pem_bundle, then intermediate/set-signed)"
            );
        }
        Ok(())
    }

    /// Keeps the self-signed root of `chain` (DER, any order) for
    /// `/roots.pem`; whether `chain` had one. An intermediate is never kept:
    /// clients that trust `/roots.pem` need a trust anchor.
    fn note_chain(&self, chain: &[Vec<u8>]) -> bool {
        let Some(root) = self_signed_root(chain) else {
            return false;
        };
        *self.roots.write().unwrap_or_else(PoisonError::into_inner) = vec![root.to_vec()];
        true
    }
}

/// Keeps the token alive until `stop`: renews at two thirds of its TTL, or
/// logs in again when renewal is not possible.
async fn keep_token_fresh(inner: Arc<Inner>, stop: CancellationToken) {
    let mut failures = 0u32;
    loop {
        let changed = inner.changed.notified();
        let Some((at, step, generation)) = inner.next_step() else {
            tokio::select! {
                () = changed => continue,
                () = stop.cancelled() => return,
            }
        };
        tokio::select! {
            () = tokio::time::sleep_until(at) => {}
            () = changed => continue,
            () = stop.cancelled() => return,
        }
        let result = match step {
            Step::Renew => inner.renew(generation).await,
            Step::Login => inner.relogin(Some(generation)).await.map(|_| ()),
        };
        let Err(e) = result else {
            failures = 0;
            continue;
        };
        failures = failures.saturating_add(1);
        // Retry soon while the token still lives; back off once it is gone.
        let left = inner
            .token_now()
            .map(|t| (t.obtained + t.lease).saturating_duration_since(Instant::now()))
            .unwrap_or_default();
        let delay = if left.is_zero() {
            Duration::from_secs(1 << failures.min(5))
        } else {
            (left / 4).clamp(Duration::from_millis(200), Duration::from_secs(30))
        };
        tracing::warn!(error = %e, retry_in_seconds = delay.as_secs(), "keeping the Vault token alive failed");
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => return,
        }
    }
}

#[async_trait]
impl CertificateAuthorityService for VaultCas {
    fn name(&self) -> &'static str {
        "vaultcas"
    }

    async fn create_certificate(
        &self,
        req: &SignRequest,
        _checkpoint: &dyn Checkpoint,
    ) -> Result<IssuedChain, UpstreamError> {
        let s = &self.inner.settings;
        let (role, body) = wire::sign_body(req, s)?;
        let path = format!("{}/sign/{role}", s.pki_mount_path);
        let what = format!("signing with PKI role {role:?}");
        let reply = match self.inner.authed(Method::POST, &path, &body, &what).await {
            Err(e) if wire::requires_common_name(&e) => {
                // IP addresses only, and a role with require_cn=true.
                let Some(body) = wire::with_ip_common_name(&body) else {
                    return Err(e);
                };
                tracing::debug!(
                    role,
                    "the PKI role requires a common name; sending the IP address as one"
                );
                self.inner
                    .authed(Method::POST, &path, &body, &what)
                    .await
                    .map_err(|e| match e {
                        UpstreamError::Rejected { kind, detail } => UpstreamError::Rejected {
                            kind,
                            detail: format!("{detail} ({})", wire::IP_ONLY_HINT),
                        },
                        other => other,
                    })?
            }
            other => other?,
        };
        let signed = wire::issued_chain(&reply["data"], &what)?;
        self.inner.note_chain(&signed.issuers);
        Ok(IssuedChain {
            certificates: signed.served,
        })
    }

    async fn revoke_certificate(&self, req: &RevokeRequest) -> Result<(), UpstreamError> {
        let serial = vault_serial(&req.certificate_der, &req.serial_hex);
        let path = format!("{}/revoke", self.inner.settings.pki_mount_path);
        let what = format!("revoking serial {serial}");
        self.inner
            .authed(
                Method::POST,
                &path,
                &json!({"serial_number": serial}),
                &what,
            )
            .await?;
        Ok(())
    }

    fn roots(&self) -> Vec<Vec<u8>> {
        self.inner
            .roots
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    async fn health(&self) -> Result<(), UpstreamError> {
        let (status, _) = self
            .inner
            .call(
                Method::GET,
                "sys/health?standbyok=true&perfstandbyok=true",
                None,
                None,
            )
            .await?;
        let state = match status.as_u16() {
            200 => return Ok(()),
            429 => "standby",
            472 => "a disaster-recovery secondary",
            473 => "a performance standby",
            501 => "not initialized",
            503 => "sealed",
            _ => "unhealthy",
        };
        Err(UpstreamError::Unavailable {
            context: format!("Vault is {state} ({status})"),
            source: None,
        })
    }
}
