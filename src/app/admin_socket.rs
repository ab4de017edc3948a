//! The local admin socket: a Unix socket `<dataDir>/admin.sock` (mode 0600)
//! that the `acmeproxy eab|accounts|orders|certs` commands talk to while the
//! server runs (the embedded store admits one process). One JSON request
//! line in, one JSON response line out.

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

use crate::acme::types::OrderStatus;
use crate::model::{AccountRecord, CertificateRecord, EabKeyRecord, EabPolicy, OrderRecord};
use crate::ra::{Authority, RaError, eab};

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

/// Serves the admin socket until `shutdown`.
pub(super) async fn serve(
    path: PathBuf,
    ra: Arc<Authority>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            anyhow::bail!("{} is served by another acmeproxy process", path.display());
        }
        std::fs::remove_file(&path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
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
            let ra = Arc::clone(&ra);
            tokio::spawn(async move {
                if let Err(e) = handle(stream, &ra).await {
                    tracing::debug!(error = %e, "admin connection ended with an error");
                }
            });
        }
        let _ = std::fs::remove_file(&path);
    });
    Ok(())
}

async fn handle(stream: UnixStream, ra: &Authority) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(MAX_REQUEST))
        .read_line(&mut line)
        .await?;
    let response = match serde_json::from_str::<AdminRequest>(&line) {
        Ok(req) => {
            tracing::info!(cmd = ?std::mem::discriminant(&req), "admin request");
            match execute(ra, req).await {
                Ok(data) => AdminResponse {
                    ok: true,
                    data: Some(data),
                    error: None,
                },
                Err(e) => {
                    if e.is_internal() {
                        tracing::error!(error = %e, source = ?e.source, "admin request failed");
                    }
                    AdminResponse {
                        ok: false,
                        data: None,
                        error: Some(e.problem.detail.clone()),
                    }
                }
            }
        }
        Err(e) => AdminResponse {
            ok: false,
            data: None,
            error: Some(format!("not an admin request: {e}")),
        },
    };
    let mut out = serde_json::to_vec(&response).unwrap_or_default();
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
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
        AdminRequest::EabList => Value::Array(
            eab::list_keys(ra.records())
                .await?
                .iter()
                .map(eab_view)
                .collect(),
        ),
        AdminRequest::EabRemove { kid } => {
            eab::remove_key(ra.records(), &kid).await?;
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

fn cert_view(c: &CertificateRecord, with_chain: bool) -> Value {
    let mut v = json!({
        "id": c.id,
        "serial": c.serial_hex,
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
