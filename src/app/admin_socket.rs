//! The local admin socket: a Unix socket `<dataDir>/admin.sock` (mode 0600)
//! that the `acmeproxy eab|accounts|orders|certs|admin` commands talk to
//! while the server runs (the embedded store admits one process). One JSON
//! request line in, one JSON response line out; after the response line of
//! a `backup` request, the backup itself (see `src/app/backup.rs`).
//!
//! The socket is private from the moment it exists: it is bound inside a
//! fresh 0700 directory, made 0600 there, and only then renamed into place.
//! Every connection's peer is checked with `SO_PEERCRED`: only root and the
//! server's own user are served; anyone else gets a refusal, and is logged.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use super::backup::BackupFiles;
use crate::acme::types::OrderStatus;
use crate::model::{AccountRecord, CertificateRecord, EabKeyRecord, EabPolicy, OrderRecord};
use crate::ra::{Authority, RaError};

/// The socket's file name in the data directory.
pub const SOCKET_NAME: &str = "admin.sock";

/// Largest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;

/// A request to the admin socket.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum AdminRequest {
    EabAdd {
        provisioner: String,
        kid: Option<String>,
        #[serde(default)]
        policy: Option<EabPolicy>,
    },
    EabList,
    EabRemove {
        kid: String,
    },
    AccountsList,
    AccountShow {
        id: String,
    },
    AccountDeactivate {
        id: String,
    },
    AccountLimits {
        id: String,
    },
    AccountResetLimits {
        id: String,
    },
    OrdersList {
        account: Option<String>,
        status: Option<OrderStatus>,
    },
    CertsList {
        account: Option<String>,
    },
    CertShow {
        id: String,
    },
    CertRevoke {
        id: String,
        reason: u8,
    },
    /// An online backup, streamed after the answer line.
    Backup,
}

impl AdminRequest {
    /// The action and its target, for the log (no secrets: requests carry
    /// none).
    pub fn describe(&self) -> String {
        let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "any".to_owned());
        match self {
            Self::EabAdd {
                provisioner, kid, ..
            } => format!(
                "eab add: kid {} for provisioner {provisioner}",
                kid.as_deref().unwrap_or("(random)")
            ),
            Self::EabList => "eab list".to_owned(),
            Self::EabRemove { kid } => format!("eab remove: kid {kid}"),
            Self::AccountsList => "accounts list".to_owned(),
            Self::AccountShow { id } => format!("accounts show: {id}"),
            Self::AccountDeactivate { id } => format!("accounts deactivate: {id}"),
            Self::AccountLimits { id } => format!("accounts limits: {id}"),
            Self::AccountResetLimits { id } => format!("accounts reset-limits: {id}"),
            Self::OrdersList { account, status } => format!(
                "orders list: account {}, status {}",
                opt(account),
                status.map_or_else(|| "any".to_owned(), |s| format!("{s:?}").to_lowercase())
            ),
            Self::CertsList { account } => format!("certs list: account {}", opt(account)),
            Self::CertShow { id } => format!("certs show: {id}"),
            Self::CertRevoke { id, reason } => format!("certs revoke: {id}, reason {reason}"),
            Self::Backup => "admin backup".to_owned(),
        }
    }
}

/// The answer: `{"ok": true, "data": …}` or `{"ok": false, "error": "…"}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AdminResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl AdminResponse {
    /// A success carrying `data`.
    pub fn ok(data: Value) -> Self {
        Self {
            ok: true,
            data: Some(data),
            error: None,
        }
    }

    /// A failure saying `error`.
    pub fn error(error: impl Into<String>) -> Self {
        Self {
            ok: false,
            data: None,
            error: Some(error.into()),
        }
    }
}

/// Serves the admin socket until `shutdown`.
pub(super) async fn serve(
    path: PathBuf,
    ra: Arc<Authority>,
    backup_files: BackupFiles,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            anyhow::bail!("{} is served by another acmeproxy process", path.display());
        }
        std::fs::remove_file(&path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener = bind_private(&path)?;
    let own_uid = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&path)
            .with_context(|| format!("reading the owner of {}", path.display()))?
            .uid()
    };
    let backup_files = Arc::new(backup_files);
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin socket accept failed");
                        continue;
                    }
                },
                () = shutdown.cancelled() => break,
            };
            match stream.peer_cred() {
                Ok(cred) if peer_allowed(cred.uid(), own_uid) => {}
                Ok(cred) => {
                    tracing::warn!(
                        uid = cred.uid(),
                        pid = ?cred.pid(),
                        own_uid,
                        "admin socket: refused a connection from a user that is neither root nor the server's"
                    );
                    tokio::spawn(refuse(stream, cred.uid(), own_uid));
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket: cannot read the peer's credentials; connection refused");
                    continue;
                }
            }
            let ra = Arc::clone(&ra);
            let backup_files = Arc::clone(&backup_files);
            tokio::spawn(async move {
                if let Err(e) = handle(stream, &ra, &backup_files).await {
                    tracing::debug!(error = %e, "admin connection ended with an error");
                }
            });
        }
        let _ = std::fs::remove_file(&path);
    });
    Ok(())
}

/// Binds the socket at `path` so that it is never reachable by others: in a
/// new 0700 directory beside it, made 0600 there, then renamed into place.
fn bind_private(path: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let parent = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    let private = parent.join(format!(".admin-sock.{}", std::process::id()));
    if private.exists() {
        // Left by an earlier process with our pid (a crash, a container
        // restart): ours to remove.
        let _ = std::fs::remove_file(private.join(SOCKET_NAME));
        std::fs::remove_dir(&private)
            .with_context(|| format!("removing the stale directory {}", private.display()))?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| format!("creating {}", private.display()))?;
    let bound = (|| {
        let tmp = private.join(SOCKET_NAME);
        let listener =
            UnixListener::bind(&tmp).with_context(|| format!("binding {}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("moving the socket to {}", path.display()))?;
        Ok(listener)
    })();
    if bound.is_err() {
        let _ = std::fs::remove_file(private.join(SOCKET_NAME));
    }
    let _ = std::fs::remove_dir(&private);
    bound
}

/// Whether a peer with `peer_uid` may use the admin socket of a server
/// running as `own_uid`: root, or the same user.
pub(crate) fn peer_allowed(peer_uid: u32, own_uid: u32) -> bool {
    peer_uid == 0 || peer_uid == own_uid
}

/// Tells a refused peer why, then closes. Its request line is read (and
/// ignored) first, so that a client writing it does not meet a closed socket
/// instead of the answer.
async fn refuse(stream: UnixStream, uid: u32, own_uid: u32) {
    let response = AdminResponse {
        ok: false,
        data: None,
        error: Some(format!(
            "permission denied: the admin socket serves root and the server's user (uid {own_uid}), not uid {uid}"
        )),
    };
    let mut out = serde_json::to_vec(&response).unwrap_or_default();
    out.push(b'\n');
    let (read, mut write) = stream.into_split();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let mut ignored = Vec::new();
        BufReader::new(read.take(MAX_REQUEST))
            .read_until(b'\n', &mut ignored)
            .await?;
        write.write_all(&out).await?;
        write.shutdown().await
    })
    .await;
}

async fn handle(
    stream: UnixStream,
    ra: &Authority,
    backup_files: &BackupFiles,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(MAX_REQUEST))
        .read_line(&mut line)
        .await?;
    let response = match serde_json::from_str::<AdminRequest>(&line) {
        Ok(AdminRequest::Backup) => {
            tracing::info!(action = %AdminRequest::Backup.describe(), "admin request");
            return super::backup::serve(ra, backup_files, &mut write).await;
        }
        Ok(req) => {
            tracing::info!(action = %req.describe(), "admin request");
            match execute(ra, req).await {
                Ok(data) => AdminResponse::ok(data),
                Err(e) => {
                    if e.is_internal() {
                        tracing::error!(error = %crate::telemetry::causes(&e), "admin request failed");
                    }
                    AdminResponse::error(e.problem.detail.clone())
                }
            }
        }
        Err(e) => AdminResponse::error(format!("not an admin request: {e}")),
    };
    respond(&mut write, response).await?;
    write.shutdown().await
}

/// Writes one answer line.
pub(super) async fn respond(
    write: &mut (impl tokio::io::AsyncWrite + Unpin),
    response: AdminResponse,
) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(&response).unwrap_or_default();
    out.push(b'\n');
    write.write_all(&out).await
}

async fn execute(ra: &Authority, req: AdminRequest) -> Result<Value, RaError> {
    Ok(match req {
        AdminRequest::EabAdd {
            provisioner,
            kid,
            policy,
        } => {
            let k = ra.create_eab_key(&provisioner, kid, policy).await?;
            json!({
                "kid": k.kid,
                "hmac_key": URL_SAFE_NO_PAD.encode(&k.hmac_key),
                "provisioner": k.provisioner,
            })
        }
        AdminRequest::EabList => Value::Array(ra.eab_keys().await?.iter().map(eab_view).collect()),
        AdminRequest::EabRemove { kid } => {
            ra.remove_eab_key(&kid).await?;
            json!({"removed": kid})
        }
        AdminRequest::AccountsList => Value::Array(
            ra.admin_accounts()
                .await?
                .iter()
                .map(account_view)
                .collect(),
        ),
        AdminRequest::AccountShow { id } => account_view(&ra.admin_account(&id).await?),
        AdminRequest::AccountDeactivate { id } => {
            account_view(&ra.admin_deactivate_account(&id).await?)
        }
        AdminRequest::AccountLimits { id } => {
            serde_json::to_value(ra.admin_account_limits(&id).await?)
                .map_err(|e| RaError::internal("encoding the rate-limit buckets", e))?
        }
        AdminRequest::AccountResetLimits { id } => {
            json!({"account": id, "buckets_reset": ra.admin_reset_account_limits(&id).await?})
        }
        AdminRequest::OrdersList { account, status } => Value::Array(
            ra.admin_orders(account.as_deref(), status)
                .await?
                .iter()
                .map(order_view)
                .collect(),
        ),
        AdminRequest::CertsList { account } => Value::Array(
            ra.admin_certificates(account.as_deref())
                .await?
                .iter()
                .map(|c| cert_view(c, false))
                .collect(),
        ),
        AdminRequest::CertShow { id } => cert_view(&ra.admin_certificate(&id).await?, true),
        AdminRequest::CertRevoke { id, reason } => {
            cert_view(&ra.admin_revoke(&id, reason).await?, false)
        }
        // Streamed by `handle`, never answered with one value.
        AdminRequest::Backup => {
            return Err(RaError::new(
                crate::acme::ProblemType::Malformed,
                "a backup is streamed, not answered in one line",
            ));
        }
    })
}

fn t(ts: time::OffsetDateTime) -> String {
    crate::http::render_time(ts)
}

pub(super) fn eab_view(k: &EabKeyRecord) -> Value {
    json!({
        "kid": k.kid,
        "provisioner": k.provisioner,
        "created": t(k.created_at),
        "bound_account": k.bound_account,
        "policy": k.policy,
    })
}

fn account_view(a: &AccountRecord) -> Value {
    json!({
        "id": a.id,
        "provisioner": a.provisioner,
        "status": a.status,
        "contact": a.contact,
        "eab_kid": a.eab_kid,
        "created": t(a.created_at),
        "key_thumbprint": a.thumbprint,
    })
}

fn order_view(o: &OrderRecord) -> Value {
    json!({
        "id": o.id,
        "account": o.account_id,
        "provisioner": o.provisioner,
        "status": o.status,
        "identifiers": o.identifiers.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "created": t(o.created_at),
        "expires": t(o.expires),
        "certificate": o.certificate_id,
        "error": o.error.as_ref().map(|e| e.detail.clone()),
    })
}

/// The DNS names and IP addresses of the chain's leaf.
fn leaf_names(chain_pem: &str) -> Vec<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let Some(der) = pem::parse_many(chain_pem)
        .ok()
        .and_then(|blocks| blocks.into_iter().next())
    else {
        return Vec::new();
    };
    let Ok((_, leaf)) = X509Certificate::from_der(der.contents()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = leaf.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b)
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                16 => <[u8; 16]>::try_from(*b)
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn cert_view(c: &CertificateRecord, with_chain: bool) -> Value {
    let mut v = json!({
        "id": c.id,
        "serial": c.serial_hex,
        "names": leaf_names(&c.chain_pem),
        "account": c.account_id,
        "order": c.order_id,
        "not_before": t(c.not_before),
        "not_after": t(c.not_after),
        "upstream": c.upstream,
        "revoked": c.revocation.as_ref().map(|r| json!({"reason": r.reason, "at": t(r.revoked_at)})),
    });
    if with_chain {
        v["chain_pem"] = Value::String(c.chain_pem.clone());
    }
    v
}

/// Sends one request to a running server's admin socket.
pub async fn call(path: &Path, req: &AdminRequest) -> anyhow::Result<Value> {
    let stream = UnixStream::connect(path).await.with_context(|| {
        format!(
            "the server is not running (no admin socket answers at {}); start it with `acmeproxy serve ca.json`",
            path.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(req).context("encoding the request")?;
    line.push(b'\n');
    write
        .write_all(&line)
        .await
        .context("writing to the admin socket")?;
    let mut answer = String::new();
    BufReader::new(read)
        .read_line(&mut answer)
        .await
        .context("reading the admin socket")?;
    let resp: AdminResponse =
        serde_json::from_str(&answer).context("the admin socket's answer is unreadable")?;
    if resp.ok {
        Ok(resp.data.unwrap_or(Value::Null))
    } else {
        anyhow::bail!("{}", resp.error.unwrap_or_else(|| "request failed".into()))
    }
}

impl crate::cli::AdminCommand {
    /// The configuration file, the socket request, and whether JSON is wanted.
    pub(super) fn request(&self) -> anyhow::Result<(PathBuf, AdminRequest, bool)> {
        use crate::cli::{
            AccountsCommand as A, CertsCommand as Ce, EabCommand as E, OrdersCommand as O,
        };
        Ok(match self {
            Self::Eab(E::Add {
                config,
                provisioner,
                kid,
                allow_dns,
                allow_ip,
                deny_dns,
                deny_ip,
                allow_wildcards,
                prevalidated,
            }) => {
                let policy = EabPolicy {
                    allow_dns: allow_dns.clone(),
                    allow_ip: allow_ip.clone(),
                    deny_dns: deny_dns.clone(),
                    deny_ip: deny_ip.clone(),
                    allow_wildcard_names: *allow_wildcards,
                    prevalidated: *prevalidated,
                };
                let any = policy != EabPolicy::default();
                (
                    config.clone(),
                    AdminRequest::EabAdd {
                        provisioner: provisioner.clone(),
                        kid: kid.clone(),
                        policy: any.then_some(policy),
                    },
                    false,
                )
            }
            Self::Eab(E::List { config, json }) => (config.clone(), AdminRequest::EabList, *json),
            Self::Eab(E::Remove { config, kid }) => (
                config.clone(),
                AdminRequest::EabRemove { kid: kid.clone() },
                false,
            ),
            Self::Accounts(A::List { config, json }) => {
                (config.clone(), AdminRequest::AccountsList, *json)
            }
            Self::Accounts(A::Show { config, id, json }) => (
                config.clone(),
                AdminRequest::AccountShow { id: id.clone() },
                *json,
            ),
            Self::Accounts(A::Deactivate { config, id }) => (
                config.clone(),
                AdminRequest::AccountDeactivate { id: id.clone() },
                false,
            ),
            Self::Accounts(A::Limits { config, id, json }) => (
                config.clone(),
                AdminRequest::AccountLimits { id: id.clone() },
                *json,
            ),
            Self::Accounts(A::ResetLimits { config, id }) => (
                config.clone(),
                AdminRequest::AccountResetLimits { id: id.clone() },
                false,
            ),
            Self::Orders(O::List {
                config,
                account,
                status,
                json,
            }) => {
                let status = status
                    .as_deref()
                    .map(|s| {
                        serde_json::from_value::<OrderStatus>(Value::String(s.to_owned())).map_err(|_| {
                            anyhow::anyhow!("--status {s:?}: use pending, ready, processing, valid or invalid")
                        })
                    })
                    .transpose()?;
                (
                    config.clone(),
                    AdminRequest::OrdersList {
                        account: account.clone(),
                        status,
                    },
                    *json,
                )
            }
            Self::Certs(Ce::List {
                config,
                account,
                json,
            }) => (
                config.clone(),
                AdminRequest::CertsList {
                    account: account.clone(),
                },
                *json,
            ),
            Self::Certs(Ce::Show { config, id, json }) => (
                config.clone(),
                AdminRequest::CertShow { id: id.clone() },
                *json,
            ),
            Self::Certs(Ce::Revoke { config, id, reason }) => (
                config.clone(),
                AdminRequest::CertRevoke {
                    id: id.clone(),
                    reason: *reason,
                },
                false,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_and_the_servers_user_are_served() {
        assert!(peer_allowed(0, 1000));
        assert!(peer_allowed(1000, 1000));
        assert!(!peer_allowed(1001, 1000));
        assert!(!peer_allowed(65534, 1000));
        assert!(peer_allowed(0, 0));
        assert!(!peer_allowed(1000, 0));
    }

    #[tokio::test]
    async fn the_socket_is_bound_private_and_moved_into_place() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        // A data directory others may enter, as an existing one can be.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join(SOCKET_NAME);
        let listener = bind_private(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        // Nothing else is left in the directory.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(names, [std::ffi::OsString::from(SOCKET_NAME)]);
        // The renamed socket still answers.
        let client = UnixStream::connect(&path).await;
        assert!(client.is_ok(), "{client:?}");
        let (server_end, _) = listener.accept().await.unwrap();
        let cred = server_end.peer_cred().unwrap();
        assert!(peer_allowed(cred.uid(), meta.uid()));
    }
}
