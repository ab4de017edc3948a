//! Replay-Nonces (RFC 8555 §6.5) in bounded memory, with O(1) issue and
//! redeem.
//!
//! A nonce is `base64url(counter ‖ issued ‖ HMAC-SHA256(key, counter ‖ issued)[..16])`:
//! `counter` is a 64-bit number this process hands out in order, `issued` the
//! Unix time it was made, and `key` 256 random bits drawn when the process
//! starts. Issuing stores nothing: a nonce nobody redeems costs no memory, so
//! a flood of newNonce requests cannot grow the server.
//!
//! Redeeming checks the MAC (a forged or garbled nonce fails), the age (older
//! than the lifetime fails) and the counter against a sliding replay window of
//! the last [`DEFAULT_WINDOW`] counters issued: a bitmap with one bit per
//! counter, kept per 64-counter word with the word's number beside it so that
//! a slot is cleared lazily when the window moves past it. A counter seen
//! before, or older than the window, fails. The window is the hard cap: at
//! most that many nonces are outstanding, and an older one draws `badNonce`,
//! which the client answers by retrying with the fresh `Replay-Nonce` of the
//! error (RFC 8555 §6.5). Memory is fixed at 16 bytes per 64 counters
//! (256 KiB for 2^20).
//!
//! A restart draws a new key, so nonces of the previous process fail with
//! `badNonce` and clients retry.
//!
//! **Replicas** ([`NonceService::shared`]): when several processes share one
//! store, every replica uses one key kept in the store, the counter field
//! holds 64 random bits instead of a counter (so no replica numbers are
//! needed), and the replay window is replaced by a [`ReplaySet`] in the store:
//! redeeming writes the nonce's id once, and a second write anywhere
//! conflicts. That costs one store write per JWS request; see docs/ha.md.
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-6.5>

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use time::Duration;

use crate::model::Clock;

/// Counters in the replay window by default: 2^20 (about a million
/// outstanding nonces; 256 KiB of state).
pub const DEFAULT_WINDOW: u64 = 1 << 20;

/// Bytes of the MAC kept in a nonce.
const TAG_LEN: usize = 16;
/// Bytes of a decoded nonce: counter, issue time, MAC.
const RAW_LEN: usize = 8 + 8 + TAG_LEN;
/// Characters of an encoded nonce (base64url without padding).
const ENCODED_LEN: usize = (RAW_LEN * 4).div_ceil(3);

/// Why a nonce was refused: what the client is told in the `badNonce`
/// problem (RFC 8555 §6.5). Redeeming has no internal failure: the replay
/// window lives in this process's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NonceError {
    /// Not a nonce of this server process (forged, garbled, or issued before
    /// a restart).
    #[error("is not a nonce of this server (or was issued before it restarted)")]
    Unknown,
    /// Redeemed before.
    #[error("was already used")]
    Replayed,
    /// Older than the lifetime, or pushed out of the replay window by newer
    /// nonces.
    #[error("has expired")]
    Expired,
    /// The shared replay set could not be reached (replicas only): the
    /// nonce is neither accepted nor spent.
    #[error("could not be checked (the store failed)")]
    Unavailable,
}

/// The replay set replicas share ([`NonceService::shared`]).
#[async_trait]
pub trait ReplaySet: Send + Sync + 'static {
    /// Marks nonce `id` used until `expires` (Unix seconds; it may be
    /// forgotten after that). `Ok(true)` the first time, `Ok(false)` if any
    /// replica marked it before.
    async fn mark_used(&self, id: &str, expires: i64) -> Result<bool, NonceError>;
}

/// Issues and redeems nonces.
#[derive(Clone)]
pub struct NonceService {
    inner: Arc<Inner>,
}

struct Inner {
    key: hmac::Key,
    clock: Arc<dyn Clock>,
    max_age: Duration,
    /// The next counter to issue.
    next: AtomicU64,
    /// Counters in the window; a multiple of 64.
    window: u64,
    seen: Mutex<Seen>,
    /// Replicas: the shared replay set, used instead of the window.
    shared: Option<Arc<dyn ReplaySet>>,
}

/// The replay bitmap: slot `w % slots` holds word `w` (counters `64w ..
/// 64w + 63`), tagged `w + 1` (0: never used).
struct Seen {
    tags: Box<[u64]>,
    bits: Box<[u64]>,
}

impl NonceService {
    /// A service whose nonces live at most `max_age`, with the default
    /// window of [`DEFAULT_WINDOW`] outstanding nonces.
    pub fn new(clock: Arc<dyn Clock>, max_age: Duration) -> Self {
        Self::with_window(clock, max_age, DEFAULT_WINDOW)
    }

    /// As [`new`](Self::new), with a replay window of `window` counters
    /// (rounded up to a multiple of 64, at least 64).
    pub fn with_window(clock: Arc<dyn Clock>, max_age: Duration, window: u64) -> Self {
        let mut key = [0u8; 32];
        fill_random(&mut key);
        Self::build(clock, max_age, window, &key, None)
    }

    /// A service for one of several replicas sharing a store: `key` is the
    /// one all replicas read from the store, and `replay` the shared replay
    /// set. Nonces carry 64 random bits instead of a counter.
    pub fn shared(
        clock: Arc<dyn Clock>,
        max_age: Duration,
        key: &[u8],
        replay: Arc<dyn ReplaySet>,
    ) -> Self {
        Self::build(clock, max_age, 64, key, Some(replay))
    }

    fn build(
        clock: Arc<dyn Clock>,
        max_age: Duration,
        window: u64,
        key: &[u8],
        shared: Option<Arc<dyn ReplaySet>>,
    ) -> Self {
        let slots = window.div_ceil(64).clamp(1, 1 << 26);
        let len = usize::try_from(slots).unwrap_or(1 << 14);
        Self {
            inner: Arc::new(Inner {
                key: hmac::Key::new(hmac::HMAC_SHA256, key),
                clock,
                max_age,
                next: AtomicU64::new(0),
                window: slots * 64,
                seen: Mutex::new(Seen {
                    tags: vec![0; len].into_boxed_slice(),
                    bits: vec![0; len].into_boxed_slice(),
                }),
                shared,
            }),
        }
    }

    /// A fresh nonce (RFC 8555 §6.5.1). Stores nothing.
    pub fn issue(&self) -> String {
        let counter = self.inner.next.fetch_add(1, Ordering::Relaxed);
        // Replicas: 64 random bits, unique among live nonces with
        // overwhelming odds (a collision only refuses the second one).
        let counter = if self.inner.shared.is_some() {
            let mut r = [0u8; 8];
            fill_random(&mut r);
            u64::from_be_bytes(r)
        } else {
            counter
        };
        let issued = self.inner.clock.now().unix_timestamp();
        let mut raw = [0u8; RAW_LEN];
        raw[..8].copy_from_slice(&counter.to_be_bytes());
        raw[8..16].copy_from_slice(&issued.to_be_bytes());
        let tag = hmac::sign(&self.inner.key, &raw[..16]);
        raw[16..].copy_from_slice(&tag.as_ref()[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Redeems a nonce: accepted once, if this process (or, for replicas,
    /// any replica) issued it, within its lifetime and within the replay
    /// window (replicas: not in the shared replay set).
    pub async fn redeem(&self, nonce: &str) -> Result<(), NonceError> {
        let (counter, issued) = self.check(nonce)?;
        match &self.inner.shared {
            None => self.inner.check_window(counter),
            Some(set) => {
                let expires = issued.saturating_add(self.inner.max_age.whole_seconds());
                let id = format!("{counter:016x}{issued:x}");
                match set.mark_used(&id, expires).await? {
                    true => Ok(()),
                    false => Err(NonceError::Replayed),
                }
            }
        }
    }

    /// The in-memory check of [`redeem`](Self::redeem), for one process.
    #[cfg(test)]
    fn redeem_local(&self, nonce: &str) -> Result<(), NonceError> {
        let (counter, _) = self.check(nonce)?;
        self.inner.check_window(counter)
    }

    /// Checks the MAC and the age; the nonce's counter and issue time.
    fn check(&self, nonce: &str) -> Result<(u64, i64), NonceError> {
        if nonce.len() != ENCODED_LEN {
            return Err(NonceError::Unknown);
        }
        let mut raw = [0u8; RAW_LEN];
        match URL_SAFE_NO_PAD.decode_slice(nonce.as_bytes(), &mut raw) {
            Ok(RAW_LEN) => {}
            _ => return Err(NonceError::Unknown),
        }
        let tag = hmac::sign(&self.inner.key, &raw[..16]);
        if !ring_eq(&tag.as_ref()[..TAG_LEN], &raw[16..]) {
            return Err(NonceError::Unknown);
        }
        let mut word = [0u8; 8];
        word.copy_from_slice(&raw[..8]);
        let counter = u64::from_be_bytes(word);
        word.copy_from_slice(&raw[8..16]);
        let issued = i64::from_be_bytes(word);
        let now = self.inner.clock.now().unix_timestamp();
        let age = now.saturating_sub(issued);
        if age > self.inner.max_age.whole_seconds() || age < -60 {
            return Err(NonceError::Expired);
        }
        Ok((counter, issued))
    }

    /// Nonces issued so far (for the benchmark and tests).
    pub fn issued(&self) -> u64 {
        self.inner.next.load(Ordering::Relaxed)
    }
}

impl Inner {
    fn check_window(&self, counter: u64) -> Result<(), NonceError> {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let next = self.next.load(Ordering::Relaxed);
        if counter >= next {
            // A good MAC on a counter not yet issued: cannot happen with a
            // key of this process.
            return Err(NonceError::Unknown);
        }
        let slots = self.window / 64;
        let newest_word = (next - 1) / 64;
        let w = counter / 64;
        // The window is the last `slots` words; each has a slot of its own.
        if w.saturating_add(slots) <= newest_word {
            return Err(NonceError::Expired);
        }
        let Ok(slot) = usize::try_from(w % slots) else {
            return Err(NonceError::Unknown);
        };
        let (Some(tag), Some(bits)) = (seen.tags.get(slot).copied(), seen.bits.get(slot).copied())
        else {
            return Err(NonceError::Unknown);
        };
        let want = w + 1;
        let bits = match tag.cmp(&want) {
            std::cmp::Ordering::Greater => return Err(NonceError::Expired),
            std::cmp::Ordering::Less => 0,
            std::cmp::Ordering::Equal => bits,
        };
        let bit = 1u64 << (counter % 64);
        if bits & bit != 0 {
            return Err(NonceError::Replayed);
        }
        seen.tags[slot] = want;
        seen.bits[slot] = bits | bit;
        Ok(())
    }
}

/// Fills `buf` from the OS generator, or aborts: as `random_token`, without
/// it no nonce is safe.
pub(crate) fn fill_random(buf: &mut [u8]) {
    if SystemRandom::new().fill(buf).is_err() {
        tracing::error!("the operating system's random generator failed");
        std::process::abort();
    }
}

/// Constant-time comparison of two MAC tags.
fn ring_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FakeClock;

    fn service(window: u64) -> (NonceService, Arc<FakeClock>) {
        let clock = Arc::new(FakeClock::new(time::OffsetDateTime::UNIX_EPOCH));
        let svc = NonceService::with_window(clock.clone(), Duration::minutes(5), window);
        (svc, clock)
    }

    #[test]
    fn a_nonce_redeems_once() {
        let (svc, _) = service(DEFAULT_WINDOW);
        let a = svc.issue();
        assert_eq!(a.len(), ENCODED_LEN);
        assert_eq!(svc.redeem_local(&a), Ok(()));
        assert_eq!(svc.redeem_local(&a), Err(NonceError::Replayed));
        // Out of order is fine within the window.
        let b = svc.issue();
        let c = svc.issue();
        assert_eq!(svc.redeem_local(&c), Ok(()));
        assert_eq!(svc.redeem_local(&b), Ok(()));
        assert_eq!(svc.redeem_local(&b), Err(NonceError::Replayed));
    }

    #[test]
    fn forged_and_garbled_nonces_are_refused() {
        let (svc, _) = service(DEFAULT_WINDOW);
        let good = svc.issue();
        for bad in [
            String::new(),
            "made-up".to_owned(),
            "!".repeat(ENCODED_LEN),
            "A".repeat(ENCODED_LEN),
            format!("{good}A"),
            good[..ENCODED_LEN - 1].to_owned(),
            "é".repeat(ENCODED_LEN / 2),
        ] {
            assert_eq!(svc.redeem_local(&bad), Err(NonceError::Unknown), "{bad:?}");
        }
        // Flip one bit of the counter: the MAC no longer matches.
        let mut raw = URL_SAFE_NO_PAD.decode(&good).unwrap();
        raw[7] ^= 1;
        assert_eq!(
            svc.redeem_local(&URL_SAFE_NO_PAD.encode(&raw)),
            Err(NonceError::Unknown)
        );
        // Another process (another key) issued it.
        let (other, _) = service(DEFAULT_WINDOW);
        assert_eq!(other.redeem_local(&svc.issue()), Err(NonceError::Unknown));
        // The good one still works.
        assert_eq!(svc.redeem_local(&good), Ok(()));
    }

    #[test]
    fn nonces_expire_with_age() {
        let (svc, clock) = service(DEFAULT_WINDOW);
        let a = svc.issue();
        clock.advance(Duration::minutes(6));
        assert_eq!(svc.redeem_local(&a), Err(NonceError::Expired));
        assert_eq!(svc.redeem_local(&svc.issue()), Ok(()));
    }

    #[test]
    fn counters_older_than_the_window_are_refused() {
        let (svc, _) = service(128);
        let old = svc.issue();
        let kept = svc.issue();
        assert_eq!(svc.redeem_local(&kept), Ok(()));
        for _ in 0..200 {
            svc.issue();
        }
        assert_eq!(svc.redeem_local(&old), Err(NonceError::Expired));
        assert_eq!(
            svc.redeem_local(&kept),
            Err(NonceError::Expired),
            "not accepted again"
        );
        // The slots are reused for new counters.
        let fresh: Vec<String> = (0..128).map(|_| svc.issue()).collect();
        for n in &fresh[64..] {
            assert_eq!(svc.redeem_local(n), Ok(()));
            assert_eq!(svc.redeem_local(n), Err(NonceError::Replayed));
        }
    }

    #[test]
    fn a_word_straddling_the_window_edge_cannot_reopen_a_replay() {
        let (svc, _) = service(128);
        let all: Vec<String> = (0..130).map(|_| svc.issue()).collect();
        // Counter 129 is in word 2; counter 1 is in word 0, same slot.
        assert_eq!(svc.redeem_local(&all[129]), Ok(()));
        assert_eq!(svc.redeem_local(&all[1]), Err(NonceError::Expired));
        assert_eq!(svc.redeem_local(&all[129]), Err(NonceError::Replayed));
    }

    #[test]
    fn concurrent_issue_and_redeem() {
        let (svc, _) = service(DEFAULT_WINDOW);
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let svc = svc.clone();
                std::thread::spawn(move || {
                    let mine: Vec<String> = (0..5_000).map(|_| svc.issue()).collect();
                    let ok = mine.iter().filter(|n| svc.redeem_local(n).is_ok()).count();
                    let again = mine.iter().filter(|n| svc.redeem_local(n).is_ok()).count();
                    (mine, ok, again)
                })
            })
            .collect();
        let mut all = std::collections::HashSet::new();
        for t in threads {
            let (mine, ok, again) = t.join().unwrap();
            assert_eq!(ok, mine.len(), "every fresh nonce redeems once");
            assert_eq!(again, 0, "no nonce redeems twice");
            all.extend(mine);
        }
        assert_eq!(all.len(), 40_000, "nonces are unique");
        assert_eq!(svc.issued(), 40_000);
    }
}
