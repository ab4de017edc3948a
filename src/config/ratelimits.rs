//! `authority.rateLimits`: the token buckets of [`crate::ra::limits`] and the
//! cap on concurrent validations. Every key is optional; a limit is a number
//! (that many per the limit's default period; `0` turns it off) or an object
//! `{"count": 300, "period": "3h", "burst": 300}`.

use std::fmt;
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{ConfigError, parse_go_duration};
use crate::ra::limits::{
    DEFAULT_CONCURRENT_VALIDATIONS, DEFAULT_MAX_KEYS, Limit, Rate, RateLimits,
};

/// The largest `concurrentValidations`.
const MAX_CONCURRENT_VALIDATIONS: u32 = 10_000;

/// `authority.rateLimits`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitsConfig {
    /// Every request to the ACME listener, per client IP (default 200 per
    /// second).
    pub requests_per_ip: Option<LimitConfig>,
    /// Accounts created, per client IP (default 50 per 3 h).
    pub new_accounts_per_ip: Option<LimitConfig>,
    /// newOrder, per account (default 300 per 3 h).
    pub new_orders_per_account: Option<LimitConfig>,
    /// Pending authorizations, per account (default 1,000).
    pub pending_authorizations_per_account: Option<LimitConfig>,
    /// Failed validations, per account and identifier (default 5 per hour).
    pub failed_validations_per_account_and_identifier: Option<LimitConfig>,
    /// newOrder, per EAB key (default 1,500 per 3 h).
    pub new_orders_per_eab_key: Option<LimitConfig>,
    /// Validations on the network at once (default 64); more wait.
    pub concurrent_validations: Option<u32>,
    /// Buckets kept in memory at most (default 200,000).
    pub max_tracked_keys: Option<u64>,
}

/// One limit: a count (per the default period; 0 = off) or an object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LimitConfig {
    /// Tokens per period; 0 turns the limit off. Default: the limit's own.
    pub count: Option<u32>,
    /// A Go duration (`3h`, `1s`). Default: the limit's own.
    pub period: Option<String>,
    /// Most tokens held (a burst); default `count`.
    pub burst: Option<u32>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LimitObject {
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    period: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    burst: Option<u32>,
}

impl Serialize for LimitConfig {
    /// A bare count when only the count is set, as written most often.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self {
                count: Some(n),
                period: None,
                burst: None,
            } => s.serialize_u32(*n),
            _ => LimitObject {
                count: self.count,
                period: self.period.clone(),
                burst: self.burst,
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for LimitConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LimitConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a count (0 turns the limit off) or an object {\"count\", \"period\", \"burst\"}",
                )
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<LimitConfig, E> {
                let count =
                    u32::try_from(v).map_err(|_| E::custom(format!("{v} is too large a count")))?;
                Ok(LimitConfig {
                    count: Some(count),
                    ..LimitConfig::default()
                })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<LimitConfig, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!(
                        "{v}: a count cannot be negative (0 turns the limit off)"
                    ))),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<LimitConfig, A::Error> {
                let o = LimitObject::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(LimitConfig {
                    count: o.count,
                    period: o.period,
                    burst: o.burst,
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl RateLimitsConfig {
    /// The limits in force: the defaults, with each configured key applied.
    pub(super) fn resolve(&self) -> Result<RateLimits, ConfigError> {
        let mut out = RateLimits::default();
        for (limit, setting) in [
            (Limit::RequestsPerIp, &self.requests_per_ip),
            (Limit::NewAccountsPerIp, &self.new_accounts_per_ip),
            (Limit::NewOrdersPerAccount, &self.new_orders_per_account),
            (
                Limit::PendingAuthorizationsPerAccount,
                &self.pending_authorizations_per_account,
            ),
            (
                Limit::FailedValidationsPerAccountAndIdentifier,
                &self.failed_validations_per_account_and_identifier,
            ),
            (Limit::NewOrdersPerEabKey, &self.new_orders_per_eab_key),
        ] {
            if let Some(s) = setting {
                out.set(limit, s.rate(limit)?);
            }
        }
        if let Some(n) = self.concurrent_validations {
            if !(1..=MAX_CONCURRENT_VALIDATIONS).contains(&n) {
                return Err(ConfigError::invalid(
                    "authority.rateLimits.concurrentValidations",
                    format!(
                        "{n} is out of range; give 1 to {MAX_CONCURRENT_VALIDATIONS} (default {DEFAULT_CONCURRENT_VALIDATIONS})"
                    ),
                ));
            }
            out.concurrent_validations =
                usize::try_from(n).unwrap_or(DEFAULT_CONCURRENT_VALIDATIONS);
        }
        if let Some(n) = self.max_tracked_keys {
            if !(1_000..=100_000_000).contains(&n) {
                return Err(ConfigError::invalid(
                    "authority.rateLimits.maxTrackedKeys",
                    format!(
                        "{n} is out of range; give 1000 to 100000000 (default {DEFAULT_MAX_KEYS})"
                    ),
                ));
            }
            out.max_keys = usize::try_from(n).unwrap_or(DEFAULT_MAX_KEYS);
        }
        Ok(out)
    }
}

impl LimitConfig {
    /// The rate this setting gives `limit`; `None` when turned off.
    fn rate(&self, limit: Limit) -> Result<Option<Rate>, ConfigError> {
        let key = format!("authority.rateLimits.{}", limit.name());
        let Some(default) = limit.default_rate() else {
            return Ok(None);
        };
        let count = self.count.unwrap_or(default.count);
        if count == 0 {
            return Ok(None);
        }
        let period = match &self.period {
            None => default.period,
            Some(p) => {
                let d = parse_go_duration(p)
                    .map_err(|m| ConfigError::invalid(format!("{key}.period"), m))?;
                if d < Duration::from_millis(1) || d > Duration::from_secs(366 * 86_400) {
                    return Err(ConfigError::invalid(
                        format!("{key}.period"),
                        format!("{p:?} is out of range; give 1ms to 8784h"),
                    ));
                }
                d
            }
        };
        let burst = self.burst.unwrap_or(count);
        if burst == 0 {
            return Err(ConfigError::invalid(
                format!("{key}.burst"),
                "a burst of 0 would refuse everything; set count to 0 to turn the limit off",
            ));
        }
        Ok(Some(Rate {
            count,
            period,
            burst,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> Result<RateLimits, String> {
        let c: RateLimitsConfig = serde_json::from_value(v).map_err(|e| e.to_string())?;
        c.resolve().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_overrides() {
        let d = parse(serde_json::json!({})).unwrap();
        assert_eq!(d, RateLimits::default());
        assert_eq!(
            d.get(Limit::NewOrdersPerAccount),
            Some(Rate::new(300, Duration::from_secs(3 * 3600)))
        );
        let c = parse(serde_json::json!({
            "newOrdersPerAccount": 0,
            "newAccountsPerIp": 7,
            "requestsPerIp": {"count": 10, "period": "1s", "burst": 50},
            "failedValidationsPerAccountAndIdentifier": {"period": "10m"},
            "concurrentValidations": 4,
            "maxTrackedKeys": 5000
        }))
        .unwrap();
        assert_eq!(c.get(Limit::NewOrdersPerAccount), None);
        assert_eq!(
            c.get(Limit::NewAccountsPerIp),
            Some(Rate::new(7, Duration::from_secs(3 * 3600)))
        );
        assert_eq!(
            c.get(Limit::RequestsPerIp),
            Some(Rate {
                count: 10,
                period: Duration::from_secs(1),
                burst: 50
            })
        );
        assert_eq!(
            c.get(Limit::FailedValidationsPerAccountAndIdentifier),
            Some(Rate::new(5, Duration::from_secs(600)))
        );
        assert_eq!(c.concurrent_validations, 4);
        assert_eq!(c.max_keys, 5000);
    }

    #[test]
    fn bad_values_name_their_key() {
        for (v, needle) in [
            (serde_json::json!({"newOrdersPerAccount": -1}), "negative"),
            (
                serde_json::json!({"newOrdersPerAccount": {"period": "soon"}}),
                "newOrdersPerAccount.period",
            ),
            (
                serde_json::json!({"newOrdersPerAccount": {"burst": 0}}),
                "newOrdersPerAccount.burst",
            ),
            (
                serde_json::json!({"newOrdersPerAccount": {"cnt": 1}}),
                "unknown field `cnt`",
            ),
            (
                serde_json::json!({"concurrentValidations": 0}),
                "concurrentValidations",
            ),
            (serde_json::json!({"maxTrackedKeys": 5}), "maxTrackedKeys"),
            (
                serde_json::json!({"newOrdersPerAcount": 5}),
                "unknown field",
            ),
        ] {
            let e = parse(v.clone()).unwrap_err();
            assert!(e.contains(needle), "{v}: {e}");
        }
    }
}
