//! Connection-pool limits in the model: Envoy's circuit breakers and upstream
//! connection options as Istio writes them from `connectionPool`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Error, invalid};

/// Envoy's circuit-breaker thresholds (one set, default priority) and upstream HTTP
/// connection options, after Istio's translation of `connectionPool`: every limit is
/// 2^32-1 unless the DestinationRule sets it above 0. The limits count across the
/// whole cluster (all hosts), not per host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPool {
    /// `tcp.maxConnections`: upstream connections, connecting or open. Past it, a
    /// request waits for a connection to free up (pending) rather than failing; a host
    /// with no connection at all may always open one, as in Envoy.
    #[serde(default = "unlimited")]
    pub max_connections: u32,
    /// `http.http1MaxPendingRequests`: requests waiting for a connection. Past it: 503 `UO`.
    #[serde(default = "unlimited")]
    pub max_pending_requests: u32,
    /// `http.http2MaxRequests`: requests in flight upstream, whatever the protocol.
    /// Past it: 503 `UO`.
    #[serde(default = "unlimited")]
    pub max_requests: u32,
    /// `http.maxRetries`: retries in flight (scheduled or running). Past it the retry
    /// is not made and the attempt's own result is returned, flagged `UO`.
    #[serde(default = "unlimited")]
    pub max_retries: u32,
    /// `http.maxRequestsPerConnection`: 0 is unlimited; 1 disables keep-alive.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_requests_per_connection: u32,
    /// `http.idleTimeout`, else `tcp.idleTimeout`: an upstream connection idle this long
    /// is closed. Istio's default is 1h; `0s` disables it.
    #[serde(default = "one_hour", with = "crate::duration")]
    pub idle_timeout: Duration,
    /// `tcp.maxConnectionDuration`: an upstream connection this old takes no new
    /// request and closes once its requests are done (Envoy's
    /// `max_connection_duration`). Omitted: no limit.
    #[serde(
        default,
        with = "crate::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_connection_duration: Option<Duration>,
    /// `http.http2KeepAlive`: on an HTTP/2 cluster, a PING every `interval`; a
    /// connection whose answer takes longer than `timeout` is closed (Envoy's
    /// `http2_protocol_options.connection_keepalive`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_keep_alive: Option<Http2KeepAlive>,
    /// `tcp.tcpKeepalive`: TCP keep-alive on the endpoints' connections (Envoy's
    /// `upstream_connection_options.tcp_keepalive`); a field left out keeps the
    /// kernel's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<TcpKeepalive>,
}

/// Envoy's `TcpKeepalive`, whose times are whole seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpKeepalive {
    /// Unanswered probes before the connection is dropped (`TCP_KEEPCNT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probes: Option<u32>,
    /// Idle time before the first probe (`TCP_KEEPIDLE`).
    #[serde(
        default,
        with = "crate::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub time: Option<Duration>,
    /// Between probes (`TCP_KEEPINTVL`).
    #[serde(
        default,
        with = "crate::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Http2KeepAlive {
    #[serde(with = "crate::duration")]
    pub interval: Duration,
    #[serde(with = "crate::duration")]
    pub timeout: Duration,
}

/// Istio's value for every circuit-breaker limit it does not set: 2^32-1.
pub const UNLIMITED: u32 = u32::MAX;

fn unlimited() -> u32 {
    UNLIMITED
}

fn one_hour() -> Duration {
    Duration::from_hours(1)
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Default for ConnectionPool {
    fn default() -> Self {
        Self {
            max_connections: UNLIMITED,
            max_pending_requests: UNLIMITED,
            max_requests: UNLIMITED,
            max_retries: UNLIMITED,
            max_requests_per_connection: 0,
            idle_timeout: one_hour(),
            max_connection_duration: None,
            http2_keep_alive: None,
            tcp_keepalive: None,
        }
    }
}

impl ConnectionPool {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl ConnectionPool {
    pub(crate) fn validate(&self, at: &str) -> Result<(), Error> {
        for (field, value) in [
            ("maxConnections", self.max_connections),
            ("maxPendingRequests", self.max_pending_requests),
            ("maxRequests", self.max_requests),
            ("maxRetries", self.max_retries),
        ] {
            if value == 0 {
                return invalid(
                    format!("{at}.{field}"),
                    format!(
                        "0 would refuse everything; leave it out for no limit ({UNLIMITED}, Istio's value for 0)"
                    ),
                );
            }
        }
        if self
            .max_connection_duration
            .is_some_and(|d| d < Duration::from_millis(1))
        {
            return invalid(
                format!("{at}.maxConnectionDuration"),
                "must be at least 1ms; leave it out for no limit",
            );
        }
        if let Some(k) = self.http2_keep_alive
            && (k.interval < Duration::from_millis(1) || k.timeout < Duration::from_millis(1))
        {
            return invalid(
                format!("{at}.http2KeepAlive"),
                "interval and timeout must be at least 1ms",
            );
        }
        if let Some(k) = self.tcp_keepalive {
            for (field, value) in [("time", k.time), ("interval", k.interval)] {
                if value.is_some_and(|d| {
                    d.subsec_nanos() != 0 || d.as_secs() == 0 || d.as_secs() > i32::MAX as u64
                }) {
                    return invalid(
                        format!("{at}.tcpKeepalive.{field}"),
                        "must be whole seconds, at least 1s (the kernel counts in seconds)",
                    );
                }
            }
            if k.probes.is_some_and(|p| p == 0 || p > 127) {
                return invalid(
                    format!("{at}.tcpKeepalive.probes"),
                    "must be 1 to 127 (the kernel's range)",
                );
            }
        }
        Ok(())
    }
}
