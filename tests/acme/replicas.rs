//! Replicas on one shared store (docs/ha.md): in-process servers sharing one
//! `MemoryStore::new_shared()`, reached under one public name (as behind a
//! load balancer) with each request sent to a replica of the test's choice.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use acmeproxy::upstream::softcas::{SoftCas, SoftCasOptions};
use acmeproxy::upstream::{
    CertificateAuthorityService, Checkpoint, IssuedChain, SignRequest, UpstreamError,
};
use acmeproxy_testkit as kit;
use async_trait::async_trait;
use kit::TestServer;
use kit::raw::{Key, Raw, csr, dns};
use kit::upstream::{Hook, Hooked};
use serde_json::json;

/// One raw client per replica, all under the public name `localhost` and
/// the replicas' common port.
async fn clients(replicas: &[TestServer]) -> Vec<Raw> {
    let url = replicas[0].public_directory_url();
    let mut out = Vec::new();
    for r in replicas {
        out.push(Raw::connect(&url, r.http_via_public_name()).await);
    }
    out
}

fn short_leases(o: &mut acmeproxy::ra::AuthorityOptions) {
    o.job_lease = time::Duration::seconds(2);
    o.shared_scan_every = Duration::from_millis(300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flow_alternating_between_three_replicas_and_nonces_shared_once() {
    let replicas = TestServer::start_replicas(3, kit::Options::default(), None, |_| {}).await;
    let c = clients(&replicas).await;
    let (a, b, cc) = (&c[0], &c[1], &c[2]);
    let responders = &replicas[0].responders;

    // Every replica builds the same URLs: the public name the client used.
    assert_eq!(a.dir, b.dir);
    assert_eq!(b.dir, cc.dir);

    // newAccount on A, newOrder on B, the challenge on A, finalize on B,
    // the download on C.
    let acct = a.register(Key::es256()).await;
    let (order_url, order) = b.new_order(&acct, &[dns("replica.example")]).await;
    let authz_url = order["authorizations"][0].as_str().unwrap().to_owned();
    let authz = cc.fetch(&acct, &authz_url).await;
    let ch = Raw::challenge(&authz, "http-01");
    Raw::publish(responders, &acct, &authz, &ch);
    a.answer(&acct, &ch).await.ok(200);
    b.poll(&acct, &authz_url, |v| v["status"] != "pending")
        .await;
    let order = cc
        .poll(&acct, &order_url, |v| v["status"] != "pending")
        .await;
    assert_eq!(order["status"], "ready", "{order}");
    let key = rcgen::KeyPair::generate().unwrap();
    b.finalize(&acct, &order, &csr(&["replica.example"], &key))
        .await
        .ok(200);
    let order = a
        .poll(&acct, &order_url, |v| {
            v["status"] != "processing" && v["status"] != "ready"
        })
        .await;
    assert_eq!(order["status"], "valid", "{order}");
    let resp = cc
        .post_kid(&acct, order["certificate"].as_str().unwrap(), None)
        .await;
    assert_eq!(resp.status, 200);
    assert!(
        String::from_utf8(resp.body)
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );

    // A nonce from A is accepted once on B, then refused on A and on C.
    let nonce = a.new_nonce().await;
    let url = acct.kid.clone();
    let header = json!({"alg": "ES256", "nonce": nonce, "url": url, "kid": acct.kid});
    b.post(&url, &header, b"", &acct.key).await.ok(200);
    a.post(&url, &header, b"", &acct.key)
        .await
        .problem(400, "badNonce");
    cc.post(&url, &header, b"", &acct.key)
        .await
        .problem(400, "badNonce");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_serve_one_own_certificate() {
    let replicas = TestServer::start_replicas(2, kit::Options::default(), None, |_| {}).await;
    let root = replicas[0].server.as_ref().unwrap().roots_pem.clone();
    assert_eq!(root, replicas[1].server.as_ref().unwrap().roots_pem);
    let a = kit::crash_support::served_leaf_at(replicas[0].addr, root.as_bytes()).await;
    let b = kit::crash_support::served_leaf_at(replicas[1].addr, root.as_bytes()).await;
    assert_eq!(a, b, "both replicas serve the same certificate");
}

#[tokio::test]
async fn a_host_that_is_not_a_dns_name_is_refused() {
    let ts = TestServer::start().await;
    let raw = Raw::new(&ts).await;
    let resp = ts
        .http()
        .get(ts.url("/acme/acme/directory"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "urn:ietf:params:acme:error:malformed");
    assert!(!body.to_string().contains("evil.example/"), "{body}");
    // The names it has work, with any port (a load balancer's).
    let ok = ts
        .http()
        .get(ts.url("/acme/acme/directory"))
        .header("host", "LOCALHOST:443")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let dir: serde_json::Value = ok.json().await.unwrap();
    assert!(
        dir["newNonce"]
            .as_str()
            .unwrap()
            .starts_with("https://LOCALHOST:443/")
    );
    assert!(raw.url("newNonce").starts_with("https://127.0.0.1:"));
}

/// An upstream that blocks its first order certificate forever (its replica
/// is then stopped, as if it died mid-job), counts calls and checks that no
/// two run at once.
#[derive(Default)]
struct Stalling {
    calls: AtomicUsize,
    running: AtomicUsize,
    overlapped: AtomicUsize,
}

struct Running<'a>(&'a AtomicUsize);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Hook for Stalling {
    async fn create_certificate(
        &self,
        inner: &dyn CertificateAuthorityService,
        req: &SignRequest,
        checkpoint: &dyn Checkpoint,
    ) -> Result<IssuedChain, UpstreamError> {
        let order = req
            .identifiers
            .iter()
            .any(|i| i.to_string().contains("slow.example"));
        if !order {
            return inner.create_certificate(req, checkpoint).await;
        }
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if self.running.fetch_add(1, Ordering::SeqCst) > 0 {
            self.overlapped.fetch_add(1, Ordering::SeqCst);
        }
        let _running = Running(&self.running);
        if n == 0 {
            checkpoint.save("upstream-order-1").await?;
            std::future::pending::<()>().await;
        }
        assert_eq!(req.resume.as_deref(), Some("upstream-order-1"));
        inner.create_certificate(req, checkpoint).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_replicas_job_is_finished_by_another_after_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let softcas = SoftCas::open(SoftCasOptions {
        dir: dir.path().join("softcas"),
        name: "acmeproxy".into(),
        default_lifetime: Duration::from_secs(90 * 86_400),
        sign_delay: Duration::ZERO,
    })
    .unwrap();
    let hook = Arc::new(Stalling::default());
    let upstream: Arc<dyn CertificateAuthorityService> = Arc::new(Hooked {
        inner: softcas,
        hook: Arc::clone(&hook),
    });
    let mut replicas =
        TestServer::start_replicas(2, kit::Options::default(), Some(upstream), short_leases).await;
    let c = clients(&replicas).await;
    let (a, b) = (&c[0], &c[1]);
    let acct = a.register(Key::es256()).await;
    let (order_url, _) = a.new_order(&acct, &[dns("slow.example")]).await;
    let order = a
        .make_ready(&replicas[0].responders, &acct, &order_url, "http-01")
        .await;
    let key = rcgen::KeyPair::generate().unwrap();
    let resp = a
        .finalize(&acct, &order, &csr(&["slow.example"], &key))
        .await;
    assert_eq!(resp.ok(200)["status"], "processing");
    // A claimed the job and is stuck in the upstream; B leaves it alone.
    let started = Instant::now();
    while hook.calls.load(Ordering::SeqCst) == 0 {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        hook.calls.load(Ordering::SeqCst),
        1,
        "B waits for A's lease"
    );
    // A dies (its renewals stop; the job and its checkpoint stay stored).
    replicas[0].stop().await;
    let stopped = Instant::now();
    let order = b
        .poll(&acct, &order_url, |v| v["status"] != "processing")
        .await;
    assert_eq!(order["status"], "valid", "{order}");
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "resumed within the lease and a few seconds: {:?}",
        stopped.elapsed()
    );
    assert_eq!(hook.calls.load(Ordering::SeqCst), 2, "asked once more");
    assert_eq!(
        hook.overlapped.load(Ordering::SeqCst),
        0,
        "never twice at once"
    );
    // The take-over is counted (the registry is this process's, shared by
    // the in-process replicas).
    let metrics = acmeproxy::metrics::render();
    assert!(
        metrics.contains(r#"acmeproxy_leases_total{lease="job",outcome="taken_over"}"#),
        "{metrics}"
    );
}

/// Replicas keep accounts read by `kid` a moment: after a key change on A,
/// B (which holds the account with its old key) accepts the new key at
/// once (a signature its kept key refuses is checked against the stored
/// account), and refuses changes signed with the old key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_changed_on_one_replica_signs_on_another_at_once() {
    let replicas = TestServer::start_replicas(2, kit::Options::default(), None, |_| {}).await;
    let c = clients(&replicas).await;
    let (a, b) = (&c[0], &c[1]);
    let old = a.register(Key::es256()).await;
    // B reads the account (and keeps it).
    assert_eq!(b.fetch(&old, &old.kid).await["status"], "valid");

    let new = Key::es256();
    let inner = a.key_change_inner(&old.kid, &old.key, &new);
    a.post_kid(&old, &a.url("keyChange"), Some(&inner))
        .await
        .ok(200);
    let rolled = kit::raw::Account {
        key: new,
        kid: old.kid.clone(),
    };
    assert_eq!(b.fetch(&rolled, &rolled.kid).await["status"], "valid");
    let (order_url, _) = b.new_order(&rolled, &[dns("rolled.example")]).await;
    assert!(order_url.contains("/order/"), "{order_url}");

    // The old key no longer changes anything, on either replica.
    for r in [a, b] {
        let third = Key::es256();
        let inner = r.key_change_inner(&old.kid, &old.key, &third);
        let status = r
            .post_kid(&old, &r.url("keyChange"), Some(&inner))
            .await
            .status;
        assert!(
            matches!(status, 400 | 401),
            "key change with the old key: {status}"
        );
        let status = r
            .post_kid(&old, &old.kid, Some(&json!({"status": "deactivated"})))
            .await
            .status;
        assert!(
            matches!(status, 400 | 401),
            "deactivation with the old key: {status}"
        );
    }
    assert_eq!(a.fetch(&rolled, &rolled.kid).await["status"], "valid");
}
