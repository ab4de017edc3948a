//! newOrder, order reads, finalize, authorizations and challenges
//! (RFC 8555 §7.4, §7.5).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::AppState;
use super::account::with_location;
use super::extract::{KeyRef, verify};
use super::problem::HttpError;
use super::render;
use crate::acme::ProblemType;
use crate::acme::types::{
    AuthorizationUpdateRequest, ChallengeStatus, ChallengeType, FinalizeRequest, NewOrderRequest,
    OrderStatus,
};

/// Seconds a client should wait before polling something still in progress.
const RETRY_AFTER: &str = "1";

/// POST newOrder (RFC 8555 §7.4).
pub(super) async fn new_order(
    State(st): State<AppState>,
    Path(prov): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Result<Response, HttpError> {
    let signed = verify(&st, &prov, &headers, &uri, &body, KeyRef::Kid).await?;
    let acct = signed.account()?;
    let req: NewOrderRequest = signed.payload()?;
    let (order, _) = st.ra.new_order(acct, req).await?;
    Ok(with_location(
        (
            StatusCode::CREATED,
            Json(render::order(&signed.links, &order)),
        )
            .into_response(),
        &signed.links.order(&order.id),
    ))
}

/// POST-as-GET an order.
pub(super) async fn order(
    State(st): State<AppState>,
    Path((prov, id)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Result<Response, HttpError> {
    let signed = verify(&st, &prov, &headers, &uri, &body, KeyRef::Kid).await?;
    let acct = signed.post_as_get_account()?;
    let order = st.ra.polled_order(acct, &id).await?;
    Ok(order_response(&signed.links, &order))
}

/// POST finalize (RFC 8555 §7.4).
pub(super) async fn finalize(
    State(st): State<AppState>,
    Path((prov, id)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Result<Response, HttpError> {
    let signed = verify(&st, &prov, &headers, &uri, &body, KeyRef::Kid).await?;
    let acct = signed.account()?;
    let req: FinalizeRequest = signed.payload()?;
    let csr = URL_SAFE_NO_PAD
        .decode(req.csr.trim_end_matches('=').as_bytes())
        .map_err(|_| {
            HttpError::new(
                ProblemType::Malformed,
                "\"csr\" is not base64url-encoded DER (RFC 8555 §7.4)",
            )
        })?;
    let order = st.ra.finalize(acct, &id, &csr).await?;
    Ok(order_response(&signed.links, &order))
}

fn order_response(links: &super::links::Links, order: &crate::model::OrderRecord) -> Response {
    let mut resp = with_location(
        Json(render::order(links, order)).into_response(),
        &links.order(&order.id),
    );
    if order.status == OrderStatus::Processing {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER));
    }
    resp
}

/// POST an authorization: read (POST-as-GET) or deactivate (RFC 8555 §7.5).
pub(super) async fn authz(
    State(st): State<AppState>,
    Path((prov, id)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Result<Response, HttpError> {
    let signed = verify(&st, &prov, &headers, &uri, &body, KeyRef::Kid).await?;
    let acct = signed.account()?;
    let authz = if signed.jws.is_post_as_get() {
        st.ra.authz(acct, &id).await?
    } else {
        let req: AuthorizationUpdateRequest = signed.payload()?;
        st.ra.deactivate_authz(&acct.id, &id, &req.status).await?
    };
    let pending_work = authz
        .challenges
        .iter()
        .any(|c| c.status == ChallengeStatus::Processing);
    let mut resp = Json(render::authz(&signed.links, &authz)).into_response();
    if pending_work {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER));
    }
    Ok(resp)
}

/// POST a challenge: `{}` starts validation, POST-as-GET reads it (RFC 8555 §7.5.1).
pub(super) async fn challenge(
    State(st): State<AppState>,
    Path((prov, authz_id, kind)): Path<(String, String, String)>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Result<Response, HttpError> {
    let signed = verify(&st, &prov, &headers, &uri, &body, KeyRef::Kid).await?;
    let acct = signed.account()?;
    let kind: ChallengeType = serde_json::from_value(serde_json::Value::String(kind.clone()))
        .map_err(|_| {
            HttpError::new(
                ProblemType::Malformed,
                format!("{kind:?} is not a challenge type of this server"),
            )
            .status(404)
        })?;
    let authz = if signed.jws.is_post_as_get() {
        st.ra.authz(acct, &authz_id).await?
    } else {
        // RFC 8555 §7.5.1: the payload is an empty JSON object.
        let _: serde_json::Map<String, serde_json::Value> = signed.payload()?;
        st.ra.answer_challenge(acct, &authz_id, kind).await?
    };
    let Some(ch) = authz.challenges.iter().find(|c| c.kind == kind) else {
        return Err(HttpError::new(ProblemType::Malformed, "no such challenge").status(404));
    };
    let mut resp = Json(render::challenge(&signed.links, &authz, ch)).into_response();
    let up = format!("<{}>;rel=\"up\"", signed.links.authz(&authz.id));
    if let Ok(v) = HeaderValue::from_str(&up) {
        resp.headers_mut().append(header::LINK, v);
    }
    if ch.status == ChallengeStatus::Processing {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER));
    }
    Ok(resp)
}
