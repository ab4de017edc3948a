use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use rcgen::PKCS_ED25519;
use x509_parser::extensions::{GeneralName, ParsedExtension};

use super::*;
use crate::upstream::NoCheckpoint;

/// A fixed RSA-2048 test key: ring cannot generate RSA keys.
const RSA_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDHkHGhEmmTsagz
J4QrDprNanwSnjDWO4fwvr0A70sd+e+TEm1r82Kibqy0ssbe9T87kK7bSJYTDuHU
mpCVF0LHCvLgEPfMsCVNcnzupXCIcEmGOoGZlHUPCeOYS5jKdVdI9OX4A+SjCWVK
h8+fAAC0Mqmh1x3OdZZ6vIXlkyvEeNtoMaA4K3dUaHoH3GpxRYbZhLpOk3DtnNwA
d+v1Z+DL7rzj7eQlt1xJ40sAncLCPWpiUS1caReyMEtkqUtLKp6ftJh81nPwutRC
7EqBX1lLo1A8FQgeOOM3Q42L85UZd8+HbbsVlLe2rzYf3xi8rW3veFubbvOGgoIz
iyl86G/rAgMBAAECggEANqz07NfyFBR7DFTZycAtGnV/u8wafj9+La/ccZqeHn7h
LA7C6u4aSn1/FNzcTq6rneK0fYDEGUGdDtYwIaDnW0g9JbWQZsSl27Ov1eR+0erN
whhadJzve2jOseWYXXPLr8HlFc/fPunulf5inGHwT26H+j7JPE0MJuFq3+yz85Zb
Kyxkm/pJCB5px36uRDAsCq8MXPaVsKySx8h6I/ua44s+IY4+xN9bCHA+jvs6JVtK
+hd4KJ6yk50kNNi/+2Pwarjha+DoX8/9K/XOBhhZ0H0Urg+j6YhAAqPgaMr6OIff
Hzwqvh9vKHi3nH/a/QAZg3YxcgYyNa2i1bG1t16WgQKBgQDtMKK03jsP4w3xuAVr
Jty3wm7MD93GNLj23L3haE6Hd+ndBSlWIDhOMUVMlN+EqXR7itznLC+qOQMFptu6
sPAPekJGktpe43rqCm6IZTw4fllpKl3fCcGv7ZJSoR2IoPWZB0FejkeKRqF7PG4Q
PScpdB+oxc0NJduHmORQSiePgQKBgQDXY/DfCrY58QI5IJAIuU4NMM4LN0oT7KXw
nJrh8kuHqbC3n80rNVmH30UIzeFfBCBu9fzB4omUkBmJGAgxqsaR/QPoeBzbRwBi
RPA3qgeDQITgUPbT3E9ts8ij5IWNBBaEVKfGQCsemNbCWWE6nX4P6BIs4enIYbH8
SfYB1on1awKBgQC296ybr06KS9GG5Dix1rGuwzrrCVY/vo3sSI3lIqxpTfRGfePM
P2CP2OwnTjQ6RunHH3CWl3xRaFdPdc7Mbg9RMTOM812mkv5PKirn5ogU4EqimH7/
Pax+xNn6CbUZn2i1WmZvxXukTCXnRc91kWbzUFPXwnYSLWDycdu1n+5ygQKBgDeP
9nDzCHMF8vbdqYo2kyXf8yb9ikR9hYj+PQ4QPN+wLIAR3xFIX+Im/F37Dio+nEdD
eYJid+81BQFSi7qUPUknpbxwT7FZLYYsFnOlju6S1DQxbprUeEDqYdW1e6YW6eAV
HnqLzxPDhZL5D5XZTs23pgih9nbUjN9yDN4Ig+olAoGAC1V93MA/KRnHHEwUD5je
OGtEGydbNhoE8w0yzjmUGPZWfilZVJkH6WTGCxJ+OmLOlFwE89olUBk4P+NNEII9
WK6DNM1m1RR5/74mjHZ3zwtp6wbmBcClZB7Yy2yEZM47Nl+UmjR1694sP54ldhrs
KY+0YUUDO5EGMG8ZfORW3UY=
-----END PRIVATE KEY-----
";

fn open(dir: &Path, lifetime_secs: u64) -> Result<SoftCas, UpstreamError> {
    SoftCas::open(SoftCasOptions {
        dir: dir.to_owned(),
        name: "acmeproxy".to_owned(),
        default_lifetime: std::time::Duration::from_secs(lifetime_secs),
        sign_delay: std::time::Duration::ZERO,
    })
}

/// A request whose CSR names `csr_name` but whose identifiers are `ids`.
fn request(key: &KeyPair, csr_name: &str, ids: Vec<Identifier>) -> SignRequest {
    let params = CertificateParams::new(vec![csr_name.to_owned()]).unwrap();
    let csr = params.serialize_request(key).unwrap();
    let (not_before, not_after, resume, replaces) = (None, None, None, None);
    let csr_der = csr.der().to_vec();
    SignRequest {
        csr_der,
        csr_verified: false,
        identifiers: ids,
        not_before,
        not_after,
        resume,
        replaces,
        profile: None,
    }
}

fn ids() -> Vec<Identifier> {
    let dns = |n: &str| Identifier::Dns(n.to_owned());
    let ip = |a: &str| Identifier::Ip(a.parse().unwrap());
    vec![
        dns("www.example.test"),
        dns("*.example.test"),
        ip("192.0.2.7"),
        ip("2001:db8::1"),
    ]
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    X509Certificate::from_der(der).unwrap().1
}

fn kind(err: UpstreamError) -> Option<ProblemType> {
    match err {
        UpstreamError::Rejected { kind, .. } => Some(kind),
        _ => None,
    }
}

/// Checks the chain with x509-parser only, never with rcgen.
fn check_chain(chain: &IssuedChain, ids: &[Identifier], rsa: bool) {
    let [leaf, int, root] = chain.certificates.as_slice() else {
        panic!("expected leaf, intermediate and root");
    };
    let (leaf, int, root) = (parse(leaf), parse(int), parse(root));
    assert_eq!(
        (leaf.issuer(), int.issuer()),
        (int.subject(), root.subject())
    );
    assert_eq!(root.issuer(), root.subject());
    leaf.verify_signature(Some(int.public_key())).unwrap();
    int.verify_signature(Some(root.public_key())).unwrap();
    root.verify_signature(None).unwrap();
    let path_len = |c: &X509Certificate<'_>| {
        let bc = c.basic_constraints().unwrap().unwrap().value;
        (bc.ca, bc.path_len_constraint)
    };
    assert_eq!(path_len(&leaf), (false, None));
    assert_eq!(
        (path_len(&int), path_len(&root)),
        ((true, Some(0)), (true, Some(1)))
    );

    let sans = &leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    let got: Vec<String> = sans
        .iter()
        .map(|name| match name {
            GeneralName::DNSName(dns) => (*dns).to_owned(),
            GeneralName::IPAddress([a, b, c, d]) => IpAddr::from([*a, *b, *c, *d]).to_string(),
            GeneralName::IPAddress(v6) => {
                IpAddr::from(<[u8; 16]>::try_from(*v6).unwrap()).to_string()
            }
            other => panic!("unexpected SAN {other:?}"),
        })
        .collect();
    let want: Vec<String> = ids.iter().map(Identifier::value).collect();
    assert_eq!(got, want, "SANs are exactly the identifiers, not the CSR's");
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
    assert_eq!(ku.key_encipherment(), rsa);
    let key_id = |c: &X509Certificate<'_>, authority: bool| {
        c.iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(a) if authority => {
                    a.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                ParsedExtension::SubjectKeyIdentifier(k) if !authority => Some(k.0.to_vec()),
                _ => None,
            })
    };
    assert_eq!(key_id(&leaf, true).unwrap(), key_id(&int, false).unwrap());
    assert!(leaf.raw_serial().len() >= 16 && leaf.raw_serial()[0] & 0x80 == 0);
    let cn = leaf
        .subject()
        .iter_common_name()
        .next()
        .map(|c| c.as_str().unwrap());
    assert_eq!(cn, Some("www.example.test"));
}

/// `openssl verify` as a second, independent check, when openssl is installed.
fn openssl_verify(dir: &Path, chain: &IssuedChain) {
    if Command::new("openssl").arg("version").output().is_err() {
        return;
    }
    for (name, der) in ["leaf.pem", "int.pem", "root.pem"]
        .iter()
        .zip(&chain.certificates)
    {
        fs::write(
            dir.join(name),
            pem::encode(&pem::Pem::new("CERTIFICATE", der.clone())),
        )
        .unwrap();
    }
    let out = Command::new("openssl")
        .args([
            "verify",
            "-x509_strict",
            "-purpose",
            "sslserver",
            "-CAfile",
            "root.pem",
        ])
        .args(["-untrusted", "int.pem", "leaf.pem"])
        .current_dir(dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "leaf.pem: OK");
}

#[test]
fn reopening_reuses_the_ca_and_refuses_a_broken_set() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("softcas");
    let first = open(&dir, 3600).unwrap();
    let files = [ROOT_CRT, ROOT_KEY, INTERMEDIATE_CRT, INTERMEDIATE_KEY];
    let read_all = || files.map(|f| fs::read(dir.join(f)).unwrap());
    let before = read_all();
    let second = open(&dir, 3600).unwrap();
    assert_eq!(before, read_all());
    assert_eq!(first.roots(), second.roots());
    assert_eq!(first.intermediate_der(), second.intermediate_der());
    assert_eq!(
        pem::parse(second.root_pem()).unwrap().contents(),
        second.roots()[0]
    );
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        (mode(&dir.join(ROOT_KEY)), mode(&dir.join(INTERMEDIATE_KEY))),
        (0o600, 0o600)
    );
    assert_eq!(mode(&dir), 0o700);
    let root = parse(&second.root_der);
    let cn = root
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap();
    assert_eq!(cn, "acmeproxy Root CA");
    let validity = root.validity();
    let lifetime = validity.not_after.to_datetime() - validity.not_before.to_datetime();
    assert!(lifetime > time::Duration::days(3649));

    fs::remove_file(dir.join(INTERMEDIATE_CRT)).unwrap();
    let err = open(&dir, 3600).unwrap_err().to_string();
    assert!(err.contains("intermediate.crt is missing"), "{err}");
    assert!(!dir.join(INTERMEDIATE_CRT).exists(), "nothing regenerated");
    assert_eq!(fs::read(dir.join(ROOT_KEY)).unwrap(), before[1]);
    fs::write(dir.join(INTERMEDIATE_CRT), &before[2]).unwrap();
    fs::write(
        dir.join(INTERMEDIATE_KEY),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = open(&dir, 3600).unwrap_err().to_string();
    assert!(err.contains("intermediate.key is corrupt"), "{err}");
    fs::write(dir.join(ROOT_CRT), "garbage").unwrap();
    let err = open(&dir, 3600).unwrap_err().to_string();
    assert!(err.contains("root.crt is corrupt"), "{err}");
}

#[tokio::test]
async fn issues_verifiable_chains_for_ec_ed25519_and_rsa_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = open(tmp.path(), 7200).unwrap();
    let keys = [
        (
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap(),
            false,
        ),
        (KeyPair::generate_for(&PKCS_ED25519).unwrap(), false),
        (KeyPair::from_pem(RSA_KEY).unwrap(), true),
    ];
    for (key, rsa) in keys {
        let req = request(&key, "not-asked-for.example", ids());
        let now = OffsetDateTime::now_utc();
        let chain = ca.create_certificate(&req, &NoCheckpoint).await.unwrap();
        check_chain(&chain, &ids(), rsa);
        assert_eq!(
            chain.certificates[1..],
            [ca.intermediate_der().to_vec(), ca.roots()[0].clone()]
        );
        let validity = parse(&chain.certificates[0]).validity().clone();
        let (nb, na) = (
            validity.not_before.to_datetime(),
            validity.not_after.to_datetime(),
        );
        assert!(nb <= now && now - nb <= time::Duration::minutes(2));
        assert!((na - now - time::Duration::hours(2)).abs() <= time::Duration::seconds(5));
        openssl_verify(tmp.path(), &chain);
    }
}

#[tokio::test]
async fn honours_requested_validity_within_the_intermediate() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = open(tmp.path(), 3600).unwrap();
    let key = KeyPair::generate().unwrap();
    let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    let mut req = request(
        &key,
        "x.example",
        vec![Identifier::Ip("10.0.0.1".parse().unwrap())],
    );
    (req.not_before, req.not_after) = (Some(now), Some(now + time::Duration::days(10)));
    let chain = ca.create_certificate(&req, &NoCheckpoint).await.unwrap();
    let leaf = parse(&chain.certificates[0]);
    assert_eq!(leaf.validity().not_before.to_datetime(), now);
    assert_eq!(
        leaf.validity().not_after.to_datetime(),
        now + time::Duration::days(10)
    );
    assert_eq!(
        leaf.subject().iter_common_name().count(),
        0,
        "IP-only: no CN"
    );

    req.not_after = Some(now + time::Duration::days(365 * 50));
    let chain = ca.create_certificate(&req, &NoCheckpoint).await.unwrap();
    let end = parse(&chain.certificates[0])
        .validity()
        .not_after
        .to_datetime();
    assert_eq!(
        end,
        parse(ca.intermediate_der())
            .validity()
            .not_after
            .to_datetime()
    );

    req.not_after = Some(now - time::Duration::days(1));
    let err = ca
        .create_certificate(&req, &NoCheckpoint)
        .await
        .unwrap_err();
    assert_eq!(kind(err), Some(ProblemType::Malformed));
    req.csr_der[40] ^= 1;
    let err = ca
        .create_certificate(&req, &NoCheckpoint)
        .await
        .unwrap_err();
    assert_eq!(kind(err), Some(ProblemType::BadCsr));
}

#[tokio::test]
async fn revoking_twice_is_already_revoked() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = open(tmp.path(), 3600).unwrap();
    let key = KeyPair::generate().unwrap();
    let chain = ca
        .create_certificate(&request(&key, "a.example", ids()), &NoCheckpoint)
        .await
        .unwrap();
    let serial = hex(parse(&chain.certificates[0]).raw_serial());
    let certificate_der = chain.certificates[0].clone();
    let mut req = RevokeRequest {
        certificate_der,
        serial_hex: serial.clone(),
        reason: 7,
    };
    let err = ca.revoke_certificate(&req).await.unwrap_err();
    assert_eq!(kind(err), Some(ProblemType::BadRevocationReason));
    req.reason = 1;
    ca.revoke_certificate(&req).await.unwrap();
    assert!(ca.is_revoked(&serial));
    let json: serde_json::Value =
        serde_json::from_slice(&fs::read(tmp.path().join(REVOKED)).unwrap()).unwrap();
    assert_eq!(json[normalize_serial(&serial)]["reason"], 1);

    let by_serial = RevokeRequest {
        certificate_der: Vec::new(),
        serial_hex: serial.to_uppercase(),
        reason: 4,
    };
    let err = ca.revoke_certificate(&by_serial).await.unwrap_err();
    assert_eq!(kind(err), Some(ProblemType::AlreadyRevoked));
    let reopened = open(tmp.path(), 3600).unwrap();
    assert!(reopened.is_revoked(&serial));
    let err = reopened.revoke_certificate(&req).await.unwrap_err();
    assert_eq!(kind(err), Some(ProblemType::AlreadyRevoked));

    let other = tempfile::tempdir().unwrap();
    let foreign = open(other.path(), 3600).unwrap();
    let chain = foreign
        .create_certificate(&request(&key, "a.example", ids()), &NoCheckpoint)
        .await
        .unwrap();
    req.certificate_der = chain.certificates[0].clone();
    let err = ca.revoke_certificate(&req).await.unwrap_err();
    assert_eq!(kind(err), Some(ProblemType::Unauthorized));
}

/// softcas checks the CSR's signature unless the RA says it has
/// (`csr_verified`, set by finalize's worker after `policy::csr::parse_csr`).
#[tokio::test]
async fn checks_the_csr_signature_unless_the_ra_verified_it() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = open(tmp.path(), 7200).unwrap();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut req = request(&key, "a.example", ids());
    // Flip a bit of the signature (the last bytes of the DER).
    let last = req.csr_der.len() - 1;
    req.csr_der[last] ^= 1;
    let err = ca
        .create_certificate(&req, &NoCheckpoint)
        .await
        .unwrap_err();
    assert_eq!(kind(err), Some(ProblemType::BadCsr));

    req.csr_verified = true;
    let chain = ca.create_certificate(&req, &NoCheckpoint).await.unwrap();
    check_chain(&chain, &ids(), false);
}
