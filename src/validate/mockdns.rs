//! A small authoritative DNS server for tests and local interop runs: it
//! answers A, AAAA and TXT questions (RFC 1035 §4) over UDP and TCP on one
//! port from records set in memory or, for TXT, from files that ACME client
//! hooks write (lego's `exec` provider, certbot's `--manual-auth-hook`).
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

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

const TYPE_A: u16 = 1;
const TYPE_TXT: u16 = 16;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const RCODE_FORMERR: u16 = 1;
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
    fn answers(&mut self, name: &str, qtype: u16) -> Vec<Vec<u8>> {
        self.queries.push(format!("{name} {}", type_name(qtype)));
        match qtype {
            TYPE_A | TYPE_AAAA => {
                let ips = match self.addresses.get(name) {
                    Some(ips) => ips.clone(),
                    None => self.default_address.into_iter().collect(),
                };
                ips.into_iter()
                    .filter_map(|ip| match ip {
                        IpAddr::V4(v4) if qtype == TYPE_A => Some(v4.octets().to_vec()),
                        IpAddr::V6(v6) if qtype == TYPE_AAAA => Some(v6.octets().to_vec()),
                        _ => None,
                    })
                    .collect()
            }
            TYPE_TXT => {
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
    let id = read_u16(query, 0)?;
    let flags = read_u16(query, 2)?;
    if flags & 0x8000 != 0 {
        return None; // a response, not a query
    }
    // QR, the query's opcode, AA, the query's RD, RA.
    let reply_flags = 0x8000 | (flags & 0x7800) | 0x0400 | (flags & 0x0100) | 0x0080;
    let question = match parse_question(query) {
        Some(q) if read_u16(query, 4) == Some(1) => q,
        _ => return Some(header(id, reply_flags | RCODE_FORMERR, 0, 0)),
    };
    let answers = if question.qclass == CLASS_IN {
        records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .answers(&question.name, question.qtype)
    } else {
        Vec::new()
    };
    let question_bytes = query.get(12..question.end)?;
    let mut out = header(id, reply_flags, 1, u16::try_from(answers.len()).ok()?);
    out.extend_from_slice(question_bytes);
    for rdata in &answers {
        out.extend_from_slice(&[0xc0, 0x0c]); // pointer to the question's name
        out.extend_from_slice(&question.qtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes()); // TTL
        out.extend_from_slice(&u16::try_from(rdata.len()).ok()?.to_be_bytes());
        out.extend_from_slice(rdata);
    }
    if limit.is_some_and(|max| out.len() > max) {
        // Truncated (TC): the question alone, so the client retries over TCP.
        let mut short = header(id, reply_flags | 0x0200, 1, 0);
        short.extend_from_slice(question_bytes);
        return Some(short);
    }
    Some(out)
}

struct Question {
    /// Lower case, dot-separated, no trailing dot.
    name: String,
    qtype: u16,
    qclass: u16,
    /// Offset just past the question.
    end: usize,
}

fn parse_question(message: &[u8]) -> Option<Question> {
    let mut pos = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*message.get(pos)?);
        pos += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None; // compression pointers do not occur in a lone question
        }
        let label = message.get(pos..pos + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        pos += len;
    }
    Some(Question {
        name: labels.join("."),
        qtype: read_u16(message, pos)?,
        qclass: read_u16(message, pos + 2)?,
        end: pos + 4,
    })
}

fn header(id: u16, flags: u16, qdcount: u16, ancount: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(UDP_MAX);
    for field in [id, flags, qdcount, ancount, 0, 0] {
        out.extend_from_slice(&field.to_be_bytes());
    }
    out
}

/// TXT RDATA: the value as character-strings of at most 255 bytes.
fn txt_rdata(value: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 1);
    if value.is_empty() {
        out.push(0);
    }
    for chunk in value.as_bytes().chunks(255) {
        out.push(u8::try_from(chunk.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(chunk);
    }
    out
}

fn read_u16(message: &[u8], pos: usize) -> Option<u16> {
    let bytes = message.get(pos..pos + 2)?;
    Some(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]))
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

fn type_name(qtype: u16) -> String {
    match qtype {
        TYPE_A => "A".to_owned(),
        TYPE_AAAA => "AAAA".to_owned(),
        TYPE_TXT => "TXT".to_owned(),
        other => format!("TYPE{other}"),
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        let mut q = header(id, 0x0100, 1, 0);
        for label in name.split('.') {
            q.push(u8::try_from(label.len()).unwrap());
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        q
    }

    fn records() -> Mutex<Records> {
        Mutex::new(Records::default())
    }

    #[test]
    fn a_answer_points_back_to_the_question() {
        let q = query(0xbeef, "WWW.Example.com", TYPE_A);
        let r = respond(&q, &records(), Some(UDP_MAX)).unwrap();
        assert_eq!(&r[..2], &[0xbe, 0xef]);
        // QR, AA, RD, RA; NOERROR; one question, one answer.
        assert_eq!(read_u16(&r, 2), Some(0x8580));
        assert_eq!((read_u16(&r, 4), read_u16(&r, 6)), (Some(1), Some(1)));
        let question_end = q.len();
        assert_eq!(&r[12..question_end], &q[12..]);
        let answer = &r[question_end..];
        assert_eq!(&answer[..2], &[0xc0, 0x0c]);
        assert_eq!(read_u16(answer, 2), Some(TYPE_A));
        assert_eq!(read_u16(answer, 10), Some(4));
        assert_eq!(&answer[12..16], &[127, 0, 0, 1]);
    }

    #[test]
    fn unknown_names_and_types_get_empty_noerror() {
        let recs = records();
        recs.lock().unwrap().default_address = None;
        for qtype in [TYPE_A, TYPE_AAAA, TYPE_TXT, 15] {
            let r = respond(&query(1, "nothing.test", qtype), &recs, None).unwrap();
            assert_eq!(read_u16(&r, 2).unwrap() & 0x000f, 0);
            assert_eq!(read_u16(&r, 6), Some(0));
        }
        assert_eq!(recs.lock().unwrap().queries[3], "nothing.test TYPE15");
    }

    #[test]
    fn aaaa_and_long_txt_encoding() {
        let recs = records();
        recs.lock()
            .unwrap()
            .addresses
            .insert("v6.test".into(), vec![IpAddr::V6(Ipv6Addr::LOCALHOST)]);
        let r = respond(&query(1, "v6.test", TYPE_AAAA), &recs, None).unwrap();
        assert_eq!(read_u16(&r, 6), Some(1));
        assert_eq!(&r[r.len() - 16..], &Ipv6Addr::LOCALHOST.octets());

        let rdata = txt_rdata(&"y".repeat(300));
        assert_eq!(rdata.len(), 302);
        assert_eq!((rdata[0], rdata[256]), (255, 45));
        assert_eq!(txt_rdata(""), vec![0]);
    }

    #[test]
    fn big_udp_answers_are_truncated() {
        let recs = records();
        recs.lock()
            .unwrap()
            .txt
            .insert("big.test".into(), vec!["z".repeat(600)]);
        let q = query(7, "big.test", TYPE_TXT);
        let udp = respond(&q, &recs, Some(UDP_MAX)).unwrap();
        assert_ne!(read_u16(&udp, 2).unwrap() & 0x0200, 0, "TC set");
        assert_eq!(read_u16(&udp, 6), Some(0));
        let tcp = respond(&q, &recs, None).unwrap();
        assert_eq!(read_u16(&tcp, 2).unwrap() & 0x0200, 0);
        assert_eq!(read_u16(&tcp, 6), Some(1));
    }

    #[test]
    fn malformed_messages() {
        let recs = records();
        assert!(respond(&[0, 1, 0], &recs, None).is_none());
        // Responses are not answered.
        let mut q = query(1, "a.test", TYPE_A);
        q[2] |= 0x80;
        assert!(respond(&q, &recs, None).is_none());
        // Two questions: FORMERR.
        let mut q = query(1, "a.test", TYPE_A);
        q[5] = 2;
        let r = respond(&q, &recs, None).unwrap();
        assert_eq!(read_u16(&r, 2).unwrap() & 0x000f, RCODE_FORMERR);
    }

    #[test]
    fn record_file_names_cannot_escape_the_directory() {
        assert!(safe_file_name("_acme-challenge.example.com"));
        assert!(!safe_file_name("..passwd"));
        assert!(!safe_file_name("a/b"));
        assert!(!safe_file_name(""));
    }
}
