//! `connections`: how the ACME listener treats client connections — the
//! timeouts that shed idle and slow clients, the cap on open connections and
//! HTTP/2 streams. Every key is optional; the defaults are safe for a server
//! that answers anyone on its network.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, parse_go_duration};

/// The `connections` object as written in ca.json (Go duration strings).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectionsConfig {
    /// Longest TLS handshake (default `10s`).
    pub handshake_timeout: Option<String>,
    /// Longest wait for a complete HTTP/1.1 request head, the first one and
    /// each next one on a kept-alive connection (default `10s`).
    pub header_read_timeout: Option<String>,
    /// A connection with no request in progress for this long is closed
    /// (default `60s`).
    pub idle_timeout: Option<String>,
    /// Longest a single request may take, body and answer included
    /// (default `60s`).
    pub request_timeout: Option<String>,
    /// Most connections open at once, handshakes included (default 4096).
    pub max_connections: Option<u32>,
    /// How long a connection beyond `maxConnections` waits for a free slot
    /// before it is closed (default `1s`).
    pub max_connections_wait: Option<String>,
    /// Most concurrent HTTP/2 streams per connection (default 128).
    pub http2_max_concurrent_streams: Option<u32>,
}

/// The limits in force, defaults applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub handshake_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_wait: Duration,
    pub http2_max_concurrent_streams: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_connections_wait: Duration::from_secs(1),
            http2_max_concurrent_streams: 128,
        }
    }
}

/// The largest `connections.maxConnections`.
const MAX_CONNECTIONS: u32 = 1_000_000;
/// The largest `connections.http2MaxConcurrentStreams`.
const MAX_HTTP2_STREAMS: u32 = 10_000;
/// The longest timeout any `connections` key accepts.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

impl ConnectionsConfig {
    /// The limits, defaults applied; an error names the key at fault.
    pub(super) fn limits(&self) -> Result<ConnectionLimits, ConfigError> {
        let d = ConnectionLimits::default();
        let timeout = |key: &str, v: &Option<String>, default: Duration, min: Duration| {
            let Some(s) = v else { return Ok(default) };
            let name = format!("connections.{key}");
            let t = parse_go_duration(s).map_err(|e| ConfigError::invalid(&name, e))?;
            if t < min || t > MAX_TIMEOUT {
                return Err(ConfigError::invalid(
                    &name,
                    format!(
                        "{s:?} is out of range; give {} to 1h",
                        if min.is_zero() { "0" } else { "1ms" }
                    ),
                ));
            }
            Ok(t)
        };
        let one_ms = Duration::from_millis(1);
        let max_connections = match self.max_connections {
            None => d.max_connections,
            Some(n) if (1..=MAX_CONNECTIONS).contains(&n) => {
                usize::try_from(n).unwrap_or(d.max_connections)
            }
            Some(n) => {
                return Err(ConfigError::invalid(
                    "connections.maxConnections",
                    format!("{n} is out of range; give 1 to {MAX_CONNECTIONS} (default 4096)"),
                ));
            }
        };
        let streams = match self.http2_max_concurrent_streams {
            None => d.http2_max_concurrent_streams,
            Some(n) if (1..=MAX_HTTP2_STREAMS).contains(&n) => n,
            Some(n) => {
                return Err(ConfigError::invalid(
                    "connections.http2MaxConcurrentStreams",
                    format!("{n} is out of range; give 1 to {MAX_HTTP2_STREAMS} (default 128)"),
                ));
            }
        };
        Ok(ConnectionLimits {
            handshake_timeout: timeout(
                "handshakeTimeout",
                &self.handshake_timeout,
                d.handshake_timeout,
                one_ms,
            )?,
            header_read_timeout: timeout(
                "headerReadTimeout",
                &self.header_read_timeout,
                d.header_read_timeout,
                one_ms,
            )?,
            idle_timeout: timeout("idleTimeout", &self.idle_timeout, d.idle_timeout, one_ms)?,
            request_timeout: timeout(
                "requestTimeout",
                &self.request_timeout,
                d.request_timeout,
                one_ms,
            )?,
            max_connections,
            max_connections_wait: timeout(
                "maxConnectionsWait",
                &self.max_connections_wait,
                d.max_connections_wait,
                Duration::ZERO,
            )?,
            http2_max_concurrent_streams: streams,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: serde_json::Value) -> Result<ConnectionLimits, String> {
        let c: ConnectionsConfig = serde_json::from_value(v).map_err(|e| e.to_string())?;
        c.limits().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        assert_eq!(
            parse(serde_json::json!({})).unwrap(),
            ConnectionLimits::default()
        );
        let d = ConnectionLimits::default();
        assert_eq!(d.handshake_timeout, Duration::from_secs(10));
        assert_eq!(d.header_read_timeout, Duration::from_secs(10));
        assert_eq!(d.idle_timeout, Duration::from_secs(60));
        assert_eq!(d.request_timeout, Duration::from_secs(60));
        assert_eq!(d.max_connections, 4096);
        assert_eq!(d.http2_max_concurrent_streams, 128);
    }

    #[test]
    fn values_and_errors_name_the_key() {
        let l = parse(serde_json::json!({
            "headerReadTimeout": "2s", "idleTimeout": "1m30s", "maxConnections": 10,
            "maxConnectionsWait": "0", "http2MaxConcurrentStreams": 8
        }))
        .unwrap();
        assert_eq!(l.header_read_timeout, Duration::from_secs(2));
        assert_eq!(l.idle_timeout, Duration::from_secs(90));
        assert_eq!(l.max_connections, 10);
        assert_eq!(l.max_connections_wait, Duration::ZERO);
        assert_eq!(l.http2_max_concurrent_streams, 8);
        for (doc, key) in [
            (serde_json::json!({"requestTimeout": "0"}), "requestTimeout"),
            (serde_json::json!({"idleTimeout": "2h"}), "idleTimeout"),
            (
                serde_json::json!({"handshakeTimeout": "10"}),
                "handshakeTimeout",
            ),
            (serde_json::json!({"maxConnections": 0}), "maxConnections"),
            (
                serde_json::json!({"http2MaxConcurrentStreams": 0}),
                "http2MaxConcurrentStreams",
            ),
            (serde_json::json!({"maxConns": 1}), "maxConns"),
        ] {
            let e = parse(doc).unwrap_err();
            assert!(e.contains(key), "{e}");
        }
    }
}
