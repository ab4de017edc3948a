//! The ACME listener's connection handling: a cap on open connections, the
//! TLS handshake, HTTP/1.1 or HTTP/2 by ALPN, and the timeouts that shed idle
//! and slow clients (`connections` in ca.json, [`ConnectionLimits`]).
//!
//! - At most `maxConnections` connections are open (handshakes included). A
//!   connection beyond the cap waits up to `maxConnectionsWait` for a slot
//!   (at most [`MAX_WAITING`] wait at once), then is closed unanswered.
//! - The TLS handshake must finish within `handshakeTimeout`.
//! - HTTP/1.1: each request head must arrive within `headerReadTimeout` of the
//!   connection waiting for it (hyper's timer; on a kept-alive connection the
//!   wait for the next request counts, so an idle HTTP/1.1 connection is
//!   closed after `headerReadTimeout`).
//! - Any connection with no request in progress for `idleTimeout` is closed
//!   (this is what sheds an idle or trickling HTTP/2 connection).
//! - A request that takes longer than `requestTimeout` is answered 503
//!   `serverInternal`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulConnection;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use super::SHUTDOWN_GRACE;
use crate::config::ConnectionLimits;

/// Most connections that wait for a slot at once; more are closed at once.
pub(super) const MAX_WAITING: usize = 256;

/// How long a connection closed for idleness may take to say goodbye
/// (HTTP/2 GOAWAY) before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Serves `app` over TLS on `listener` until `shutdown`, then lets open
/// connections finish for up to [`SHUTDOWN_GRACE`].
pub(super) async fn serve_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: axum::Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let waiting = Arc::new(Semaphore::new(MAX_WAITING));
    let refusals = RefusalLog::default();
    let builders = Builders::new(&limits);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = tcp.set_nodelay(true);
        let conn = Conn {
            acceptor: acceptor.clone(),
            app: app.clone(),
            builders: builders.clone(),
            limits,
            shutdown: shutdown.clone(),
            peer,
        };
        match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => {
                tracker.spawn(conn.serve(tcp, slot));
            }
            Err(_) => match Arc::clone(&waiting).try_acquire_owned() {
                Ok(wait_slot) if !limits.max_connections_wait.is_zero() => {
                    let slots = Arc::clone(&slots);
                    let refusals = refusals.clone();
                    tracker.spawn(async move {
                        let slot = tokio::time::timeout(
                            limits.max_connections_wait,
                            slots.acquire_owned(),
                        )
                        .await;
                        drop(wait_slot);
                        match slot {
                            Ok(Ok(slot)) => conn.serve(tcp, slot).await,
                            _ => refusals.refused(peer, limits.max_connections),
                        }
                    });
                }
                _ => refusals.refused(peer, limits.max_connections),
            },
        }
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish within the grace period");
    }
}

/// Logs refused connections at most once a second (a flood must not flood
/// the log), with the count since the last line.
#[derive(Clone, Default)]
struct RefusalLog {
    state: Arc<Mutex<(Option<Instant>, u64)>>,
}

impl RefusalLog {
    fn refused(&self, peer: SocketAddr, cap: usize) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        st.1 = st.1.saturating_add(1);
        let now = Instant::now();
        if st
            .0
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            tracing::warn!(
                %peer,
                refused = st.1,
                max_connections = cap,
                "connection refused: the server has connections.maxConnections open; raise it if this is legitimate load"
            );
            *st = (Some(now), 0);
        }
    }
}

/// The HTTP/1.1 and HTTP/2 connection builders, configured once.
#[derive(Clone)]
struct Builders {
    http1: Arc<hyper::server::conn::http1::Builder>,
    http2: Arc<hyper::server::conn::http2::Builder<TokioExecutor>>,
}

impl Builders {
    fn new(limits: &ConnectionLimits) -> Self {
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .keep_alive(true);
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.http2_max_concurrent_streams)
            // Pings find dead peers of long requests; idle connections are
            // closed by the idle timer.
            .keep_alive_interval(limits.idle_timeout.min(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        Self {
            http1: Arc::new(http1),
            http2: Arc::new(http2),
        }
    }
}

/// One accepted connection and what serving it needs.
struct Conn {
    acceptor: TlsAcceptor,
    app: axum::Router,
    builders: Builders,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
    peer: SocketAddr,
}

impl Conn {
    /// Handshakes and serves the connection; `_slot` is its place under the
    /// cap, given back when the connection ends.
    async fn serve(self, tcp: TcpStream, _slot: OwnedSemaphorePermit) {
        let peer = self.peer;
        let tls = tokio::select! {
            r = tokio::time::timeout(self.limits.handshake_timeout, self.acceptor.accept(tcp)) => match r {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            },
            () = self.shutdown.cancelled() => return,
        };
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
        let activity = Activity::new();
        let service = TowerToHyperService::new(tower::service_fn({
            let activity = Arc::clone(&activity);
            let app = self.app.clone();
            let limit = self.limits.request_timeout;
            move |mut req: http::Request<Incoming>| {
                let busy = activity.begin();
                let app = app.clone();
                // The client's address, for the per-IP rate limits.
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                async move {
                    let resp = handle(app, req, limit).await;
                    drop(busy);
                    Ok::<_, Infallible>(resp)
                }
            }
        }));
        let io = TokioIo::new(tls);
        let result = if h2 {
            let conn = self.builders.http2.serve_connection(io, service);
            drive(conn, &activity, &self.limits, &self.shutdown).await
        } else {
            let conn = self.builders.http1.serve_connection(io, service);
            drive(conn, &activity, &self.limits, &self.shutdown).await
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// Runs one request through the router within the request timeout.
async fn handle(app: axum::Router, req: http::Request<Incoming>, limit: Duration) -> Response {
    match tokio::time::timeout(limit, app.oneshot(req)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(never)) => match never {},
        Err(_) => {
            tracing::warn!(
                timeout_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
                "a request did not complete within connections.requestTimeout"
            );
            let p = crate::acme::Problem::new(
                crate::acme::ProblemType::ServerInternal,
                format!(
                    "the request did not complete within {} ms; try again",
                    limit.as_millis()
                ),
            )
            .with_status(503);
            crate::http::problem::problem_response(&p)
        }
    }
}

/// Drives a connection until it ends, closing it gracefully when the server
/// shuts down or when it has had no request in progress for the idle timeout.
async fn drive<C>(
    conn: C,
    activity: &Activity,
    limits: &ConnectionLimits,
    shutdown: &CancellationToken,
) -> Result<(), C::Error>
where
    C: GracefulConnection,
{
    let mut conn = pin!(conn);
    tokio::select! {
        r = conn.as_mut() => return r,
        () = shutdown.cancelled() => {
            // Requests in progress finish (each within the request timeout).
            conn.as_mut().graceful_shutdown();
            return conn.await;
        }
        () = activity.idle_for(limits.idle_timeout) => {}
    }
    conn.as_mut().graceful_shutdown();
    match tokio::time::timeout(CLOSE_GRACE, conn).await {
        Ok(r) => r,
        Err(_) => Ok(()),
    }
}

/// Whether a connection has a request in progress, and since when it has
/// had none.
struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds after `base` when the last request ended.
    last_ms: AtomicU64,
    base: Instant,
}

/// A request in progress; ends (and stamps the time) when dropped, also when
/// the request is cancelled.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.last_ms.store(self.0.now_ms(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(0),
            base: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(Arc::clone(self))
    }

    /// Completes once the connection has had no request in progress for
    /// `idle`.
    async fn idle_for(&self, idle: Duration) {
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        loop {
            let last = self.last_ms.load(Ordering::Relaxed);
            let now = self.now_ms();
            let busy = self.in_flight.load(Ordering::Acquire) > 0;
            let quiet = now.saturating_sub(last);
            if !busy && quiet >= idle_ms {
                return;
            }
            // Busy, or quiet for less: look again when the quiet period
            // could have run out.
            let wait = if busy { idle_ms } else { idle_ms - quiet };
            tokio::time::sleep(Duration::from_millis(wait.max(1))).await;
        }
    }
}
