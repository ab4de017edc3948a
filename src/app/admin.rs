//! Offline administration: `init` writes a starter configuration; `eab`
//! manages External Account Binding keys directly in the store (the embedded
//! store admits one process, so the server must be stopped).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{create_private_dir, open_store};
use serde_json::Value;

use super::admin_socket::{self, AdminRequest};
use crate::cli::AdminCommand;
use crate::config::Config;
use crate::ra::eab;
use crate::store::Records;

/// `acmeproxy init`: writes DIR/ca.json for softcas + sled on `address`.
pub(super) fn init(dir: &Path, address: &str, metrics_port: u16) -> anyhow::Result<()> {
    create_private_dir(dir)?;
    let path = dir.join("ca.json");
    let data = std::path::absolute(dir.join("data")).context("resolving the data directory")?;
    let mut doc = serde_json::json!({
        "address": address,
        "dnsNames": ["localhost", "127.0.0.1"],
        "dataDir": data,
        "db": {"type": "sled"},
        "logger": {"format": "text"},
        "metrics": {"enabled": true, "address": format!("127.0.0.1:{metrics_port}")},
        "authority": {
            "type": "softcas",
            "config": {"certlifetime": 90},
            "provisioners": [{"type": "ACME", "name": "acme"}]
        },
        "validation": {"httpPort": 80, "tlsAlpnPort": 443, "resolvers": [], "timeoutSeconds": 15}
    });
    // A loopback-only server's clients are on this machine: let validation
    // reach them there (docs/security.md, "Validation egress").
    let loopback = parse_loopback(address);
    if loopback {
        doc["validation"]["denyNetworks"] =
            serde_json::json!(crate::config::loopback_demo_networks());
    }
    let text = serde_json::to_string_pretty(&doc).context("encoding ca.json")?;
    // Validate what we write with the same code as start-up.
    Config::parse(&text).context("the starter configuration does not validate")?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| {
            format!(
                "writing {} (it may exist already; remove it to start over)",
                path.display()
            )
        })?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.write_all(b"\n"))
        .with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    if loopback {
        println!(
            "validation may connect to loopback, as this server listens on loopback only \
             (validation.denyNetworks; see docs/security.md before listening elsewhere)"
        );
    }
    println!("start the server:  acmeproxy {}", path.display());
    let shown = if address.starts_with(':') {
        format!("localhost{address}")
    } else {
        address.to_owned()
    };
    println!("directory URL:     https://{shown}/acme/acme/directory");
    println!(
        "clients trust:     {}",
        data.join("softcas").join("root.crt").display()
    );
    Ok(())
}

/// Whether `address` (`127.0.0.1:8443`, `[::1]:8443`, `:8443`) listens on
/// loopback only.
fn parse_loopback(address: &str) -> bool {
    address
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback())
}

/// `acmeproxy eab|accounts|orders|certs …`: through the running server's
/// admin socket; EAB keys directly in the store when no server runs.
pub(super) async fn admin(cmd: AdminCommand) -> anyhow::Result<()> {
    let (config, req, json_out) = cmd.request()?;
    let (cfg, _) =
        Config::load(&config).with_context(|| format!("configuration {}", config.display()))?;
    let socket = cfg.data_dir.join(admin_socket::SOCKET_NAME);
    let data = if tokio::net::UnixStream::connect(&socket).await.is_ok() {
        admin_socket::call(&socket, &req).await?
    } else if let Some(data) = offline_eab(&cfg, &req).await? {
        data
    } else {
        // Not an EAB command: it needs the running server.
        admin_socket::call(&socket, &req).await?
    };
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&data).unwrap_or_default()
        );
    } else {
        print_human(&req, &data);
    }
    Ok(())
}

/// EAB commands run against the store itself when the server is stopped.
async fn offline_eab(
    cfg: &crate::config::Settings,
    req: &AdminRequest,
) -> anyhow::Result<Option<Value>> {
    if !matches!(
        req,
        AdminRequest::EabAdd { .. } | AdminRequest::EabList | AdminRequest::EabRemove { .. }
    ) {
        return Ok(None);
    }
    let records =
        Records::new(open_store(cfg).await.context(
            "opening the store (is the server starting or stopping? retry in a moment)",
        )?);
    let detail = |e: crate::ra::RaError| anyhow::anyhow!("{}", e.problem.detail);
    Ok(Some(match req {
        AdminRequest::EabAdd {
            provisioner,
            kid,
            policy,
        } => {
            if !cfg.provisioners.iter().any(|p| &p.name == provisioner) {
                bail!("there is no provisioner {provisioner:?} in the configuration");
            }
            let k = eab::create_key(
                &records,
                provisioner,
                kid.clone(),
                policy.clone(),
                time::OffsetDateTime::now_utc(),
            )
            .await
            .map_err(detail)?;
            serde_json::json!({
                "kid": k.kid,
                "hmac_key": URL_SAFE_NO_PAD.encode(&k.hmac_key),
                "provisioner": k.provisioner,
            })
        }
        AdminRequest::EabList => Value::Array(
            eab::list_keys(&records)
                .await
                .map_err(detail)?
                .iter()
                .map(admin_socket::eab_view)
                .collect(),
        ),
        AdminRequest::EabRemove { kid } => {
            eab::remove_key(&records, kid).await.map_err(detail)?;
            serde_json::json!({"removed": kid})
        }
        _ => return Ok(None),
    }))
}

fn s(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(x) => x.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// The strings of the array at `k`, comma-separated (empty if none).
fn joined(v: &Value, k: &str) -> String {
    v[k].as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// Prints `rows` under `headers` with each column as wide as its widest cell.
fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let text: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    (*c).to_owned()
                } else {
                    format!("{c:<width$}", width = widths[i])
                }
            })
            .collect();
        println!("{}", text.join("  "));
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// An RFC 3339 time cut to whole seconds, for tables.
fn secs(ts: &str) -> String {
    match (ts.find('.'), ts.rfind(['Z', '+'])) {
        (Some(dot), Some(end)) if dot < end => format!("{}{}", &ts[..dot], &ts[end..]),
        _ => ts.to_owned(),
    }
}

/// A table of objects with an id, a status and a creation time: the
/// columns are `id`, the member `owner`, `status`, `created` and the list
/// member `names`.
fn status_table(rows: &[Value], headers: [&str; 5], (owner, names): (&str, &str)) {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                s(r, "id"),
                s(r, owner),
                s(r, "status"),
                secs(&s(r, "created")),
                joined(r, names),
            ]
        })
        .collect();
    table(&headers, &cells);
}

fn print_human(req: &AdminRequest, data: &Value) {
    let rows = data.as_array().cloned().unwrap_or_default();
    match req {
        // Written to a file by `admin backup`, never printed.
        AdminRequest::Backup => {}
        AdminRequest::EabAdd { .. } => {
            println!("kid:         {}", s(data, "kid"));
            println!("hmac key:    {}", s(data, "hmac_key"));
            println!("provisioner: {}", s(data, "provisioner"));
            println!(
                "(the MAC key is shown once; give both to the client, e.g. certbot --eab-kid … --eab-hmac-key …)"
            );
        }
        AdminRequest::EabRemove { .. } => println!("removed {}", s(data, "removed")),
        AdminRequest::EabList => table(
            &["KID", "PROVISIONER", "CREATED", "BOUND ACCOUNT"],
            &rows
                .iter()
                .map(|r| {
                    vec![
                        s(r, "kid"),
                        s(r, "provisioner"),
                        secs(&s(r, "created")),
                        s(r, "bound_account"),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
        AdminRequest::AccountsList => status_table(
            &rows,
            ["ID", "PROVISIONER", "STATUS", "CREATED", "CONTACT"],
            ("provisioner", "contact"),
        ),
        AdminRequest::AccountShow { .. } | AdminRequest::AccountDeactivate { .. } => {
            for k in [
                "id",
                "provisioner",
                "status",
                "contact",
                "eab_kid",
                "created",
                "key_thumbprint",
            ] {
                println!("{k:<15} {}", s(data, k));
            }
        }
        AdminRequest::AccountLimits { .. } => {
            if rows.is_empty() {
                println!("no rate-limit bucket in use: the account is served in full");
                return;
            }
            println!(
                "{:<42} {:>8} {:>6} {:>11} {:<16} KEY",
                "LIMIT", "TOKENS", "BURST", "RETRY IN S", "RATE"
            );
            for r in rows {
                println!(
                    "{:<42} {:>8} {:>6} {:>11} {:<16} {}",
                    s(&r, "limit"),
                    s(&r, "tokens"),
                    s(&r, "burst"),
                    s(&r, "retry_after_secs"),
                    s(&r, "rate"),
                    s(&r, "key")
                );
            }
        }
        AdminRequest::AccountResetLimits { .. } => println!(
            "account {}: {} rate-limit bucket(s) emptied; it is served in full",
            s(data, "account"),
            s(data, "buckets_reset")
        ),
        AdminRequest::OrdersList { .. } => status_table(
            &rows,
            ["ID", "ACCOUNT", "STATUS", "CREATED", "IDENTIFIERS"],
            ("account", "identifiers"),
        ),
        AdminRequest::CertsList { .. } => table(
            &["ID", "SERIAL", "NOT AFTER", "REVOKED", "ACCOUNT", "NAMES"],
            &rows
                .iter()
                .map(|r| {
                    vec![
                        s(r, "id"),
                        s(r, "serial"),
                        secs(&s(r, "not_after")),
                        if r["revoked"].is_null() { "no" } else { "yes" }.to_owned(),
                        s(r, "account"),
                        joined(r, "names"),
                    ]
                })
                .collect::<Vec<_>>(),
        ),
        AdminRequest::CertShow { .. } | AdminRequest::CertRevoke { .. } => {
            for k in [
                "id",
                "serial",
                "account",
                "order",
                "not_before",
                "not_after",
                "upstream",
                "revoked",
            ] {
                println!("{k:<11} {}", s(data, k));
            }
            if let Some(chain) = data["chain_pem"].as_str() {
                print!("{chain}");
            }
        }
    }
}
