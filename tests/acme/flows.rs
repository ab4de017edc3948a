//! End-to-end ACME flows driven by instant-acme against an in-process server:
//! http-01, dns-01, tls-alpn-01, wildcards, IP identifiers, download, revoke.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use acmeproxy_testkit as kit;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus, RetryPolicy,
    RevocationReason, RevocationRequest,
};
use kit::TestServer;
use kit::crash_support::verify_chain;
use rustls::pki_types::CertificateDer;
use x509_parser::der_parser::asn1_rs::Any;
use x509_parser::prelude::*;

/// Runs one order to completion answering `kind`; returns the chain PEM and
/// the certificate key.
async fn issue(
    ts: &TestServer,
    account: &Account,
    identifiers: &[Identifier],
    kind: ChallengeType,
) -> Result<(String, String), String> {
    issue_with(ts, account, identifiers, kind, None).await
}

/// [`issue`] with a CSR signed by `csr_key` (instead of instant-acme's
/// P-256 key); the key returned is then empty.
async fn issue_with(
    ts: &TestServer,
    account: &Account,
    identifiers: &[Identifier],
    kind: ChallengeType,
    csr_key: Option<&rcgen::KeyPair>,
) -> Result<(String, String), String> {
    let mut order = account
        .new_order(&NewOrder::new(identifiers))
        .await
        .map_err(|e| format!("newOrder: {e}"))?;
    let mut authzs = order.authorizations();
    while let Some(a) = authzs.next().await {
        let mut a = a.map_err(|e| format!("authz: {e}"))?;
        if a.status == AuthorizationStatus::Valid {
            continue;
        }
        let mut ch = a
            .challenge(kind.clone())
            .ok_or_else(|| format!("no {kind:?} challenge offered"))?;
        let key_auth = ch.key_authorization();
        let ident = ch.identifier().to_string();
        let value = match ch.identifier().identifier {
            Identifier::Dns(name) => name.clone(),
            Identifier::Ip(ip) => ip.to_string(),
            _ => return Err("unexpected identifier".into()),
        };
        match kind {
            ChallengeType::Http01 => ts.responders.set_http01(&ch.token, key_auth.as_str()),
            ChallengeType::Dns01 => ts
                .responders
                .set_dns01(value.trim_start_matches("*."), &key_auth.dns_value()),
            ChallengeType::TlsAlpn01 => {
                let sni = match ch.identifier().identifier {
                    Identifier::Ip(std::net::IpAddr::V4(v4)) => {
                        let o = v4.octets();
                        format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
                    }
                    _ => value.clone(),
                };
                ts.responders
                    .set_tls_alpn01(&sni, &value, key_auth.digest().as_ref())
            }
            _ => return Err("unsupported kind".into()),
        }
        let _ = ident;
        ch.set_ready()
            .await
            .map_err(|e| format!("challenge: {e}"))?;
    }
    let status = order
        .poll_ready(&RetryPolicy::default())
        .await
        .map_err(|e| format!("poll_ready: {e}"))?;
    if status != OrderStatus::Ready {
        return Err(format!("order is {status:?}: {:?}", order.state().error));
    }
    let key = match csr_key {
        None => order.finalize().await,
        Some(csr_key) => {
            let names: Vec<String> = identifiers
                .iter()
                .map(|id| match id {
                    Identifier::Dns(n) => n.clone(),
                    Identifier::Ip(ip) => ip.to_string(),
                    _ => unreachable!("only DNS and IP identifiers are used"),
                })
                .collect();
            let mut params = rcgen::CertificateParams::new(names).unwrap();
            params.distinguished_name = rcgen::DistinguishedName::new();
            let csr = params.serialize_request(csr_key).unwrap();
            order.finalize_csr(csr.der()).await.map(|()| String::new())
        }
    }
    .map_err(|e| format!("finalize: {e}"))?;
    let chain = order
        .poll_certificate(&RetryPolicy::default())
        .await
        .map_err(|e| format!("certificate: {e}"))?;
    Ok((chain, key))
}

fn leaf_sans(chain: &str) -> Vec<String> {
    let pems = ::pem::parse_many(chain).unwrap();
    let (_, cert) = X509Certificate::from_der(pems[0].contents()).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .map(|g| match g {
            GeneralName::DNSName(d) => d.to_string(),
            GeneralName::IPAddress(b) if b.len() == 4 => {
                std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()
            }
            other => format!("{other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn http01_issue_download_revoke() {
    let ts = TestServer::start().await;
    let (account, _) = ts.account().await;
    let ids = [Identifier::Dns("www.example.test".into())];
    let (chain, _key) = issue(&ts, &account, &ids, ChallengeType::Http01)
        .await
        .unwrap();
    assert_eq!(leaf_sans(&chain), vec!["www.example.test"]);
    verify_chain(&chain, ts.server.as_ref().unwrap().roots_pem.as_bytes());

    let der = ::pem::parse(&chain).unwrap().contents().to_vec();
    let cert = CertificateDer::from(der);
    account
        .revoke(&RevocationRequest {
            certificate: &cert,
            reason: Some(RevocationReason::KeyCompromise),
        })
        .await
        .unwrap();
    let again = account
        .revoke(&RevocationRequest {
            certificate: &cert,
            reason: None,
        })
        .await
        .unwrap_err();
    assert!(again.to_string().contains("alreadyRevoked"), "{again}");
}

#[tokio::test]
async fn dns01_with_wildcard_and_base_name() {
    let ts = TestServer::start().await;
    let (account, _) = ts.account().await;
    let ids = [
        Identifier::Dns("*.wild.test".into()),
        Identifier::Dns("wild.test".into()),
    ];
    let (chain, _) = issue(&ts, &account, &ids, ChallengeType::Dns01)
        .await
        .unwrap();
    let mut sans = leaf_sans(&chain);
    sans.sort();
    assert_eq!(sans, vec!["*.wild.test", "wild.test"]);
}

#[tokio::test]
async fn tls_alpn01_for_a_name_and_http01_for_an_ip() {
    let ts = TestServer::start().await;
    let (account, _) = ts.account().await;
    let (chain, _) = issue(
        &ts,
        &account,
        &[Identifier::Dns("alpn.test".into())],
        ChallengeType::TlsAlpn01,
    )
    .await
    .unwrap();
    assert_eq!(leaf_sans(&chain), vec!["alpn.test"]);
    let (chain, _) = issue(
        &ts,
        &account,
        &[Identifier::Ip("127.0.0.1".parse().unwrap())],
        ChallengeType::Http01,
    )
    .await
    .unwrap();
    assert_eq!(leaf_sans(&chain), vec!["127.0.0.1"]);
}

#[tokio::test]
async fn failed_validation_makes_the_order_invalid_with_the_reason() {
    let ts = TestServer::start().await;
    let (account, _) = ts.account().await;
    let ids = [Identifier::Dns("nobody-home.test".into())];
    let mut order = account.new_order(&NewOrder::new(&ids)).await.unwrap();
    let mut authzs = order.authorizations();
    let mut a = authzs.next().await.unwrap().unwrap();
    // Nothing is served for this token: the validator gets a 404.
    // The challenge POST waits for the quick validation and returns the
    // failed challenge; instant-acme turns its error into an Err.
    let mut ch = a.challenge(ChallengeType::Http01).unwrap();
    let err = ch.set_ready().await.expect_err("validation must fail");
    let instant_acme::Error::Api(problem) = err else {
        panic!("expected the challenge's problem, got {err}");
    };
    assert_eq!(
        problem.r#type.as_deref(),
        Some("urn:ietf:params:acme:error:unauthorized")
    );
    let detail = problem.detail.unwrap_or_default();
    assert!(
        detail.contains("nobody-home.test") && detail.contains("404"),
        "{detail}"
    );
    let state = order.refresh().await.unwrap();
    assert_eq!(state.status, OrderStatus::Invalid);
    let order_err = state.error.clone().expect("the order carries the problem");
    assert!(
        order_err
            .detail
            .unwrap_or_default()
            .contains("nobody-home.test")
    );
}

#[tokio::test]
async fn directory_nonce_and_roots() {
    let ts = TestServer::start().await;
    let http = ts.http();
    let dir: serde_json::Value = http
        .get(ts.directory_url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for k in [
        "newNonce",
        "newAccount",
        "newOrder",
        "revokeCert",
        "keyChange",
    ] {
        assert!(
            dir[k].as_str().unwrap().starts_with("https://127.0.0.1:"),
            "{k}"
        );
    }
    assert_eq!(dir["meta"]["externalAccountRequired"], false);

    let head = http
        .head(dir["newNonce"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert!(head.headers().contains_key("replay-nonce"));
    assert_eq!(head.headers()["cache-control"], "no-store");
    let index = format!("<{}>;rel=\"index\"", ts.directory_url());
    assert_eq!(head.headers()["link"], index.as_str());
    let get = http
        .get(dir["newNonce"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 204);
    assert!(get.headers().contains_key("replay-nonce"));

    let roots = http.get(ts.url("/roots.pem")).send().await.unwrap();
    assert_eq!(roots.status(), 200);
    assert!(roots.text().await.unwrap().contains("BEGIN CERTIFICATE"));

    let missing = http
        .get(ts.url("/acme/nope/directory"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );
    // A GET other than newNonce carries no nonce (RFC 8555 §6.5, §7.2).
    assert!(!missing.headers().contains_key("replay-nonce"));
    let directory = http.get(ts.directory_url()).send().await.unwrap();
    assert_eq!(directory.status(), 200);
    assert!(!directory.headers().contains_key("replay-nonce"));
}

#[tokio::test]
async fn renewal_info_and_replaces() {
    let ts = TestServer::start().await;
    let (account, _) = ts.account().await;
    let ids = [Identifier::Dns("ari.test".into())];
    let (chain, _) = issue(&ts, &account, &ids, ChallengeType::Http01)
        .await
        .unwrap();
    let der = ::pem::parse(&chain).unwrap().contents().to_vec();
    let cert = CertificateDer::from(der.clone());
    let id = instant_acme::CertificateIdentifier::try_from(&cert).unwrap();
    let (info, retry) = account.renewal_info(&id).await.unwrap();
    let (_, parsed) = X509Certificate::from_der(&der).unwrap();
    let nb = parsed.validity().not_before.to_datetime();
    let na = parsed.validity().not_after.to_datetime();
    let w = info.suggested_window;
    assert!(nb < w.start && w.start < w.end && w.end < na, "{w:?}");
    assert!(
        retry.as_secs() > 3600,
        "Retry-After is hours, got {retry:?}"
    );

    // A renewal that names the certificate it replaces.
    let mut order = account
        .new_order(&NewOrder::new(&ids).replaces(id.clone()))
        .await
        .unwrap();
    assert_eq!(order.state().status, OrderStatus::Pending);

    // An unknown certificate id is refused.
    let unknown = instant_acme::CertificateIdentifier::new(
        Any::from_der(&[4, 1, 7]).unwrap().1.data.into(),
        Any::from_der(&[2, 1, 7]).unwrap().1.data.into(),
    );
    let Err(err) = account
        .new_order(&NewOrder::new(&ids).replaces(unknown))
        .await
    else {
        panic!("an unknown replaced certificate must be refused");
    };
    assert!(
        err.to_string().contains("does not name a certificate"),
        "{err}"
    );

    // After revocation the window asks for renewal now.
    account
        .revoke(&RevocationRequest {
            certificate: &cert,
            reason: None,
        })
        .await
        .unwrap();
    let (info, _) = account.renewal_info(&id).await.unwrap();
    assert!(info.suggested_window.end <= ::time::OffsetDateTime::now_utc());
}

#[tokio::test]
async fn provisioner_policy_refuses_names_with_the_rule() {
    let ts = TestServer::start_with(kit::Options {
        provisioner_extra: serde_json::json!({"policy": {"x509": {
            "allow": {"dns": ["*.team.test"], "ip": ["127.0.0.0/8"]},
            "deny": {"dns": ["secret.team.test"]}
        }}}),
        ..kit::Options::default()
    })
    .await;
    let (account, _) = ts.account().await;
    let refused = |name: &str| Identifier::Dns(name.to_owned());
    for (id, rule) in [
        (refused("www.other.test"), "no allow rule"),
        (
            refused("secret.team.test"),
            "deny rule \"secret.team.test\"",
        ),
        (refused("*.team.test"), "allowWildcardNames"),
    ] {
        let Err(err) = account
            .new_order(&NewOrder::new(std::slice::from_ref(&id)))
            .await
        else {
            panic!("{id:?} must be refused");
        };
        let instant_acme::Error::Api(p) = err else {
            panic!("expected a problem for {id:?}, got {err}");
        };
        assert_eq!(
            p.r#type.as_deref(),
            Some("urn:ietf:params:acme:error:rejectedIdentifier")
        );
        let detail = p.detail.unwrap_or_default();
        assert!(
            detail.contains(rule) && detail.contains("provisioner"),
            "{detail}"
        );
    }
    // Allowed names and IPs go through to a certificate.
    let (chain, _) = issue(
        &ts,
        &account,
        &[Identifier::Dns("www.team.test".into())],
        ChallengeType::Http01,
    )
    .await
    .unwrap();
    assert_eq!(leaf_sans(&chain), vec!["www.team.test"]);
}

/// A validation that outlasts the challenge POST's wait (1.5 s) is answered
/// `processing`, stored so, and then becomes valid; a quick one is answered
/// `valid` by the POST itself.
#[tokio::test]
async fn slow_validation_is_answered_processing_then_valid() {
    let ts = TestServer::start().await;
    let (account, _) = ts.account().await;
    let ids = [Identifier::Ip("127.0.0.1".parse().unwrap())];
    let mut order = account.new_order(&NewOrder::new(&ids)).await.unwrap();
    let started = std::time::Instant::now();
    {
        let mut authzs = order.authorizations();
        let mut a = authzs.next().await.unwrap().unwrap();
        let mut ch = a.challenge(ChallengeType::Http01).unwrap();
        let key_auth = ch.key_authorization();
        ts.responders.set_http01_slow(
            &ch.token,
            key_auth.as_str(),
            std::time::Duration::from_millis(2500),
        );
        ch.set_ready().await.unwrap();
    }
    let waited = started.elapsed();
    assert!(
        waited >= std::time::Duration::from_millis(1400)
            && waited < std::time::Duration::from_millis(2400),
        "the POST waits about 1.5 s, not for the validation: {waited:?}"
    );
    // instant-acme caches the authorization: read the order afresh.
    let url = order.url().to_owned();
    let mut order = account.order(url).await.unwrap();
    let mut authzs = order.authorizations();
    let a = authzs.next().await.unwrap().unwrap();
    assert_eq!(a.status, AuthorizationStatus::Pending);
    let ch = a
        .challenges
        .iter()
        .find(|c| c.r#type == ChallengeType::Http01)
        .unwrap();
    assert_eq!(ch.status, instant_acme::ChallengeStatus::Processing);
    let status = order.poll_ready(&RetryPolicy::default()).await.unwrap();
    assert_eq!(status, OrderStatus::Ready);
}

/// Every certificate kind the project makes is strict DER, as current Python
/// `cryptography` (certbot 5) reads it: the softcas root and intermediate,
/// leaves for each key type and identifier kind, and the RA's own TLS
/// certificate. Leaves say "not a CA" with a critical, empty
/// basicConstraints, never an encoded `cA FALSE`.
#[tokio::test]
async fn every_certificate_is_strict_der() {
    use kit::raw::Key;
    use kit::strict_der::check_pem;

    let ts = TestServer::start().await;
    let (account, _) = ts.account().await;
    let roots = check_pem("/roots.pem", &ts.server.as_ref().unwrap().roots_pem);
    assert_eq!(roots.len(), 1);
    assert!(roots[0].self_signed_name);
    assert_eq!(
        roots[0].basic_constraints,
        Some((true, true)),
        "root is a CA"
    );

    let rsa = Key::rsa().rcgen();
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let cases: [(&str, Identifier, Option<&rcgen::KeyPair>); 5] = [
        ("P-256", Identifier::Dns("der.test".into()), None),
        ("RSA", Identifier::Dns("rsa.der.test".into()), Some(&rsa)),
        (
            "P-384",
            Identifier::Dns("p384.der.test".into()),
            Some(&p384),
        ),
        ("Ed25519", Identifier::Dns("ed.der.test".into()), Some(&ed)),
        ("IP", Identifier::Ip("127.0.0.1".parse().unwrap()), None),
    ];
    for (what, id, key) in cases {
        let (chain, _) = issue_with(&ts, &account, &[id], ChallengeType::Http01, key)
            .await
            .unwrap();
        let certs = check_pem(what, &chain);
        assert!(certs.len() >= 2, "{what}: leaf and issuers");
        assert_eq!(
            certs[0].basic_constraints,
            Some((false, true)),
            "{what} leaf"
        );
        for issuer in &certs[1..] {
            assert_eq!(
                issuer.basic_constraints,
                Some((true, true)),
                "{what} issuer"
            );
        }
    }

    let own = std::fs::read_to_string(ts.data_dir.join("tls/server.crt")).unwrap();
    let own = check_pem("the RA's own TLS certificate", &own);
    assert_eq!(own[0].basic_constraints, Some((false, true)));
}

/// The strict reading refuses what the leaves used to carry: a
/// basicConstraints that encodes its DEFAULT `cA FALSE`.
#[test]
fn strict_der_refuses_an_encoded_default() {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["x.test".into()]).unwrap();
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    let cert = params.self_signed(&key).unwrap();
    let err = kit::strict_der::check(cert.der()).unwrap_err();
    assert!(err.contains("DEFAULT"), "{err}");
    params.is_ca = rcgen::IsCa::NoCa;
    let cert = params.self_signed(&key).unwrap();
    assert_eq!(
        kit::strict_der::check(cert.der())
            .unwrap()
            .basic_constraints,
        None
    );
}
