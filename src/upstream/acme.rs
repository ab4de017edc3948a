//! externalcas: an external ACME CA with External Account Binding (Sectigo /
//! InCommon, ZeroSSL, another acmeproxy), through instant-acme.
//!
//! One upstream account is registered (with EAB) and its credentials kept in
//! the RA's store, reused across requests, restarts and replicas. Each client
//! order becomes one upstream order whose URL is saved with the finalize job
//! (through [`Checkpoint`]) before the upstream finalize, so a crash, restart
//! or slow upstream resumes that same order and never issues twice.
//!
//! Upstreams that validate every name themselves get their pending
//! authorizations answered with dns-01 by [`super::dns01`] when
//! `upstream_challenge` is configured; the records it publishes are part of
//! the same checkpoint.
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-7.3.4>

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse,
    CertificateIdentifier, ChallengeType, ExternalAccountKey, HttpClient, NewAccount, NewOrder,
    Order, OrderStatus, RetryPolicy, RevocationReason, RevocationRequest,
};
use rustls::pki_types::CertificateDer;
use tokio::sync::Mutex;

use super::dns01::{Dns01Solver, Progress};
use super::{
    CertificateAuthorityService, Checkpoint, IssuedChain, RevokeRequest, SignRequest,
    UpstreamError, UpstreamState,
};
use crate::acme::ProblemType;
use crate::acme::types::Identifier;

/// Settings of the external ACME upstream.
#[derive(Clone)]
pub struct AcmeUpstreamOptions {
    /// Directory URL of the upstream CA.
    pub directory_url: String,
    /// Contact e-mail for the upstream account (may be empty).
    pub account_email: String,
    /// EAB key id and MAC key, when the upstream requires EAB.
    pub eab: Option<(String, Vec<u8>)>,
    /// Extra CA certificates (PEM file) trusted for the upstream's HTTPS.
    pub ca_bundle: Option<PathBuf>,
    /// How long one attempt may wait on the upstream (requests and polling).
    pub timeout: Duration,
    /// How pending authorizations are answered with dns-01, if they are.
    pub upstream_challenge: Option<crate::config::UpstreamChallengeSettings>,
}

impl std::fmt::Debug for AcmeUpstreamOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeUpstreamOptions")
            .field("directory_url", &self.directory_url)
            .field("account_email", &self.account_email)
            .field("eab_kid", &self.eab.as_ref().map(|(kid, _)| kid))
            .field("ca_bundle", &self.ca_bundle)
            .field("timeout", &self.timeout)
            .field("upstream_challenge", &self.upstream_challenge)
            .finish()
    }
}

impl From<&crate::config::ExternalCasSettings> for AcmeUpstreamOptions {
    fn from(ext: &crate::config::ExternalCasSettings) -> Self {
        Self {
            directory_url: ext.directory_url.clone(),
            account_email: ext.account_email.clone(),
            eab: ext
                .eab
                .as_ref()
                .map(|e| (e.kid.clone(), e.hmac_key.expose().to_vec())),
            ca_bundle: ext.ca_bundle.clone(),
            timeout: ext.timeout,
            upstream_challenge: ext.upstream_challenge.clone(),
        }
    }
}

/// The external ACME upstream.
pub struct AcmeUpstream {
    opts: AcmeUpstreamOptions,
    http: HttpsClient,
    state: Arc<dyn UpstreamState>,
    account: Mutex<Option<Account>>,
    /// Answers the upstream's dns-01 challenges, when configured.
    dns01: Option<Dns01Solver>,
    /// The top of the last chain the upstream returned; `/roots.pem` takes
    /// it only when it is a self-signed root ([`super::roots`]).
    top_of_chain: std::sync::RwLock<Vec<Vec<u8>>>,
}

impl std::fmt::Debug for AcmeUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeUpstream")
            .field("opts", &self.opts)
            .finish()
    }
}

impl AcmeUpstream {
    /// An upstream with these options; the account is registered (or loaded
    /// from `state`) on first use.
    pub fn new(
        opts: AcmeUpstreamOptions,
        state: Arc<dyn UpstreamState>,
    ) -> Result<Self, UpstreamError> {
        let http = HttpsClient::new(opts.ca_bundle.as_deref(), opts.timeout)?;
        let dns01 = opts
            .upstream_challenge
            .clone()
            .map(|s| Dns01Solver::new(s, Arc::clone(&state), opts.timeout))
            .transpose()?;
        Ok(Self {
            opts,
            http,
            state,
            account: Mutex::new(None),
            dns01,
            top_of_chain: std::sync::RwLock::new(Vec::new()),
        })
    }

    fn state_key(&self) -> String {
        format!("externalcas/account/{}", self.opts.directory_url)
    }

    /// The upstream account: from memory, from the store, or registered now.
    async fn account(&self) -> Result<Account, UpstreamError> {
        let mut guard = self.account.lock().await;
        if let Some(a) = guard.as_ref() {
            return Ok(a.clone());
        }
        let key = self.state_key();
        let account = match self.state.load(&key).await? {
            Some(raw) => self.restore(&raw).await?,
            None => {
                let (account, creds) = self.register().await?;
                let raw = serde_json::to_vec(&creds).map_err(|e| UpstreamError::Internal {
                    context: "encoding the upstream account credentials".into(),
                    source: Some(Box::new(e)),
                })?;
                let kept = self.state.store_once(&key, raw.clone()).await?;
                if kept == raw {
                    account
                } else {
                    // Another replica registered first: use its account.
                    self.restore(&kept).await?
                }
            }
        };
        *guard = Some(account.clone());
        Ok(account)
    }

    async fn restore(&self, raw: &[u8]) -> Result<Account, UpstreamError> {
        let creds: AccountCredentials =
            serde_json::from_slice(raw).map_err(|e| UpstreamError::Internal {
                context: "the stored upstream account credentials are unreadable".into(),
                source: Some(Box::new(e)),
            })?;
        Account::builder_with_http(Box::new(self.http.clone()))
            .from_credentials(creds)
            .await
            .map_err(|e| classify(e, "loading the upstream directory"))
    }

    async fn register(&self) -> Result<(Account, AccountCredentials), UpstreamError> {
        let contact = (!self.opts.account_email.is_empty())
            .then(|| format!("mailto:{}", self.opts.account_email));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let eab = self
            .opts
            .eab
            .as_ref()
            .map(|(kid, key)| ExternalAccountKey::new(kid.clone(), key));
        let result = Account::builder_with_http(Box::new(self.http.clone()))
            .create(
                &NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.opts.directory_url.clone(),
                eab.as_ref(),
            )
            .await
            .map_err(|e| classify(e, "registering the upstream account"))?;
        tracing::info!(upstream = %self.opts.directory_url, "registered the upstream ACME account");
        Ok(result)
    }

    /// Forgets the account `refused` (the upstream no longer knows it); the
    /// next call registers a new one. Only that account: when several jobs
    /// are refused at once, the first registers a new account and the
    /// others must not forget that one too (the orders it created would be
    /// left to an account no longer used, and resuming them would order
    /// the same certificate again).
    async fn forget_account(&self, refused: &str) {
        let key = self.state_key();
        let mut guard = self.account.lock().await;
        match guard.as_ref() {
            Some(current) if current.id() != refused => return,
            _ => *guard = None,
        }
        if let Ok(Some(raw)) = self.state.load(&key).await {
            if stored_account_id(&raw).as_deref() != Some(refused) {
                return;
            }
            if let Err(e) = self.state.remove(&key, &raw).await {
                tracing::warn!(error = %e, "could not forget the upstream account");
            }
        }
    }

    async fn run_order(
        &self,
        account: &Account,
        req: &SignRequest,
        checkpoint: &dyn Checkpoint,
    ) -> Result<IssuedChain, UpstreamError> {
        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(self.opts.timeout);
        let mut progress = req
            .resume
            .as_deref()
            .map(Progress::parse)
            .transpose()?
            .unwrap_or_default();
        let resumed = if progress.order.is_empty() {
            None
        } else {
            let url = progress.order.clone();
            tracing::info!(order = %url, "resuming the upstream order");
            match account.order(url.clone()).await {
                Ok(order) => Some(order),
                Err(e) => match classify(e, "fetching the upstream order") {
                    // The upstream no longer has that order (it lost its
                    // state, or the order belongs to a replaced account):
                    // nothing was issued for it, so start a new one.
                    UpstreamError::Rejected { kind, detail }
                        if kind != ProblemType::AccountDoesNotExist =>
                    {
                        tracing::warn!(order = %url, %detail, "the upstream order is gone; creating a new one");
                        None
                    }
                    other => return Err(other),
                },
            }
        };
        let mut order = match resumed {
            Some(order) => order,
            None => {
                let ids: Vec<instant_acme::Identifier> =
                    req.identifiers.iter().map(to_acme_identifier).collect();
                // RFC 9773 §5: the certificate the client replaces is one the
                // upstream issued, so its ARI id means the same upstream.
                let replaces_json = req
                    .replaces
                    .as_ref()
                    .map(|r| serde_json::Value::String(r.clone()).to_string());
                let replaces = replaces_json
                    .as_deref()
                    .and_then(|j| serde_json::from_str::<CertificateIdentifier<'_>>(j).ok());
                let profile = req.profile.as_deref();
                if let Some(p) = profile {
                    offered(account, p)?;
                }
                let plain = new_order(&ids, profile);
                let result = match replaces {
                    Some(r) => match account
                        .new_order(&new_order(&ids, profile).replaces(r))
                        .await
                    {
                        // An upstream without ARI: order without `replaces`.
                        Err(instant_acme::Error::Unsupported(_)) => account.new_order(&plain).await,
                        other => other,
                    },
                    None => account.new_order(&plain).await,
                };
                let order = result.map_err(|e| classify(e, "creating the upstream order"))?;
                tracing::info!(order = %order.url(), "created the upstream order");
                // Before anything irreversible: remember which order this is.
                progress.order = order.url().to_owned();
                checkpoint.save(&progress.encode()).await?;
                order
            }
        };
        // Records an earlier attempt published (it crashed, or could not
        // remove them) go now unless this attempt answers the same challenges.
        if !progress.dns01.is_empty() && order.state().status != OrderStatus::Pending {
            match &self.dns01 {
                Some(solver) => solver.remove_leftovers(&mut progress, checkpoint).await?,
                None => tracing::warn!(
                    records = ?progress.dns01,
                    "dns-01 records of an earlier attempt remain, and upstream_challenge is no longer configured to remove them"
                ),
            }
        }
        loop {
            let status = order.state().status;
            match status {
                OrderStatus::Pending => match &self.dns01 {
                    Some(solver) => {
                        solver
                            .answer(&mut order, &mut progress, checkpoint, &retry)
                            .await?;
                    }
                    None => {
                        answer_authorizations(&mut order).await?;
                        order
                            .poll_ready(&retry)
                            .await
                            .map_err(|e| classify(e, "waiting for the upstream authorizations"))?;
                    }
                },
                OrderStatus::Ready => {
                    order
                        .finalize_csr(&req.csr_der)
                        .await
                        .map_err(|e| classify(e, "finalizing the upstream order"))?;
                }
                OrderStatus::Processing | OrderStatus::Valid => {
                    let pem = order
                        .poll_certificate(&retry)
                        .await
                        .map_err(|e| classify(e, "downloading the upstream certificate"))?;
                    return self.chain_from_pem(&pem);
                }
                OrderStatus::Invalid => {
                    let p = order.state().error.clone();
                    return Err(rejected_from(p.as_ref(), "the upstream order is invalid"));
                }
            }
        }
    }

    fn chain_from_pem(&self, pem: &str) -> Result<IssuedChain, UpstreamError> {
        let certificates: Vec<Vec<u8>> = ::pem::parse_many(pem)
            .map_err(|e| UpstreamError::Unavailable {
                context: "the upstream returned an unreadable certificate chain".into(),
                source: Some(Box::new(e)),
            })?
            .into_iter()
            .filter(|p| p.tag() == "CERTIFICATE")
            .map(|p| p.contents().to_vec())
            .collect();
        if certificates.is_empty() {
            return Err(UpstreamError::Unavailable {
                context: "the upstream returned no certificate".into(),
                source: None,
            });
        }
        if certificates.len() > 1 {
            if let (Ok(mut top), Some(last)) = (self.top_of_chain.write(), certificates.last()) {
                *top = vec![last.clone()];
            }
        }
        Ok(IssuedChain { certificates })
    }
}

/// The account URL in stored credentials (instant-acme's
/// `AccountCredentials`, whose fields are private, serialises it as `id`).
fn stored_account_id(raw: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(raw).ok()?;
    value.get("id")?.as_str().map(str::to_owned)
}

#[async_trait]
impl CertificateAuthorityService for AcmeUpstream {
    fn name(&self) -> &'static str {
        "externalcas"
    }

    async fn create_certificate(
        &self,
        req: &SignRequest,
        checkpoint: &dyn Checkpoint,
    ) -> Result<IssuedChain, UpstreamError> {
        let account = self.account().await?;
        match self.run_order(&account, req, checkpoint).await {
            Err(UpstreamError::Rejected {
                kind: ProblemType::AccountDoesNotExist | ProblemType::Unauthorized,
                detail,
            }) if detail.contains("account") => {
                // The upstream no longer knows our account: register again and
                // let the worker retry.
                tracing::warn!(%detail, "the upstream refused the account; registering again");
                self.forget_account(account.id()).await;
                Err(UpstreamError::Unavailable {
                    context: format!("upstream account refused ({detail}); registered again"),
                    source: None,
                })
            }
            other => other,
        }
    }

    async fn revoke_certificate(&self, req: &RevokeRequest) -> Result<(), UpstreamError> {
        let account = self.account().await?;
        let cert = CertificateDer::from(req.certificate_der.clone());
        account
            .revoke(&RevocationRequest {
                certificate: &cert,
                reason: revocation_reason(req.reason),
            })
            .await
            .map_err(|e| classify(e, "revoking at the upstream"))
    }

    async fn renewal_window(
        &self,
        certificate_der: &[u8],
    ) -> Result<Option<(time::OffsetDateTime, time::OffsetDateTime)>, UpstreamError> {
        let account = self.account().await?;
        let cert = CertificateDer::from(certificate_der.to_vec());
        let Ok(id) = CertificateIdentifier::try_from(&cert) else {
            return Ok(None);
        };
        match account.renewal_info(&id).await {
            Ok((info, _retry)) => Ok(Some((
                info.suggested_window.start,
                info.suggested_window.end,
            ))),
            Err(instant_acme::Error::Unsupported(_)) => Ok(None),
            Err(e) => {
                tracing::warn!(error = %e, "the upstream's renewal information is unavailable; computing a window");
                Ok(None)
            }
        }
    }

    fn roots(&self) -> Vec<Vec<u8>> {
        self.top_of_chain
            .read()
            .map(|t| t.clone())
            .unwrap_or_default()
    }

    async fn health(&self) -> Result<(), UpstreamError> {
        let req = http::Request::builder()
            .uri(&self.opts.directory_url)
            .body(BodyWrapper::<Bytes>::default())
            .map_err(|e| UpstreamError::Internal {
                context: "building the health request".into(),
                source: Some(Box::new(e)),
            })?;
        let rsp = self
            .http
            .request(req)
            .await
            .map_err(|e| classify(e, "reading the upstream directory"))?;
        if rsp.parts.status.is_success() {
            Ok(())
        } else {
            Err(UpstreamError::Unavailable {
                context: format!("the upstream directory answered {}", rsp.parts.status),
                source: None,
            })
        }
    }
}

/// Answers every pending authorization. Upstreams used by an RA usually have
/// the organisation's domains pre-validated, so authorizations arrive valid;
/// where one is pending, the first offered challenge is marked ready, which
/// an upstream that validates the organisation (not the host) accepts.
async fn answer_authorizations(order: &mut Order) -> Result<(), UpstreamError> {
    let mut authzs = order.authorizations();
    while let Some(a) = authzs.next().await {
        let mut a = a.map_err(|e| classify(e, "reading an upstream authorization"))?;
        if a.status != AuthorizationStatus::Pending {
            continue;
        }
        let kind = [
            ChallengeType::Http01,
            ChallengeType::Dns01,
            ChallengeType::TlsAlpn01,
        ]
        .into_iter()
        .find(|k| a.challenges.iter().any(|c| &c.r#type == k));
        let Some(kind) = kind else {
            return Err(UpstreamError::Rejected {
                kind: ProblemType::RejectedIdentifier,
                detail: "the upstream offers no challenge the RA can answer".into(),
            });
        };
        if let Some(mut ch) = a.challenge(kind) {
            ch.set_ready()
                .await
                .map_err(|e| classify(e, "answering an upstream challenge"))?;
        }
    }
    Ok(())
}

/// The upstream newOrder for `ids`, asking for `profile` when given
/// (draft-ietf-acme-profiles).
fn new_order<'a>(ids: &'a [instant_acme::Identifier], profile: Option<&'a str>) -> NewOrder<'a> {
    let order = NewOrder::new(ids);
    match profile {
        Some(p) => order.profile(p),
        None => order,
    }
}

/// Refuses `profile` when the upstream's directory does not offer it (the
/// draft has clients ask only for advertised profiles; an upstream without
/// profiles would silently issue its default instead).
fn offered(account: &Account, profile: &str) -> Result<(), UpstreamError> {
    let names: Vec<&str> = account.profiles().map(|p| p.name).collect();
    if names.contains(&profile) {
        return Ok(());
    }
    let offers = if names.is_empty() {
        "no profiles".to_owned()
    } else {
        let mut names: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
        names.sort();
        names.join(", ")
    };
    Err(UpstreamError::Rejected {
        kind: ProblemType::InvalidProfile,
        detail: format!(
            "the upstream CA does not offer the profile {profile:?} that this order's profile \
             asks of it (its directory offers {offers}); the administrator sets upstreamProfile"
        ),
    })
}

fn to_acme_identifier(id: &Identifier) -> instant_acme::Identifier {
    match id {
        Identifier::Dns(n) => instant_acme::Identifier::Dns(n.clone()),
        Identifier::Ip(ip) => instant_acme::Identifier::Ip(*ip),
    }
}

fn revocation_reason(code: u8) -> Option<RevocationReason> {
    Some(match code {
        0 => RevocationReason::Unspecified,
        1 => RevocationReason::KeyCompromise,
        2 => RevocationReason::CaCompromise,
        3 => RevocationReason::AffiliationChanged,
        4 => RevocationReason::Superseded,
        5 => RevocationReason::CessationOfOperation,
        6 => RevocationReason::CertificateHold,
        8 => RevocationReason::RemoveFromCrl,
        9 => RevocationReason::PrivilegeWithdrawn,
        10 => RevocationReason::AaCompromise,
        _ => return None,
    })
}

/// Sorts an instant-acme error into transient (retry later) and permanent
/// (the client should see why).
pub(super) fn classify(e: instant_acme::Error, context: &str) -> UpstreamError {
    match e {
        instant_acme::Error::Api(p) => {
            let kind = p.r#type.as_deref().and_then(ProblemType::from_urn);
            let transient = p.status.is_some_and(|s| s >= 500)
                || matches!(
                    kind,
                    Some(
                        ProblemType::BadNonce
                            | ProblemType::ServerInternal
                            | ProblemType::RateLimited
                    ) | None
                );
            if transient {
                UpstreamError::Unavailable {
                    context: format!("{context}: {}", problem_text(&p)),
                    source: None,
                }
            } else {
                rejected_from(Some(&p), context)
            }
        }
        instant_acme::Error::Timeout(_) => UpstreamError::Unavailable {
            context: format!("{context}: the upstream did not finish in time"),
            source: None,
        },
        other => UpstreamError::Unavailable {
            context: context.to_owned(),
            source: Some(Box::new(other)),
        },
    }
}

fn rejected_from(p: Option<&instant_acme::Problem>, context: &str) -> UpstreamError {
    let kind = p
        .and_then(|p| p.r#type.as_deref())
        .and_then(ProblemType::from_urn)
        .unwrap_or(ProblemType::Unauthorized);
    let detail = p.map_or_else(|| context.to_owned(), problem_text);
    UpstreamError::Rejected { kind, detail }
}

pub(super) fn problem_text(p: &instant_acme::Problem) -> String {
    let mut s = p.detail.clone().unwrap_or_default();
    for sub in &p.subproblems {
        if let Some(d) = &sub.detail {
            s.push_str("; ");
            s.push_str(d);
        }
    }
    if s.is_empty() {
        s = p.r#type.clone().unwrap_or_else(|| "no detail".into());
    }
    s
}

/// HTTPS client for the upstream: system roots plus an optional bundle, and a
/// timeout on every request.
#[derive(Clone)]
struct HttpsClient {
    inner: HyperClient<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        BodyWrapper<Bytes>,
    >,
    timeout: Duration,
}

impl HttpsClient {
    fn new(bundle: Option<&std::path::Path>, timeout: Duration) -> Result<Self, UpstreamError> {
        let internal = |context: String, e: Option<Box<dyn std::error::Error + Send + Sync>>| {
            UpstreamError::Internal { context, source: e }
        };
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            // A broken system certificate is skipped, as browsers do.
            let _ = roots.add(cert);
        }
        if let Some(path) = bundle {
            let pem = std::fs::read(path).map_err(|e| {
                internal(
                    format!("reading ca_bundle {}", path.display()),
                    Some(Box::new(e)),
                )
            })?;
            let blocks = ::pem::parse_many(&pem).map_err(|e| {
                internal(
                    format!("parsing ca_bundle {}", path.display()),
                    Some(Box::new(e)),
                )
            })?;
            let mut added = 0;
            for b in blocks.into_iter().filter(|b| b.tag() == "CERTIFICATE") {
                roots
                    .add(CertificateDer::from(b.contents().to_vec()))
                    .map_err(|e| {
                        internal(
                            format!("a certificate in {} is unusable", path.display()),
                            Some(Box::new(e)),
                        )
                    })?;
                added += 1;
            }
            if added == 0 {
                return Err(internal(
                    format!("ca_bundle {} holds no certificate", path.display()),
                    None,
                ));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| internal("TLS versions".into(), Some(Box::new(e))))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        Ok(Self {
            inner: HyperClient::builder(TokioExecutor::new()).build(connector),
            timeout,
        })
    }
}

impl HttpClient for HttpsClient {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let fut = HttpClient::request(&self.inner, req);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, fut).await {
                Ok(r) => r,
                Err(_) => Err(instant_acme::Error::Timeout(None)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_new_order_carries_the_profile() {
        let ids = [instant_acme::Identifier::Dns("www.example.org".into())];
        let with = serde_json::to_value(new_order(&ids, Some("shortlived"))).unwrap();
        assert_eq!(with["profile"], "shortlived");
        assert_eq!(with["identifiers"][0]["value"], "www.example.org");
        let without = serde_json::to_value(new_order(&ids, None)).unwrap();
        assert!(without.get("profile").is_none(), "{without}");
    }
}
