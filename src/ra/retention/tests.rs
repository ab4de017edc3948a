//! The purge on the memory store and on sled, with a fake clock.

use std::sync::Arc;
use std::time::Duration as StdDuration;

use async_trait::async_trait;
use time::Duration;
use time::macros::datetime;

use super::*;
use crate::acme::Identifier;
use crate::acme::types::{AuthorizationStatus, ChallengeStatus, ChallengeType, OrderStatus};
use crate::model::{AccountId, AuthzId, CertId, ChallengeRecord, Clock, FakeClock, OrderId};
use crate::ra::Provisioner;
use crate::store::memory::MemoryStore;
use crate::store::sled::SledStore;
use crate::store::{Op, Store, Table};

const T0: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);

const POLICY: RetentionPolicy = RetentionPolicy {
    interval: StdDuration::from_secs(600),
    order_grace: Duration::days(7),
    certificate_retention: Duration::days(365),
};

struct Fixture {
    ra: Arc<Authority>,
    records: Records,
    clock: Arc<FakeClock>,
    account: AccountId,
    _dir: tempfile::TempDir,
}

fn fixture(store: Arc<dyn Store>, dir: tempfile::TempDir) -> Fixture {
    let records = Records::new(Arc::clone(&store));
    let provisioner = Provisioner {
        name: "acme".to_owned(),
        challenges: vec![ChallengeType::Http01],
        require_eab: false,
        policies: Vec::new(),
        default_lifetime: None,
        min_lifetime: Duration::minutes(5),
        max_lifetime: Duration::days(90),
        terms_of_service: None,
        website: None,
        caa_identities: Vec::new(),
        profiles: Default::default(),
    };
    let (ra, clock) =
        crate::ra::test_support::authority(store, dir.path(), "retention", vec![provisioner], T0);
    Fixture {
        ra,
        records,
        clock,
        account: AccountId::random(),
        _dir: dir,
    }
}

fn memory() -> Fixture {
    fixture(Arc::new(MemoryStore::new()), tempfile::tempdir().unwrap())
}

fn sled() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(&dir.path().join("db")).unwrap();
    fixture(Arc::new(store), dir)
}

impl Fixture {
    /// Stores an order created now (expiring in a day) with two
    /// authorizations.
    async fn order(&self, status: OrderStatus) -> OrderRecord {
        let now = self.clock.now();
        let id = OrderId::random();
        let authzs: Vec<AuthzRecord> = ["a.example", "b.example"]
            .into_iter()
            .map(|name| AuthzRecord {
                id: AuthzId::random(),
                account_id: self.account.clone(),
                order_id: id.clone(),
                identifier: Identifier::Dns(name.to_owned()),
                wildcard: false,
                status: AuthorizationStatus::Pending,
                expires: now + Duration::days(1),
                challenges: vec![ChallengeRecord {
                    kind: ChallengeType::Http01,
                    token: "token".to_owned(),
                    status: ChallengeStatus::Pending,
                    validated: None,
                    error: None,
                }],
            })
            .collect();
        let order = OrderRecord {
            id,
            account_id: self.account.clone(),
            provisioner: "acme".to_owned(),
            status,
            identifiers: authzs.iter().map(|a| a.identifier.clone()).collect(),
            authz_ids: authzs.iter().map(|a| a.id.clone()).collect(),
            not_before: None,
            not_after: None,
            expires: now + Duration::days(1),
            created_at: now,
            error: None,
            certificate_id: None,
            replaces: None,
            profile: None,
        };
        self.records
            .commit(Records::order_insert_ops(Batch::new(), &order, &authzs))
            .await
            .unwrap();
        order
    }

    /// Makes `order` valid with a certificate valid for 90 days from now.
    async fn issue(&self, order: &OrderRecord) -> CertificateRecord {
        let now = self.clock.now();
        let cert = CertificateRecord {
            id: CertId::random(),
            account_id: order.account_id.clone(),
            order_id: order.id.clone(),
            serial_hex: crate::model::random_token(8),
            chain_pem: "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n".to_owned(),
            not_before: now,
            not_after: now + Duration::days(90),
            upstream: "softcas".to_owned(),
            revocation: None,
        };
        let stored = self.stored_order(&order.id).await.unwrap();
        let mut next = stored.value.clone();
        next.status = OrderStatus::Valid;
        next.certificate_id = Some(cert.id.clone());
        let batch = Records::cert_insert_ops(Batch::new(), &cert).replace(&stored, &next);
        self.records.commit(batch).await.unwrap();
        cert
    }

    async fn stored_order(&self, id: &OrderId) -> Option<Versioned<OrderRecord>> {
        self.records.get::<OrderRecord>(id.as_str()).await.unwrap()
    }

    async fn authzs_left(&self, order: &OrderRecord) -> usize {
        let mut n = 0;
        for id in &order.authz_ids {
            if self
                .records
                .get::<AuthzRecord>(id.as_str())
                .await
                .unwrap()
                .is_some()
            {
                n += 1;
            }
        }
        n
    }

    async fn listed(&self, order: &OrderRecord) -> bool {
        self.records
            .account_orders(&self.account, None, 1000)
            .await
            .unwrap()
            .contains(&order.id)
    }

    async fn purge(&self) -> Purged {
        self.ra.purge_expired(&POLICY).await.unwrap()
    }
}

/// Every rule of the purge, in one story, on a given store.
async fn purge_story(f: Fixture) {
    let expired = f.order(OrderStatus::Pending).await;
    let busy = f.order(OrderStatus::Processing).await;
    let job = FinalizeJob {
        order_id: busy.id.clone(),
        csr_der: vec![0x30, 0x00],
        attempts: 3,
        next_attempt_at: T0,
        created_at: T0,
        upstream_state: None,
        last_error: None,
    };
    f.records.commit(Batch::new().insert(&job)).await.unwrap();
    let issued = f.order(OrderStatus::Processing).await;
    let cert = f.issue(&issued).await;

    // Expired, but within the grace: everything stays.
    f.clock.advance(Duration::days(1) + Duration::days(6));
    let late = f.order(OrderStatus::Pending).await;
    assert_eq!(f.purge().await, Purged::default());

    // Past the grace: the expired order goes with its authorizations and
    // its list entry; the one with a job stays; the issued one loses only
    // its authorizations; the one created later stays.
    f.clock.advance(Duration::days(1) + Duration::seconds(1));
    let p = f.purge().await;
    assert_eq!(
        p,
        Purged {
            orders: 1,
            authorizations: 4,
            certificates: 0,
            conflicts: 0
        }
    );
    assert!(f.stored_order(&expired.id).await.is_none());
    assert_eq!(f.authzs_left(&expired).await, 0);
    assert!(!f.listed(&expired).await);
    assert!(f.stored_order(&busy.id).await.is_some());
    assert_eq!(f.authzs_left(&busy).await, 2);
    assert!(f.listed(&busy).await);
    assert!(f.stored_order(&late.id).await.is_some());
    assert_eq!(f.authzs_left(&late).await, 2);

    // The issued order and its certificate stay: the client still reads
    // both, and what revocation and ARI read is there.
    assert_eq!(f.authzs_left(&issued).await, 0);
    assert!(f.listed(&issued).await);
    let shown = f.ra.order(&f.account, issued.id.as_str()).await.unwrap();
    assert_eq!(shown.status, OrderStatus::Valid);
    let downloaded =
        f.ra.certificate(&f.account, cert.id.as_str())
            .await
            .unwrap();
    assert_eq!(downloaded, cert);
    assert!(
        f.records
            .cert_by_serial(&cert.serial_hex)
            .await
            .unwrap()
            .is_some()
    );
    // A second pass finds nothing more.
    assert_eq!(f.purge().await, Purged::default());

    // Past the certificate's notAfter plus the retention: the certificate,
    // its serial index entry and its order go.
    f.clock.advance(Duration::days(90 + 365));
    let p = f.purge().await;
    assert_eq!(
        (p.orders, p.authorizations, p.certificates),
        (2, 2, 1),
        "{p:?}"
    );
    assert!(f.stored_order(&issued.id).await.is_none());
    assert!(!f.listed(&issued).await);
    assert!(
        f.records
            .get::<CertificateRecord>(cert.id.as_str())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        f.records
            .cert_by_serial(&cert.serial_hex)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        f.ra.certificate(&f.account, cert.id.as_str())
            .await
            .is_err()
    );
    // The order with a job is still in progress.
    assert!(f.stored_order(&busy.id).await.is_some());
    assert_eq!(f.records.count::<AuthzRecord>().await.unwrap(), 2);
}

#[tokio::test]
async fn purge_on_the_memory_store() {
    purge_story(memory()).await;
}

#[tokio::test]
async fn purge_on_sled() {
    purge_story(sled()).await;
}

/// A store that lets another writer change an order between the purge's
/// read and its commit, once.
struct Interfering {
    inner: MemoryStore,
    change: std::sync::Mutex<Option<Op>>,
}

#[async_trait]
impl Store for Interfering {
    fn backend_name(&self) -> &'static str {
        "interfering"
    }
    async fn get(&self, table: Table, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(table, key).await
    }
    async fn commit(&self, ops: Vec<Op>) -> Result<(), StoreError> {
        let removes_order = ops
            .iter()
            .any(|op| op.table == Table::Orders && op.value.is_none());
        let change = self.change.lock().unwrap().take_if(|_| removes_order);
        if let Some(change) = change {
            self.inner.commit(vec![change]).await?;
        }
        self.inner.commit(ops).await
    }
    async fn scan(
        &self,
        table: Table,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.scan(table, prefix, after, limit).await
    }
    async fn count(&self, table: Table) -> Result<u64, StoreError> {
        self.inner.count(table).await
    }
    async fn check_writable(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_concurrent_change_wins_and_the_purge_retries_later() {
    let store = Arc::new(Interfering {
        inner: MemoryStore::new(),
        change: std::sync::Mutex::new(None),
    });
    let f = fixture(store.clone(), tempfile::tempdir().unwrap());
    let order = f.order(OrderStatus::Pending).await;
    // Between the purge's read and its commit, another request stores the
    // order's expiry (pending → invalid).
    let mut changed = order.clone();
    changed.status = OrderStatus::Invalid;
    *store.change.lock().unwrap() = Some(Op::put(
        Table::Orders,
        order.id.as_str(),
        serde_json::to_vec(&changed).unwrap(),
        crate::store::Expect::Any,
    ));
    f.clock.advance(Duration::days(9));

    let p = f.purge().await;
    assert_eq!(
        p,
        Purged {
            conflicts: 1,
            ..Purged::default()
        }
    );
    let kept = f.stored_order(&order.id).await.unwrap();
    assert_eq!(kept.value, changed, "the concurrent change is not lost");
    assert_eq!(f.authzs_left(&order).await, 2);

    // The next pass removes the order as changed.
    let p = f.purge().await;
    assert_eq!((p.orders, p.authorizations, p.conflicts), (1, 2, 0));
    assert!(f.stored_order(&order.id).await.is_none());
}

#[tokio::test]
async fn pages_through_more_orders_than_a_page() {
    let f = memory();
    for _ in 0..(PAGE + 10) {
        f.order(OrderStatus::Pending).await;
    }
    f.clock.advance(Duration::days(9));
    let p = f.purge().await;
    assert_eq!(p.orders as usize, PAGE + 10);
    assert_eq!(f.records.count::<OrderRecord>().await.unwrap(), 0);
    assert_eq!(f.records.count::<AuthzRecord>().await.unwrap(), 0);
}
