//! Packaging: install.sh staged into a DESTDIR (files, modes, a starter
//! ca.json that passes check-config, idempotence), the systemd unit
//! (directives, `systemd-analyze verify`), the Dockerfile's shape, and the
//! Helm chart rendered (tests/acme/packaging/helm.rs, or `helm` when installed)
//! and parsed as YAML.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod chart;
mod helm;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_acmeproxy");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs install.sh with `DESTDIR=dest`, `PREFIX=prefix` and `args`.
fn install(dest: &Path, prefix: &str, args: &[&str]) -> Output {
    Command::new("bash")
        .arg(repo().join("install.sh"))
        .args(args)
        .env("DESTDIR", dest)
        .env("PREFIX", prefix)
        .env_remove("UNITDIR")
        .output()
        .unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Every path under `root` with its mode, size, mtime and content.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u32, i64, i64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let content = if meta.is_file() {
                std::fs::read(&path).unwrap()
            } else {
                stack.push(path.clone());
                Vec::new()
            };
            out.insert(
                path,
                (meta.mode(), meta.mtime(), meta.mtime_nsec(), content),
            );
        }
    }
    out
}

fn check_config(path: &Path) {
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check-config {}: {}",
        path.display(),
        text(&out)
    );
}

#[test]
fn install_sh_stages_into_destdir_idempotently() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("root");
    let args = ["--binary", BIN, "--dns-name", "ra.example.test"];
    let out = install(&dest, "/usr/local", &args);
    let log = text(&out);
    assert!(out.status.success(), "install.sh failed:\n{log}");
    for line in [
        "skipped: creating user acmeproxy (DESTDIR is set)",
        "installed: ",
        "wrote: ",
        "created: ",
        "skipped: systemctl daemon-reload/enable (DESTDIR is set)",
    ] {
        assert!(log.contains(line), "missing {line:?} in:\n{log}");
    }

    let bin = dest.join("usr/local/bin/acmeproxy");
    assert_eq!(mode(&bin), 0o755);
    assert_eq!(std::fs::read(&bin).unwrap(), std::fs::read(BIN).unwrap());
    assert_eq!(mode(&dest.join("etc/acmeproxy")), 0o750);
    let conf = dest.join("etc/acmeproxy/ca.json");
    assert_eq!(mode(&conf), 0o640);
    let doc: Value = serde_json::from_slice(&std::fs::read(&conf).unwrap()).unwrap();
    assert_eq!(doc["address"], ":443");
    assert_eq!(doc["dnsNames"], json!(["ra.example.test"]));
    assert_eq!(doc["dataDir"], "/var/lib/acmeproxy");
    assert_eq!(doc["db"]["type"], "sled");
    assert_eq!(doc["authority"]["type"], "softcas");
    assert_eq!(doc["metrics"]["address"], "127.0.0.1:9123");
    check_config(&conf);
    let data = dest.join("var/lib/acmeproxy");
    assert!(data.is_dir());
    assert_eq!(mode(&data), 0o700);
    let unit = dest.join("etc/systemd/system/acmeproxy.service");
    assert_eq!(mode(&unit), 0o644);
    assert_eq!(
        std::fs::read_to_string(&unit).unwrap(),
        std::fs::read_to_string(repo().join("contrib/systemd/acmeproxy.service")).unwrap()
    );
    // No temporary file left behind.
    let left: Vec<_> = std::fs::read_dir(dest.join("etc/acmeproxy"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("ca.json")]);

    // A second run (even with another name) changes nothing at all.
    let before = snapshot(&dest);
    let out = install(
        &dest,
        "/usr/local",
        &["--binary", BIN, "--dns-name", "other.test"],
    );
    let log = text(&out);
    assert!(out.status.success(), "second run failed:\n{log}");
    assert!(log.contains("kept existing"), "{log}");
    assert!(log.contains("unchanged: "), "{log}");
    assert!(!log.contains("installed: "), "{log}");
    assert_eq!(before, snapshot(&dest), "the second run changed files");
}

#[test]
fn install_sh_prefix_help_and_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("root");
    let out = install(
        &dest,
        "/opt/acmeproxy",
        &["--binary", BIN, "--dns-name", "x.test"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(mode(&dest.join("opt/acmeproxy/bin/acmeproxy")), 0o755);
    let unit = std::fs::read_to_string(dest.join("etc/systemd/system/acmeproxy.service")).unwrap();
    assert!(unit.contains("ExecStart=/opt/acmeproxy/bin/acmeproxy /etc/acmeproxy/ca.json"));
    assert!(!unit.contains("/usr/local/bin"));

    let help = install(&dest, "/usr/local", &["--help"]);
    assert!(help.status.success());
    for word in ["--binary", "--dns-name", "DESTDIR", "PREFIX"] {
        assert!(text(&help).contains(word), "--help lacks {word}");
    }
    for bad in [
        &["--frobnicate"][..],
        &["--binary", "/nonexistent/acmeproxy"],
        &["--binary", BIN, "--dns-name", "bad name;rm"],
    ] {
        let fresh = tmp.path().join("fresh");
        let out = install(&fresh, "/usr/local", bad);
        assert!(!out.status.success(), "{bad:?} succeeded: {}", text(&out));
        assert!(!fresh.join("etc/acmeproxy/ca.json").exists());
    }
    let out = install(Path::new("relative/dir"), "/usr/local", &["--binary", BIN]);
    assert!(!out.status.success());
}

#[test]
fn install_sh_is_shellcheck_clean() {
    let Ok(out) = Command::new("shellcheck")
        .arg(repo().join("install.sh"))
        .output()
    else {
        eprintln!("SKIP shellcheck: not installed (apt-get install shellcheck)");
        return;
    };
    assert!(out.status.success(), "shellcheck:\n{}", text(&out));
}

/// `Key=Value` lines of a unit file, values of repeated keys joined by a space.
fn unit_directives(unit: &str) -> BTreeMap<String, String> {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for line in unit.lines() {
        if let Some((k, v)) = line.split_once('=') {
            if !line.starts_with('#') {
                let e = map.entry(k.trim().to_owned()).or_default();
                if !e.is_empty() {
                    e.push(' ');
                }
                e.push_str(v.trim());
            }
        }
    }
    map
}

#[test]
fn systemd_unit_is_hardened_and_verifies() {
    let unit_path = repo().join("contrib/systemd/acmeproxy.service");
    let unit = std::fs::read_to_string(&unit_path).unwrap();
    let d = unit_directives(&unit);
    for (key, want) in [
        ("Type", "simple"),
        ("User", "acmeproxy"),
        ("Group", "acmeproxy"),
        (
            "ExecStart",
            "/usr/local/bin/acmeproxy /etc/acmeproxy/ca.json",
        ),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ReadWritePaths", "/var/lib/acmeproxy"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallFilter", "@system-service"),
        ("SystemCallArchitectures", "native"),
        ("UMask", "0077"),
        ("TimeoutStopSec", "30"),
        ("LimitNOFILE", "65536"),
        ("WantedBy", "multi-user.target"),
    ] {
        assert_eq!(d.get(key).map(String::as_str), Some(want), "{key}");
    }

    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("SKIP systemd-analyze verify: systemd-analyze is not installed");
        return;
    };
    assert!(version.status.success());
    // Verify a copy whose binary exists: the staged one is this build.
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("acmeproxy.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/acmeproxy", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .unwrap();
    let log = text(&out);
    // Every complaint about the unit names its file (`…/acmeproxy.service:31:
    // Failed to parse …`); notes about the host (no booted systemd) do not.
    let problems: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("acmeproxy.service"))
        .collect();
    assert!(
        out.status.success() && problems.is_empty(),
        "systemd-analyze verify:\n{log}"
    );
    // The check is not vacuous: a bad directive is reported with the file.
    std::fs::write(
        &copy,
        unit.replace("ProtectSystem=strict", "ProtectSystem=bogus"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .unwrap();
    assert!(text(&out).contains("acmeproxy.service:"), "{}", text(&out));
}

#[test]
fn dockerfile_shape() {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let with = |instr: &str| -> Vec<&str> {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix(instr).and_then(|r| r.strip_prefix(' ')))
            .collect()
    };
    let froms = with("FROM");
    assert_eq!(
        froms,
        ["rust:1-bookworm AS builder", "debian:bookworm-slim"]
    );
    assert!(text.contains("cargo build --release --locked"));
    assert!(
        text.contains("COPY --from=builder /src/target/release/acmeproxy /usr/local/bin/acmeproxy")
    );
    assert!(text.contains("ca-certificates"));
    // Everything the build copies exists; nothing else is needed (no build.rs).
    assert!(!repo().join("build.rs").exists());
    for copy in with("COPY").iter().filter(|c| !c.starts_with("--from")) {
        let parts: Vec<&str> = copy.split_whitespace().collect();
        for src in &parts[..parts.len() - 1] {
            assert!(repo().join(src).exists(), "COPY source {src}");
        }
    }
    let users = with("USER");
    assert_eq!(users.len(), 1);
    let user = users[0].split(':').next().unwrap();
    assert!(user != "root" && user != "0", "USER {user}");
    // The user is created in the final stage (after the last FROM).
    let last_from = text.rfind("\nFROM ").unwrap();
    assert!(text[last_from..].contains(&format!("--uid {user}")));
    let mut exposed: Vec<&str> = with("EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace())
        .collect();
    exposed.sort_unstable();
    assert_eq!(exposed, ["443", "9123"]);
    assert_eq!(with("VOLUME"), ["/var/lib/acmeproxy"]);
    let entry: Vec<String> = serde_json::from_str(with("ENTRYPOINT")[0]).unwrap();
    assert_eq!(entry, ["acmeproxy"]);
    let cmd: Vec<String> = serde_json::from_str(with("CMD")[0]).unwrap();
    assert_eq!(cmd, ["/etc/acmeproxy/ca.json"]);
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target"));
}

/// Every broken configuration that `serve` used to refuse late, crash on or
/// run with to no good end: `check-config` (the unit's ExecStartPre) exits
/// non-zero and names the key, and what is allowed.
#[test]
fn check_config_refuses_each_broken_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let a_file = dir.path().join("a-file");
    std::fs::write(&a_file, "x").unwrap();
    let base = || {
        json!({
            "address": "127.0.0.1:28443",
            "dnsNames": ["localhost"],
            "dataDir": dir.path().join("data"),
            "authority": {"type": "softcas", "provisioners": [{"type": "ACME", "name": "acme"}]}
        })
    };
    let external = |config: Value| {
        let mut doc = base();
        doc["authority"]["type"] = json!("externalcas");
        doc["authority"]["config"] = config;
        doc
    };
    let with = |key: &str, value: Value| {
        let mut doc = base();
        doc[key] = value;
        doc
    };
    let mut cases: Vec<(&str, Value, &[&str])> = vec![
        (
            "ca_url without a host",
            external(json!({"ca_url": "https://"})),
            &["authority.config.ca_url", "with a host"],
        ),
        (
            "dataDir is a file",
            with("dataDir", json!(a_file)),
            &["dataDir", "not a directory"],
        ),
        (
            "certlifetime 0",
            {
                let mut d = base();
                d["authority"]["config"] = json!({"certlifetime": 0});
                d
            },
            &["authority.config.certlifetime", "1 to 3650 days", "line"],
        ),
        (
            "certlifetime negative",
            external(json!({"ca_url": "https://ca.test/dir", "certlifetime": -5})),
            &[
                "authority.config.certlifetime",
                "-5",
                "1 to 3650 days",
                "line",
            ],
        ),
        (
            "bad dnsNames",
            with("dnsNames", json!(["localhost", "bad name!"])),
            &["dnsNames[1]", "bad name!"],
        ),
        (
            "claims min above max",
            {
                let mut d = base();
                d["authority"]["claims"] =
                    json!({"minTLSCertDuration": "48h", "maxTLSCertDuration": "24h"});
                d
            },
            &[
                "authority.claims.minTLSCertDuration",
                "above maxTLSCertDuration",
            ],
        ),
        (
            "default outside the claims",
            {
                let mut d = base();
                d["authority"]["provisioners"][0]["claims"] =
                    json!({"maxTLSCertDuration": "24h", "defaultTLSCertDuration": "720h"});
                d
            },
            &[
                "authority.provisioners[0].claims.defaultTLSCertDuration",
                "outside",
            ],
        ),
        (
            "logger format",
            with("logger", json!({"format": "jsn"})),
            &["logger.format", "\"text\" or \"json\""],
        ),
        (
            "cert_obtain_timeout 0",
            external(json!({"ca_url": "https://ca.test/dir", "cert_obtain_timeout": 0})),
            &["authority.config.cert_obtain_timeout", "1 to 3600 seconds"],
        ),
        (
            "a host name as address",
            with("address", json!("localhost:28443")),
            &["address", "names a host", "127.0.0.1:28443"],
        ),
        (
            "no port",
            with("address", json!("127.0.0.1")),
            &["address", "give an IP and a port"],
        ),
    ];
    cases.push((
        "root that is not a root",
        with("root", json!(a_file)),
        &["root", "a-file"],
    ));
    let mut failures = Vec::new();
    for (what, doc, needles) in cases {
        let path = dir.path().join("ca.json");
        std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
        let out = Command::new(BIN)
            .arg("check-config")
            .arg(&path)
            .output()
            .unwrap();
        let said = text(&out);
        if out.status.success() {
            failures.push(format!("{what}: check-config passed:\n{said}"));
        } else if let Some(n) = needles.iter().find(|n| !said.contains(**n)) {
            failures.push(format!("{what}: no {n:?} in:\n{said}"));
        } else {
            println!("{what}: {}", said.trim());
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
