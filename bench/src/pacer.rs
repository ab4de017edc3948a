//! Open-loop pacing for `--rate`: flows start on a fixed schedule (one every
//! 1/rate seconds, shared by all workers) instead of as soon as a worker is
//! free, so that latency is measured at a chosen throughput rather than at
//! saturation. `--concurrency` still caps the flows in flight; a start that
//! finds every worker busy runs late, and late starts are counted.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A start is counted late when it runs this much after its slot.
const LATE: Duration = Duration::from_millis(5);

/// The shared schedule.
pub(crate) struct Pacer {
    /// Set by the first start, so that a backlog built before the run does
    /// not count against the schedule.
    start: OnceLock<Instant>,
    interval: Duration,
    next_slot: AtomicU64,
    late: AtomicU64,
}

impl Pacer {
    /// A schedule of `rate` starts per second from the first start. `rate`
    /// must be > 0.
    pub(crate) fn new(rate: f64) -> Self {
        Self {
            start: OnceLock::new(),
            interval: Duration::from_secs_f64(1.0 / rate),
            next_slot: AtomicU64::new(0),
            late: AtomicU64::new(0),
        }
    }

    /// Waits for the next free slot of the schedule.
    pub(crate) async fn wait_turn(&self) {
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
        let start = *self.start.get_or_init(Instant::now);
        let due = start
            + self
                .interval
                .saturating_mul(u32::try_from(slot).unwrap_or(u32::MAX));
        let now = Instant::now();
        if due > now {
            tokio::time::sleep_until(due.into()).await;
        } else if now - due > LATE {
            self.late.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Starts that ran more than 5 ms after their slot.
    pub(crate) fn late_starts(&self) -> u64 {
        self.late.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_are_spaced_by_the_interval() {
        let p = Pacer::new(200.0);
        let t0 = Instant::now();
        for _ in 0..5 {
            p.wait_turn().await;
        }
        // Slots 0..4 at 5 ms apart: the fifth is due 20 ms after the start.
        assert!(
            t0.elapsed() >= Duration::from_millis(19),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(p.late_starts(), 0);
    }
}
