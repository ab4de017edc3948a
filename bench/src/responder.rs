//! The generator's http-01 responder (RFC 8555 §8.3): answers
//! `GET /.well-known/acme-challenge/{token}` with the key authorization, on
//! one listening address. Bound to `0.0.0.0`, it answers for every loopback
//! address 127.x.y.z, which is how IP identifiers (RFC 8738) are validated.
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-8.3>

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;

/// Published tokens, and how often they were fetched.
#[derive(Debug, Default)]
pub(crate) struct Responder {
    tokens: Mutex<HashMap<String, String>>,
    served: AtomicU64,
    unknown: AtomicU64,
}

impl Responder {
    /// Binds `addr` and serves until the process ends.
    pub(crate) async fn start(addr: SocketAddr) -> std::io::Result<(Arc<Self>, SocketAddr)> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let responder = Arc::new(Self::default());
        let app = Router::new()
            .route("/.well-known/acme-challenge/{token}", get(answer))
            .with_state(responder.clone());
        tokio::spawn(async move {
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("acmeproxy-bench: http-01 responder stopped: {e}");
            }
        });
        Ok((responder, local))
    }

    /// Serves `key_authorization` for `token` until the guard is dropped.
    pub(crate) fn publish(self: &Arc<Self>, token: String, key_authorization: String) -> Published {
        self.lock().insert(token.clone(), key_authorization);
        Published {
            responder: self.clone(),
            token,
        }
    }

    /// Requests answered with a key authorization.
    pub(crate) fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Requests for tokens that were not published (404).
    pub(crate) fn unknown(&self) -> u64 {
        self.unknown.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Removes its token from the responder when dropped.
pub(crate) struct Published {
    responder: Arc<Responder>,
    token: String,
}

impl Drop for Published {
    fn drop(&mut self) {
        self.responder.lock().remove(&self.token);
    }
}

/// Answers one validation request and closes the connection: every order has
/// its own address, so a validator that keeps connections alive (step-ca's Go
/// client does) would otherwise leave one idle connection per order open here.
async fn answer(State(r): State<Arc<Responder>>, Path(token): Path<String>) -> Response {
    let found = r.lock().get(&token).cloned();
    let close = (header::CONNECTION, "close");
    match found {
        Some(ka) => {
            r.served.fetch_add(1, Ordering::Relaxed);
            (
                [(header::CONTENT_TYPE, "application/octet-stream"), close],
                ka,
            )
                .into_response()
        }
        None => {
            r.unknown.fetch_add(1, Ordering::Relaxed);
            (StatusCode::NOT_FOUND, [close]).into_response()
        }
    }
}
