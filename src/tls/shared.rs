//! One certificate for every replica on a shared store (docs/ha.md): the
//! obtained certificate and its key are kept in the store (through the
//! [`SharedIdentity`] seam, which `app` implements), obtained and renewed
//! by one replica at a time under a lease, loaded by the others at start
//! and reloaded by them periodically, so a renewal reaches every replica
//! without a restart.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::{Loaded, TlsError, UpstreamError, chain, obtain_with_key};
use crate::acme::Identifier;
use crate::upstream::CertificateAuthorityService;

/// How often a replica looks in the store for a certificate another
/// replica renewed.
pub const RELOAD_EVERY: Duration = Duration::from_secs(60);
/// How often a starting replica looks again while another obtains the
/// certificate.
const WAIT_STEP: Duration = Duration::from_millis(500);

/// A certificate and key as stored, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredIdentity {
    pub chain_pem: String,
    pub key_pem: String,
}

/// Where replicas keep the certificate they share, and the lease that lets
/// one of them obtain or renew it.
#[async_trait]
pub trait SharedIdentity: Send + Sync + 'static {
    /// The stored certificate, if any.
    async fn load(&self) -> Result<Option<StoredIdentity>, TlsError>;
    /// Replaces the stored certificate.
    async fn save(&self, identity: &StoredIdentity) -> Result<(), TlsError>;
    /// Takes the lease to obtain a certificate; false while another
    /// replica holds it.
    async fn lock(&self) -> Result<bool, TlsError>;
    /// Gives the lease back.
    async fn unlock(&self);
}

/// The stored certificate, when it loads and covers `names`.
pub(super) async fn stored(
    shared: &dyn SharedIdentity,
    names: &[Identifier],
) -> Result<Option<Loaded>, TlsError> {
    let Some(s) = shared.load().await? else {
        return Ok(None);
    };
    match Loaded::from_pem(s.chain_pem.as_bytes(), s.key_pem.as_bytes()) {
        Ok(l) if l.covers(names) => Ok(Some(l)),
        Ok(_) => {
            tracing::info!("the stored TLS certificate does not cover dnsNames");
            Ok(None)
        }
        Err(e) => {
            tracing::warn!(error = %chain(&e), "not reusing the stored TLS certificate");
            Ok(None)
        }
    }
}

/// Obtains a certificate under the lease and stores it; `None` when
/// another replica holds the lease.
pub(super) async fn obtain_locked(
    upstream: &dyn CertificateAuthorityService,
    names: &[Identifier],
    dir: &std::path::Path,
    shared: &dyn SharedIdentity,
) -> Result<Option<Loaded>, TlsError> {
    if !shared.lock().await? {
        return Ok(None);
    }
    let result = async {
        // Another replica may have stored a fresh one meanwhile.
        if let Some(l) = stored(shared, names).await?
            && l.renew_at() > OffsetDateTime::now_utc()
        {
            return Ok(l);
        }
        let (loaded, key_pem) = obtain_with_key(upstream, names, dir).await?;
        shared
            .save(&StoredIdentity {
                chain_pem: loaded.chain_pem.clone(),
                key_pem,
            })
            .await?;
        Ok(loaded)
    }
    .await;
    shared.unlock().await;
    result.map(Some)
}

/// At start: the stored certificate while it is short of two thirds of its
/// life; else one obtained under the lease; while another replica holds
/// the lease, the stored one if still valid, or a wait for the holder.
pub(super) async fn start(
    upstream: &dyn CertificateAuthorityService,
    names: &[Identifier],
    dir: &std::path::Path,
    shared: &Arc<dyn SharedIdentity>,
    wait: Option<&CancellationToken>,
) -> Result<Loaded, TlsError> {
    let mut delay = Duration::from_secs(2);
    loop {
        let now = OffsetDateTime::now_utc();
        let current = match stored(shared.as_ref(), names).await? {
            Some(l) if l.renew_at() > now => return Ok(l),
            other => other,
        };
        let pause = match obtain_locked(upstream, names, dir, shared.as_ref()).await {
            Ok(Some(l)) => return Ok(l),
            // Another replica obtains it: serve the stored one while it is
            // valid, else wait for the holder.
            Ok(None) => match current.filter(|l| l.not_after > now) {
                Some(l) => return Ok(l),
                None => WAIT_STEP,
            },
            Err(e) => match current.filter(|l| l.not_after > now) {
                Some(l) => {
                    tracing::warn!(error = %chain(&e), "cannot renew the stored TLS certificate yet; serving it");
                    return Ok(l);
                }
                None if matches!(e, TlsError::Upstream(UpstreamError::Unavailable { .. })) => {
                    tracing::warn!(error = %chain(&e), retry_in_seconds = delay.as_secs(),
                        "the upstream cannot be reached, so the server cannot get its own certificate yet; it waits and retries");
                    let d = delay;
                    delay = (delay * 2).min(Duration::from_secs(60));
                    d
                }
                None => return Err(e),
            },
        };
        let Some(token) = wait else {
            return Err(TlsError::Config(
                "another replica is obtaining the server's certificate".to_owned(),
            ));
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = token.cancelled() => {
                return Err(TlsError::Config(
                    "stopped while waiting for the server's certificate".to_owned(),
                ));
            }
        }
    }
}
