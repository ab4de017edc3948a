//! Building the running server and serving HTTPS (and metrics) until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration as StdDuration;

use anyhow::Context;
use time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::{SHUTDOWN_GRACE, create_private_dir, open_store, provisioners, shutdown_on_signals};
use crate::config::{Settings, Upstream};
use crate::http::ready::CachedReadiness;
use crate::http::{AppState, router_with};
use crate::model::{Clock, SystemClock};
use crate::ra::{Authority, AuthorityOptions, FinalizeWorker, RetentionPolicy, RetentionWorker};
use crate::store::{Records, Store};
use crate::tls::{ServerIdentity, TlsOptions};
use crate::upstream::CertificateAuthorityService;
use crate::upstream::acme::{AcmeUpstream, AcmeUpstreamOptions};
use crate::upstream::softcas::{SoftCas, SoftCasOptions};
use crate::upstream::stepca::{StepCa, StepCaOptions};
use crate::validate::{HickoryResolver, ValidationSettings, Validator};

/// How long a Replay-Nonce may be redeemed after it was issued.
const NONCE_LIFETIME: Duration = Duration::minutes(30);

/// A running server, for `main` and for tests.
pub struct Server {
    /// The address the ACME listener is bound to.
    pub addr: SocketAddr,
    /// The metrics listener's address, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// The roots (PEM) that the server's own certificate and issued chains
    /// lead to; empty when none is known (`/roots.pem` answers 404).
    pub roots_pem: String,
    /// What was loaded, in one line for the start-up log.
    pub summary: String,
    authority: Arc<Authority>,
    shutdown: CancellationToken,
    join: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// The Authority behind the server (administration, tests).
    pub fn authority(&self) -> &Arc<Authority> {
        &self.authority
    }

    /// Asks the server to stop (as SIGTERM does).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Waits until the server has stopped and flushed.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.join.await.context("the server task panicked")?
    }
}

/// Runs until SIGTERM/SIGINT.
pub(super) async fn run_until_signal(cfg: Settings) -> anyhow::Result<()> {
    let addr = cfg.listen;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    let token = shutdown_on_signals();
    let server = start(cfg, listener, token).await?;
    tracing::info!(address = %server.addr, "acmeproxy is serving");
    tracing::info!("{}", server.summary);
    server.wait().await
}

/// Builds every part from `cfg` and starts serving on `listener` until
/// `shutdown` is cancelled.
pub async fn start(
    cfg: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<Server> {
    start_with(cfg, listener, shutdown, Overrides::default()).await
}

/// Builds an upstream over the store that [`start_with`] opened (for
/// upstreams that keep state in the RA's store, like
/// [`StoreUpstreamState`](super::StoreUpstreamState) does).
pub type UpstreamFactory =
    Box<dyn FnOnce(Arc<dyn Store>) -> Arc<dyn CertificateAuthorityService> + Send>;

/// Changes made to the Authority's options ([`Overrides::authority_options`]).
pub type OptionsTweak = Box<dyn FnOnce(&mut AuthorityOptions) + Send>;

/// Parts a caller (a test, an embedding program) supplies instead of the
/// ones the configuration names.
#[derive(Default)]
pub struct Overrides {
    /// The upstream CA to sign with, instead of `authority.type`'s.
    pub upstream: Option<Arc<dyn CertificateAuthorityService>>,
    /// Builds the upstream from the opened store, instead of
    /// `authority.type`'s; ignored when `upstream` is given.
    pub upstream_factory: Option<UpstreamFactory>,
    /// A store already open, instead of the one `db` names (tests start
    /// several replicas on one shared store this way).
    pub store: Option<Arc<dyn Store>>,
    /// Changes the Authority's timing options after the configuration's
    /// (tests shorten the replicas' lease and scan times this way).
    pub authority_options: Option<OptionsTweak>,
}

/// [`start`], with some parts supplied by the caller.
pub async fn start_with(
    cfg: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
    overrides: Overrides,
) -> anyhow::Result<Server> {
    let data_dir = cfg.data_dir.clone();
    create_private_dir(&data_dir)?;
    let store = match overrides.store {
        Some(store) => store,
        None => open_store(&cfg).await?,
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);

    let upstream: Arc<dyn CertificateAuthorityService> =
        match (overrides.upstream, overrides.upstream_factory) {
            (Some(u), _) => u,
            (None, Some(factory)) => factory(Arc::clone(&store)),
            (None, None) => build_upstream(&cfg, &data_dir, &store, &shutdown).await?,
        };

    let v = &cfg.validation;
    let resolver =
        HickoryResolver::new(&v.resolvers, v.timeout).context("setting up the DNS resolver")?;
    let validator = Validator::new(ValidationSettings {
        http_port: v.http_port,
        tls_alpn_port: v.tls_alpn_port,
        timeout: v.timeout,
        resolver: Arc::new(resolver),
        egress: v.egress.clone(),
    });

    let mut options = AuthorityOptions {
        finalize_concurrency: cfg.upstream_concurrency,
        rate_limits: super::rate_limits(&cfg.rate_limits),
        ..AuthorityOptions::default()
    };
    if let Some(change) = overrides.authority_options {
        change(&mut options);
    }
    let ra = Authority::new(
        Records::new(Arc::clone(&store)),
        Arc::clone(&clock),
        validator,
        Arc::clone(&upstream),
        provisioners(&cfg)?,
        options,
        shutdown.clone(),
    );
    super::admin_socket::serve(
        data_dir.join(super::admin_socket::SOCKET_NAME),
        Arc::clone(&ra),
        super::backup::BackupFiles::of(&cfg),
        shutdown.clone(),
    )
    .await
    .context("starting the admin socket")?;
    // The Host a request may name: `dnsNames` and the listen address. With
    // no `dnsNames` (a certificate from files) any Host is taken.
    let mut names = cfg.dns_names.clone();
    if !names.is_empty() && !cfg.listen.ip().is_unspecified() {
        names.push(cfg.listen.ip().to_string());
    }
    ra.set_public_names(names);
    let nonces = super::nonces::service(&store, clock, NONCE_LIFETIME, shutdown.clone()).await?;
    // One readiness cache for `/ready` and the metrics scrape.
    let readiness = Arc::new(CachedReadiness::for_authority(Arc::clone(&ra)));
    let app = router_with(
        AppState {
            ra: Arc::clone(&ra),
            nonces,
        },
        Arc::clone(&readiness),
    );

    let tls = &cfg.tls;
    let shared_identity = store.is_shared().then(|| {
        Arc::new(super::shared_tls::StoreIdentity::new(Arc::clone(&store)))
            as Arc<dyn crate::tls::SharedIdentity>
    });
    let identity = ServerIdentity::load_or_obtain_shared(
        &TlsOptions {
            dns_names: cfg.dns_names.clone(),
            data_dir: data_dir.clone(),
            cert_file: tls.cert_file.clone(),
            key_file: tls.key_file.clone(),
            min_version: tls.min_version,
            max_version: tls.max_version,
            wait_for_upstream: Some(shutdown.clone()),
        },
        Arc::clone(&upstream),
        shared_identity,
    )
    .await
    .context("getting the server's own TLS certificate")?;
    crate::metrics::own_certificate_expiry(identity.not_after());
    let tls_config = identity
        .server_config(vec![b"h2".to_vec(), b"http/1.1".to_vec()])
        .context("building the TLS configuration")?;
    let renewal = identity.spawn_renewal(shutdown.clone());
    spawn_sighup_reload(Arc::clone(&identity), shutdown.clone());

    let metrics_addr = match cfg.metrics {
        Some(addr) => Some(spawn_metrics(addr, readiness, shutdown.clone()).await?),
        None => None,
    };

    let limits = cfg.connections;
    let worker = tokio::spawn(FinalizeWorker::new(Arc::clone(&ra)).run());
    let retention = retention_policy(&cfg)
        .map(|policy| tokio::spawn(RetentionWorker::new(Arc::clone(&ra), policy).run()));
    let addr = listener
        .local_addr()
        .context("reading the listen address")?;
    find_roots(&cfg, &ra, &identity).await?;
    let summary = summary(&cfg, &listener, metrics_addr, &identity)?;
    let roots_pem = ra.roots_pem().unwrap_or_default();
    let token = shutdown.clone();
    let authority = Arc::clone(&ra);
    let store_watch = super::store_watch::spawn(Arc::clone(ra.records().store()), shutdown.clone());
    let join = tokio::spawn(async move {
        super::connections::serve_tls(listener, TlsAcceptor::from(tls_config), app, limits, token)
            .await;
        let _ = worker.await;
        if let Some(retention) = retention {
            let _ = retention.await;
        }
        let _ = renewal.await;
        // Validations and upstream calls get the grace period; a stuck upstream
        // must not keep the process alive (its job is stored and resumes).
        if tokio::time::timeout(SHUTDOWN_GRACE, ra.drain())
            .await
            .is_err()
        {
            tracing::warn!(
                "background work did not finish within the grace period; it resumes at the next start"
            );
        }
        // Dropping the last store handle flushes sled; be explicit anyway.
        ra.records().store().check_writable().await.ok();
        tracing::info!("acmeproxy stopped");
        match store_watch.await {
            Ok(Some(restart)) => Err(restart.into()),
            _ => Ok(()),
        }
    });
    Ok(Server {
        addr,
        metrics_addr,
        roots_pem,
        summary,
        authority,
        shutdown,
        join,
    })
}

/// The purge's policy from `authority.retention`; `None` when it is off.
fn retention_policy(cfg: &Settings) -> Option<RetentionPolicy> {
    let r = &cfg.retention;
    let keep = |d: StdDuration| Duration::try_from(d).unwrap_or(Duration::MAX);
    r.interval.map(|interval| RetentionPolicy {
        interval,
        order_grace: keep(r.order_grace),
        certificate_retention: keep(r.certificate_retention),
    })
}

/// One line saying what the server loaded: listeners, upstream, store,
/// provisioners and its own certificate.
fn summary(
    cfg: &Settings,
    listener: &TcpListener,
    metrics: Option<SocketAddr>,
    identity: &ServerIdentity,
) -> anyhow::Result<String> {
    let upstream = match &cfg.upstream {
        Upstream::ExternalCas(ext) => format!("externalcas at {}", ext.directory_url),
        Upstream::StepCas(sc) => format!("stepcas at {}", sc.ca_url),
        Upstream::VaultCas(vault) => format!("vaultcas at {}", vault.address),
        Upstream::SoftCas(_) => format!("softcas in {}", cfg.data_dir.join("softcas").display()),
    };
    let provisioners: Vec<&str> = cfg.provisioners.iter().map(|p| p.name.as_str()).collect();
    Ok(format!(
        "loaded: ACME on https://{}, metrics {}, upstream {upstream}, store {}, provisioners {}, \
         own certificate for {} until {}",
        listener
            .local_addr()
            .context("reading the listen address")?,
        metrics.map_or_else(|| "off".to_owned(), |a| format!("on http://{a}/metrics")),
        cfg.store,
        provisioners.join(", "),
        cfg.dns_names.join(", "),
        identity.not_after()
    ))
}

/// Finds the roots for `/roots.pem` ([`crate::upstream::roots`]) from
/// ca.json's `root`, the upstream, the server's own chain, `ca_bundle`, the
/// system trust store and AIA, and hands them to the Authority.
async fn find_roots(
    cfg: &Settings,
    ra: &Authority,
    identity: &ServerIdentity,
) -> anyhow::Result<()> {
    use crate::upstream::roots::{self, RootSources};
    let configured = roots::read_root_files(&cfg.root_files)?;
    let mut trust_store = roots::system_trust_store();
    for upstream in cfg.every_upstream() {
        if let Upstream::ExternalCas(ext) = upstream {
            if let Some(bundle) = &ext.ca_bundle {
                trust_store.extend(roots::bundle_certificates(bundle));
            }
        }
    }
    let chain = roots::pem_certificates(identity.chain_pem().as_bytes())
        .map_err(|e| anyhow::anyhow!("the server's own certificate chain {e}"))?;
    let found = roots::resolve(
        &RootSources {
            configured,
            upstream: ra.upstream().roots(),
            trust_store,
            fetch_aia: true,
            timeout: StdDuration::from_secs(10),
        },
        &chain,
    )
    .await;
    if let Some(w) = &found.warning {
        tracing::warn!("/roots.pem: {w}");
    }
    if let Some(source) = found.source {
        tracing::info!(
            roots = found.roots.len(),
            source = source.describe(),
            "/roots.pem serves the root(s) found"
        );
    }
    ra.set_roots(found.roots);
    Ok(())
}

/// The upstream CA that `authority.type` names, or the router over
/// `authority.upstreams` (its health probes run until `shutdown`).
async fn build_upstream(
    cfg: &Settings,
    data_dir: &std::path::Path,
    store: &Arc<dyn Store>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<dyn CertificateAuthorityService>> {
    if cfg.upstreams.is_empty() {
        return build_one(&cfg.upstream, None, data_dir, store).await;
    }
    let mut members = Vec::with_capacity(cfg.upstreams.len());
    for (i, named) in cfg.upstreams.iter().enumerate() {
        // The first keeps the single upstream's state (its ACME account,
        // softcas's CA); the others keep theirs apart.
        let scope = upstream_scope(i, &named.name);
        let service = build_one(&named.upstream, scope, data_dir, store)
            .await
            .with_context(|| format!("upstream {:?}", named.name))?;
        members.push((named.name.clone(), service));
    }
    let routed = crate::upstream::routed::Routed::new(
        members,
        cfg.routes.clone(),
        cfg.failover.clone(),
        Arc::new(RouteMetrics),
    );
    routed.spawn_probes(shutdown.clone());
    Ok(routed)
}

/// The router's events as metrics: each upstream's calls under its
/// configured name, whether it takes new jobs, and where jobs went.
struct RouteMetrics;

impl crate::upstream::routed::RouteEvents for RouteMetrics {
    fn call(&self, upstream: &str, operation: &str, ok: bool, elapsed: StdDuration) {
        crate::metrics::upstream_call(upstream, operation, ok, elapsed);
    }

    fn available(&self, upstream: &str, up: bool) {
        crate::metrics::upstream_available(upstream, up);
    }

    fn chosen(&self, upstream: &str, reason: &str) {
        crate::metrics::upstream_chosen(upstream, reason);
    }
}

/// Where a softcas upstream keeps its CA under the data directory:
/// `softcas/`, or `softcas-<name>/` for one of several upstreams that is
/// not the first (`scope`).
fn softcas_dir(scope: Option<&str>) -> String {
    match scope {
        None => "softcas".to_owned(),
        Some(name) => format!("softcas-{name}"),
    }
}

/// The directories of every softcas upstream `cfg` configures (for backups).
pub(super) fn softcas_dirs(cfg: &Settings) -> Vec<String> {
    if cfg.upstreams.is_empty() {
        return match cfg.upstream {
            Upstream::SoftCas(_) => vec![softcas_dir(None)],
            _ => Vec::new(),
        };
    }
    cfg.upstreams
        .iter()
        .enumerate()
        .filter(|(_, u)| matches!(u.upstream, Upstream::SoftCas(_)))
        .map(|(i, u)| softcas_dir(upstream_scope(i, &u.name)))
        .collect()
}

/// The scope that keeps the `i`th of several upstreams' state apart: none
/// for the first, which keeps what the single upstream stored.
fn upstream_scope(i: usize, name: &str) -> Option<&str> {
    (i > 0).then_some(name)
}

/// One upstream; `scope` (one of several, not the first) keeps its stored
/// state apart.
async fn build_one(
    upstream: &Upstream,
    scope: Option<&str>,
    data_dir: &std::path::Path,
    store: &Arc<dyn Store>,
) -> anyhow::Result<Arc<dyn CertificateAuthorityService>> {
    use super::upstream_state::StoreUpstreamState;
    Ok(match upstream {
        Upstream::ExternalCas(ext) => {
            let state = Arc::new(match scope {
                None => StoreUpstreamState::new(Arc::clone(store)),
                Some(name) => StoreUpstreamState::named(Arc::clone(store), name),
            });
            Arc::new(
                AcmeUpstream::new(AcmeUpstreamOptions::from(ext), state)
                    .context("setting up the external ACME upstream")?,
            )
        }
        Upstream::SoftCas(sc) => Arc::new(
            SoftCas::open(SoftCasOptions {
                dir: data_dir.join(softcas_dir(scope)),
                name: sc.name.clone(),
                default_lifetime: sc.lifetime,
                sign_delay: sc.sign_delay,
            })
            .context("opening the softcas CA")?,
        ),
        Upstream::VaultCas(settings) => Arc::new(
            crate::upstream::vault::VaultCas::connect(settings.clone())
                .await
                .with_context(|| format!("connecting to Vault at {}", settings.address))?,
        ),
        Upstream::StepCas(sc) => Arc::new(
            StepCa::connect(StepCaOptions::from(sc))
                .await
                .context("setting up the step-ca upstream")?,
        ),
    })
}

/// The Prometheus listener. A scrape first refreshes the readiness check it
/// shares with `/ready` (at most once a second for both, bounded by its 4 s
/// budget), so that `acmeproxy_upstream_up` and `acmeproxy_store_writable`
/// are current even where nothing polls `/ready` (a systemd service scraped
/// by Prometheus).
async fn spawn_metrics(
    addr: SocketAddr,
    readiness: Arc<CachedReadiness>,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics listener on {addr}"))?;
    let bound = listener.local_addr().context("metrics listener address")?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || async move {
            readiness.state().await;
            (
                [(
                    http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                crate::metrics::render(),
            )
        }),
    );
    tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "metrics listener failed");
        }
    });
    Ok(bound)
}

fn spawn_sighup_reload(identity: Arc<ServerIdentity>, shutdown: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        loop {
            tokio::select! {
                _ = hup.recv() => match identity.reload_files() {
                    Ok(true) => tracing::info!("SIGHUP: TLS certificate files reloaded"),
                    Ok(false) => tracing::info!("SIGHUP: the TLS certificate is obtained from the upstream and renews itself; nothing to reload"),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: TLS certificate reload failed"),
                },
                () = shutdown.cancelled() => return,
            }
        }
    });
}
