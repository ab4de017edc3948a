//! `authority.retention`: when the background purge removes what has served
//! its purpose — orders with their authorizations some time after they
//! expire, certificates some time after their notAfter. Every key is
//! optional; the defaults need no setting.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, parse_go_duration};

/// The `authority.retention` object as written in ca.json (Go durations).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct RetentionConfig {
    /// Time between purge passes (default `10m`; `0` turns the purge off).
    pub interval: Option<String>,
    /// How long an order and its authorizations are kept after the order's
    /// `expires` (default `168h`).
    pub order_grace: Option<String>,
    /// How long a certificate, its revocation state and its order are kept
    /// after its notAfter (default `8760h`).
    pub certificate_retention: Option<String>,
}

/// The retention in force, defaults applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionSettings {
    /// Time between purge passes; `None`: the purge is off.
    pub interval: Option<Duration>,
    pub order_grace: Duration,
    pub certificate_retention: Duration,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            interval: Some(Duration::from_secs(600)),
            order_grace: Duration::from_secs(7 * 86_400),
            certificate_retention: Duration::from_secs(365 * 86_400),
        }
    }
}

/// The longest `interval`.
const MAX_INTERVAL: Duration = Duration::from_secs(7 * 86_400);
/// The longest grace or retention: a hundred years.
const MAX_KEEP: Duration = Duration::from_secs(100 * 365 * 86_400);

impl RetentionConfig {
    /// The settings, defaults applied; an error names the key at fault.
    pub(super) fn check(&self) -> Result<RetentionSettings, ConfigError> {
        let d = RetentionSettings::default();
        let parse = |key: &str, v: &Option<String>, max: Duration, range: &str| {
            let Some(s) = v else { return Ok(None) };
            let name = format!("authority.retention.{key}");
            let t = parse_go_duration(s).map_err(|e| ConfigError::invalid(&name, e))?;
            if t > max {
                return Err(ConfigError::invalid(
                    &name,
                    format!("{s:?} is out of range; give {range}"),
                ));
            }
            Ok(Some(t))
        };
        let interval = match parse("interval", &self.interval, MAX_INTERVAL, "0 (off) to 168h")? {
            None => d.interval,
            Some(t) if t.is_zero() => None,
            Some(t) if t < Duration::from_secs(1) => {
                return Err(ConfigError::invalid(
                    "authority.retention.interval",
                    format!(
                        "{:?} is out of range; give 0 (off) or 1s to 168h",
                        self.interval.as_deref().unwrap_or_default()
                    ),
                ));
            }
            Some(t) => Some(t),
        };
        Ok(RetentionSettings {
            interval,
            order_grace: parse("orderGrace", &self.order_grace, MAX_KEEP, "0 to 876000h")?
                .unwrap_or(d.order_grace),
            certificate_retention: parse(
                "certificateRetention",
                &self.certificate_retention,
                MAX_KEEP,
                "0 to 876000h",
            )?
            .unwrap_or(d.certificate_retention),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(json: serde_json::Value) -> Result<RetentionSettings, String> {
        let c: RetentionConfig = serde_json::from_value(json).map_err(|e| e.to_string())?;
        c.check().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_need_no_setting() {
        assert_eq!(
            check(serde_json::json!({})).unwrap(),
            RetentionSettings::default()
        );
    }

    #[test]
    fn durations_are_read_and_zero_turns_the_purge_off() {
        let s = check(serde_json::json!({
            "interval": "5m", "orderGrace": "1s", "certificateRetention": "0"
        }))
        .unwrap();
        assert_eq!(s.interval, Some(Duration::from_secs(300)));
        assert_eq!(s.order_grace, Duration::from_secs(1));
        assert_eq!(s.certificate_retention, Duration::ZERO);
        let off = check(serde_json::json!({"interval": "0"})).unwrap();
        assert_eq!(off.interval, None);
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = check(serde_json::json!({"interval": "10ms"})).unwrap_err();
        assert!(e.contains("authority.retention.interval"), "{e}");
        let e = check(serde_json::json!({"orderGrace": "7d"})).unwrap_err();
        assert!(e.contains("authority.retention.orderGrace"), "{e}");
        let e = check(serde_json::json!({"certificateRetention": "1000000h"})).unwrap_err();
        assert!(
            e.contains("authority.retention.certificateRetention"),
            "{e}"
        );
        let e = check(serde_json::json!({"orderGrase": "1h"})).unwrap_err();
        assert!(e.contains("orderGrase"), "{e}");
    }
}
