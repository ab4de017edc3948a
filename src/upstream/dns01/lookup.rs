//! Where the dns-01 records go and when they are visible: the
//! `_acme-challenge` name and the CNAME chain from it, the zone that holds
//! it, the zone's authoritative name servers (its NS records, resolved),
//! and the wait until each of them, asked directly, answers the record.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use hickory_proto::rr::{Name, RData, RecordType};

use super::wire::{self, DnsError};
use super::{Dns01Solver, EXCHANGE_TIMEOUT, MAX_CNAMES, TxtRecord};
use crate::acme::ProblemType;
use crate::config::Dns01Provider;
use crate::upstream::UpstreamError;

impl Dns01Solver {
    /// Where the TXT record for `identifier` goes: `_acme-challenge.<name>.`
    /// (a wildcard `*.x` is proven at `x`), or the end of the CNAME chain
    /// that starts there.
    pub(super) async fn record_name(&self, identifier: &str) -> Result<String, UpstreamError> {
        let base = identifier.trim_start_matches("*.").trim_end_matches('.');
        let mut name = wire::parse_name(&format!("_acme-challenge.{base}."))
            .map_err(|e| self.dns_failure(None, e))?;
        let servers = self.lookup_servers().await?;
        for _ in 0..MAX_CNAMES {
            let Some(target) = self.cname(&servers, &name).await else {
                break;
            };
            tracing::info!(from = %name, to = %target, "_acme-challenge is a CNAME; the TXT record goes to its target");
            name = target;
        }
        let fqdn = name.to_ascii().to_ascii_lowercase();
        if let (Dns01Provider::Rfc2136 { .. }, Some(zone)) = (&self.settings.provider, &self.zone) {
            if !zone.zone_of(&name) {
                return Err(UpstreamError::Rejected {
                    kind: ProblemType::Dns,
                    detail: format!(
                        "{fqdn} (the dns-01 record for {identifier}) is outside the zone {zone}, the only zone the RA updates"
                    ),
                });
            }
        }
        Ok(fqdn)
    }

    /// The CNAME at `name`, asked of the lookup servers.
    pub(super) async fn cname(&self, servers: &[SocketAddr], name: &Name) -> Option<Name> {
        let recurse = self.settings.nameserver.is_none();
        for server in servers {
            let Ok(reply) =
                wire::query(*server, name, RecordType::CNAME, recurse, EXCHANGE_TIMEOUT).await
            else {
                continue;
            };
            return reply.answers().iter().find_map(|r| match r.data() {
                RData::CNAME(c) if r.name() == name => Some(c.0.clone()),
                _ => None,
            });
        }
        None
    }

    /// Waits until every authoritative server of each record's zone
    /// answers it, asked directly (no cache between), or fails after
    /// `propagation_timeout`.
    pub(super) async fn wait_propagated(&self, records: &[TxtRecord]) -> Result<(), UpstreamError> {
        let deadline = tokio::time::Instant::now() + self.settings.propagation_timeout;
        for r in records {
            let name = wire::parse_name(&r.fqdn).map_err(|e| self.dns_failure(None, e))?;
            let zone = self.zone_of(&name).await?;
            let servers = self.authoritative_servers(&zone).await?;
            let mut waiting: Vec<SocketAddr> = servers.clone();
            let mut last: Vec<String> = Vec::new();
            loop {
                last.clear();
                let mut still = Vec::new();
                for server in &waiting {
                    match wire::query(*server, &name, RecordType::TXT, false, EXCHANGE_TIMEOUT)
                        .await
                    {
                        Ok(reply) if wire::txt_values(&reply, &name).contains(&r.value) => {}
                        Ok(reply) => {
                            still.push(*server);
                            last.push(format!(
                                "{server} answered {:?}",
                                wire::txt_values(&reply, &name)
                            ));
                        }
                        Err(e) => {
                            still.push(*server);
                            last.push(e.to_string());
                        }
                    }
                }
                waiting = still;
                if waiting.is_empty() {
                    break;
                }
                if tokio::time::Instant::now() + self.settings.polling_interval > deadline {
                    tracing::warn!(%zone, fqdn = %r.fqdn, servers = ?waiting, "dns-01 record did not propagate in time");
                    return Err(UpstreamError::Rejected {
                        kind: ProblemType::Dns,
                        detail: format!(
                            "timed out after {:?} waiting for the TXT record {} to appear on every authoritative name server of {zone}: {}",
                            self.settings.propagation_timeout,
                            r.fqdn,
                            last.join("; ")
                        ),
                    });
                }
                tokio::time::sleep(self.settings.polling_interval).await;
            }
        }
        Ok(())
    }

    /// The zone that holds `name`: the configured one when it does, else the
    /// owner of the SOA the lookup servers give for `name`.
    pub(super) async fn zone_of(&self, name: &Name) -> Result<Name, UpstreamError> {
        if let Some(zone) = self.zone.as_ref().filter(|z| z.zone_of(name)) {
            return Ok(zone.clone());
        }
        let servers = self.lookup_servers().await?;
        let recurse = self.settings.nameserver.is_none();
        let mut last = None;
        for server in &servers {
            match wire::query(*server, name, RecordType::SOA, recurse, EXCHANGE_TIMEOUT).await {
                Ok(reply) => {
                    let soa = reply
                        .answers()
                        .iter()
                        .chain(reply.name_servers())
                        .find(|r| r.record_type() == RecordType::SOA);
                    if let Some(soa) = soa {
                        return Ok(soa.name().clone());
                    }
                }
                Err(e) => last = Some(e),
            }
        }
        Err(self.dns_failure(
            None,
            last.unwrap_or_else(|| DnsError::Protocol {
                what: format!("no server named the zone of {name}"),
                source: None,
            }),
        ))
    }

    /// The addresses of the zone's authoritative servers: its NS records,
    /// each resolved. A server at the configured name server's address is
    /// asked on that one's port (a test setup on a high port); others on 53.
    pub(super) async fn authoritative_servers(
        &self,
        zone: &Name,
    ) -> Result<Vec<SocketAddr>, UpstreamError> {
        let lookup = self.lookup_servers().await?;
        let configured = match &self.settings.nameserver {
            Some(ns) => resolve(ns).await.unwrap_or_default(),
            None => Vec::new(),
        };
        let recurse = self.settings.nameserver.is_none();
        let mut ns_names = Vec::new();
        let mut last = None;
        for server in &lookup {
            match wire::query(*server, zone, RecordType::NS, recurse, EXCHANGE_TIMEOUT).await {
                Ok(reply) => {
                    ns_names = reply
                        .answers()
                        .iter()
                        .filter_map(|r| match r.data() {
                            RData::NS(ns) => Some(ns.0.clone()),
                            _ => None,
                        })
                        .collect();
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        if ns_names.is_empty() {
            let why = last.map_or_else(|| "no NS records".to_owned(), |e| e.to_string());
            return Err(UpstreamError::Rejected {
                kind: ProblemType::Dns,
                detail: format!("cannot find the authoritative name servers of {zone}: {why}"),
            });
        }
        let mut addrs = BTreeSet::new();
        for ns in &ns_names {
            let mut found = Vec::new();
            for rtype in [RecordType::A, RecordType::AAAA] {
                for server in &lookup {
                    if let Ok(reply) =
                        wire::query(*server, ns, rtype, recurse, EXCHANGE_TIMEOUT).await
                    {
                        found.extend(
                            reply
                                .answers()
                                .iter()
                                .filter(|r| r.name() == ns)
                                .filter_map(|r| match r.data() {
                                    RData::A(a) => Some(std::net::IpAddr::V4(a.0)),
                                    RData::AAAA(a) => Some(std::net::IpAddr::V6(a.0)),
                                    _ => None,
                                }),
                        );
                        break;
                    }
                }
            }
            if found.is_empty() {
                // Out-of-zone names the lookup server does not know: the system's resolver.
                if let Ok(it) =
                    tokio::net::lookup_host((ns.to_ascii().trim_end_matches('.'), 53)).await
                {
                    found.extend(it.map(|a| a.ip()));
                }
            }
            if found.is_empty() {
                tracing::warn!(%zone, ns = %ns, "an authoritative name server has no address; it is not checked");
            }
            for ip in found {
                let port = configured
                    .iter()
                    .find(|c| c.ip() == ip)
                    .map_or(53, SocketAddr::port);
                addrs.insert(SocketAddr::new(ip, port));
            }
        }
        if addrs.is_empty() {
            return Err(UpstreamError::Rejected {
                kind: ProblemType::Dns,
                detail: format!("none of the name servers of {zone} has an address"),
            });
        }
        Ok(addrs.into_iter().collect())
    }

    /// Where names are looked up (CNAMEs, the zone's NS records and their
    /// addresses): the configured name server, asked without recursion, or
    /// else the system's resolvers.
    pub(super) async fn lookup_servers(&self) -> Result<Vec<SocketAddr>, UpstreamError> {
        if let Some(ns) = &self.settings.nameserver {
            return resolve(ns)
                .await
                .map_err(|e| self.dns_failure(self.zone.as_ref(), e));
        }
        let (config, _) = hickory_resolver::system_conf::read_system_conf().map_err(|e| {
            UpstreamError::Internal {
                context:
                    "reading the system's resolvers (give upstream_challenge.nameserver instead)"
                        .into(),
                source: Some(Box::new(e)),
            }
        })?;
        let mut servers: Vec<SocketAddr> = config
            .name_servers()
            .iter()
            .map(|n| n.socket_addr)
            .collect();
        servers.dedup();
        Ok(servers)
    }
}

/// `host:port` (53 when left out) resolved to addresses.
pub(super) async fn resolve(hostport: &str) -> Result<Vec<SocketAddr>, DnsError> {
    if let Ok(a) = hostport.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    if let Ok(ip) = hostport.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, 53)]);
    }
    let target = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        hostport.to_owned()
    } else {
        format!("{hostport}:53")
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&target)
        .await
        .map_err(|e| DnsError::Unresolved {
            host: hostport.to_owned(),
            source: Some(e),
        })?
        .collect();
    if addrs.is_empty() {
        return Err(DnsError::Unresolved {
            host: hostport.to_owned(),
            source: None,
        });
    }
    Ok(addrs)
}
