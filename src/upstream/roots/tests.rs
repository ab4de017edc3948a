#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, CustomExtension, DnType, IsCa, KeyPair,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// A CA named `cn`; with `aia`, its AIA caIssuers URL.
fn ca_params(cn: &str, aia: Option<&str>) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    if let Some(url) = aia {
        p.custom_extensions.push(aia_extension(url));
    }
    p
}

/// authorityInfoAccess with one caIssuers URL (short DER lengths only).
fn aia_extension(url: &str) -> CustomExtension {
    let oid = [0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x02];
    let mut name = vec![0x86, u8::try_from(url.len()).unwrap()];
    name.extend_from_slice(url.as_bytes());
    let mut desc = vec![0x30, u8::try_from(oid.len() + name.len()).unwrap()];
    desc.extend_from_slice(&oid);
    desc.extend_from_slice(&name);
    let mut seq = vec![0x30, u8::try_from(desc.len()).unwrap()];
    seq.extend_from_slice(&desc);
    CustomExtension::from_oid_content(&[1, 3, 6, 1, 5, 5, 7, 1, 1], seq)
}

struct Pki {
    root: Vec<u8>,
    intermediate: Vec<u8>,
    leaf: Vec<u8>,
}

/// Root → intermediate (AIA `aia`, if given) → leaf.
fn pki(name: &str, aia: Option<&str>) -> Pki {
    let root = CertifiedIssuer::self_signed(
        ca_params(&format!("{name} root"), None),
        KeyPair::generate().unwrap(),
    )
    .unwrap();
    let int = CertifiedIssuer::signed_by(
        ca_params(&format!("{name} intermediate"), aia),
        KeyPair::generate().unwrap(),
        &root,
    )
    .unwrap();
    let leaf = CertificateParams::new(vec!["leaf.test".into()])
        .unwrap()
        .signed_by(&KeyPair::generate().unwrap(), &int)
        .unwrap();
    Pki {
        root: root.der().to_vec(),
        intermediate: int.der().to_vec(),
        leaf: leaf.der().to_vec(),
    }
}

fn sources() -> RootSources {
    RootSources {
        timeout: Duration::from_secs(5),
        ..RootSources::default()
    }
}

fn write_pem(dir: &Path, name: &str, ders: &[&[u8]]) -> PathBuf {
    let path = dir.join(name);
    let text: String = ders
        .iter()
        .map(|d| pem::encode(&pem::Pem::new("CERTIFICATE", d.to_vec())))
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn root_files_must_hold_self_signed_roots() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki("a", None);
    let good = write_pem(dir.path(), "root.pem", &[&p.root]);
    assert_eq!(read_root_files(&[good]).unwrap(), vec![p.root.clone()]);

    let int = write_pem(dir.path(), "int.pem", &[&p.intermediate]);
    let e = read_root_files(&[int]).unwrap_err().to_string();
    assert!(
        e.contains("int.pem") && e.contains("not a self-signed root"),
        "{e}"
    );

    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let e = read_root_files(&[empty]).unwrap_err().to_string();
    assert!(e.contains("no PEM CERTIFICATE"), "{e}");

    let e = read_root_files(&[dir.path().join("missing.pem")])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("missing.pem") && e.contains("cannot be read"),
        "{e}"
    );
}

#[tokio::test]
async fn configured_roots_come_first_and_a_foreign_one_is_warned_about() {
    let p = pki("a", None);
    let other = pki("b", None);
    let chain = [p.leaf.clone(), p.intermediate.clone()];
    let s = RootSources {
        configured: vec![p.root.clone()],
        upstream: vec![other.root.clone()],
        ..sources()
    };
    let r = resolve(&s, &chain).await;
    assert_eq!(r.roots, vec![p.root.clone()]);
    assert_eq!(r.source, Some(RootSource::Configured));
    assert!(r.warning.is_none(), "{:?}", r.warning);

    let s = RootSources {
        configured: vec![other.root.clone()],
        ..sources()
    };
    let r = resolve(&s, &chain).await;
    assert_eq!(r.roots, vec![other.root]);
    assert!(r.warning.unwrap().contains("a intermediate"));
}

#[tokio::test]
async fn the_upstream_root_but_never_an_intermediate() {
    let p = pki("a", None);
    let chain = [p.leaf.clone(), p.intermediate.clone()];
    let s = RootSources {
        upstream: vec![p.intermediate.clone(), p.root.clone()],
        ..sources()
    };
    let r = resolve(&s, &chain).await;
    assert_eq!(r.roots, vec![p.root.clone()]);
    assert_eq!(r.source, Some(RootSource::Upstream));

    // An upstream that knows only the intermediate (Pebble): not served.
    let s = RootSources {
        upstream: vec![p.intermediate.clone()],
        ..sources()
    };
    let r = resolve(&s, &chain).await;
    assert!(r.roots.is_empty());
    assert!(r.warning.unwrap().contains("\"root\""));
}

#[tokio::test]
async fn a_chain_that_ends_at_its_root() {
    let p = pki("a", None);
    let r = resolve(&sources(), &[p.leaf, p.intermediate, p.root.clone()]).await;
    assert_eq!(r.roots, vec![p.root]);
    assert_eq!(r.source, Some(RootSource::Chain));
}

#[tokio::test]
async fn the_trust_store_entry_that_issued_the_top() {
    let p = pki("a", None);
    let other = pki("b", None);
    let s = RootSources {
        trust_store: vec![other.root, other.intermediate, p.root.clone()],
        ..sources()
    };
    let r = resolve(&s, &[p.leaf, p.intermediate]).await;
    assert_eq!(r.roots, vec![p.root]);
    assert_eq!(r.source, Some(RootSource::TrustStore));
}

/// Serves `body` to each of `n` connections on 127.0.0.1; the URL.
async fn serve_once(body: Vec<u8>, n: usize) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for _ in 0..n {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).await.unwrap();
            s.write_all(&body).await.unwrap();
        }
    });
    format!("http://{addr}/root.der")
}

#[tokio::test]
async fn the_aia_ca_issuers_url() {
    // The URL is known before the intermediate that names it: serve the
    // root of a PKI made after binding the port.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/root.der", listener.local_addr().unwrap());
    let p = pki("a", Some(&url));
    let root = p.root.clone();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 2048];
        let _ = s.read(&mut buf).await;
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/pkix-cert\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            root.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&root).await.unwrap();
    });
    let s = RootSources {
        fetch_aia: true,
        ..sources()
    };
    let r = resolve(&s, &[p.leaf.clone(), p.intermediate.clone()]).await;
    assert_eq!(r.roots, vec![p.root.clone()]);
    assert_eq!(r.source, Some(RootSource::Aia));

    // Something else at the URL: no root, and the reason.
    let wrong = serve_once(pki("b", None).root, 1).await;
    let q = pki("c", Some(&wrong));
    let r = resolve(&s, &[q.leaf, q.intermediate]).await;
    assert!(r.roots.is_empty());
    assert!(r.warning.is_some());
}
