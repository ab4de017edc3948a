use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::upstream::softcas::{SoftCas, SoftCasOptions};
use crate::upstream::{Checkpoint, IssuedChain, RevokeRequest};

/// A SoftCas that counts certificates and can make them short-lived.
struct Counting {
    ca: SoftCas,
    calls: AtomicUsize,
    lifetime: Option<time::Duration>,
    fail: AtomicBool,
}

#[async_trait]
impl CertificateAuthorityService for Counting {
    fn name(&self) -> &'static str {
        "counting"
    }
    async fn create_certificate(
        &self,
        req: &SignRequest,
        checkpoint: &dyn Checkpoint,
    ) -> Result<IssuedChain, UpstreamError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            let context = "test upstream is down".to_owned();
            return Err(UpstreamError::Unavailable {
                context,
                source: None,
            });
        }
        let mut req = req.clone();
        if let Some(lifetime) = self.lifetime {
            let now = OffsetDateTime::now_utc();
            (req.not_before, req.not_after) = (Some(now), Some(now + lifetime));
        }
        self.ca.create_certificate(&req, checkpoint).await
    }
    async fn revoke_certificate(&self, req: &RevokeRequest) -> Result<(), UpstreamError> {
        self.ca.revoke_certificate(req).await
    }
    fn roots(&self) -> Vec<Vec<u8>> {
        self.ca.roots()
    }
}

fn counting(dir: &Path, lifetime: Option<time::Duration>) -> Arc<Counting> {
    let opts = SoftCasOptions {
        dir: dir.join("softcas"),
        name: "test".to_owned(),
        default_lifetime: Duration::from_secs(3600),
        sign_delay: Duration::ZERO,
    };
    let ca = SoftCas::open(opts).unwrap();
    let (calls, fail) = (AtomicUsize::new(0), AtomicBool::new(false));
    Arc::new(Counting {
        ca,
        calls,
        lifetime,
        fail,
    })
}

fn options(dir: &Path, names: &[&str]) -> TlsOptions {
    TlsOptions {
        dns_names: names.iter().map(|n| (*n).to_owned()).collect(),
        data_dir: dir.to_owned(),
        ..TlsOptions::default()
    }
}

/// A chain and key PEM from `ca` for localhost, valid from `from` to `to`.
async fn issue(ca: &SoftCas, from: OffsetDateTime, to: OffsetDateTime) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let csr = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .serialize_request(&key)
        .unwrap();
    let req = SignRequest {
        csr_der: csr.der().to_vec(),
        csr_verified: false,
        identifiers: vec![Identifier::Dns("localhost".to_owned())],
        not_before: Some(from),
        not_after: Some(to),
        resume: None,
        replaces: None,
        profile: None,
    };
    let chain = ca.create_certificate(&req, &NoCheckpoint).await.unwrap();
    (chain.to_pem(), key.serialize_pem())
}

fn calls(upstream: &Counting) -> usize {
    upstream.calls.load(Ordering::SeqCst)
}

/// Serves `config` on loopback, answering "ok" on every connection.
async fn serve(config: Arc<ServerConfig>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            if let Ok(mut tls) = acceptor.accept(tcp).await {
                let _ = tls.write_all(b"ok").await;
                let _ = tls.shutdown().await;
            }
        }
    });
    addr
}

/// Connects trusting only `root`; returns the leaf served and the ALPN chosen.
async fn handshake(
    addr: std::net::SocketAddr,
    root: &[u8],
    name: &str,
) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from(root.to_vec())).unwrap();
    let mut config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .unwrap();
    let mut body = Vec::new();
    tls.read_to_end(&mut body).await.unwrap();
    assert_eq!(body, b"ok");
    let (_, conn) = tls.get_ref();
    let leaf = conn.peer_certificates().unwrap()[0].to_vec();
    (leaf, conn.alpn_protocol().map(<[u8]>::to_vec))
}

fn leaf_of(chain_pem: &str) -> Vec<u8> {
    CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn obtains_once_then_reuses_the_stored_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let upstream = counting(tmp.path(), None);
    let opts = options(tmp.path(), &["ra.example.test", "127.0.0.1"]);
    let first = ServerIdentity::load_or_obtain(&opts, upstream.clone())
        .await
        .unwrap();
    assert_eq!(calls(&upstream), 1);
    let dir = tmp.path().join("tls");
    assert_eq!(
        fs::read_to_string(dir.join(CERT_FILE)).unwrap(),
        first.chain_pem()
    );
    let mode = |p: PathBuf| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        (mode(dir.join(KEY_FILE)), mode(dir.clone())),
        (0o600, 0o700)
    );

    let second = ServerIdentity::load_or_obtain(&opts, upstream.clone())
        .await
        .unwrap();
    assert_eq!(calls(&upstream), 1, "a restart must not cost a certificate");
    assert_eq!(second.chain_pem(), first.chain_pem());
    assert_eq!(second.not_after(), first.not_after());

    let more = options(
        tmp.path(),
        &["ra.example.test", "127.0.0.1", "other.example.test"],
    );
    let third = ServerIdentity::load_or_obtain(&more, upstream.clone())
        .await
        .unwrap();
    assert_eq!(calls(&upstream), 2, "a new name needs a new certificate");
    assert_ne!(third.chain_pem(), first.chain_pem());
}

#[tokio::test]
async fn replaces_a_stored_certificate_past_two_thirds_of_its_life() {
    let tmp = tempfile::tempdir().unwrap();
    let upstream = counting(tmp.path(), None);
    let now = OffsetDateTime::now_utc();
    let min = time::Duration::minutes(1);
    let (old_chain, old_key) = issue(&upstream.ca, now - 10 * min, now + min).await;
    let dir = tmp.path().join("tls");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join(CERT_FILE), &old_chain).unwrap();
    fs::write(dir.join(KEY_FILE), &old_key).unwrap();
    fs::set_permissions(dir.join(KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
    let opts = options(tmp.path(), &["localhost"]);

    upstream.fail.store(true, Ordering::SeqCst);
    let identity = ServerIdentity::load_or_obtain(&opts, upstream.clone())
        .await
        .unwrap();
    assert_eq!(calls(&upstream), 1);
    assert_eq!(
        identity.chain_pem(),
        old_chain,
        "upstream down: serve the valid one"
    );
    let mode = fs::metadata(dir.join(KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "a loose key file is tightened");

    upstream.fail.store(false, Ordering::SeqCst);
    let identity = ServerIdentity::load_or_obtain(&opts, upstream.clone())
        .await
        .unwrap();
    assert_eq!(calls(&upstream), 2);
    assert_ne!(identity.chain_pem(), old_chain);
    assert!(identity.not_after() > now + 30 * min);
    let stored = fs::read_to_string(dir.join(CERT_FILE)).unwrap();
    assert_eq!(stored, identity.chain_pem());
}

#[tokio::test]
async fn serves_tls_and_renews_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let upstream = counting(tmp.path(), Some(time::Duration::seconds(4)));
    let opts = options(tmp.path(), &["localhost", "127.0.0.1"]);
    let identity = ServerIdentity::load_or_obtain(&opts, upstream.clone())
        .await
        .unwrap();
    let config = identity
        .server_config(vec![b"h2".to_vec(), b"http/1.1".to_vec()])
        .unwrap();
    let addr = serve(config).await;
    let root = upstream.roots()[0].clone();
    let first = leaf_of(&identity.chain_pem());
    let (leaf, alpn) = handshake(addr, &root, "localhost").await;
    assert_eq!((leaf, alpn), (first.clone(), Some(b"http/1.1".to_vec())));
    assert_eq!(handshake(addr, &root, "127.0.0.1").await.0, first);

    let shutdown = CancellationToken::new();
    let task = identity.spawn_renewal(shutdown.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while calls(&upstream) < 2 || leaf_of(&identity.chain_pem()) == first {
        assert!(tokio::time::Instant::now() < deadline, "no renewal");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let renewed = leaf_of(&identity.chain_pem());
    assert_eq!(handshake(addr, &root, "localhost").await.0, renewed);
    let stored = fs::read_to_string(tmp.path().join("tls").join(CERT_FILE)).unwrap();
    assert_eq!(leaf_of(&stored), renewed);
    shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn file_certificates_never_call_the_upstream_and_reload() {
    let tmp = tempfile::tempdir().unwrap();
    let upstream = counting(tmp.path(), None);
    let now = OffsetDateTime::now_utc();
    let (chain1, key1) = issue(&upstream.ca, now, now + time::Duration::days(1)).await;
    let (chain2, key2) = issue(&upstream.ca, now, now + time::Duration::days(2)).await;
    let (cert_file, key_file) = (tmp.path().join("c.pem"), tmp.path().join("k.pem"));
    fs::write(&cert_file, &chain1).unwrap();
    fs::write(&key_file, &key1).unwrap();
    let mut opts = options(tmp.path(), &[]);
    (opts.cert_file, opts.key_file) = (Some(cert_file.clone()), Some(key_file.clone()));
    opts.min_version = Some(1.3);
    let identity = ServerIdentity::load_or_obtain(&opts, upstream.clone())
        .await
        .unwrap();
    assert_eq!(identity.chain_pem(), chain1);
    assert_eq!(identity.versions, [&TLS13]);

    fs::write(&cert_file, &chain2).unwrap();
    fs::write(&key_file, &key2).unwrap();
    identity.reload_files().unwrap();
    assert_eq!(identity.chain_pem(), chain2);
    let hours = (identity.not_after() - now).whole_hours();
    assert!((47..=48).contains(&hours), "{hours}");

    fs::write(&key_file, &key1).unwrap();
    let err = identity.reload_files().unwrap_err();
    assert!(matches!(err, TlsError::Key { .. }), "{err}");
    fs::write(&key_file, "not a key").unwrap();
    let err = identity.reload_files().unwrap_err().to_string();
    assert!(err.contains("k.pem holds no usable private key"), "{err}");
    assert_eq!(
        identity.chain_pem(),
        chain2,
        "a failed reload keeps the certificate in use"
    );

    let shutdown = CancellationToken::new();
    let task = identity.spawn_renewal(shutdown.clone());
    shutdown.cancel();
    task.await.unwrap();
    assert_eq!(calls(&upstream), 0);
    opts.key_file = None;
    let err = ServerIdentity::load_or_obtain(&opts, upstream.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, TlsError::Config(_)));
}

#[test]
fn versions_follow_step_ca_settings() {
    let v = |min, max| protocol_versions(min, max).map_err(|e| e.to_string());
    assert_eq!(v(None, None).unwrap(), [&TLS13, &TLS12]);
    assert_eq!(v(Some(1.0), None).unwrap(), [&TLS13, &TLS12]);
    assert_eq!(v(Some(1.3), None).unwrap(), [&TLS13]);
    assert_eq!(v(None, Some(1.2)).unwrap(), [&TLS12]);
    assert!(
        v(Some(1.3), Some(1.2))
            .unwrap_err()
            .contains("above maxVersion")
    );
    assert!(v(Some(1.4), None).unwrap_err().contains("minVersion 1.4"));
    assert!(v(None, Some(1.1)).unwrap_err().contains("below TLS 1.2"));
}

/// First start with the upstream down: with `wait_for_upstream` the server
/// waits and retries until the upstream answers (or it is told to stop);
/// without it, the first failure is returned.
#[tokio::test(start_paused = true)]
async fn a_first_start_waits_for_an_unreachable_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = counting(dir.path(), None);
    upstream.fail.store(true, Ordering::SeqCst);
    let err =
        ServerIdentity::load_or_obtain(&options(dir.path(), &["localhost"]), upstream.clone())
            .await
            .err()
            .unwrap();
    assert!(matches!(err, TlsError::Upstream(_)), "{err}");

    let token = CancellationToken::new();
    let opts = TlsOptions {
        wait_for_upstream: Some(token.clone()),
        ..options(dir.path(), &["localhost"])
    };
    let up = upstream.clone();
    let healer = tokio::spawn(async move {
        // Three refused attempts (at 0, 2 and 6 s), then the upstream is back.
        while up.calls.load(Ordering::SeqCst) < 4 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        up.fail.store(false, Ordering::SeqCst);
    });
    let identity = ServerIdentity::load_or_obtain(&opts, upstream.clone())
        .await
        .unwrap();
    healer.await.unwrap();
    assert!(identity.not_after() > OffsetDateTime::now_utc());
    assert!(calls(&upstream) >= 5, "retried: {}", calls(&upstream));

    // Told to stop while waiting: it gives up with a message.
    let other = tempfile::tempdir().unwrap();
    let down = counting(other.path(), None);
    down.fail.store(true, Ordering::SeqCst);
    let token = CancellationToken::new();
    let opts = TlsOptions {
        wait_for_upstream: Some(token.clone()),
        ..options(other.path(), &["localhost"])
    };
    let stopper = {
        let token = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            token.cancel();
        })
    };
    let err = ServerIdentity::load_or_obtain(&opts, down.clone())
        .await
        .err()
        .unwrap();
    stopper.await.unwrap();
    assert!(err.to_string().contains("stopped while waiting"), "{err}");
}

/// The store's copy of the shared certificate, in memory.
#[derive(Default)]
struct MemShared {
    stored: std::sync::Mutex<Option<StoredIdentity>>,
    locked: AtomicBool,
}

#[async_trait]
impl SharedIdentity for MemShared {
    async fn load(&self) -> Result<Option<StoredIdentity>, TlsError> {
        Ok(self.stored.lock().unwrap().clone())
    }
    async fn save(&self, identity: &StoredIdentity) -> Result<(), TlsError> {
        *self.stored.lock().unwrap() = Some(identity.clone());
        Ok(())
    }
    async fn lock(&self) -> Result<bool, TlsError> {
        Ok(!self.locked.swap(true, Ordering::SeqCst))
    }
    async fn unlock(&self) {
        self.locked.store(false, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn replicas_share_one_certificate_and_pick_up_a_renewed_one() {
    let dir = tempfile::tempdir().unwrap();
    let up = counting(dir.path(), None);
    let mem = Arc::new(MemShared::default());
    let shared: Arc<dyn SharedIdentity> = mem.clone();
    let start = |sub: &str| {
        let opts = options(&dir.path().join(sub), &["localhost"]);
        let (up, shared) = (
            Arc::clone(&up) as Arc<dyn CertificateAuthorityService>,
            Arc::clone(&shared),
        );
        async move {
            ServerIdentity::load_or_obtain_shared(&opts, up, Some(shared))
                .await
                .unwrap()
        }
    };
    let a = start("a").await;
    let b = start("b").await;
    assert_eq!(
        calls(&up),
        1,
        "one replica obtained it, the other loaded it"
    );
    assert_eq!(a.chain_pem(), b.chain_pem());

    // While another replica holds the lease and nothing usable is stored,
    // a starting replica waits for it instead of asking the upstream.
    *mem.stored.lock().unwrap() = None;
    mem.locked.store(true, Ordering::SeqCst);
    let names = [Identifier::Dns("localhost".to_owned())];
    let waiting = shared::obtain_locked(up.as_ref(), &names, dir.path(), mem.as_ref()).await;
    assert!(matches!(waiting, Ok(None)));
    assert_eq!(calls(&up), 1);
    mem.locked.store(false, Ordering::SeqCst);

    // A renewal stored by another replica reaches this one at its reload.
    let now = OffsetDateTime::now_utc();
    let (chain_pem, key_pem) = issue(&up.ca, now, b.not_after() + time::Duration::hours(1)).await;
    let renewed = StoredIdentity { chain_pem, key_pem };
    shared.save(&renewed).await.unwrap();
    assert!(b.reload_shared(shared.as_ref(), &names).await);
    assert!(b.not_after() > a.not_after());
    assert!(!b.reload_shared(shared.as_ref(), &names).await, "once");
}
