//! OpenBao (the Linux Foundation fork of HashiCorp Vault, same HTTP API) as
//! a real Vault for the vaultcas upstream. `tests/interop/install-openbao.sh`
//! caches its `bao` binary under `$ACMEPROXY_OPENBAO_DIR`
//! (default `/var/tmp/acmeproxy-openbao`)`/bin/bao`.
//!
//! [`OpenBao::start`] runs `bao server -dev` (in-memory store, unsealed)
//! with an HTTPS listener on a free loopback port (a throw-away TLS CA,
//! served as leaf + CA) and a file audit device, both declared in a config
//! file, then sets it up through the HTTP API as
//! Vault's PKI guide does: a root CA in `pki`, an intermediate in `pki_int`
//! whose CSR the root signs (`root/sign-intermediate`, `format=pem_bundle`,
//! so `pki_int` knows the root too) and `set-signed` imports; PKI roles; an
//! AppRole `ra` whose policy allows `pki_int/sign/*`, `pki_int/revoke` and
//! reading `pki_int/cert/*`. The server is stopped on drop (SIGTERM to its
//! own process group, then SIGKILL).
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-7.4>

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

use super::{ChildGuard, free_ports, tail};

/// The PKI roles made in `pki_int`, each with Vault's defaults but for
/// what is named here. By key type (`key_type` ec, ed25519, rsa), for names
/// under `test` and `localhost` and any IP address:
pub const ROLE_EC: &str = "acme-ec";
pub const ROLE_ED25519: &str = "acme-ed25519";
pub const ROLE_RSA: &str = "acme-rsa";
/// Any key type, any name (`allow_any_name`), any IP address.
pub const ROLE_ANY: &str = "acme-any";
/// Any key type, names under `test`, any IP address, `require_cn=false`.
pub const ROLE_NO_CN: &str = "acme-nocn";
/// The AppRole the RA logs in with.
pub const APPROLE: &str = "ra";
/// The default `ttl` and `max_ttl` of every PKI role.
pub const ROLE_TTL: Duration = Duration::from_secs(72 * 3600);
pub const ROLE_MAX_TTL: Duration = Duration::from_secs(720 * 3600);

/// How long OpenBao may take to start answering.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How OpenBao is set up.
#[derive(Clone, Debug, Default)]
pub struct OpenBaoOptions {
    /// The AppRole's `token_ttl` and `token_max_ttl` (OpenBao's defaults,
    /// 768 h, when `None`).
    pub token_ttl: Option<Duration>,
    pub token_max_ttl: Option<Duration>,
    /// Import only the intermediate into `pki_int` (`sign-intermediate`
    /// with `format=pem`), so that its `cert/ca_chain` lacks the root.
    pub intermediate_only: bool,
}

/// A running, set-up OpenBao dev server.
pub struct OpenBao {
    _child: ChildGuard,
    pub dir: tempfile::TempDir,
    /// `https://127.0.0.1:PORT`.
    pub addr: String,
    /// The CA of OpenBao's HTTPS certificate (PEM file) and its SHA-256.
    pub tls_ca_file: PathBuf,
    pub tls_ca_fingerprint: String,
    root_token: String,
    /// The root CA of `pki` (self-signed), DER and as a PEM file.
    pub root_der: Vec<u8>,
    pub root_file: PathBuf,
    /// The intermediate of `pki_int`, DER.
    pub intermediate_der: Vec<u8>,
    pub role_id: String,
    pub secret_id: String,
    pub audit_log: PathBuf,
    pub log: PathBuf,
    http: reqwest::Client,
}

/// The `bao` binary install-openbao.sh caches.
pub fn bao_binary() -> PathBuf {
    std::env::var_os("ACMEPROXY_OPENBAO_DIR")
        .map_or_else(
            || PathBuf::from("/var/tmp/acmeproxy-openbao"),
            PathBuf::from,
        )
        .join("bin/bao")
}

/// Why OpenBao tests cannot run here, if they cannot.
pub fn missing() -> Option<String> {
    let bao = bao_binary();
    (!bao.is_file()).then(|| {
        format!(
            "{} is not installed (run tests/interop/install-openbao.sh, or `make test-deps`)",
            bao.display()
        )
    })
}

/// `true` (after a message) when `what` must be skipped because the binary
/// is missing; under `CI` a missing binary is a failure.
pub fn skip(what: &str) -> bool {
    crate::procs::skip_when_missing(what, missing())
}

/// Starts of `bao server -dev` tried when its ports were taken meanwhile.
const START_ATTEMPTS: u32 = 3;

/// A free loopback port whose successor is free too (the dev server puts
/// its cluster listener on port + 1).
fn free_port_pair() -> u16 {
    for _ in 0..50 {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two consecutive free loopback ports");
}

fn sha256_hex(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn first_der(pem_text: &str) -> Vec<u8> {
    ::pem::parse_many(pem_text)
        .unwrap()
        .into_iter()
        .find(|p| p.tag() == "CERTIFICATE")
        .map(|p| p.contents().to_vec())
        .expect("a certificate")
}

impl OpenBao {
    /// Starts OpenBao and sets it up; panics (with its log) on failure.
    pub async fn start(opts: OpenBaoOptions) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("acmeproxy-openbao-")
            .tempdir()
            .unwrap();
        // OpenBao's HTTPS: a throw-away CA and a leaf for 127.0.0.1, served
        // as leaf + CA so that the RA can pin the CA by fingerprint (the
        // dev server's own -dev-tls presents only its leaf).
        let mut ca_params = CertificateParams::default();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "acmeproxy test OpenBao TLS CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params =
            CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        leaf_params.is_ca = IsCa::NoCa;
        let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
        let tls_ca_file = dir.path().join("tls-ca.pem");
        let tls_cert = dir.path().join("tls-chain.pem");
        let tls_key = dir.path().join("tls-key.pem");
        fs::write(&tls_ca_file, ca.pem()).unwrap();
        fs::write(&tls_cert, format!("{}{}", leaf.pem(), ca.pem())).unwrap();
        fs::write(&tls_key, leaf_key.serialize_pem()).unwrap();
        let tls_ca_fingerprint = sha256_hex(ca.der());

        let audit_log = dir.path().join("audit.log");
        let config = dir.path().join("openbao.hcl");
        let mut attempt = 0;
        let (child, addr, root_token, log, http) = 'start: loop {
            attempt += 1;
            let [port, cluster_port] = free_ports().unwrap();
            // The HTTPS listener, and the audit device (OpenBao enables audit
            // devices only from its configuration).
            fs::write(
                &config,
                format!(
                    "listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  \
                     cluster_address = \"127.0.0.1:{cluster_port}\"\n  \
                     tls_cert_file = \"{}\"\n  tls_key_file = \"{}\"\n}}\n\
                     audit \"file\" \"acmeproxy-test\" {{\n  options {{\n    file_path = \"{}\"\n  }}\n}}\n",
                    tls_cert.display(),
                    tls_key.display(),
                    audit_log.display()
                ),
            )
            .unwrap();
            // The dev server's own plain-HTTP listener (and its cluster port + 1).
            let dev_port = free_port_pair();
            let root_token = format!("root-{}", acmeproxy::model::random_token(12));
            let log = dir.path().join("bao.log");
            let mut cmd = Command::new(bao_binary());
            cmd.arg("server")
                .arg("-dev")
                .arg(format!("-dev-listen-address=127.0.0.1:{dev_port}"))
                .arg(format!("-dev-root-token-id={root_token}"))
                .arg("-dev-no-store-token")
                .arg(format!("-config={}", config.display()))
                .env("HOME", dir.path())
                .env_remove("BAO_ADDR")
                .env_remove("VAULT_ADDR")
                .current_dir(dir.path());
            let mut child = ChildGuard::spawn("bao server -dev", &mut cmd, &log).unwrap();
            let addr = format!("https://127.0.0.1:{port}");
            let http = reqwest::Client::builder()
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap();

            // Wait for /v1/sys/health to answer 200.
            let deadline = Instant::now() + READY_TIMEOUT;
            let mut last = String::from("not tried");
            loop {
                if let Err(e) = child.check_running() {
                    // free_ports() only found the ports free: another test
                    // may have bound one since. Try again with new ones.
                    let why = tail(&log, 40);
                    if attempt < START_ATTEMPTS && why.contains("address already in use") {
                        continue 'start;
                    }
                    panic!("{e}\n{why}");
                }
                assert!(
                    Instant::now() < deadline,
                    "OpenBao at {addr} not ready after {}s: {last}\n{}",
                    READY_TIMEOUT.as_secs(),
                    tail(&log, 40)
                );
                match http.get(format!("{addr}/v1/sys/health")).send().await {
                    Ok(r) if r.status() == 200 => {
                        break 'start (child, addr, root_token, log, http);
                    }
                    Ok(r) => last = format!("HTTP {}", r.status()),
                    Err(e) => last = format!("{e:?}"),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        let mut bao = Self {
            _child: child,
            root_file: dir.path().join("pki-root.pem"),
            dir,
            addr,
            tls_ca_file,
            tls_ca_fingerprint,
            root_token,
            root_der: Vec::new(),
            intermediate_der: Vec::new(),
            role_id: String::new(),
            secret_id: String::new(),
            audit_log,
            log,
            http,
        };
        bao.set_up(&opts).await;
        bao
    }

    /// Vault's PKI guide, then the roles and the AppRole.
    async fn set_up(&mut self, opts: &OpenBaoOptions) {
        self.ok(
            Method::POST,
            "sys/mounts/pki",
            json!({"type": "pki", "config": {"max_lease_ttl": "87600h"}}),
        )
        .await;
        let root = self
            .ok(
                Method::POST,
                "pki/root/generate/internal",
                json!({"common_name": "acmeproxy test OpenBao Root", "key_type": "ec",
                       "key_bits": 256, "ttl": "87600h", "issuer_name": "root"}),
            )
            .await;
        let root_pem = root["data"]["certificate"].as_str().unwrap().to_owned();
        self.root_der = first_der(&root_pem);
        fs::write(&self.root_file, &root_pem).unwrap();

        self.ok(
            Method::POST,
            "sys/mounts/pki_int",
            json!({"type": "pki", "config": {"max_lease_ttl": "43800h"}}),
        )
        .await;
        let csr = self
            .ok(
                Method::POST,
                "pki_int/intermediate/generate/internal",
                json!({"common_name": "acmeproxy test OpenBao Intermediate",
                       "key_type": "ec", "key_bits": 256}),
            )
            .await;
        let signed = self
            .ok(
                Method::POST,
                "pki/root/sign-intermediate",
                json!({"csr": csr["data"]["csr"], "ttl": "43800h",
                       "format": if opts.intermediate_only { "pem" } else { "pem_bundle" }}),
            )
            .await;
        let bundle = signed["data"]["certificate"].as_str().unwrap().to_owned();
        self.intermediate_der = first_der(&bundle);
        self.ok(
            Method::POST,
            "pki_int/intermediate/set-signed",
            json!({"certificate": bundle}),
        )
        .await;

        let ttl = format!("{}s", ROLE_TTL.as_secs());
        let max_ttl = format!("{}s", ROLE_MAX_TTL.as_secs());
        let restricted = json!({
            "allowed_domains": ["test", "localhost"],
            "allow_subdomains": true,
            "allow_bare_domains": true,
            "allow_ip_sans": true,
            "ttl": ttl,
            "max_ttl": max_ttl,
        });
        // Vault's defaults otherwise: require_cn, use_csr_common_name,
        // use_csr_sans and enforce_hostnames are true.
        let roles = [
            (ROLE_EC, json!({"key_type": "ec"})),
            (ROLE_ED25519, json!({"key_type": "ed25519"})),
            (ROLE_RSA, json!({"key_type": "rsa"})),
            (
                ROLE_ANY,
                json!({"key_type": "any", "allow_any_name": true,
                              "allowed_domains": [], "allow_subdomains": false,
                              "allow_bare_domains": false}),
            ),
            (ROLE_NO_CN, json!({"key_type": "any", "require_cn": false})),
        ];
        for (role, own) in roles {
            let mut body = restricted.clone();
            for (k, v) in own.as_object().unwrap() {
                body[k] = v.clone();
            }
            self.ok(Method::POST, &format!("pki_int/roles/{role}"), body)
                .await;
        }

        let policy = r#"
path "pki_int/sign/*" { capabilities = ["update"] }
path "pki_int/revoke" { capabilities = ["update"] }
path "pki_int/cert/*" { capabilities = ["read"] }
path "pki_int/cert/ca_chain" { capabilities = ["read"] }
"#;
        self.ok(
            Method::PUT,
            "sys/policies/acl/acmeproxy-ra",
            json!({ "policy": policy }),
        )
        .await;
        self.ok(Method::POST, "sys/auth/approle", json!({"type": "approle"}))
            .await;
        let mut role = json!({"token_policies": ["acmeproxy-ra"]});
        if let Some(t) = opts.token_ttl {
            role["token_ttl"] = format!("{}s", t.as_secs()).into();
        }
        if let Some(t) = opts.token_max_ttl {
            role["token_max_ttl"] = format!("{}s", t.as_secs()).into();
        }
        self.ok(Method::POST, &format!("auth/approle/role/{APPROLE}"), role)
            .await;
        let rid = self
            .ok(
                Method::GET,
                &format!("auth/approle/role/{APPROLE}/role-id"),
                Value::Null,
            )
            .await;
        self.role_id = rid["data"]["role_id"].as_str().unwrap().to_owned();
        let sid = self
            .ok(
                Method::POST,
                &format!("auth/approle/role/{APPROLE}/secret-id"),
                json!({}),
            )
            .await;
        self.secret_id = sid["data"]["secret_id"].as_str().unwrap().to_owned();
    }

    /// One API call with the root token: status and JSON body (`Null` if empty).
    pub async fn api(&self, method: Method, path: &str, body: Value) -> (u16, Value) {
        self.api_with(method, path, body, &[]).await
    }

    async fn api_with(
        &self,
        method: Method,
        path: &str,
        body: Value,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.clone(), format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", &self.root_token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if !body.is_null() {
            req = req.json(&body);
        }
        let rsp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e:?}"));
        let status = rsp.status().as_u16();
        let text = rsp.text().await.unwrap();
        let json = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
        };
        (status, json)
    }

    /// An API call that must succeed.
    pub async fn ok(&self, method: Method, path: &str, body: Value) -> Value {
        let (status, v) = self.api(method.clone(), path, body).await;
        assert!(
            (200..300).contains(&status),
            "OpenBao {method} {path}: HTTP {status}: {v}\n{}",
            tail(&self.log, 20)
        );
        v
    }

    fn list() -> Method {
        Method::from_bytes(b"LIST").unwrap()
    }

    /// The serials (`aa:bb:…`) in `pki_int/certs/revoked`.
    pub async fn revoked_serials(&self) -> Vec<String> {
        let (status, v) = self
            .api(Self::list(), "pki_int/certs/revoked", Value::Null)
            .await;
        if status == 404 {
            return Vec::new();
        }
        assert_eq!(status, 200, "{v}");
        v["data"]["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_owned())
            .collect()
    }

    /// The accessors of the live tokens the AppRole `ra` logged in for.
    pub async fn approle_token_accessors(&self) -> Vec<String> {
        let v = self
            .ok(Self::list(), "auth/token/accessors", Value::Null)
            .await;
        let mut out = Vec::new();
        for a in v["data"]["keys"].as_array().unwrap() {
            let (status, info) = self
                .api(
                    Method::POST,
                    "auth/token/lookup-accessor",
                    json!({"accessor": a}),
                )
                .await;
            if status == 200 && info["data"]["meta"]["role_name"] == APPROLE {
                out.push(a.as_str().unwrap().to_owned());
            }
        }
        out
    }

    /// Revokes every live token of the AppRole `ra`; how many there were.
    pub async fn revoke_approle_tokens(&self) -> usize {
        let accessors = self.approle_token_accessors().await;
        for a in &accessors {
            self.ok(
                Method::POST,
                "auth/token/revoke-accessor",
                json!({ "accessor": a }),
            )
            .await;
        }
        accessors.len()
    }

    /// A response-wrapping token for a new secret ID of the AppRole, as
    /// `bao write -wrap-ttl=60s -f auth/approle/role/ra/secret-id` gives.
    pub async fn wrapped_secret_id(&self) -> String {
        let (status, v) = self
            .api_with(
                Method::POST,
                &format!("auth/approle/role/{APPROLE}/secret-id"),
                json!({}),
                &[("X-Vault-Wrap-TTL", "60s")],
            )
            .await;
        assert_eq!(status, 200, "{v}");
        v["wrap_info"]["token"].as_str().unwrap().to_owned()
    }

    /// The audit log's responses, in order: `(path, error)` with `error`
    /// empty on success.
    pub fn audit_responses(&self) -> Vec<(String, String)> {
        fs::read_to_string(&self.audit_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["type"] == "response")
            .map(|v| {
                (
                    v["request"]["path"].as_str().unwrap_or_default().to_owned(),
                    v["error"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// How many responses to `path` the audit log holds: `(succeeded, failed)`.
    pub fn audit_count(&self, path: &str) -> (usize, usize) {
        let all = self.audit_responses();
        let ok = all
            .iter()
            .filter(|(p, e)| p == path && e.is_empty())
            .count();
        let failed = all
            .iter()
            .filter(|(p, e)| p == path && !e.is_empty())
            .count();
        (ok, failed)
    }

    /// The vaultcas `authority.config` for an AppRole login with the plain
    /// secret ID, a role per key type.
    pub fn approle_config(&self) -> Value {
        json!({
            "pkiMountPath": "pki_int",
            "pkiRoleDefault": ROLE_ANY,
            "pkiRoleEC": ROLE_EC,
            "pkiRoleEd25519": ROLE_ED25519,
            "pkiRoleRSA": ROLE_RSA,
            "authType": "approle",
            "authMountPath": "approle",
            "authOptions": {"roleID": self.role_id, "secretID": self.secret_id},
        })
    }

    /// [`Self::approle_config`] with `role` for every key type.
    pub fn approle_config_one_role(&self, role: &str) -> Value {
        let mut c = self.approle_config();
        for k in [
            "pkiRoleDefault",
            "pkiRoleEC",
            "pkiRoleEd25519",
            "pkiRoleRSA",
        ] {
            c[k] = role.into();
        }
        c
    }

    /// A whole `authority` block for vaultcas with `config`; OpenBao's TLS
    /// CA pinned by fingerprint.
    pub fn authority_json(&self, config: Value) -> Value {
        json!({
            "type": "vaultcas",
            "certificateAuthority": self.addr,
            "certificateAuthorityFingerprint": self.tls_ca_fingerprint,
            "config": config,
            "provisioners": [{"type": "ACME", "name": "acme"}],
        })
    }

    /// OpenBao's own log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// Where the `bao` files are (the audit log, TLS CA, log).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}
