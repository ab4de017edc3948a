//! The upstream seam (step-ca's `cas/apiv1`): every CA that signs for the RA sits
//! behind [`CertificateAuthorityService`]. The RA holds no CA key; only the
//! `softcas` backend, meant for a first run and for tests, keeps one.

pub mod acme;
pub mod dns01;
pub mod roots;
pub mod routed;
pub mod softcas;
pub mod stepca;
pub mod vault;

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::acme::{Identifier, ProblemType};

/// What the RA asks an upstream to sign.
#[derive(Clone, Debug)]
pub struct SignRequest {
    /// The client's CSR, DER, already checked against the order.
    pub csr_der: Vec<u8>,
    /// The RA has verified the CSR's self-signature already: at finalize
    /// (`policy::csr::parse_csr`, before the job holding this CSR was
    /// stored), or it made the CSR itself (its own TLS certificate). An
    /// upstream that signs in-process (softcas) then skips a second ECDSA or
    /// RSA verification; an upstream across the network checks as it always
    /// does.
    pub csr_verified: bool,
    /// The order's identifiers, exactly as validated.
    pub identifiers: Vec<Identifier>,
    pub not_before: Option<OffsetDateTime>,
    pub not_after: Option<OffsetDateTime>,
    /// What the upstream saved through [`Checkpoint`] in an earlier attempt
    /// for the same order (for an ACME upstream: its order URL).
    pub resume: Option<String>,
    /// RFC 9773 `replaces`, passed on where the upstream understands it.
    pub replaces: Option<String>,
    /// The profile to ask of the upstream (draft-ietf-acme-profiles): the
    /// order's profile's `upstreamProfile`. Only an ACME upstream takes one;
    /// the others honour the profile's lifetime through `not_after`.
    pub profile: Option<String>,
}

/// A certificate chain from an upstream: DER certificates, leaf first.
#[derive(Clone, Debug)]
pub struct IssuedChain {
    pub certificates: Vec<Vec<u8>>,
}

impl IssuedChain {
    /// The chain as PEM, leaf first.
    pub fn to_pem(&self) -> String {
        self.certificates
            .iter()
            .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der.clone())))
            .collect()
    }
}

/// What the RA asks an upstream to revoke.
#[derive(Clone, Debug)]
pub struct RevokeRequest {
    /// The certificate, DER.
    pub certificate_der: Vec<u8>,
    /// Serial number, lower-case hex.
    pub serial_hex: String,
    /// RFC 5280 §5.3.1 reason code.
    pub reason: u8,
}

/// Who an order is for, as routes between upstreams match it
/// (`authority.routes`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requester {
    /// The provisioner the order came through.
    pub provisioner: String,
    /// The EAB key id the account was bound with, if any.
    pub eab_kid: Option<String>,
}

/// A chain and the upstream that issued it (with several upstreams, the
/// name `authority.upstreams` gives it).
#[derive(Clone, Debug)]
pub struct Issued {
    pub chain: IssuedChain,
    pub upstream: String,
}

/// Lets an upstream persist its progress on one order before a step that must
/// not be repeated, so a crash resumes instead of
/// issuing twice.
#[async_trait]
pub trait Checkpoint: Send + Sync {
    /// Durably stores `state` with the finalize job; it comes back as
    /// [`SignRequest::resume`] on the next attempt.
    async fn save(&self, state: &str) -> Result<(), UpstreamError>;
}

/// A [`Checkpoint`] that keeps nothing, for callers outside the finalize worker
/// (the RA's own TLS certificate).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoCheckpoint;

#[async_trait]
impl Checkpoint for NoCheckpoint {
    async fn save(&self, _state: &str) -> Result<(), UpstreamError> {
        Ok(())
    }
}

/// Small durable key-value state an upstream keeps in the RA's store (the
/// ACME upstream's account credentials), so that replicas sharing a store
/// share it and it survives restarts.
#[async_trait]
pub trait UpstreamState: Send + Sync {
    /// The value under `key`, if any.
    async fn load(&self, key: &str) -> Result<Option<Vec<u8>>, UpstreamError>;
    /// Stores `value` under `key` if nothing is there yet; returns what is
    /// stored afterwards (another replica may have won the race).
    async fn store_once(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>, UpstreamError>;
    /// Removes `key` if it still holds `value`.
    async fn remove(&self, key: &str, value: &[u8]) -> Result<(), UpstreamError>;
    /// Every key starting with `prefix`, with its value (the dns-01
    /// solver's ledger of records to remove).
    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, UpstreamError>;
}

/// Errors from an upstream CA.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream refused the request for good; the client should see why.
    #[error("upstream refused: {detail}")]
    Rejected {
        /// The ACME problem type that best describes the refusal.
        kind: ProblemType,
        /// What the upstream said, safe to show to the client.
        detail: String,
    },
    /// The upstream could not be reached or failed; try again later.
    #[error("upstream unavailable: {context}")]
    Unavailable {
        context: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// Anything else that will not get better by retrying (bad local state,
    /// a broken key file). Logged, not shown to the client.
    #[error("upstream failed: {context}")]
    Internal {
        context: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl UpstreamError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// A CA that signs for the RA (step-ca: `CertificateAuthorityService`).
#[async_trait]
pub trait CertificateAuthorityService: Send + Sync + 'static {
    /// A short name for logs and metrics labels (`softcas`, `externalcas`, …).
    fn name(&self) -> &'static str;

    /// Signs a new certificate for the CSR in `req`.
    async fn create_certificate(
        &self,
        req: &SignRequest,
        checkpoint: &dyn Checkpoint,
    ) -> Result<IssuedChain, UpstreamError>;

    /// Signs a renewal. Most upstreams treat it as a new certificate.
    async fn renew_certificate(
        &self,
        req: &SignRequest,
        checkpoint: &dyn Checkpoint,
    ) -> Result<IssuedChain, UpstreamError> {
        self.create_certificate(req, checkpoint).await
    }

    /// Revokes a certificate the upstream issued.
    async fn revoke_certificate(&self, req: &RevokeRequest) -> Result<(), UpstreamError>;

    /// The root certificates (DER) the upstream chains to, for `/roots.pem`.
    fn roots(&self) -> Vec<Vec<u8>>;

    /// The upstream's suggested renewal window (RFC 9773) for a certificate
    /// it issued, if it offers ARI. `None` lets the RA compute one.
    async fn renewal_window(
        &self,
        _certificate_der: &[u8],
    ) -> Result<Option<(OffsetDateTime, OffsetDateTime)>, UpstreamError> {
        Ok(None)
    }

    /// Whether signing leaves no trace outside the RA, as with a local CA.
    /// Then a finalize job need not be durable before it runs: a crash before
    /// the certificate is stored loses nothing the upstream remembers, and the
    /// client, told nothing yet, finalizes again. Remote upstreams (the
    /// default) always get a durable job first.
    fn signs_locally(&self) -> bool {
        false
    }

    /// Whether the upstream answers now (for `/ready` and the up metric).
    async fn health(&self) -> Result<(), UpstreamError> {
        Ok(())
    }

    /// Whether an order of `identifiers` from `who` has an upstream to
    /// sign it; the refusal says why (several upstreams: no route covers
    /// it). One upstream signs every order.
    fn check_route(&self, _identifiers: &[Identifier], _who: &Requester) -> Result<(), String> {
        Ok(())
    }

    /// [`create_certificate`](Self::create_certificate) for `who`, with the
    /// name of the upstream that signed (several upstreams choose by it).
    async fn create_for(
        &self,
        req: &SignRequest,
        _who: &Requester,
        checkpoint: &dyn Checkpoint,
    ) -> Result<Issued, UpstreamError> {
        let chain = self.create_certificate(req, checkpoint).await?;
        Ok(Issued {
            chain,
            upstream: self.name().to_owned(),
        })
    }

    /// [`revoke_certificate`](Self::revoke_certificate) at `upstream`, the
    /// name stored with the certificate.
    async fn revoke_at(&self, _upstream: &str, req: &RevokeRequest) -> Result<(), UpstreamError> {
        self.revoke_certificate(req).await
    }

    /// [`renewal_window`](Self::renewal_window) from `upstream`, the name
    /// stored with the certificate.
    async fn renewal_window_at(
        &self,
        _upstream: &str,
        certificate_der: &[u8],
    ) -> Result<Option<(OffsetDateTime, OffsetDateTime)>, UpstreamError> {
        self.renewal_window(certificate_der).await
    }

    /// Whether this chooses between several upstreams, which then count
    /// their own calls in the metrics.
    fn is_router(&self) -> bool {
        false
    }
}
