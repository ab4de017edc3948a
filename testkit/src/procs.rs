//! Process helpers for the integration tests: bounded child processes, free
//! loopback ports, log tails and a tiny http-01 responder (RFC 8555 section
//! 8.3). The ACME client drivers live in `clients`.
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long a single client invocation may run before it is killed.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a child gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// A long-running child (a server under test), the one process guard of
/// the tests: started as the leader of its own process group with stdout
/// and stderr appended to a log; on drop it gets SIGTERM, then SIGKILL if it
/// is still alive after a few seconds. When the test fails, its log is printed.
pub struct ChildGuard {
    child: Child,
    what: String,
    log: PathBuf,
    /// Held open so that a child watching its stdin exits when we go away.
    _stdin: Option<ChildStdin>,
}

impl ChildGuard {
    /// Starts `cmd` with stdin closed and stdout and stderr appended to `log`.
    pub fn spawn(what: &str, cmd: &mut Command, log: &Path) -> Result<Self, String> {
        Self::start(what, cmd.stdin(Stdio::null()), log)
    }

    /// Like [`ChildGuard::spawn`], but the child's stdin is a pipe that
    /// closes when the test process ends, however it ends.
    pub fn spawn_holding_stdin(what: &str, cmd: &mut Command, log: &Path) -> Result<Self, String> {
        Self::start(what, cmd.stdin(Stdio::piped()), log)
    }

    fn start(what: &str, cmd: &mut Command, log: &Path) -> Result<Self, String> {
        let out = open_log(log)?;
        let err = out
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let mut child = cmd
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {what} ({cmd:?}): {e}"))?;
        Ok(Self {
            _stdin: child.stdin.take(),
            child,
            what: what.to_owned(),
            log: log.to_owned(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the child has already exited (e.g. a server that could not start).
    pub fn check_running(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("{} exited early: {status}", self.what)),
            Err(e) => Err(format!("{}: {e}", self.what)),
        }
    }

    /// The exit status, if the child has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL (what `Child::kill` sends on Unix), then reaps the process.
    /// Returns its exit status, which names the signal.
    pub fn sigkill(&mut self) -> ExitStatus {
        self.child
            .kill()
            .unwrap_or_else(|e| panic!("cannot SIGKILL {}: {e}", self.what));
        self.child.wait().unwrap()
    }

    /// Sends SIGTERM to the child alone (through `kill(1)`: libc is not a
    /// dependency).
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-s", "TERM"])
            .arg(self.pid().to_string())
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill: {e}"));
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// Waits up to `limit` for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The last lines of the process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal_group(self.child.id(), "TERM");
            if wait_timeout(&mut self.child, TERM_GRACE).is_none() {
                signal_group(self.child.id(), "KILL");
                let _ = self.child.wait();
            }
        }
        if thread::panicking() {
            eprintln!("{} log:\n{}", self.what, tail(&self.log, 200));
        }
    }
}

/// How often [`wait_https`] asks.
const READY_POLL: Duration = Duration::from_millis(100);

/// The one ready loop: polls `url` until it answers `want` over HTTPS that
/// chains to the root certificate in the file `root` (read at each try, as a
/// server writes it at its first start), for up to `limit`. `alive` is asked
/// before each try; its error (a process that exited) ends the wait.
pub async fn wait_https(
    url: &str,
    root: &Path,
    want: u16,
    limit: Duration,
    mut alive: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    let mut last = String::from("no root certificate yet");
    while Instant::now() < deadline {
        alive()?;
        if let Ok(pem) = fs::read(root) {
            match https_status(url, &pem).await {
                Ok(status) if status == want => return Ok(()),
                Ok(status) => last = format!("HTTP {status}"),
                Err(e) => last = e,
            }
        }
        tokio::time::sleep(READY_POLL).await;
    }
    Err(format!("{url} not ready within {limit:?}: {last}"))
}

/// [`wait_https`] for synchronous tests.
pub fn wait_https_blocking(
    url: &str,
    root: &Path,
    want: u16,
    limit: Duration,
    alive: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?
        .block_on(wait_https(url, root, want, limit, alive))
}

/// The status of `GET url` over HTTPS trusting only `root_pem`.
async fn https_status(url: &str, root_pem: &[u8]) -> Result<u16, String> {
    let root = reqwest::Certificate::from_pem(root_pem).map_err(|e| format!("root: {e}"))?;
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let response = client.get(url).send().await.map_err(|e| format!("{e:?}"))?;
    Ok(response.status().as_u16())
}

/// Runs one client invocation with stdin closed and all output appended to
/// `log`, killing its whole process group after `timeout`. Returns the wall time.
pub fn run_bounded(cmd: &mut Command, timeout: Duration, log: &Path) -> Result<Duration, String> {
    let mut out = open_log(log)?;
    let _ = writeln!(out, "# {cmd:?}");
    let err = out
        .try_clone()
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    let pid = child.id();
    let Some(status) = wait_timeout(&mut child, timeout) else {
        signal_group(pid, "TERM");
        if wait_timeout(&mut child, TERM_GRACE).is_none() {
            signal_group(pid, "KILL");
            let _ = child.wait();
        }
        return Err(format!(
            "timed out after {}s and was killed\n{}",
            timeout.as_secs(),
            tail(log, 30)
        ));
    };
    let elapsed = start.elapsed();
    if status.success() {
        Ok(elapsed)
    } else {
        Err(format!("exited with {status}\n{}", tail(log, 30)))
    }
}

/// Waits up to `timeout` for `child` to exit.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
            Ok(None) | Err(_) => return None,
        }
    }
}

/// Sends `signal` to the process group `pgid` (every child was started as
/// the leader of its own group, so this reaches the hooks it spawned too).
fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("sh")
        .args(["-c", "kill -s \"$1\" -- \"-$2\" 2>/dev/null", "sh", signal])
        .arg(pgid.to_string())
        .status();
}

fn open_log(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open log {}: {e}", path.display()))
}

/// The last `lines` lines of a text file, indented, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut out = format!("    --- last lines of {} ---\n", path.display());
    for line in all.iter().skip(start) {
        out.push_str("    | ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// `n` distinct TCP ports on 127.0.0.1 that were free a moment ago.
pub fn free_ports<const N: usize>() -> io::Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<io::Result<Vec<_>>>()?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

/// Where `binary` is found on `PATH`, if anywhere.
pub fn find_in_path(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
}

/// Whether this process runs as root (needed for `unshare -m`).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

/// The name libtest knows test `name` by when it is defined in the module
/// `module_path` (what `module_path!()` gives there): the path without the
/// test crate's name, for re-running one test of the running binary with
/// `--exact` (the crash tests run a server as such a child process).
pub fn test_name(module_path: &str, name: &str) -> String {
    match module_path.split_once("::") {
        Some((_, module)) => format!("{module}::{name}"),
        None => name.to_owned(),
    }
}

/// Path of a helper script under `tests/interop/`.
pub fn script(name: &str) -> PathBuf {
    crate::repo_root().join("tests/interop").join(name)
}

/// A tiny http-01 responder for clients that only write token files
/// (uacme's hook, dehydrated's WELLKNOWN): serves
/// `GET /.well-known/acme-challenge/TOKEN` from `webroot/TOKEN`.
pub struct HttpResponder {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpResponder {
    /// Listens on 127.0.0.1:`port`; logs each request to `log`.
    pub fn start(port: u16, webroot: &Path, log: &Path) -> Result<Self, String> {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .map_err(|e| format!("http-01 responder cannot listen on port {port}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let (webroot, log, flag) = (webroot.to_owned(), log.to_owned(), Arc::clone(&stop));
        let thread = thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let (webroot, log) = (webroot.clone(), log.clone());
                    thread::spawn(move || serve_token(conn, &webroot, &log));
                }
            }
        });
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for HttpResponder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // wake the accept loop so it sees the flag
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve_token(mut conn: TcpStream, webroot: &Path, log: &Path) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut request_line = String::new();
    let mut reader = BufReader::new(&conn);
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // drain the headers
    let mut header = String::new();
    while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
        header.clear();
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or_default();
    let body = path
        .strip_prefix("/.well-known/acme-challenge/")
        .filter(|t| {
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
        .and_then(|token| fs::read(webroot.join(token)).ok());
    let status = if body.is_some() {
        "200 OK"
    } else {
        "404 Not Found"
    };
    let body = body.unwrap_or_default();
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(&body);
    let _ = conn.shutdown(Shutdown::Write);
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(log) {
        let _ = writeln!(f, "{} -> {status}", request_line.trim_end());
    }
}

/// Fetches `https://127.0.0.1:<port>/roots.pem` without checking the
/// server's certificate, as a user fetches it once (`curl -k`) before
/// pinning it, and writes it to `out`. Clients in the tests then trust only
/// these bytes, so a root that does not work as a trust anchor fails them.
pub fn fetch_roots_pem(port: u16, out: &Path) -> Result<Vec<u8>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let url = format!("https://127.0.0.1:{port}/roots.pem");
    let body = runtime.block_on(async {
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| e.to_string())?;
        let rsp = client
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        let status = rsp.status();
        let body = rsp.bytes().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!(
                "GET {url}: {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
        Ok(body.to_vec())
    })?;
    fs::write(out, &body).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(body)
}

/// Runs the `acmeproxy` binary with `args`; returns (success, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(crate::acmeproxy_bin())
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `true` (after a message) when `what` must be skipped because something
/// it needs is `missing` (the reason); under `CI` that is a failure.
pub fn skip_when_missing(what: &str, missing: Option<String>) -> bool {
    let Some(why) = missing else {
        return false;
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "{what}: {why} (CI is set, so this is a failure)"
    );
    eprintln!("SKIPPED {what}: {why}");
    true
}

/// [`run_cli`] from async code (on the blocking pool).
pub async fn run_cli_async(args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cli(&args)
    })
    .await
    .unwrap()
}
