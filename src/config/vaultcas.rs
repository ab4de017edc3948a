//! The Vault PKI upstream's settings (`authority.type: "vaultcas"`): step-ca's
//! `certificateAuthority`, `certificateAuthorityFingerprint` and
//! `authority.config` keys, so that a step-ca Vault RA configuration moves
//! over unchanged. step-ca reads these keys with Go's case-insensitive JSON
//! matching (its documentation writes `PKIMountPath`, `AuthOptions`,
//! `RoleID`), so they are matched without regard to case here too.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{AuthorityConfig, ConfigError, Secret};

/// Where the Kubernetes service account token is mounted in a pod.
pub const DEFAULT_KUBERNETES_TOKEN_PATH: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// `authority.config` when `authority.type` is `vaultcas`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct VaultCasConfig {
    /// Mount path of the PKI secrets engine (default `pki`).
    pub pki_mount_path: Option<String>,
    /// PKI role for keys without a role of their own (default `default`).
    pub pki_role_default: Option<String>,
    /// PKI role for RSA keys.
    #[serde(rename = "pkiRoleRSA")]
    pub pki_role_rsa: Option<String>,
    /// PKI role for ECDSA keys.
    #[serde(rename = "pkiRoleEC")]
    pub pki_role_ec: Option<String>,
    /// PKI role for Ed25519 keys.
    pub pki_role_ed25519: Option<String>,
    /// `approle` or `kubernetes`.
    pub auth_type: String,
    /// Mount path of the auth method (default: its type).
    pub auth_mount_path: Option<String>,
    pub auth_options: VaultAuthOptions,
}

/// `authority.config.authOptions`: the AppRole or the Kubernetes keys.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct VaultAuthOptions {
    /// AppRole role ID.
    #[serde(rename = "roleID")]
    pub role_id: Option<String>,
    /// AppRole secret ID, inline (prefer `secretIDFile` or `secretIDEnv`).
    #[serde(rename = "secretID")]
    pub secret_id: Option<Secret>,
    /// A file holding the AppRole secret ID.
    #[serde(rename = "secretIDFile")]
    pub secret_id_file: Option<PathBuf>,
    /// An environment variable holding the AppRole secret ID.
    #[serde(rename = "secretIDEnv")]
    pub secret_id_env: Option<String>,
    /// The secret ID is a response-wrapping token to unwrap first.
    pub is_wrapping_token: bool,
    /// Kubernetes auth role.
    pub role: Option<String>,
    /// Kubernetes service account token (JWT) file.
    pub token_path: Option<PathBuf>,
}

/// Where the AppRole secret ID comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretIdSource {
    /// An environment variable, read at each login.
    Env(String),
    /// A file, read at each login (so it may be rotated).
    File(PathBuf),
    /// The configuration itself.
    Inline(Secret),
}

/// How the RA logs in to Vault, resolved from `authType` and `authOptions`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VaultAuth {
    /// `POST /v1/auth/<mount>/login {role_id, secret_id}`.
    AppRole {
        role_id: String,
        secret_id: SecretIdSource,
        /// `secret_id` is a response-wrapping token holding the secret ID.
        wrapped: bool,
    },
    /// `POST /v1/auth/<mount>/login {role, jwt}`.
    Kubernetes { role: String, token_path: PathBuf },
}

/// The Vault upstream's settings, checked and with defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VaultCasSettings {
    /// Vault's address, e.g. `https://vault.example.com:8200`, no trailing `/`.
    pub address: String,
    /// SHA-256 of the CA certificate that Vault's HTTPS chains to; when set,
    /// only that certificate is trusted.
    pub fingerprint: Option<[u8; 32]>,
    pub pki_mount_path: String,
    pub role_default: String,
    pub role_rsa: String,
    pub role_ec: String,
    pub role_ed25519: String,
    pub auth_mount_path: String,
    pub auth: VaultAuth,
}

/// The Vault upstream's settings of `authority` (`authority.type:
/// "vaultcas"`), checked.
pub(super) fn settings(authority: &AuthorityConfig) -> Result<VaultCasSettings, ConfigError> {
    let raw = authority.config.clone().map(|c| c.0).unwrap_or(Value::Null);
    let cfg: VaultCasConfig = if raw.is_null() {
        VaultCasConfig::default()
    } else {
        serde_json::from_value(canonical_keys(raw))
            .map_err(|e| ConfigError::invalid("authority.config", e.to_string()))?
    };
    let address = authority
        .certificate_authority
        .as_deref()
        .map(|s| s.trim().trim_end_matches('/'))
        .unwrap_or_default();
    if address.is_empty() {
        return Err(ConfigError::invalid(
            "authority.certificateAuthority",
            "give Vault's address, e.g. https://vault.example.com:8200",
        ));
    }
    let https = address.starts_with("https://");
    if !(https || address.starts_with("http://")) || address.parse::<http::Uri>().is_err() {
        return Err(ConfigError::invalid(
            "authority.certificateAuthority",
            format!("{address:?} is not an http(s) URL"),
        ));
    }
    let fingerprint = match authority
        .certificate_authority_fingerprint
        .as_deref()
        .map(str::trim)
        .filter(|f| !f.is_empty())
    {
        None => None,
        Some(_) if !https => {
            return Err(ConfigError::invalid(
                "authority.certificateAuthorityFingerprint",
                "a fingerprint pins Vault's HTTPS certificate; certificateAuthority must be an https:// URL",
            ));
        }
        Some(f) => Some(parse_fingerprint(f).ok_or_else(|| {
            ConfigError::invalid(
                "authority.certificateAuthorityFingerprint",
                "expected the SHA-256 of the CA certificate (DER) as 64 hex digits",
            )
        })?),
    };
    let pki_mount_path = mount_path(
        "authority.config.pkiMountPath",
        cfg.pki_mount_path.as_deref(),
        "pki",
    )?;
    let role_default = role_name(
        "authority.config.pkiRoleDefault",
        cfg.pki_role_default.as_deref(),
        "default",
    )?;
    let role_rsa = role_name(
        "authority.config.pkiRoleRSA",
        cfg.pki_role_rsa.as_deref(),
        &role_default,
    )?;
    let role_ec = role_name(
        "authority.config.pkiRoleEC",
        cfg.pki_role_ec.as_deref(),
        &role_default,
    )?;
    let role_ed25519 = role_name(
        "authority.config.pkiRoleEd25519",
        cfg.pki_role_ed25519.as_deref(),
        &role_default,
    )?;
    let auth = auth(&cfg.auth_type, cfg.auth_options)?;
    let auth_mount_path = mount_path(
        "authority.config.authMountPath",
        cfg.auth_mount_path.as_deref(),
        cfg.auth_type.as_str(),
    )?;
    Ok(VaultCasSettings {
        address: address.to_owned(),
        fingerprint,
        pki_mount_path,
        role_default,
        role_rsa,
        role_ec,
        role_ed25519,
        auth_mount_path,
        auth,
    })
}

fn auth(kind: &str, o: VaultAuthOptions) -> Result<VaultAuth, ConfigError> {
    let key = |k: &str| format!("authority.config.authOptions.{k}");
    let refuse_others = |others: &[(&str, bool)]| match others.iter().find(|(_, present)| *present)
    {
        Some((k, _)) => Err(ConfigError::invalid(
            key(k),
            format!("not an option of authType {kind:?}"),
        )),
        None => Ok(()),
    };
    match kind {
        "approle" => {
            refuse_others(&[
                ("role", o.role.is_some()),
                ("tokenPath", o.token_path.is_some()),
            ])?;
            let role_id = o
                .role_id
                .filter(|r| !r.trim().is_empty())
                .ok_or_else(|| ConfigError::invalid(key("roleID"), "give the AppRole role ID"))?;
            let secret_id = match (o.secret_id, o.secret_id_file, o.secret_id_env) {
                (Some(s), None, None) if !s.expose().is_empty() => SecretIdSource::Inline(s),
                (None, Some(path), None) => {
                    std::fs::metadata(&path).map_err(|e| {
                        ConfigError::invalid(
                            key("secretIDFile"),
                            format!("cannot read {}: {e}", path.display()),
                        )
                    })?;
                    SecretIdSource::File(path)
                }
                (None, None, Some(var)) => {
                    if std::env::var_os(&var).is_none() {
                        return Err(ConfigError::invalid(
                            key("secretIDEnv"),
                            format!("the environment variable {var} is not set"),
                        ));
                    }
                    SecretIdSource::Env(var)
                }
                _ => {
                    return Err(ConfigError::invalid(
                        key("secretID"),
                        "give the AppRole secret ID one way: secretID, secretIDFile or secretIDEnv",
                    ));
                }
            };
            Ok(VaultAuth::AppRole {
                role_id,
                secret_id,
                wrapped: o.is_wrapping_token,
            })
        }
        "kubernetes" => {
            refuse_others(&[
                ("roleID", o.role_id.is_some()),
                ("secretID", o.secret_id.is_some()),
                ("secretIDFile", o.secret_id_file.is_some()),
                ("secretIDEnv", o.secret_id_env.is_some()),
                ("isWrappingToken", o.is_wrapping_token),
            ])?;
            let role = o.role.filter(|r| !r.trim().is_empty()).ok_or_else(|| {
                ConfigError::invalid(key("role"), "give the Kubernetes auth role")
            })?;
            Ok(VaultAuth::Kubernetes {
                role,
                token_path: o
                    .token_path
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_KUBERNETES_TOKEN_PATH)),
            })
        }
        "" => Err(ConfigError::invalid(
            "authority.config.authType",
            "give the Vault auth method: \"approle\" or \"kubernetes\"",
        )),
        other => Err(ConfigError::invalid(
            "authority.config.authType",
            format!("unknown auth method {other:?}; use \"approle\" or \"kubernetes\""),
        )),
    }
}

/// A mount path without surrounding slashes; `default` when unset.
fn mount_path(key: &str, value: Option<&str>, default: &str) -> Result<String, ConfigError> {
    let path = value.unwrap_or(default).trim().trim_matches('/');
    let ok = !path.is_empty()
        && path.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        });
    if ok {
        Ok(path.to_owned())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("{path:?} is not a Vault mount path (letters, digits, '-', '_', '.', '/')"),
        ))
    }
}

/// A PKI role name; `default` when unset.
fn role_name(key: &str, value: Option<&str>, default: &str) -> Result<String, ConfigError> {
    let name = value.map_or(default, str::trim);
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
    {
        Ok(name.to_owned())
    } else {
        Err(ConfigError::invalid(
            key,
            format!("{name:?} is not a Vault PKI role name"),
        ))
    }
}

/// 64 hex digits (colons allowed between bytes), as `step certificate
/// fingerprint` prints them.
fn parse_fingerprint(s: &str) -> Option<[u8; 32]> {
    let hex: Vec<u8> = s.bytes().filter(|b| *b != b':').collect();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let text = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// `v` with the keys of `config` and `config.authOptions` spelled as the
/// types spell them when they match without regard to case (Go's
/// `encoding/json` matches that way, and step-ca's documentation writes
/// `PKIMountPath`). Other keys are left alone, to be refused by name.
fn canonical_keys(v: Value) -> Value {
    const CONFIG: [&str; 8] = [
        "pkiMountPath",
        "pkiRoleDefault",
        "pkiRoleRSA",
        "pkiRoleEC",
        "pkiRoleEd25519",
        "authType",
        "authMountPath",
        "authOptions",
    ];
    const AUTH: [&str; 7] = [
        "roleID",
        "secretID",
        "secretIDFile",
        "secretIDEnv",
        "isWrappingToken",
        "role",
        "tokenPath",
    ];
    let rename = |map: serde_json::Map<String, Value>, names: &[&str]| {
        map.into_iter()
            .map(|(k, v)| {
                let name = names
                    .iter()
                    .find(|n| n.eq_ignore_ascii_case(&k))
                    .map_or(k, |n| (*n).to_owned());
                (name, v)
            })
            .collect::<serde_json::Map<_, _>>()
    };
    let Value::Object(map) = v else {
        return v;
    };
    let mut map = rename(map, &CONFIG);
    if let Some(Value::Object(auth)) = map.get_mut("authOptions") {
        *auth = rename(std::mem::take(auth), &AUTH);
    }
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn doc(authority: Value) -> String {
        let mut a = authority;
        a["type"] = "vaultcas".into();
        a["provisioners"] = serde_json::json!([{"type": "ACME", "name": "acme"}]);
        serde_json::json!({"address": ":8443", "dnsNames": ["ra.example"], "authority": a})
            .to_string()
    }

    fn settings(authority: Value) -> Result<VaultCasSettings, ConfigError> {
        Config::parse(&doc(authority)).map(|(s, _)| match s.upstream {
            crate::config::Upstream::VaultCas(v) => v,
            other => panic!("not vaultcas: {other:?}"),
        })
    }

    const FP: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

    #[test]
    fn step_ca_document_with_capitalised_keys_parses_with_defaults() {
        let s = settings(serde_json::json!({
            "certificateAuthority": "https://vault.example:8200/",
            "certificateAuthorityFingerprint": FP,
            "config": {
                "PKIRoleEC": "ec-role",
                "AuthType": "approle",
                "AuthOptions": {"RoleID": "rid", "SecretID": "sid", "IsWrappingToken": false}
            }
        }))
        .unwrap();
        assert_eq!(s.address, "https://vault.example:8200");
        assert_eq!(s.fingerprint.unwrap()[0], 0xa1);
        assert_eq!(s.pki_mount_path, "pki");
        assert_eq!(
            (
                s.role_default.as_str(),
                s.role_ec.as_str(),
                s.role_rsa.as_str()
            ),
            ("default", "ec-role", "default")
        );
        assert_eq!(s.role_ed25519, "default");
        assert_eq!(s.auth_mount_path, "approle");
        assert_eq!(
            s.auth,
            VaultAuth::AppRole {
                role_id: "rid".into(),
                secret_id: SecretIdSource::Inline(Secret::new("sid".into())),
                wrapped: false
            }
        );
        assert!(!format!("{s:?}").contains("sid\""), "{s:?}");
    }

    #[test]
    fn kubernetes_defaults_its_mount_and_token_path() {
        let s = settings(serde_json::json!({
            "certificateAuthority": "http://127.0.0.1:8200",
            "config": {"authType": "kubernetes", "pkiMountPath": "/pki_int/",
                       "authOptions": {"role": "acmeproxy"}}
        }))
        .unwrap();
        assert_eq!(s.pki_mount_path, "pki_int");
        assert_eq!(s.auth_mount_path, "kubernetes");
        assert_eq!(
            s.auth,
            VaultAuth::Kubernetes {
                role: "acmeproxy".into(),
                token_path: DEFAULT_KUBERNETES_TOKEN_PATH.into()
            }
        );
        assert_eq!(s.fingerprint, None);
    }

    #[test]
    fn mistakes_name_their_key() {
        let base = || {
            serde_json::json!({
                "certificateAuthority": "https://vault.example:8200",
                "config": {"authType": "approle", "authOptions": {"roleID": "r", "secretID": "s"}}
            })
        };
        type Patch = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(Patch, &str)> = vec![
            (
                Box::new(|v| v["certificateAuthority"] = Value::Null),
                "authority.certificateAuthority",
            ),
            (
                Box::new(|v| v["certificateAuthority"] = "vault:8200".into()),
                "authority.certificateAuthority",
            ),
            (
                Box::new(|v| v["certificateAuthorityFingerprint"] = "abc".into()),
                "authority.certificateAuthorityFingerprint",
            ),
            (
                Box::new(|v| {
                    v["certificateAuthority"] = "http://vault:8200".into();
                    v["certificateAuthorityFingerprint"] = FP.into();
                }),
                "authority.certificateAuthorityFingerprint",
            ),
            (
                Box::new(|v| v["config"]["authType"] = "token".into()),
                "authority.config.authType",
            ),
            (
                Box::new(|v| v["config"]["authOptions"]["secretIDEnv"] = "X".into()),
                "authority.config.authOptions.secretID",
            ),
            (
                Box::new(|v| v["config"]["authOptions"]["role"] = "x".into()),
                "authority.config.authOptions.role",
            ),
            (
                Box::new(|v| {
                    v["config"]["authOptions"]
                        .as_object_mut()
                        .unwrap()
                        .remove("secretID");
                    v["config"]["authOptions"]["secretIDEnv"] = "ACMEPROXY_TEST_UNSET_VAR".into();
                }),
                "authority.config.authOptions.secretIDEnv",
            ),
            (
                Box::new(|v| v["config"]["pkiMountPath"] = "../sys".into()),
                "authority.config.pkiMountPath",
            ),
            (
                Box::new(|v| v["config"]["pkiRoleRSA"] = "a/b".into()),
                "authority.config.pkiRoleRSA",
            ),
            (
                Box::new(|v| v["config"]["namespace"] = "x".into()),
                "namespace",
            ),
        ];
        for (patch, key) in cases {
            let mut v = base();
            patch(&mut v);
            let e = Config::parse(&doc(v)).unwrap_err().to_string();
            assert!(e.contains(key), "{key}: {e}");
        }
        assert!(Config::parse(&doc(base())).is_ok());
    }

    #[test]
    fn secret_id_file_must_be_readable() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret-id");
        let v = |path: &std::path::Path| {
            serde_json::json!({
                "certificateAuthority": "https://vault.example:8200",
                "config": {"authType": "approle",
                           "authOptions": {"roleID": "r", "secretIDFile": path}}
            })
        };
        let e = Config::parse(&doc(v(&file))).unwrap_err().to_string();
        assert!(e.contains("secretIDFile"), "{e}");
        std::fs::write(&file, "s").unwrap();
        let s = settings(v(&file)).unwrap();
        assert!(matches!(
            s.auth,
            VaultAuth::AppRole { secret_id: SecretIdSource::File(ref p), .. } if *p == file
        ));
    }

    #[test]
    fn fingerprint_accepts_colons_and_upper_case() {
        let colons = FP
            .to_uppercase()
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(parse_fingerprint(&colons), parse_fingerprint(FP));
        assert!(parse_fingerprint(&FP[1..]).is_none());
        assert!(parse_fingerprint(&FP.replace('a', "g")).is_none());
    }
}
