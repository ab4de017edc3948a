//! The store-backed [`UpstreamState`]: upstream secrets and bookkeeping kept
//! in the `Meta` table, so replicas sharing a store share them.

use std::sync::Arc;

use async_trait::async_trait;

use crate::store::{Expect, Op, Store, StoreError, Table};
use crate::upstream::{UpstreamError, UpstreamState};

/// Upstream state in the RA's store.
pub struct StoreUpstreamState {
    store: Arc<dyn Store>,
}

impl StoreUpstreamState {
    /// Upstream state kept in `store`'s `Meta` table.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }
}

fn internal(e: StoreError) -> UpstreamError {
    UpstreamError::Internal {
        context: "the RA's store failed".into(),
        source: Some(Box::new(e)),
    }
}

#[async_trait]
impl UpstreamState for StoreUpstreamState {
    async fn load(&self, key: &str) -> Result<Option<Vec<u8>>, UpstreamError> {
        self.store.get(Table::Meta, key).await.map_err(internal)
    }

    async fn store_once(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>, UpstreamError> {
        crate::store::put_once(self.store.as_ref(), Table::Meta, key, value)
            .await
            .map_err(internal)
    }

    async fn remove(&self, key: &str, value: &[u8]) -> Result<(), UpstreamError> {
        match self
            .store
            .commit(vec![Op::delete(
                Table::Meta,
                key,
                Expect::Value(value.to_vec()),
            )])
            .await
        {
            Ok(()) | Err(StoreError::Conflict { .. }) => Ok(()),
            Err(e) => Err(internal(e)),
        }
    }
}
