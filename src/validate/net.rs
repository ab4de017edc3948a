//! Connection helpers shared by http-01 (RFC 8555 §8.3) and tls-alpn-01
//! (RFC 8737 §3): resolving through the configured resolver, connecting with
//! fallback (IPv6 first), and a TLS client that accepts any certificate, as
//! validators do (the challenge proves control, not a trusted certificate).
//!
//! <https://www.rfc-editor.org/rfc/rfc8737#section-3>

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::{ValidationError, ValidationSettings};
use crate::danger::DangerousAcceptAnyServerCert;

/// Upper bound for connecting to one address, so that a dead IPv6 address
/// leaves time to try IPv4 within the validation timeout.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A host to connect to: a DNS name (resolved through the settings' resolver)
/// or an IP address (used as is).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Host {
    Ip(IpAddr),
    Name(String),
}

impl Host {
    /// Resolves the host to addresses to try, IPv6 before IPv4 (RFC 8555
    /// §8.3 leaves the order open; Boulder tries IPv6 first).
    pub(crate) async fn resolve(
        &self,
        settings: &ValidationSettings,
    ) -> Result<Vec<IpAddr>, ValidationError> {
        match self {
            Self::Ip(ip) => Ok(vec![*ip]),
            Self::Name(name) => {
                let mut ips = settings.resolver.lookup_ip(name).await?;
                ips.sort_by_key(|ip| ip.is_ipv4());
                ips.dedup();
                Ok(ips)
            }
        }
    }
}

impl fmt::Display for Host {
    /// The host as written in a URL authority (IPv6 in brackets).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]"),
            Self::Ip(IpAddr::V4(v4)) => write!(f, "{v4}"),
            Self::Name(name) => f.write_str(name),
        }
    }
}

/// Connects to the first of `ips` (on `port`) that accepts. `what` names the
/// validation for messages (`"http-01 of example.com"`).
pub(crate) async fn connect(
    settings: &ValidationSettings,
    ips: &[IpAddr],
    port: u16,
    what: &str,
) -> Result<(TcpStream, SocketAddr), ValidationError> {
    let limit = settings.timeout.min(MAX_CONNECT_TIMEOUT);
    let mut failures = Vec::new();
    for ip in ips {
        let addr = SocketAddr::new(*ip, port);
        match tokio::time::timeout(limit, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok((stream, addr)),
            Ok(Err(e)) => failures.push((addr, describe_io(&e))),
            Err(_) => failures.push((addr, format!("timed out after {} ms", limit.as_millis()))),
        }
    }
    let message = match failures.as_slice() {
        [] => format!("could not connect for {what}: no address to connect to"),
        [(addr, why)] => format!("could not connect to {addr} for {what}: {why}"),
        many => {
            let each: Vec<String> = many.iter().map(|(a, why)| format!("{a}: {why}")).collect();
            format!(
                "could not connect to any address for {what}: {}",
                each.join("; ")
            )
        }
    };
    Err(ValidationError::Connection(message))
}

/// A short, lower-case description of an I/O error for problem details.
pub(crate) fn describe_io(err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        io::ErrorKind::ConnectionReset => "connection reset by peer".to_owned(),
        io::ErrorKind::TimedOut => "timed out".to_owned(),
        io::ErrorKind::UnexpectedEof => "connection closed early".to_owned(),
        _ => err.to_string(),
    }
}

/// A TLS client configuration that accepts any server certificate (see
/// [`DangerousAcceptAnyServerCert`]) and offers `alpn` protocols.
pub(crate) fn insecure_client_config(alpn: Vec<Vec<u8>>) -> Result<ClientConfig, ValidationError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = DangerousAcceptAnyServerCert::client_config(provider)
        .map_err(|e| ValidationError::Tls(format!("TLS client setup failed: {e}")))?;
    config.alpn_protocols = alpn;
    Ok(config)
}

/// The server name to present: a DNS name as SNI, an IP address as is (no SNI).
pub(crate) fn server_name(name: &str) -> Result<ServerName<'static>, ValidationError> {
    ServerName::try_from(name.to_owned())
        .map_err(|_| ValidationError::Malformed(format!("{name} is not a valid TLS server name")))
}
