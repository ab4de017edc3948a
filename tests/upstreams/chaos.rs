//! The random crash campaign (issue 12): orders flow through the real
//! `acmeproxy` binary (sled store) to Pebble as an EAB-requiring external ACME
//! CA that rejects 5 % of good nonces, while the RA is SIGKILLed at random
//! moments and Pebble is restarted (forgetting every account and order).
//! Afterwards every order the clients made is `valid`, Pebble issued exactly
//! one certificate per order plus the RA's own, no finalize job is left in
//! the store, and no log holds a panic.
//!
//! `campaign_short` (100 orders, 3 kills, 2 Pebble restarts) runs in the
//! suite; `campaign_full` (1,000 orders, 10 kills) is ignored and runs from
//! `make chaos`. `CHAOS_SEED` repeats a run; the seed is printed either way.
//!
//! Pebble keeps its state in memory, so a restart loses the certificates of
//! upstream orders it had issued but the RA had not yet downloaded; a real CA
//! keeps them. So that the count stays exact, Pebble is restarted only after
//! the clients have paused and every order in flight is `valid`; the clients
//! then resume while Pebble is still down, so that finalize jobs meet a
//! refusing upstream and retry. Debian's Pebble 2.4 deadlocks under many
//! concurrent requests, so the RA runs with `upstreamConcurrency` 4.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use acmeproxy_testkit as kit;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use acmeproxy::store::sled::SledStore;
use acmeproxy::store::{Store, Table};
use instant_acme::{AuthorizationStatus, ChallengeType, Identifier, NewOrder, OrderStatus};
use tokio::sync::{RwLock, Semaphore};

use kit::Responders;
use kit::crash_support::{Binary, leaf_sans, leaf_serial, new_account, serial_hex, temp_dir};
use kit::pebble::{Pebble, PebbleOptions};

/// One campaign's shape.
struct Campaign {
    orders: usize,
    kills: usize,
    pebble_restarts: usize,
    /// Client flows at once.
    concurrency: usize,
}

/// How long one order may take, restarts included.
const ORDER_LIMIT: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn campaign_short() {
    run(Campaign {
        orders: 100,
        kills: 3,
        pebble_restarts: 2,
        concurrency: 8,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "the full campaign (make chaos); campaign_short runs in the suite"]
async fn campaign_full() {
    run(Campaign {
        orders: 1000,
        kills: 10,
        pebble_restarts: 2,
        concurrency: 16,
    })
    .await;
}

/// splitmix64: a seeded sequence, so that a run can be repeated.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `lo..hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
}

async fn run(c: Campaign) {
    if !super::pebble::pebble_or_skip() {
        return;
    }
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!(
        "chaos: seed {seed} (CHAOS_SEED={seed} repeats it): {} orders, {} kills, {} Pebble restarts",
        c.orders, c.kills, c.pebble_restarts
    );
    let mut rng = Rng(seed);
    let t0 = Instant::now();

    let mut pebble = Pebble::start(PebbleOptions {
        nonce_reject: 5,
        ..PebbleOptions::default()
    })
    .await;
    let responders = Arc::new(Responders::start().await);
    let tmp = temp_dir();
    let root = tmp.path().join("pebble-root.pem");
    std::fs::write(&root, pebble.root_pem().await).unwrap();
    let data = tmp.path().join("data");
    let mut authority = pebble.authority_json();
    authority["upstreamConcurrency"] = 4.into();
    let ca = kit::CaJson::new(&data)
        .db(Some("sled"))
        .authority(authority)
        .validation(
            responders.http_port(),
            responders.tls_alpn_port(),
            responders.dns_addr(),
            10,
        );
    let ra = Binary::with_config(tmp.path(), ca, root.clone());
    let mut starts = 1;
    let mut server = ra.start().await;
    assert_eq!(pebble.issued_count(), 1, "the RA's own certificate");

    // The moments (as counts of finished orders) of each kill and restart.
    let mut kills: Vec<usize> = (0..c.kills)
        .map(|_| rng.between(1, c.orders as u64 * 9 / 10) as usize)
        .collect();
    kills.sort_unstable();
    let restarts: Vec<usize> = (1..=c.pebble_restarts)
        .map(|i| c.orders * i / (c.pebble_restarts + 1))
        .collect();
    eprintln!("chaos: kills after about {kills:?} orders; Pebble restarts at {restarts:?}");

    let done = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    // Clients hold it shared per order; a Pebble restart takes it exclusively
    // (so that it happens with no order in flight).
    let gate = Arc::new(RwLock::new(()));
    let slots = Arc::new(Semaphore::new(c.concurrency));
    let (_, account, _) = new_account(&root, &ra.directory_url).await;
    let account = Arc::new(account);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..c.orders {
        let permit = slots.clone().acquire_owned().await.unwrap();
        let guard = gate.clone().read_owned().await;
        let (account, responders, finished) = (account.clone(), responders.clone(), done.clone());
        started.fetch_add(1, Ordering::SeqCst);
        tasks.spawn(async move {
            let name = format!("o{i}.chaos.test");
            let chain = drive(&account, &name, &responders).await;
            drop(guard);
            drop(permit);
            finished.fetch_add(1, Ordering::SeqCst);
            (name, chain)
        });

        // Kills land while orders are in flight, after a random delay.
        while kills.first().is_some_and(|&k| k <= i) {
            kills.remove(0);
            tokio::time::sleep(Duration::from_millis(rng.between(0, 1500))).await;
            let status = server.sigkill();
            eprintln!(
                "chaos: SIGKILL of the RA ({status}) with {} of {} orders done",
                done.load(Ordering::SeqCst),
                started.load(Ordering::SeqCst)
            );
            server = ra.start().await;
            starts += 1;
        }
        if restarts.contains(&(i + 1)) {
            // Pause the clients until nothing is in flight, then stop Pebble
            // and let the clients go on against a refusing upstream.
            let pause = gate.write().await;
            pebble.stop();
            eprintln!(
                "chaos: Pebble stopped with {} orders done",
                done.load(Ordering::SeqCst)
            );
            drop(pause);
            tokio::time::sleep(Duration::from_millis(rng.between(1000, 3000))).await;
            pebble.restart().await;
            eprintln!("chaos: Pebble started again");
        }
    }
    let mut names = HashSet::new();
    let mut failures = Vec::new();
    let mut serials = HashSet::new();
    while let Some(joined) = tasks.join_next().await {
        let (name, chain) = joined.unwrap();
        match chain {
            Ok(chain) => {
                assert_eq!(leaf_sans(&chain), vec![name.clone()]);
                serials.insert(leaf_serial(&chain).unwrap());
                names.insert(name);
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "orders that did not become valid:\n{}",
        failures.join("\n")
    );
    assert_eq!(names.len(), c.orders);
    assert_eq!(
        serials.len(),
        c.orders,
        "one distinct certificate per order"
    );

    // Pebble issued one certificate per order, plus the RA's own.
    let issued = pebble.issued();
    assert_eq!(
        issued.len(),
        c.orders + 1,
        "Pebble issued {} certificates for {} orders plus the RA's own",
        issued.len(),
        c.orders
    );
    let pebble_serials: HashSet<String> = issued.iter().map(|(s, _)| serial_hex(s)).collect();
    for serial in &serials {
        assert!(
            pebble_serials.contains(serial),
            "serial {serial} not in Pebble's log"
        );
    }

    // No job is left; no panic in any log.
    server.sigterm();
    let status = server.wait_exit(Duration::from_secs(20)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "graceful stop: {status:?}"
    );
    let jobs = open_and_count_jobs(&data.join("db")).await;
    assert_eq!(jobs, 0, "finalize jobs left in the store");
    let log = std::fs::read_to_string(ra.log()).unwrap();
    assert!(
        !log.contains("panicked"),
        "a panic in {}",
        ra.log().display()
    );
    assert!(!pebble.log().contains("panic"), "a panic in Pebble's log");
    eprintln!(
        "chaos: seed {seed}: {} orders valid, {} certificates at Pebble (one per order + the RA's own), \
         {} RA starts, 0 jobs left, no panic; {:.0}s",
        c.orders,
        issued.len(),
        starts,
        t0.elapsed().as_secs_f64()
    );
}

/// Drives one order to a certificate, riding over a killed RA (refused
/// connections, lost answers, `badNonce`): each step is retried after a pause
/// until the order is `valid`, from the order's own state.
async fn drive(
    account: &instant_acme::Account,
    name: &str,
    responders: &Responders,
) -> Result<String, String> {
    let deadline = Instant::now() + ORDER_LIMIT;
    let pause = || tokio::time::sleep(Duration::from_millis(250));
    let ids = [Identifier::Dns(name.to_owned())];
    let mut order = loop {
        match account.new_order(&NewOrder::new(&ids)).await {
            Ok(order) => break order,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                pause().await;
            }
            Err(e) => return Err(format!("newOrder: {e}")),
        }
    };
    let mut last = String::new();
    while Instant::now() < deadline {
        let status = match order.refresh().await {
            Ok(state) => state.status,
            Err(e) => {
                last = e.to_string();
                pause().await;
                continue;
            }
        };
        match status {
            OrderStatus::Pending => {
                let mut authzs = order.authorizations();
                while let Some(authz) = authzs.next().await {
                    let mut authz = match authz {
                        Ok(authz) => authz,
                        Err(e) => {
                            last = e.to_string();
                            break;
                        }
                    };
                    if authz.status != AuthorizationStatus::Pending {
                        continue;
                    }
                    let Some(mut challenge) = authz.challenge(ChallengeType::Http01) else {
                        return Err("no http-01 challenge".into());
                    };
                    responders.set_http01(&challenge.token, challenge.key_authorization().as_str());
                    if let Err(e) = challenge.set_ready().await {
                        last = e.to_string();
                    }
                }
            }
            OrderStatus::Ready => {
                if let Err(e) = order.finalize().await {
                    last = e.to_string();
                }
            }
            OrderStatus::Processing => {}
            OrderStatus::Valid => match order.certificate().await {
                Ok(Some(chain)) => return Ok(chain),
                Ok(None) => last = "valid without a certificate".into(),
                Err(e) => last = e.to_string(),
            },
            OrderStatus::Invalid => {
                let url = order.url().to_owned();
                return Err(format!("{url} is invalid: {:?}", order.state().error));
            }
        }
        pause().await;
    }
    Err(format!(
        "{} not valid within {ORDER_LIMIT:?}: {last}",
        order.url()
    ))
}

async fn open_and_count_jobs(path: &Path) -> u64 {
    let store = SledStore::open(path).unwrap();
    store.count(Table::Jobs).await.unwrap()
}
