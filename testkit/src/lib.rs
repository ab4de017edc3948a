//! The acmeproxy test kit (a dev-dependency, never shipped): a server
//! started in-process on 127.0.0.1 with a free port, a temporary data
//! directory and softcas; challenge responders for http-01, tls-alpn-01 and
//! dns-01 (a mock DNS server); an instant-acme client; the raw JWS client;
//! process guards and the launchers of the programs the tests drive.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod bind;
pub mod cajson;
pub mod clients;
pub mod crash_support;
pub mod fuzzing;
pub mod haproxy;
mod mockdns;
pub mod openbao;
pub mod pebble;
pub mod postgres;
pub mod procs;
pub mod raw;
pub mod responders;
pub mod slowproxy;
pub mod strict_der;
pub mod tmpfs;
pub mod upstream;
pub mod vault_standin;

pub use mockdns::MockDns;
pub use procs::*;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use acmeproxy::app::Server;
use acmeproxy::config::Config;
use instant_acme::{Account, AccountCredentials, NewAccount};
use tokio_util::sync::CancellationToken;

pub use cajson::CaJson;
pub use responders::Responders;
pub use tmpfs::Tmpfs;

/// What a test server should look like.
#[derive(Clone, Debug)]
pub struct Options {
    /// `memory` or `sled`.
    pub db: &'static str,
    pub require_eab: bool,
    pub challenges: Option<Vec<&'static str>>,
    /// Reuse this data directory (restart tests).
    pub data_dir: Option<PathBuf>,
    /// Extra top-level JSON merged into the provisioner.
    pub provisioner_extra: serde_json::Value,
    /// A whole `authority` block (an upstream other than softcas); the
    /// provisioner settings above are merged into its first provisioner.
    pub authority: Option<serde_json::Value>,
    /// Serve metrics on 127.0.0.1 (a free port; see `Server::metrics_addr`)
    /// instead of turning them off.
    pub metrics: bool,
    /// ca.json's `root`: the root file the upstream's chains lead to.
    pub root: Option<PathBuf>,
    /// Extra top-level ca.json keys (such as `connections`), merged last.
    pub top_level: serde_json::Value,
    /// Keys merged into `validation` (over `denyNetworks: []`, which lets
    /// validation reach the responders on loopback).
    pub validation_extra: serde_json::Value,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            db: "memory",
            require_eab: false,
            challenges: None,
            data_dir: None,
            provisioner_extra: serde_json::json!({}),
            authority: None,
            metrics: false,
            root: None,
            top_level: serde_json::json!({}),
            validation_extra: serde_json::json!({}),
        }
    }
}

/// A running acmeproxy with its responders.
pub struct TestServer {
    pub server: Option<Server>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub root_file: PathBuf,
    pub responders: Responders,
    pub config: acmeproxy::config::Settings,
    shutdown: CancellationToken,
}

impl TestServer {
    /// Starts a server with default options.
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    /// Starts a server with `opts`.
    pub async fn start_with(opts: Options) -> Self {
        let responders = Responders::start().await;
        Self::start_with_responders(opts, responders).await
    }

    /// Starts a server that validates against existing responders.
    pub async fn start_with_responders(opts: Options, responders: Responders) -> Self {
        Self::start_inner(opts, responders, acmeproxy::app::Overrides::default()).await
    }

    /// Starts a server that signs with `upstream` (its own TLS certificate
    /// included) instead of softcas.
    pub async fn start_with_upstream(
        opts: Options,
        upstream: Arc<dyn acmeproxy::upstream::CertificateAuthorityService>,
    ) -> Self {
        let overrides = acmeproxy::app::Overrides {
            upstream: Some(upstream),
            ..Default::default()
        };
        Self::start_inner(opts, Responders::start().await, overrides).await
    }

    /// Starts `n` replicas on one shared store ([`MemoryStore::new_shared`]),
    /// validating against one set of responders and signing with one CA:
    /// `upstream` when given, else the softcas CA the first replica creates,
    /// copied into each other replica's data directory (as an operator
    /// copies `<dataDir>/softcas`, docs/ha.md). `tune` adjusts each
    /// replica's Authority options (shorter leases).
    ///
    /// [`MemoryStore::new_shared`]: acmeproxy::store::memory::MemoryStore::new_shared
    pub async fn start_replicas(
        n: usize,
        opts: Options,
        upstream: Option<Arc<dyn acmeproxy::upstream::CertificateAuthorityService>>,
        tune: fn(&mut acmeproxy::ra::AuthorityOptions),
    ) -> Vec<Self> {
        let store: Arc<dyn acmeproxy::store::Store> =
            Arc::new(acmeproxy::store::memory::MemoryStore::new_shared());
        let responders = Responders::start().await;
        let mut replicas: Vec<Self> = Vec::with_capacity(n);
        for i in 0..n {
            let overrides = acmeproxy::app::Overrides {
                upstream: upstream.clone(),
                store: Some(Arc::clone(&store)),
                authority_options: Some(Box::new(tune)),
                ..Default::default()
            };
            let seed = replicas.first().map(|first| first.data_dir.join("softcas"));
            // One port on 127.0.0.1, 127.0.0.2, …: a client resolving
            // `localhost` to one of them reaches that replica under the
            // same URLs (what a load balancer does).
            let port = replicas.first().map_or(0, |first| first.addr.port());
            let ip = std::net::Ipv4Addr::new(127, 0, 0, u8::try_from(i + 1).unwrap());
            let listener = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
            replicas.push(
                Self::start_seeded(
                    opts.clone(),
                    responders.clone(),
                    overrides,
                    seed.as_deref(),
                    Some(listener),
                )
                .await,
            );
        }
        replicas
    }

    async fn start_inner(
        opts: Options,
        responders: Responders,
        overrides: acmeproxy::app::Overrides,
    ) -> Self {
        Self::start_seeded(opts, responders, overrides, None, None).await
    }

    /// The directory URL replicas share, under the public name `localhost`
    /// and their common port (see [`start_replicas`](Self::start_replicas)).
    pub fn public_directory_url(&self) -> String {
        format!("https://localhost:{}/acme/acme/directory", self.addr.port())
    }

    /// A client that reaches this replica for the public name `localhost`.
    pub fn http_via_public_name(&self) -> reqwest::Client {
        self.http_builder()
            .resolve("localhost", SocketAddr::new(self.addr.ip(), 0))
            .build()
            .unwrap()
    }

    /// Starts a server, with a copy of the softcas directory `softcas` in
    /// its data directory when given.
    async fn start_seeded(
        opts: Options,
        responders: Responders,
        overrides: acmeproxy::app::Overrides,
        softcas: Option<&Path>,
        listener: Option<tokio::net::TcpListener>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = opts
            .data_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("data"));
        if let Some(from) = softcas.filter(|p| p.is_dir()) {
            let to = data_dir.join("softcas");
            std::fs::create_dir_all(&to).unwrap();
            for entry in std::fs::read_dir(from).unwrap() {
                let entry = entry.unwrap();
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
        let mut prov =
            serde_json::json!({"type": "ACME", "name": "acme", "requireEAB": opts.require_eab});
        if let Some(c) = &opts.challenges {
            prov["challenges"] = serde_json::json!(c);
        }
        if let Some(extra) = opts.provisioner_extra.as_object() {
            for (k, v) in extra {
                prov[k] = v.clone();
            }
        }
        let mut ca = CaJson::new(&data_dir)
            .db(Some(opts.db))
            .authority(match &opts.authority {
                Some(a) => {
                    let mut a = a.clone();
                    a["provisioners"][0] = prov.clone();
                    a
                }
                None => serde_json::json!({"type": "softcas", "provisioners": [prov]}),
            })
            .validation(
                responders.http_port(),
                responders.tls_alpn_port(),
                responders.dns_addr(),
                5,
            );
        if opts.metrics {
            ca.metrics = Some("127.0.0.1:0".to_owned());
        }
        if let (Some(validation), Some(extra)) =
            (ca.validation.as_mut(), opts.validation_extra.as_object())
        {
            for (k, v) in extra {
                validation[k] = v.clone();
            }
        }
        if let Some(root) = &opts.root {
            ca.extra["root"] = serde_json::json!(root);
        }
        if let Some(extra) = opts.top_level.as_object() {
            for (k, v) in extra {
                ca.extra[k] = v.clone();
            }
        }
        let doc = ca.to_json();
        let (config, _) = Config::parse(&doc.to_string()).unwrap();
        acmeproxy::telemetry::init(false);
        let listener = match listener {
            Some(l) => l,
            None => tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let shutdown = CancellationToken::new();
        let server =
            acmeproxy::app::start_with(config.clone(), listener, shutdown.clone(), overrides)
                .await
                .unwrap();
        let root_file = dir.path().join("root.pem");
        std::fs::write(&root_file, &server.roots_pem).unwrap();
        Self {
            addr: server.addr,
            server: Some(server),
            dir,
            data_dir,
            root_file,
            responders,
            config,
            shutdown,
        }
    }

    /// The directory URL of provisioner `acme`.
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/acme/acme/directory", self.addr.port())
    }

    /// A URL on this server.
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }

    /// A reqwest client trusting the server's root.
    pub fn http(&self) -> reqwest::Client {
        self.http_builder().build().unwrap()
    }

    /// A reqwest client builder trusting the server's root.
    fn http_builder(&self) -> reqwest::ClientBuilder {
        let root = reqwest::Certificate::from_pem(
            self.server
                .as_ref()
                .map(|s| s.roots_pem.as_bytes())
                .unwrap_or_default(),
        )
        .unwrap();
        reqwest::Client::builder().add_root_certificate(root)
    }

    /// A new instant-acme account.
    pub async fn account(&self) -> (Account, AccountCredentials) {
        Account::builder_with_root(&self.root_file)
            .unwrap()
            .create(
                &NewAccount {
                    contact: &["mailto:test@example.org"],
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.directory_url(),
                None,
            )
            .await
            .unwrap()
    }

    /// Answers every authorization of `order` over http-01 through the
    /// responders, then waits for the order to be `ready`.
    pub async fn answer_http01(
        &self,
        order: &mut instant_acme::Order,
    ) -> Result<instant_acme::OrderStatus, instant_acme::Error> {
        let mut authzs = order.authorizations();
        while let Some(a) = authzs.next().await {
            let mut a = a?;
            let mut ch = a
                .challenge(instant_acme::ChallengeType::Http01)
                .expect("an http-01 challenge");
            self.responders
                .set_http01(&ch.token, ch.key_authorization().as_str());
            ch.set_ready().await?;
        }
        order
            .poll_ready(&instant_acme::RetryPolicy::default())
            .await
    }

    /// Stops the server and waits for it.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(s) = self.server.take() {
            s.wait().await.unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// One order for `ids` answered over http-01, with a CSR for a new `alg`
/// key naming the identifiers and no subject; the chain PEM or the error.
pub async fn issue_http01(
    ts: &TestServer,
    account: &Account,
    ids: &[instant_acme::Identifier],
    alg: &'static rcgen::SignatureAlgorithm,
) -> Result<String, instant_acme::Error> {
    let mut order = account.new_order(&instant_acme::NewOrder::new(ids)).await?;
    assert_eq!(
        ts.answer_http01(&mut order).await?,
        instant_acme::OrderStatus::Ready
    );
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let names: Vec<String> = ids
        .iter()
        .map(|i| match i {
            instant_acme::Identifier::Dns(d) => d.clone(),
            instant_acme::Identifier::Ip(ip) => ip.to_string(),
            _ => unreachable!(),
        })
        .collect();
    let mut params = rcgen::CertificateParams::new(names).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).unwrap();
    order.finalize_csr(csr.der()).await?;
    order
        .poll_certificate(
            &instant_acme::RetryPolicy::new().timeout(std::time::Duration::from_secs(30)),
        )
        .await
}

/// Keeps the mock DNS type reachable for tests that build their own.
pub type Dns = Arc<MockDns>;

/// The repository's top directory (the server package).
pub fn repo_root() -> PathBuf {
    let kit = Path::new(env!("CARGO_MANIFEST_DIR"));
    kit.parent().unwrap_or(kit).to_owned()
}

/// The `acmeproxy` binary cargo built for the integration test running now:
/// test executables live in `target/<profile>/deps/`, the binary one level up.
pub fn acmeproxy_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("a test executable under target/<profile>/deps");
    let bin = profile_dir.join("acmeproxy");
    assert!(
        bin.is_file(),
        "{} is missing: run the tests through cargo, which builds it",
        bin.display()
    );
    bin
}

/// A throw-away CA and a certificate for `localhost` and 127.0.0.1 signed
/// by it, written to `dir` as `tls-ca.pem`, `tls-cert.pem`, `tls-key.pem`:
/// a server's HTTPS identity where its upstream cannot issue one (a
/// validating CA cannot prove loopback names). Returns (ca, cert, key).
pub fn loopback_tls(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "acmeproxy test TLS CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let (ca_file, cert, key) = (
        dir.join("tls-ca.pem"),
        dir.join("tls-cert.pem"),
        dir.join("tls-key.pem"),
    );
    std::fs::write(&ca_file, ca.pem()).unwrap();
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    (ca_file, cert, key)
}
