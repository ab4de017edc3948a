//! The step-ca upstream (`authority.type: "stepcas"`) against a real
//! smallstep step-ca 0.19, built from Debian's Go sources by
//! `tests/stepca/build-stepca.sh` and set up per scenario by
//! `tests/stepca/init-ca.sh` on loopback. Real ACME (RFC 8555) clients —
//! certbot and lego — register, issue, renew (forced) and revoke through the
//! built `acmeproxy` binary, which has step-ca sign with one-time tokens of a
//! JWK provisioner (its encrypted key downloaded from the CA, or read from a
//! JWE file) or of an X5C provisioner (a client certificate). Every chain
//! must verify to step-ca's root (the RA's own HTTPS certificate comes from
//! step-ca too), and the revocation must reach step-ca: its log names the
//! revoked serial, and step-ca then refuses to renew that certificate over
//! mTLS while it still renews the unrevoked one.
//!
//! Start-up must fail, naming the cause, for a wrong password, a wrong root
//! fingerprint and an unreachable CA.
//!
//! Without step-ca built the tests skip with a message, or fail when `CI`
//! is set (CI runs the build script through `make test-deps`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use acmeproxy_testkit as kit;

use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use acmeproxy::acme::{Identifier, ProblemType};
use acmeproxy::config::IssuerType;
use acmeproxy::upstream::stepca::{StepCa as StepCaUpstream, StepCaOptions};
use acmeproxy::upstream::{
    CertificateAuthorityService, NoCheckpoint, RevokeRequest, SignRequest, UpstreamError,
};
use serde_json::{Value, json};
use x509_parser::prelude::{FromDer, X509Certificate};

use kit::clients::{Challenge, Client, Issued, Ports, run_client, verify_cert};
use kit::{ChildGuard, fetch_roots_pem, free_ports, run_bounded, tail};

/// How long step-ca and acmeproxy may take to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How the RA authenticates to step-ca in a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Issuer {
    /// JWK provisioner; its encrypted key downloaded from the CA, the
    /// password given with `--issuer-password-file`.
    JwkDownloaded,
    /// JWK provisioner; its key read from the JWE file, `passwordFile` in ca.json.
    JwkFile,
    /// X5C provisioner with the RA's client certificate.
    X5c,
}

/// One test per client and issuer: `test: Client, Issuer, "name";`.
macro_rules! scenarios {
    ($($test:ident: $client:ident, $issuer:ident, $name:literal;)*) => {$(
        #[test]
        fn $test() {
            scenario(Client::$client, Issuer::$issuer, $name);
        }
    )*};
}

scenarios! {
    certbot_jwk_via_stepca: Certbot, JwkDownloaded, "certbot-jwk.test";
    certbot_x5c_via_stepca: Certbot, X5c, "certbot-x5c.test";
    lego_jwk_via_stepca: Lego, JwkFile, "lego-jwk.test";
    lego_x5c_via_stepca: Lego, X5c, "lego-x5c.test";
}

/// Start-up errors name their cause and stop the server (non-zero exit).
#[test]
fn startup_errors_name_the_cause() {
    let Some(tmp) = prepare("start-up errors", None) else {
        return;
    };
    let result = startup_errors(tmp.path());
    finish(tmp, result, "start-up errors");
}

fn startup_errors(tmp: &Path) -> Result<(), String> {
    let ca = StepCa::start(tmp, None)?;
    let [acme, free] = free_ports().map_err(|e| e.to_string())?;
    let ports = Ports {
        http01: free,
        tls_alpn01: free,
        dns: SocketAddr::from(([127, 0, 0, 1], 53)),
        dns_records: tmp.to_owned(),
    };
    let wrong = tmp.join("wrong-password");
    fs::write(&wrong, "not the password\n").map_err(|e| e.to_string())?;

    let t0 = Instant::now();
    let cfg = ra_config(tmp, "wrong-pw", acme, &ports, &ca, Issuer::JwkDownloaded);
    let out = expect_exit(tmp, "wrong-pw", &cfg, Some(&wrong))?;
    expect_in(
        &out,
        "cannot decrypt the provisioner key: wrong password?",
        "wrong password",
    )?;

    let mut cfg = ra_config(tmp, "wrong-fp", acme, &ports, &ca, Issuer::X5c);
    let configured = "ab".repeat(32);
    cfg["authority"]["certificateAuthorityFingerprint"] = json!(configured);
    let out = expect_exit(tmp, "wrong-fp", &cfg, None)?;
    expect_in(
        &out,
        &format!(
            "the CA's root has fingerprint {}, not the configured {configured}",
            ca.fingerprint
        ),
        "wrong fingerprint",
    )?;

    let mut cfg = ra_config(tmp, "unreachable", acme, &ports, &ca, Issuer::X5c);
    let nowhere = format!("https://127.0.0.1:{free}");
    cfg["authority"]["certificateAuthority"] = json!(nowhere);
    let out = expect_exit(tmp, "unreachable", &cfg, None)?;
    expect_in(
        &out,
        &format!("cannot reach step-ca at {nowhere}: "),
        "unreachable CA",
    )?;
    expect_in(&out, "Connection refused", "unreachable CA")?;
    println!(
        "stepcas start-up errors: wrong password, wrong fingerprint, unreachable CA each refused in {:.2}s in all",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The upstream as a library against the real CA: step-ca's refusals map to
/// ACME problems, and certificates signed through X5C never outlive the RA
/// certificate (step-ca would refuse a longer `notAfter`).
#[test]
fn refusals_and_x5c_lifetime() {
    let Some(tmp) = prepare("refusals and x5c lifetime", None) else {
        return;
    };
    let result = refusals(tmp.path());
    finish(tmp, result, "refusals and x5c lifetime");
}

fn refusals(tmp: &Path) -> Result<(), String> {
    let ca = StepCa::start(tmp, Some("8760h"))?;
    // An RA certificate that expires in two days, from the X5C provisioner's root.
    let x5c = ca.dir.join("x5c");
    let short = tmp.join("short");
    fs::create_dir_all(&short).map_err(|e| e.to_string())?;
    let (key, csr, leaf) = (
        short.join("ra.key"),
        short.join("ra.csr"),
        short.join("ra-leaf.crt"),
    );
    let log = tmp.join("openssl.log");
    for args in [
        vec![
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ],
        vec!["req", "-new", "-subj", "/CN=short-lived-ra", "-key"],
        vec!["x509", "-req", "-days", "2", "-extensions", "ra_ext", "-in"],
    ] {
        let mut cmd = Command::new("openssl");
        cmd.args(&args);
        match args[0] {
            "genpkey" => cmd.arg(&key),
            "req" => cmd.arg(&key).arg("-out").arg(&csr),
            _ => cmd
                .arg(&csr)
                .arg("-CA")
                .arg(x5c.join("root.crt"))
                .arg("-CAkey")
                .arg(x5c.join("root.key"))
                .arg("-CAserial")
                .arg(x5c.join("root.srl"))
                .arg("-extfile")
                .arg(x5c.join("openssl.cnf"))
                .arg("-out")
                .arg(&leaf),
        };
        run_bounded(&mut cmd, READY_TIMEOUT, &log)?;
    }
    let chain = [
        fs::read(&leaf).unwrap(),
        fs::read(x5c.join("root.crt")).unwrap(),
    ]
    .concat();
    let crt = short.join("ra.crt");
    fs::write(&crt, chain).map_err(|e| e.to_string())?;
    let ra_not_after = {
        let pem = pem::parse(fs::read(&leaf).unwrap()).map_err(|e| e.to_string())?;
        let (_, c) = X509Certificate::from_der(pem.contents()).map_err(|e| e.to_string())?;
        c.validity().not_after.to_datetime()
    };
    let opts = StepCaOptions {
        ca_url: ca.url.clone(),
        fingerprint: ca.fingerprint.clone(),
        issuer: IssuerType::X5c,
        provisioner: "ra-x5c".into(),
        key: Some(key),
        crt: Some(crt),
        password: None,
        timeout: Duration::from_secs(10),
    };
    runtime().block_on(async {
        let up = StepCaUpstream::connect(opts).await.map_err(|e| format!("connect: {e}"))?;
        let root = pem::parse(fs::read(&ca.root).unwrap()).map_err(|e| e.to_string())?;
        if up.roots() != vec![root.contents().to_vec()] {
            return Err("roots() is not step-ca's root".to_owned());
        }
        up.health().await.map_err(|e| format!("health: {e}"))?;

        // 90 days asked, two days allowed: the certificate ends with the RA's.
        let now = time::OffsetDateTime::now_utc();
        let req = sign_request("short.test", "short.test", Some(now + time::Duration::days(90)));
        let chain = up
            .create_certificate(&req, &NoCheckpoint)
            .await
            .map_err(|e| format!("sign: {e}"))?;
        let (_, issued) = X509Certificate::from_der(&chain.certificates[0]).map_err(|e| e.to_string())?;
        let not_after = issued.validity().not_after.to_datetime();
        if not_after > ra_not_after || not_after < now + time::Duration::days(1) {
            return Err(format!(
                "issued notAfter {not_after}, RA certificate notAfter {ra_not_after}"
            ));
        }

        // A CSR whose names differ from the order's: step-ca refuses the token.
        let bad = sign_request("a.test", "b.test", None);
        match up.create_certificate(&bad, &NoCheckpoint).await {
            Err(UpstreamError::Rejected { kind: ProblemType::Unauthorized, detail }) => {
                println!("stepcas refusal: {detail}");
            }
            other => return Err(format!("mismatched names: {other:?}")),
        }

        // Revocation, then again: step-ca says it is already revoked.
        let revoke = RevokeRequest {
            certificate_der: chain.certificates[0].clone(),
            serial_hex: issued.raw_serial_as_string().replace(':', ""),
            reason: 4,
        };
        up.revoke_certificate(&revoke).await.map_err(|e| format!("revoke: {e}"))?;
        match up.revoke_certificate(&revoke).await {
            Err(UpstreamError::Rejected { kind: ProblemType::AlreadyRevoked, .. }) => {}
            other => return Err(format!("second revocation: {other:?}")),
        }
        println!(
            "stepcas x5c: 90 days asked, notAfter {not_after} (RA certificate ends {ra_not_after}); \
             mismatched names refused as unauthorized; revoked, then already revoked"
        );
        Ok(())
    })
}

#[test]
fn stock_claims_lifetime() {
    let Some(tmp) = prepare("lifetime against step-ca's default claims", None) else {
        return;
    };
    let result = stock_claims(tmp.path());
    finish(tmp, result, "lifetime against step-ca's default claims");
}

/// Against a stock step-ca (24h default and maximum): no notAfter asked
/// gives step-ca's default; 90 days asked is refused with both durations
/// and the ca.json key to change.
fn stock_claims(tmp: &Path) -> Result<(), String> {
    let ca = StepCa::start(tmp, None)?;
    let opts = StepCaOptions {
        ca_url: ca.url.clone(),
        fingerprint: ca.fingerprint.clone(),
        issuer: IssuerType::Jwk,
        provisioner: "ra-jwk".into(),
        key: Some(ca.dir.join("provisioner/jwk.jwe")),
        crt: None,
        password: Some(acmeproxy::config::Secret::new(ca.password.clone())),
        timeout: Duration::from_secs(10),
    };
    runtime().block_on(async {
        let up = StepCaUpstream::connect(opts)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let chain = up
            .create_certificate(
                &sign_request("stock.test", "stock.test", None),
                &NoCheckpoint,
            )
            .await
            .map_err(|e| format!("sign with no notAfter: {e}"))?;
        let (_, leaf) =
            X509Certificate::from_der(&chain.certificates[0]).map_err(|e| e.to_string())?;
        let v = leaf.validity();
        let lifetime = v.not_after.to_datetime() - v.not_before.to_datetime();
        if lifetime > time::Duration::hours(24) + time::Duration::minutes(2) {
            return Err(format!(
                "no notAfter asked, but the certificate lives {lifetime}"
            ));
        }
        let now = time::OffsetDateTime::now_utc();
        let long = sign_request(
            "long.test",
            "long.test",
            Some(now + time::Duration::days(90)),
        );
        match up.create_certificate(&long, &NoCheckpoint).await {
            Err(UpstreamError::Rejected {
                kind: ProblemType::ServerInternal,
                detail,
            }) if detail.contains("24h")
                && detail.contains("2160h")
                && detail.contains("defaultTLSCertDuration") =>
            {
                println!("stepcas, 90 days asked of a stock step-ca: {detail}");
            }
            other => return Err(format!("90 days asked of a stock step-ca: {other:?}")),
        }
        println!("stepcas, no notAfter asked of a stock step-ca: lifetime {lifetime}");
        Ok(())
    })
}

/// The lifetime of the first certificate in a PEM file.
fn leaf_lifetime(fullchain: &Path) -> Result<time::Duration, String> {
    let pem =
        pem::parse(fs::read(fullchain).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let (_, leaf) = X509Certificate::from_der(pem.contents()).map_err(|e| e.to_string())?;
    let v = leaf.validity();
    Ok(v.not_after.to_datetime() - v.not_before.to_datetime())
}

/// A request for a new P-256 key's CSR naming `csr_name`, for an order of `order_name`.
fn sign_request(
    csr_name: &str,
    order_name: &str,
    not_after: Option<time::OffsetDateTime>,
) -> SignRequest {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![csr_name.to_owned()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, csr_name);
    let csr = params.serialize_request(&key).unwrap();
    SignRequest {
        csr_der: csr.der().to_vec(),
        csr_verified: false,
        identifiers: vec![Identifier::Dns(order_name.to_owned())],
        not_before: None,
        not_after,
        resume: None,
        replaces: None,
        profile: None,
    }
}

/// Runs `acmeproxy serve` on `cfg` and expects it to exit non-zero within
/// the ready timeout; returns its output.
fn expect_exit(
    tmp: &Path,
    name: &str,
    cfg: &Value,
    password_file: Option<&Path>,
) -> Result<String, String> {
    let path = tmp.join(format!("{name}.json"));
    write_json(&path, cfg)?;
    let log = tmp.join(format!("{name}.log"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_acmeproxy"));
    cmd.arg("serve").arg(&path);
    if let Some(f) = password_file {
        cmd.arg("--issuer-password-file").arg(f);
    }
    let mut child = ChildGuard::spawn("acmeproxy", &mut cmd, &log)?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Err(exited) = child.check_running() {
            if exited.contains("exit status: 0") {
                return Err(format!("{name}: acmeproxy exited with success"));
            }
            return Ok(fs::read_to_string(&log).unwrap_or_default());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{name}: acmeproxy kept running\n{}",
                tail(&log, 20)
            ));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn expect_in(output: &str, needle: &str, what: &str) -> Result<(), String> {
    if output.contains(needle) {
        Ok(())
    } else {
        Err(format!(
            "{what}: expected {needle:?} in the output:\n{output}"
        ))
    }
}

/// One client scenario against a fresh step-ca and server.
fn scenario(client: Client, issuer: Issuer, name: &str) {
    let what = format!("{client} via step-ca ({issuer:?})");
    let Some(tmp) = prepare(&what, Some(client)) else {
        return;
    };
    let result = attempt(client, issuer, name, tmp.path());
    finish(tmp, result, &what);
}

/// A temp dir, or `None` (after a message) when a prerequisite is missing;
/// under `CI` a missing prerequisite is a failure.
fn prepare(what: &str, client: Option<Client>) -> Option<tempfile::TempDir> {
    let missing = match (
        stepca_missing(),
        client.and_then(Client::missing_prerequisite),
    ) {
        (Some(why), _) | (None, Some(why)) => Some(why),
        (None, None) => None,
    };
    if let Some(why) = missing {
        assert!(
            std::env::var_os("CI").is_none(),
            "{what}: {why} (CI is set, so this is a failure)"
        );
        eprintln!("SKIPPED {what}: {why}");
        return None;
    }
    Some(
        tempfile::Builder::new()
            .prefix("acmeproxy-stepca-")
            .tempdir()
            .unwrap(),
    )
}

/// Panics with the logs on failure, keeping the temp dir.
fn finish(tmp: tempfile::TempDir, result: Result<(), String>, what: &str) {
    if let Err(failure) = result {
        let path = tmp.keep();
        eprintln!("{}", tail(&path.join("server.log"), 200));
        eprintln!("{}", tail(&path.join("ca/step-ca.log"), 60));
        panic!(
            "{what} failed: {failure}\n(state kept in {})",
            path.display()
        );
    }
}

fn attempt(client: Client, issuer: Issuer, name: &str, tmp: &Path) -> Result<(), String> {
    // A stock CA (step-ca's default claims: 24h default and maximum) and no
    // lifetime in the RA's ca.json: the RA must leave the lifetime to step-ca.
    let ca = StepCa::start(tmp, None)?;
    let (_dns, acme, ports) = Ports::with_mock_dns(tmp)?;
    let cfg = ra_config(tmp, "data", acme, &ports, &ca, issuer);
    let config_path = tmp.join("ca.json");
    write_json(&config_path, &cfg)?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_acmeproxy"));
    if issuer == Issuer::JwkDownloaded {
        // The bare form, as step-ca is started: `acmeproxy ca.json --issuer-password-file F`.
        cmd.arg(&config_path)
            .arg("--issuer-password-file")
            .arg(ca.dir.join("password"));
    } else {
        cmd.arg("serve").arg(&config_path);
    }
    let server_log = tmp.join("server.log");
    let started = Instant::now();
    let mut server = ChildGuard::spawn("acmeproxy", &mut cmd, &server_log)?;
    let directory = format!("https://127.0.0.1:{acme}/acme/acme/directory");
    wait_for(&mut server, &directory, &ca.root, 200)?;
    let ready = started.elapsed();
    // The clients trust only what /roots.pem serves: step-ca's root.
    let roots = tmp.join("roots.pem");
    let served = pem::parse_many(fetch_roots_pem(acme, &roots)?).map_err(|e| e.to_string())?;
    if served != pem::parse_many(fs::read(&ca.root).unwrap()).map_err(|e| e.to_string())? {
        return Err("/roots.pem does not serve step-ca's root".into());
    }

    let outcome = run_client(
        client,
        &directory,
        &roots,
        name,
        Challenge::Http01,
        &ports,
        &tmp.join("clients"),
    )?;
    let first = verify_cert(&outcome.issued, name, &roots)
        .map_err(|e| format!("issued certificate: {e}"))?;
    let second = verify_cert(&outcome.renewed, name, &roots)
        .map_err(|e| format!("renewed certificate: {e}"))?;
    if first.serial == second.serial {
        return Err(format!(
            "renewal returned the same certificate ({})",
            first.serial
        ));
    }
    let lifetime = leaf_lifetime(&outcome.issued.fullchain)?;
    if lifetime > time::Duration::hours(24) + time::Duration::minutes(2) {
        return Err(format!(
            "the certificate lives {lifetime}, longer than step-ca's default of 24h"
        ));
    }

    // The revocation reached step-ca: its log names the serial (decimal)...
    let revoked = decimal_serial(&outcome.renewed)?;
    let log = fs::read_to_string(&ca.log).unwrap_or_default();
    let provisioner = match issuer {
        Issuer::X5c => "provisioner=ra-x5c".to_owned(),
        _ => format!("provisioner=\"ra-jwk ({})\"", ca.env["JWK_KID"]),
    };
    if !log.lines().any(|l| {
        l.contains("path=/1.0/revoke")
            && l.contains("status=200")
            && l.contains(&format!("serial={revoked}"))
    }) {
        return Err(format!(
            "step-ca's log shows no revocation of serial {revoked}"
        ));
    }
    if !log
        .lines()
        .any(|l| l.contains("path=/1.0/sign") && l.contains(&provisioner))
    {
        return Err(format!("step-ca's log shows no signing by {provisioner}"));
    }
    // ...and step-ca acts on it: mTLS renewal works for the unrevoked
    // certificate and is refused for the revoked one.
    let renew_ok = renew_status(&ca, &outcome.issued)?;
    let renew_revoked = renew_status(&ca, &outcome.renewed)?;
    if renew_ok != 201 || renew_revoked != 401 {
        return Err(format!(
            "step-ca /1.0/renew over mTLS: {renew_ok} for the live certificate (want 201), \
             {renew_revoked} for the revoked one (want 401)"
        ));
    }
    let server_text = fs::read_to_string(&server_log).unwrap_or_default();
    if server_text.contains(&ca.password) {
        return Err("the server log contains the issuer password".into());
    }
    println!(
        "stepcas {client} {issuer:?} {name}: server ready in {:.2}s; issued serial {} (chain of {}), \
         renewed serial {} revoked at step-ca (decimal {revoked}; renew refused 401); \
         lifetime {lifetime} (step-ca's default); wall time issue {:.2}s, renew {:.2}s, revoke {:.2}s",
        ready.as_secs_f64(),
        first.serial,
        first.chain_len,
        second.serial,
        outcome.issue_time.as_secs_f64(),
        outcome.renew_time.as_secs_f64(),
        outcome.revoke_time.as_secs_f64(),
    );
    Ok(())
}

/// Several upstreams (`authority.upstreams`, `routes`): step-ca as
/// "internal" for `*.internal.test`, a Pebble that requires EAB as
/// "sectigo" for the rest. certbot's internal name chains to step-ca's root
/// (and its revocation is in step-ca's log), lego's public name to Pebble's
/// (revoked at Pebble); the RA's own certificate comes from the public route.
#[test]
fn routes_between_stepca_and_pebble() {
    let what = "routes between step-ca and Pebble";
    let Some(tmp) = prepare(what, Some(Client::Certbot)) else {
        return;
    };
    let result = routes_attempt(tmp.path());
    finish(tmp, result, what);
}

fn routes_attempt(tmp: &Path) -> Result<(), String> {
    use kit::pebble::{Pebble, PebbleOptions};
    if let Some(why) = Client::Lego.missing_prerequisite() {
        return Err(why);
    }
    if !Pebble::available() {
        return Err("pebble is not installed".into());
    }
    let ca = StepCa::start(tmp, None)?;
    let rt = runtime();
    let pebble = rt.block_on(Pebble::start(PebbleOptions::default()));
    let pebble_root = tmp.join("pebble-root.pem");
    let pebble_pem = rt.block_on(pebble.root_pem());
    fs::write(&pebble_root, &pebble_pem).map_err(|e| e.to_string())?;
    let both = tmp.join("roots.in.pem");
    let step_pem = fs::read_to_string(&ca.root).map_err(|e| e.to_string())?;
    fs::write(&both, format!("{step_pem}{pebble_pem}")).map_err(|e| e.to_string())?;
    let (_dns, acme, ports) = Ports::with_mock_dns(tmp)?;
    let d = &ca.dir;
    let mut cfg = kit::CaJson::new(tmp.join("data"))
        .port(acme)
        .db(None)
        .authority(json!({
            "upstreams": [
                {"name": "sectigo", "type": "externalcas", "config": pebble.authority_json()["config"]},
                {"name": "internal", "type": "stepcas",
                 "certificateAuthority": ca.url,
                 "certificateAuthorityFingerprint": ca.fingerprint,
                 "certificateIssuer": {"type": "jwk", "provisioner": "ra-jwk",
                     "key": d.join("provisioner/jwk.jwe"), "passwordFile": d.join("password")}}
            ],
            "routes": [
                {"name": "internal", "match": {"dns": ["*.internal.test"]}, "upstreams": ["internal"]},
                {"name": "public", "upstreams": ["sectigo"]}
            ],
            "provisioners": [kit::CaJson::provisioner()],
        }))
        .validation(ports.http01, ports.tls_alpn01, ports.dns, 10)
        .to_json();
    cfg["root"] = json!(both);
    let config_path = tmp.join("ca.json");
    write_json(&config_path, &cfg)?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_acmeproxy"));
    cmd.arg("serve").arg(&config_path);
    let mut server = ChildGuard::spawn("acmeproxy", &mut cmd, &tmp.join("server.log"))?;
    let directory = format!("https://127.0.0.1:{acme}/acme/acme/directory");
    // The RA's own certificate (localhost) came through the public route.
    wait_for(&mut server, &directory, &pebble_root, 200)?;
    let roots = tmp.join("roots.pem");
    fetch_roots_pem(acme, &roots)?;
    for (client, name) in [
        (Client::Certbot, "db.internal.test"),
        (Client::Lego, "www.public.test"),
    ] {
        let outcome = run_client(
            client,
            &directory,
            &roots,
            name,
            Challenge::Http01,
            &ports,
            &tmp.join(format!("clients-{client}")),
        )?;
        let internal = name.ends_with(".internal.test");
        let root = if internal { &ca.root } else { &pebble_root };
        for cert in [&outcome.issued, &outcome.renewed] {
            verify_cert(cert, name, root).map_err(|e| format!("{client} {name}: {e}"))?;
        }
        if internal {
            let revoked = decimal_serial(&outcome.renewed)?;
            let log = fs::read_to_string(&ca.log).unwrap_or_default();
            if !log
                .lines()
                .any(|l| l.contains("path=/1.0/revoke") && l.contains(&format!("serial={revoked}")))
            {
                return Err(format!(
                    "step-ca's log shows no revocation of serial {revoked}"
                ));
            }
        } else {
            let serial = verify_cert(&outcome.renewed, name, root)?
                .serial
                .to_ascii_lowercase();
            let status = rt.block_on(pebble.cert_status(&serial));
            if status != "Revoked" {
                return Err(format!(
                    "Pebble says the revoked serial {serial} is {status:?}"
                ));
            }
        }
        println!("stepcas routes: {client} {name} issued, renewed and revoked through its route");
    }
    Ok(())
}

/// The RA's ca.json for `issuer` against `ca`.
fn ra_config(
    tmp: &Path,
    data: &str,
    port: u16,
    ports: &Ports,
    ca: &StepCa,
    issuer: Issuer,
) -> Value {
    let d = &ca.dir;
    let certificate_issuer = match issuer {
        Issuer::JwkDownloaded => json!({"type": "jwk", "provisioner": "ra-jwk"}),
        Issuer::JwkFile => json!({"type": "jwk", "provisioner": "ra-jwk",
            "key": d.join("provisioner/jwk.jwe"), "passwordFile": d.join("password")}),
        Issuer::X5c => json!({"type": "x5c", "provisioner": "ra-x5c",
            "crt": d.join("x5c/ra.crt"), "key": d.join("x5c/ra.key")}),
    };
    kit::CaJson::new(tmp.join(data))
        .port(port)
        .db(None)
        .authority(json!({
            "type": "stepcas",
            "certificateAuthority": ca.url,
            "certificateAuthorityFingerprint": ca.fingerprint,
            "certificateIssuer": certificate_issuer,
            "provisioners": [kit::CaJson::provisioner()],
        }))
        .validation(ports.http01, ports.tls_alpn01, ports.dns, 10)
        .to_json()
}

/// A running step-ca in `<tmp>/ca`; stopped on drop.
struct StepCa {
    _child: ChildGuard,
    dir: PathBuf,
    url: String,
    fingerprint: String,
    root: PathBuf,
    log: PathBuf,
    password: String,
    env: HashMap<String, String>,
}

impl StepCa {
    /// A CA with step-ca's default claims (`max_duration` None: 24h default
    /// and maximum), or with longer ones.
    fn start(tmp: &Path, max_duration: Option<&str>) -> Result<Self, String> {
        let dir = tmp.join("ca");
        let [port] = free_ports().map_err(|e| e.to_string())?;
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/stepca/init-ca.sh");
        let mut init = Command::new("sh");
        init.arg(script).arg(&dir).arg(port.to_string());
        init.args(max_duration);
        run_bounded(&mut init, READY_TIMEOUT, &tmp.join("init-ca.log"))?;
        let env: HashMap<String, String> = fs::read_to_string(dir.join("env"))
            .map_err(|e| format!("init-ca wrote no env: {e}"))?
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let log = dir.join("step-ca.log");
        let mut cmd = Command::new(stepca_dir().join("bin/step-ca"));
        cmd.arg(dir.join("config/ca.json"))
            .env("STEPPATH", dir.join("steppath"))
            .current_dir(&dir);
        let mut child = ChildGuard::spawn("step-ca", &mut cmd, &log)?;
        let root = dir.join("certs/root_ca.crt");
        let url = env["CA_URL"].clone();
        wait_for(&mut child, &format!("{url}/health"), &root, 200)?;
        Ok(Self {
            _child: child,
            password: fs::read_to_string(dir.join("password")).map_err(|e| e.to_string())?,
            fingerprint: env["FINGERPRINT"].clone(),
            url,
            root,
            log,
            dir,
            env,
        })
    }
}

/// Where build-stepca.sh put its binaries.
fn stepca_dir() -> PathBuf {
    std::env::var_os("ACMEPROXY_STEPCA_DIR")
        .map_or_else(|| PathBuf::from("/var/tmp/acmeproxy-stepca"), PathBuf::from)
}

fn stepca_missing() -> Option<String> {
    let dir = stepca_dir();
    for bin in ["step-ca", "stepca-init"] {
        if !dir.join("bin").join(bin).is_file() {
            return Some(format!(
                "{} is not built (run tests/stepca/build-stepca.sh as root, or `make test-deps`)",
                dir.join("bin").join(bin).display()
            ));
        }
    }
    kit::find_in_path("openssl")
        .is_none()
        .then(|| "openssl is not installed".to_owned())
}

/// Polls `url` until it answers `want` over HTTPS that chains to `root`.
fn wait_for(child: &mut ChildGuard, url: &str, root: &Path, want: u16) -> Result<(), String> {
    kit::wait_https_blocking(url, root, want, READY_TIMEOUT, || child.check_running())
}

/// `POST /1.0/renew` at step-ca over mTLS with `cert` (leaf + chain, key).
fn renew_status(ca: &StepCa, cert: &Issued) -> Result<u16, String> {
    let root = fs::read(&ca.root).map_err(|e| e.to_string())?;
    let mut identity = fs::read(&cert.key).map_err(|e| e.to_string())?;
    identity.extend(fs::read(&cert.fullchain).map_err(|e| e.to_string())?);
    runtime().block_on(status(
        &format!("{}/1.0/renew", ca.url),
        &root,
        Some(&identity),
    ))
}

async fn status(url: &str, root_pem: &[u8], identity: Option<&[u8]>) -> Result<u16, String> {
    let root = reqwest::Certificate::from_pem(root_pem).map_err(|e| format!("root: {e}"))?;
    let mut builder = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .timeout(Duration::from_secs(10));
    let request = match identity {
        Some(pem) => {
            let id = reqwest::Identity::from_pem(pem).map_err(|e| format!("identity: {e}"))?;
            builder = builder.identity(id);
            builder.build().map_err(|e| e.to_string())?.post(url)
        }
        None => builder.build().map_err(|e| e.to_string())?.get(url),
    };
    let rsp = request.send().await.map_err(|e| format!("{e:?}"))?;
    Ok(rsp.status().as_u16())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The leaf's serial number in decimal, as step-ca logs and stores it.
fn decimal_serial(cert: &Issued) -> Result<String, String> {
    let text = fs::read(&cert.fullchain).map_err(|e| e.to_string())?;
    let pem = pem::parse_many(&text).map_err(|e| e.to_string())?;
    let leaf = pem.first().ok_or("no certificate")?;
    let (_, x509) = X509Certificate::from_der(leaf.contents()).map_err(|e| e.to_string())?;
    Ok(x509.serial.to_string())
}

fn write_json(path: &Path, v: &Value) -> Result<(), String> {
    let text = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
    fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}
