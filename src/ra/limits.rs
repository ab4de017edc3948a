//! Rate limits: token buckets in memory, keyed per account, per account and
//! identifier, per client IP and per EAB key (`authority.rateLimits`).
//!
//! A bucket holds up to `burst` tokens and gains `count` tokens per `period`;
//! an action takes one (newOrder), or several (one per pending
//! authorization), and is refused with `rateLimited` (HTTP 429) and
//! `Retry-After` when too few are left. A bucket that has refilled to full
//! is the same as no bucket, so idle buckets are dropped; the map is capped
//! (`maxTrackedKeys`), and when it is full of busy buckets an arbitrary one
//! is dropped (that key starts afresh: the cap favours bounded memory over
//! exactness).
//!
//! The buckets live in this process: a restart resets them, and each replica
//! (once replicas exist) limits on its own.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::error::RaError;
use crate::acme::ProblemType;

/// The limits, by the name ca.json and the metric use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Limit {
    /// Every request to the ACME listener, per client IP.
    RequestsPerIp,
    /// Accounts created, per client IP.
    NewAccountsPerIp,
    /// newOrder, per account.
    NewOrdersPerAccount,
    /// Authorizations pending at once, per account.
    PendingAuthorizationsPerAccount,
    /// Failed validations, per account and identifier.
    FailedValidationsPerAccountAndIdentifier,
    /// newOrder, per EAB key (summed over the accounts it bound).
    NewOrdersPerEabKey,
}

impl Limit {
    /// Every limit.
    pub const ALL: [Self; 6] = [
        Self::RequestsPerIp,
        Self::NewAccountsPerIp,
        Self::NewOrdersPerAccount,
        Self::PendingAuthorizationsPerAccount,
        Self::FailedValidationsPerAccountAndIdentifier,
        Self::NewOrdersPerEabKey,
    ];

    /// The key under `authority.rateLimits`, also the metric's `limit` label.
    pub fn name(self) -> &'static str {
        match self {
            Self::RequestsPerIp => "requestsPerIp",
            Self::NewAccountsPerIp => "newAccountsPerIp",
            Self::NewOrdersPerAccount => "newOrdersPerAccount",
            Self::PendingAuthorizationsPerAccount => "pendingAuthorizationsPerAccount",
            Self::FailedValidationsPerAccountAndIdentifier => {
                "failedValidationsPerAccountAndIdentifier"
            }
            Self::NewOrdersPerEabKey => "newOrdersPerEabKey",
        }
    }

    /// What the bucket is kept for, in a refusal's detail.
    fn whose(self) -> &'static str {
        match self {
            Self::RequestsPerIp | Self::NewAccountsPerIp => "your IP address",
            Self::NewOrdersPerAccount | Self::PendingAuthorizationsPerAccount => "this account",
            Self::FailedValidationsPerAccountAndIdentifier => "this account and identifier",
            Self::NewOrdersPerEabKey => "the External Account Binding key of this account",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The default: Let's Encrypt's published limits where it has one.
    pub fn default_rate(self) -> Option<Rate> {
        let h = |n: u64| Duration::from_secs(n * 3600);
        Some(match self {
            Self::RequestsPerIp => Rate::new(200, Duration::from_secs(1)),
            Self::NewAccountsPerIp => Rate::new(50, h(3)),
            Self::NewOrdersPerAccount => Rate::new(300, h(3)),
            // A bucket of 1,000 that the end of each pending authorization
            // (valid, invalid, deactivated) refills, and that refills in full
            // over a day (the authorization lifetime) for those that expire.
            Self::PendingAuthorizationsPerAccount => Rate::new(1000, h(24)),
            Self::FailedValidationsPerAccountAndIdentifier => Rate::new(5, h(1)),
            Self::NewOrdersPerEabKey => Rate::new(1500, h(3)),
        })
    }
}

/// `count` tokens per `period`, holding at most `burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period: Duration,
    pub burst: u32,
}

impl Rate {
    /// `count` per `period`, with a burst of `count`.
    pub fn new(count: u32, period: Duration) -> Self {
        Self {
            count,
            period,
            burst: count,
        }
    }

    fn per_second(self) -> f64 {
        f64::from(self.count) / self.period.as_secs_f64().max(1e-3)
    }

    /// `300 per 3h`.
    pub fn describe(self) -> String {
        let secs = self.period.as_secs();
        let period = if secs > 0 && secs % 3600 == 0 {
            format!("{}h", secs / 3600)
        } else if secs > 0 && secs % 60 == 0 {
            format!("{}m", secs / 60)
        } else {
            format!("{:?}", self.period)
        };
        if self.burst == self.count {
            format!("{} per {period}", self.count)
        } else {
            format!("{} per {period}, burst {}", self.count, self.burst)
        }
    }
}

/// The limits in force: `None` is off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimits {
    rates: [Option<Rate>; 6],
    /// Most buckets kept at once (all limits together).
    pub max_keys: usize,
    /// Validations that reach the network at once; the rest wait their turn.
    pub concurrent_validations: usize,
}

/// Default of `maxTrackedKeys`.
pub const DEFAULT_MAX_KEYS: usize = 200_000;
/// Default of `concurrentValidations`.
pub const DEFAULT_CONCURRENT_VALIDATIONS: usize = 64;

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            rates: Limit::ALL.map(Limit::default_rate),
            max_keys: DEFAULT_MAX_KEYS,
            concurrent_validations: DEFAULT_CONCURRENT_VALIDATIONS,
        }
    }
}

impl RateLimits {
    /// Every limit off (validations still capped at the default).
    pub fn off() -> Self {
        Self {
            rates: [None; 6],
            ..Self::default()
        }
    }

    /// The rate of `limit`, if on.
    pub fn get(&self, limit: Limit) -> Option<Rate> {
        self.rates.get(limit.index()).copied().flatten()
    }

    /// Sets (or with `None`, turns off) one limit.
    pub fn set(&mut self, limit: Limit, rate: Option<Rate>) {
        if let Some(r) = self.rates.get_mut(limit.index()) {
            *r = rate.filter(|r| r.count > 0 && r.burst > 0);
        }
    }
}

/// A refused action: which limit, and when a token is back.
#[derive(Clone, Debug)]
pub struct Refusal {
    pub limit: Limit,
    pub rate: Rate,
    pub retry_after: Duration,
}

impl Refusal {
    /// Whole seconds until enough tokens are back (at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.as_secs_f64().ceil().max(1.0) as u64
    }

    /// The `rateLimited` problem (HTTP 429) naming the limit and the wait;
    /// counts the refusal in `acmeproxy_rate_limited_total`.
    pub fn to_error(&self) -> RaError {
        let secs = self.retry_after_secs();
        let at = time::OffsetDateTime::now_utc()
            .checked_add(time::Duration::seconds(
                i64::try_from(secs).unwrap_or(i64::MAX),
            ))
            .and_then(|t| {
                t.replace_nanosecond(0)
                    .ok()?
                    .format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        crate::metrics::rate_limited(self.limit.name());
        RaError::new(
            ProblemType::RateLimited,
            format!(
                "rate limit {} ({}) reached for {}; retry after {secs} s ({at})",
                self.limit.name(),
                self.rate.describe(),
                self.limit.whose()
            ),
        )
        .with_retry_after(secs)
    }
}

/// One bucket, as the admin interface shows it.
#[derive(Clone, Debug, Serialize)]
pub struct BucketView {
    pub limit: &'static str,
    pub key: String,
    pub tokens: f64,
    pub burst: u32,
    pub rate: String,
    /// Seconds until one token is back; 0 if one is there.
    pub retry_after_secs: u64,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(self, rate: Rate, now: Instant) -> f64 {
        let gained = now.saturating_duration_since(self.at).as_secs_f64() * rate.per_second();
        (self.tokens + gained).min(f64::from(rate.burst))
    }
}

type Key = (Limit, String);

struct Shard {
    map: HashMap<Key, Bucket>,
    last_sweep: Instant,
}

const SHARDS: usize = 16;

/// The buckets.
pub struct RateLimiter {
    limits: RateLimits,
    shards: Vec<Mutex<Shard>>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// Empty buckets for `limits`; every limit's refusal count starts at 0.
    pub fn new(limits: RateLimits) -> Self {
        for limit in Limit::ALL {
            crate::metrics::rate_limit_known(limit.name());
        }
        let now = Instant::now();
        Self {
            limits,
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                        last_sweep: now,
                    })
                })
                .collect(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &RateLimits {
        &self.limits
    }

    fn shard(&self, key: &Key) -> &Mutex<Shard> {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        let i = usize::try_from(h.finish() % SHARDS as u64).unwrap_or(0);
        &self.shards[i % self.shards.len()]
    }

    /// Takes `n` tokens from `limit`'s bucket for `key`, or refuses.
    pub fn take(&self, limit: Limit, key: &str, n: u32) -> Result<(), Refusal> {
        self.apply(limit, key, n, true)
    }

    /// Whether `n` tokens are there, taking none.
    pub fn check(&self, limit: Limit, key: &str, n: u32) -> Result<(), Refusal> {
        self.apply(limit, key, n, false)
    }

    /// Gives `n` tokens back (an action that took them did not happen, or a
    /// pending authorization ended).
    pub fn refund(&self, limit: Limit, key: &str, n: u32) {
        let Some(rate) = self.limits.get(limit) else {
            return;
        };
        let k = (limit, key.to_owned());
        let now = Instant::now();
        let mut shard = self
            .shard(&k)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(b) = shard.map.get_mut(&k) {
            let tokens = b.refilled(rate, now) + f64::from(n);
            if tokens >= f64::from(rate.burst) {
                shard.map.remove(&k);
            } else {
                *b = Bucket { tokens, at: now };
            }
        }
    }

    fn apply(&self, limit: Limit, key: &str, n: u32, take: bool) -> Result<(), Refusal> {
        let Some(rate) = self.limits.get(limit) else {
            return Ok(());
        };
        let k = (limit, key.to_owned());
        let now = Instant::now();
        let want = f64::from(n);
        let cap = (self.limits.max_keys / SHARDS).max(1);
        let mut shard = self
            .shard(&k)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let tokens = shard
            .map
            .get(&k)
            .map_or_else(|| f64::from(rate.burst), |b| b.refilled(rate, now));
        if tokens < want {
            let missing = want - tokens;
            return Err(Refusal {
                limit,
                rate,
                retry_after: Duration::from_secs_f64((missing / rate.per_second()).min(1e9)),
            });
        }
        if !take || n == 0 {
            return Ok(());
        }
        if !shard.map.contains_key(&k) && shard.map.len() >= cap {
            make_room(&mut shard, &self.limits, now, cap);
        }
        shard.map.insert(
            k,
            Bucket {
                tokens: tokens - want,
                at: now,
            },
        );
        Ok(())
    }

    /// The buckets kept for an account: its own, its per-identifier ones,
    /// and its EAB key's (`eab_kid`).
    pub fn account_buckets(&self, account: &str, eab_kid: Option<&str>) -> Vec<BucketView> {
        let now = Instant::now();
        let mut out = Vec::new();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            for ((limit, key), b) in &shard.map {
                if !belongs(*limit, key, account, eab_kid) {
                    continue;
                }
                let Some(rate) = self.limits.get(*limit) else {
                    continue;
                };
                let tokens = b.refilled(rate, now);
                let missing = (1.0 - tokens).max(0.0);
                out.push(BucketView {
                    limit: limit.name(),
                    key: key.clone(),
                    tokens: (tokens * 100.0).floor() / 100.0,
                    burst: rate.burst,
                    rate: rate.describe(),
                    retry_after_secs: (missing / rate.per_second()).ceil() as u64,
                });
            }
        }
        out.sort_by(|a, b| (a.limit, &a.key).cmp(&(b.limit, &b.key)));
        out
    }

    /// Drops an account's buckets (its own, per identifier, and its EAB
    /// key's): full service at once. Returns how many were dropped.
    pub fn reset_account(&self, account: &str, eab_kid: Option<&str>) -> usize {
        let mut n = 0;
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let before = shard.map.len();
            shard
                .map
                .retain(|(limit, key), _| !belongs(*limit, key, account, eab_kid));
            n += before - shard.map.len();
        }
        n
    }

    /// Buckets kept now (for tests).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).map.len())
            .sum()
    }

    /// Whether no bucket is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn belongs(limit: Limit, key: &str, account: &str, eab_kid: Option<&str>) -> bool {
    match limit {
        Limit::NewOrdersPerAccount | Limit::PendingAuthorizationsPerAccount => key == account,
        Limit::FailedValidationsPerAccountAndIdentifier => key
            .strip_prefix(account)
            .is_some_and(|rest| rest.starts_with(' ')),
        Limit::NewOrdersPerEabKey => eab_kid == Some(key),
        Limit::RequestsPerIp | Limit::NewAccountsPerIp => false,
    }
}

/// Frees one place in a full shard: drops the buckets that have refilled
/// (at most once a second, as that walks the shard), else an arbitrary one.
fn make_room(shard: &mut Shard, limits: &RateLimits, now: Instant, cap: usize) {
    if now.saturating_duration_since(shard.last_sweep) >= Duration::from_secs(1) {
        shard.last_sweep = now;
        shard.map.retain(|(limit, _), b| {
            limits
                .get(*limit)
                .is_some_and(|r| b.refilled(r, now) < f64::from(r.burst))
        });
    }
    while shard.map.len() >= cap {
        let Some(k) = shard.map.keys().next().cloned() else {
            break;
        };
        shard.map.remove(&k);
    }
}

/// The key of a failed-validations bucket.
pub fn account_identifier_key(account: &str, identifier: &str) -> String {
    format!("{account} {identifier}")
}

/// The per-IP key of a client address: IPv4 as is, IPv6 by its /64 (one
/// host usually holds a whole /64). IPv4-mapped IPv6 counts as IPv4.
pub fn ip_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(limit: Limit, rate: Rate) -> RateLimiter {
        let mut l = RateLimits::off();
        l.set(limit, Some(rate));
        RateLimiter::new(l)
    }

    #[test]
    fn a_bucket_refuses_when_empty_and_names_the_wait() {
        let rl = one(
            Limit::NewOrdersPerAccount,
            Rate::new(3, Duration::from_secs(3 * 3600)),
        );
        for _ in 0..3 {
            rl.take(Limit::NewOrdersPerAccount, "a", 1).unwrap();
        }
        let r = rl.take(Limit::NewOrdersPerAccount, "a", 1).unwrap_err();
        // One token per hour.
        assert!((3590..=3600).contains(&r.retry_after_secs()), "{r:?}");
        let e = r.to_error();
        assert_eq!(e.problem.kind, ProblemType::RateLimited.urn());
        assert_eq!(e.problem.http_status(), 429);
        assert!(e.problem.detail.contains("newOrdersPerAccount"));
        assert!(e.problem.detail.contains("3 per 3h"));
        assert_eq!(e.retry_after, Some(r.retry_after_secs()));
        // Other keys are untouched.
        rl.take(Limit::NewOrdersPerAccount, "b", 1).unwrap();
        // A refund gives a token back.
        rl.refund(Limit::NewOrdersPerAccount, "a", 1);
        rl.take(Limit::NewOrdersPerAccount, "a", 1).unwrap();
    }

    #[test]
    fn off_limits_never_refuse_and_keep_nothing() {
        let rl = RateLimiter::new(RateLimits::off());
        for _ in 0..1000 {
            rl.take(Limit::RequestsPerIp, "1.2.3.4", 1).unwrap();
        }
        assert!(rl.is_empty());
        let mut l = RateLimits::default();
        l.set(
            Limit::NewOrdersPerAccount,
            Some(Rate::new(0, Duration::from_secs(1))),
        );
        assert_eq!(l.get(Limit::NewOrdersPerAccount), None, "0 is off");
    }

    #[test]
    fn buckets_refill_over_time() {
        let rl = one(Limit::RequestsPerIp, Rate::new(20, Duration::from_secs(1)));
        for _ in 0..20 {
            rl.take(Limit::RequestsPerIp, "ip", 1).unwrap();
        }
        assert!(rl.take(Limit::RequestsPerIp, "ip", 1).is_err());
        std::thread::sleep(Duration::from_millis(120));
        rl.take(Limit::RequestsPerIp, "ip", 1).unwrap();
    }

    #[test]
    fn several_tokens_at_once_and_check_takes_none() {
        let rl = one(
            Limit::PendingAuthorizationsPerAccount,
            Rate::new(10, Duration::from_secs(86_400)),
        );
        rl.take(Limit::PendingAuthorizationsPerAccount, "a", 8)
            .unwrap();
        assert!(
            rl.check(Limit::PendingAuthorizationsPerAccount, "a", 3)
                .is_err()
        );
        rl.check(Limit::PendingAuthorizationsPerAccount, "a", 2)
            .unwrap();
        rl.take(Limit::PendingAuthorizationsPerAccount, "a", 2)
            .unwrap();
        assert!(
            rl.take(Limit::PendingAuthorizationsPerAccount, "a", 1)
                .is_err()
        );
    }

    #[test]
    fn the_map_is_capped() {
        let mut l = RateLimits::off();
        l.set(
            Limit::RequestsPerIp,
            Some(Rate::new(5, Duration::from_secs(3600))),
        );
        l.max_keys = 160;
        let rl = RateLimiter::new(l);
        for i in 0..10_000 {
            rl.take(Limit::RequestsPerIp, &format!("ip{i}"), 1).unwrap();
        }
        assert!(rl.len() <= 160, "{}", rl.len());
    }

    #[test]
    fn admin_view_and_reset_cover_the_account_only() {
        let rl = RateLimiter::new(RateLimits::default());
        rl.take(Limit::NewOrdersPerAccount, "acct", 1).unwrap();
        rl.take(Limit::NewOrdersPerAccount, "other", 1).unwrap();
        rl.take(
            Limit::FailedValidationsPerAccountAndIdentifier,
            &account_identifier_key("acct", "dns:a.test"),
            1,
        )
        .unwrap();
        rl.take(Limit::NewOrdersPerEabKey, "kid1", 1).unwrap();
        rl.take(Limit::RequestsPerIp, "acct", 1).unwrap();
        let v = rl.account_buckets("acct", Some("kid1"));
        let names: Vec<_> = v.iter().map(|b| b.limit).collect();
        assert_eq!(
            names,
            [
                "failedValidationsPerAccountAndIdentifier",
                "newOrdersPerAccount",
                "newOrdersPerEabKey"
            ]
        );
        assert_eq!(rl.reset_account("acct", Some("kid1")), 3);
        assert_eq!(rl.len(), 2);
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        let m: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(ip_key(m), "192.0.2.7");
    }
}
