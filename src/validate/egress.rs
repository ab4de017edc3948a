//! Where validation may connect: `validation.denyNetworks`.
//!
//! http-01 and tls-alpn-01 connect to addresses a client chooses, through the
//! DNS records of its identifier and through http-01 redirects (RFC 8555
//! §8.3, §10.2). Every address they would connect to is checked here first,
//! after the name is resolved and before any connection, so the RA cannot be
//! pointed at its own loopback services, at a cloud metadata endpoint or at
//! link-local and multicast addresses. Connections then go to exactly the
//! checked addresses, so a second, different DNS answer cannot slip past.
//!
//! Private networks (RFC 1918, unique-local IPv6, shared address space
//! 100.64.0.0/10) are not denied by default: validating hosts inside the
//! private network is what the RA is for.
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-10.2>

use std::net::{IpAddr, Ipv4Addr};

use super::ValidationError;
pub use crate::model::IpNetwork;

/// The networks denied when `validation.denyNetworks` is not set.
pub const DEFAULT_DENY_NETWORKS: [&str; 13] = [
    // "This network": connecting to 0.0.0.0 reaches the local host on Linux.
    "0.0.0.0/8",
    // Loopback: the RA's own services (admin, metrics, databases).
    "127.0.0.0/8",
    // Link-local, including the cloud metadata endpoint 169.254.169.254.
    "169.254.0.0/16",
    // Multicast.
    "224.0.0.0/4",
    // Reserved ("class E") and the limited broadcast address 255.255.255.255.
    "240.0.0.0/4",
    // Alibaba Cloud's metadata endpoint, outside link-local.
    "100.100.100.200/32",
    // Unspecified: like 0.0.0.0, reaches the local host.
    "::/128",
    // Loopback.
    "::1/128",
    // Link-local.
    "fe80::/10",
    // Multicast.
    "ff00::/8",
    // AWS's IPv6 metadata endpoint (inside the unique-local range).
    "fd00:ec2::254/128",
    // Discard-only (RFC 6666).
    "100::/64",
    // Site-local (deprecated, RFC 3879), never a host to validate.
    "fec0::/10",
];

/// The addresses `ip` stands for when matched against the deny list: the
/// address itself, with an IPv4-mapped IPv6 address (`::ffff:127.0.0.1`)
/// turned into its IPv4 address (the kernel connects to that), and, for the
/// NAT64 well-known prefix (`64:ff9b::/96`, RFC 6052), also the IPv4 address
/// it embeds, which a NAT64 gateway would connect to.
pub fn normalise(ip: IpAddr) -> Vec<IpAddr> {
    match ip {
        IpAddr::V4(_) => vec![ip],
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return vec![IpAddr::V4(v4)];
            }
            let octets = v6.octets();
            let nat64 = octets.get(..12) == Some(&[0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0]);
            match (nat64, octets.get(12..)) {
                (true, Some(&[a, b, c, d])) => {
                    vec![ip, IpAddr::V4(Ipv4Addr::new(a, b, c, d))]
                }
                _ => vec![ip],
            }
        }
    }
}

/// The egress rules validation applies before connecting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressRules {
    deny: Vec<IpNetwork>,
}

impl Default for EgressRules {
    /// [`DEFAULT_DENY_NETWORKS`].
    fn default() -> Self {
        let deny = DEFAULT_DENY_NETWORKS
            .iter()
            .filter_map(|n| IpNetwork::parse(n).ok())
            .collect();
        Self { deny }
    }
}

impl EgressRules {
    /// Rules denying exactly `deny` (an empty list allows every address).
    pub fn new(deny: Vec<IpNetwork>) -> Self {
        Self { deny }
    }

    /// The denied networks.
    pub fn denied(&self) -> &[IpNetwork] {
        &self.deny
    }

    /// The denied network `ip` falls in, if any (after [`normalise`]).
    pub fn denied_by(&self, ip: IpAddr) -> Option<IpNetwork> {
        normalise(ip)
            .into_iter()
            .find_map(|candidate| self.deny.iter().copied().find(|n| n.contains(candidate)))
    }

    /// Checks every address `host` resolved to before any connection:
    /// one denied address refuses the whole validation with a `connection`
    /// problem naming the address, its network and the setting. `what`
    /// names the validation (`"http-01 of example.com"`), `host` what was
    /// resolved (a name, or the address itself).
    pub fn check(&self, ips: &[IpAddr], host: &str, what: &str) -> Result<(), ValidationError> {
        for ip in ips {
            if let Some(net) = self.denied_by(*ip) {
                let subject = if host == ip.to_string() || host == format!("[{ip}]") {
                    format!("{ip}")
                } else {
                    format!("{host} resolves to {ip}, which")
                };
                return Err(ValidationError::Connection(format!(
                    "{what}: {subject} is in {net}, a network validation does not connect to \
                     (validation.denyNetworks)"
                )));
            }
        }
        Ok(())
    }
}

/// Fuzz harness (testkit/src/fuzzing.rs): the input, read as text, is a list of
/// networks and addresses; every address is checked against the default
/// rules and against the networks of the list, which must agree with a plain
/// reading of each network.
pub fn fuzz_addresses(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut networks = Vec::new();
    let mut addresses = Vec::new();
    for word in text.split([' ', '\n', ',', ';']) {
        if let Ok(ip) = word.parse::<IpAddr>() {
            addresses.push(ip);
        }
        if let Ok(net) = IpNetwork::parse(word) {
            // A network contains its own address, and parses back from its text.
            assert!(
                net.contains(net.addr()),
                "{net} does not contain its address"
            );
            assert_eq!(IpNetwork::parse(&net.to_string()), Ok(net), "{word:?}");
            networks.push(net);
        }
    }
    let defaults = EgressRules::default();
    let listed = EgressRules::new(networks);
    for ip in &addresses {
        let _ = defaults.check(&[*ip], &ip.to_string(), "fuzz");
        // Mapped addresses are judged like the IPv4 address they carry.
        if let IpAddr::V4(v4) = ip {
            let mapped = IpAddr::V6(v4.to_ipv6_mapped());
            assert_eq!(defaults.denied_by(*ip), defaults.denied_by(mapped), "{ip}");
            assert_eq!(listed.denied_by(*ip), listed.denied_by(mapped), "{ip}");
        }
        if let Some(net) = listed.denied_by(*ip) {
            assert!(
                normalise(*ip).iter().any(|c| net.contains(*c)),
                "{ip} reported in {net}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_parse_and_cover_what_they_say() {
        let rules = EgressRules::default();
        assert_eq!(rules.denied().len(), DEFAULT_DENY_NETWORKS.len());
        for denied in [
            "127.0.0.1",
            "127.1.2.3",
            "169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "100.100.100.200",
            "::",
            "::1",
            "fe80::1",
            "ff02::1",
            "fd00:ec2::254",
            // IPv4-mapped and NAT64 forms of denied IPv4 addresses.
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(rules.denied_by(ip(denied)).is_some(), "{denied}");
        }
        for allowed in [
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "100.64.0.1",
            "192.0.2.1",
            "8.8.8.8",
            "fd00::1",
            "2001:db8::1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert_eq!(rules.denied_by(ip(allowed)), None, "{allowed}");
        }
    }

    #[test]
    fn networks_parse_strictly() {
        assert_eq!(
            IpNetwork::parse("10.0.0.0/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            IpNetwork::parse("127.0.0.2").unwrap().to_string(),
            "127.0.0.2/32"
        );
        assert_eq!(IpNetwork::parse("::1").unwrap().to_string(), "::1/128");
        assert_eq!(
            IpNetwork::parse("::ffff:127.0.0.0/104")
                .unwrap()
                .to_string(),
            "127.0.0.0/8"
        );
        assert_eq!(
            IpNetwork::parse("0.0.0.0/0").unwrap().to_string(),
            "0.0.0.0/0"
        );
        assert!(
            IpNetwork::parse("0.0.0.0/0")
                .unwrap()
                .contains(ip("8.8.8.8"))
        );
        assert!(!IpNetwork::parse("0.0.0.0/0").unwrap().contains(ip("::1")));
        assert!(IpNetwork::parse("::/0").unwrap().contains(ip("::1")));
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/x",
            "example.com",
            "",
            "10.0.0.1/8",
        ] {
            assert!(IpNetwork::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            IpNetwork::parse("10.0.0.1/8").unwrap_err(),
            "\"10.0.0.1/8\" has host bits set; write the network address, 10.0.0.0/8"
        );
    }

    #[test]
    fn refusal_names_the_address_the_network_and_the_setting() {
        let rules = EgressRules::default();
        let err = rules
            .check(
                &[ip("10.0.0.1"), ip("169.254.169.254")],
                "metadata.example",
                "http-01 of example.com",
            )
            .unwrap_err();
        assert!(matches!(err, ValidationError::Connection(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "http-01 of example.com: metadata.example resolves to 169.254.169.254, which is in \
             169.254.0.0/16, a network validation does not connect to (validation.denyNetworks)"
        );
        let err = rules
            .check(&[ip("::1")], "[::1]", "tls-alpn-01 of ::1")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "tls-alpn-01 of ::1: ::1 is in ::1/128, a network validation does not connect to \
             (validation.denyNetworks)"
        );
        assert!(
            EgressRules::new(Vec::new())
                .check(&[ip("127.0.0.1")], "x", "y")
                .is_ok()
        );
    }

    #[test]
    fn fuzz_harness_accepts_its_own_examples() {
        fuzz_addresses(b"127.0.0.0/8 ::ffff:127.0.0.1 10.0.0.0/8 10.1.2.3 64:ff9b::7f00:1");
    }
}
