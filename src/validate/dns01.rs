//! dns-01 validation (RFC 8555 §8.4): a TXT record at
//! `_acme-challenge.<name>` must hold base64url(SHA-256(key authorization)).
//! Lookups go through the configured resolver, which does not cache, so a
//! record added after a failed attempt counts at the next one.
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-8.4>

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::{ValidationError, ValidationRecord, ValidationSettings};
use crate::acme::Identifier;

/// Validates dns-01 for a DNS `identifier` (the wildcard label already
/// removed); IP identifiers cannot use dns-01 (RFC 8738 §7).
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-8.4>
pub async fn validate(
    settings: &ValidationSettings,
    identifier: &Identifier,
    key_authorization: &str,
) -> Result<ValidationRecord, ValidationError> {
    let name = match identifier {
        Identifier::Dns(name) => name.trim_end_matches('.'),
        Identifier::Ip(ip) => {
            return Err(ValidationError::Malformed(format!(
                "dns-01 cannot validate the IP address {ip}; use http-01 or tls-alpn-01"
            )));
        }
    };
    let record_name = format!("_acme-challenge.{name}");
    let expected = expected_txt(key_authorization);
    let found = settings
        .resolver
        .lookup_txt(&record_name)
        .await
        .map_err(|e| match e {
            ValidationError::Dns(msg) => ValidationError::Dns(format!("dns-01 of {name}: {msg}")),
            other => other,
        })?;
    check_txt(&found, &expected, name, &record_name)?;
    Ok(ValidationRecord::default())
}

/// Judges the TXT values found at `record_name` against the `expected`
/// digest: one must match, after trimming whitespace.
fn check_txt(
    found: &[String],
    expected: &str,
    name: &str,
    record_name: &str,
) -> Result<(), ValidationError> {
    if found.iter().any(|value| value.trim() == expected) {
        return Ok(());
    }
    let shown: Vec<String> = found.iter().take(3).map(|v| format!("{v:?}")).collect();
    let more = found.len().saturating_sub(shown.len());
    let shown = if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    };
    let count = found.len();
    let records = if count == 1 { "record" } else { "records" };
    Err(ValidationError::Unauthorized(format!(
        "dns-01 of {name}: found {count} TXT {records} at {record_name} ({shown}) but none is \
         {expected:?}, the base64url SHA-256 digest of the key authorization"
    )))
}

/// Fuzz harness (testkit/src/fuzzing.rs): `data` is a TXT answer, one value a
/// line, as the resolver hands it over (its bytes read as UTF-8, lossily).
pub fn fuzz_txt(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let found: Vec<String> = text.split('\n').map(str::to_owned).collect();
    let expected = expected_txt("tok.thumb");
    let result = check_txt(
        &found,
        &expected,
        "example.com",
        "_acme-challenge.example.com",
    );
    let listed = found.iter().any(|v| v.trim() == expected);
    assert_eq!(result.is_ok(), listed, "{found:?}");
}

/// The TXT value dns-01 expects: base64url(SHA-256(key authorization)),
/// without padding.
pub fn expected_txt(key_authorization: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key_authorization.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::validate::testutil::{LOCAL, settings};
    use acmeproxy_testkit::MockDns;

    const KEY_AUTH: &str = "token123.thumbprint456";

    #[test]
    fn expected_value_matches_rfc_example_shape() {
        let value = expected_txt(KEY_AUTH);
        assert_eq!(value.len(), 43);
        assert!(!value.contains('=') && !value.contains('+') && !value.contains('/'));
        // Known answer: SHA-256 of "a" base64url-encoded.
        assert_eq!(
            expected_txt("a"),
            "ypeBEsobvcr6wjGzmiPcTaeG7_gUfE5yuYB3ha_uSLs"
        );
    }

    #[tokio::test]
    async fn matching_record_among_others_validates() {
        let dns = MockDns::start(LOCAL).unwrap();
        dns.set_txt(
            "_acme-challenge.example.com",
            vec!["unrelated".into(), expected_txt(KEY_AUTH)],
        );
        let s = settings(&dns, 1, 1);
        validate(&s, &Identifier::Dns("example.com".into()), KEY_AUTH)
            .await
            .unwrap();
        assert!(
            dns.queries()
                .contains(&"_acme-challenge.example.com TXT".to_owned())
        );
    }

    #[tokio::test]
    async fn wrong_records_are_unauthorized_and_counted() {
        let dns = MockDns::start(LOCAL).unwrap();
        dns.set_txt(
            "_acme-challenge.example.com",
            vec!["old-value".into(), expected_txt("other.key")],
        );
        let s = settings(&dns, 1, 1);
        let err = validate(&s, &Identifier::Dns("example.com".into()), KEY_AUTH)
            .await
            .unwrap_err();
        assert!(matches!(err, ValidationError::Unauthorized(_)), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with(
                "dns-01 of example.com: found 2 TXT records at _acme-challenge.example.com"
            ),
            "{text}"
        );
        assert!(text.contains(&expected_txt(KEY_AUTH)), "{text}");
    }

    #[tokio::test]
    async fn missing_record_is_a_dns_error() {
        let dns = MockDns::start(LOCAL).unwrap();
        let s = settings(&dns, 1, 1);
        let err = validate(&s, &Identifier::Dns("example.com".into()), KEY_AUTH)
            .await
            .unwrap_err();
        assert!(matches!(err, ValidationError::Dns(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "dns-01 of example.com: no TXT record found at _acme-challenge.example.com"
        );
    }

    #[tokio::test]
    async fn record_written_by_a_hook_file_validates_after_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let dns = MockDns::start(LOCAL).unwrap();
        dns.set_records_dir(Some(dir.path().to_owned()));
        let s = settings(&dns, 1, 1);
        let id = Identifier::Dns("hook.example".into());
        assert!(validate(&s, &id, KEY_AUTH).await.is_err());
        std::fs::write(
            dir.path().join("_acme-challenge.hook.example"),
            format!("{}\n", expected_txt(KEY_AUTH)),
        )
        .unwrap();
        validate(&s, &id, KEY_AUTH).await.unwrap();
    }

    #[tokio::test]
    async fn ip_identifiers_are_malformed() {
        let dns = MockDns::start(LOCAL).unwrap();
        let s = settings(&dns, 1, 1);
        let id = Identifier::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let err = validate(&s, &id, KEY_AUTH).await.unwrap_err();
        assert!(matches!(err, ValidationError::Malformed(_)), "{err:?}");
        assert!(dns.queries().is_empty());
    }
}
