//! Certificate download and revocation (RFC 8555 §7.4.2, §7.6).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::AppState;
use super::extract::{KeyRef, Signer, verify};
use super::problem::HttpError;
use crate::acme::ProblemType;
use crate::acme::types::RevocationRequest;
use crate::ra::RevocationSigner;

/// POST-as-GET a certificate chain: `application/pem-certificate-chain`.
pub(super) async fn certificate(
    State(st): State<AppState>,
    Path((prov, id)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Result<Response, HttpError> {
    let signed = verify(&st, &prov, &headers, &uri, &body, KeyRef::Kid).await?;
    let acct = signed.post_as_get_account()?;
    let cert = st.ra.certificate(&acct.id, &id).await?;
    let mut resp = cert.chain_pem.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/pem-certificate-chain"),
    );
    Ok(resp)
}

/// POST revokeCert, signed by the account or by the certificate's key.
pub(super) async fn revoke(
    State(st): State<AppState>,
    Path(prov): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Result<Response, HttpError> {
    let signed = verify(&st, &prov, &headers, &uri, &body, KeyRef::Either).await?;
    let req: RevocationRequest = signed.payload()?;
    let der = URL_SAFE_NO_PAD
        .decode(req.certificate.trim_end_matches('=').as_bytes())
        .map_err(|_| {
            HttpError::new(
                ProblemType::Malformed,
                "\"certificate\" is not base64url-encoded DER",
            )
        })?;
    let signer = match &signed.signer {
        Signer::Account(a) => RevocationSigner::Account(a.clone()),
        Signer::Key(k) => RevocationSigner::CertificateKey(k.clone()),
    };
    st.ra.revoke(&prov, &signer, &der, req.reason).await?;
    Ok(().into_response())
}
