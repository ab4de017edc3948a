//! DNS resolution for validation: the [`DnsResolver`] seam and its
//! hickory-resolver implementation. http-01 and tls-alpn-01 resolve A/AAAA
//! through it (RFC 8555 §8.3, RFC 8737 §3), dns-01 reads TXT (RFC 8555 §8.4).
//!
//! Answers are not cached across validations, so a client that fixes its
//! records after a failed attempt is seen at once.
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-8.4>

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use async_trait::async_trait;
use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::{Name, ResolveError, TokioResolver};

use super::ValidationError;

/// Looks names up for validation.
#[async_trait]
pub trait DnsResolver: Send + Sync + 'static {
    /// A and AAAA records of `name`.
    async fn lookup_ip(&self, name: &str) -> Result<Vec<IpAddr>, ValidationError>;
    /// TXT records of `name`, each record's strings joined.
    async fn lookup_txt(&self, name: &str) -> Result<Vec<String>, ValidationError>;
}

/// The hickory-resolver implementation: either the system's name servers
/// (`/etc/resolv.conf`) or exactly the configured ones, over UDP with TCP for
/// truncated answers. Names are always looked up as absolute (no search
/// domains, no hosts file) and nothing is cached.
#[derive(Clone)]
pub struct HickoryResolver {
    resolver: TokioResolver,
    /// The name servers, for error messages (`127.0.0.1:53, [::1]:53`).
    servers: String,
}

impl HickoryResolver {
    /// A resolver asking `servers` (each over UDP and TCP), or the system's
    /// name servers when `servers` is empty. `timeout` bounds each query.
    pub fn new(servers: &[SocketAddr], timeout: Duration) -> Result<Self, ResolverError> {
        let name_servers = if servers.is_empty() {
            let (system, _) =
                hickory_resolver::system_conf::read_system_conf().map_err(ResolverError::System)?;
            system.name_servers().to_vec()
        } else {
            servers
                .iter()
                .flat_map(|addr| {
                    [Protocol::Udp, Protocol::Tcp]
                        .map(|protocol| NameServerConfig::new(*addr, protocol))
                })
                .collect()
        };
        if name_servers.is_empty() {
            return Err(ResolverError::NoServers);
        }
        let mut shown: Vec<String> = Vec::new();
        for ns in &name_servers {
            let addr = ns.socket_addr.to_string();
            if !shown.contains(&addr) {
                shown.push(addr);
            }
        }
        // No domain and no search list: validation names are always absolute.
        let config = ResolverConfig::from_parts(None, Vec::new(), name_servers);
        let mut options = ResolverOpts::default();
        options.timeout = timeout;
        options.attempts = 1;
        options.cache_size = 0;
        options.positive_max_ttl = Some(Duration::ZERO);
        options.negative_max_ttl = Some(Duration::ZERO);
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.use_hosts_file = ResolveHosts::Never;
        options.try_tcp_on_error = true;
        let resolver =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
                .with_options(options)
                .build();
        Ok(Self {
            resolver,
            servers: shown.join(", "),
        })
    }

    /// Turns a hickory failure into a message naming the name, the record
    /// type and, for network trouble, the name servers.
    fn lookup_error(&self, name: &str, record: &str, err: &ResolveError) -> ValidationError {
        let message = if err.is_nx_domain() {
            format!("no {record} record found at {name}: the name does not exist (NXDOMAIN)")
        } else if err.is_no_records_found() {
            format!("no {record} record found at {name}")
        } else {
            match err.proto().map(|p| p.kind()) {
                Some(ProtoErrorKind::Timeout) => format!(
                    "DNS lookup of {record} records at {name} timed out via {}",
                    self.servers
                ),
                _ => format!(
                    "DNS lookup of {record} records at {name} via {} failed: {err}",
                    self.servers
                ),
            }
        };
        ValidationError::Dns(message)
    }
}

#[async_trait]
impl DnsResolver for HickoryResolver {
    async fn lookup_ip(&self, name: &str) -> Result<Vec<IpAddr>, ValidationError> {
        let fqdn = absolute_name(name)?;
        match self.resolver.lookup_ip(fqdn).await {
            Ok(lookup) => {
                let ips: Vec<IpAddr> = lookup.iter().collect();
                if ips.is_empty() {
                    return Err(ValidationError::Dns(format!(
                        "no A or AAAA record found at {name}"
                    )));
                }
                Ok(ips)
            }
            Err(e) => Err(self.lookup_error(name, "A or AAAA", &e)),
        }
    }

    async fn lookup_txt(&self, name: &str) -> Result<Vec<String>, ValidationError> {
        let fqdn = absolute_name(name)?;
        match self.resolver.txt_lookup(fqdn).await {
            Ok(lookup) => Ok(lookup
                .iter()
                .map(|txt| {
                    let joined: Vec<u8> = txt
                        .txt_data()
                        .iter()
                        .flat_map(|s| s.iter())
                        .copied()
                        .collect();
                    String::from_utf8_lossy(&joined).into_owned()
                })
                .collect()),
            Err(e) => Err(self.lookup_error(name, "TXT", &e)),
        }
    }
}

impl fmt::Debug for HickoryResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HickoryResolver")
            .field("servers", &self.servers)
            .finish_non_exhaustive()
    }
}

/// Why a [`HickoryResolver`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    /// No name server configured, and none in the system configuration.
    #[error("no DNS name servers: none configured and none in /etc/resolv.conf")]
    NoServers,
    /// The system configuration could not be read.
    #[error("could not read the system DNS configuration (/etc/resolv.conf)")]
    System(#[source] ResolveError),
}

/// `name` as an absolute DNS name (trailing dot), so no search domain applies.
fn absolute_name(name: &str) -> Result<Name, ValidationError> {
    let mut fqdn = name.trim_end_matches('.').to_owned();
    fqdn.push('.');
    Name::from_ascii(&fqdn)
        .map_err(|e| ValidationError::Dns(format!("{name} is not a valid DNS name: {e}")))
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use acmeproxy_testkit::MockDns;

    const LOCAL: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

    fn resolver(dns: &MockDns) -> HickoryResolver {
        HickoryResolver::new(&[dns.addr()], Duration::from_secs(2)).unwrap()
    }

    #[tokio::test]
    async fn default_a_answer() {
        let dns = MockDns::start(LOCAL).unwrap();
        let ips = resolver(&dns).lookup_ip("anything.test").await.unwrap();
        assert_eq!(ips, vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        assert!(dns.queries().contains(&"anything.test A".to_owned()));
        assert!(dns.queries().contains(&"anything.test AAAA".to_owned()));
    }

    #[tokio::test]
    async fn explicit_a_and_aaaa() {
        let dns = MockDns::start(LOCAL).unwrap();
        let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        dns.set_a("Host.Example.", vec![v4, v6]);
        let mut ips = resolver(&dns).lookup_ip("host.example").await.unwrap();
        ips.sort();
        assert_eq!(ips, vec![v4, v6]);
    }

    #[tokio::test]
    async fn no_address_is_a_dns_error() {
        let dns = MockDns::start(LOCAL).unwrap();
        dns.set_default_a(None);
        let err = resolver(&dns).lookup_ip("nowhere.test").await.unwrap_err();
        assert!(matches!(err, ValidationError::Dns(_)), "{err:?}");
        assert_eq!(err.to_string(), "no A or AAAA record found at nowhere.test");
    }

    #[tokio::test]
    async fn txt_records_and_changes_are_seen_at_once() {
        let dns = MockDns::start(LOCAL).unwrap();
        let r = resolver(&dns);
        let name = "_acme-challenge.example.com";
        let err = r.lookup_txt(name).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "no TXT record found at _acme-challenge.example.com"
        );
        dns.set_txt(name, vec!["one".into(), "two".into()]);
        let mut txt = r.lookup_txt(name).await.unwrap();
        txt.sort();
        assert_eq!(txt, vec!["one".to_owned(), "two".to_owned()]);
        dns.clear_txt(name);
        assert!(r.lookup_txt(name).await.is_err());
    }

    #[tokio::test]
    async fn long_txt_values_are_joined_and_large_answers_use_tcp() {
        let dns = MockDns::start(LOCAL).unwrap();
        let long = "x".repeat(300);
        let values: Vec<String> = (0..4).map(|i| format!("{i}{long}")).collect();
        dns.set_txt("big.test", values.clone());
        let mut txt = resolver(&dns).lookup_txt("big.test").await.unwrap();
        txt.sort();
        assert_eq!(txt, values);
        // Once truncated over UDP, once in full over TCP.
        let asked = dns
            .queries()
            .iter()
            .filter(|q| *q == "big.test TXT")
            .count();
        assert_eq!(asked, 2);
    }

    #[tokio::test]
    async fn serves_over_ipv6_loopback() {
        let Ok(dns) = MockDns::start(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 0)) else {
            eprintln!("no IPv6 loopback here; skipped");
            return;
        };
        dns.set_txt("six.test", vec!["v6".into()]);
        assert_eq!(
            resolver(&dns).lookup_txt("six.test").await.unwrap(),
            vec!["v6".to_owned()]
        );
    }

    #[tokio::test]
    async fn records_dir_files_are_served() {
        let dir = tempfile::tempdir().unwrap();
        let dns = MockDns::start(LOCAL).unwrap();
        dns.set_records_dir(Some(dir.path().to_owned()));
        std::fs::write(
            dir.path().join("_acme-challenge.hook.test"),
            "abc\r\n\ndef\n",
        )
        .unwrap();
        let mut txt = resolver(&dns)
            .lookup_txt("_acme-challenge.HOOK.test.")
            .await
            .unwrap();
        txt.sort();
        assert_eq!(txt, vec!["abc".to_owned(), "def".to_owned()]);
    }

    #[tokio::test]
    async fn timeout_names_the_server() {
        // A UDP socket that never answers, and a TCP listener that never does.
        let silent = std::net::UdpSocket::bind(LOCAL).unwrap();
        let addr = silent.local_addr().unwrap();
        let _tcp = std::net::TcpListener::bind(addr);
        let r = HickoryResolver::new(&[addr], Duration::from_millis(200)).unwrap();
        let err = r.lookup_txt("example.com").await.unwrap_err();
        assert!(matches!(err, ValidationError::Dns(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("DNS lookup of TXT records at example.com timed out via {addr}")
        );
    }

    #[tokio::test]
    async fn stopped_server_is_a_dns_error() {
        let dns = MockDns::start(LOCAL).unwrap();
        let addr = dns.addr();
        let r = HickoryResolver::new(&[addr], Duration::from_millis(300)).unwrap();
        dns.stop();
        let err = r.lookup_ip("example.com").await.unwrap_err();
        assert!(matches!(err, ValidationError::Dns(_)), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("example.com") && text.contains(&addr.to_string()),
            "{text}"
        );
    }

    #[test]
    fn system_config_builds() {
        // The test machine has an /etc/resolv.conf; only construction is checked.
        if std::path::Path::new("/etc/resolv.conf").exists() {
            assert!(HickoryResolver::new(&[], Duration::from_secs(1)).is_ok());
        }
    }
}
