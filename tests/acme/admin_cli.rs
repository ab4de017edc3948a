//! The admin CLI end to end: `acmeproxy eab|accounts|orders|certs` talking to
//! a running server through its admin socket, and the errors when none runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use acmeproxy_testkit as kit;

use kit::run_cli as cli;

use std::path::Path;

use instant_acme::{Identifier, NewOrder, RetryPolicy};
use kit::{Options, TestServer};
use serde_json::Value;

fn json(args: &[&str]) -> Value {
    let (ok, out, err) = cli(args);
    assert!(ok, "{args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

/// A ca.json naming the server's data directory (what the CLI needs).
fn config_for(dir: &Path, data_dir: &Path) -> String {
    let path = dir.join("admin-ca.json");
    kit::CaJson::new(data_dir)
        .port(1)
        .db(Some("sled"))
        .write(&path)
        .unwrap();
    path.to_string_lossy().into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_commands_through_the_socket() {
    let mut ts = TestServer::start_with(Options {
        db: "sled",
        ..Options::default()
    })
    .await;
    let cfg = config_for(ts.dir.path(), &ts.data_dir);
    let socket = ts.data_dir.join("admin.sock");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the admin socket is private");
    }

    // EAB keys while the server runs.
    let (ok, out, err) = cli(&["eab", "add", &cfg, "--kid", "team-a"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("kid:         team-a") && out.contains("hmac key:"),
        "{out}"
    );
    let keys = json(&["eab", "list", &cfg, "--json"]);
    assert_eq!(keys[0]["kid"], "team-a");
    assert!(
        keys[0].get("hmac_key").is_none(),
        "list never shows MAC keys"
    );
    let (ok, _, err) = cli(&["eab", "add", &cfg, "--kid", "team-a"]);
    assert!(!ok && err.contains("exists already"), "{err}");

    // A team's key limited to its domains: the account it binds can order
    // nothing else.
    let (ok, out, err) = cli(&[
        "eab",
        "add",
        &cfg,
        "--kid",
        "team-b",
        "--allow-dns",
        ".team.test",
    ]);
    assert!(ok, "{err}");
    let hmac = out
        .lines()
        .find_map(|l| l.strip_prefix("hmac key:"))
        .unwrap()
        .trim()
        .to_owned();
    let key =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &hmac).unwrap();
    let (team, _) = instant_acme::Account::builder_with_root(&ts.root_file)
        .unwrap()
        .create(
            &instant_acme::NewAccount {
                contact: &[],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            ts.directory_url(),
            Some(&instant_acme::ExternalAccountKey::new(
                "team-b".into(),
                &key,
            )),
        )
        .await
        .unwrap();
    let Err(instant_acme::Error::Api(p)) = team
        .new_order(&NewOrder::new(&[Identifier::Dns("www.other.test".into())]))
        .await
    else {
        panic!("a name outside the key's policy must be refused");
    };
    let detail = p.detail.unwrap_or_default();
    assert!(detail.contains("EAB key \"team-b\""), "{detail}");
    team.new_order(&NewOrder::new(&[Identifier::Dns("a.b.team.test".into())]))
        .await
        .unwrap();
    let keys = json(&["eab", "list", &cfg, "--json"]);
    let b = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == "team-b")
        .unwrap();
    assert_eq!(b["policy"]["allow_dns"][0], ".team.test");
    assert!(b["bound_account"].is_string());

    let (ok, _, err) = cli(&["eab", "add", &cfg, "--kid", "lazy", "--prevalidated"]);
    assert!(!ok && err.contains("needs allow rules"), "{err}");

    // An issuance to look at.
    let (account, _) = ts.account().await;
    let ids = [Identifier::Dns("admin.test".into())];
    let mut order = account.new_order(&NewOrder::new(&ids)).await.unwrap();
    ts.answer_http01(&mut order).await.unwrap();
    order.finalize().await.unwrap();
    order
        .poll_certificate(&RetryPolicy::default())
        .await
        .unwrap();
    let account_id = account.id().rsplit('/').next().unwrap().to_owned();

    let accounts = json(&["accounts", "list", &cfg, "--json"]);
    assert!(
        accounts
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["id"] == account_id.as_str())
    );
    let (ok, table, _) = cli(&["accounts", "list", &cfg]);
    assert!(
        ok && table.starts_with("ID") && table.contains(&account_id),
        "{table}"
    );
    let orders = json(&["orders", "list", &cfg, "--status", "valid", "--json"]);
    assert_eq!(orders[0]["identifiers"][0], "dns:admin.test");
    let certs = json(&["certs", "list", &cfg, "--account", &account_id, "--json"]);
    let serial = certs[0]["serial"].as_str().unwrap().to_owned();
    assert_eq!(certs[0]["names"][0], "admin.test");
    // Tables: names shown, times to the second, columns aligned under their
    // headers.
    let (ok, table, _) = cli(&["certs", "list", &cfg, "--account", &account_id]);
    assert!(ok && table.contains("admin.test"), "{table}");
    let lines: Vec<&str> = table.lines().collect();
    let col = lines[0].find("NOT AFTER").unwrap();
    let at = lines[1].find(&serial).unwrap() + serial.len();
    assert!(
        lines[1][..col].len() > at && lines[1][col..].starts_with("20"),
        "NOT AFTER column misaligned:\n{table}"
    );
    assert!(
        !lines[1].contains('.') || !lines[1][col..col + 25].contains('.'),
        "{table}"
    );
    let (_, table, _) = cli(&["accounts", "list", &cfg]);
    let created = table.lines().next().unwrap().find("CREATED").unwrap();
    assert!(
        table
            .lines()
            .skip(1)
            .all(|l| l[created..].starts_with("20") && l[created..created + 20].ends_with('Z')),
        "CREATED to the second, aligned:\n{table}"
    );
    let (ok, shown, _) = cli(&["certs", "show", &cfg, &serial]);
    assert!(ok && shown.contains("BEGIN CERTIFICATE"), "{shown}");
    let (ok, out, err) = cli(&["certs", "revoke", &cfg, &serial, "--reason", "4"]);
    assert!(ok, "{err}");
    assert!(out.contains("\"reason\":4"), "{out}");
    let (ok, _, err) = cli(&["certs", "revoke", &cfg, &serial]);
    assert!(!ok && err.contains("already revoked"), "{err}");
    let (ok, _, err) = cli(&["orders", "list", &cfg, "--status", "done"]);
    assert!(!ok && err.contains("--status"), "{err}");

    let (ok, out, _) = cli(&["accounts", "deactivate", &cfg, &account_id]);
    assert!(ok && out.contains("deactivated"), "{out}");
    let refused = account.new_order(&NewOrder::new(&ids)).await;
    assert!(refused.is_err(), "a deactivated account cannot order");

    // Without a running server: a clear error, except EAB keys, which then
    // go to the store directly.
    ts.stop().await;
    let (ok, _, err) = cli(&["accounts", "list", &cfg]);
    assert!(!ok && err.contains("the server is not running"), "{err}");
    let keys = json(&["eab", "list", &cfg, "--json"]);
    assert_eq!(keys[0]["kid"], "team-a");
}
