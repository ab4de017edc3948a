//! Turning errors into problem documents (RFC 8555 §6.7): one place, with
//! internal causes logged and never sent. The Replay-Nonce is added by the
//! layer in `http::mod` to every answer to a POST, errors included.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::acme::{Problem, ProblemType};
use crate::nonce::NonceError;
use crate::ra::RaError;

/// An error answer of the ACME front end.
#[derive(Debug)]
pub struct HttpError {
    pub error: RaError,
    /// A Location header to send with it (keyChange conflict).
    pub location: Option<String>,
}

impl HttpError {
    /// A problem of `kind` with `detail`.
    pub fn new(kind: ProblemType, detail: impl Into<String>) -> Self {
        Self {
            error: RaError::new(kind, detail),
            location: None,
        }
    }

    /// The same error with another HTTP status.
    pub fn status(mut self, status: u16) -> Self {
        self.error.problem.status = Some(status);
        self
    }
}

impl From<RaError> for HttpError {
    fn from(error: RaError) -> Self {
        Self {
            error,
            location: None,
        }
    }
}

impl From<NonceError> for HttpError {
    fn from(e: NonceError) -> Self {
        if e == NonceError::Unavailable {
            return Self::new(
                ProblemType::ServerInternal,
                "the shared nonce store could not be reached",
            );
        }
        Self::new(
            ProblemType::BadNonce,
            format!("the nonce {e}; retry with the Replay-Nonce of this response"),
        )
    }
}

/// Renders a problem document with its status.
pub fn problem_response(problem: &Problem) -> Response {
    let status =
        StatusCode::from_u16(problem.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(problem).unwrap_or_default();
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let e = &self.error;
        if e.is_internal() {
            tracing::error!(problem = %e.problem.kind, detail = %e.problem.detail,
                source = ?e.source, "request failed");
        } else {
            tracing::debug!(problem = %e.problem.kind, detail = %e.problem.detail, "request refused");
        }
        let mut resp = problem_response(&e.problem);
        if let Some(loc) = self.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
            resp.headers_mut().insert(header::LOCATION, loc);
        }
        if let Some(secs) = e.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// Turns an error response that is not yet a problem document (axum's own
/// rejections: body too large, wrong method, bad path) into one, so every
/// ACME error is `application/problem+json` (RFC 8555 §6.7).
pub async fn ensure_problem(resp: Response) -> Response {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if is_problem {
        return resp;
    }
    let allow = resp.headers().get(header::ALLOW).cloned();
    let body = axum::body::to_bytes(resp.into_body(), 4096)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_owned();
    let detail = match status {
        StatusCode::PAYLOAD_TOO_LARGE => {
            format!("the request body is larger than {} bytes", super::MAX_BODY)
        }
        StatusCode::METHOD_NOT_ALLOWED => match allow.as_ref().and_then(|a| a.to_str().ok()) {
            Some(methods) if !methods.is_empty() => {
                format!("this method is not allowed here; this resource takes {methods}")
            }
            _ => "this method is not allowed here; the Allow header lists the methods this resource takes"
                .to_owned(),
        },
        _ if text.is_empty() => status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_owned(),
        _ => text,
    };
    let kind = if status.is_server_error() {
        ProblemType::ServerInternal
    } else {
        ProblemType::Malformed
    };
    let mut out = problem_response(&Problem::new(kind, detail).with_status(status.as_u16()));
    if let Some(a) = allow {
        out.headers_mut().insert(header::ALLOW, a);
    }
    out
}
