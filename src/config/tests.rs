use std::path::Path;

use serde_json::Value;

use super::*;

fn minimal() -> Value {
    serde_json::json!({
        "address": "127.0.0.1:8443",
        "dnsNames": ["localhost"],
        "authority": {"type": "softcas", "provisioners": [{"type": "ACME", "name": "acme"}]}
    })
}

#[test]
fn minimal_config_has_safe_defaults() {
    let (cfg, warnings) = Config::parse(&minimal().to_string()).unwrap();
    assert!(warnings.0.is_empty());
    assert_eq!(cfg.validation.http_port, 80);
    assert_eq!(cfg.validation.tls_alpn_port, 443);
    assert_eq!(cfg.store, StoreChoice::Sled("/var/lib/acmeproxy/db".into()));
    assert_eq!(cfg.metrics, Some("127.0.0.1:9123".parse().unwrap()));
}

#[test]
fn metrics_listen_beyond_loopback_only_by_address() {
    let mut v = minimal();
    v["metrics"] = serde_json::json!({"port": 9200});
    let (cfg, warnings) = Config::parse(&v.to_string()).unwrap();
    assert_eq!(cfg.metrics, Some("127.0.0.1:9200".parse().unwrap()));
    assert!(
        warnings.0.iter().any(|w| w.contains("0.0.0.0:9200")),
        "{warnings:?}"
    );
    v["metrics"] = serde_json::json!({"address": "0.0.0.0:9123"});
    let (cfg, warnings) = Config::parse(&v.to_string()).unwrap();
    assert_eq!(cfg.metrics, Some("0.0.0.0:9123".parse().unwrap()));
    assert!(warnings.0.is_empty(), "{warnings:?}");
}

#[test]
fn unknown_key_is_an_error_naming_its_path() {
    let mut v = minimal();
    v["authority"]["provisioners"][0]["requireEab"] = true.into();
    let e = Config::parse(&v.to_string()).unwrap_err().to_string();
    assert!(e.contains("authority.provisioners[0]"), "{e}");
    assert!(e.contains("requireEab"), "{e}");
}

#[test]
fn step_ca_keys_are_ignored_with_one_warning() {
    let mut v = minimal();
    v["authority"]["template"] = serde_json::json!({});
    v["authority"]["backdate"] = "1m0s".into();
    v["db"] = serde_json::json!({"type": "bbolt", "dataSource": "/opt/x"});
    let (_, w) = Config::parse(&v.to_string()).unwrap();
    assert!(
        w.0[0].contains("authority.backdate, authority.template"),
        "{:?}",
        w.0
    );
    assert!(w.0.iter().any(|m| m.contains("bbolt")));
}

#[test]
fn invalid_values_name_the_key() {
    for (patch, key) in [
        (serde_json::json!({"address": "nonsense"}), "address"),
        (serde_json::json!({"dnsNames": []}), "dnsNames"),
        (serde_json::json!({"db": {"type": "mysql"}}), "db.type"),
        (
            serde_json::json!({"validation": {"resolvers": ["x"]}}),
            "validation.resolvers",
        ),
    ] {
        let mut v = minimal();
        for (k, val) in patch.as_object().unwrap() {
            v[k] = val.clone();
        }
        let e = Config::parse(&v.to_string()).unwrap_err().to_string();
        assert!(e.starts_with(key), "{e}");
    }
}

#[test]
fn test_config_is_valid() {
    let (cfg, _) = Config::for_test(Path::new("/tmp/x")).check().unwrap();
    assert_eq!(cfg.store, StoreChoice::Memory);
}

#[test]
fn the_go_plugins_sample_config_is_accepted_with_one_warning() {
    let text = include_str!("../../tests/fixtures/esnet-plugin-ca.json");
    let (cfg, warnings) = Config::parse(text).unwrap();
    let Upstream::ExternalCas(ext) = &cfg.upstream else {
        panic!("not externalcas: {:?}", cfg.upstream);
    };
    assert_eq!(
        ext.directory_url,
        "https://acme.sectigo.com/v2/InCommonRSAOV"
    );
    assert_eq!(ext.eab.as_ref().unwrap().kid, "hG3a9f2kQx0TzL1mNp7rVw");
    // The plugin's metrics port is honoured, on loopback (with a warning
    // saying how to listen on every interface, as the plugin did).
    assert_eq!(cfg.metrics, Some("127.0.0.1:9234".parse().unwrap()));
    assert!(
        warnings.0.iter().any(|w| w.contains("\"0.0.0.0:9234\"")),
        "{:?}",
        warnings.0
    );
    // bbolt is read as the embedded store, with a notice.
    assert!(matches!(cfg.store, StoreChoice::Sled(_)));
    let ignored = &warnings.0[0];
    for key in [
        "authority.backdate",
        "authority.template",
        "authority.config.dns01_txt",
        "authority.config.metrics.dataSource",
        "authority.provisioners[0].options",
        "claims.enableSSHCA",
        "commonName",
        "tls.renegotiation",
    ] {
        assert!(ignored.contains(key), "{key} missing from {ignored}");
    }
    assert_eq!(warnings.0.len(), 3, "{:?}", warnings.0);
    // The MAC key never shows in Debug output.
    assert!(!format!("{cfg:?}").contains("cGxhY2Vob2xkZXI"));
}

#[test]
fn softcas_sign_delay_is_a_go_duration() {
    let mut v = minimal();
    v["authority"]["config"] = serde_json::json!({"signDelay": "10s"});
    let sign_delay = |settings: Settings| match settings.upstream {
        Upstream::SoftCas(s) => s.sign_delay,
        other => panic!("not softcas: {other:?}"),
    };
    let (cfg, _) = Config::parse(&v.to_string()).unwrap();
    assert_eq!(sign_delay(cfg), std::time::Duration::from_secs(10));
    v["authority"]["config"] = serde_json::json!({"signDelay": "ten seconds"});
    let e = Config::parse(&v.to_string()).unwrap_err().to_string();
    assert!(e.contains("authority.config.signDelay"), "{e}");
    assert_eq!(
        sign_delay(Config::parse(&minimal().to_string()).unwrap().0),
        std::time::Duration::ZERO
    );
}

#[test]
fn upstream_concurrency_defaults_to_32_and_is_bounded() {
    let (cfg, _) = Config::parse(&minimal().to_string()).unwrap();
    assert_eq!(cfg.upstream_concurrency, 32);
    let mut v = minimal();
    v["authority"]["upstreamConcurrency"] = 500.into();
    let (cfg, _) = Config::parse(&v.to_string()).unwrap();
    assert_eq!(cfg.upstream_concurrency, 500);
    for bad in [0, 5000] {
        v["authority"]["upstreamConcurrency"] = bad.into();
        let e = Config::parse(&v.to_string()).unwrap_err().to_string();
        assert!(e.contains("authority.upstreamConcurrency"), "{e}");
        assert!(e.contains("1 to 4096"), "{e}");
    }
}

/// Documents full of secrets, each with the secret values it holds.
fn documents_with_secrets() -> Vec<(Value, Vec<&'static str>)> {
    let provisioners = serde_json::json!([{"type": "ACME", "name": "acme"}]);
    let step_ca_secrets = |mut v: Value| {
        v["password"] = "step-ca-top-password".into();
        v["kms"] = serde_json::json!({"type": "awskms", "token": "kms-token-value"});
        v
    };
    let mut externalcas = minimal();
    externalcas["authority"] = serde_json::json!({
        "type": "externalcas",
        "config": {"ca_url": "https://acme.example.com/directory", "eab_kid": "kid-1",
                   "eab_hmac_key": "c2VjcmV0LWhtYWMta2V5"},
        "certificateIssuer": {"type": "jwk", "password": "unused-issuer-password"},
        "provisioners": provisioners,
    });
    let mut stepcas = minimal();
    stepcas["authority"] = serde_json::json!({
        "type": "stepcas",
        "certificateAuthority": "https://ca.example.com",
        "certificateAuthorityFingerprint": "ab".repeat(32),
        "certificateIssuer": {"type": "jwk", "provisioner": "ra", "password": "issuer-password-value"},
        "provisioners": provisioners,
    });
    let mut vaultcas = minimal();
    vaultcas["authority"] = serde_json::json!({
        "type": "vaultcas",
        "certificateAuthority": "https://vault.example.com:8200",
        "config": {"authType": "approle",
                   "authOptions": {"roleID": "role", "secretID": "vault-secret-id-value"}},
        "provisioners": provisioners,
    });
    vec![
        (
            step_ca_secrets(externalcas),
            vec![
                "c2VjcmV0LWhtYWMta2V5",
                "unused-issuer-password",
                "step-ca-top-password",
                "kms-token-value",
            ],
        ),
        (step_ca_secrets(stepcas), vec!["issuer-password-value"]),
        (step_ca_secrets(vaultcas), vec!["vault-secret-id-value"]),
    ]
}

#[test]
fn debug_never_shows_a_secret() {
    for (doc, secrets) in documents_with_secrets() {
        let text = doc.to_string();
        let parsed = Config::from_json(&text).unwrap();
        let (settings, _) = Config::parse(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        for shown in [format!("{parsed:?}"), format!("{settings:?}")] {
            for secret in &secrets {
                assert!(!shown.contains(secret), "{secret} shows in {shown}");
            }
        }
        // Serializing writes them: it is the file format.
        let written = serde_json::to_string(&parsed).unwrap();
        for secret in &secrets {
            assert!(written.contains(secret), "{secret} is lost in {written}");
        }
    }
    // A PostgreSQL URL's password, in a document the checks refuse.
    let mut v = minimal();
    v["db"] = serde_json::json!({"type": "postgresql",
                                 "dataSource": "postgres://ra:pg-password-value@db/acme"});
    let parsed = Config::from_json(&v.to_string()).unwrap();
    assert!(!format!("{parsed:?}").contains("pg-password-value"));
    let (settings, _) = Config::parse(&v.to_string()).unwrap();
    let shown = format!("{settings:?} {}", settings.store);
    assert!(!shown.contains("pg-password-value"), "{shown}");
    // A document the checks refuse.
    v["db"]["maxConnections"] = 0.into();
    let e = Config::parse(&v.to_string()).unwrap_err().to_string();
    assert!(!e.contains("pg-password-value"), "{e}");
}

#[test]
fn postgresql_store_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = minimal();
    v["db"] = serde_json::json!({"type": "postgresql",
                                 "dataSource": "postgresql://acmeproxy@127.0.0.1:5432/"});
    let (cfg, _) = Config::parse(&v.to_string()).unwrap();
    let StoreChoice::Postgres(pg) = &cfg.store else {
        panic!("{:?}", cfg.store)
    };
    assert_eq!(pg.database, "acmeproxy");
    assert_eq!(pg.max_connections, 16);
    assert_eq!(
        pg.data_source.expose(),
        "postgresql://acmeproxy@127.0.0.1:5432/"
    );
    assert_eq!(cfg.store.to_string(), "postgresql, database \"acmeproxy\"");

    // The password from a file (its final newline dropped), the pool size
    // and the database from their keys.
    let file = dir.path().join("pw");
    std::fs::write(&file, "from-the-file\n").unwrap();
    v["db"]["passwordFile"] = file.to_str().unwrap().into();
    v["db"]["database"] = "ra".into();
    v["db"]["maxConnections"] = 4.into();
    let (cfg, _) = Config::parse(&v.to_string()).unwrap();
    let StoreChoice::Postgres(pg) = &cfg.store else {
        panic!("{:?}", cfg.store)
    };
    assert_eq!(
        pg.password.as_ref().map(|p| p.expose()),
        Some("from-the-file")
    );
    assert_eq!((pg.database.as_str(), pg.max_connections), ("ra", 4));
    assert!(!format!("{cfg:?}").contains("from-the-file"));

    // Refused, naming the key: a missing file, no dataSource, an unknown
    // key, the PostgreSQL keys on another store.
    v["db"]["passwordFile"] = dir.path().join("missing").to_str().unwrap().into();
    let e = Config::parse(&v.to_string()).unwrap_err().to_string();
    assert!(e.contains("missing"), "{e}");
    for (db, key) in [
        (serde_json::json!({"type": "postgresql"}), "db.dataSource"),
        (
            serde_json::json!({"type": "postgresql", "dataSource": "x", "maxConnections": 0}),
            "db.maxConnections",
        ),
        (
            serde_json::json!({"type": "postgresql", "dataSource": "x", "database": ""}),
            "db.database",
        ),
        (
            serde_json::json!({"type": "sled", "database": "acmeproxy"}),
            "db.database",
        ),
        (
            serde_json::json!({"type": "memory", "maxConnections": 3}),
            "db.maxConnections",
        ),
    ] {
        let mut v = minimal();
        v["db"] = db;
        let e = Config::parse(&v.to_string()).unwrap_err().to_string();
        assert!(e.starts_with(key), "{key}: {e}");
    }
    let mut v = minimal();
    v["db"] = serde_json::json!({"type": "postgresql", "dataSource": "x", "sslMode": "x"});
    let e = Config::parse(&v.to_string()).unwrap_err().to_string();
    assert!(e.contains("sslMode"), "{e}");
}

#[test]
fn documents_survive_a_round_trip() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = [
        "ca.json",
        "examples/ca.json",
        "tests/fixtures/esnet-plugin-ca.json",
    ];
    let mut texts: Vec<(String, String)> = files
        .iter()
        .map(|p| {
            (
                p.to_string(),
                std::fs::read_to_string(root.join(p)).unwrap(),
            )
        })
        .collect();
    texts.extend(
        documents_with_secrets()
            .into_iter()
            .map(|(doc, _)| ("documents_with_secrets".to_owned(), doc.to_string())),
    );
    let mut full = minimal();
    full["connections"] = serde_json::json!({"idleTimeout": "90s", "maxConnections": 10});
    full["authority"]["rateLimits"] = serde_json::json!({
        "newOrdersPerAccount": 0, "requestsPerIp": {"count": 10, "period": "1s"}});
    full["authority"]["policy"] =
        serde_json::json!({"x509": {"allow": {"dns": [".example.com"]}}, "ssh": {}});
    full["validation"] = serde_json::json!({"denyNetworks": ["10.0.0.0/8"]});
    full["root"] = serde_json::json!(["a.pem", "b.pem"]);
    texts.push(("full".to_owned(), full.to_string()));
    for (name, text) in texts {
        let doc = Config::from_json(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let (settings, warnings) = doc.check().unwrap_or_else(|e| panic!("{name}: {e}"));
        let written = serde_json::to_string_pretty(&doc).unwrap();
        let again =
            Config::from_json(&written).unwrap_or_else(|e| panic!("{name}: {e}\n{written}"));
        let (settings_again, warnings_again) = again.check().unwrap();
        assert_eq!(settings, settings_again, "{name}: {written}");
        assert_eq!(warnings.0, warnings_again.0, "{name}");
    }
}

/// Two external CAs and a softcas under names, routed.
fn several() -> Value {
    let mut v = minimal();
    v["authority"] = serde_json::json!({
        "upstreams": [
            {"name": "sectigo", "type": "externalcas", "config": {
                "ca_url": "https://127.0.0.1:14000/dir", "eab_kid": "k1", "eab_hmac_key": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}},
            {"name": "zerossl", "type": "externalcas", "config": {
                "ca_url": "https://127.0.0.1:14001/dir", "eab_kid": "k2", "eab_hmac_key": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}},
            {"name": "internal", "type": "softcas"}
        ],
        "routes": [
            {"name": "inside", "match": {"dns": ["*.internal.example.org"], "ip": ["10.0.0.0/8"]}, "upstreams": ["internal"]},
            {"match": {"eabKey": ["team-web"]}, "upstreams": ["sectigo"]},
            {"upstreams": ["sectigo", "zerossl"]}
        ],
        "failover": {"downAfter": 5, "probeEvery": "10s"},
        "provisioners": [{"type": "ACME", "name": "acme"}]
    });
    v
}

#[test]
fn several_upstreams_with_routes_and_failover() {
    let (cfg, warnings) = Config::parse(&several().to_string()).unwrap();
    assert!(warnings.0.is_empty(), "{warnings:?}");
    let names: Vec<&str> = cfg.upstreams.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["sectigo", "zerossl", "internal"]);
    assert!(matches!(cfg.upstreams[2].upstream, Upstream::SoftCas(_)));
    assert_eq!(cfg.upstream, cfg.upstreams[0].upstream);
    let routes: Vec<(&str, &[String])> = cfg
        .routes
        .iter()
        .map(|r| (r.name.as_str(), r.upstreams.as_slice()))
        .collect();
    assert_eq!(routes[0].0, "inside");
    assert_eq!(routes[1].0, "route 2");
    assert_eq!(routes[2].1, ["sectigo", "zerossl"]);
    assert_eq!(cfg.routes[0].ip[0].to_string(), "10.0.0.0/8");
    assert_eq!(cfg.routes[1].eab_key, ["team-web"]);
    assert_eq!(cfg.failover.down_after, 5);
    assert_eq!(cfg.failover.probe_every, std::time::Duration::from_secs(10));

    // Without routes: one route to every upstream, in order.
    let mut v = several();
    v["authority"].as_object_mut().unwrap().remove("routes");
    let (cfg, _) = Config::parse(&v.to_string()).unwrap();
    assert_eq!(cfg.routes.len(), 1);
    assert_eq!(cfg.routes[0].upstreams, ["sectigo", "zerossl", "internal"]);
    // A ca.json without the keys has no router.
    let (cfg, _) = Config::parse(&minimal().to_string()).unwrap();
    assert!(cfg.upstreams.is_empty() && cfg.routes.is_empty());
}

#[test]
fn several_upstreams_errors_name_the_entry_and_the_fix() {
    type Change<'a> = &'a dyn Fn(&mut Value);
    let cases: [(Change<'_>, &str); 7] = [
        (
            &|v| v["authority"]["routes"][2]["upstreams"][1] = "nope".into(),
            "\"nope\" is not one of authority.upstreams (sectigo, zerossl, internal)",
        ),
        (
            &|v| v["authority"]["upstreams"][1]["name"] = "sectigo".into(),
            "defined twice",
        ),
        (
            &|v| v["authority"]["upstreams"][1]["name"] = "a b".into(),
            "authority.upstreams[1].name",
        ),
        (
            &|v| v["authority"]["upstreams"][0]["config"]["ca_url"] = "ftp://x".into(),
            "authority.upstreams[0] (\"sectigo\")",
        ),
        (
            &|v| v["authority"]["routes"][0]["match"]["ip"][0] = "10.0.0.1/8".into(),
            "host bits",
        ),
        (
            &|v| v["authority"]["routes"][0]["match"]["dns"][0] = "*.*.x".into(),
            "authority.routes[0].match.dns",
        ),
        (
            &|v| v["authority"]["failover"]["probeEvery"] = "0s".into(),
            "at least 1s",
        ),
    ];
    for (change, needle) in cases {
        let mut v = several();
        change(&mut v);
        let e = Config::parse(&v.to_string()).unwrap_err().to_string();
        assert!(e.contains(needle), "{needle}: {e}");
    }
    // The single upstream's keys beside `upstreams` are not used: said.
    let mut v = several();
    v["authority"]["config"] = serde_json::json!({"certlifetime": 30});
    let (_, warnings) = Config::parse(&v.to_string()).unwrap();
    assert!(
        warnings
            .0
            .iter()
            .any(|w| w.contains("authority.config not used")),
        "{warnings:?}"
    );
    let mut v = minimal();
    v["authority"]["routes"] = serde_json::json!([{"upstreams": ["x"]}]);
    let e = Config::parse(&v.to_string()).unwrap_err().to_string();
    assert!(e.contains("needs authority.upstreams"), "{e}");
}
