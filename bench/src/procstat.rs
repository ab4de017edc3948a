//! CPU time and memory of a process from Linux `/proc` (proc(5)): `utime` +
//! `stime` from `/proc/PID/stat`, `VmRSS` and `VmHWM` from `/proc/PID/status`.

use std::time::Duration;

/// Clock ticks per second of `/proc/PID/stat` (`USER_HZ`, 100 on Linux
/// x86-64 and arm64).
const USER_HZ: u64 = 100;

/// One reading of a process.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ProcSample {
    /// User plus system CPU time so far.
    pub(crate) cpu: Duration,
    /// Resident set size now, in kB.
    pub(crate) rss_kb: u64,
    /// Peak resident set size so far, in kB.
    pub(crate) hwm_kb: u64,
}

/// Reads `/proc/<pid>/...`; `pid` may be `self`.
pub(crate) fn sample(pid: &str) -> std::io::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse(&stat, &status).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unexpected /proc/{pid}/stat or status format"),
        )
    })
}

fn parse(stat: &str, status: &str) -> Option<ProcSample> {
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    let total = ticks(11)?.checked_add(ticks(12)?)?;
    let cpu = Duration::from_millis(total.checked_mul(1000 / USER_HZ)?);
    let kb = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()
    };
    Some(ProcSample {
        cpu,
        rss_kb: kb("VmRSS:")?,
        hwm_kb: kb("VmHWM:")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_and_status() {
        let stat = "4242 (acme proxy) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    250 75 0 0 20 0 5 0 100 1000 200";
        let status = "Name:\tacmeproxy\nVmHWM:\t   40960 kB\nVmRSS:\t   32768 kB\n";
        let s = parse(stat, status).unwrap();
        assert_eq!(s.cpu, Duration::from_millis(3250));
        assert_eq!((s.rss_kb, s.hwm_kb), (32768, 40960));
    }

    #[test]
    fn reads_this_process() {
        let s = sample("self").unwrap();
        assert!(s.rss_kb > 0 && s.hwm_kb >= s.rss_kb);
    }
}
