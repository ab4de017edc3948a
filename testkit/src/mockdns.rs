//! A small authoritative DNS server for tests and local interop runs: it
//! answers A, AAAA and TXT questions (RFC 1035 §4) over UDP and TCP on one
//! port from records set in memory or, for TXT, from files that ACME client
//! hooks write (lego's `exec` provider, certbot's `--manual-auth-hook`).
//! Messages are read and written with `hickory-proto`.
//!
//! It is not a general DNS server: one question per message, no zones, no
//! NXDOMAIN (unknown names get NOERROR with no answers), TTL 0 everywhere.
//! It runs on its own thread, so blocking test code cannot starve it.
//!
//! <https://www.rfc-editor.org/rfc/rfc1035#section-4>

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

/// Largest UDP answer without EDNS (RFC 1035 §4.2.1); bigger ones are truncated.
const UDP_MAX: usize = 512;
/// Tries to find a port free for both UDP and TCP when asked for port 0.
const BIND_ATTEMPTS: usize = 20;

/// A running mock DNS server. Dropping it (or [`MockDns::stop`]) stops it.
pub struct MockDns {
    addr: SocketAddr,
    records: Arc<Mutex<Records>>,
    shutdown: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
}

impl MockDns {
    /// Binds UDP and TCP on `addr` (port 0 picks a port free for both) and
    /// starts answering. A queries of names without records get 127.0.0.1,
    /// AAAA queries get nothing (see [`MockDns::set_default_a`]).
    pub fn start(addr: SocketAddr) -> io::Result<Self> {
        let (udp, tcp) = bind_pair(addr)?;
        let addr = udp.local_addr()?;
        let records = Arc::new(Mutex::new(Records::default()));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let served = records.clone();
        let thread = std::thread::Builder::new()
            .name(format!("mockdns-{addr}"))
            .spawn(move || runtime.block_on(serve(udp, tcp, served, shutdown_rx)))?;
        Ok(Self {
            addr,
            records,
            shutdown,
            thread: Some(thread),
        })
    }

    /// The address both the UDP and the TCP socket listen on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `ips` for `name`: IPv4 ones to A queries, IPv6 ones to AAAA
    /// queries. An empty list makes the name answer nothing at all.
    pub fn set_a(&self, name: &str, ips: Vec<IpAddr>) {
        self.lock().addresses.insert(normalize(name), ips);
    }

    /// The address given to names without [`MockDns::set_a`] records, for the
    /// query type of its family (A for IPv4, AAAA for IPv6); `None` answers
    /// nothing. Starts as `Some(127.0.0.1)`.
    pub fn set_default_a(&self, ip: Option<IpAddr>) {
        self.lock().default_address = ip;
    }

    /// Serves `values` as TXT records of `name`, one record per value.
    pub fn set_txt(&self, name: &str, values: Vec<String>) {
        self.lock().txt.insert(normalize(name), values);
    }

    /// Removes the in-memory TXT records of `name` (files are not touched).
    pub fn clear_txt(&self, name: &str) {
        self.lock().txt.remove(&normalize(name));
    }

    /// A directory of TXT records: a TXT query for name N also answers each
    /// non-empty line of the file `<dir>/<N in lower case, no trailing dot>`.
    pub fn set_records_dir(&self, dir: Option<PathBuf>) {
        self.lock().records_dir = dir;
    }

    /// Questions answered so far, as `"<name> <TYPE>"` (e.g. `"example.com A"`).
    pub fn queries(&self) -> Vec<String> {
        self.lock().queries.clone()
    }

    /// Stops the server and waits for its thread.
    pub fn stop(mut self) {
        self.shutdown_now();
    }

    fn shutdown_now(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for MockDns {
    fn drop(&mut self) {
        self.shutdown_now();
    }
}

/// What the server answers from.
struct Records {
    addresses: HashMap<String, Vec<IpAddr>>,
    default_address: Option<IpAddr>,
    txt: HashMap<String, Vec<String>>,
    records_dir: Option<PathBuf>,
    queries: Vec<String>,
}

impl Records {
    fn answers(&mut self, name: &str, qtype: RecordType) -> Vec<RData> {
        self.queries.push(format!("{name} {qtype}"));
        match qtype {
            RecordType::A | RecordType::AAAA => {
                let ips = match self.addresses.get(name) {
                    Some(ips) => ips.clone(),
                    None => self.default_address.into_iter().collect(),
                };
                ips.into_iter()
                    .filter_map(|ip| match ip {
                        IpAddr::V4(v4) if qtype == RecordType::A => Some(RData::A(v4.into())),
                        IpAddr::V6(v6) if qtype == RecordType::AAAA => Some(RData::AAAA(v6.into())),
                        _ => None,
                    })
                    .collect()
            }
            RecordType::TXT => {
                let mut values = self.txt.get(name).cloned().unwrap_or_default();
                if let Some(dir) = self.records_dir.as_ref().filter(|_| safe_file_name(name)) {
                    if let Ok(text) = std::fs::read_to_string(dir.join(name)) {
                        values.extend(
                            text.lines()
                                .map(str::trim_end)
                                .filter(|l| !l.is_empty())
                                .map(str::to_owned),
                        );
                    }
                }
                values.iter().map(|v| txt_rdata(v)).collect()
            }
            _ => Vec::new(),
        }
    }
}

impl Default for Records {
    fn default() -> Self {
        Self {
            addresses: HashMap::new(),
            default_address: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            txt: HashMap::new(),
            records_dir: None,
            queries: Vec::new(),
        }
    }
}

/// Binds UDP and then TCP on the same port, retrying when port 0 was asked
/// for and the UDP port happens to be taken for TCP.
fn bind_pair(addr: SocketAddr) -> io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let mut last_err = None;
    for _ in 0..BIND_ATTEMPTS {
        let udp = std::net::UdpSocket::bind(addr)?;
        match std::net::TcpListener::bind(udp.local_addr()?) {
            Ok(tcp) => {
                udp.set_nonblocking(true)?;
                tcp.set_nonblocking(true)?;
                return Ok((udp, tcp));
            }
            Err(e) if addr.port() == 0 => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("no port free for both UDP and TCP")))
}

async fn serve(
    udp: std::net::UdpSocket,
    tcp: std::net::TcpListener,
    records: Arc<Mutex<Records>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (Ok(udp), Ok(tcp)) = (UdpSocket::from_std(udp), TcpListener::from_std(tcp)) else {
        return;
    };
    let mut buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            received = udp.recv_from(&mut buf) => {
                let Ok((len, peer)) = received else { continue };
                let Some(query) = buf.get(..len) else { continue };
                if let Some(response) = respond(query, &records, Some(UDP_MAX)) {
                    let _ = udp.send_to(&response, peer).await;
                }
            }
            accepted = tcp.accept() => {
                if let Ok((stream, _)) = accepted {
                    let records = records.clone();
                    let shutdown = shutdown.clone();
                    tokio::spawn(serve_tcp(stream, records, shutdown));
                }
            }
        }
    }
}

/// Answers length-prefixed queries (RFC 1035 §4.2.2) until the peer closes.
async fn serve_tcp(
    mut stream: TcpStream,
    records: Arc<Mutex<Records>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let query = tokio::select! {
            _ = shutdown.changed() => return,
            query = read_tcp_message(&mut stream) => query,
        };
        let Ok(query) = query else { return };
        let Some(response) = respond(&query, &records, None) else {
            return;
        };
        let Ok(len) = u16::try_from(response.len()) else {
            return;
        };
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(&response);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

async fn read_tcp_message(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let len = stream.read_u16().await?;
    let mut message = vec![0u8; usize::from(len)];
    stream.read_exact(&mut message).await?;
    Ok(message)
}

/// Builds the response to `query`; `None` when it is not worth answering.
fn respond(query: &[u8], records: &Mutex<Records>, limit: Option<usize>) -> Option<Vec<u8>> {
    let Ok(request) = Message::from_vec(query) else {
        // Not a message we can read: FORMERR when it has a header at all.
        let id = u16::from_be_bytes([*query.first()?, *query.get(1)?]);
        query.get(..12)?;
        return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
            .to_vec()
            .ok();
    };
    if request.message_type() != MessageType::Query {
        return None;
    }
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_authoritative(true)
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(true);
    let [question] = request.queries() else {
        response.set_response_code(ResponseCode::FormErr);
        return response.to_vec().ok();
    };
    response.add_query(question.clone());
    let name = normalize(&question.name().to_ascii());
    let answers = if question.query_class() == DNSClass::IN {
        records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .answers(&name, question.query_type())
    } else {
        Vec::new()
    };
    for rdata in answers {
        response.add_answer(Record::from_rdata(question.name().clone(), 0, rdata));
    }
    let out = response.to_vec().ok()?;
    if limit.is_some_and(|max| out.len() > max) {
        // Truncated (TC): the question alone, so the client retries over TCP.
        response.take_answers();
        response.set_truncated(true);
        return response.to_vec().ok();
    }
    Some(out)
}

/// TXT RDATA: the value as character-strings of at most 255 bytes.
fn txt_rdata(value: &str) -> RData {
    let chunks: Vec<&[u8]> = if value.is_empty() {
        vec![b""]
    } else {
        value.as_bytes().chunks(255).collect()
    };
    RData::TXT(TXT::from_bytes(chunks))
}

/// Whether `name` can name a file inside the records directory (no `/`, no `..`).
fn safe_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use hickory_proto::rr::Name;

    use super::*;

    fn query(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
        let mut q = Message::new();
        q.set_id(id)
            .set_recursion_desired(true)
            .add_query(hickory_proto::op::Query::query(
                Name::from_ascii(name).unwrap(),
                qtype,
            ));
        q.to_vec().unwrap()
    }

    fn records() -> Mutex<Records> {
        Mutex::new(Records::default())
    }

    fn parse(r: &[u8]) -> Message {
        Message::from_vec(r).unwrap()
    }

    #[test]
    fn a_answer_echoes_the_question() {
        let q = query(0xbeef, "WWW.Example.com", RecordType::A);
        let r = parse(&respond(&q, &records(), Some(UDP_MAX)).unwrap());
        assert_eq!(r.id(), 0xbeef);
        assert_eq!(r.message_type(), MessageType::Response);
        assert!(r.authoritative() && r.recursion_desired() && r.recursion_available());
        assert_eq!(r.response_code(), ResponseCode::NoError);
        assert_eq!(r.queries(), parse(&q).queries());
        let [answer] = r.answers() else {
            panic!("one answer: {r:?}")
        };
        assert_eq!(answer.data(), &RData::A(Ipv4Addr::LOCALHOST.into()));
        assert_eq!(answer.ttl(), 0);
    }

    #[test]
    fn unknown_names_and_types_get_empty_noerror() {
        let recs = records();
        recs.lock().unwrap().default_address = None;
        for qtype in [
            RecordType::A,
            RecordType::AAAA,
            RecordType::TXT,
            RecordType::MX,
        ] {
            let r = parse(&respond(&query(1, "nothing.test", qtype), &recs, None).unwrap());
            assert_eq!(r.response_code(), ResponseCode::NoError);
            assert!(r.answers().is_empty());
        }
        assert_eq!(recs.lock().unwrap().queries[3], "nothing.test MX");
    }

    #[test]
    fn aaaa_and_long_txt_encoding() {
        let recs = records();
        recs.lock()
            .unwrap()
            .addresses
            .insert("v6.test".into(), vec![IpAddr::V6(Ipv6Addr::LOCALHOST)]);
        let r = parse(&respond(&query(1, "v6.test", RecordType::AAAA), &recs, None).unwrap());
        assert_eq!(r.answers().len(), 1);
        assert_eq!(
            r.answers()[0].data(),
            &RData::AAAA(Ipv6Addr::LOCALHOST.into())
        );

        let RData::TXT(txt) = txt_rdata(&"y".repeat(300)) else {
            panic!("TXT")
        };
        let lens: Vec<usize> = txt.txt_data().iter().map(|s| s.len()).collect();
        assert_eq!(lens, [255, 45]);
        let RData::TXT(empty) = txt_rdata("") else {
            panic!("TXT")
        };
        assert_eq!(empty.txt_data().len(), 1);
    }

    #[test]
    fn big_udp_answers_are_truncated() {
        let recs = records();
        recs.lock()
            .unwrap()
            .txt
            .insert("big.test".into(), vec!["z".repeat(600)]);
        let q = query(7, "big.test", RecordType::TXT);
        let udp = parse(&respond(&q, &recs, Some(UDP_MAX)).unwrap());
        assert!(udp.truncated(), "TC set");
        assert!(udp.answers().is_empty());
        let tcp = parse(&respond(&q, &recs, None).unwrap());
        assert!(!tcp.truncated());
        assert_eq!(tcp.answers().len(), 1);
    }

    #[test]
    fn malformed_messages() {
        let recs = records();
        assert!(respond(&[0, 1, 0], &recs, None).is_none());
        // Responses are not answered.
        let mut q = query(1, "a.test", RecordType::A);
        q[2] |= 0x80;
        assert!(respond(&q, &recs, None).is_none());
        // Two questions: FORMERR.
        let mut two = parse(&query(1, "a.test", RecordType::A));
        two.add_query(hickory_proto::op::Query::query(
            Name::from_ascii("b.test").unwrap(),
            RecordType::A,
        ));
        let r = parse(&respond(&two.to_vec().unwrap(), &recs, None).unwrap());
        assert_eq!(r.response_code(), ResponseCode::FormErr);
    }

    #[test]
    fn record_file_names_cannot_escape_the_directory() {
        assert!(safe_file_name("_acme-challenge.example.com"));
        assert!(!safe_file_name("..passwd"));
        assert!(!safe_file_name("a/b"));
        assert!(!safe_file_name(""));
    }
}
