//! BIND 9 (Debian's `bind9`) as a real authoritative server for the
//! upstream dns-01 tests: one primary zone on 127.0.0.1 and a free port,
//! taking dynamic updates (RFC 2136) signed with a TSIG key made by
//! `tsig-keygen`, recursion off. Its configuration lives in a temp dir; it
//! runs in the foreground as the current user and is stopped by its pid
//! (through [`ChildGuard`]) on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::procs::{ChildGuard, find_in_path, free_ports, tail};

/// How long named may take to load its zone.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running named.
pub struct Bind {
    child: ChildGuard,
    pub dir: tempfile::TempDir,
    /// Where it listens (UDP and TCP).
    pub addr: SocketAddr,
    /// The zone it serves, fully qualified (`example.test.`).
    pub zone: String,
    /// The TSIG key's name (`acmeproxy.`), algorithm hmac-sha256.
    pub key_name: String,
    /// The TSIG secret, base64.
    pub key_secret: String,
    /// The key block as tsig-keygen wrote it (what `tsig_secret_file` takes).
    pub key_file: PathBuf,
}

/// A program of the bind9 packages: on PATH, or in /usr/sbin (not on a
/// plain user's PATH).
pub fn bind_program(name: &str) -> Option<PathBuf> {
    find_in_path(name).or_else(|| {
        let p = Path::new("/usr/sbin").join(name);
        p.is_file().then_some(p)
    })
}

impl Bind {
    /// Why BIND cannot run here, if it cannot.
    pub fn missing() -> Option<String> {
        ["named", "tsig-keygen", "nsupdate", "dig"]
            .into_iter()
            .find(|p| bind_program(p).is_none())
            .map(|p| {
                format!("`{p}` is not installed (tests/interop/install-clients.sh installs bind9)")
            })
    }

    /// Starts named for `zone` (e.g. `example.test.`) whose name server
    /// `ns1.<zone>` is 127.0.0.1, and waits until it answers the zone's SOA.
    /// `extra_records` are zone-file lines added to the zone.
    pub fn start(zone: &str, extra_records: &[&str]) -> Result<Self, String> {
        // A free TCP port may have its UDP twin taken: try another.
        let mut last = String::new();
        for _ in 0..3 {
            match Self::start_once(zone, extra_records) {
                Ok(bind) => return Ok(bind),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn start_once(zone: &str, extra_records: &[&str]) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("acmeproxy-bind-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let zone = format!("{}.", zone.trim_end_matches('.'));
        let [port] = free_ports().map_err(|e| e.to_string())?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let key_name = "acmeproxy.".to_owned();

        // The key, as an operator makes it.
        let keygen = bind_program("tsig-keygen").ok_or("tsig-keygen is missing")?;
        let out = Command::new(keygen)
            .args(["-a", "hmac-sha256", &key_name])
            .output()
            .map_err(|e| format!("tsig-keygen: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "tsig-keygen failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let key_block = String::from_utf8_lossy(&out.stdout).into_owned();
        let key_secret = key_block
            .split_once("secret \"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(s, _)| s.to_owned())
            .ok_or_else(|| format!("no secret in tsig-keygen's output: {key_block}"))?;
        let key_file = dir.path().join("tsig.key");
        std::fs::write(&key_file, &key_block).map_err(|e| e.to_string())?;

        let d = dir.path().display().to_string();
        let zone_file = dir.path().join("zone.db");
        let mut records = format!(
            "$TTL 60\n\
             @ IN SOA ns1.{zone} hostmaster.{zone} 1 3600 600 86400 60\n\
             @ IN NS ns1.{zone}\n\
             ns1 IN A 127.0.0.1\n"
        );
        for r in extra_records {
            records.push_str(r);
            records.push('\n');
        }
        std::fs::write(&zone_file, records).map_err(|e| e.to_string())?;
        let conf = format!(
            "options {{\n\
             \tdirectory \"{d}\";\n\
             \tpid-file \"{d}/named.pid\";\n\
             \tsession-keyfile \"{d}/session.key\";\n\
             \tmanaged-keys-directory \"{d}\";\n\
             \tlisten-on port {port} {{ 127.0.0.1; }};\n\
             \tlisten-on-v6 {{ none; }};\n\
             \trecursion no;\n\
             \tnotify no;\n\
             \tdnssec-validation no;\n\
             }};\n\
             controls {{ }};\n\
             include \"{key}\";\n\
             zone \"{zone}\" {{\n\
             \ttype primary;\n\
             \tfile \"{zf}\";\n\
             \tupdate-policy {{ grant {key_name} zonesub TXT; }};\n\
             }};\n",
            key = key_file.display(),
            zf = zone_file.display(),
        );
        let conf_path = dir.path().join("named.conf");
        std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
        let named = bind_program("named").ok_or("named is missing")?;
        let mut cmd = Command::new(named);
        // -g: foreground, log to stderr; -4: IPv4 only.
        cmd.args(["-g", "-4", "-c"]).arg(&conf_path);
        let child = ChildGuard::spawn("named", &mut cmd, &dir.path().join("named.log"))?;
        let mut bind = Self {
            child,
            dir,
            addr,
            zone,
            key_name,
            key_secret,
            key_file,
        };
        bind.wait_ready()?;
        Ok(bind)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.child
                .check_running()
                .map_err(|e| format!("{e}\n{}", self.log_tail()))?;
            if self
                .dig(&self.zone.clone(), "SOA")
                .is_ok_and(|a| !a.is_empty())
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "named did not answer within {START_TIMEOUT:?}\n{}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `dig +short` of `name` `rtype`, asked of this server directly:
    /// one line per record, as dig prints it.
    pub fn dig(&self, name: &str, rtype: &str) -> Result<Vec<String>, String> {
        let dig = bind_program("dig").ok_or("dig is missing")?;
        let out = Command::new(dig)
            .arg(format!("@{}", self.addr.ip()))
            .args(["-p", &self.addr.port().to_string()])
            .args(["+short", "+norecurse", "+time=1", "+tries=1"])
            .args([name, rtype])
            .output()
            .map_err(|e| format!("dig: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "dig {name} {rtype}: {}",
                String::from_utf8_lossy(&out.stdout)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect())
    }

    /// The TXT values at `name` itself (not those behind a CNAME there).
    pub fn txt(&self, name: &str) -> Vec<String> {
        self.dig(name, "TXT")
            .unwrap_or_default()
            .into_iter()
            .filter(|l| l.starts_with('"'))
            .map(|l| l.trim_matches('"').to_owned())
            .collect()
    }

    /// The `upstream_challenge` block (rfc2136) for this server and key.
    pub fn rfc2136_json(&self) -> serde_json::Value {
        serde_json::json!({
            "type": "dns-01",
            "provider": "rfc2136",
            "nameserver": self.addr.to_string(),
            "zone": self.zone,
            "tsig_key_name": self.key_name,
            "tsig_algorithm": "hmac-sha256",
            "tsig_secret_file": self.key_file,
            "propagation_timeout": "20s",
            "polling_interval": "200ms",
            "ttl": 60
        })
    }

    /// The `nsupdate -y` key argument (`hmac-sha256:name:secret`).
    pub fn nsupdate_key(&self) -> String {
        format!("hmac-sha256:{}:{}", self.key_name, self.key_secret)
    }

    /// The last lines of named's log.
    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("named.log"), 60)
    }

    /// named's process id.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }
}
