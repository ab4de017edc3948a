//! DNS on the wire for the dns-01 solver: one query to one server (UDP,
//! TCP when truncated) and RFC 2136 UPDATE messages over TCP, signed with
//! TSIG (RFC 8945). Messages are built and read with hickory-proto.
//!
//! <https://www.rfc-editor.org/rfc/rfc2136>, <https://www.rfc-editor.org/rfc/rfc8945>

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::dnssec::rdata::DNSSECRData;
use hickory_proto::dnssec::rdata::tsig::TsigAlgorithm;
use hickory_proto::dnssec::tsig::TSigner;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode, update_message};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{Name, RData, Record, RecordSet, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::config::TsigKey;

/// Largest UDP answer read; larger ones come over TCP.
const UDP_MAX: usize = 4096;
/// TSIG fudge: how far the server's clock may be from ours (RFC 8945 §10).
const TSIG_FUDGE: u16 = 300;

/// What went wrong talking to one DNS server.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The server refused the request (REFUSED, NOTAUTH, …), with the
    /// TSIG error it reported if any (BADSIG, BADKEY, BADTIME).
    #[error("{server} answered {rcode}{}", tsig.as_ref().map(|t| format!(" (TSIG error {t})")).unwrap_or_default())]
    Refused {
        server: SocketAddr,
        rcode: String,
        tsig: Option<String>,
    },
    /// The server could not be reached, or did not answer in time.
    #[error("{server}: {what}")]
    Unreachable {
        server: SocketAddr,
        what: String,
        #[source]
        source: Option<std::io::Error>,
    },
    /// The name server's name did not resolve (now); retried later.
    #[error("cannot resolve the name server {host}")]
    Unresolved {
        host: String,
        #[source]
        source: Option<std::io::Error>,
    },
    /// A message could not be built or read.
    #[error("{what}")]
    Protocol {
        what: String,
        #[source]
        source: Option<hickory_proto::ProtoError>,
    },
}

impl DnsError {
    fn protocol(what: impl Into<String>, source: hickory_proto::ProtoError) -> Self {
        Self::Protocol {
            what: what.into(),
            source: Some(source),
        }
    }
}

/// A TSIG signer for `key`.
pub(crate) fn signer(key: &TsigKey) -> Result<TSigner, DnsError> {
    let algorithm = match key.algorithm.as_str() {
        "hmac-sha384" => TsigAlgorithm::HmacSha384,
        "hmac-sha512" => TsigAlgorithm::HmacSha512,
        _ => TsigAlgorithm::HmacSha256,
    };
    let name = parse_name(&key.name)?;
    TSigner::new(key.secret.expose().to_vec(), algorithm, name, TSIG_FUDGE).map_err(|e| {
        DnsError::Protocol {
            what: format!("the TSIG key {}: {e}", key.name),
            source: None,
        }
    })
}

/// `name` as a fully qualified DNS name.
pub(crate) fn parse_name(name: &str) -> Result<Name, DnsError> {
    let mut n = Name::from_ascii(name)
        .map_err(|e| DnsError::protocol(format!("{name:?} is not a DNS name"), e))?;
    n.set_fqdn(true);
    Ok(n)
}

/// Asks `server` one question. `recurse` sets RD (for a resolver); an
/// authoritative server is asked without it.
pub(crate) async fn query(
    server: SocketAddr,
    name: &Name,
    rtype: RecordType,
    recurse: bool,
    timeout: Duration,
) -> Result<Message, DnsError> {
    let mut m = Message::new();
    m.set_id(random_id())
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(recurse);
    m.add_query(Query::query(name.clone(), rtype));
    let bytes = m
        .to_vec()
        .map_err(|e| DnsError::protocol("encoding a DNS query", e))?;
    let answer = match udp_exchange(server, &bytes, m.id(), timeout).await? {
        Some(a) => a,
        None => tcp_exchange(server, &bytes, timeout).await?,
    };
    let reply = Message::from_vec(&answer)
        .map_err(|e| DnsError::protocol(format!("reading {server}'s answer"), e))?;
    match reply.response_code() {
        ResponseCode::NoError | ResponseCode::NXDomain => Ok(reply),
        other => Err(DnsError::Refused {
            server,
            rcode: mnemonic(other),
            tsig: None,
        }),
    }
}

/// The TXT strings of `name` in `reply`'s answer section.
pub(crate) fn txt_values(reply: &Message, name: &Name) -> Vec<String> {
    reply
        .answers()
        .iter()
        .filter(|r| r.name() == name)
        .filter_map(|r| match r.data() {
            RData::TXT(t) => Some(
                t.iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect()
}

/// One TXT change: add (`present`) or delete the record `name` = `value`
/// in `zone`.
pub(crate) struct TxtUpdate<'a> {
    pub zone: &'a Name,
    pub name: &'a Name,
    pub value: &'a str,
    pub ttl: u32,
    pub present: bool,
}

/// Sends `change` to the primary `server` (RFC 2136 §2.5.1 / §2.5.4): only
/// that one value, so the other values at the same name (a wildcard and
/// its base name share `_acme-challenge`) stay.
pub(crate) async fn update_txt(
    server: SocketAddr,
    change: &TxtUpdate<'_>,
    tsig: Option<&TSigner>,
    timeout: Duration,
) -> Result<(), DnsError> {
    let TxtUpdate {
        zone,
        name,
        value,
        ttl,
        present,
    } = *change;
    if !zone.zone_of(name) {
        return Err(DnsError::Protocol {
            what: format!("{name} is not inside the zone {zone}"),
            source: None,
        });
    }
    let record = Record::from_rdata(
        name.clone(),
        ttl,
        RData::TXT(TXT::new(vec![value.to_owned()])),
    );
    let rrset = RecordSet::from(record);
    let mut m = if present {
        update_message::append(rrset, zone.clone(), false, false)
    } else {
        update_message::delete_by_rdata(rrset, zone.clone(), false)
    };
    m.set_id(random_id());
    let mut verifier = match tsig {
        Some(signer) => m
            .finalize(signer, unix_now())
            .map_err(|e| DnsError::protocol("signing the update with TSIG", e))?,
        None => None,
    };
    let bytes = m
        .to_vec()
        .map_err(|e| DnsError::protocol("encoding the update", e))?;
    let answer = tcp_exchange(server, &bytes, timeout).await?;
    let reply = Message::from_vec(&answer)
        .map_err(|e| DnsError::protocol(format!("reading {server}'s answer"), e))?;
    if reply.id() != m.id() {
        return Err(DnsError::Protocol {
            what: format!("{server} answered another message (id {})", reply.id()),
            source: None,
        });
    }
    let rcode = reply.response_code();
    if rcode != ResponseCode::NoError {
        return Err(DnsError::Refused {
            server,
            rcode: mnemonic(rcode),
            tsig: tsig_error(&reply),
        });
    }
    if let Some(verify) = verifier.as_mut() {
        // The answer must carry the server's signature over it.
        verify(&answer).map_err(|e| DnsError::Protocol {
            what: format!("{server}'s answer fails TSIG verification: {e}"),
            source: None,
        })?;
    }
    Ok(())
}

/// The TSIG error (RFC 8945 §5.3.2) a server put in its answer, by name.
fn tsig_error(reply: &Message) -> Option<String> {
    reply.signature().iter().find_map(|r| match r.data() {
        RData::DNSSEC(DNSSECRData::TSIG(t)) => {
            // The RDATA's text form: algorithm time fudge mac oid error other.
            let text = t.to_string();
            let code: u16 = text.split(' ').nth(5)?.parse().ok()?;
            Some(match code {
                0 => return None,
                16 => "BADSIG".to_owned(),
                17 => "BADKEY".to_owned(),
                18 => "BADTIME".to_owned(),
                22 => "BADTRUNC".to_owned(),
                other => format!("code {other}"),
            })
        }
        _ => None,
    })
}

/// The RFC mnemonic of a response code (NOTAUTH, REFUSED, …), as BIND's
/// logs and nsupdate print it, with the text after it.
fn mnemonic(rcode: ResponseCode) -> String {
    let name = match rcode {
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::YXDomain => "YXDOMAIN",
        ResponseCode::YXRRSet => "YXRRSET",
        ResponseCode::NXRRSet => "NXRRSET",
        ResponseCode::NotAuth => "NOTAUTH",
        ResponseCode::NotZone => "NOTZONE",
        _ => return format!("response code {}", u16::from(rcode)),
    };
    format!("{name} ({})", rcode.to_str())
}

/// One UDP exchange; `None` when the answer was truncated (ask over TCP).
async fn udp_exchange(
    server: SocketAddr,
    bytes: &[u8],
    id: u16,
    timeout: Duration,
) -> Result<Option<Vec<u8>>, DnsError> {
    let unreachable = |what: &str, e: Option<std::io::Error>| DnsError::Unreachable {
        server,
        what: what.to_owned(),
        source: e,
    };
    let local: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|e| unreachable("opening a UDP socket", Some(e)))?;
    socket
        .connect(server)
        .await
        .map_err(|e| unreachable("connecting over UDP", Some(e)))?;
    // Three tries within the timeout: UDP may lose a datagram.
    let per_try = timeout / 3;
    let mut buf = vec![0u8; UDP_MAX];
    for _ in 0..3 {
        socket
            .send(bytes)
            .await
            .map_err(|e| unreachable("sending over UDP", Some(e)))?;
        let deadline = tokio::time::Instant::now() + per_try;
        loop {
            match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                Err(_) => break,
                Ok(Err(e)) => return Err(unreachable("receiving over UDP", Some(e))),
                Ok(Ok(n)) => {
                    let Some(answer) = buf.get(..n) else { break };
                    // A stray datagram (an earlier try's answer) is skipped.
                    let [id_hi, id_lo, flags, _, ..] = *answer else {
                        continue;
                    };
                    if u16::from_be_bytes([id_hi, id_lo]) != id {
                        continue;
                    }
                    // TC (RFC 1035 §4.1.1): truncated, ask again over TCP.
                    let truncated = flags & 0x02 != 0;
                    return Ok((!truncated).then(|| answer.to_vec()));
                }
            }
        }
    }
    Err(unreachable(
        &format!("no answer over UDP within {timeout:?}"),
        None,
    ))
}

/// One TCP exchange (RFC 1035 §4.2.2: two length bytes before each message).
async fn tcp_exchange(
    server: SocketAddr,
    bytes: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, DnsError> {
    let io = |what: &str| {
        let what = what.to_owned();
        move |e: std::io::Error| DnsError::Unreachable {
            server,
            what,
            source: Some(e),
        }
    };
    let exchange = async {
        let mut stream = TcpStream::connect(server)
            .await
            .map_err(io("connecting over TCP"))?;
        let len = u16::try_from(bytes.len()).map_err(|_| DnsError::Protocol {
            what: "a DNS message over 64 KiB".into(),
            source: None,
        })?;
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(bytes);
        stream
            .write_all(&framed)
            .await
            .map_err(io("sending over TCP"))?;
        let mut len = [0u8; 2];
        stream
            .read_exact(&mut len)
            .await
            .map_err(io("reading the answer's length"))?;
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream
            .read_exact(&mut answer)
            .await
            .map_err(io("reading the answer"))?;
        Ok(answer)
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| DnsError::Unreachable {
            server,
            what: format!("no answer over TCP within {timeout:?}"),
            source: None,
        })?
}

fn random_id() -> u16 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 2];
    // A failing system RNG leaves id 0, which is still a valid id.
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u16::from_be_bytes(b)
}

/// TSIG signs with the wall clock (RFC 8945 §5.1): the server compares it
/// with its own, so no injected clock applies here.
fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        .unwrap_or(0)
}
