//! Replicas on one shared store, seen from the Authority: a waiting request
//! learns of an outcome another replica stored, and a validation whose
//! replica died is run again once its lease has expired (docs/ha.md).

use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use time::Duration;
use time::macros::datetime;

use super::*;
use crate::acme::Identifier;
use crate::acme::types::{AuthorizationStatus, ChallengeStatus, OrderStatus};
use crate::model::{
    AccountRecord, AuthzId, AuthzRecord, ChallengeRecord, FakeClock, OrderId, OrderRecord,
};
use crate::store::Store;
use crate::store::lease::{Acquired, Leases};
use crate::store::memory::MemoryStore;
use crate::store::records::Batch;

const T0: time::OffsetDateTime = datetime!(2026-01-01 00:00 UTC);

struct Replica {
    ra: Arc<Authority>,
    clock: Arc<FakeClock>,
    _dir: tempfile::TempDir,
}

fn replica(store: &Arc<dyn Store>) -> Replica {
    let dir = tempfile::tempdir().unwrap();
    let (ra, clock) =
        test_support::authority(Arc::clone(store), dir.path(), "replicas", Vec::new(), T0);
    Replica {
        ra,
        clock,
        _dir: dir,
    }
}

fn account() -> AccountRecord {
    test_support::account(T0)
}

/// An order of `account` with one authorization whose http-01 challenge
/// is `challenge`.
async fn order(
    records: &Records,
    account: &AccountRecord,
    status: OrderStatus,
    challenge: ChallengeStatus,
) -> (OrderRecord, AuthzRecord) {
    let id = OrderId::random();
    let authz = AuthzRecord {
        id: AuthzId::random(),
        account_id: account.id.clone(),
        order_id: id.clone(),
        identifier: Identifier::Dns("replica.invalid".to_owned()),
        wildcard: false,
        status: AuthorizationStatus::Pending,
        expires: T0 + Duration::days(1),
        challenges: vec![ChallengeRecord {
            kind: ChallengeType::Http01,
            token: "token".to_owned(),
            status: challenge,
            validated: None,
            error: None,
        }],
    };
    let order = OrderRecord {
        id,
        account_id: account.id.clone(),
        provisioner: "acme".to_owned(),
        status,
        identifiers: vec![authz.identifier.clone()],
        authz_ids: vec![authz.id.clone()],
        not_before: None,
        not_after: None,
        expires: T0 + Duration::days(1),
        created_at: T0,
        error: None,
        certificate_id: None,
        replaces: None,
        profile: None,
    };
    records
        .commit(Records::order_insert_ops(
            Batch::new(),
            &order,
            std::slice::from_ref(&authz),
        ))
        .await
        .unwrap();
    (order, authz)
}

#[tokio::test]
async fn a_waiting_request_learns_of_an_outcome_another_replica_stored() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new_shared());
    let (a, b) = (replica(&store), replica(&store));
    let acct = account();
    let (o, _) = order(
        a.ra.records(),
        &acct,
        OrderStatus::Processing,
        ChallengeStatus::Valid,
    )
    .await;
    // B stores the outcome in 200 ms; nothing is published on A.
    let records = b.ra.records().clone();
    let id = o.id.clone();
    tokio::spawn(async move {
        tokio::time::sleep(StdDuration::from_millis(200)).await;
        let stored = records
            .get::<OrderRecord>(id.as_str())
            .await
            .unwrap()
            .unwrap();
        let mut next = stored.value.clone();
        next.status = OrderStatus::Valid;
        records
            .commit(Batch::new().replace(&stored, &next))
            .await
            .unwrap();
    });
    let started = Instant::now();
    let sub = a.ra.subscribe(Event::Order(o.id.to_string()));
    let ra = &a.ra;
    let seen = ra
        .wait_until(sub, StdDuration::from_secs(5), || async {
            matches!(ra.records.get::<OrderRecord>(o.id.as_str()).await,
                Ok(Some(o)) if o.status != OrderStatus::Processing)
        })
        .await;
    assert!(seen);
    assert!(
        started.elapsed() < StdDuration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

/// Replica B on a shared store, an account, and its order whose one
/// authorization has its http-01 challenge `challenge`, the validation's
/// lease held (taken at T0 for 20 s) by a replica that then died.
struct DeadLease {
    b: Replica,
    acct: AccountRecord,
    order: OrderRecord,
    authz: AuthzRecord,
    dead: Leases,
    name: String,
}

async fn dead_lease(challenge: ChallengeStatus) -> DeadLease {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new_shared());
    let b = replica(&store);
    let acct = account();
    let (order, authz) = order(b.ra.records(), &acct, OrderStatus::Pending, challenge).await;
    let dead = Leases::new(Arc::clone(&store), "dead");
    let name = format!("authz/{}", authz.id);
    assert!(matches!(
        dead.acquire(&name, T0, Duration::seconds(20))
            .await
            .unwrap(),
        Acquired::Held(_)
    ));
    DeadLease {
        b,
        acct,
        order,
        authz,
        dead,
        name,
    }
}

impl DeadLease {
    /// The challenge's stored status.
    async fn status(&self) -> ChallengeStatus {
        let a = self
            .b
            .ra
            .records
            .get::<AuthzRecord>(self.authz.id.as_str())
            .await;
        a.unwrap().unwrap().value.challenges[0].status
    }

    /// Waits (10 s at most, else fails saying `what`) until B has stored an
    /// outcome, and returns it.
    async fn outcome(&self, what: &str) -> ChallengeStatus {
        let started = Instant::now();
        while matches!(
            self.status().await,
            ChallengeStatus::Processing | ChallengeStatus::Pending
        ) {
            assert!(started.elapsed() < StdDuration::from_secs(10), "{what}");
            tokio::time::sleep(StdDuration::from_millis(50)).await;
        }
        self.status().await
    }
}

#[tokio::test]
async fn a_validation_whose_replica_died_runs_again_after_its_lease() {
    let t = dead_lease(ChallengeStatus::Processing).await;
    // While the lease holds, a read on B leaves it alone.
    t.b.ra.resume_stalled(&t.acct, &t.authz);
    tokio::time::sleep(StdDuration::from_millis(300)).await;
    assert_eq!(t.status().await, ChallengeStatus::Processing);
    // Once it has expired, the validation runs again, to an outcome.
    t.b.clock.advance(Duration::seconds(21));
    t.b.ra.resume_stalled(&t.acct, &t.authz);
    assert_eq!(
        t.outcome("still processing").await,
        ChallengeStatus::Invalid
    );
    assert_eq!(
        t.dead.read(&t.name).await.unwrap(),
        None,
        "B released its lease"
    );
}

/// A client that polls the order after answering the challenge (instant-acme
/// does) gets the dead replica's validation run again too, not only one that
/// reads the authorization.
#[tokio::test]
async fn polling_the_order_resumes_a_dead_replicas_validation() {
    let t = dead_lease(ChallengeStatus::Processing).await;
    t.b.clock.advance(Duration::seconds(21));
    let polled =
        t.b.ra
            .polled_order(&t.acct, t.order.id.as_str())
            .await
            .unwrap();
    assert_eq!(polled.status, OrderStatus::Pending);
    assert_eq!(
        t.outcome("polling the order did not resume the validation")
            .await,
        ChallengeStatus::Invalid
    );
}

/// A replica died holding a validation's lease before it stored anything
/// (the challenge still pending). The client's POST, sent again to B, gets
/// `processing`, and B validates once the lease has expired, without any
/// further read by the client.
#[tokio::test]
async fn a_challenge_post_waits_out_a_dead_replicas_lease_and_validates() {
    let t = dead_lease(ChallengeStatus::Pending).await;
    let answered =
        t.b.ra
            .answer_challenge(&t.acct, t.authz.id.as_str(), ChallengeType::Http01)
            .await
            .unwrap();
    assert_eq!(answered.challenges[0].status, ChallengeStatus::Processing);
    t.b.clock.advance(Duration::seconds(21));
    assert_eq!(
        t.outcome("B never validated after the dead replica's lease expired")
            .await,
        ChallengeStatus::Invalid
    );
}
