//! One issuance flow of the load generator, in RFC 8555 order: account
//! (§7.3), newOrder (§7.4), authorization (§7.5), http-01 (§8.3) answered by
//! the generator's responder, order polling, finalize with a fresh CSR (§7.4),
//! and certificate download (§7.4.2).
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-7.4>

use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SignatureAlgorithm};
use serde::Deserialize;

use crate::client::{AccountKey, FlowError, Kind, Problem, Session};
use crate::responder::Responder;

/// The key type of the certificate requested in the CSR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum KeyType {
    Ec256,
    Ec384,
    Ed25519,
}

impl KeyType {
    fn algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            Self::Ec256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::Ec384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Self::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }

    /// The name used on the command line and in the report.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Ec256 => "ec256",
            Self::Ec384 => "ec384",
            Self::Ed25519 => "ed25519",
        }
    }
}

/// The identifier of one order (RFC 8555 §9.7.7, RFC 8738).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Identifier {
    Dns(String),
    Ip(Ipv4Addr),
}

impl Identifier {
    /// The `n`th identifier: a loopback address `127.x.y.z` (every octet in
    /// 1..=254, so 254³ distinct ones) or, with `suffix`, `b<n>.<suffix>`.
    pub(crate) fn nth(n: u64, suffix: Option<&str>) -> Self {
        match suffix {
            Some(s) => Self::Dns(format!("b{n}.{}", s.trim_start_matches('.'))),
            None => {
                let octet = |v: u64| u8::try_from(v % 254 + 1).unwrap_or(1);
                Self::Ip(Ipv4Addr::new(
                    127,
                    octet(n / (254 * 254)),
                    octet(n / 254),
                    octet(n),
                ))
            }
        }
    }

    fn json(&self) -> serde_json::Value {
        match self {
            Self::Dns(name) => serde_json::json!({"type": "dns", "value": name}),
            Self::Ip(ip) => serde_json::json!({"type": "ip", "value": ip.to_string()}),
        }
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns(name) => f.write_str(name),
            Self::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// How flows behave.
#[derive(Clone, Debug)]
pub(crate) struct FlowSettings {
    pub(crate) key_type: KeyType,
    /// Sleep between two polls of a pending or processing order. The first
    /// poll after the challenge POST or finalize is sent at once. Retry-After
    /// is not honoured, so that every server is polled alike.
    pub(crate) poll_interval: Duration,
    /// Give up polling after this long.
    pub(crate) poll_timeout: Duration,
    /// End the flow when finalize answers `processing`, without polling or
    /// downloading (`--finalize-nowait`).
    pub(crate) finalize_nowait: bool,
}

/// How a flow that did not fail ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// Order polls sent.
    pub(crate) polls: u32,
    /// Finalize answered `processing` and the flow stopped there
    /// (`--finalize-nowait`); no certificate was downloaded.
    pub(crate) ended_processing: bool,
}

/// An order that finalize has been sent for (RFC 8555 §7.4).
pub(crate) struct Finalized {
    /// The order URL, for POST-as-GET.
    pub(crate) order_url: String,
    /// The order in the finalize answer.
    order: Order,
    polls: u32,
}

impl Finalized {
    /// The order status in the finalize answer.
    pub(crate) fn status(&self) -> &str {
        &self.order.status
    }
}

/// A registered account.
pub(crate) struct Account {
    pub(crate) key: AccountKey,
    pub(crate) kid: String,
}

#[derive(Debug, Deserialize)]
struct Order {
    status: String,
    #[serde(default)]
    authorizations: Vec<String>,
    finalize: String,
    certificate: Option<String>,
    error: Option<Problem>,
}

#[derive(Debug, Deserialize)]
struct Authz {
    #[serde(default)]
    challenges: Vec<Challenge>,
}

#[derive(Debug, Deserialize)]
struct Challenge {
    #[serde(rename = "type")]
    kind: String,
    url: String,
    #[serde(default)]
    token: String,
    status: String,
    error: Option<Problem>,
}

/// newAccount with a fresh key (RFC 8555 §7.3).
pub(crate) async fn new_account(session: &mut Session) -> Result<Account, FlowError> {
    let key = AccountKey::generate(session.rng())?;
    let url = session.directory().new_account.clone();
    let payload = serde_json::json!({"termsOfServiceAgreed": true});
    let resp = session
        .post(Kind::NewAccount, &url, &key, None, Some(&payload))
        .await?;
    let kid = resp.location("newAccount")?;
    Ok(Account { key, kid })
}

/// One order for `ident`, validated by http-01 through `responder`, up to the
/// downloaded certificate chain, or with `finalize_nowait` up to a finalize
/// answer of `processing`.
pub(crate) async fn issue(
    session: &mut Session,
    account: &Account,
    ident: &Identifier,
    responder: &Arc<Responder>,
    settings: &FlowSettings,
) -> Result<Outcome, FlowError> {
    let Finalized {
        order_url,
        mut order,
        mut polls,
    } = finalize(session, account, ident, responder, settings).await?;
    if settings.finalize_nowait && order.status == "processing" {
        return Ok(Outcome {
            polls,
            ended_processing: true,
        });
    }
    if order.status != "valid" {
        order = poll(
            session,
            account,
            &order_url,
            &["ready", "processing"],
            settings,
            &mut polls,
        )
        .await?;
    }
    let Some(cert_url) = order.certificate.filter(|_| order.status == "valid") else {
        return Err(invalid("order", order.error));
    };

    let (key, kid) = (&account.key, Some(account.kid.as_str()));
    let resp = session
        .post(Kind::CertDownload, &cert_url, key, kid, None)
        .await?;
    if !resp.body.starts_with(b"-----BEGIN CERTIFICATE-----") {
        return Err(FlowError::Protocol(
            "the certificate download is not a PEM chain".to_owned(),
        ));
    }
    Ok(Outcome {
        polls,
        ended_processing: false,
    })
}

/// One order for `ident`, validated by http-01 through `responder`, up to and
/// including the finalize POST; nothing is polled after it.
pub(crate) async fn finalize(
    session: &mut Session,
    account: &Account,
    ident: &Identifier,
    responder: &Arc<Responder>,
    settings: &FlowSettings,
) -> Result<Finalized, FlowError> {
    let (key, kid) = (&account.key, Some(account.kid.as_str()));
    let url = session.directory().new_order.clone();
    let payload = serde_json::json!({"identifiers": [ident.json()]});
    let resp = session
        .post(Kind::NewOrder, &url, key, kid, Some(&payload))
        .await?;
    let order_url = resp.location("newOrder")?;
    let order: Order = resp.json("order")?;
    let authz_url = match order.authorizations.as_slice() {
        [one] => one.clone(),
        other => {
            return Err(FlowError::Protocol(format!(
                "an order for one identifier has {} authorizations",
                other.len()
            )));
        }
    };

    let resp = session
        .post(Kind::AuthzGet, &authz_url, key, kid, None)
        .await?;
    let authz: Authz = resp.json("authorization")?;
    let Some(challenge) = authz.challenges.iter().find(|c| c.kind == "http-01") else {
        return Err(FlowError::Protocol(
            "the authorization offers no http-01 challenge".to_owned(),
        ));
    };
    let token = challenge.token.clone();
    let _answer = responder.publish(token.clone(), key.key_authorization(&token));
    let resp = session
        .post(
            Kind::ChallengePost,
            &challenge.url,
            key,
            kid,
            Some(&serde_json::json!({})),
        )
        .await?;
    let answered: Challenge = resp.json("challenge")?;
    if answered.status == "invalid" {
        return Err(invalid("challenge", answered.error));
    }

    let mut polls = 0;
    let order = poll(
        session,
        account,
        &order_url,
        &["pending"],
        settings,
        &mut polls,
    )
    .await?;
    if order.status != "ready" {
        return Err(invalid("order", order.error));
    }

    let csr = csr(ident, settings.key_type)?;
    let payload = serde_json::json!({"csr": URL_SAFE_NO_PAD.encode(csr)});
    let resp = session
        .post(Kind::Finalize, &order.finalize, key, kid, Some(&payload))
        .await?;
    let order: Order = resp.json("order")?;
    Ok(Finalized {
        order_url,
        order,
        polls,
    })
}

/// The status of the order at `order_url`, read with one POST-as-GET
/// (RFC 8555 §7.1.3).
pub(crate) async fn order_status(
    session: &mut Session,
    account: &Account,
    order_url: &str,
) -> Result<String, FlowError> {
    Ok(read_order(session, account, order_url).await?.status)
}

/// One POST-as-GET of the order at `order_url`.
async fn read_order(
    session: &mut Session,
    account: &Account,
    order_url: &str,
) -> Result<Order, FlowError> {
    let resp = session
        .post(
            Kind::OrderPoll,
            order_url,
            &account.key,
            Some(&account.kid),
            None,
        )
        .await?;
    resp.json("order")
}

/// Polls the order (POST-as-GET) while its status is one of `waiting`: once
/// at once, then every poll interval.
async fn poll(
    session: &mut Session,
    account: &Account,
    order_url: &str,
    waiting: &[&str],
    settings: &FlowSettings,
    polls: &mut u32,
) -> Result<Order, FlowError> {
    let deadline = Instant::now() + settings.poll_timeout;
    loop {
        let order = read_order(session, account, order_url).await?;
        *polls += 1;
        if !waiting.contains(&order.status.as_str()) {
            return Ok(order);
        }
        if Instant::now() + settings.poll_interval > deadline {
            return Err(FlowError::PollTimeout {
                status: order.status,
            });
        }
        tokio::time::sleep(settings.poll_interval).await;
    }
}

fn invalid(what: &'static str, error: Option<Problem>) -> FlowError {
    let problem = error.unwrap_or_default();
    FlowError::Invalid {
        what,
        problem_type: if problem.kind.is_empty() {
            "no-problem-type".to_owned()
        } else {
            problem.kind
        },
        detail: problem.detail,
    }
}

/// A CSR for `ident` with a fresh key of `key_type`, in DER.
fn csr(ident: &Identifier, key_type: KeyType) -> Result<Vec<u8>, FlowError> {
    let crypto = |what, e: rcgen::Error| FlowError::Crypto {
        what,
        source: Box::new(e),
    };
    let key = KeyPair::generate_for(key_type.algorithm())
        .map_err(|e| crypto("generating the certificate key", e))?;
    let mut params = CertificateParams::new(vec![ident.to_string()])
        .map_err(|e| crypto("building the CSR", e))?;
    params.distinguished_name = DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| crypto("signing the CSR", e))?;
    Ok(csr.der().to_vec())
}

#[cfg(test)]
mod tests {
    use x509_parser::prelude::FromDer;

    use super::*;

    #[test]
    fn identifiers_are_distinct_loopback_addresses() {
        let first = Identifier::nth(0, None);
        assert_eq!(first, Identifier::Ip(Ipv4Addr::new(127, 1, 1, 1)));
        assert_eq!(
            Identifier::nth(254, None),
            Identifier::Ip(Ipv4Addr::new(127, 1, 2, 1))
        );
        let mut seen = std::collections::HashSet::new();
        for n in 0..70_000 {
            let Identifier::Ip(ip) = Identifier::nth(n, None) else {
                panic!("not an IP");
            };
            let o = ip.octets();
            assert_eq!(o[0], 127);
            assert!(o[1..].iter().all(|&b| b != 0 && b != 255), "{ip}");
            assert!(seen.insert(ip), "{ip} repeated");
        }
        assert_eq!(
            Identifier::nth(7, Some(".bench.test")).to_string(),
            "b7.bench.test"
        );
    }

    #[test]
    fn csr_names_the_identifier() {
        for kt in [KeyType::Ec256, KeyType::Ec384, KeyType::Ed25519] {
            let der = csr(&Identifier::nth(3, None), kt).unwrap();
            let (_, parsed) =
                x509_parser::certification_request::X509CertificationRequest::from_der(&der)
                    .unwrap();
            parsed.verify_signature().unwrap();
            let san = parsed
                .requested_extensions()
                .unwrap()
                .find_map(|e| match e {
                    x509_parser::extensions::ParsedExtension::SubjectAlternativeName(s) => {
                        Some(format!("{:?}", s.general_names))
                    }
                    _ => None,
                })
                .unwrap();
            assert!(san.contains("IPAddress([127, 1, 1, 4])"), "{san}");
        }
    }
}
