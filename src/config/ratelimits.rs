//! `authority.rateLimits`: the token buckets of `ra::limits` and the cap on
//! concurrent validations. Every key is optional; a limit is a number (that
//! many per the limit's default period; `0` turns it off) or an object
//! `{"count": 300, "period": "3h", "burst": 300}`. The checked
//! [`RateLimitSettings`] say what is set; `app` applies them over the
//! limits' defaults, which `ra::limits` keeps.

use std::fmt;
use std::time::Duration;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{ConfigError, parse_go_duration};

/// The largest `concurrentValidations`.
const MAX_CONCURRENT_VALIDATIONS: u32 = 10_000;
/// Default of `concurrentValidations` (`ra::limits` applies it).
pub const DEFAULT_CONCURRENT_VALIDATIONS: u32 = 64;
/// Default of `maxTrackedKeys` (`ra::limits` applies it).
pub const DEFAULT_MAX_TRACKED_KEYS: u64 = 200_000;

/// `authority.rateLimits`, as written (`L` is [`LimitConfig`]) and checked
/// ([`RateLimitSettings`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitsConfig<L = LimitConfig> {
    /// Every request to the ACME listener, per client IP (default 200 per
    /// second).
    pub requests_per_ip: Option<L>,
    /// Accounts created, per client IP (default 50 per 3 h).
    pub new_accounts_per_ip: Option<L>,
    /// newOrder, per account (default 300 per 3 h).
    pub new_orders_per_account: Option<L>,
    /// Pending authorizations, per account (default 1,000).
    pub pending_authorizations_per_account: Option<L>,
    /// Failed validations, per account and identifier (default 5 per hour).
    pub failed_validations_per_account_and_identifier: Option<L>,
    /// newOrder, per EAB key (default 1,500 per 3 h).
    pub new_orders_per_eab_key: Option<L>,
    /// Validations on the network at once (default 64); more wait.
    pub concurrent_validations: Option<u32>,
    /// Buckets kept in memory at most (default 200,000).
    pub max_tracked_keys: Option<u64>,
}

/// `authority.rateLimits`, checked: what it sets; unset parts take the
/// limits' defaults.
pub type RateLimitSettings = RateLimitsConfig<LimitSetting>;

/// One limit, checked: a count of 0 turns it off; unset parts take the
/// limit's defaults (the burst: the count).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitSetting {
    pub count: Option<u32>,
    pub period: Option<Duration>,
    pub burst: Option<u32>,
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
    /// The settings, each in range; an error names the key at fault.
    pub(super) fn check(&self) -> Result<RateLimitSettings, ConfigError> {
        let limit =
            |name: &str, c: &Option<LimitConfig>| c.as_ref().map(|c| c.check(name)).transpose();
        Ok(RateLimitSettings {
            requests_per_ip: limit("requestsPerIp", &self.requests_per_ip)?,
            new_accounts_per_ip: limit("newAccountsPerIp", &self.new_accounts_per_ip)?,
            new_orders_per_account: limit("newOrdersPerAccount", &self.new_orders_per_account)?,
            pending_authorizations_per_account: limit(
                "pendingAuthorizationsPerAccount",
                &self.pending_authorizations_per_account,
            )?,
            failed_validations_per_account_and_identifier: limit(
                "failedValidationsPerAccountAndIdentifier",
                &self.failed_validations_per_account_and_identifier,
            )?,
            new_orders_per_eab_key: limit("newOrdersPerEabKey", &self.new_orders_per_eab_key)?,
            concurrent_validations: match self.concurrent_validations {
                Some(n) if !(1..=MAX_CONCURRENT_VALIDATIONS).contains(&n) => {
                    return Err(ConfigError::invalid(
                        "authority.rateLimits.concurrentValidations",
                        format!(
                            "{n} is out of range; give 1 to {MAX_CONCURRENT_VALIDATIONS} (default {DEFAULT_CONCURRENT_VALIDATIONS})"
                        ),
                    ));
                }
                n => n,
            },
            max_tracked_keys: match self.max_tracked_keys {
                Some(n) if !(1_000..=100_000_000).contains(&n) => {
                    return Err(ConfigError::invalid(
                        "authority.rateLimits.maxTrackedKeys",
                        format!(
                            "{n} is out of range; give 1000 to 100000000 (default {DEFAULT_MAX_TRACKED_KEYS})"
                        ),
                    ));
                }
                n => n,
            },
        })
    }
}

impl LimitConfig {
    /// This limit, checked (`name` is its key under `rateLimits`).
    fn check(&self, name: &str) -> Result<LimitSetting, ConfigError> {
        let key = format!("authority.rateLimits.{name}");
        if self.count == Some(0) {
            // Off: the rest does not matter.
            return Ok(LimitSetting {
                count: Some(0),
                ..LimitSetting::default()
            });
        }
        let period = match &self.period {
            None => None,
            Some(p) => {
                let d = parse_go_duration(p)
                    .map_err(|m| ConfigError::invalid(format!("{key}.period"), m))?;
                if d < Duration::from_millis(1) || d > Duration::from_secs(366 * 86_400) {
                    return Err(ConfigError::invalid(
                        format!("{key}.period"),
                        format!("{p:?} is out of range; give 1ms to 8784h"),
                    ));
                }
                Some(d)
            }
        };
        if self.burst == Some(0) {
            return Err(ConfigError::invalid(
                format!("{key}.burst"),
                "a burst of 0 would refuse everything; set count to 0 to turn the limit off",
            ));
        }
        Ok(LimitSetting {
            count: self.count,
            period,
            burst: self.burst,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> Result<RateLimitSettings, String> {
        let c: RateLimitsConfig = serde_json::from_value(v).map_err(|e| e.to_string())?;
        c.check().map_err(|e| e.to_string())
    }

    #[test]
    fn settings_keep_what_is_set() {
        assert_eq!(
            parse(serde_json::json!({})).unwrap(),
            RateLimitSettings::default()
        );
        let c = parse(serde_json::json!({
            "newOrdersPerAccount": 0,
            "requestsPerIp": {"count": 10, "period": "1s", "burst": 50},
            "concurrentValidations": 4,
        }))
        .unwrap();
        let off = LimitSetting {
            count: Some(0),
            ..LimitSetting::default()
        };
        assert_eq!(c.new_orders_per_account, Some(off));
        assert_eq!(
            c.requests_per_ip,
            Some(LimitSetting {
                count: Some(10),
                period: Some(Duration::from_secs(1)),
                burst: Some(50)
            })
        );
        assert_eq!(c.concurrent_validations, Some(4));
        assert_eq!(c.max_tracked_keys, None);
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
