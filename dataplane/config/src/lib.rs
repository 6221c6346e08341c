//! The dataplane's config model. The operator compiles Gateway API objects,
//! DestinationRules and EndpointSlices into one `Config` per Gateway; the dataplane
//! loads the same type from a YAML file in standalone mode. This crate is the only
//! definition of it (DESIGN §2), and it knows nothing of Kubernetes.
//!
//! Values are already resolved: Istio's defaults and "0 means unset" rules have been
//! applied by whoever wrote the config, so the dataplane never guesses.
//!
//! A cluster carries its load balancer (`RING_HASH` and `MAGLEV` with a
//! `consistentHash` key), its outlier detection and its `connectionPool` (circuit
//! breakers, keep-alive and idle timeout). A route's retry policy is written out in
//! full; for a hashing cluster Istio's default drops the previous-hosts predicate
//! (`RetryConfig::for_cluster`).
//!
//! Ingress Gateways compile into the same model: one listener per port (`HTTP`,
//! or `HTTPS` with the certificates of its Gateway listeners, chosen by SNI), one
//! route per hostname (`Route.hosts` takes `*.` wildcards), a route without a
//! `cluster` and rules whose backends may be invalid (a cluster name not in
//! `clusters`), both answered with Gateway API's 500 (`WeightedBackend`). Private
//! keys never reach `Debug` output; `Config::redacted` is the config to show.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod connection_pool;
mod consistent_hash;
pub mod delivery;
mod fault;
mod hostname;
mod http_route;
mod slow_start;
mod tls;

pub use connection_pool::{ConnectionPool, Http2KeepAlive, TcpKeepalive, UNLIMITED};
pub use consistent_hash::{
    ConsistentHash, CookieAttribute, DEFAULT_MAGLEV_TABLE_SIZE, DEFAULT_MINIMUM_RING_SIZE, HashKey,
    HttpCookie, MAXIMUM_RING_SIZE,
};
pub use fault::{Fault, FaultAbort, FaultDelay};
pub use http_route::{
    DirectResponse, Filter, Fraction, Header, HeaderModifier, MAX_DIRECT_RESPONSE_BODY, MatchType,
    PathMatch, PathRewrite, Redirect, RouteMatch, RouteRule, UrlRewrite, ValueMatch,
    WeightedBackend,
};
pub use slow_start::SlowStart;
pub use tls::{CertificateError, ListenerTls, REDACTED, ServerCertificate, crypto_provider};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub clusters: Vec<Cluster>,
}

/// A listener. Plain `HTTP` routes each request by its `Host` (authority). `HTTPS`
/// terminates TLS with the certificate of `tls` that the client's server name
/// selects, then routes as `HTTP` does. `HBONE` terminates mutual TLS 1.3 and
/// HTTP/2 CONNECT (waypoint-contract §5) and routes everything inside a tunnel by
/// the CONNECT authority, the original destination.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    #[serde(default, skip_serializing_if = "ListenerProtocol::is_http")]
    pub protocol: ListenerProtocol,
    /// The certificates of an `HTTPS` listener; only there, and required there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    #[serde(default)]
    pub routes: Vec<Route>,
    /// How long a new HTTP connection may take to send its first request's headers
    /// before it is answered 408 and closed (Envoy's `request_headers_timeout`).
    #[serde(
        default = "default_request_headers_timeout",
        with = "duration",
        skip_serializing_if = "is_default_request_headers_timeout"
    )]
    pub request_headers_timeout: Duration,
}

pub const DEFAULT_REQUEST_HEADERS_TIMEOUT: Duration = Duration::from_secs(10);

fn default_request_headers_timeout() -> Duration {
    DEFAULT_REQUEST_HEADERS_TIMEOUT
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's `skip_serializing_if` passes `&T`
fn is_default_request_headers_timeout(d: &Duration) -> bool {
    *d == DEFAULT_REQUEST_HEADERS_TIMEOUT
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListenerProtocol {
    #[default]
    #[serde(rename = "HTTP")]
    Http,
    #[serde(rename = "HTTPS")]
    Https,
    #[serde(rename = "HBONE")]
    Hbone,
}

impl ListenerProtocol {
    pub fn is_http(&self) -> bool {
        *self == Self::Http
    }
}

/// Requests whose authority matches `hosts` go to `cluster`. An entry is a host
/// (any port), `host:port` (that port only) or a Gateway API wildcard `*.suffix`
/// (any name ending in `.suffix`, never `suffix` itself); names compare
/// case-insensitively. The most specific route serves a request, whatever the
/// order: `host:port`, then the host, then the longest wildcard, then a route with
/// no `hosts` (every host).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Where requests go when no HTTPRoute rule names backends. Empty: the route has
    /// no default cluster (an ingress route, where every backend is on a rule), and a
    /// request that reaches no backend gets Gateway API's 500. A name not in
    /// `clusters` is refused: the mesh routes always name their Service's cluster.
    pub cluster: String,
    #[serde(default)]
    pub retry: RetryConfig,
    /// The route timeout; `None` disables it (Istio's default for waypoint routes).
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// `TCP` for a port Istio treats as opaque: an HBONE tunnel to it is proxied
    /// byte for byte to one endpoint, with no HTTP parsing.
    #[serde(default, skip_serializing_if = "RouteProtocol::is_http")]
    pub protocol: RouteProtocol,
    /// HTTPRoute rules (GAMMA: an HTTPRoute whose parent is the Service); none: every
    /// request goes to `cluster`. A request no rule matches gets 404.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RouteRule>,
    /// How a request picks among `rules` that match it.
    #[serde(default, skip_serializing_if = "RuleOrder::is_precedence")]
    pub rule_order: RuleOrder,
    /// Fault injection on every request of the route a matched rule does not
    /// override (Istio: a VirtualService route's `fault`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
}

/// Which matching rule serves a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RuleOrder {
    /// Gateway API's precedence (HTTPRoutes): the most specific match wins.
    #[default]
    Precedence,
    /// The first rule that matches, in the order written, as Envoy walks a virtual
    /// host's routes (VirtualService `http` rules).
    Declared,
}

impl RuleOrder {
    pub fn is_precedence(&self) -> bool {
        *self == Self::Precedence
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RouteProtocol {
    #[default]
    #[serde(rename = "HTTP")]
    Http,
    #[serde(rename = "TCP")]
    Tcp,
}

impl RouteProtocol {
    pub fn is_http(&self) -> bool {
        *self == Self::Http
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryConfig {
    /// Istio's default is 2.
    pub attempts: u32,
    /// Envoy `retry_on` names, e.g. `connect-failure`, `refused-stream`, `unavailable`.
    pub retry_on: Vec<String>,
    #[serde(default)]
    pub retriable_status_codes: Vec<u16>,
    /// Envoy's `previous_hosts` retry predicate. Istio's default policy has it, except
    /// for routes to a consistent-hash cluster ([`RetryConfig::for_cluster`]); the model
    /// takes the value as written, so whoever writes a hashing route sets it.
    #[serde(default = "yes")]
    pub avoid_previous_hosts: bool,
}

impl RetryConfig {
    /// Istio's default retry policy for a route to a cluster balanced by `lb`: no
    /// previous-hosts predicate when the cluster hashes (`DefaultConsistentHashPolicy`),
    /// so a retry returns to the host the request hashes to.
    pub fn for_cluster(lb: LoadBalancer) -> Self {
        Self {
            avoid_previous_hosts: !lb.is_consistent_hash(),
            ..Self::default()
        }
    }
}

impl Default for RetryConfig {
    /// Istio's default retry policy for waypoint routes.
    fn default() -> Self {
        Self {
            attempts: 2,
            retry_on: [
                "connect-failure",
                "refused-stream",
                "unavailable",
                "cancelled",
                "retriable-status-codes",
            ]
            .map(str::to_owned)
            .to_vec(),
            retriable_status_codes: Vec::new(),
            avoid_previous_hosts: true,
        }
    }
}

fn yes() -> bool {
    true
}

/// An upstream cluster, named as Istio names waypoint clusters
/// (`inbound-vip|<port>|http|<fqdn>`); the name appears in access logs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cluster {
    pub name: String,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    /// The request hash of a `RING_HASH` or `MAGLEV` cluster, and the size of its ring or
    /// table. Envoy puts the hash key on the route (`hash_policy`) and the algorithm on
    /// the cluster; Istio derives both from the same DestinationRule and a waypoint's
    /// routes map one to one onto clusters, so the model keeps them together here.
    /// Absent on a hashing cluster: every request gets a random hash, as in Envoy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHash>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Istio's mesh default is 10s.
    #[serde(default = "ten_seconds", with = "duration")]
    pub connect_timeout: Duration,
    /// Envoy's circuit breakers and upstream connection settings, from the
    /// DestinationRule's `connectionPool`. Omitted: Istio's defaults (no limits).
    #[serde(default, skip_serializing_if = "ConnectionPool::is_default")]
    pub connection_pool: ConnectionPool,
    /// What the endpoints speak. Istio picks HTTP/2 for a Service port whose
    /// `appProtocol` or name says so (grpc, http2, h2c), or when the DestinationRule
    /// sets `h2UpgradePolicy: UPGRADE`; the client's protocol when it sets
    /// `useClientProtocol`.
    #[serde(default, skip_serializing_if = "UpstreamProtocol::is_default")]
    pub protocol: UpstreamProtocol,
    /// New endpoints ramp up over a window (ROUND_ROBIN and LEAST_REQUEST only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_start: Option<SlowStart>,
}

/// The HTTP version spoken to a cluster's endpoints (h2c in plain text; inside an
/// HBONE tunnel for meshed endpoints).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpstreamProtocol {
    #[default]
    #[serde(rename = "HTTP/1.1")]
    Http1,
    #[serde(rename = "HTTP/2")]
    Http2,
    /// The downstream request's: HTTP/2 for an HTTP/2 request, HTTP/1.1 otherwise
    /// (Istio's `useClientProtocol`, Envoy's `USE_DOWNSTREAM_PROTOCOL`).
    #[serde(rename = "downstream")]
    Downstream,
}

impl UpstreamProtocol {
    #[allow(clippy::trivially_copy_pass_by_ref)] // serde's `skip_serializing_if` passes `&T`
    fn is_default(&self) -> bool {
        *self == Self::Http1
    }
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    pub address: SocketAddr,
    /// The workload behind the address (a pod name), for logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// The destination pod's node tunnel accepts HBONE on 15008: the waypoint then
    /// reaches the address through a tunnel presenting its own identity, as Envoy's
    /// `connect_originate` does (waypoint-contract §5, step 8), not in plain text.
    #[serde(default, skip_serializing_if = "is_false")]
    pub hbone: bool,
    /// Envoy's `load_balancing_weight` (at least 1). Kubernetes endpoints all weigh
    /// 1; round robin and least request pick by weight when weights differ.
    #[serde(default = "weight_one", skip_serializing_if = "is_one")]
    pub weight: u32,
}

fn weight_one() -> u32 {
    1
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's `skip_serializing_if` passes `&T`
fn is_one(n: &u32) -> bool {
    *n == 1
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's `skip_serializing_if` passes `&T`
fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LoadBalancer {
    #[default]
    LeastRequest,
    RoundRobin,
    Random,
    /// Envoy's ketama ring over the healthy hosts (`consistentHash` with `ringHash`, or
    /// with no algorithm named).
    RingHash,
    /// Envoy's Maglev table over the healthy hosts (`consistentHash.maglev`).
    Maglev,
}

impl LoadBalancer {
    /// Whether hosts are chosen by a request hash. Istio's default retry policy then
    /// has no previous-hosts predicate: a retry goes back to the hashed host.
    pub fn is_consistent_hash(self) -> bool {
        matches!(self, Self::RingHash | Self::Maglev)
    }
}

/// Envoy's detector settings with Istio's defaults already applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetection {
    /// `None`: ejection on 5xx disabled.
    #[serde(default, rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<u32>,
    #[serde(default)]
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(with = "duration")]
    pub interval: Duration,
    #[serde(with = "duration")]
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
    #[serde(default)]
    pub min_health_percent: u32,
    /// `splitExternalLocalOriginErrors`: connect failures, resets and timeouts count
    /// towards `consecutiveLocalOriginFailures` instead of as 503 and 504.
    #[serde(default, skip_serializing_if = "is_false")]
    pub split_external_local_origin_errors: bool,
    /// Only read with the split; Envoy's default is 5.
    #[serde(default = "five", skip_serializing_if = "is_five")]
    pub consecutive_local_origin_failures: u32,
    /// `outlierDetectionHttpErrorCodes`: the statuses that count as errors, any
    /// other as a success. Empty: every 5xx is an error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_error_codes: Vec<u16>,
}

fn five() -> u32 {
    5
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's `skip_serializing_if` passes `&T`
fn is_five(n: &u32) -> bool {
    *n == 5
}

/// A config the dataplane refuses, naming the field and the value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config is not valid YAML for the model: {0}")]
    Parse(#[from] serde_yaml::Error),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

impl Config {
    /// Parses and validates: a config that loads is one the dataplane can serve.
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        let config: Self = serde_yaml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// The config with every private key replaced by [`REDACTED`], for debug
    /// endpoints and logs. It does not load again: redacted keys do not parse.
    #[must_use]
    pub fn redacted(&self) -> Self {
        let mut config = self.clone();
        for l in &mut config.listeners {
            l.tls = l.tls.as_ref().map(ListenerTls::redacted);
        }
        config
    }

    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }

    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |field: String, message: String| Err(Error::Invalid { field, message });
        let mut names = BTreeSet::new();
        for (i, c) in self.clusters.iter().enumerate() {
            if !names.insert(c.name.as_str()) {
                return invalid(
                    format!("clusters[{i}].name"),
                    format!("duplicate cluster name {:?}", c.name),
                );
            }
            c.validate(&format!("clusters[{i}]"))?;
        }
        let mut addresses = BTreeSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            if !addresses.insert(l.address) {
                return invalid(
                    format!("listeners[{i}].address"),
                    format!("{} is used by two listeners", l.address),
                );
            }
            match (l.protocol, &l.tls) {
                (ListenerProtocol::Https, Some(tls)) => {
                    tls.validate(&format!("listeners[{i}].tls"))?;
                }
                (ListenerProtocol::Https, None) => {
                    return invalid(
                        format!("listeners[{i}].tls"),
                        "an HTTPS listener needs certificates".to_owned(),
                    );
                }
                (_, Some(_)) => {
                    return invalid(
                        format!("listeners[{i}].tls"),
                        "only an HTTPS listener terminates TLS".to_owned(),
                    );
                }
                (_, None) => {}
            }
            for (j, r) in l.routes.iter().enumerate() {
                for (k, h) in r.hosts.iter().enumerate() {
                    if let Some(problem) = hostname::problem(h, true) {
                        return invalid(
                            format!("listeners[{i}].routes[{j}].hosts[{k}]"),
                            format!("{h:?} {problem}"),
                        );
                    }
                }
                if r.cluster.is_empty() && r.protocol == RouteProtocol::Tcp {
                    return invalid(
                        format!("listeners[{i}].routes[{j}].cluster"),
                        "a TCP route needs a cluster".to_owned(),
                    );
                }
                if !r.cluster.is_empty() && self.cluster(&r.cluster).is_none() {
                    return invalid(
                        format!("listeners[{i}].routes[{j}].cluster"),
                        format!("no cluster named {:?}", r.cluster),
                    );
                }
                if let Some(fault) = &r.fault {
                    fault.validate(&format!("listeners[{i}].routes[{j}].fault"))?;
                }
                for (k, rule) in r.rules.iter().enumerate() {
                    rule.validate(&format!("listeners[{i}].routes[{j}].rules[{k}]"))?;
                }
            }
        }
        Ok(())
    }
}

pub(crate) fn invalid(field: String, message: impl Into<String>) -> Result<(), Error> {
    Err(Error::Invalid {
        field,
        message: message.into(),
    })
}

impl Cluster {
    /// Whether `other` differs from this cluster in its endpoint list at most: an
    /// endpoint update, across which Envoy keeps hosts and their outlier state.
    pub fn same_but_endpoints(&self, other: &Self) -> bool {
        let policy = |c: &Self| Self {
            endpoints: Vec::new(),
            ..c.clone()
        };
        policy(self) == policy(other)
    }

    /// Checks one cluster; `at` is its path, e.g. `clusters[2]`.
    fn validate(&self, at: &str) -> Result<(), Error> {
        if let Some(od) = &self.outlier_detection {
            if !(1..=100).contains(&od.max_ejection_percent) {
                return invalid(
                    format!("{at}.outlierDetection.maxEjectionPercent"),
                    format!(
                        "{} is not in 1..100 (0 means the default, 10)",
                        od.max_ejection_percent
                    ),
                );
            }
            if od.min_health_percent > 100 {
                return invalid(
                    format!("{at}.outlierDetection.minHealthPercent"),
                    format!("{} is not in 0..100", od.min_health_percent),
                );
            }
            if let Some(code) = od
                .http_error_codes
                .iter()
                .find(|c| !(100..=599).contains(*c))
            {
                return invalid(
                    format!("{at}.outlierDetection.httpErrorCodes"),
                    format!("{code} is not an HTTP status code in 100..599"),
                );
            }
            if od.consecutive_local_origin_failures == 0 {
                return invalid(
                    format!("{at}.outlierDetection.consecutiveLocalOriginFailures"),
                    "0 is not a threshold (Istio writes Envoy's default, 5, for 0)",
                );
            }
            if od.interval < Duration::from_millis(1)
                || od.base_ejection_time < Duration::from_millis(1)
            {
                return invalid(
                    format!("{at}.outlierDetection"),
                    "interval and baseEjectionTime must be at least 1ms",
                );
            }
        }
        if let Some(hash) = &self.consistent_hash {
            if !self.load_balancer.is_consistent_hash() {
                return invalid(
                    format!("{at}.consistentHash"),
                    format!(
                        "is used only with loadBalancer RING_HASH or MAGLEV, not {:?}",
                        self.load_balancer
                    ),
                );
            }
            hash.validate(&format!("{at}.consistentHash"))?;
        }
        if let Some(slow_start) = &self.slow_start {
            if !matches!(
                self.load_balancer,
                LoadBalancer::RoundRobin | LoadBalancer::LeastRequest
            ) {
                return invalid(
                    format!("{at}.slowStart"),
                    format!(
                        "is used only with loadBalancer ROUND_ROBIN or LEAST_REQUEST, not {:?}",
                        self.load_balancer
                    ),
                );
            }
            slow_start.validate(&format!("{at}.slowStart"))?;
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            if e.weight == 0 {
                return invalid(
                    format!("{at}.endpoints[{i}].weight"),
                    "0 is not a weight: Envoy's load_balancing_weight is at least 1",
                );
            }
        }
        self.connection_pool
            .validate(&format!("{at}.connectionPool"))
    }
}

/// Durations in the model use the same Go-style strings as Istio (`10s`, `100ms`).
pub(crate) mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", d.as_millis()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?}: use a number and a unit, like 10s or 100ms"
            ))
        })
    }

    pub fn parse(text: &str) -> Option<Duration> {
        let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (num, unit) = text.split_at(split);
        let value: f64 = num.parse().ok()?;
        let secs = match unit {
            "ms" => value / 1000.0,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            _ => return None,
        };
        // Protobuf's largest Duration (10,000 years), as Envoy's config takes no more;
        // past it `Instant` arithmetic could overflow.
        (secs <= MAX_SECONDS)
            .then(|| Duration::try_from_secs_f64(secs).ok())
            .flatten()
    }

    const MAX_SECONDS: f64 = 315_576_000_000.0;
}

pub(crate) mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    #[allow(clippy::ref_option)] // serde's `with` passes `&Option<T>`
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| {
                super::duration::parse(&text)
                    .ok_or_else(|| serde::de::Error::custom(format!("invalid duration {text:?}")))
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r"
listeners:
- name: mesh
  address: 127.0.0.1:15008
  routes:
  - hosts: [in-ambient.httpbin.svc.cluster.local, in-ambient]
    cluster: inbound-vip|8000|http|in-ambient.httpbin.svc.cluster.local
clusters:
- name: inbound-vip|8000|http|in-ambient.httpbin.svc.cluster.local
  loadBalancer: ROUND_ROBIN
  endpoints:
  - {address: 10.10.0.15:8080, workload: in-ambient-7d8f9b6c54-abc12}
  outlierDetection:
    consecutive5xxErrors: 3
    interval: 10s
    baseEjectionTime: 30s
    maxEjectionPercent: 50
";

    #[test]
    fn seed_config_loads_with_istio_defaults() {
        let c = Config::from_yaml(SEED).unwrap();
        let cluster = &c.clusters[0];
        assert_eq!(cluster.load_balancer, LoadBalancer::RoundRobin);
        assert_eq!(cluster.connect_timeout, Duration::from_secs(10));
        let od = cluster.outlier_detection.as_ref().unwrap();
        assert_eq!(od.consecutive_5xx_errors, Some(3));
        assert_eq!(od.base_ejection_time, Duration::from_secs(30));
        assert!(!od.split_external_local_origin_errors);
        assert_eq!(od.consecutive_local_origin_failures, 5);
        let route = &c.listeners[0].routes[0];
        assert_eq!(route.retry, RetryConfig::default());
        assert_eq!(route.timeout, None);
    }

    const HASHED: &str = r"
clusters:
- name: hashed
  loadBalancer: MAGLEV
  consistentHash:
    httpCookie:
      name: session
      path: /
      ttl: 60s
      attributes: [{name: SameSite, value: Strict}, {name: Secure}]
    tableSize: 251
  connectionPool:
    maxConnections: 1
    maxPendingRequests: 2
    maxRequestsPerConnection: 1
    idleTimeout: 0s
  endpoints: [{address: 10.10.0.15:8080}, {address: 10.10.0.16:8080, hbone: true}]
";

    #[test]
    fn consistent_hash_and_connection_pool_load_with_envoy_defaults() {
        let c = Config::from_yaml(HASHED).unwrap();
        let cluster = &c.clusters[0];
        assert!(cluster.load_balancer.is_consistent_hash());
        let hash = cluster.consistent_hash.as_ref().unwrap();
        let Some(HashKey::Cookie(cookie)) = hash.key() else {
            panic!("{hash:?}")
        };
        assert_eq!(cookie.ttl, Some(Duration::from_mins(1)));
        assert_eq!(cookie.attributes[1].value, "");
        assert_eq!(
            (hash.table_size, hash.minimum_ring_size),
            (251, DEFAULT_MINIMUM_RING_SIZE)
        );
        let pool = &cluster.connection_pool;
        assert_eq!((pool.max_connections, pool.max_pending_requests), (1, 2));
        assert_eq!(
            (pool.max_requests, pool.max_retries),
            (UNLIMITED, UNLIMITED)
        );
        assert_eq!(pool.max_requests_per_connection, 1);
        assert_eq!(pool.idle_timeout, Duration::ZERO);
        // Without the section: Istio's defaults, no limits, 1h idle timeout.
        let seed = Config::from_yaml(SEED).unwrap();
        assert_eq!(seed.clusters[0].connection_pool, ConnectionPool::default());
        assert_eq!(
            seed.clusters[0].connection_pool.idle_timeout,
            Duration::from_hours(1)
        );
        let again = Config::from_yaml(&serde_yaml::to_string(&c).unwrap()).unwrap();
        assert_eq!(c, again);
    }

    #[test]
    fn endpoints_are_plain_unless_marked_hbone() {
        let c = Config::from_yaml(HASHED).unwrap();
        let hbone: Vec<bool> = c.clusters[0].endpoints.iter().map(|e| e.hbone).collect();
        assert_eq!(hbone, [false, true]);
        // A plain endpoint is written without the field, as before it existed.
        let yaml = serde_yaml::to_string(&c).unwrap();
        assert_eq!(yaml.matches("hbone").count(), 1, "{yaml}");
    }

    #[test]
    fn the_default_retry_of_a_hashing_cluster_keeps_previous_hosts() {
        assert!(RetryConfig::for_cluster(LoadBalancer::RoundRobin).avoid_previous_hosts);
        let hashed = RetryConfig::for_cluster(LoadBalancer::RingHash);
        assert!(!hashed.avoid_previous_hosts);
        assert_eq!(hashed.attempts, 2);
        assert!(!RetryConfig::for_cluster(LoadBalancer::Maglev).avoid_previous_hosts);
    }

    #[test]
    fn round_trips() {
        let c = Config::from_yaml(SEED).unwrap();
        let again = Config::from_yaml(&serde_yaml::to_string(&c).unwrap()).unwrap();
        assert_eq!(c, again);
    }

    const WARMING: &str = r"
clusters:
- name: warming
  loadBalancer: LEAST_REQUEST
  slowStart: {window: 30s}
  endpoints: [{address: 10.10.0.15:8080, weight: 3}, {address: 10.10.0.16:8080}]
";

    #[test]
    fn weights_and_slow_start_load_with_envoy_defaults() {
        let c = Config::from_yaml(WARMING).unwrap();
        let cluster = &c.clusters[0];
        let weights: Vec<u32> = cluster.endpoints.iter().map(|e| e.weight).collect();
        assert_eq!(weights, [3, 1]);
        assert_eq!(
            cluster.slow_start,
            Some(SlowStart {
                window: Duration::from_secs(30),
                min_weight_percent: 10.0,
                aggression: 1.0,
            })
        );
        let yaml = serde_yaml::to_string(&c).unwrap();
        // A weight of 1 is written without the field, as before it existed.
        assert_eq!(yaml.matches("weight:").count(), 1, "{yaml}");
        assert_eq!(Config::from_yaml(&yaml).unwrap(), c);
        assert_eq!(
            Config::from_yaml(SEED).unwrap().clusters[0].slow_start,
            None
        );
    }

    #[test]
    fn invalid_configs_name_the_field() {
        let cases = [
            (
                SEED.replace("maxEjectionPercent: 50", "maxEjectionPercent: 150"),
                "clusters[0].outlierDetection.maxEjectionPercent",
            ),
            (
                SEED.replace("    cluster: inbound", "    cluster: outbound"),
                "listeners[0].routes[0].cluster",
            ),
            (
                SEED.replace("in-ambient]", "in-*]"),
                "listeners[0].routes[0].hosts[1]: \"in-*\" has a wildcard other than a whole first label",
            ),
            (
                SEED.replace("interval: 10s", "interval: 10"),
                "invalid duration \"10\"",
            ),
            (
                SEED.replace("loadBalancer:", "loadBalancr:"),
                "unknown field `loadBalancr`",
            ),
            ("listeners: 5".to_owned(), "invalid type"),
            (
                HASHED.replace("tableSize: 251", "tableSize: 250"),
                "clusters[0].consistentHash.tableSize",
            ),
            (
                HASHED.replace("tableSize: 251", "minimumRingSize: 0"),
                "clusters[0].consistentHash.minimumRingSize",
            ),
            (
                HASHED.replace("    tableSize: 251", "    useSourceIp: true"),
                "clusters[0].consistentHash: set at most one",
            ),
            (
                HASHED.replace("name: session", "name: \"\""),
                "clusters[0].consistentHash.httpCookie.name",
            ),
            (
                HASHED.replace("name: Secure", "name: \"a b\""),
                "clusters[0].consistentHash.httpCookie.attributes[1].name",
            ),
            (
                HASHED.replace("path: /", "path: /;x"),
                "clusters[0].consistentHash.httpCookie: path",
            ),
            (
                HASHED.replace("MAGLEV", "ROUND_ROBIN"),
                "clusters[0].consistentHash: is used only with loadBalancer RING_HASH or MAGLEV",
            ),
            (
                HASHED.replace("maxPendingRequests: 2", "maxPendingRequests: 0"),
                "clusters[0].connectionPool.maxPendingRequests",
            ),
            (
                HASHED.replace("maxConnections: 1", "maxConnections: -1"),
                "clusters[0].connectionPool.maxConnections: invalid type",
            ),
        ];
        assert_refused(&cases);
    }

    #[test]
    fn invalid_balancing_and_detection_configs_name_the_field() {
        let cases = [
            (
                WARMING.replace("weight: 3", "weight: 0"),
                "clusters[0].endpoints[0].weight: 0 is not a weight",
            ),
            (
                HASHED.replace(
                    "idleTimeout: 0s",
                    "idleTimeout: 0s\n    maxConnectionDuration: 0s",
                ),
                "clusters[0].connectionPool.maxConnectionDuration: must be at least 1ms",
            ),
            (
                HASHED.replace(
                    "idleTimeout: 0s",
                    "idleTimeout: 0s\n    http2KeepAlive: {interval: 10s, timeout: 0s}",
                ),
                "clusters[0].connectionPool.http2KeepAlive: interval and timeout must be at least 1ms",
            ),
            (
                HASHED.replace(
                    "idleTimeout: 0s",
                    "idleTimeout: 0s\n    tcpKeepalive: {time: 1500ms}",
                ),
                "clusters[0].connectionPool.tcpKeepalive.time: must be whole seconds, at least 1s",
            ),
            (
                HASHED.replace(
                    "idleTimeout: 0s",
                    "idleTimeout: 0s\n    tcpKeepalive: {interval: 10s, probes: 0}",
                ),
                "clusters[0].connectionPool.tcpKeepalive.probes: must be 1 to 127",
            ),
            (
                SEED.replace(
                    "maxEjectionPercent: 50",
                    "maxEjectionPercent: 50\n    consecutiveLocalOriginFailures: 0",
                ),
                "clusters[0].outlierDetection.consecutiveLocalOriginFailures: 0 is not a threshold",
            ),
            (
                SEED.replace(
                    "maxEjectionPercent: 50",
                    "maxEjectionPercent: 50\n    httpErrorCodes: [503, 99]",
                ),
                "clusters[0].outlierDetection.httpErrorCodes: 99 is not an HTTP status code",
            ),
            (
                WARMING.replace("LEAST_REQUEST", "RANDOM"),
                "clusters[0].slowStart: is used only with loadBalancer ROUND_ROBIN or LEAST_REQUEST, not Random",
            ),
            (
                WARMING.replace("window: 30s", "window: 0s"),
                "clusters[0].slowStart.window",
            ),
            (
                WARMING.replace("window: 30s", "window: 1s, minWeightPercent: 101"),
                "clusters[0].slowStart.minWeightPercent: 101 is not in 0..100",
            ),
            (
                WARMING.replace("window: 30s", "window: 1s, aggression: 0"),
                "clusters[0].slowStart.aggression",
            ),
            (
                WARMING.replace("window: 30s", "window: 1s, aggression: .nan"),
                "clusters[0].slowStart.aggression: NaN is not a number above 0",
            ),
        ];
        assert_refused(&cases);
    }

    fn assert_refused(cases: &[(String, &str)]) {
        for (text, want) in cases {
            let err = Config::from_yaml(text).unwrap_err().to_string();
            assert!(err.contains(want), "{want:?} not in {err:?}");
        }
    }

    #[test]
    fn durations_past_protobufs_range_are_refused_not_panicked_on() {
        use super::duration::parse;
        assert_eq!(parse("1.5ms"), Some(Duration::from_micros(1500)));
        assert_eq!(
            parse("315576000000s"),
            Some(Duration::from_hours(87_660_000))
        );
        for text in [
            "315576000001s",
            "18446744073709551615s",
            "9999999999999999999999h",
            "-1s",
            "1d",
            "s",
        ] {
            assert_eq!(parse(text), None, "{text}");
        }
        let err = Config::from_yaml(
            "clusters: [{name: c, connectTimeout: 18446744073709551615s, endpoints: []}]",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("invalid duration"), "{err}");
    }
}
