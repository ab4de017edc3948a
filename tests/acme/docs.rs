//! The documentation against the code: every `examples/*.json` is a valid
//! `ca.json`, and `docs/configuration.md` names every key that the
//! configuration types accept.
//!
//! The key list comes from the types, not from a hand-written list.
//! [`full_document`] sets every accepted key. The test checks three things:
//! [`Config::parse`] accepts the document, so it has no key the types refuse;
//! each of its objects holds exactly the keys that the types list when they
//! refuse an unknown key there, so no accepted key is missing from the
//! document; and the documentation names every key in the document.
#![allow(clippy::unwrap_used)] // tests may unwrap

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use acmeproxy::config::Config;
use serde_json::{Value, json};

/// A key that no configuration type accepts, used to make the types list
/// the keys they do accept.
const PROBE: &str = "zzNotAConfigKey";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A softcas `ca.json` that sets every key the configuration types accept,
/// the step-ca keys they accept and ignore included. Values of free-form
/// (opaque JSON) keys are empty objects or scalars, so that walking the
/// document collects only key names that the types define.
fn full_document() -> Value {
    let metrics = json!({
        "enabled": true,
        "port": 9123,
        "address": "127.0.0.1:9123",
        "dataSource": "ignored"
    });
    let claims = json!({
        "minTLSCertDuration": "5m",
        "maxTLSCertDuration": "2160h",
        "defaultTLSCertDuration": "720h",
        "enableSSHCA": false,
        "disableRenewal": false,
        "allowRenewalAfterExpiry": false,
        "disableSmallstepExtensions": false
    });
    let names = json!({
        "dns": ["*.example.com"],
        "ip": ["10.0.0.0/8"],
        "email": [],
        "uri": [],
        "commonName": []
    });
    let policy = json!({"x509": {
        "allow": names.clone(),
        "deny": names,
        "allowWildcardNames": false
    }, "ssh": {}});
    let provisioner = json!({
        "type": "ACME",
        "name": "acme",
        "challenges": ["http-01", "dns-01", "tls-alpn-01"],
        "requireEAB": true,
        "claims": claims.clone(),
        "policy": policy.clone(),
        "options": {},
        "forceCN": false,
        "termsOfService": "https://example.com/tos",
        "website": "https://example.com",
        "caaIdentities": ["example.com"],
        "attestationFormats": []
    });
    let authority = json!({
        "type": "softcas",
        "config": {"certlifetime": 90, "name": "Example", "metrics": metrics.clone(), "signDelay": "0s"},
        "claims": claims,
        "policy": policy,
        "upstreamConcurrency": 32,
        "rateLimits": {
            "requestsPerIp": {"count": 200, "period": "1s", "burst": 400},
            "newAccountsPerIp": 50,
            "newOrdersPerAccount": {"count": 300, "period": "3h", "burst": 300},
            "pendingAuthorizationsPerAccount": 1000,
            "failedValidationsPerAccountAndIdentifier": 5,
            "newOrdersPerEabKey": 0,
            "concurrentValidations": 64,
            "maxTrackedKeys": 200000
        },
        "retention": {"interval": "10m", "orderGrace": "168h", "certificateRetention": "8760h"},
        "certificateAuthority": "https://ca.example.com",
        "certificateAuthorityFingerprint": "00",
        "certificateIssuer": {},
        "template": {},
        "backdate": "1m0s",
        "options": {},
        "enableAdmin": false,
        "disableIssuedAtCheck": false,
        "admins": [],
        "provisioners": [provisioner],
        // Several upstreams (then `config` and the step-ca keys above are
        // not used, with a warning).
        "upstreams": [{
            "name": "internal", "type": "softcas",
            "config": {"certlifetime": 90, "name": "Example", "metrics": metrics.clone(), "signDelay": "0s"},
            "certificateAuthority": "https://ca.example.com",
            "certificateAuthorityFingerprint": "00", "certificateIssuer": {}
        }],
        "routes": [{
            "name": "inside",
            "match": {"dns": ["*.internal.example.org"], "ip": ["10.0.0.0/8"],
                      "provisioner": ["acme"], "eabKey": ["team-web"]},
            "upstreams": ["internal"]
        }],
        "failover": {"downAfter": 3, "probeEvery": "30s"},
        "profiles": {
            "shortlived": {
                "description": "7-day certificates",
                "defaultTLSCertDuration": "168h",
                "upstreamProfile": "shortlived"
            }
        }
    });
    json!({
        "address": "127.0.0.1:8443",
        "dnsNames": ["localhost", "127.0.0.1"],
        "dataDir": "/var/lib/acmeproxy",
        // The PostgreSQL store, whose keys are a superset of sled's
        // (`passwordFile` must exist: /dev/null, an empty password).
        "db": {
            "type": "postgresql",
            "dataSource": "postgresql://acmeproxy@127.0.0.1:5432/",
            "database": "acmeproxy",
            "passwordFile": "/dev/null",
            "maxConnections": 16,
            "badgerFileLoadingMode": ""
        },
        "logger": {"format": "json"},
        "tls": {
            "minVersion": 1.2,
            "maxVersion": 1.3,
            "certFile": "/etc/acmeproxy/server.crt",
            "keyFile": "/etc/acmeproxy/server.key",
            "renegotiation": false,
            "cipherSuites": []
        },
        "validation": {
            "httpPort": 80,
            "tlsAlpnPort": 443,
            "resolvers": ["127.0.0.53:53"],
            "timeoutSeconds": 15,
            "denyNetworks": ["127.0.0.0/8", "169.254.0.0/16", "fe80::/10"]
        },
        "metrics": metrics,
        "connections": {
            "handshakeTimeout": "10s",
            "headerReadTimeout": "10s",
            "idleTimeout": "60s",
            "requestTimeout": "60s",
            "maxConnections": 4096,
            "maxConnectionsWait": "1s",
            "http2MaxConcurrentStreams": 128
        },
        "root": "root_ca.crt",
        "federatedRoots": [],
        "crt": "intermediate_ca.crt",
        "key": "intermediate_ca_key",
        "ssh": {},
        "templates": {},
        "commonName": "Step Online CA",
        "insecureAddress": "",
        "kms": {},
        "crl": {},
        "password": "",
        "authority": authority
    })
}

/// Every object of `v` with its path (JSON Pointer), the root included.
fn objects(v: &Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            out.push(path.to_owned());
            for (k, child) in map {
                objects(child, &format!("{path}/{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                objects(child, &format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// The keys the types accept in the object at `pointer`, read from the error
/// for an unknown key there; `None` when the object is free-form JSON (the
/// probe is accepted).
fn accepted_keys(doc: &Value, pointer: &str) -> Option<BTreeSet<String>> {
    let mut probed = doc.clone();
    let Some(Value::Object(map)) = probed.pointer_mut(pointer) else {
        panic!("{pointer} is not an object");
    };
    map.insert(PROBE.to_owned(), json!(1));
    let err = match Config::parse(&probed.to_string()) {
        Ok(_) => return None,
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(&format!("unknown field `{PROBE}`")),
        "an unknown key at {pointer:?} (\"\" is the top level) should be refused by name, \
         got: {err}"
    );
    let (_, expected) = err
        .split_once("expected ")
        .unwrap_or_else(|| panic!("no list of accepted keys in: {err}"));
    // "one of `a`, `b` at line …" or "`a` at line …": the backquoted names.
    Some(
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect(),
    )
}

/// Objects whose keys are names chosen by the administrator (profile
/// names), not configuration keys; their values are typed objects.
const NAMED_MAPS: [&str; 1] = ["/authority/profiles"];

/// Every key name of every typed (not free-form) object in the document,
/// after checking that each such object sets every key its type accepts.
fn all_config_keys() -> BTreeSet<String> {
    let doc = full_document();
    let mut paths = Vec::new();
    objects(&doc, "", &mut paths);
    let mut keys = BTreeSet::new();
    for path in paths {
        if NAMED_MAPS.contains(&path.as_str()) {
            continue;
        }
        let Some(Value::Object(map)) = doc.pointer(&path) else {
            unreachable!("objects() returns object paths");
        };
        let present: BTreeSet<String> = map.keys().cloned().collect();
        match accepted_keys(&doc, &path) {
            Some(accepted) => {
                assert_eq!(
                    present, accepted,
                    "the document in tests/acme/docs.rs must set exactly the keys accepted at \
                     {path:?}; add the missing ones (and document them)"
                );
                keys.extend(present);
            }
            None => assert!(
                present.is_empty(),
                "{path:?} is free-form JSON: keep it empty so its inner keys are not \
                 taken for configuration keys"
            ),
        }
    }
    keys
}

#[test]
fn full_document_is_accepted_with_one_warning_for_step_ca_keys() {
    let mut doc = full_document();
    let authority = doc["authority"].as_object_mut().unwrap();
    for key in ["upstreams", "routes", "failover"] {
        authority.remove(key);
    }
    let (cfg, warnings) = Config::parse(&doc.to_string())
        .unwrap_or_else(|e| panic!("the fully populated ca.json is refused: {e}"));
    assert_eq!(cfg.upstream.name(), "softcas");
    let ignoring: Vec<&String> = warnings
        .0
        .iter()
        .filter(|w| w.contains("ignoring step-ca keys"))
        .collect();
    assert_eq!(ignoring.len(), 1, "{:?}", warnings.0);
    for key in [
        "authority.admins",
        "authority.template",
        "claims.enableSSHCA",
        "db.badgerFileLoadingMode",
        "metrics.dataSource",
        "authority.config.metrics.dataSource",
        "tls.cipherSuites",
        "authority.provisioners[0].forceCN",
        "federatedRoots",
        "ssh",
    ] {
        assert!(ignoring[0].contains(key), "{key} not named in {ignoring:?}");
    }
}

#[test]
fn configuration_doc_names_every_accepted_key() {
    let keys = all_config_keys();
    // The walk reached the nested sections, not just the top level.
    for key in [
        "requireEAB",
        "certlifetime",
        "minTLSCertDuration",
        "timeoutSeconds",
    ] {
        assert!(keys.contains(key), "{key} missing from {keys:?}");
    }
    let doc_path = repo().join("docs/configuration.md");
    let doc =
        fs::read_to_string(&doc_path).unwrap_or_else(|e| panic!("{}: {e}", doc_path.display()));
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !doc.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md does not mention these ca.json keys (as `key`): {missing:?}"
    );
}

#[test]
fn unknown_keys_are_refused_everywhere() {
    // The probe itself: a typo is an error at every level, naming its path.
    let mut doc = full_document();
    doc["authority"]["provisioners"][0]["requireEab"] = json!(true);
    let err = Config::parse(&doc.to_string())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("authority.provisioners[0]"), "{err}");
    assert!(err.contains("requireEab"), "{err}");
}

fn examples() -> Vec<PathBuf> {
    let dir = repo().join("examples");
    let mut found: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    found.sort();
    found
}

#[test]
fn every_example_config_is_valid() {
    let found = examples();
    assert!(
        found.iter().any(|p| p.ends_with("ca.json")),
        "examples/ca.json is missing: {found:?}"
    );
    for path in &found {
        let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (cfg, warnings) =
            Config::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!cfg.provisioners.is_empty());
        // An example shows a clean configuration: nothing ignored.
        assert!(
            warnings.0.is_empty(),
            "{}: {:?}",
            path.display(),
            warnings.0
        );
    }
}

#[test]
fn example_ca_json_covers_the_main_sections() {
    let path = repo().join("examples/ca.json");
    let v: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    for pointer in [
        "/address",
        "/dnsNames",
        "/dataDir",
        "/db/type",
        "/logger/format",
        "/tls/minVersion",
        "/metrics/address",
        "/authority/type",
        "/authority/config/certlifetime",
        "/authority/provisioners/0/name",
        "/validation/httpPort",
    ] {
        assert!(
            v.pointer(pointer).is_some(),
            "examples/ca.json lacks {pointer}"
        );
    }
    assert_eq!(v["authority"]["type"], "softcas");
    assert!(
        v["authority"]["provisioners"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["requireEAB"] == json!(true)),
        "examples/ca.json should show an EAB provisioner"
    );
}

/// The keys of the upstreams' own sections (step-ca's `certificateIssuer`,
/// Vault's `authority.config` and its `authOptions`, the external ACME
/// upstream's `authority.config`) are named in docs/configuration.md too.
#[test]
fn configuration_doc_names_every_upstream_key() {
    let base = |authority: Value| {
        json!({
            "address": "127.0.0.1:8443",
            "dnsNames": ["localhost"],
            "authority": authority
        })
    };
    let stepcas = base(json!({
        "type": "stepcas",
        "certificateAuthority": "https://ca.example.com",
        "certificateAuthorityFingerprint": "ab".repeat(32),
        "certificateIssuer": {"type": "jwk", "provisioner": "ra"},
        "provisioners": [{"type": "ACME", "name": "acme"}]
    }));
    let vault = base(json!({
        "type": "vaultcas",
        "certificateAuthority": "https://vault.example.com:8200",
        "config": {"authType": "approle", "authOptions": {"roleID": "r", "secretID": "s"}},
        "provisioners": [{"type": "ACME", "name": "acme"}]
    }));
    let external = base(json!({
        "type": "externalcas",
        "config": {
            "ca_url": "https://ca.example.com/dir",
            "upstream_challenge": {"type": "dns-01", "provider": "rfc2136"}
        },
        "provisioners": [{"type": "ACME", "name": "acme"}]
    }));
    let doc_path = repo().join("docs/configuration.md");
    let doc = fs::read_to_string(&doc_path).unwrap();
    let mut checked = 0;
    for (what, document, pointer, prefix) in [
        (
            "stepcas",
            &stepcas,
            "/authority/certificateIssuer",
            "certificateIssuer.",
        ),
        ("vaultcas", &vault, "/authority/config", ""),
        (
            "vaultcas",
            &vault,
            "/authority/config/authOptions",
            "authOptions.",
        ),
        ("externalcas", &external, "/authority/config", ""),
        (
            "externalcas",
            &external,
            "/authority/config/upstream_challenge",
            "upstream_challenge.",
        ),
    ] {
        let keys = accepted_keys(document, pointer)
            .unwrap_or_else(|| panic!("{what} {pointer} takes any key"));
        for key in keys {
            checked += 1;
            let named = format!("`{prefix}{key}`");
            assert!(
                doc.contains(&named),
                "docs/configuration.md does not name {what}'s {named}"
            );
        }
    }
    assert!(checked > 25, "only {checked} keys were checked");
}
