#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;

use super::*;
use crate::model::IpNetwork;
use crate::upstream::NoCheckpoint;

/// An upstream that fails (temporarily) while `failing`, saves a
/// checkpoint first when `checkpoints`, and counts its calls.
struct Fake {
    failing: AtomicBool,
    checkpoints: bool,
    calls: AtomicUsize,
    revoked: AtomicUsize,
    resumed: Mutex<Vec<String>>,
}

impl Fake {
    fn new(checkpoints: bool) -> Arc<Self> {
        Arc::new(Self {
            failing: AtomicBool::new(false),
            checkpoints,
            calls: AtomicUsize::new(0),
            revoked: AtomicUsize::new(0),
            resumed: Mutex::new(Vec::new()),
        })
    }
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl CertificateAuthorityService for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }
    async fn create_certificate(
        &self,
        req: &SignRequest,
        checkpoint: &dyn Checkpoint,
    ) -> Result<IssuedChain, UpstreamError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(r) = &req.resume {
            self.resumed.lock().unwrap().push(r.clone());
        }
        if self.checkpoints && req.resume.is_none() {
            checkpoint.save("order-1").await?;
        }
        if self.failing.load(Ordering::SeqCst) {
            return Err(UpstreamError::Unavailable {
                context: "connection refused".into(),
                source: None,
            });
        }
        Ok(IssuedChain {
            certificates: vec![vec![1]],
        })
    }
    async fn revoke_certificate(&self, _req: &RevokeRequest) -> Result<(), UpstreamError> {
        self.revoked.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn roots(&self) -> Vec<Vec<u8>> {
        vec![vec![self.checkpoints as u8]]
    }
    async fn health(&self) -> Result<(), UpstreamError> {
        if self.failing.load(Ordering::SeqCst) {
            Err(UpstreamError::Unavailable {
                context: "down".into(),
                source: None,
            })
        } else {
            Ok(())
        }
    }
}

/// A checkpoint that remembers what was saved.
#[derive(Default)]
struct Saved(Mutex<Option<String>>);

#[async_trait]
impl Checkpoint for Saved {
    async fn save(&self, state: &str) -> Result<(), UpstreamError> {
        *self.0.lock().unwrap() = Some(state.to_owned());
        Ok(())
    }
}

fn route(name: &str, dns: &[&str], ip: &[&str], upstreams: &[&str]) -> RouteSettings {
    RouteSettings {
        name: name.to_owned(),
        dns: dns.iter().map(|s| (*s).to_owned()).collect(),
        ip: ip.iter().map(|s| IpNetwork::parse(s).unwrap()).collect(),
        provisioner: Vec::new(),
        eab_key: Vec::new(),
        upstreams: upstreams.iter().map(|s| (*s).to_owned()).collect(),
    }
}

fn dns(name: &str) -> Identifier {
    Identifier::Dns(name.to_owned())
}

fn req(ids: &[Identifier], resume: Option<&str>) -> SignRequest {
    SignRequest {
        csr_der: Vec::new(),
        csr_verified: false,
        identifiers: ids.to_vec(),
        not_before: None,
        not_after: None,
        resume: resume.map(str::to_owned),
        replaces: None,
        profile: None,
    }
}

/// internal (dns *.internal.test, 10.0.0.0/8) → step; team-web's EAB key →
/// a; everything else → a, then b.
fn router(a: &Arc<Fake>, b: &Arc<Fake>, step: &Arc<Fake>) -> Arc<Routed> {
    let mut web = route("web", &[], &[], &["a"]);
    web.eab_key = vec!["team-web".to_owned()];
    Routed::new(
        vec![
            (
                "a".to_owned(),
                Arc::clone(a) as Arc<dyn CertificateAuthorityService>,
            ),
            (
                "b".to_owned(),
                Arc::clone(b) as Arc<dyn CertificateAuthorityService>,
            ),
            (
                "step".to_owned(),
                Arc::clone(step) as Arc<dyn CertificateAuthorityService>,
            ),
        ],
        vec![
            route("internal", &["*.internal.test"], &["10.0.0.0/8"], &["step"]),
            web,
            route("public", &[], &[], &["a", "b"]),
        ],
        FailoverSettings {
            down_after: 2,
            probe_every: Duration::from_secs(30),
        },
        Arc::new(NoEvents),
    )
}

fn who(eab: Option<&str>) -> Requester {
    Requester {
        provisioner: "acme".to_owned(),
        eab_kid: eab.map(str::to_owned),
    }
}

#[tokio::test]
async fn routes_by_every_identifier_and_refuse_a_mixed_order() {
    let (a, b, step) = (Fake::new(false), Fake::new(false), Fake::new(false));
    let r = router(&a, &b, &step);
    let internal = [
        dns("x.internal.test"),
        dns("*.internal.test"),
        Identifier::Ip("10.1.2.3".parse().unwrap()),
    ];
    let issued = r
        .create_for(&req(&internal, None), &who(None), &NoCheckpoint)
        .await
        .unwrap();
    assert_eq!(issued.upstream, "step");
    let issued = r
        .create_for(
            &req(&[dns("www.example.org")], None),
            &who(None),
            &NoCheckpoint,
        )
        .await
        .unwrap();
    assert_eq!(issued.upstream, "a");
    // "internal.test" itself and look-alikes are not below *.internal.test.
    for name in ["internal.test", "xinternal.test"] {
        let issued = r
            .create_for(&req(&[dns(name)], None), &who(None), &NoCheckpoint)
            .await
            .unwrap();
        assert_eq!(issued.upstream, "a", "{name}");
    }
    // A mixed order falls to the catch-all route here; with only the
    // internal route it is refused, naming the names and the routes.
    let strict = Routed::new(
        vec![(
            "step".to_owned(),
            Arc::clone(&step) as Arc<dyn CertificateAuthorityService>,
        )],
        vec![route("internal", &["*.internal.test"], &[], &["step"])],
        FailoverSettings::default(),
        Arc::new(NoEvents),
    );
    let mixed = [dns("a.internal.test"), dns("www.example.org")];
    let why = strict.check_route(&mixed, &who(None)).unwrap_err();
    assert!(
        why.contains("www.example.org") && why.contains("a.internal.test"),
        "{why}"
    );
    assert!(
        why.contains("\"internal\"") && why.contains("*.internal.test"),
        "{why}"
    );
    match strict
        .create_for(&req(&mixed, None), &who(None), &NoCheckpoint)
        .await
    {
        Err(UpstreamError::Rejected { kind, .. }) => {
            assert_eq!(kind, ProblemType::RejectedIdentifier)
        }
        other => panic!("{other:?}"),
    }
    assert!(strict.check_route(&mixed[..1], &who(None)).is_ok());
}

#[tokio::test]
async fn eab_key_routes_match_the_account() {
    let (a, b, step) = (Fake::new(false), Fake::new(false), Fake::new(false));
    let r = router(&a, &b, &step);
    a.failing.store(true, Ordering::SeqCst);
    // team-web's orders go to a only: a failure is not failed over to b.
    assert!(
        r.create_for(
            &req(&[dns("w.example.org")], None),
            &who(Some("team-web")),
            &NoCheckpoint
        )
        .await
        .is_err()
    );
    assert_eq!(b.calls(), 0);
    // Another key's orders take the public route, and fail over to b.
    let issued = r
        .create_for(
            &req(&[dns("w.example.org")], None),
            &who(Some("other")),
            &NoCheckpoint,
        )
        .await
        .unwrap();
    assert_eq!(issued.upstream, "b");
}

#[tokio::test]
async fn failover_to_the_next_and_back_after_recovery() {
    let (a, b, step) = (Fake::new(false), Fake::new(false), Fake::new(false));
    let r = router(&a, &b, &step);
    let public = [dns("www.example.org")];
    a.failing.store(true, Ordering::SeqCst);
    // Each job tries a, fails, and goes on to b at once; after 2 failures
    // a is marked down and skipped.
    for _ in 0..4 {
        let issued = r
            .create_for(&req(&public, None), &who(None), &NoCheckpoint)
            .await
            .unwrap();
        assert_eq!(issued.upstream, "b");
    }
    assert_eq!(a.calls(), 2, "a is skipped once marked down");
    assert_eq!(r.is_down("a"), Some(true));
    // Not ready: the "web" route has only a, marked down.
    let e = r.health().await.unwrap_err().to_string();
    assert!(e.contains("web") && e.contains("down: a"), "{e}");
    // a recovers: the next probe brings it back, and new jobs return to it.
    a.failing.store(false, Ordering::SeqCst);
    r.probe_all().await;
    assert_eq!(r.is_down("a"), Some(false));
    let issued = r
        .create_for(&req(&public, None), &who(None), &NoCheckpoint)
        .await
        .unwrap();
    assert_eq!(issued.upstream, "a");
    assert!(r.health().await.is_ok());
    // Every upstream of a route down (its probe failed): not ready, naming
    // the route.
    step.failing.store(true, Ordering::SeqCst);
    r.probe_all().await;
    let e = r.health().await.unwrap_err().to_string();
    assert!(e.contains("internal") && e.contains("step"), "{e}");
}

#[tokio::test]
async fn a_checkpointed_job_stays_with_its_upstream() {
    let (a, b, step) = (Fake::new(true), Fake::new(false), Fake::new(false));
    let r = router(&a, &b, &step);
    let public = [dns("www.example.org")];
    a.failing.store(true, Ordering::SeqCst);
    // a saved a checkpoint before failing: no failover (its upstream order
    // would be duplicated at b).
    let saved = Saved::default();
    assert!(
        r.create_for(&req(&public, None), &who(None), &saved)
            .await
            .is_err()
    );
    assert_eq!(b.calls(), 0);
    let state = saved.0.lock().unwrap().clone().unwrap();
    assert_eq!(state, "via:a:order-1");
    // Resumed, it goes to a with a's own state, even while a is marked down.
    r.failed(
        r.member("a").unwrap(),
        &UpstreamError::Unavailable {
            context: "x".into(),
            source: None,
        },
    );
    assert_eq!(r.is_down("a"), Some(true));
    a.failing.store(false, Ordering::SeqCst);
    let issued = r
        .create_for(&req(&public, Some(&state)), &who(None), &saved)
        .await
        .unwrap();
    assert_eq!(issued.upstream, "a");
    assert_eq!(*a.resumed.lock().unwrap(), ["order-1"]);
    assert_eq!(b.calls(), 0);
    // A checkpoint at an upstream no longer configured is refused.
    match r
        .create_for(&req(&public, Some("via:gone:x")), &who(None), &saved)
        .await
    {
        Err(UpstreamError::Rejected { detail, .. }) => assert!(detail.contains("gone"), "{detail}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn revocation_goes_to_the_issuer_and_roots_are_every_upstreams() {
    let (a, b, step) = (Fake::new(true), Fake::new(false), Fake::new(false));
    let r = router(&a, &b, &step);
    let rr = RevokeRequest {
        certificate_der: vec![1],
        serial_hex: "01".into(),
        reason: 0,
    };
    r.revoke_at("b", &rr).await.unwrap();
    r.revoke_at("step", &rr).await.unwrap();
    assert_eq!(
        [
            a.revoked.load(Ordering::SeqCst),
            b.revoked.load(Ordering::SeqCst),
            step.revoked.load(Ordering::SeqCst)
        ],
        [0, 1, 1]
    );
    // A certificate stored before routes (its upstream's type name) went
    // to the first upstream.
    r.revoke_at("fake", &rr).await.unwrap();
    assert_eq!(a.revoked.load(Ordering::SeqCst), 1);
    assert!(r.revoke_at("gone", &rr).await.is_err());
    assert_eq!(r.roots(), vec![vec![1], vec![0]]);
}
