//! `acmeproxy migrate --from sled.json --to postgresql.json`: a server's
//! accounts, orders and certificates on sled move to PostgreSQL offline; a
//! server on the migrated store, same address and data directory, serves the
//! old account, renews and revokes the certificate issued before. Migrating
//! again into the now full database is refused, as is a running source.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use acmeproxy_testkit as kit;

use std::time::Duration;

use instant_acme::RevocationRequest;
use kit::crash_support::{
    Binary, CALL_LIMIT, bounded, existing_account, issue, leaf_der, new_account,
    renew_replacing_and_revoke, temp_dir,
};
use kit::{CaJson, Responders};

const STOP_LIMIT: Duration = Duration::from_secs(15);

async fn cli(args: Vec<String>) -> (bool, String, String) {
    kit::procs::run_cli_async(args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sled_store_moves_to_postgresql_and_keeps_serving() {
    let Some(pg) = kit::postgres::start_or_skip("the migration test").await else {
        return;
    };
    let tmp = temp_dir();
    let responders = Responders::start().await;
    let (http, alpn, dns) = (
        responders.http_port(),
        responders.tls_alpn_port(),
        responders.dns_addr(),
    );
    let sled = Binary::new(tmp.path(), http, alpn, dns);
    let mut server = sled.start().await;
    let serve = |token: &str, key_auth: &str| responders.set_http01(token, key_auth);
    let (key, account, _) = new_account(&sled.root_file, &sled.directory_url).await;
    let before = issue(&account, "migrate.test", serve).await;
    let other = issue(&account, "other.migrate.test", serve).await;

    // The same data directory and address, on PostgreSQL.
    let password_file = tmp.path().join("db-password");
    std::fs::write(&password_file, pg.password()).unwrap();
    let mut pg_ca = CaJson::new(&sled.data)
        .postgres(&pg.url(), "migrated", Some(&password_file))
        .validation(http, alpn, dns, 10);
    pg_ca.address = format!("127.0.0.1:{}", sled.port);
    let pg_config = tmp.path().join("ca-pg.json");
    pg_ca.write(&pg_config).unwrap();
    let migrate = |from: &std::path::Path, to: &std::path::Path| {
        cli(vec![
            "migrate".into(),
            "--from".into(),
            from.to_string_lossy().into_owned(),
            "--to".into(),
            to.to_string_lossy().into_owned(),
        ])
    };

    // Not while the server holds the sled store.
    let (ok, _, err) = migrate(&sled.config_path, &pg_config).await;
    assert!(!ok && err.contains("in use"), "{err}");
    server.sigterm();
    assert!(server.wait_exit(STOP_LIMIT).await.is_some(), "no stop");

    let (ok, out, err) = migrate(&sled.config_path, &pg_config).await;
    assert!(ok, "migrate failed: {err}\n{out}");
    assert!(
        out.contains("accounts 1") && out.contains("certs 2") && out.contains("orders 2"),
        "{out}"
    );
    assert!(!out.contains(pg.password()) && !err.contains(pg.password()));
    let certs = pg
        .psql(
            "migrated",
            "SELECT count(*) FROM records WHERE tbl = 'certs'",
        )
        .unwrap();
    assert_eq!(certs, "2");
    // A second run would mix two stores: refused.
    let (ok, _, err) = migrate(&sled.config_path, &pg_config).await;
    assert!(!ok && err.contains("not empty"), "{err}");

    // The server on PostgreSQL knows the account and its certificates.
    let on_pg = Binary {
        dir: sled.dir.clone(),
        data: sled.data.clone(),
        config_path: pg_config.clone(),
        port: sled.port,
        directory_url: sled.directory_url.clone(),
        root_file: sled.root_file.clone(),
    };
    let mut server = on_pg.start().await;
    let account = existing_account(&on_pg, &key).await.unwrap();
    let leaf = leaf_der(&before.chain);
    renew_replacing_and_revoke(&account, &leaf, "migrate.test", serve).await;
    // The other certificate is still good to revoke: it came across too.
    let other_leaf = leaf_der(&other.chain);
    bounded(
        "revokeCert other",
        CALL_LIMIT,
        account.revoke(&RevocationRequest {
            certificate: &other_leaf,
            reason: None,
        }),
    )
    .await
    .unwrap();
    server.sigterm();
    assert!(server.wait_exit(STOP_LIMIT).await.is_some(), "no stop");
}
