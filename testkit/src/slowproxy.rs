//! A delaying TCP proxy on 127.0.0.1 for slow-upstream tests: forwards bytes
//! both ways unchanged (TLS passes through end to end) and sleeps before
//! passing on each read, so every round trip costs twice the delay. Plain
//! threads, so it keeps forwarding while the test thread blocks on a client.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// A running proxy; stops and closes every connection on drop.
pub struct SlowProxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    connections: Arc<AtomicU64>,
    reads: Arc<AtomicU64>,
    accept: Option<JoinHandle<()>>,
}

impl SlowProxy {
    /// Listens on a free 127.0.0.1 port and forwards to `target`, sleeping
    /// `delay` before forwarding each read, in each direction.
    pub fn start(target: SocketAddr, delay: Duration) -> std::io::Result<Self> {
        assert!(
            target.ip().is_loopback(),
            "the proxy forwards to loopback only"
        );
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicU64::new(0));
        let reads = Arc::new(AtomicU64::new(0));
        let (flag, list, conns, counter) = (
            Arc::clone(&stop),
            Arc::clone(&streams),
            Arc::clone(&connections),
            Arc::clone(&reads),
        );
        let accept = thread::spawn(move || {
            for client in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let clones = (client.try_clone(), server.try_clone());
                let (Ok(client2), Ok(server2)) = clones else {
                    continue;
                };
                if let Ok(mut l) = list.lock() {
                    l.extend(client.try_clone());
                    l.extend(server.try_clone());
                }
                for (from, to) in [(client, server), (server2, client2)] {
                    let counter = Arc::clone(&counter);
                    thread::spawn(move || pump(from, to, delay, &counter));
                }
            }
        });
        Ok(Self {
            addr,
            stop,
            streams,
            connections,
            reads,
            accept: Some(accept),
        })
    }

    /// The proxy's listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    /// Reads forwarded so far (each one delayed), both directions together.
    pub fn delayed_reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // wake the accept loop so it sees the flag
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        // ends every pump thread: their reads fail or see EOF
        if let Ok(list) = self.streams.lock() {
            for s in list.iter() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

/// Copies `from` to `to`, sleeping `delay` before each write; on EOF or an
/// error, half-closes `to` so the peer sees the end too.
fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration, reads: &AtomicU64) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        reads.fetch_add(1, Ordering::SeqCst);
        thread::sleep(delay);
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
