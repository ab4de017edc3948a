//! Every resource URL is built here (step-ca's linker). The base comes from
//! the request's Host, so URLs match what the client used to reach us
//! (through a load balancer too); a Host that is not one of the server's
//! names is refused before it reaches a handler ([`host_allowed`]).

use axum::http::{HeaderMap, Uri, header};

use crate::acme::types::ChallengeType;
use crate::model::{AccountId, AuthzId, CertId, OrderId};

/// URL builder for one provisioner, relative to the host the client used.
#[derive(Clone, Debug)]
pub struct Links {
    base: String,
}

impl Links {
    /// Links for `provisioner` at `https://<host>`.
    pub fn new(host: &str, provisioner: &str) -> Self {
        Self {
            base: format!("https://{host}/acme/{provisioner}"),
        }
    }

    /// Links for the request's host (Host header or HTTP/2 authority).
    pub fn from_request(headers: &HeaderMap, uri: &Uri, provisioner: &str) -> Option<Self> {
        request_host(headers, uri).map(|h| Self::new(&h, provisioner))
    }

    /// The URL a request to `uri` was addressed to (for the JWS `url` check).
    pub fn request_url(headers: &HeaderMap, uri: &Uri) -> Option<String> {
        let host = request_host(headers, uri)?;
        Some(format!(
            "https://{host}{}",
            uri.path_and_query().map_or("/", |p| p.as_str())
        ))
    }

    pub fn directory(&self) -> String {
        format!("{}/directory", self.base)
    }
    pub fn new_nonce(&self) -> String {
        format!("{}/new-nonce", self.base)
    }
    pub fn new_account(&self) -> String {
        format!("{}/new-account", self.base)
    }
    pub fn new_order(&self) -> String {
        format!("{}/new-order", self.base)
    }
    pub fn revoke_cert(&self) -> String {
        format!("{}/revoke-cert", self.base)
    }
    pub fn key_change(&self) -> String {
        format!("{}/key-change", self.base)
    }
    pub fn renewal_info(&self) -> String {
        format!("{}/renewal-info", self.base)
    }
    /// The prefix of every account URL; a `kid` must start with it.
    pub fn account_prefix(&self) -> String {
        format!("{}/account/", self.base)
    }
    pub fn account(&self, id: &AccountId) -> String {
        format!("{}/account/{id}", self.base)
    }
    pub fn orders(&self, id: &AccountId) -> String {
        format!("{}/account/{id}/orders", self.base)
    }
    pub fn order(&self, id: &OrderId) -> String {
        format!("{}/order/{id}", self.base)
    }
    pub fn finalize(&self, id: &OrderId) -> String {
        format!("{}/order/{id}/finalize", self.base)
    }
    pub fn authz(&self, id: &AuthzId) -> String {
        format!("{}/authz/{id}", self.base)
    }
    pub fn challenge(&self, authz: &AuthzId, kind: ChallengeType) -> String {
        format!("{}/chall/{authz}/{}", self.base, kind.as_str())
    }
    pub fn certificate(&self, id: &CertId) -> String {
        format!("{}/cert/{id}", self.base)
    }
}

/// Whether the request's host (Host header or HTTP/2 authority, any port)
/// is one of `names` (`dnsNames` and the listen address), so that a name
/// nobody configured is never reflected into URLs. An empty `names`
/// allows any well-formed host; a request without a usable host is left
/// to the handlers, which refuse it.
pub fn host_allowed(headers: &HeaderMap, uri: &Uri, names: &[String]) -> bool {
    if names.is_empty() {
        return true;
    }
    let Some(host) = request_host(headers, uri) else {
        return true;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    names.iter().any(|n| n.eq_ignore_ascii_case(name))
}

fn request_host(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| uri.authority().map(|a| a.as_str().to_owned()))?;
    // A Host header is attacker-controlled; refuse anything that is not a
    // plain host[:port] so it cannot inject into URLs or headers.
    let ok = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b));
    ok.then_some(host)
}

#[cfg(test)]
mod host_tests {
    use super::*;

    fn allowed(host: &str, names: &[&str]) -> bool {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, host.parse().unwrap());
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        host_allowed(&headers, &Uri::from_static("/acme/acme/directory"), &names)
    }

    #[test]
    fn only_the_servers_names_are_reflected() {
        let names = ["ra.example", "::1", "192.0.2.7"];
        for ok in [
            "ra.example",
            "RA.example:443",
            "ra.example.:8443",
            "[::1]:8443",
            "192.0.2.7",
        ] {
            assert!(allowed(ok, &names), "{ok}");
        }
        for bad in [
            "evil.example",
            "ra.example.evil",
            "[::2]",
            "192.0.2.8:443",
            "x",
        ] {
            assert!(!allowed(bad, &names), "{bad}");
        }
        assert!(allowed("anything.example", &[]), "no names: any host");
    }
}
