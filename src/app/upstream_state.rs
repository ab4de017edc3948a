//! The store-backed [`UpstreamState`]: upstream secrets and bookkeeping kept
//! in the `Meta` table, so replicas sharing a store share them.

use std::sync::Arc;

use async_trait::async_trait;

use crate::store::{Expect, Op, Store, StoreError, Table};
use crate::upstream::{UpstreamError, UpstreamState};

/// Entries read per scan in [`UpstreamState::list`].
const LIST_PAGE: usize = 256;

/// Upstream state in the RA's store.
pub struct StoreUpstreamState {
    store: Arc<dyn Store>,
    /// Put before every key, so that several upstreams (`authority.upstreams`)
    /// keep apart; empty for the single upstream (and the first of several,
    /// which keeps what the single one stored).
    prefix: String,
}

impl StoreUpstreamState {
    /// Upstream state kept in `store`'s `Meta` table.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            prefix: String::new(),
        }
    }

    /// The state of upstream `name` among several, under `upstream/<name>/`.
    pub fn named(store: Arc<dyn Store>, name: &str) -> Self {
        Self {
            store,
            prefix: format!("upstream/{name}/"),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
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
        self.store
            .get(Table::Meta, &self.key(key))
            .await
            .map_err(internal)
    }

    async fn store_once(&self, key: &str, value: Vec<u8>) -> Result<Vec<u8>, UpstreamError> {
        crate::store::put_once(self.store.as_ref(), Table::Meta, &self.key(key), value)
            .await
            .map_err(internal)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, UpstreamError> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        let full_prefix = self.key(prefix);
        loop {
            let page = self
                .store
                .scan(Table::Meta, &full_prefix, after.as_deref(), LIST_PAGE)
                .await
                .map_err(internal)?;
            let full = page.len() == LIST_PAGE;
            after = page.last().map(|(k, _)| k.clone());
            // Keys come back as the upstream named them, without its prefix.
            all.extend(page.into_iter().filter_map(|(k, v)| {
                k.strip_prefix(self.prefix.as_str())
                    .map(|k| (k.to_owned(), v))
            }));
            if !full || after.is_none() {
                return Ok(all);
            }
        }
    }

    async fn remove(&self, key: &str, value: &[u8]) -> Result<(), UpstreamError> {
        match self
            .store
            .commit(vec![Op::delete(
                Table::Meta,
                self.key(key),
                Expect::Value(value.to_vec()),
            )])
            .await
        {
            Ok(()) | Err(StoreError::Conflict { .. }) => Ok(()),
            Err(e) => Err(internal(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    #[tokio::test]
    async fn list_sees_only_its_own_upstreams_keys_without_the_prefix() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let first = StoreUpstreamState::new(Arc::clone(&store));
        let le = StoreUpstreamState::named(Arc::clone(&store), "le");
        first.store_once("dns01/a", b"1".to_vec()).await.unwrap();
        le.store_once("dns01/b", b"2".to_vec()).await.unwrap();
        le.store_once("other/c", b"3".to_vec()).await.unwrap();

        let mine = le.list("dns01/").await.unwrap();
        assert_eq!(mine, vec![("dns01/b".to_owned(), b"2".to_vec())]);
        // The unprefixed upstream does not see a named one's keys.
        let plain = first.list("dns01/").await.unwrap();
        assert_eq!(plain, vec![("dns01/a".to_owned(), b"1".to_vec())]);
        // What list returns, remove takes.
        le.remove(&mine[0].0, &mine[0].1).await.unwrap();
        assert!(le.list("dns01/").await.unwrap().is_empty());
    }
}
