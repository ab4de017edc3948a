//! http-01 tests against real responders on loopback (RFC 8555 §8.3).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::acme::types::ChallengeType;
use crate::validate::testutil::{LOCAL, TlsOptions, TlsResponder, certificate, settings};
use crate::validate::{Validator, egress};
use acmeproxy_testkit::MockDns;

const TOKEN: &str = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA";
const KEY_AUTH: &str =
    "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA.nP1qzpXGymHBrUEepNY9HCsQk7K8KhOypzEt62jcerQ";
const PATH: &str = "/.well-known/acme-challenge/evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA";

/// A raw HTTP responder: answers each request head with `respond(head)`,
/// then closes, and records the request heads.
struct HttpResponder {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl HttpResponder {
    fn start(
        listener: TcpListener,
        respond: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static,
    ) -> Self {
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let respond = Arc::new(respond);
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let seen = seen.clone();
                let respond = respond.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).into_owned();
                    let response = respond(&head);
                    seen.lock().unwrap().push(head);
                    let _ = stream.write_all(&response).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self {
            addr,
            requests,
            task,
        }
    }

    async fn bind(respond: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static) -> Self {
        Self::start(TcpListener::bind(LOCAL).await.unwrap(), respond)
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for HttpResponder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn redirect(status: u16, location: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status} Moved\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n")
        .into_bytes()
}

fn dns_id(name: &str) -> Identifier {
    Identifier::Dns(name.to_owned())
}

#[tokio::test]
async fn valid_for_a_name_resolved_through_the_configured_resolver() {
    let dns = MockDns::start(LOCAL).unwrap();
    let responder = HttpResponder::bind(|_| ok(&format!("{KEY_AUTH}\r\n"))).await;
    let port = responder.port();
    let s = settings(&dns, port, 1);
    let record = validate(&s, &dns_id("example.com"), TOKEN, KEY_AUTH)
        .await
        .unwrap();
    assert_eq!(
        record.urls,
        vec![format!("http://example.com:{port}{PATH}")]
    );
    assert_eq!(
        record.address_used,
        Some(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port))
    );
    assert_eq!(
        record.addresses_resolved,
        vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
    );
    let requests = responder.requests();
    assert_eq!(requests.len(), 1);
    assert!(
        requests[0].starts_with(&format!("GET {PATH} HTTP/1.1\r\n")),
        "{}",
        requests[0]
    );
    assert!(
        requests[0].contains(&format!("\r\nHost: example.com:{port}\r\n")),
        "{}",
        requests[0]
    );
    assert!(dns.queries().contains(&"example.com A".to_owned()));
}

#[tokio::test]
async fn ip_identifier_connects_without_dns() {
    let dns = MockDns::start(LOCAL).unwrap();
    let responder = HttpResponder::bind(|_| ok(KEY_AUTH)).await;
    let port = responder.port();
    let s = settings(&dns, port, 1);
    let id = Identifier::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let record = validate(&s, &id, TOKEN, KEY_AUTH).await.unwrap();
    assert_eq!(record.urls, vec![format!("http://127.0.0.1:{port}{PATH}")]);
    assert!(responder.requests()[0].contains(&format!("\r\nHost: 127.0.0.1:{port}\r\n")));
    assert!(dns.queries().is_empty(), "{:?}", dns.queries());
}

#[tokio::test]
async fn ipv6_literal_goes_in_brackets() {
    let Ok(listener) = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).await else {
        eprintln!("no IPv6 loopback here; skipped");
        return;
    };
    let dns = MockDns::start(LOCAL).unwrap();
    let responder = HttpResponder::start(listener, |_| ok(KEY_AUTH));
    let port = responder.port();
    let s = settings(&dns, port, 1);
    let id = Identifier::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST));
    let record = validate(&s, &id, TOKEN, KEY_AUTH).await.unwrap();
    assert_eq!(record.urls, vec![format!("http://[::1]:{port}{PATH}")]);
    assert!(responder.requests()[0].contains(&format!("\r\nHost: [::1]:{port}\r\n")));
}

#[tokio::test]
async fn ipv6_is_tried_first_and_ipv4_is_the_fallback() {
    let dns = MockDns::start(LOCAL).unwrap();
    dns.set_a(
        "dual.test",
        vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ],
    );
    let responder = HttpResponder::bind(|_| ok(KEY_AUTH)).await;
    let port = responder.port();
    let s = settings(&dns, port, 1);
    let record = validate(&s, &dns_id("dual.test"), TOKEN, KEY_AUTH)
        .await
        .unwrap();
    assert_eq!(
        record.addresses_resolved,
        vec![
            IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        ]
    );
    assert_eq!(
        record.address_used,
        Some(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port))
    );
}

#[tokio::test]
async fn wrong_body_is_an_incorrect_response() {
    let dns = MockDns::start(LOCAL).unwrap();
    let responder = HttpResponder::bind(|_| ok("something else")).await;
    let s = settings(&dns, responder.port(), 1);
    let err = validate(&s, &dns_id("example.com"), TOKEN, KEY_AUTH)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ValidationError::IncorrectResponse(_)),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(!text.contains("something else"), "{text}");
    assert!(text.contains("a body of 14 bytes"), "{text}");
    assert!(text.contains(KEY_AUTH), "{text}");
}

#[tokio::test]
async fn not_found_is_unauthorized() {
    let dns = MockDns::start(LOCAL).unwrap();
    let responder = HttpResponder::bind(|_| {
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found".to_vec()
    })
    .await;
    let port = responder.port();
    let s = settings(&dns, port, 1);
    let err = validate(&s, &dns_id("example.com"), TOKEN, KEY_AUTH)
        .await
        .unwrap_err();
    assert!(matches!(err, ValidationError::Unauthorized(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "http-01 of example.com: http://example.com:{port}{PATH} answered 404; the server \
             must serve the key authorization there with status 200"
        )
    );
}

#[tokio::test]
async fn connection_refused_names_the_address() {
    let dns = MockDns::start(LOCAL).unwrap();
    let closed = std::net::TcpListener::bind(LOCAL).unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let s = settings(&dns, port, 1);
    let err = validate(&s, &dns_id("example.com"), TOKEN, KEY_AUTH)
        .await
        .unwrap_err();
    assert!(matches!(err, ValidationError::Connection(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "could not connect to 127.0.0.1:{port} for http-01 of example.com: connection refused"
        )
    );
}

#[tokio::test]
async fn no_address_is_a_dns_error() {
    let dns = MockDns::start(LOCAL).unwrap();
    dns.set_default_a(None);
    let s = settings(&dns, 1, 1);
    let err = validate(&s, &dns_id("nowhere.test"), TOKEN, KEY_AUTH)
        .await
        .unwrap_err();
    assert!(matches!(err, ValidationError::Dns(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "http-01 of nowhere.test: no A or AAAA record found at nowhere.test"
    );
}

#[tokio::test]
async fn redirects_are_followed_relative_and_absolute() {
    let dns = MockDns::start(LOCAL).unwrap();
    let listener = TcpListener::bind(LOCAL).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let responder = HttpResponder::start(listener, move |head| {
        if head.starts_with(&format!("GET {PATH} ")) {
            redirect(302, "second?x=1")
        } else if head.starts_with("GET /.well-known/acme-challenge/second?x=1 ") {
            redirect(301, &format!("http://other.test:{port}/third"))
        } else if head.starts_with("GET /third ") {
            format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
                &KEY_AUTH[..16],
                KEY_AUTH.len() - 16,
                &KEY_AUTH[16..]
            )
            .into_bytes()
        } else {
            b"HTTP/1.1 500 Oops\r\n\r\n".to_vec()
        }
    });
    let s = settings(&dns, port, 1);
    let record = validate(&s, &dns_id("example.com"), TOKEN, KEY_AUTH)
        .await
        .unwrap();
    assert_eq!(
        record.urls,
        vec![
            format!("http://example.com:{port}{PATH}"),
            format!("http://example.com:{port}/.well-known/acme-challenge/second?x=1"),
            format!("http://other.test:{port}/third"),
        ]
    );
    let requests = responder.requests();
    assert!(
        requests[2].contains(&format!("\r\nHost: other.test:{port}\r\n")),
        "{}",
        requests[2]
    );
}

#[tokio::test]
async fn too_many_redirects_fail() {
    let dns = MockDns::start(LOCAL).unwrap();
    let responder = HttpResponder::bind(|_| redirect(302, "/loop")).await;
    let s = settings(&dns, responder.port(), 1);
    let err = validate(&s, &dns_id("example.com"), TOKEN, KEY_AUTH)
        .await
        .unwrap_err();
    assert!(matches!(err, ValidationError::Connection(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("too many redirects (more than 10)"),
        "{err}"
    );
    // The first request and 10 followed redirects.
    assert_eq!(responder.requests().len(), 11);
}

#[tokio::test]
async fn redirect_to_a_forbidden_port_is_not_followed() {
    let dns = MockDns::start(LOCAL).unwrap();
    let responder = HttpResponder::bind(|_| redirect(307, "http://127.0.0.1:8443/x")).await;
    let s = settings(&dns, responder.port(), 1);
    let err = validate(&s, &dns_id("example.com"), TOKEN, KEY_AUTH)
        .await
        .unwrap_err();
    assert!(matches!(err, ValidationError::Connection(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("redirected to \"http://127.0.0.1:8443/x\""),
        "{text}"
    );
    assert!(text.contains("port 8443 is not allowed"), "{text}");
    assert_eq!(responder.requests().len(), 1);
}

#[tokio::test]
async fn redirect_to_another_scheme_is_not_followed() {
    let dns = MockDns::start(LOCAL).unwrap();
    let responder = HttpResponder::bind(|_| redirect(302, "ftp://example.com/file")).await;
    let s = settings(&dns, responder.port(), 1);
    let err = validate(&s, &dns_id("example.com"), TOKEN, KEY_AUTH)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("only http and https are followed, not ftp"),
        "{err}"
    );
}

#[tokio::test]
async fn oversized_bodies_are_incorrect_responses() {
    let dns = MockDns::start(LOCAL).unwrap();
    let big = "x".repeat(MAX_BODY + 100);
    // Without a length: read until close, stopped at the cap.
    let unframed =
        HttpResponder::bind(move |_| format!("HTTP/1.1 200 OK\r\n\r\n{big}").into_bytes()).await;
    let s = settings(&dns, unframed.port(), 1);
    let err = validate(&s, &dns_id("example.com"), TOKEN, KEY_AUTH)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ValidationError::IncorrectResponse(_)),
        "{err:?}"
    );
    assert!(err.to_string().contains("larger than 8192 bytes"), "{err}");
    // A declared length over the cap is refused without reading.
    let declared =
        HttpResponder::bind(|_| b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n".to_vec())
            .await;
    let s = settings(&dns, declared.port(), 1);
    let err = validate(&s, &dns_id("example.com"), TOKEN, KEY_AUTH)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ValidationError::IncorrectResponse(_)),
        "{err:?}"
    );
}

#[tokio::test]
async fn https_redirect_accepts_a_self_signed_certificate() {
    let dns = MockDns::start(LOCAL).unwrap();
    let tls_listener = TcpListener::bind(LOCAL).await.unwrap();
    let tls_port = tls_listener.local_addr().unwrap().port();
    let tls = TlsResponder::start(
        tls_listener,
        certificate(&["secure.test"], Vec::new()),
        TlsOptions {
            http_response: Some(ok(KEY_AUTH)),
            ..TlsOptions::default()
        },
    );
    let location = format!("https://secure.test:{tls_port}/final");
    let responder = HttpResponder::bind(move |_| redirect(302, &location)).await;
    let s = settings(&dns, responder.port(), tls_port);
    let record = validate(&s, &dns_id("example.com"), TOKEN, KEY_AUTH)
        .await
        .unwrap();
    assert_eq!(record.urls.len(), 2);
    assert_eq!(
        record.urls[1],
        format!("https://secure.test:{tls_port}/final")
    );
    assert_eq!(
        *tls.snis.lock().unwrap(),
        vec![Some("secure.test".to_owned())]
    );
}

#[tokio::test]
async fn malformed_token_is_refused_before_connecting() {
    let dns = MockDns::start(LOCAL).unwrap();
    let s = settings(&dns, 1, 1);
    let err = validate(&s, &dns_id("example.com"), "../../etc/passwd", KEY_AUTH)
        .await
        .unwrap_err();
    assert!(matches!(err, ValidationError::Malformed(_)), "{err:?}");
    assert!(dns.queries().is_empty());
}

#[tokio::test]
async fn validator_bounds_a_silent_server_with_its_timeout() {
    let dns = MockDns::start(LOCAL).unwrap();
    let listener = TcpListener::bind(LOCAL).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts and then says nothing.
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
        }
    });
    let mut s = settings(&dns, port, 1);
    s.timeout = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let err = Validator::new(s)
        .validate(
            ChallengeType::Http01,
            &dns_id("example.com"),
            TOKEN,
            KEY_AUTH,
        )
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(matches!(err, ValidationError::Connection(_)), "{err:?}");
    assert!(err.to_string().contains("timed out"), "{err}");
    hold.abort();
}

#[test]
fn redirect_targets_resolve_like_urls() {
    let dns = MockDns::start(LOCAL).unwrap();
    let s = settings(&dns, 5002, 5001);
    let current = Target {
        https: false,
        host: Host::Name("example.com".into()),
        port: 5002,
        path: "/a/b?q".into(),
    };
    let t = redirect_target(&s, &current, "c#frag").unwrap();
    assert_eq!(t.path, "/a/c");
    let t = redirect_target(&s, &current, "//Other.Example").unwrap();
    assert_eq!(
        (t.host, t.port, t.path.as_str()),
        (Host::Name("other.example".into()), 80, "/")
    );
    let t = redirect_target(&s, &current, "https://[::1]/x").unwrap();
    assert_eq!(t.host, Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    assert_eq!((t.https, t.port), (true, 443));
    assert_eq!(t.url(), "https://[::1]/x");
    assert!(redirect_target(&s, &current, "http://127.0.0.1:5001/").is_ok());
    assert!(redirect_target(&s, &current, "http://user@host/").is_err());
    assert!(redirect_target(&s, &current, "http://bad host/").is_err());
}

#[test]
fn chunked_decoding() {
    assert!(matches!(decode_chunked(b"3\r\nabc\r\n0\r\n\r\n"), Chunked::Done(b) if b == b"abc"));
    assert!(matches!(decode_chunked(b"3\r\nab"), Chunked::Incomplete));
    assert!(matches!(decode_chunked(b"zz\r\n"), Chunked::Invalid));
    assert!(matches!(decode_chunked(b"100000\r\n"), Chunked::TooLarge));
}

/// Egress rules denying only 127.0.0.2 (the responders listen on 127.0.0.1).
fn deny_127_0_0_2(dns: &MockDns, port: u16) -> ValidationSettings {
    let mut s = settings(dns, port, 1);
    s.egress = egress::EgressRules::new(vec![egress::IpNetwork::parse("127.0.0.2/32").unwrap()]);
    s
}

/// A listener on 127.0.0.2:`port` that counts the connections it accepts.
async fn counting_listener(port: u16) -> (Arc<Mutex<usize>>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind(("127.0.0.2", port)).await.unwrap();
    let count = Arc::new(Mutex::new(0));
    let seen = count.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            *seen.lock().unwrap() += 1;
            drop(stream);
        }
    });
    (count, task)
}

#[tokio::test]
async fn redirect_to_a_denied_address_is_refused_before_connecting() {
    let dns = MockDns::start(LOCAL).unwrap();
    let listener = TcpListener::bind(LOCAL).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (connections, hold) = counting_listener(port).await;
    let responder = HttpResponder::start(listener, move |_| {
        redirect(302, &format!("http://127.0.0.2:{port}/latest/meta-data/"))
    });
    let s = deny_127_0_0_2(&dns, port);
    let err = validate(&s, &dns_id("example.com"), TOKEN, KEY_AUTH)
        .await
        .unwrap_err();
    assert!(matches!(err, ValidationError::Connection(_)), "{err:?}");
    assert_eq!(
        err.problem_type().urn(),
        "urn:ietf:params:acme:error:connection"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "http-01 of example.com (redirected to http://127.0.0.2:{port}/latest/meta-data/): \
             127.0.0.2 is in 127.0.0.2/32, a network validation does not connect to \
             (validation.denyNetworks)"
        )
    );
    assert_eq!(responder.requests().len(), 1);
    assert_eq!(
        *connections.lock().unwrap(),
        0,
        "connected to a denied address"
    );
    hold.abort();
}

#[tokio::test]
async fn redirect_to_a_name_resolving_to_a_denied_address_is_refused() {
    let dns = MockDns::start(LOCAL).unwrap();
    dns.set_a(
        "internal.test",
        vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))],
    );
    let listener = TcpListener::bind(LOCAL).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (connections, hold) = counting_listener(port).await;
    let _responder = HttpResponder::start(listener, move |_| {
        redirect(307, &format!("http://internal.test:{port}/admin"))
    });
    let s = deny_127_0_0_2(&dns, port);
    let err = validate(&s, &dns_id("example.com"), TOKEN, KEY_AUTH)
        .await
        .unwrap_err();
    assert!(matches!(err, ValidationError::Connection(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("internal.test resolves to 127.0.0.2, which is in 127.0.0.2/32")
            && text.contains("validation.denyNetworks"),
        "{text}"
    );
    assert_eq!(
        *connections.lock().unwrap(),
        0,
        "connected to a denied address"
    );
    hold.abort();
}

#[tokio::test]
async fn identifier_resolving_to_a_denied_address_is_refused() {
    let dns = MockDns::start(LOCAL).unwrap();
    dns.set_a("denied.test", vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))]);
    let port = TcpListener::bind(LOCAL)
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (connections, hold) = counting_listener(port).await;
    let s = deny_127_0_0_2(&dns, port);
    let err = validate(&s, &dns_id("denied.test"), TOKEN, KEY_AUTH)
        .await
        .unwrap_err();
    assert!(matches!(err, ValidationError::Connection(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "http-01 of denied.test: denied.test resolves to 127.0.0.2, which is in 127.0.0.2/32, \
         a network validation does not connect to (validation.denyNetworks)"
    );
    assert_eq!(
        *connections.lock().unwrap(),
        0,
        "connected to a denied address"
    );
    hold.abort();
}

/// 169.254.169.254 is judged, never connected to: the redirect is read,
/// its target resolved and refused by the default rules (loopback allowed
/// here so that the first hop could be served), all without a connection.
#[tokio::test]
async fn redirect_to_the_metadata_endpoint_is_refused_by_the_defaults() {
    let dns = MockDns::start(LOCAL).unwrap();
    dns.set_a(
        "metadata.test",
        vec![IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254))],
    );
    let mut s = settings(&dns, 80, 443);
    s.egress = egress::EgressRules::new(
        egress::DEFAULT_DENY_NETWORKS
            .iter()
            .filter(|n| !n.starts_with("127.") && **n != "::1/128")
            .map(|n| egress::IpNetwork::parse(n).unwrap())
            .collect(),
    );
    let first = Target {
        https: false,
        host: Host::Name("example.com".into()),
        port: 80,
        path: PATH.into(),
    };
    for (location, host) in [
        (
            "http://169.254.169.254/latest/meta-data/",
            "169.254.169.254",
        ),
        (
            "http://[::ffff:169.254.169.254]/latest/",
            "[::ffff:169.254.169.254]",
        ),
        ("https://metadata.test/computeMetadata/v1/", "metadata.test"),
    ] {
        let next = redirect_target(&s, &first, location).unwrap();
        assert_eq!(next.host.to_string(), host);
        let ips = next.host.resolve(&s).await.unwrap();
        let err = s
            .egress
            .check(&ips, &next.host.to_string(), "http-01 of example.com")
            .unwrap_err();
        assert_eq!(
            err.problem_type().urn(),
            "urn:ietf:params:acme:error:connection"
        );
        let text = err.to_string();
        assert!(
            text.contains("169.254.169.254") && text.contains("169.254.0.0/16"),
            "{text}"
        );
        assert!(text.contains("validation.denyNetworks"), "{text}");
    }
}

#[tokio::test]
async fn response_bodies_and_heads_are_never_echoed() {
    const SECRET: &str = "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG";
    let dns = MockDns::start(LOCAL).unwrap();
    let cases: Vec<Vec<u8>> = vec![
        ok(SECRET),
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{SECRET}",
            SECRET.len() + 50
        )
        .into_bytes(),
        format!("{SECRET}\r\n\r\n").into_bytes(),
        format!("HTTP/1.1 200 OK\r\nContent-Length: {SECRET}\r\n\r\n").into_bytes(),
        format!("HTTP/1.1 200 OK\r\n\r\n{SECRET}{}", "x".repeat(10_000)).into_bytes(),
    ];
    for response in cases {
        let responder = HttpResponder::bind(move |_| response.clone()).await;
        let s = settings(&dns, responder.port(), 1);
        let err = validate(&s, &dns_id("example.com"), TOKEN, KEY_AUTH)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("aws_secret"), "{text}");
        assert!(!text.contains("wJalr"), "{text}");
        assert!(text.contains("127.0.0.1:"), "the address is named: {text}");
    }
}

#[test]
fn trailing_dot_ip_literals_are_addresses() {
    let first = Target {
        https: false,
        host: Host::Name("example.com".into()),
        port: 80,
        path: PATH.into(),
    };
    let next = redirect_target_for(80, 443, &first, "http://127.0.0.1./x").unwrap();
    assert_eq!(next.host, Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)));
}

#[test]
fn fuzz_harness_accepts_its_examples() {
    fuzz_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\ntok.thumb");
    fuzz_response(b"HTTP/1.1 302 Found\r\nLocation: //127.0.0.1./x\r\n\r\n");
    fuzz_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nzQ9\r\n0\r\n\r\n");
}
