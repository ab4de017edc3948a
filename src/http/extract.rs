//! Authenticating a POST (RFC 8555 §6.2–6.5) in one place: content type,
//! flattened JWS, `url`, nonce, `jwk` or `kid`, and the signature. A
//! [`Signed`] exists only when every check passed.
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-6.2>

use axum::body::Bytes;
use axum::http::{HeaderMap, Uri, header};
use serde::de::DeserializeOwned;

use super::AppState;
use super::links::Links;
use super::problem::HttpError;
use crate::acme::ProblemType;
use crate::acme::jws::{FlattenedJws, PublicJwk};
use crate::model::AccountRecord;
use crate::ra::jws_problem;

/// Which key reference a resource accepts (RFC 8555 §6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRef {
    /// `jwk` only: newAccount.
    Jwk,
    /// `kid` only: everything signed by an account.
    Kid,
    /// Either: revokeCert.
    Either,
}

/// Who signed a request.
#[derive(Clone, Debug)]
pub enum Signer {
    Account(AccountRecord),
    Key(PublicJwk),
}

/// A request whose JWS checks all passed.
#[derive(Debug)]
pub struct Signed {
    pub jws: FlattenedJws,
    pub signer: Signer,
    /// The URL the JWS was addressed to (equal to the request URL).
    pub url: String,
    pub links: Links,
}

impl Signed {
    /// The signing account; a `kid` request always has one.
    pub fn account(&self) -> Result<&AccountRecord, HttpError> {
        match &self.signer {
            Signer::Account(a) => Ok(a),
            Signer::Key(_) => Err(HttpError::new(
                ProblemType::Malformed,
                "this request must be signed by an account (\"kid\")",
            )),
        }
    }

    /// The signing account of a POST-as-GET (an empty payload, RFC 8555
    /// §6.3): a read of a resource that account owns.
    pub fn post_as_get_account(&self) -> Result<&AccountRecord, HttpError> {
        self.require_post_as_get()?;
        self.account()
    }

    /// The payload as JSON of type `T`.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, HttpError> {
        if self.jws.is_post_as_get() {
            return Err(HttpError::new(
                ProblemType::Malformed,
                "this request needs a JSON payload, not POST-as-GET",
            ));
        }
        serde_json::from_slice(&self.jws.payload).map_err(|e| {
            HttpError::new(
                ProblemType::Malformed,
                format!("the JWS payload is not the expected JSON object: {e}"),
            )
        })
    }

    /// Requires POST-as-GET (an empty payload, RFC 8555 §6.3).
    pub fn require_post_as_get(&self) -> Result<(), HttpError> {
        if self.jws.is_post_as_get() {
            Ok(())
        } else {
            Err(HttpError::new(
                ProblemType::Malformed,
                "this resource is read with POST-as-GET: send an empty payload",
            ))
        }
    }
}

/// Runs every check on a POST to an ACME resource of `provisioner`.
pub async fn verify(
    state: &AppState,
    provisioner: &str,
    headers: &HeaderMap,
    uri: &Uri,
    body: &Bytes,
    key_ref: KeyRef,
) -> Result<Signed, HttpError> {
    if state.ra.provisioner(provisioner).is_none() {
        return Err(HttpError::new(
            ProblemType::Malformed,
            format!("there is no provisioner {provisioner:?} on this server"),
        )
        .status(404));
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/jose+json"))
    {
        return Err(HttpError::new(
            ProblemType::Malformed,
            format!("Content-Type must be application/jose+json, not {ct:?}"),
        )
        .status(415));
    }
    let links = Links::from_request(headers, uri, provisioner).ok_or_else(|| {
        HttpError::new(
            ProblemType::Malformed,
            "the request has no usable Host header",
        )
    })?;
    let request_url = Links::request_url(headers, uri).ok_or_else(|| {
        HttpError::new(
            ProblemType::Malformed,
            "the request has no usable Host header",
        )
    })?;
    let jws = FlattenedJws::parse(body).map_err(|e| HttpError::from(jws_problem(e)))?;
    let Some(url) = jws.header.url.clone() else {
        return Err(HttpError::new(
            ProblemType::Malformed,
            "the JWS protected header has no \"url\"",
        ));
    };
    if url != request_url {
        return Err(HttpError::new(
            ProblemType::Unauthorized,
            format!("the JWS \"url\" {url:?} is not the URL requested ({request_url:?})"),
        ));
    }
    let Some(nonce) = jws.header.nonce.as_deref() else {
        return Err(HttpError::new(
            ProblemType::BadNonce,
            "the JWS protected header has no \"nonce\"; get one from newNonce",
        ));
    };
    state.nonces.redeem(nonce).await?;
    let mut from_cache = false;
    let signer = match (&jws.header.jwk, &jws.header.kid, key_ref) {
        (Some(_), Some(_), _) => {
            return Err(HttpError::new(
                ProblemType::Malformed,
                "the JWS has both \"jwk\" and \"kid\"; use exactly one",
            ));
        }
        (None, None, _) => {
            return Err(HttpError::new(
                ProblemType::Malformed,
                "the JWS has neither \"jwk\" nor \"kid\"",
            ));
        }
        (Some(_), None, KeyRef::Kid) => {
            return Err(HttpError::new(
                ProblemType::Malformed,
                "this request must be signed with the account's \"kid\", not a \"jwk\"",
            ));
        }
        (None, Some(_), KeyRef::Jwk) => {
            return Err(HttpError::new(
                ProblemType::Malformed,
                "newAccount must be signed with a \"jwk\", not a \"kid\"",
            ));
        }
        (Some(jwk), None, _) => {
            Signer::Key(PublicJwk::from_json(jwk).map_err(|e| HttpError::from(jws_problem(e)))?)
        }
        (None, Some(kid), _) => {
            let prefix = links.account_prefix();
            let Some(id) = kid.strip_prefix(&prefix) else {
                return Err(HttpError::new(
                    ProblemType::AccountDoesNotExist,
                    format!("kid {kid:?} is not an account URL of this directory ({prefix}…)"),
                ));
            };
            let (account, cached) = state.ra.account_for_kid(provisioner, id, false).await?;
            from_cache = cached;
            Signer::Account(account)
        }
    };
    let key = match &signer {
        Signer::Key(k) => k,
        Signer::Account(a) => &a.jwk,
    };
    let signer = match (jws.verify(key), signer) {
        (Ok(()), signer) => signer,
        // With replicas the account may have come from the cache before
        // its key changed on another replica: check the stored one (a
        // signature the stored key refused is not read again).
        (Err(_), Signer::Account(kept)) if from_cache => {
            let (stored, _) = state
                .ra
                .account_for_kid(provisioner, kept.id.as_str(), true)
                .await?;
            jws.verify(&stored.jwk)
                .map_err(|e| HttpError::from(jws_problem(e)))?;
            Signer::Account(stored)
        }
        (Err(e), _) => return Err(HttpError::from(jws_problem(e))),
    };
    Ok(Signed {
        jws,
        signer,
        url,
        links,
    })
}
