//! Offline administration: `init` writes a starter configuration; `eab`
//! manages External Account Binding keys directly in the store (the embedded
//! store admits one process, so the server must be stopped).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{create_private_dir, open_store};
use crate::cli::EabCommand;
use crate::config::Config;
use crate::ra::eab;
use crate::store::Records;

/// `acmeproxy init`: writes DIR/ca.json for softcas + sled on `address`.
pub(super) fn init(dir: &Path, address: &str, metrics_port: u16) -> anyhow::Result<()> {
    create_private_dir(dir)?;
    let path = dir.join("ca.json");
    let data = std::path::absolute(dir.join("data")).context("resolving the data directory")?;
    let doc = serde_json::json!({
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

/// `acmeproxy eab …`.
pub(super) async fn eab(cmd: EabCommand) -> anyhow::Result<()> {
    let config = match &cmd {
        EabCommand::Add { config, .. }
        | EabCommand::List { config }
        | EabCommand::Remove { config, .. } => config.clone(),
    };
    let (cfg, _) =
        Config::load(&config).with_context(|| format!("configuration {}", config.display()))?;
    let records = Records::new(open_store(&cfg).await.context(
        "opening the store (stop the server first: the embedded store admits one process)",
    )?);
    match cmd {
        EabCommand::Add {
            provisioner, kid, ..
        } => {
            if !cfg
                .authority
                .provisioners
                .iter()
                .any(|p| p.name == provisioner)
            {
                bail!(
                    "there is no provisioner {provisioner:?} in {}",
                    config.display()
                );
            }
            let record =
                eab::create_key(&records, &provisioner, kid, time::OffsetDateTime::now_utc())
                    .await
                    .map_err(|e| anyhow::anyhow!("{}", e.problem.detail))?;
            println!("kid:         {}", record.kid);
            println!("hmac key:    {}", URL_SAFE_NO_PAD.encode(&record.hmac_key));
            println!("provisioner: {provisioner}");
            println!(
                "(the MAC key is shown once; give both to the client, e.g. certbot --eab-kid … --eab-hmac-key …)"
            );
        }
        EabCommand::List { .. } => {
            let keys = eab::list_keys(&records)
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.problem.detail))?;
            println!(
                "{:<24} {:<12} {:<26} BOUND ACCOUNT",
                "KID", "PROVISIONER", "CREATED"
            );
            for k in keys {
                println!(
                    "{:<24} {:<12} {:<26} {}",
                    k.kid,
                    k.provisioner,
                    crate::http::render_time(k.created_at),
                    k.bound_account.as_ref().map_or("-", |a| a.as_str())
                );
            }
        }
        EabCommand::Remove { kid, .. } => {
            eab::remove_key(&records, &kid)
                .await
                .map_err(|e| anyhow::anyhow!("{}", e.problem.detail))?;
            println!("removed {kid}");
        }
    }
    Ok(())
}
