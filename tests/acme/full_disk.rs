//! A full disk under the sled store (docs/admin.md, "Durability, a full disk
//! and I/O errors"): the real binary with its data directory on a small
//! tmpfs. Filling it makes writes fail with `serverInternal` and `/ready`
//! answer 503 with the cause; freeing it makes the server exit with status
//! 75 for its supervisor to restart it; after the restart (done here by the
//! test, as systemd would) every acknowledged order and the certificate
//! issued before are intact and new flows succeed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use acmeproxy_testkit as kit;
use instant_acme::{Identifier, NewOrder, OrderStatus};

use kit::crash_support::{
    Binary, CALL_LIMIT, assert_problem, bounded, issue, new_account, temp_dir,
};
use kit::{Responders, Tmpfs};

/// How long the server may take to exit once space is back (it probes every
/// 2 s, then drains).
const EXIT_LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_makes_the_server_unready_and_a_restart_loses_nothing() {
    let t0 = Instant::now();
    let tmp = temp_dir();
    let responders = Responders::start().await;
    let binary = Binary::new(
        tmp.path(),
        responders.http_port(),
        responders.tls_alpn_port(),
        responders.dns_addr(),
    );
    std::fs::create_dir(&binary.data).unwrap();
    let Some(fs) = Tmpfs::mount_on(&binary.data, "64m") else {
        return;
    };
    let mut server = binary.start().await;
    let serve = |token: &str, key_auth: &str| responders.set_http01(token, key_auth);
    let (_, account, _) = new_account(&binary.root_file, &binary.directory_url).await;
    let before = issue(&account, "before.full.test", serve).await;

    let filler = binary.data.join("filler");
    fs.fill(&filler, 256 * 1024);
    let mut acknowledged = Vec::new();
    let mut refused = None;
    for i in 0..500 {
        let ids = [Identifier::Dns(format!("o{i}.full.test"))];
        let order = NewOrder::new(&ids);
        match bounded("newOrder", CALL_LIMIT, account.new_order(&order)).await {
            Ok(order) => acknowledged.push(order.url().to_owned()),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("no newOrder failed on the full disk");
    assert!(
        !acknowledged.is_empty(),
        "no room for a first order: {refused}"
    );
    assert_problem(&refused, "serverInternal", "newOrder on a full disk");

    let root = reqwest::Certificate::from_pem(&std::fs::read(&binary.root_file).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(root)
        .build()
        .unwrap();
    let ready = http
        .get(format!("https://127.0.0.1:{}/ready", binary.port))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let text = ready.text().await.unwrap();
    assert!(
        text.starts_with("store failed:") && text.contains("No space left"),
        "/ready said: {text}"
    );
    // Reads are refused as well: nothing half-written is served.
    let read = bounded(
        "order read",
        CALL_LIMIT,
        account.order(before.order_url.clone()),
    )
    .await;
    assert_problem(
        &read.err().unwrap(),
        "serverInternal",
        "order read on a failed store",
    );

    std::fs::remove_file(&filler).unwrap();
    let status = server.wait_exit(EXIT_LIMIT).await.unwrap_or_else(|| {
        panic!(
            "still running after space returned\n{}",
            server.log_tail(30)
        )
    });
    assert_eq!(status.code(), Some(75), "{}", server.log_tail(30));

    let _server = binary.start().await;
    for url in &acknowledged {
        let mut order = bounded("order read", CALL_LIMIT, account.order(url.clone()))
            .await
            .unwrap();
        assert_eq!(order.state().status, OrderStatus::Pending, "{url}");
    }
    let mut kept = bounded(
        "order read",
        CALL_LIMIT,
        account.order(before.order_url.clone()),
    )
    .await
    .unwrap();
    assert_eq!(kept.state().status, OrderStatus::Valid);
    let chain = bounded("certificate", CALL_LIMIT, kept.certificate())
        .await
        .unwrap()
        .expect("the certificate issued before the full disk");
    assert_eq!(chain, before.chain);
    issue(&account, "after.full.test", serve).await;
    eprintln!(
        "full disk: {} orders acknowledged before the refusal, exit 75, restart kept them all; {:.1}s",
        acknowledged.len(),
        t0.elapsed().as_secs_f64()
    );
}
