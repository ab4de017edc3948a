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

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::nonce::NonceService;
use crate::ra::Authority;

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
    let acme = Router::new()
        .route("/acme/{prov}/directory", get(directory::directory))
        .route(
            "/acme/{prov}/new-nonce",
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
    let readiness = Arc::new(ready::Readiness::for_authority(Arc::clone(&state.ra)));
    Router::new()
        .route("/roots.pem", get(directory::roots))
        .route("/health", get(directory::health))
        .route(
            "/ready",
            get(move || async move { readiness.response().await }),
        )
        .merge(acme)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Adds a fresh Replay-Nonce to every ACME response (errors included), and
/// records the request in the metrics by route.
async fn acme_headers(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().clone();
    // By path, not route: the 404 for an unknown ACME resource has no route.
    let is_acme = req.uri().path().starts_with("/acme/");
    // RFC 8555 §7.1: every resource but the directory links to it.
    let index = index_link(&req, &state);
    let mut resp = next.run(req).await;
    if let Some(link) = index {
        resp.headers_mut().append(header::LINK, link);
    }
    resp = problem::ensure_problem(resp).await;
    if is_acme && !resp.headers().contains_key("replay-nonce") {
        match state.nonces.issue().await {
            Ok(n) => {
                if let Ok(v) = HeaderValue::from_str(&n) {
                    resp.headers_mut().insert("replay-nonce", v);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot issue a nonce");
                let p = crate::acme::Problem::new(
                    crate::acme::ProblemType::ServerInternal,
                    "the server cannot issue nonces right now; try again",
                );
                resp = problem::problem_response(&p);
            }
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
