//! Replay-Nonces (RFC 8555 §6.5): issued and redeemed through the [`Store`],
//! so that replicas sharing a store accept each other's nonces and a nonce
//! redeemed anywhere is refused everywhere.
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-6.5>

use std::sync::Arc;

use time::Duration;

use crate::model::{Clock, random_token};
use crate::store::{Store, StoreError};

/// Issues and redeems nonces.
#[derive(Clone)]
pub struct NonceService {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    ttl: Duration,
}

impl NonceService {
    /// A service whose nonces live `ttl`.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, ttl: Duration) -> Self {
        Self { store, clock, ttl }
    }

    /// A fresh nonce: 128 random bits, base64url (RFC 8555 §6.5.1).
    pub async fn issue(&self) -> Result<String, StoreError> {
        let nonce = random_token(16);
        self.store
            .insert_nonce(&nonce, self.clock.now() + self.ttl)
            .await?;
        Ok(nonce)
    }

    /// Redeems a nonce; false if unknown, expired or already used.
    pub async fn redeem(&self, nonce: &str) -> Result<bool, StoreError> {
        if nonce.is_empty() || nonce.len() > 64 {
            return Ok(false);
        }
        self.store.redeem_nonce(nonce, self.clock.now()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FakeClock;
    use crate::store::memory::MemoryStore;

    #[tokio::test]
    async fn nonces_are_single_use_and_expire() {
        let clock = Arc::new(FakeClock::new(time::OffsetDateTime::UNIX_EPOCH));
        let svc = NonceService::new(
            Arc::new(MemoryStore::new()),
            clock.clone(),
            Duration::minutes(5),
        );
        let a = svc.issue().await.unwrap();
        assert!(svc.redeem(&a).await.unwrap());
        assert!(!svc.redeem(&a).await.unwrap());
        let b = svc.issue().await.unwrap();
        clock.advance(Duration::minutes(6));
        assert!(!svc.redeem(&b).await.unwrap());
        assert!(!svc.redeem("made-up").await.unwrap());
    }
}
