//! The ACME web front end (Boulder's WFE), on axum. Handlers are thin: they
//! authenticate the request (`extract`), make one Authority call, and render
//! wire objects (`render`) with URLs from `links`.

mod account;
mod certificate;
mod directory;
pub mod extract;
pub mod links;
mod order;
pub mod problem;
pub mod ready;
mod render;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::nonce::NonceService;
use crate::ra::Authority;
use crate::ra::limits::Limit;

/// The newNonce route (RFC 8555 §7.2).
const NEW_NONCE_ROUTE: &str = "/acme/{prov}/new-nonce";

/// The nonce header (RFC 8555 §6.5.1).
const REPLAY_NONCE: &str = "replay-nonce";

/// Largest accepted request body. ACME bodies are small; a CSR for 100 names
/// with an RSA-8192 key stays far below this.
pub const MAX_BODY: usize = 64 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub ra: Arc<Authority>,
    pub nonces: NonceService,
}

/// The ACME router: `/acme/<provisioner>/…`, `/roots.pem`, `/health`, `/ready`.
pub fn router(state: AppState) -> Router {
    let readiness = Arc::new(ready::CachedReadiness::for_authority(Arc::clone(&state.ra)));
    router_with(state, readiness)
}

/// [`router`] whose `/ready` answers from `readiness`, a cache the server
/// shares with its metrics listener (one check a second for both).
pub fn router_with(state: AppState, readiness: Arc<ready::CachedReadiness>) -> Router {
    let acme = Router::new()
        .route("/acme/{prov}/directory", get(directory::directory))
        .route(
            NEW_NONCE_ROUTE,
            get(directory::new_nonce_get).head(directory::new_nonce_head),
        )
        .route("/acme/{prov}/new-account", post(account::new_account))
        .route("/acme/{prov}/account/{id}", post(account::account))
        .route("/acme/{prov}/account/{id}/orders", post(account::orders))
        .route("/acme/{prov}/key-change", post(account::key_change))
        .route("/acme/{prov}/new-order", post(order::new_order))
        .route("/acme/{prov}/order/{id}", post(order::order))
        .route("/acme/{prov}/order/{id}/finalize", post(order::finalize))
        .route("/acme/{prov}/authz/{id}", post(order::authz))
        .route("/acme/{prov}/chall/{authz}/{kind}", post(order::challenge))
        .route("/acme/{prov}/cert/{id}", post(certificate::certificate))
        .route("/acme/{prov}/revoke-cert", post(certificate::revoke))
        .route(
            "/acme/{prov}/renewal-info/{id}",
            get(directory::renewal_info),
        )
        .fallback(directory::not_found)
        .method_not_allowed_fallback(directory::method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), acme_headers));
    Router::new()
        .route("/roots.pem", get(directory::roots))
        .route("/health", get(directory::health))
        .route(
            "/ready",
            get(move || async move { readiness.response().await }),
        )
        .merge(acme)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), per_ip))
        .with_state(state)
}

/// `requestsPerIp`: every request takes a token of its client's bucket; a
/// refusal is `rateLimited` (429) with Retry-After, and a nonce when it
/// answers a POST under `/acme/`. A request without a known peer address
/// (`ConnectInfo`, which the connection layer adds) is not limited.
async fn per_ip(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>().copied() else {
        return next.run(req).await;
    };
    let key = crate::ra::limits::ip_key(peer.ip());
    match state.ra.limiter().take(Limit::RequestsPerIp, &key, 1) {
        Ok(()) => next.run(req).await,
        Err(refusal) => {
            let wants_nonce =
                req.method() == Method::POST && req.uri().path().starts_with("/acme/");
            let mut resp = problem::HttpError::from(refusal.to_error()).into_response();
            if wants_nonce && let Ok(v) = HeaderValue::from_str(&state.nonces.issue()) {
                resp.headers_mut().insert(REPLAY_NONCE, v);
            }
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
    }
}

/// Adds a fresh Replay-Nonce where RFC 8555 §6.5 and §7.2 ask for one: to
/// newNonce, and to every answer to a POST under `/acme/` (errors included,
/// so a `badNonce` can be retried at once). Other GETs (the directory,
/// renewalInfo, 404s) get none: a nonce nobody asked for is a nonce an
/// attacker can mint for free. Also records the request in the metrics by
/// route.
async fn acme_headers(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().clone();
    // By path, not route: the answer to a POST to an unknown ACME resource
    // has no route and still carries a nonce.
    let wants_nonce = req.uri().path().starts_with("/acme/")
        && (method == Method::POST || route == NEW_NONCE_ROUTE);
    // RFC 8555 §7.1: every resource but the directory links to it.
    let (index, mut resp) =
        if links::host_allowed(req.headers(), req.uri(), &state.ra.public_names()) {
            (index_link(&req, &state), next.run(req).await)
        } else {
            let refused = problem::HttpError::new(
                crate::acme::ProblemType::Malformed,
                "the Host header does not name this server (one of its dnsNames); \
                 use the name in its directory URL",
            );
            (None, refused.into_response())
        };
    if let Some(link) = index {
        resp.headers_mut().append(header::LINK, link);
    }
    resp = problem::ensure_problem(resp).await;
    if wants_nonce && !resp.headers().contains_key(REPLAY_NONCE) {
        if let Ok(v) = HeaderValue::from_str(&state.nonces.issue()) {
            resp.headers_mut().insert(REPLAY_NONCE, v);
        }
    }
    if !resp.headers().contains_key(header::CACHE_CONTROL) {
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    let status = resp.status().as_u16();
    tracing::debug!(%method, %route, status, elapsed_ms = started.elapsed().as_millis() as u64, "request");
    crate::metrics::http_request(&route, status, started.elapsed());
    resp.into_response()
}

/// `Link: <directory>;rel="index"` for an ACME resource of a known
/// provisioner other than the directory itself.
fn index_link(req: &Request, state: &AppState) -> Option<HeaderValue> {
    let path = req.uri().path();
    let rest = path.strip_prefix("/acme/")?;
    let (prov, resource) = rest.split_once('/')?;
    if resource == "directory" || state.ra.provisioner(prov).is_none() {
        return None;
    }
    let links = links::Links::from_request(req.headers(), req.uri(), prov)?;
    HeaderValue::from_str(&format!("<{}>;rel=\"index\"", links.directory())).ok()
}

/// RFC 3339 text of a time, as the wire objects show it.
pub fn render_time(t: time::OffsetDateTime) -> String {
    render::time(t)
}
