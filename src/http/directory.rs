//! Directory, newNonce, roots, health and readiness (RFC 8555 §7.1.1, §7.2).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::links::Links;
use super::problem::HttpError;
use crate::acme::ProblemType;
use crate::acme::types::{Directory, DirectoryMeta};

/// GET directory (RFC 8555 §7.1.1).
pub(super) async fn directory(
    State(st): State<AppState>,
    Path(prov): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, HttpError> {
    let Some(p) = st.ra.provisioner(&prov) else {
        return Err(unknown_provisioner(&prov));
    };
    let links = Links::from_request(&headers, &uri, &prov).ok_or_else(|| {
        HttpError::new(
            ProblemType::Malformed,
            "the request has no usable Host header",
        )
    })?;
    let dir = Directory {
        new_nonce: links.new_nonce(),
        new_account: links.new_account(),
        new_order: links.new_order(),
        revoke_cert: links.revoke_cert(),
        key_change: links.key_change(),
        renewal_info: Some(links.renewal_info()),
        meta: DirectoryMeta {
            terms_of_service: p.terms_of_service.clone(),
            website: p.website.clone(),
            caa_identities: p.caa_identities.clone(),
            external_account_required: p.require_eab,
            profiles: p
                .profiles
                .iter()
                .map(|(name, profile)| (name.clone(), profile.description.clone()))
                .collect(),
        },
    };
    Ok(Json(dir).into_response())
}

/// HEAD newNonce: 200 (RFC 8555 §7.2). The nonce is added by the layer.
pub(super) async fn new_nonce_head(
    State(st): State<AppState>,
    Path(prov): Path<String>,
) -> Result<Response, HttpError> {
    nonce_response(&st, &prov, StatusCode::OK)
}

/// GET newNonce: 204 (RFC 8555 §7.2).
pub(super) async fn new_nonce_get(
    State(st): State<AppState>,
    Path(prov): Path<String>,
) -> Result<Response, HttpError> {
    nonce_response(&st, &prov, StatusCode::NO_CONTENT)
}

fn nonce_response(st: &AppState, prov: &str, status: StatusCode) -> Result<Response, HttpError> {
    if st.ra.provisioner(prov).is_none() {
        return Err(unknown_provisioner(prov));
    }
    let mut resp = status.into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// Reads and drops what is left of a request body (at most
/// [`super::MAX_BODY`]) before an early error answer: over HTTP/2 an answer
/// that ends while the client still sends makes the stream end in a reset,
/// which clients (curl) report as a framing error instead of the answer.
async fn drain(body: axum::body::Body) {
    let _ = axum::body::to_bytes(body, super::MAX_BODY).await;
}

/// A known resource asked with a method it does not take: 405 (the
/// problem document and its Allow header are added by the ACME layer).
pub(super) async fn method_not_allowed(body: axum::body::Body) -> StatusCode {
    drain(body).await;
    StatusCode::METHOD_NOT_ALLOWED
}

/// Anything else: a 404 problem.
pub(super) async fn not_found(uri: Uri, body: axum::body::Body) -> HttpError {
    drain(body).await;
    HttpError::new(
        ProblemType::Malformed,
        format!("{} is not an ACME resource of this server", uri.path()),
    )
    .status(404)
}

/// GET /roots.pem: the self-signed roots the RA's chains lead to (as step-ca
/// serves); a 404 problem saying how to configure one when none is known.
pub(super) async fn roots(State(st): State<AppState>) -> Result<Response, HttpError> {
    let Some(pem) = st.ra.roots_pem() else {
        return Err(HttpError::new(
            ProblemType::Malformed,
            "this RA does not know the root certificate its upstream CA chains to; the \
             administrator sets it with \"root\" (a PEM file of the root) in ca.json"
                .to_owned(),
        )
        .status(404));
    };
    let mut resp = pem.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-pem-file"),
    );
    Ok(resp)
}

/// GET /health: the process is alive.
pub(super) async fn health() -> &'static str {
    "ok\n"
}

pub(super) fn unknown_provisioner(prov: &str) -> HttpError {
    HttpError::new(
        ProblemType::Malformed,
        format!("there is no provisioner {prov:?} on this server"),
    )
    .status(404)
}

/// GET renewalInfo (RFC 9773 §4.2): the suggested renewal window.
pub(super) async fn renewal_info(
    State(st): State<AppState>,
    Path((prov, id)): Path<(String, String)>,
) -> Result<Response, HttpError> {
    if st.ra.provisioner(&prov).is_none() {
        return Err(unknown_provisioner(&prov));
    }
    let w = st.ra.renewal_info(&id).await?;
    let info = crate::acme::types::RenewalInfo {
        suggested_window: crate::acme::types::SuggestedWindow {
            start: super::render::time(w.start),
            end: super::render::time(w.end),
        },
        explanation_url: None,
    };
    let mut resp = Json(info).into_response();
    // RFC 9773 §4.3: ask again in six hours.
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("21600"));
    Ok(resp)
}
