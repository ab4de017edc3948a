//! The real binary on the PostgreSQL store (`db.type: "postgresql"`): a
//! complete ACME flow (RFC 8555 §7.4) with the password in `passwordFile`;
//! `/ready` answers 503 while PostgreSQL is stopped and 200 again once it
//! is back, and the server issues again without a restart; `acmeproxy
//! admin backup` reads it online and offline (the password from
//! `ACMEPROXY_DB_PASSWORD` too). The password never shows in
//! the server's log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use acmeproxy_testkit as kit;

use std::time::{Duration, Instant};

use kit::crash_support::{Binary, issue, new_account, temp_dir};
use kit::{CaJson, Responders};

/// How long `/ready` may take to follow PostgreSQL going away or coming back.
const READY_LIMIT: Duration = Duration::from_secs(30);

/// Polls `/ready` until it answers `want`; returns how long that took.
async fn ready_becomes(http: &reqwest::Client, port: u16, want: u16) -> Duration {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < READY_LIMIT {
        match http
            .get(format!("https://127.0.0.1:{port}/ready"))
            .send()
            .await
        {
            Ok(r) if r.status().as_u16() == want => return start.elapsed(),
            Ok(r) => last = format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("/ready did not answer {want} within {READY_LIMIT:?}; last: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn issues_on_postgresql_and_is_unready_while_it_is_down() {
    let Some(pg) = kit::postgres::start_or_skip("the PostgreSQL end-to-end test").await else {
        return;
    };
    let tmp = temp_dir();
    let responders = Responders::start().await;
    let data = tmp.path().join("data");
    let password_file = tmp.path().join("db-password");
    std::fs::write(&password_file, format!("{}\n", pg.password())).unwrap();
    let [metrics_port] = kit::procs::free_ports().unwrap();
    let mut ca = CaJson::new(&data)
        .postgres(&pg.url(), "acmeproxy_e2e", Some(&password_file))
        .validation(
            responders.http_port(),
            responders.tls_alpn_port(),
            responders.dns_addr(),
            10,
        );
    ca.metrics = Some(format!("127.0.0.1:{metrics_port}"));
    let binary = Binary::with_config(tmp.path(), ca, data.join("softcas/root.crt"));
    let mut server = binary.start().await;
    let serve = |token: &str, key_auth: &str| responders.set_http01(token, key_auth);
    let (_, account, _) = new_account(&binary.root_file, &binary.directory_url).await;
    let first = issue(&account, "first.pg.test", serve).await;
    // The records are in PostgreSQL.
    let orders = pg
        .psql(
            "acmeproxy_e2e",
            "SELECT count(*) FROM records WHERE tbl = 'orders'",
        )
        .unwrap();
    assert_eq!(orders, "1");
    // The pool's figures, read at the scrape.
    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"acmeproxy_store_pool_connections{state="max"} 16"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"acmeproxy_store_pool_connections{state="open"}"#));

    let root = reqwest::Certificate::from_pem(&std::fs::read(&binary.root_file).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(root)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    ready_becomes(&http, binary.port, 200).await;
    pg.stop().unwrap();
    let down = ready_becomes(&http, binary.port, 503).await;
    pg.start_again().unwrap();
    let up = ready_becomes(&http, binary.port, 200).await;
    // The same account, and a new certificate, without a restart.
    let second = issue(&account, "second.pg.test", serve).await;
    assert_ne!(first.cert_url, second.cert_url);

    // Backups, through the running server and then from PostgreSQL itself.
    for (what, file) in [
        ("online", "online.backup"),
        ("stopped server", "offline.backup"),
    ] {
        let file = tmp.path().join(file);
        let args = [
            "admin".to_owned(),
            "backup".to_owned(),
            binary.config_path.to_string_lossy().into_owned(),
            file.to_string_lossy().into_owned(),
        ];
        let (ok, out, err) = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            kit::run_cli(&args)
        })
        .await
        .unwrap();
        assert!(ok && out.contains(what), "{what} backup: {err}\n{out}");
        let text = std::fs::read_to_string(&file).unwrap();
        let header = text.lines().next().unwrap();
        assert!(header.contains(r#""store":"postgresql""#), "{header}");
        assert!(
            text.trim_end()
                .lines()
                .last()
                .unwrap()
                .contains(r#""type":"end""#)
        );
        assert!(!text.contains(pg.password()));
        if what == "online" {
            server.sigterm();
            assert!(
                server.wait_exit(Duration::from_secs(15)).await.is_some(),
                "no stop"
            );
        }
    }

    // The password from ACMEPROXY_DB_PASSWORD instead of passwordFile: the
    // offline backup reads the store; without it, PostgreSQL refuses and
    // the error names the server, not a password.
    let env_config = tmp.path().join("ca-env.json");
    CaJson::new(&data)
        .postgres(&pg.url(), "acmeproxy_e2e", None)
        .write(&env_config)
        .unwrap();
    for with_password in [true, false] {
        let mut cmd = std::process::Command::new(kit::acmeproxy_bin());
        cmd.args(["admin", "backup"])
            .arg(&env_config)
            .arg(tmp.path().join(format!("env-{with_password}.backup")))
            .env_remove("ACMEPROXY_DB_PASSWORD");
        if with_password {
            cmd.env("ACMEPROXY_DB_PASSWORD", pg.password());
        }
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .unwrap()
            .unwrap();
        let shown = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.success(), with_password, "{shown}");
        if !with_password {
            assert!(shown.contains(&format!("127.0.0.1:{}", pg.port)), "{shown}");
        }
        assert!(!shown.contains(pg.password()), "{shown}");
    }

    let log = std::fs::read_to_string(binary.log()).unwrap();
    assert!(!log.contains(pg.password()), "the password is in the log");
    eprintln!(
        "postgresql end to end: /ready 503 {down:?} after the stop, 200 {up:?} after the start"
    );
}
