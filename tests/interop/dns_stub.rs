//! Stand-in for `acmeproxy::validate::mockdns::MockDns` until that lands: a
//! minimal UDP DNS server (RFC 1035 section 4) on loopback. Every `A` query
//! answers 127.0.0.1; a `TXT` query for name N answers the lines of the file
//! `<records>/<N lower case, no trailing dot>` (how the dns-01 hooks publish
//! their answers); anything else gets an empty NOERROR answer.

use std::fs;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

const TYPE_A: u16 = 1;
const TYPE_TXT: u16 = 16;
const CLASS_IN: u16 = 1;
const RCODE_FORMERR: u8 = 1;
const RCODE_NOTIMP: u8 = 4;

/// A running stub DNS server; stops on drop.
pub(crate) struct StubDns {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StubDns {
    /// Listens on `addr` (UDP; port 0 picks one) and serves TXT records from `records`.
    pub(crate) fn start(addr: SocketAddr, records: &Path) -> io::Result<Self> {
        let socket = UdpSocket::bind(addr)?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let addr = socket.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, records) = (Arc::clone(&stop), records.to_owned());
        let thread = thread::spawn(move || serve(&socket, &flag, &records));
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address the server answers on.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for StubDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(socket: &UdpSocket, stop: &AtomicBool, records: &Path) {
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        let Ok((len, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        if let Some(reply) = buf.get(..len).and_then(|q| answer(q, records)) {
            let _ = socket.send_to(&reply, peer);
        }
    }
}

/// The reply to one query message, or `None` to drop it.
fn answer(query: &[u8], records: &Path) -> Option<Vec<u8>> {
    let header = query.get(..12)?;
    let (flags, qdcount) = (header.get(2)?, u16::from_be_bytes([header[4], header[5]]));
    if flags & 0x80 != 0 {
        return None; // a response, not a query
    }
    let opcode = (flags >> 3) & 0x0f;
    let mut reply = header.get(..4)?.to_vec();
    // QR, keep opcode and RD; RA
    reply[2] = 0x80 | (flags & 0x79);
    reply[3] = 0x80;
    if opcode != 0 || qdcount != 1 {
        reply[3] |= if opcode != 0 {
            RCODE_NOTIMP
        } else {
            RCODE_FORMERR
        };
        reply.extend_from_slice(&[0; 8]);
        return Some(reply);
    }
    let Some((name, end)) = read_name(query, 12) else {
        reply[3] |= RCODE_FORMERR;
        reply.extend_from_slice(&[0; 8]);
        return Some(reply);
    };
    let question = query.get(12..end + 4)?;
    let qtype = u16::from_be_bytes([*query.get(end)?, *query.get(end + 1)?]);
    let qclass = u16::from_be_bytes([*query.get(end + 2)?, *query.get(end + 3)?]);

    let rdatas: Vec<Vec<u8>> = match (qtype, qclass) {
        (TYPE_A, CLASS_IN) => vec![vec![127, 0, 0, 1]],
        (TYPE_TXT, CLASS_IN) => txt_values(records, &name)
            .iter()
            .map(|v| txt_rdata(v))
            .collect(),
        _ => Vec::new(),
    };
    let ancount = u16::try_from(rdatas.len()).ok()?;
    reply.extend_from_slice(&1u16.to_be_bytes());
    reply.extend_from_slice(&ancount.to_be_bytes());
    reply.extend_from_slice(&[0; 4]);
    reply.extend_from_slice(question);
    for rdata in rdatas {
        reply.extend_from_slice(&[0xc0, 12]); // name: pointer to the question
        reply.extend_from_slice(&qtype.to_be_bytes());
        reply.extend_from_slice(&CLASS_IN.to_be_bytes());
        reply.extend_from_slice(&0u32.to_be_bytes()); // TTL 0: never cached
        reply.extend_from_slice(&u16::try_from(rdata.len()).ok()?.to_be_bytes());
        reply.extend_from_slice(&rdata);
    }
    Some(reply)
}

/// The (lower-case, dot-joined) name starting at `pos` and the offset after it.
/// Queries carry no compression pointers, so none are accepted.
fn read_name(msg: &[u8], mut pos: usize) -> Option<(String, usize)> {
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*msg.get(pos)?);
        if len == 0 {
            return Some((labels.join("."), pos + 1));
        }
        if len & 0xc0 != 0 {
            return None;
        }
        let label = msg.get(pos + 1..pos + 1 + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        pos += 1 + len;
    }
}

fn txt_values(records: &Path, name: &str) -> Vec<String> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Vec::new();
    }
    fs::read_to_string(records.join(name))
        .map(|text| text.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// TXT RDATA: the value as character-strings of at most 255 bytes.
fn txt_rdata(value: &str) -> Vec<u8> {
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return vec![0];
    }
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 255 + 1);
    for chunk in bytes.chunks(255) {
        out.push(u8::try_from(chunk.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(chunk);
    }
    out
}
