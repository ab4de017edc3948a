//! The store-backed [`SharedIdentity`]: the RA's own certificate and key
//! that replicas on a shared store serve, in the `Meta` table, and the
//! lease under which one replica obtains or renews it (docs/ha.md).

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::model::random_token;
use crate::store::lease::{Acquired, Leases};
use crate::store::{Expect, Op, Store, StoreError, Table};
use crate::tls::{SharedIdentity, StoredIdentity, TlsError};

/// The `Meta` key of the shared certificate.
const KEY: &str = "own_tls";
/// The lease that guards obtaining it.
const LEASE: &str = "own_tls";
/// How long the lease holds: longer than an upstream takes to issue.
const LEASE_TIME: Duration = Duration::minutes(10);

/// The certificate replicas share, in the store.
pub(super) struct StoreIdentity {
    store: Arc<dyn Store>,
    leases: Leases,
}

impl StoreIdentity {
    /// The shared certificate kept in `store`.
    pub(super) fn new(store: Arc<dyn Store>) -> Self {
        let leases = Leases::new(Arc::clone(&store), random_token(12));
        Self { store, leases }
    }
}

/// As stored: the chain and key, PEM.
#[derive(Serialize, Deserialize)]
struct Stored {
    chain_pem: String,
    key_pem: String,
}

fn failed(e: StoreError) -> TlsError {
    TlsError::Config(format!(
        "the store holding the shared certificate failed: {e}"
    ))
}

#[async_trait]
impl SharedIdentity for StoreIdentity {
    async fn load(&self) -> Result<Option<StoredIdentity>, TlsError> {
        let Some(bytes) = self.store.get(Table::Meta, KEY).await.map_err(failed)? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice::<Stored>(&bytes)
            .ok()
            .map(|s| StoredIdentity {
                chain_pem: s.chain_pem,
                key_pem: s.key_pem,
            }))
    }

    async fn save(&self, identity: &StoredIdentity) -> Result<(), TlsError> {
        let value = serde_json::to_vec(&Stored {
            chain_pem: identity.chain_pem.clone(),
            key_pem: identity.key_pem.clone(),
        })
        .map_err(|e| TlsError::Config(format!("encoding the shared certificate: {e}")))?;
        self.store
            .commit(vec![Op::put(Table::Meta, KEY, value, Expect::Any)])
            .await
            .map_err(failed)
    }

    async fn lock(&self) -> Result<bool, TlsError> {
        let now = OffsetDateTime::now_utc();
        match self.leases.acquire(LEASE, now, LEASE_TIME).await {
            Ok(Acquired::Held(_)) => {
                crate::metrics::lease("own_certificate", "taken");
                Ok(true)
            }
            Ok(Acquired::TookOver(_)) => {
                crate::metrics::lease("own_certificate", "taken_over");
                Ok(true)
            }
            Ok(Acquired::Busy { .. }) => {
                crate::metrics::lease("own_certificate", "busy");
                Ok(false)
            }
            Err(e) => Err(failed(e)),
        }
    }

    async fn unlock(&self) {
        if let Err(e) = self.leases.release(LEASE).await {
            tracing::warn!(error = %e, "cannot release the TLS certificate lease; it expires");
        }
    }
}
