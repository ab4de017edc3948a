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
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use instant_acme::OrderStatus;

use acmeproxy_testkit as kit;
use kit::clients::{Challenge, Client, Ports, run_client, verify_issued_and_renewed};
use kit::crash_support::{CALL_LIMIT, bounded, issue, new_account};
use kit::haproxy::Haproxy;
use kit::postgres::PgServer;
use kit::procs::{ChildGuard, free_ports};
use kit::{CaJson, MockDns, Responders};

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One replica: `acmeproxy serve` on its own data directory and port.
struct Replica {
    child: ChildGuard,
    port: u16,
    data: PathBuf,
}

/// The database, the replicas and haproxy in front of them.
struct Cluster {
    pg: PgServer,
    replicas: Vec<Replica>,
    lb: Haproxy,
    root: PathBuf,
    ports: Ports,
    _dns: Option<MockDns>,
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
    Ok(Replica { child, port, data })
}

impl Cluster {
    /// For real clients: their own responders, a mock DNS with TXT records
    /// from a directory.
    fn start(tmp: &Path, replicas: usize) -> Result<Self, String> {
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
        let mut cluster = Self::start_with(tmp, replicas, ports)?;
        cluster._dns = Some(dns);
        Ok(cluster)
    }

    /// Replicas validating through `ports`.
    fn start_with(tmp: &Path, replicas: usize, ports: Ports) -> Result<Self, String> {
        let pg = PgServer::start()?;
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
            pg,
            replicas: all,
            lb,
            root,
            ports,
            _dns: None,
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

/// Ports for the replicas' validator from in-process responders.
fn responder_ports(responders: &Responders, tmp: &Path) -> Ports {
    Ports {
        http01: responders.http_port(),
        tls_alpn01: responders.tls_alpn_port(),
        dns: responders.dns_addr(),
        dns_records: tmp.join("unused-dns-records"),
    }
}

/// Three replicas validating against in-process responders, in a directory
/// kept on failure (the logs).
async fn responder_cluster() -> (PathBuf, Responders, Cluster) {
    let tmp = tempfile::Builder::new()
        .prefix("acmeproxy-replicas-")
        .tempdir()
        .unwrap()
        .keep();
    let responders = Responders::start().await;
    let ports = responder_ports(&responders, &tmp);
    let dir = tmp.clone();
    let cluster = tokio::task::spawn_blocking(move || Cluster::start_with(&dir, 3, ports))
        .await
        .unwrap()
        .unwrap();
    (tmp, responders, cluster)
}

/// `flows` issuances through haproxy, `concurrency` at once, over `accounts`
/// accounts; `after(n)` runs once when `n` flows are done. Returns the
/// failures.
async fn run_flows(
    lb_directory: &str,
    root: &Path,
    responders: &Responders,
    flows: usize,
    concurrency: usize,
    at: usize,
    after: impl FnOnce(),
) -> Vec<String> {
    let mut accounts = Vec::new();
    for _ in 0..4 {
        accounts.push(Arc::new(new_account(root, lb_directory).await.1));
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..flows {
        let account = accounts[i % accounts.len()].clone();
        let permits = permits.clone();
        let responders = responders.clone();
        let done = done.clone();
        let name = format!("k{i}.replicas.test");
        tasks.spawn(async move {
            let permit = permits.acquire_owned().await.unwrap();
            let serve = |t: &str, k: &str| responders.set_http01(t, k);
            issue(&account, &name, serve).await;
            done.fetch_add(1, Ordering::SeqCst);
            drop(permit);
        });
    }
    let mut after = Some(after);
    let mut failures = Vec::new();
    loop {
        if done.load(Ordering::SeqCst) >= at {
            if let Some(f) = after.take() {
                f();
            }
        }
        match tokio::time::timeout(Duration::from_millis(100), tasks.join_next()).await {
            Ok(Some(Ok(()))) | Err(_) => {}
            Ok(Some(Err(e))) => failures.push(e.to_string()),
            Ok(None) => break,
        }
    }
    failures
}

/// 300 flows through haproxy; replica 1 is SIGKILLed after 100: every flow
/// still completes (haproxy sends a request whose replica died to another
/// one; the dead replica's finalize jobs resume elsewhere after their lease).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_flow_completes_when_a_replica_is_killed() {
    if skip("the replica kill test") {
        return;
    }
    let (tmp, responders, cluster) = responder_cluster().await;
    let cluster = Arc::new(std::sync::Mutex::new(cluster));
    let (directory, root) = {
        let c = cluster.lock().unwrap();
        (c.lb.directory_url(), c.root.clone())
    };
    let started = std::time::Instant::now();
    let killer = cluster.clone();
    let failures = run_flows(&directory, &root, &responders, 300, 16, 100, move || {
        let status = killer.lock().unwrap().replicas[1].child.sigkill();
        println!("replicas: replica 1 SIGKILLed after 100 flows ({status})");
    })
    .await;
    let cluster = cluster.lock().unwrap();
    println!(
        "replicas: 300 flows with a replica killed: {} failed, {:.1} s; requests per replica {:?}",
        failures.len(),
        started.elapsed().as_secs_f64(),
        cluster.lb.requests_per_replica()
    );
    assert!(
        failures.is_empty(),
        "{failures:#?} (logs under {})",
        tmp.display()
    );
    drop(cluster);
    let _ = fs::remove_dir_all(&tmp);
}

/// PostgreSQL restarted under the replicas: `/ready` is 503 on each while
/// it is down and 200 after; every order acknowledged before is still there
/// and valid, and new flows complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgresql_restart_loses_nothing_acknowledged() {
    if skip("the PostgreSQL restart test") {
        return;
    }
    let (tmp, responders, cluster) = responder_cluster().await;
    let directory = cluster.lb.directory_url();
    let (_, account, _) = new_account(&cluster.root, &directory).await;
    let serve = |t: &str, k: &str| responders.set_http01(t, k);
    let mut before = Vec::new();
    for i in 0..10 {
        before.push(issue(&account, &format!("pg{i}.replicas.test"), serve).await);
    }
    let root = reqwest::Certificate::from_pem(&fs::read(&cluster.root).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(root)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let ready = |port: u16| {
        let http = http.clone();
        async move {
            http.get(format!("https://localhost:{port}/ready"))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    let wait_all = |want: u16| {
        let ports: Vec<u16> = cluster.replicas.iter().map(|r| r.port).collect();
        let ready = &ready;
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let mut all = true;
                for p in &ports {
                    all &= ready(*p).await == want;
                }
                if all {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "/ready never answered {want} on every replica"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    cluster.pg.stop().unwrap();
    let down = std::time::Instant::now();
    wait_all(503).await;
    println!(
        "replicas: /ready 503 on every replica {:.1} s after PostgreSQL stopped",
        down.elapsed().as_secs_f64()
    );
    cluster.pg.start_again().unwrap();
    let up = std::time::Instant::now();
    wait_all(200).await;
    println!(
        "replicas: /ready 200 on every replica {:.1} s after PostgreSQL started",
        up.elapsed().as_secs_f64()
    );
    for issued in &before {
        let mut order = bounded(
            "order after the restart",
            CALL_LIMIT,
            account.order(issued.order_url.clone()),
        )
        .await
        .unwrap();
        assert_eq!(order.state().status, OrderStatus::Valid);
        assert_eq!(
            order.state().certificate.as_deref(),
            Some(issued.cert_url.as_str())
        );
    }
    for i in 0..10 {
        issue(&account, &format!("after{i}.replicas.test"), serve).await;
    }
    drop(cluster);
    let _ = fs::remove_dir_all(&tmp);
}
