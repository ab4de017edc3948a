//! Validation egress (issue 11, item 4): through the whole server, an http-01
//! redirect to a denied address, or a name resolving to one, ends the
//! challenge `invalid` with a `connection` problem naming the address and
//! `validation.denyNetworks`, and nothing connects there; a response body is
//! never shown to the client.
//!
//! Loopback is the only network these tests reach: the responder listens on
//! 127.0.0.1, and the "internal" address is 127.0.0.2, denied by the test's
//! own `denyNetworks`. 169.254.169.254 is judged without a connection in the
//! validator's unit tests (src/validate/http01/tests.rs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use acmeproxy_testkit as kit;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use kit::raw::{Key, Raw, assert_problem_doc, dns};
use kit::{Options, TestServer};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A server on 127.0.0.1:`port` answering every request with `response`,
/// counting the requests.
async fn responder(listener: TcpListener, response: Vec<u8>) -> Arc<AtomicUsize> {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            let response = response.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = stream.write_all(&response).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    count
}

/// A server started with http-01 on `port` and `denyNetworks` = `deny`.
async fn server(port: u16, deny: &[&str]) -> (TestServer, Raw) {
    let ts = TestServer::start_with(Options {
        challenges: Some(vec!["http-01"]),
        validation_extra: json!({"httpPort": port, "denyNetworks": deny}),
        ..Options::default()
    })
    .await;
    let raw = Raw::new(&ts).await;
    (ts, raw)
}

/// Orders `name`, answers its http-01 challenge and returns the challenge
/// once it is no longer pending.
async fn validate(raw: &Raw, name: &str) -> Value {
    let acct = raw.register(Key::es256()).await;
    let (_, order) = raw.new_order(&acct, &[dns(name)]).await;
    let authz_url = order["authorizations"][0].as_str().unwrap();
    let authz = raw.fetch(&acct, authz_url).await;
    let ch = Raw::challenge(&authz, "http-01");
    raw.answer(&acct, &ch).await.ok(200);
    raw.poll(&acct, authz_url, |v| v["status"] != "pending")
        .await;
    raw.fetch(&acct, ch["url"].as_str().unwrap()).await
}

fn detail(ch: &Value) -> String {
    ch["error"]["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn redirect_to_a_denied_loopback_address_is_a_connection_problem() {
    // The client's server on 127.0.0.1 and a denied "internal" host on
    // 127.0.0.2, on one port.
    let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let public_port = public.local_addr().unwrap().port();
    let internal = TcpListener::bind(("127.0.0.2", public_port)).await.unwrap();
    let location = format!("http://127.0.0.2:{public_port}/latest/meta-data/");
    let redirect =
        format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n");
    let to_public = responder(public, redirect.into_bytes()).await;
    let to_internal = responder(internal, b"HTTP/1.1 200 OK\r\n\r\nsecret".to_vec()).await;

    let (_ts, raw) = server(public_port, &["127.0.0.2/32"]).await;
    let ch = validate(&raw, "redirect.test").await;
    assert_eq!(ch["status"], "invalid", "{ch}");
    assert_problem_doc(&ch["error"], 400, "connection");
    assert_eq!(
        ch["error"]["type"], "urn:ietf:params:acme:error:connection",
        "{ch}"
    );
    let text = detail(&ch);
    assert!(
        text.contains("127.0.0.2 is in 127.0.0.2/32") && text.contains("validation.denyNetworks"),
        "{text}"
    );
    assert!(to_public.load(Ordering::SeqCst) >= 1);
    assert_eq!(
        to_internal.load(Ordering::SeqCst),
        0,
        "reached the denied host"
    );
}

#[tokio::test]
async fn name_resolving_to_a_denied_address_is_a_connection_problem() {
    let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = public.local_addr().unwrap().port();
    let internal = TcpListener::bind(("127.0.0.2", port)).await.unwrap();
    let to_internal = responder(internal, b"HTTP/1.1 200 OK\r\n\r\nsecret".to_vec()).await;
    let (ts, raw) = server(port, &["127.0.0.2/32"]).await;
    ts.responders
        .dns
        .set_a("internal.test", vec!["127.0.0.2".parse().unwrap()]);
    let ch = validate(&raw, "internal.test").await;
    assert_eq!(ch["status"], "invalid", "{ch}");
    assert_problem_doc(&ch["error"], 400, "connection");
    let text = detail(&ch);
    assert!(
        text.contains("internal.test resolves to 127.0.0.2")
            && text.contains("validation.denyNetworks"),
        "{text}"
    );
    assert_eq!(
        to_internal.load(Ordering::SeqCst),
        0,
        "reached the denied host"
    );
    drop(public);
}

#[tokio::test]
async fn response_body_is_never_in_the_problem() {
    const SECRET: &str = "root:x:0:0:TOPSECRET-7f3a9c:/root:/bin/bash";
    let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = public.local_addr().unwrap().port();
    let body = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{SECRET}",
        SECRET.len()
    );
    let _hits = responder(public, body.into_bytes()).await;
    let (_ts, raw) = server(port, &[]).await;
    let ch = validate(&raw, "leak.test").await;
    assert_eq!(ch["status"], "invalid", "{ch}");
    assert_problem_doc(&ch["error"], 400, "incorrectResponse");
    let text = detail(&ch);
    assert!(!text.contains("TOPSECRET"), "{text}");
    assert!(!text.contains("root:x"), "{text}");
    assert!(
        text.contains(&format!("a body of {} bytes", SECRET.len())),
        "{text}"
    );
    assert!(text.contains("127.0.0.1:"), "the address is named: {text}");
}
