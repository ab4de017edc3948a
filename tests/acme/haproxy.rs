//! acmeproxy behind a real load balancer: Debian's haproxy in HTTP mode,
//! terminating TLS and re-encrypting to the server, round-robin per request
//! (testkit/src/haproxy.rs). The URLs the server hands out name the address
//! the client used (haproxy's), so a whole flow goes through haproxy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use acmeproxy_testkit as kit;

use kit::crash_support::{issue, new_account, temp_dir};
use kit::haproxy::Haproxy;
use kit::{Options, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flow_through_haproxy_uses_haproxy_urls() {
    if kit::haproxy::skip("the haproxy test") {
        return;
    }
    let server = TestServer::start_with(Options::default()).await;
    let tmp = temp_dir();
    let tls = server.data_dir.join("tls");
    let lb = Haproxy::start(
        &tmp.path().join("haproxy"),
        &[server.addr.port()],
        &tls.join("server.crt"),
        &tls.join("server.key"),
        &server.root_file,
    )
    .unwrap();
    let directory: serde_json::Value = server
        .http()
        .get(lb.directory_url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_order = directory["newOrder"].as_str().unwrap();
    assert!(
        new_order.starts_with(&format!("https://127.0.0.1:{}/", lb.port)),
        "{new_order}"
    );
    let (_, account, _) = new_account(&server.root_file, &lb.directory_url()).await;
    let serve = |token: &str, key_auth: &str| server.responders.set_http01(token, key_auth);
    let issued = issue(&account, "lb.haproxy.test", serve).await;
    assert!(
        issued
            .cert_url
            .starts_with(&format!("https://127.0.0.1:{}/", lb.port)),
        "{}",
        issued.cert_url
    );
}
