//! tls-alpn-01 validation (RFC 8737): a TLS handshake to port 443 offering
//! only the `acme-tls/1` protocol, then checks of the self-signed
//! certificate the server presents: exactly one subjectAltName, the
//! identifier, and the critical acmeIdentifier extension holding
//! SHA-256(key authorization). IP identifiers use the reverse-DNS name as
//! SNI (RFC 8738 §6).
//!
//! <https://www.rfc-editor.org/rfc/rfc8737#section-3>

use std::net::IpAddr;
use std::sync::Arc;

use tokio_rustls::TlsConnector;
use x509_parser::extensions::GeneralName;

use super::net::{self, Host};
use super::{ValidationError, ValidationRecord, ValidationSettings};
use crate::acme::Identifier;

/// The ALPN protocol name of tls-alpn-01 (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The id-pe-acmeIdentifier extension (RFC 8737 §6.1).
pub const ACME_IDENTIFIER_OID: &str = "1.3.6.1.5.5.7.1.31";

/// Validates tls-alpn-01 for `identifier`.
///
/// <https://www.rfc-editor.org/rfc/rfc8737#section-3>
pub async fn validate(
    settings: &ValidationSettings,
    identifier: &Identifier,
    key_authorization: &str,
) -> Result<ValidationRecord, ValidationError> {
    let what = format!("tls-alpn-01 of {}", identifier.value());
    let (host, sni) = match identifier {
        Identifier::Dns(name) => (Host::Name(name.clone()), net::server_name(name)?),
        Identifier::Ip(ip) => (Host::Ip(*ip), net::server_name(&reverse_dns_name(*ip))?),
    };
    let ips = host.resolve(settings).await.map_err(|e| match e {
        ValidationError::Dns(msg) => ValidationError::Dns(format!("{what}: {msg}")),
        other => other,
    })?;
    settings.egress.check(&ips, &host.to_string(), &what)?;
    let port = settings.tls_alpn_port;
    let (stream, addr) = net::connect(settings, &ips, port, &what).await?;
    let config = net::insecure_client_config(vec![ACME_TLS_ALPN.to_vec()])?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(sni, stream)
        .await
        .map_err(|e| {
            ValidationError::Tls(format!(
                "{what}: TLS handshake with {addr} offering ALPN \"acme-tls/1\" failed: {e}"
            ))
        })?;
    let (_, conn) = tls.get_ref();
    match conn.alpn_protocol() {
        Some(ACME_TLS_ALPN) => {}
        Some(other) => {
            return Err(ValidationError::Tls(format!(
                "{what}: {addr} negotiated ALPN {:?} instead of \"acme-tls/1\"",
                String::from_utf8_lossy(other)
            )));
        }
        None => {
            return Err(ValidationError::Tls(format!(
                "{what}: {addr} did not negotiate the ALPN protocol \"acme-tls/1\"; the server \
                 must answer it with the challenge certificate"
            )));
        }
    }
    let leaf = conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or_else(|| ValidationError::Tls(format!("{what}: {addr} presented no certificate")))?;
    check_certificate(leaf, identifier, key_authorization, &what)?;
    Ok(ValidationRecord {
        addresses_resolved: ips,
        address_used: Some(addr),
        urls: Vec::new(),
    })
}

/// The reverse-DNS name of `ip` (`4.3.2.1.in-addr.arpa`, nibbles under
/// `ip6.arpa`), sent as SNI for IP identifiers (RFC 8738 §6).
///
/// <https://www.rfc-editor.org/rfc/rfc8738#section-6>
pub fn reverse_dns_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa")
        }
        IpAddr::V6(v6) => {
            let mut name = String::with_capacity(72);
            for byte in v6.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", byte & 0x0f, byte >> 4));
            }
            name.push_str("ip6.arpa");
            name
        }
    }
}

/// Checks the challenge certificate `der` (RFC 8737 §3).
fn check_certificate(
    der: &[u8],
    identifier: &Identifier,
    key_authorization: &str,
    what: &str,
) -> Result<(), ValidationError> {
    let unauthorized = |why: String| {
        ValidationError::Unauthorized(format!("{what}: the challenge certificate {why}"))
    };
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| unauthorized(format!("could not be parsed: {e}")))?;

    let sans = cert
        .subject_alternative_name()
        .map_err(|e| unauthorized(format!("has an invalid subjectAltName extension: {e}")))?
        .map(|ext| ext.value.general_names.clone())
        .unwrap_or_default();
    let [san] = sans.as_slice() else {
        return Err(unauthorized(format!(
            "must have exactly one subjectAltName, {}, but has {}",
            identifier.value(),
            sans.len()
        )));
    };
    let matches = match (identifier, san) {
        (Identifier::Dns(name), GeneralName::DNSName(san)) => san
            .trim_end_matches('.')
            .eq_ignore_ascii_case(name.trim_end_matches('.')),
        (Identifier::Ip(IpAddr::V4(ip)), GeneralName::IPAddress(bytes)) => {
            *bytes == ip.octets().as_slice()
        }
        (Identifier::Ip(IpAddr::V6(ip)), GeneralName::IPAddress(bytes)) => {
            *bytes == ip.octets().as_slice()
        }
        _ => false,
    };
    if !matches {
        return Err(unauthorized(format!(
            "is for {} but must be for {}",
            describe_san(san),
            identifier.value()
        )));
    }

    let mut acme = cert
        .extensions()
        .iter()
        .filter(|ext| ext.oid.to_id_string() == ACME_IDENTIFIER_OID);
    let (Some(ext), None) = (acme.next(), acme.next()) else {
        return Err(unauthorized(format!(
            "must have exactly one acmeIdentifier extension ({ACME_IDENTIFIER_OID})"
        )));
    };
    if !ext.critical {
        return Err(unauthorized(format!(
            "has an acmeIdentifier extension ({ACME_IDENTIFIER_OID}) that is not critical"
        )));
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, key_authorization.as_bytes());
    // The extension value is the DER OCTET STRING of the 32-byte digest.
    let mut expected = vec![0x04, 0x20];
    expected.extend_from_slice(digest.as_ref());
    if ext.value != expected.as_slice() {
        let held = match ext.value.strip_prefix(&[0x04, 0x20]) {
            Some(inner) if inner.len() == 32 => hex(inner),
            _ => format!("{} (not a DER OCTET STRING of 32 bytes)", hex(ext.value)),
        };
        return Err(ValidationError::IncorrectResponse(format!(
            "{what}: the acmeIdentifier extension of the challenge certificate holds {held} \
             but must hold SHA-256(key authorization) = {}",
            hex(digest.as_ref())
        )));
    }
    Ok(())
}

/// Fuzz harness (testkit/src/fuzzing.rs): `data` is the DER certificate a
/// server presents, checked for a name and for an IP identifier.
pub fn fuzz_certificate(data: &[u8]) {
    let key_authorization = "tok.thumb";
    for identifier in [
        Identifier::Dns("example.com".to_owned()),
        Identifier::Ip(IpAddr::from([192, 0, 2, 1])),
    ] {
        let what = format!("tls-alpn-01 of {}", identifier.value());
        let _ = check_certificate(data, &identifier, key_authorization, &what);
    }
}

/// A subjectAltName entry for messages: `dNSName example.com`, `iPAddress 10.0.0.1`.
fn describe_san(san: &GeneralName<'_>) -> String {
    match san {
        GeneralName::DNSName(name) => format!("dNSName {name}"),
        GeneralName::IPAddress(bytes) => {
            let ip = <[u8; 4]>::try_from(*bytes)
                .map(IpAddr::from)
                .or_else(|_| <[u8; 16]>::try_from(*bytes).map(IpAddr::from));
            match ip {
                Ok(ip) => format!("iPAddress {ip}"),
                Err(_) => format!("iPAddress {}", hex(bytes)),
            }
        }
        other => other.to_string(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use rcgen::CustomExtension;
    use tokio::net::TcpListener;

    use super::*;
    use crate::validate::testutil::{
        LOCAL, TlsOptions, TlsResponder, acme_extension, certificate, certificate_with, settings,
    };
    use acmeproxy_testkit::MockDns;

    const KEY_AUTH: &str = "token.thumbprint";

    fn acme_alpn() -> TlsOptions {
        TlsOptions {
            alpn: vec![ACME_TLS_ALPN.to_vec()],
            ..TlsOptions::default()
        }
    }

    /// Starts a responder with `cert` and validates `identifier` against it.
    async fn run(
        identifier: &Identifier,
        sans: &[&str],
        extensions: Vec<CustomExtension>,
        options: TlsOptions,
    ) -> (
        Result<ValidationRecord, ValidationError>,
        TlsResponder,
        MockDns,
    ) {
        let dns = MockDns::start(LOCAL).unwrap();
        let listener = TcpListener::bind(LOCAL).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let responder = TlsResponder::start(listener, certificate(sans, extensions), options);
        let s = settings(&dns, 1, port);
        let result = validate(&s, identifier, KEY_AUTH).await;
        (result, responder, dns)
    }

    fn dns_id(name: &str) -> Identifier {
        Identifier::Dns(name.to_owned())
    }

    #[tokio::test]
    async fn valid_certificate_for_a_name() {
        let id = dns_id("example.com");
        let (result, responder, dns) = run(
            &id,
            &["example.com"],
            vec![acme_extension(KEY_AUTH)],
            acme_alpn(),
        )
        .await;
        let record = result.unwrap();
        assert_eq!(
            record.addresses_resolved,
            vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
        );
        assert!(record.address_used.is_some());
        assert_eq!(
            *responder.snis.lock().unwrap(),
            vec![Some("example.com".to_owned())]
        );
        assert!(dns.queries().contains(&"example.com A".to_owned()));
    }

    #[tokio::test]
    async fn valid_over_tls12() {
        let id = dns_id("example.com");
        let options = TlsOptions {
            tls12_only: true,
            ..acme_alpn()
        };
        let (result, _, _) = run(
            &id,
            &["example.com"],
            vec![acme_extension(KEY_AUTH)],
            options,
        )
        .await;
        result.unwrap();
    }

    #[tokio::test]
    async fn valid_with_an_ed25519_key() {
        let dns = MockDns::start(LOCAL).unwrap();
        let listener = TcpListener::bind(LOCAL).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cert = certificate_with(
            &rcgen::PKCS_ED25519,
            &["example.com"],
            vec![acme_extension(KEY_AUTH)],
        );
        let _responder = TlsResponder::start(listener, cert, acme_alpn());
        let s = settings(&dns, 1, port);
        validate(&s, &dns_id("example.com"), KEY_AUTH)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn handshake_signed_with_another_key_is_refused() {
        for tls12_only in [false, true] {
            let id = dns_id("example.com");
            let options = TlsOptions {
                wrong_signing_key: true,
                tls12_only,
                ..acme_alpn()
            };
            let (result, _, _) = run(
                &id,
                &["example.com"],
                vec![acme_extension(KEY_AUTH)],
                options,
            )
            .await;
            let err = result.unwrap_err();
            assert!(matches!(err, ValidationError::Tls(_)), "{err:?}");
            assert!(err.to_string().contains("BadSignature"), "{err}");
        }
    }

    #[tokio::test]
    async fn ip_identifier_sends_the_reverse_name_as_sni() {
        let id = Identifier::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let (result, responder, dns) = run(
            &id,
            &["127.0.0.1"],
            vec![acme_extension(KEY_AUTH)],
            acme_alpn(),
        )
        .await;
        result.unwrap();
        assert_eq!(
            *responder.snis.lock().unwrap(),
            vec![Some("1.0.0.127.in-addr.arpa".to_owned())]
        );
        assert!(dns.queries().is_empty());
    }

    #[tokio::test]
    async fn wrong_digest_is_an_incorrect_response() {
        let id = dns_id("example.com");
        let (result, _, _) = run(
            &id,
            &["example.com"],
            vec![acme_extension("other.key")],
            acme_alpn(),
        )
        .await;
        let err = result.unwrap_err();
        assert!(
            matches!(err, ValidationError::IncorrectResponse(_)),
            "{err:?}"
        );
        let expected = ring::digest::digest(&ring::digest::SHA256, KEY_AUTH.as_bytes());
        let held = ring::digest::digest(&ring::digest::SHA256, b"other.key");
        assert_eq!(
            err.to_string(),
            format!(
                "tls-alpn-01 of example.com: the acmeIdentifier extension of the challenge \
                 certificate holds {} but must hold SHA-256(key authorization) = {}",
                hex(held.as_ref()),
                hex(expected.as_ref())
            )
        );
    }

    #[tokio::test]
    async fn server_without_alpn_is_a_tls_error() {
        let id = dns_id("example.com");
        let (result, _, _) = run(
            &id,
            &["example.com"],
            vec![acme_extension(KEY_AUTH)],
            TlsOptions::default(),
        )
        .await;
        let err = result.unwrap_err();
        assert!(matches!(err, ValidationError::Tls(_)), "{err:?}");
        assert!(
            err.to_string()
                .contains("did not negotiate the ALPN protocol \"acme-tls/1\""),
            "{err}"
        );
    }

    #[tokio::test]
    async fn server_with_other_alpn_fails_the_handshake() {
        let id = dns_id("example.com");
        let options = TlsOptions {
            alpn: vec![b"h2".to_vec()],
            ..TlsOptions::default()
        };
        let (result, _, _) = run(
            &id,
            &["example.com"],
            vec![acme_extension(KEY_AUTH)],
            options,
        )
        .await;
        let err = result.unwrap_err();
        assert!(matches!(err, ValidationError::Tls(_)), "{err:?}");
        assert!(
            err.to_string().contains("TLS handshake with 127.0.0.1:"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn certificate_for_another_name_is_unauthorized() {
        let id = dns_id("example.com");
        let (result, _, _) = run(
            &id,
            &["other.example"],
            vec![acme_extension(KEY_AUTH)],
            acme_alpn(),
        )
        .await;
        let err = result.unwrap_err();
        assert!(matches!(err, ValidationError::Unauthorized(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "tls-alpn-01 of example.com: the challenge certificate is for dNSName \
             other.example but must be for example.com"
        );
    }

    #[tokio::test]
    async fn two_names_are_unauthorized() {
        let id = dns_id("example.com");
        let (result, _, _) = run(
            &id,
            &["example.com", "www.example.com"],
            vec![acme_extension(KEY_AUTH)],
            acme_alpn(),
        )
        .await;
        let err = result.unwrap_err();
        assert!(matches!(err, ValidationError::Unauthorized(_)), "{err:?}");
        assert!(
            err.to_string().contains("exactly one subjectAltName"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn missing_or_non_critical_extension_is_unauthorized() {
        let id = dns_id("example.com");
        let (result, _, _) = run(&id, &["example.com"], Vec::new(), acme_alpn()).await;
        let err = result.unwrap_err();
        assert!(matches!(err, ValidationError::Unauthorized(_)), "{err:?}");
        assert!(
            err.to_string()
                .contains("exactly one acmeIdentifier extension"),
            "{err}"
        );

        let mut ext = acme_extension(KEY_AUTH);
        ext.set_criticality(false);
        let (result, _, _) = run(&id, &["example.com"], vec![ext], acme_alpn()).await;
        let err = result.unwrap_err();
        assert!(matches!(err, ValidationError::Unauthorized(_)), "{err:?}");
        assert!(err.to_string().contains("not critical"), "{err}");
    }

    #[tokio::test]
    async fn connection_refused_is_a_connection_error() {
        let dns = MockDns::start(LOCAL).unwrap();
        let closed = std::net::TcpListener::bind(LOCAL).unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let s = settings(&dns, 1, port);
        let err = validate(&s, &dns_id("example.com"), KEY_AUTH)
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "could not connect to 127.0.0.1:{port} for tls-alpn-01 of example.com: \
                 connection refused"
            )
        );
    }

    #[test]
    fn reverse_names() {
        assert_eq!(
            reverse_dns_name(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10))),
            "10.2.0.192.in-addr.arpa"
        );
        let v6: Ipv6Addr = "2001:db8::567:89ab".parse().unwrap();
        assert_eq!(
            reverse_dns_name(IpAddr::V6(v6)),
            "b.a.9.8.7.6.5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        );
    }

    #[tokio::test]
    async fn name_resolving_to_a_denied_address_is_refused_before_connecting() {
        let dns = MockDns::start(LOCAL).unwrap();
        dns.set_a("denied.test", vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))]);
        let listener = TcpListener::bind(("127.0.0.2", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let responder = TlsResponder::start(
            listener,
            certificate(&["denied.test"], vec![acme_extension(KEY_AUTH)]),
            acme_alpn(),
        );
        let mut s = settings(&dns, 1, port);
        s.egress = crate::validate::egress::EgressRules::new(vec![
            crate::validate::egress::IpNetwork::parse("127.0.0.2/32").unwrap(),
        ]);
        let err = validate(&s, &dns_id("denied.test"), KEY_AUTH)
            .await
            .unwrap_err();
        assert!(matches!(err, ValidationError::Connection(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "tls-alpn-01 of denied.test: denied.test resolves to 127.0.0.2, which is in \
             127.0.0.2/32, a network validation does not connect to (validation.denyNetworks)"
        );
        assert!(
            responder.snis.lock().unwrap().is_empty(),
            "a handshake happened"
        );
        // An IP identifier is judged the same way, without DNS.
        let id = Identifier::Ip(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
        let err = validate(&s, &id, KEY_AUTH).await.unwrap_err();
        assert!(
            err.to_string().contains("127.0.0.2 is in 127.0.0.2/32"),
            "{err}"
        );
        assert!(
            responder.snis.lock().unwrap().is_empty(),
            "a handshake happened"
        );
    }

    #[test]
    fn fuzz_harness_accepts_its_examples() {
        let (cert, _) = certificate(&["example.com"], vec![acme_extension("tok.thumb")]);
        fuzz_certificate(&cert);
        fuzz_certificate(b"\x30\x03\x02\x01\x00");
    }
}
