//! Offline administration: `init` writes a starter configuration; `eab`
//! manages External Account Binding keys directly in the store (the embedded
//! store admits one process, so the server must be stopped).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};

use super::{create_private_dir, open_store};
use crate::cli::EabCommand;
use crate::config::Config;
use crate::model::{EabKeyRecord, random_token};
use crate::store::Records;
use crate::store::records::Batch;

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
    println!("directory URL:     https://{address}/acme/acme/directory");
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
            let kid = kid.unwrap_or_else(|| random_token(12));
            if kid.is_empty() || kid.len() > 128 || kid.contains(char::is_whitespace) {
                bail!("a kid must be 1 to 128 characters without spaces");
            }
            let mut key = vec![0u8; 32];
            SystemRandom::new()
                .fill(&mut key)
                .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
            let record = EabKeyRecord {
                kid: kid.clone(),
                provisioner: provisioner.clone(),
                hmac_key: key.clone(),
                created_at: time::OffsetDateTime::now_utc(),
                bound_account: None,
            };
            records
                .commit(Batch::new().insert(&record))
                .await
                .with_context(|| format!("storing key {kid:?} (does it exist already?)"))?;
            println!("kid:      {kid}");
            println!("hmac key: {}", URL_SAFE_NO_PAD.encode(&key));
            println!("provisioner: {provisioner}");
            println!(
                "(the MAC key is shown once; give both to the client, e.g. certbot --eab-kid … --eab-hmac-key …)"
            );
        }
        EabCommand::List { .. } => {
            let keys = records.list::<EabKeyRecord>(None, 10_000).await?;
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
            let Some(k) = records.get::<EabKeyRecord>(&kid).await? else {
                bail!("there is no EAB key {kid:?}");
            };
            records.commit(Batch::new().remove(&k)).await?;
            println!("removed {kid}");
        }
    }
    Ok(())
}
