//! newAccount, account update and deactivation, the orders list, keyChange
//! (RFC 8555 §7.3, §7.1.2.1).

use axum::Json;
use axum::body::Bytes;
use std::net::SocketAddr;

use axum::Extension;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::AppState;
use super::extract::{KeyRef, Signer, verify};
use super::problem::HttpError;
use super::render;
use crate::acme::ProblemType;
use crate::acme::jws::FlattenedJws;
use crate::acme::types::{AccountUpdateRequest, NewAccountRequest, OrdersList};

/// POST newAccount (RFC 8555 §7.3).
pub(super) async fn new_account(
    State(st): State<AppState>,
    Path(prov): Path<String>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Result<Response, HttpError> {
    let signed = verify(&st, &prov, &headers, &uri, &body, KeyRef::Jwk).await?;
    let Signer::Key(jwk) = &signed.signer else {
        return Err(HttpError::new(
            ProblemType::Malformed,
            "newAccount needs a jwk",
        ));
    };
    let req: NewAccountRequest = signed.payload()?;
    let out = st
        .ra
        .new_account(
            &prov,
            jwk,
            req,
            &signed.links.new_account(),
            peer.map(|Extension(ConnectInfo(a))| a.ip()),
        )
        .await?;
    let status = if out.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(with_location(
        (status, Json(render::account(&signed.links, &out.account))).into_response(),
        &signed.links.account(&out.account.id),
    ))
}

/// POST account: read, update contacts, deactivate (RFC 8555 §7.3.2, §7.3.6).
pub(super) async fn account(
    State(st): State<AppState>,
    Path((prov, id)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Result<Response, HttpError> {
    let signed = verify(&st, &prov, &headers, &uri, &body, KeyRef::Kid).await?;
    let acct = signed.account()?;
    if acct.id.as_str() != id {
        return Err(HttpError::new(
            ProblemType::Unauthorized,
            "an account can only read or change itself",
        ));
    }
    let req: Option<AccountUpdateRequest> = if signed.jws.is_post_as_get() {
        None
    } else {
        Some(signed.payload()?)
    };
    let updated = st.ra.update_account(acct, req).await?;
    Ok(with_location(
        Json(render::account(&signed.links, &updated)).into_response(),
        &signed.links.account(&updated.id),
    ))
}

#[derive(Deserialize)]
pub(super) struct Cursor {
    cursor: Option<String>,
}

/// POST-as-GET the account's orders (RFC 8555 §7.1.2.1), paged with `Link: rel="next"`.
pub(super) async fn orders(
    State(st): State<AppState>,
    Path((prov, id)): Path<(String, String)>,
    Query(q): Query<Cursor>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Result<Response, HttpError> {
    let signed = verify(&st, &prov, &headers, &uri, &body, KeyRef::Kid).await?;
    let acct = signed.post_as_get_account()?;
    if acct.id.as_str() != id {
        return Err(HttpError::new(
            ProblemType::Unauthorized,
            "an account can only list its own orders",
        ));
    }
    let (ids, next) = st.ra.orders_page(&acct.id, q.cursor.as_deref()).await?;
    let list = OrdersList {
        orders: ids.iter().map(|o| signed.links.order(o)).collect(),
    };
    let mut resp = Json(list).into_response();
    if let Some(next) = next {
        let link = format!(
            "<{}?cursor={next}>;rel=\"next\"",
            signed.links.orders(&acct.id)
        );
        if let Ok(v) = HeaderValue::from_str(&link) {
            resp.headers_mut().append(header::LINK, v);
        }
    }
    Ok(resp)
}

/// POST keyChange (RFC 8555 §7.3.5).
pub(super) async fn key_change(
    State(st): State<AppState>,
    Path(prov): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Result<Response, HttpError> {
    let signed = verify(&st, &prov, &headers, &uri, &body, KeyRef::Kid).await?;
    let acct = signed.account()?;
    let inner_value: serde_json::Value = signed.payload()?;
    let inner = FlattenedJws::parse_value(&inner_value).map_err(|e| {
        HttpError::from(crate::ra::RaError::new(
            ProblemType::Malformed,
            format!("the keyChange payload must be a JWS signed by the new key: {e}"),
        ))
    })?;
    let account_url = signed.links.account(&acct.id);
    match st
        .ra
        .key_change(acct, &inner, &signed.url, &account_url)
        .await
    {
        Ok(updated) => Ok(with_location(
            Json(render::account(&signed.links, &updated)).into_response(),
            &account_url,
        )),
        Err(e) => {
            let location = e
                .conflicting_account
                .as_ref()
                .map(|id| signed.links.account(id));
            Err(HttpError { error: e, location })
        }
    }
}

pub(super) fn with_location(mut resp: Response, url: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(url) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}
