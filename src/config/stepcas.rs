//! `authority.type: "stepcas"`: step-ca's RA-mode keys
//! (`certificateAuthority`, `certificateAuthorityFingerprint`,
//! `certificateIssuer`), read as step-ca reads them, so that the `ca.json` of a
//! step-ca Registration Authority moves over unchanged. The upstream itself is
//! `upstream::stepca`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{AuthorityConfig, ConfigError, Secret};

/// How the RA proves itself to step-ca: the provisioner type whose one-time
/// tokens it signs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssuerType {
    /// A JWK provisioner: tokens signed with the provisioner's own key.
    Jwk,
    /// An X5C provisioner: tokens signed with a client certificate's key,
    /// the chain in the token's `x5c` header.
    X5c,
}

/// `authority.certificateIssuer`, as step-ca writes it (`crt`, `key`,
/// `password`), plus `passwordFile`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IssuerConfig {
    /// `jwk` or `x5c`, in any case.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub provisioner: String,
    pub key: Option<PathBuf>,
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    pub crt: Option<PathBuf>,
}

/// The checked `stepcas` settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepCasSettings {
    /// Base URL of the upstream step-ca, `https://host[:port]`, no trailing `/`.
    pub ca_url: String,
    /// SHA-256 of the upstream's root certificate (DER), lower-case hex.
    pub fingerprint: String,
    /// JWK or X5C.
    pub issuer: IssuerType,
    /// The provisioner's name (the tokens' `iss`).
    pub provisioner: String,
    /// JWK: the provisioner key (JWK, JWE or PEM file); none means "download
    /// the encrypted key from the CA". X5C: the certificate's key (PEM).
    pub key: Option<PathBuf>,
    /// X5C: the certificate chain (PEM), leaf first.
    pub crt: Option<PathBuf>,
    /// The password for the issuer key: `certificateIssuer.password`, else
    /// the contents of `certificateIssuer.passwordFile`;
    /// `--issuer-password-file` replaces it
    /// ([`Settings::set_issuer_password`](super::Settings::set_issuer_password)).
    pub password: Option<Secret>,
}

/// Reads a password file as step-ca does: the whole file, trailing white
/// space (a final newline) removed.
pub fn read_password_file(path: &Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(Secret::new(text.trim_end().to_owned()))
}

/// The `stepcas` settings of `authority`, checked.
pub(super) fn settings(a: &AuthorityConfig) -> Result<StepCasSettings, ConfigError> {
    let url = a
        .certificate_authority
        .as_deref()
        .map(str::trim)
        .unwrap_or_default();
    if url.is_empty() {
        return Err(ConfigError::invalid(
            "authority.certificateAuthority",
            "give the URL of the upstream step-ca, e.g. https://ca.example.com",
        ));
    }
    let Some(rest) = url.strip_prefix("https://") else {
        return Err(ConfigError::invalid(
            "authority.certificateAuthority",
            format!("{url:?} is not an https URL (step-ca serves HTTPS only)"),
        ));
    };
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || rest.contains(['?', '#']) {
        return Err(ConfigError::invalid(
            "authority.certificateAuthority",
            format!("{url:?} is not a plain https://host[:port] URL"),
        ));
    }
    let fingerprint: String = a
        .certificate_authority_fingerprint
        .as_deref()
        .unwrap_or_default()
        .trim()
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if fingerprint.len() != 64 || !fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ConfigError::invalid(
            "authority.certificateAuthorityFingerprint",
            "give the SHA-256 fingerprint of the step-ca root certificate: 64 hex digits \
             (`step certificate fingerprint root_ca.crt`)",
        ));
    }
    let Some(doc) = &a.certificate_issuer else {
        return Err(ConfigError::invalid(
            "authority.certificateIssuer",
            "stepcas needs a certificateIssuer: {\"type\": \"jwk\" or \"x5c\", \"provisioner\": NAME, ...}",
        ));
    };
    let doc: IssuerConfig = serde_json::from_value(doc.0.clone())
        .map_err(|e| ConfigError::invalid("authority.certificateIssuer", e.to_string()))?;
    let issuer = match doc.kind.to_ascii_lowercase().as_str() {
        "jwk" => IssuerType::Jwk,
        "x5c" => IssuerType::X5c,
        other => {
            return Err(ConfigError::invalid(
                "authority.certificateIssuer.type",
                format!("unknown issuer type {other:?}; use \"jwk\" or \"x5c\""),
            ));
        }
    };
    if doc.provisioner.trim().is_empty() {
        return Err(ConfigError::invalid(
            "authority.certificateIssuer.provisioner",
            "name the step-ca provisioner the RA signs its tokens for",
        ));
    }
    if issuer == IssuerType::X5c && (doc.crt.is_none() || doc.key.is_none()) {
        return Err(ConfigError::invalid(
            "authority.certificateIssuer",
            "x5c needs \"crt\" (the certificate chain, PEM) and \"key\" (its private key, PEM)",
        ));
    }
    if doc.password.is_some() && doc.password_file.is_some() {
        return Err(ConfigError::invalid(
            "authority.certificateIssuer.passwordFile",
            "give password or passwordFile, not both",
        ));
    }
    for (k, path) in [
        ("key", &doc.key),
        ("crt", &doc.crt),
        ("passwordFile", &doc.password_file),
    ] {
        if let Some(p) = path {
            if !p.is_file() {
                return Err(ConfigError::invalid(
                    format!("authority.certificateIssuer.{k}"),
                    format!("{} is not a readable file", p.display()),
                ));
            }
        }
    }
    let password = match doc.password_file {
        Some(file) => Some(read_password_file(&file)?),
        None => doc.password,
    };
    Ok(StepCasSettings {
        ca_url: url.trim_end_matches('/').to_owned(),
        fingerprint,
        issuer,
        provisioner: doc.provisioner,
        key: doc.key,
        crt: doc.crt,
        password,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::Config;

    const FP: &str = "AB:CD:00000000000000000000000000000000000000000000000000000000ef12";

    fn stepcas(settings: super::super::Settings) -> StepCasSettings {
        match settings.upstream {
            super::super::Upstream::StepCas(s) => s,
            other => panic!("not stepcas: {other:?}"),
        }
    }

    fn config(authority_extra: serde_json::Value) -> Result<StepCasSettings, ConfigError> {
        let mut authority = json!({
            "type": "stepcas",
            "certificateAuthority": "https://ca.example.com:9000/",
            "certificateAuthorityFingerprint": FP,
            "certificateIssuer": {"type": "JWK", "provisioner": "ra@example.com", "password": "pw"},
            "provisioners": [{"type": "ACME", "name": "acme"}],
        });
        for (k, v) in authority_extra.as_object().unwrap() {
            authority[k] = v.clone();
        }
        let doc = json!({"dnsNames": ["ra.example.com"], "authority": authority});
        let (settings, _) = Config::parse(&doc.to_string())?;
        Ok(stepcas(settings))
    }

    #[test]
    fn step_ca_ra_keys_are_read() {
        let c = config(json!({})).unwrap();
        assert_eq!(c.ca_url, "https://ca.example.com:9000");
        assert_eq!(
            c.fingerprint,
            "abcd00000000000000000000000000000000000000000000000000000000ef12"
        );
        assert_eq!(c.issuer, IssuerType::Jwk);
        assert_eq!(c.provisioner, "ra@example.com");
        assert_eq!(c.password.as_ref().unwrap().expose(), "pw");
        assert!(!format!("{c:?}").contains("\"pw\""));
    }

    #[test]
    fn bad_settings_name_their_key() {
        for (extra, key) in [
            (json!({"certificateAuthority": ""}), "certificateAuthority"),
            (
                json!({"certificateAuthority": "http://ca.example.com"}),
                "certificateAuthority",
            ),
            (
                json!({"certificateAuthorityFingerprint": "abc"}),
                "certificateAuthorityFingerprint",
            ),
            (json!({"certificateIssuer": null}), "certificateIssuer"),
            (
                json!({"certificateIssuer": {"type": "oidc", "provisioner": "p"}}),
                "certificateIssuer.type",
            ),
            (
                json!({"certificateIssuer": {"type": "jwk"}}),
                "certificateIssuer.provisioner",
            ),
            (
                json!({"certificateIssuer": {"type": "x5c", "provisioner": "p"}}),
                "certificateIssuer",
            ),
            (
                json!({"certificateIssuer": {"type": "jwk", "provisioner": "p", "keyy": "k"}}),
                "certificateIssuer",
            ),
            (
                json!({"certificateIssuer": {"type": "jwk", "provisioner": "p", "key": "/nonexistent/k"}}),
                "certificateIssuer.key",
            ),
        ] {
            let err = config(extra.clone()).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("authority.{key}")),
                "{extra}: {err}"
            );
        }
    }

    #[test]
    fn the_command_line_password_wins() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\n").unwrap();
        let c = config(json!({"certificateIssuer":
            {"type": "jwk", "provisioner": "p", "passwordFile": file}}))
        .unwrap();
        assert_eq!(c.password.as_ref().unwrap().expose(), "from-file");

        let doc = json!({"dnsNames": ["ra"], "authority": {
            "type": "stepcas",
            "certificateAuthority": "https://ca",
            "certificateAuthorityFingerprint": FP,
            "certificateIssuer": {"type": "jwk", "provisioner": "p", "password": "in-config"},
            "provisioners": [{"type": "ACME", "name": "acme"}]}});
        let (mut settings, _) = Config::parse(&doc.to_string()).unwrap();
        settings.set_issuer_password(read_password_file(&file).unwrap());
        assert_eq!(
            stepcas(settings).password.as_ref().unwrap().expose(),
            "from-file"
        );
    }

    #[test]
    fn the_admin_guide_example_is_valid() {
        let guide =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/admin.md")).unwrap();
        let section = guide.split("## step-ca upstream").nth(1).unwrap();
        let json = section
            .split("```json\n")
            .nth(1)
            .and_then(|s| s.split("```").next())
            .unwrap();
        let c = stepcas(Config::parse(json).unwrap().0);
        assert_eq!(c.issuer, IssuerType::Jwk);
        assert_eq!(c.ca_url, "https://ca.example.com:9000");
        assert!(c.password.is_none());
    }
}
