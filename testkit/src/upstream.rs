//! Test doubles of an upstream CA: a [`Hook`] overrides only the calls a
//! test intercepts; [`Hooked`] puts it in front of a real upstream and
//! passes every other call through.

use std::sync::Arc;

use acmeproxy::upstream::{
    CertificateAuthorityService, Checkpoint, IssuedChain, RevokeRequest, SignRequest, UpstreamError,
};
use async_trait::async_trait;

/// What a test double changes; by default nothing.
#[async_trait]
pub trait Hook: Send + Sync + 'static {
    /// Signing; passed through to `inner` by default.
    async fn create_certificate(
        &self,
        inner: &dyn CertificateAuthorityService,
        req: &SignRequest,
        checkpoint: &dyn Checkpoint,
    ) -> Result<IssuedChain, UpstreamError> {
        inner.create_certificate(req, checkpoint).await
    }

    /// The health check; passed through to `inner` by default.
    async fn health(&self, inner: &dyn CertificateAuthorityService) -> Result<(), UpstreamError> {
        inner.health().await
    }
}

/// `hook` in front of `inner` (the test keeps its own `Arc` of the hook to
/// look inside).
pub struct Hooked<U, H> {
    pub inner: U,
    pub hook: Arc<H>,
}

#[async_trait]
impl<U: CertificateAuthorityService, H: Hook> CertificateAuthorityService for Hooked<U, H> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn create_certificate(
        &self,
        req: &SignRequest,
        checkpoint: &dyn Checkpoint,
    ) -> Result<IssuedChain, UpstreamError> {
        self.hook
            .create_certificate(&self.inner, req, checkpoint)
            .await
    }

    async fn revoke_certificate(&self, req: &RevokeRequest) -> Result<(), UpstreamError> {
        self.inner.revoke_certificate(req).await
    }

    fn roots(&self) -> Vec<Vec<u8>> {
        self.inner.roots()
    }

    async fn health(&self) -> Result<(), UpstreamError> {
        self.hook.health(&self.inner).await
    }
}
