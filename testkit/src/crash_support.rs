//! Support for the crash tests (`tests/acme/crash.rs`): bounded waits for
//! files, readiness and exits, re-binding a port after a kill, a
//! slow http-01 responder (RFC 8555 section 8.3) that keeps a challenge POST
//! in flight, independent checks of issued chains and of the certificate
//! the server presents, and the instant-acme steps the tests share.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, Key, NewOrder,
    Order, OrderStatus, RetryPolicy,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::sync::Notify;
use x509_parser::prelude::*;

use super::procs::{ChildGuard, free_ports};

/// A first start creates the soft CA and the TLS certificate.
pub const START_LIMIT: Duration = Duration::from_secs(60);
/// Any one ACME client call.
pub const CALL_LIMIT: Duration = Duration::from_secs(30);

/// Runs `fut`, failing the test when it takes longer than `limit`.
pub async fn bounded<T>(what: &str, limit: Duration, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {limit:?}"),
    }
}

/// Waits up to `limit` for `path` to exist and returns its contents, failing
/// early when `proc` (which should write it) exits.
pub async fn wait_for_file(path: &Path, limit: Duration, proc: &mut ChildGuard) -> Vec<u8> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(bytes) = std::fs::read(path) {
            return bytes;
        }
        if let Err(e) = proc.check_running() {
            panic!("{e}\n{}", proc.log_tail(40));
        }
        assert!(
            Instant::now() < deadline,
            "{} did not appear within {limit:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so that a
/// reader never sees half of it.
pub fn write_atomic(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Binds 127.0.0.1:`port`, retrying for up to `limit` while the port is still
/// held (a killed process's sockets can linger briefly).
pub async fn bind_loopback(port: u16, limit: Duration) -> tokio::net::TcpListener {
    let deadline = Instant::now() + limit;
    loop {
        match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => return l,
            Err(e) if Instant::now() < deadline => {
                eprintln!("port {port} not free yet ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot bind 127.0.0.1:{port} within {limit:?}: {e}"),
        }
    }
}

/// Waits (see [`crate::wait_https`]) until `directory_url` answers 200
/// over HTTPS chaining to the softcas root at `root_file` (written by the
/// server at its first start). `Err` with the exit status when the process
/// exits first; fails the test when it is not ready within `limit`.
pub async fn wait_ready(
    proc: &mut ChildGuard,
    directory_url: &str,
    root_file: &Path,
    limit: Duration,
) -> Result<(), ExitStatus> {
    let mut exited = None;
    let ready = crate::wait_https(directory_url, root_file, 200, limit, || {
        exited = proc.exited();
        exited.map_or(Ok(()), |status| Err(status.to_string()))
    })
    .await;
    match (ready, exited) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(status)) => Err(status),
        (Err(e), None) => panic!("{e}\n{}", proc.log_tail(40)),
    }
}

/// An acmeproxy configuration: softcas, the sled store in `data_dir`, one
/// ACME provisioner `acme`, validation against loopback responders.
pub fn server_config(
    address: &str,
    data_dir: &Path,
    http_port: u16,
    tls_alpn_port: u16,
    dns: SocketAddr,
) -> serde_json::Value {
    let mut ca =
        crate::CaJson::new(data_dir)
            .db(Some("sled"))
            .validation(http_port, tls_alpn_port, dns, 10);
    ca.address = address.to_owned();
    ca.to_json()
}

type Tokens = Arc<Mutex<HashMap<String, String>>>;

/// An http-01 responder that answers only after `delay`, so that the
/// validation (and the challenge POST waiting for it) is in flight for that
/// long. Tells when the validator's request arrived.
pub struct SlowHttp01 {
    tokens: Tokens,
    addr: SocketAddr,
    requested: Arc<Notify>,
    hits: Arc<AtomicUsize>,
}

impl SlowHttp01 {
    /// Starts on a free loopback port.
    pub async fn start(delay: Duration) -> Self {
        let tokens: Tokens = Arc::default();
        let requested = Arc::new(Notify::new());
        let hits = Arc::new(AtomicUsize::new(0));
        let state = (
            Arc::clone(&tokens),
            Arc::clone(&requested),
            Arc::clone(&hits),
        );
        let app = axum::Router::new()
            .route(
                "/.well-known/acme-challenge/{token}",
                axum::routing::get(
                    move |axum::extract::State((tokens, requested, hits)): axum::extract::State<(
                        Tokens,
                        Arc<Notify>,
                        Arc<AtomicUsize>,
                    )>,
                          axum::extract::Path(token): axum::extract::Path<String>| async move {
                        hits.fetch_add(1, Ordering::SeqCst);
                        requested.notify_one();
                        tokio::time::sleep(delay).await;
                        let value = tokens.lock().unwrap().get(&token).cloned();
                        match value {
                            Some(v) => (http::StatusCode::OK, v),
                            None => (http::StatusCode::NOT_FOUND, String::new()),
                        }
                    },
                ),
            )
            .with_state(state);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        Self {
            tokens,
            addr,
            requested,
            hits,
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Serves `key_auth` for `token`.
    pub fn set(&self, token: &str, key_auth: &str) {
        self.tokens
            .lock()
            .unwrap()
            .insert(token.to_owned(), key_auth.to_owned());
    }

    /// How many validation requests arrived.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Returns once a validation request has arrived (one per call).
    pub async fn requested(&self) {
        self.requested.notified().await;
    }
}

/// The subject alternative names of the chain's leaf.
pub fn leaf_sans(chain_pem: &str) -> Vec<String> {
    let pems = ::pem::parse_many(chain_pem).unwrap();
    let (_, cert) = X509Certificate::from_der(pems[0].contents()).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .map(|g| match g {
            GeneralName::DNSName(d) => d.to_string(),
            other => format!("{other:?}"),
        })
        .collect()
}

/// The chain verifies link by link up to `root_pem` (x509-parser, not our
/// own code), and every certificate in it is within its validity period.
pub fn verify_chain(chain_pem: &str, root_pem: &[u8]) {
    let mut certs: Vec<Vec<u8>> = ::pem::parse_many(chain_pem)
        .unwrap()
        .into_iter()
        .map(|p| p.contents().to_vec())
        .collect();
    assert!(certs.len() >= 2, "the chain has a leaf and its issuers");
    let root = ::pem::parse(root_pem).unwrap().contents().to_vec();
    if certs.last() != Some(&root) {
        certs.push(root);
    }
    for pair in certs.windows(2) {
        let (_, child) = X509Certificate::from_der(&pair[0]).unwrap();
        let (_, parent) = X509Certificate::from_der(&pair[1]).unwrap();
        assert!(
            child.validity().is_valid(),
            "{} is not valid now",
            child.subject()
        );
        assert_eq!(child.issuer(), parent.subject());
        child
            .verify_signature(Some(parent.public_key()))
            .expect("signature verifies with the issuer's key");
    }
}

/// The leaf certificate (DER) the server at 127.0.0.1:`port` presents, over
/// a TLS handshake that trusts only `root_pem`.
pub async fn served_leaf(port: u16, root_pem: &[u8]) -> Vec<u8> {
    handshake_leaf(
        SocketAddr::from(([127, 0, 0, 1], port)),
        "127.0.0.1",
        root_pem,
    )
    .await
}

/// As [`served_leaf`], from the server at `addr` (a replica on 127.0.0.2),
/// for the name `localhost`.
pub async fn served_leaf_at(addr: SocketAddr, root_pem: &[u8]) -> Vec<u8> {
    handshake_leaf(addr, "localhost", root_pem).await
}

async fn handshake_leaf(addr: SocketAddr, name: &'static str, root_pem: &[u8]) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    let root = CertificateDer::from(::pem::parse(root_pem).unwrap().contents().to_vec());
    roots.add(root).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(name).unwrap();
    let tls = bounded(
        "TLS handshake",
        Duration::from_secs(10),
        connector.connect(name, tcp),
    )
    .await
    .unwrap();
    let (_, conn) = tls.get_ref();
    conn.peer_certificates().unwrap()[0].to_vec()
}

/// The `acmeproxy` binary with a sled store in a data directory, on a fixed
/// loopback port, so that a restart keeps both.
pub struct Binary {
    pub dir: PathBuf,
    pub data: PathBuf,
    pub config_path: PathBuf,
    pub port: u16,
    pub directory_url: String,
    pub root_file: PathBuf,
}

impl Binary {
    /// softcas with the sled store in `dir/data`, validating against
    /// loopback responders.
    pub fn new(dir: &Path, http_port: u16, tls_alpn_port: u16, dns: SocketAddr) -> Self {
        let data = dir.join("data");
        let ca = crate::CaJson::new(&data).db(Some("sled")).validation(
            http_port,
            tls_alpn_port,
            dns,
            10,
        );
        Self::with_config(dir, ca, data.join("softcas/root.crt"))
    }

    /// Any configuration (its data directory is kept, its address becomes
    /// a free loopback port); clients trust `root_file`.
    pub fn with_config(dir: &Path, mut ca: crate::CaJson, root_file: PathBuf) -> Self {
        let [port] = free_ports().unwrap();
        ca.address = format!("127.0.0.1:{port}");
        let config_path = dir.join("ca.json");
        ca.write(&config_path).unwrap();
        Self {
            dir: dir.to_owned(),
            root_file,
            data: ca.data_dir.clone(),
            config_path,
            port,
            directory_url: format!("https://127.0.0.1:{port}/acme/acme/directory"),
        }
    }

    /// The server's log (every start appends to it).
    pub fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// Starts `acmeproxy serve ca.json` and waits until it answers; starts it
    /// again if it exited because the port was still held.
    pub async fn start(&self) -> ChildGuard {
        let log = self.log();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut cmd = Command::new(crate::acmeproxy_bin());
            cmd.arg("serve").arg(&self.config_path);
            let mut proc = ChildGuard::spawn("acmeproxy", &mut cmd, &log).unwrap();
            match wait_ready(&mut proc, &self.directory_url, &self.root_file, START_LIMIT).await {
                Ok(()) => return proc,
                Err(status) => {
                    let tail = proc.log_tail(20);
                    assert!(
                        tail.contains("in use") && Instant::now() < deadline,
                        "acmeproxy exited at start-up: {status}\n{tail}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// What `issue` got.
pub struct Issued {
    pub order_url: String,
    pub cert_url: String,
    pub chain: String,
}

/// Orders `name`, answers http-01 through `serve`, finalizes and downloads.
pub async fn issue(account: &Account, name: &str, serve: impl Fn(&str, &str)) -> Issued {
    let ids = [Identifier::Dns(name.into())];
    let mut order = bounded(
        "newOrder",
        CALL_LIMIT,
        account.new_order(&NewOrder::new(&ids)),
    )
    .await
    .unwrap();
    authorize_http01(&mut order, serve).await;
    let chain = finalize_and_download(&mut order, name).await;
    assert_eq!(order.state().status, OrderStatus::Valid);
    Issued {
        order_url: order.url().to_owned(),
        cert_url: order.state().certificate.clone().unwrap(),
        chain,
    }
}

/// Renews `leaf` (a certificate for the one name `name`) with a newOrder that
/// `replaces` it (ARI, RFC 9773), then revokes `leaf` as superseded, once:
/// a second revocation is `alreadyRevoked`. Returns the renewed chain.
pub async fn renew_replacing_and_revoke(
    account: &Account,
    leaf: &CertificateDer<'static>,
    name: &str,
    serve: impl Fn(&str, &str),
) -> String {
    let id = instant_acme::CertificateIdentifier::try_from(leaf).unwrap();
    let ids = [Identifier::Dns(name.into())];
    let mut order = bounded(
        "newOrder replaces",
        CALL_LIMIT,
        account.new_order(&NewOrder::new(&ids).replaces(id)),
    )
    .await
    .unwrap();
    authorize_http01(&mut order, serve).await;
    let renewed = finalize_and_download(&mut order, name).await;
    assert_eq!(order.state().status, OrderStatus::Valid);
    assert_ne!(&leaf_der(&renewed), leaf);
    let revoke = instant_acme::RevocationRequest {
        certificate: leaf,
        reason: Some(instant_acme::RevocationReason::Superseded),
    };
    bounded("revokeCert", CALL_LIMIT, account.revoke(&revoke))
        .await
        .unwrap();
    let again = bounded("revokeCert again", CALL_LIMIT, account.revoke(&revoke)).await;
    assert_problem(&again.unwrap_err(), "alreadyRevoked", "second revocation");
    renewed
}

/// Finalizes a `ready` order for `name` (a fresh key), polls it and returns
/// the chain, whose leaf must name exactly `name`.
pub async fn finalize_and_download(order: &mut Order, name: &str) -> String {
    bounded("finalize", CALL_LIMIT, order.finalize())
        .await
        .unwrap();
    let chain = bounded(
        "certificate",
        CALL_LIMIT,
        order.poll_certificate(&RetryPolicy::new().timeout(CALL_LIMIT)),
    )
    .await
    .unwrap();
    assert_eq!(leaf_sans(&chain), vec![name]);
    chain
}

/// Answers the http-01 challenge of every pending authorization of `order`
/// and waits until the order is ready.
pub async fn authorize_http01(order: &mut Order, serve: impl Fn(&str, &str)) {
    let mut authzs = order.authorizations();
    while let Some(authz) = bounded("authorization", CALL_LIMIT, authzs.next()).await {
        let mut authz = authz.unwrap();
        if authz.status == AuthorizationStatus::Valid {
            continue;
        }
        let mut challenge = authz
            .challenge(ChallengeType::Http01)
            .expect("http-01 is offered");
        serve(&challenge.token, challenge.key_authorization().as_str());
        bounded("challenge POST", CALL_LIMIT, challenge.set_ready())
            .await
            .unwrap();
    }
    let status = bounded(
        "order ready",
        CALL_LIMIT,
        order.poll_ready(&RetryPolicy::new().timeout(CALL_LIMIT)),
    )
    .await
    .unwrap();
    assert_eq!(status, OrderStatus::Ready, "{:?}", order.state().error);
}

/// A new account with a fresh key; returns the key (PKCS#8 DER) too.
pub async fn new_account(
    root_file: &Path,
    directory_url: &str,
) -> (Vec<u8>, Account, AccountCredentials) {
    let (key, pkcs8) = Key::generate_pkcs8().unwrap();
    let der = pkcs8.secret_pkcs8_der().to_vec();
    let (account, credentials) = bounded(
        "newAccount",
        CALL_LIMIT,
        Account::builder_with_root(root_file)
            .unwrap()
            .create_from_key((key, PrivateKeyDer::Pkcs8(pkcs8)), directory_url.to_owned()),
    )
    .await
    .unwrap();
    (der, account, credentials)
}

/// newAccount with `onlyReturnExisting` for the key `pkcs8`.
pub async fn existing_account(
    binary: &Binary,
    pkcs8: &[u8],
) -> Result<Account, instant_acme::Error> {
    let key = Key::from_pkcs8_der(PrivatePkcs8KeyDer::from(pkcs8)).unwrap();
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.to_vec()));
    bounded(
        "newAccount onlyReturnExisting",
        CALL_LIMIT,
        Account::builder_with_root(&binary.root_file)
            .unwrap()
            .from_key((key, der), binary.directory_url.clone()),
    )
    .await
    .map(|(account, _)| account)
}

/// A certificate serial as hex, the way Pebble's log and x509-parser may
/// differ on it made equal: lower case, no colons, no leading zeros.
pub fn serial_hex(hex: &str) -> String {
    hex.trim()
        .replace(':', "")
        .to_ascii_lowercase()
        .trim_start_matches('0')
        .to_owned()
}

/// The serial of the leaf of a PEM chain, as [`serial_hex`].
pub fn leaf_serial(chain_pem: &str) -> Result<String, String> {
    let first = ::pem::parse_many(chain_pem)
        .map_err(|e| e.to_string())?
        .into_iter()
        .next()
        .ok_or("no certificate in the chain")?;
    let (_, cert) = X509Certificate::from_der(first.contents()).map_err(|e| e.to_string())?;
    Ok(serial_hex(&cert.raw_serial_as_string()))
}

/// The leaf of a PEM chain, DER.
pub fn leaf_der(chain: &str) -> CertificateDer<'static> {
    CertificateDer::from(::pem::parse(chain).unwrap().contents().to_vec())
}

pub fn assert_unauthorized(err: &instant_acme::Error, what: &str) {
    assert_problem(err, "unauthorized", what);
}

/// `err` is an ACME problem of type `urn:ietf:params:acme:error:<kind>`.
pub fn assert_problem(err: &instant_acme::Error, kind: &str, what: &str) {
    let instant_acme::Error::Api(problem) = err else {
        panic!("{what}: expected an ACME problem {kind}, got {err}");
    };
    assert_eq!(
        problem.r#type.as_deref(),
        Some(format!("urn:ietf:params:acme:error:{kind}").as_str()),
        "{what}: {problem:?}"
    );
}

pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("acmeproxy-crash-")
        .tempdir()
        .unwrap()
}
