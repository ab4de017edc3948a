//! Backup and restore end to end: `acmeproxy admin backup` taken from the
//! real binary while orders are being issued, the server stopped, `acmeproxy
//! restore` into a fresh directory, a server started on it; the account, the
//! CA, the server's own certificate and the certificate issued before the
//! backup are all there: it renews (ARI `replaces`) and revokes. Damaged
//! backups are refused before anything is written.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use acmeproxy_testkit as kit;

use std::path::Path;
use std::time::Duration;

use instant_acme::CertificateIdentifier;
use kit::Responders;
use kit::crash_support::{
    Binary, CALL_LIMIT, bounded, existing_account, issue, leaf_der, new_account,
    renew_replacing_and_revoke, served_leaf, server_config, temp_dir,
};
use serde_json::Value;

/// How long a graceful stop may take.
const STOP_LIMIT: Duration = Duration::from_secs(15);

/// Runs the CLI off the async threads.
async fn cli(args: Vec<String>) -> (bool, String, String) {
    kit::procs::run_cli_async(args).await
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restored_server_renews_and_revokes_what_was_issued_before_the_backup() {
    let tmp = temp_dir();
    let responders = Responders::start().await;
    let (http, alpn, dns) = (
        responders.http_port(),
        responders.tls_alpn_port(),
        responders.dns_addr(),
    );
    let a_dir = tmp.path().join("a");
    std::fs::create_dir_all(&a_dir).unwrap();
    let a = Binary::new(&a_dir, http, alpn, dns);
    let mut server = a.start().await;
    let root_pem = std::fs::read(&a.root_file).unwrap();
    let served_before = served_leaf(a.port, &root_pem).await;

    let serve = |token: &str, key_auth: &str| responders.set_http01(token, key_auth);
    let (key, account, _) = new_account(&a.root_file, &a.directory_url).await;
    let before = issue(&account, "backup.test", serve).await;

    // The backup, taken while another account's orders are in flight.
    let (_, busy_account, _) = new_account(&a.root_file, &a.directory_url).await;
    let busy_responders = responders.clone();
    let busy = tokio::spawn(async move {
        let serve = |t: &str, k: &str| busy_responders.set_http01(t, k);
        for i in 0..6 {
            issue(&busy_account, &format!("busy{i}.backup.test"), serve).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let file = tmp.path().join("acmeproxy.backup");
    let (ok, out, err) = cli(vec![
        "admin".into(),
        "backup".into(),
        s(&a.config_path),
        s(&file),
    ])
    .await;
    assert!(ok, "admin backup failed: {err}\n{out}");
    assert!(out.contains("online"), "{out}");
    assert!(
        out.contains("softcas/root.key") && out.contains("tls/server.key"),
        "{out}"
    );
    let busy_running_at_backup = !busy.is_finished();
    busy.await.unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the backup holds private keys");
    }
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.starts_with(r#"{"type":"header","format":"acmeproxy-backup","version":1,"#),
        "{}",
        &text[..100]
    );
    assert!(
        text.trim_end()
            .lines()
            .last()
            .unwrap()
            .contains(r#""type":"end""#)
    );

    server.sigterm();
    assert!(server.wait_exit(STOP_LIMIT).await.is_some(), "no stop");

    // With the server stopped, the same command reads the store itself.
    let offline = tmp.path().join("offline.backup");
    let (ok, out, err) = cli(vec![
        "admin".into(),
        "backup".into(),
        s(&a.config_path),
        s(&offline),
    ])
    .await;
    assert!(ok && out.contains("stopped server"), "{err}\n{out}");

    // A configuration whose store does not exist is not backed up as empty.
    let nowhere = tmp.path().join("nowhere.json");
    let config = server_config("127.0.0.1:1", &tmp.path().join("nowhere"), http, alpn, dns);
    std::fs::write(&nowhere, config.to_string()).unwrap();
    let empty = tmp.path().join("empty.backup");
    let (ok, _, err) = cli(vec![
        "admin".into(),
        "backup".into(),
        s(&nowhere),
        s(&empty),
    ])
    .await;
    assert!(!ok && err.contains("no store at"), "{err}");
    assert!(!empty.exists() && !tmp.path().join("nowhere").exists());

    // Damaged backups are refused, and nothing is written.
    let bytes = std::fs::read(&file).unwrap();
    let damaged = tmp.path().join("damaged.backup");
    let target = tmp.path().join("never");
    for (what, content, says) in [
        (
            "truncated",
            bytes[..bytes.len() * 2 / 3].to_vec(),
            "truncated",
        ),
        ("corrupted", flip_in_a_value(&bytes), "SHA-256"),
    ] {
        std::fs::write(&damaged, &content).unwrap();
        let (ok, _, err) = cli(vec![
            "restore".into(),
            s(&damaged),
            "--dir".into(),
            s(&target),
        ])
        .await;
        assert!(!ok, "a {what} backup was restored");
        assert!(
            err.contains(says) && err.contains("refused"),
            "{what}: {err}"
        );
        assert!(!target.exists(), "{what}: restore wrote before verifying");
    }

    // Restore into a fresh directory; not twice.
    let b_dir = tmp.path().join("b");
    let b_data = b_dir.join("data");
    let (ok, out, err) = cli(vec!["restore".into(), s(&file), "--dir".into(), s(&b_data)]).await;
    assert!(ok, "restore failed: {err}\n{out}");
    let (ok, _, err) = cli(vec!["restore".into(), s(&file), "--dir".into(), s(&b_data)]).await;
    assert!(!ok && err.contains("already holds a store"), "{err}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| {
            std::fs::metadata(b_data.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("softcas"), 0o700);
        assert_eq!(mode("softcas/root.key"), 0o600);
        assert_eq!(mode("softcas/intermediate.key"), 0o600);
        assert_eq!(mode("tls/server.key"), 0o600);
        assert_eq!(mode("db"), 0o700);
    }
    assert_eq!(
        std::fs::read(b_data.join("softcas/root.crt")).unwrap(),
        root_pem
    );

    // A server on the restored directory, at the same address (account URLs
    // name it).
    let b = Binary {
        dir: b_dir.clone(),
        data: b_data.clone(),
        config_path: b_dir.join("ca.json"),
        port: a.port,
        directory_url: a.directory_url.clone(),
        root_file: b_data.join("softcas/root.crt"),
    };
    let config = server_config(&format!("127.0.0.1:{}", a.port), &b_data, http, alpn, dns);
    std::fs::write(&b.config_path, config.to_string()).unwrap();
    let mut restored = b.start().await;
    assert_eq!(
        served_leaf(b.port, &root_pem).await,
        served_before,
        "the restored server presents the certificate it had"
    );

    // Every valid order of the snapshot has its certificate.
    let cfg = s(&b.config_path);
    let orders = admin_json(&["orders", "list", &cfg, "--json"]).await;
    let certs = admin_json(&["certs", "list", &cfg, "--json"]).await;
    let cert_ids: Vec<&Value> = certs.as_array().unwrap().iter().map(|c| &c["id"]).collect();
    let valid: Vec<&Value> = orders
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["status"] == "valid")
        .collect();
    assert!(!valid.is_empty());
    for o in &valid {
        assert!(
            cert_ids.contains(&&o["certificate"]),
            "{o} has no certificate"
        );
    }
    println!(
        "restored: {} orders ({} valid), {} certificates; busy flows still running at the backup: {busy_running_at_backup}",
        orders.as_array().unwrap().len(),
        valid.len(),
        certs.as_array().unwrap().len()
    );

    // The account is there; it renews the certificate with ARI…
    let account = existing_account(&b, &key).await.unwrap();
    let leaf = leaf_der(&before.chain);
    let id = CertificateIdentifier::try_from(&leaf).unwrap();
    let (info, _) = bounded("renewalInfo", CALL_LIMIT, account.renewal_info(&id))
        .await
        .unwrap();
    assert!(info.suggested_window.start < info.suggested_window.end);
    // …and revokes the one issued before the backup, once.
    renew_replacing_and_revoke(&account, &leaf, "backup.test", serve).await;

    restored.sigterm();
    assert!(restored.wait_exit(STOP_LIMIT).await.is_some(), "no stop");
}

async fn admin_json(args: &[&str]) -> Value {
    let (ok, out, err) = cli(args.iter().map(|a| (*a).to_owned()).collect()).await;
    assert!(ok, "{args:?}: {err}");
    serde_json::from_str(&out).unwrap()
}

/// `bytes` with one base64 character of the first record's value changed:
/// the file still parses, only its digest tells.
fn flip_in_a_value(bytes: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(bytes);
    let at = text.find(r#""value":""#).unwrap() + 9;
    let mut out = bytes.to_vec();
    out[at] = if out[at] == b'A' { b'B' } else { b'A' };
    out
}
