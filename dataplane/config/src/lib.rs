//! The dataplane's config model. The operator compiles Gateway API objects,
//! DestinationRules and EndpointSlices into one `Config` per Gateway; the dataplane
//! loads the same type from a YAML file in standalone mode. This crate is the only
//! definition of it (DESIGN §2), and it knows nothing of Kubernetes.
//!
//! Values are already resolved: Istio's defaults and "0 means unset" rules have been
//! applied by whoever wrote the config, so the dataplane never guesses.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub clusters: Vec<Cluster>,
}

/// A plain HTTP listener. Requests are routed by their `Host` (authority) to a
/// cluster; HBONE and TLS listeners slot in beside this kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// Requests whose authority is one of `hosts` (with or without the port) go to
/// `cluster`. An empty `hosts` matches everything, so it belongs last.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    #[serde(default)]
    pub hosts: Vec<String>,
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
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryConfig {
    /// Istio's default is 2.
    pub attempts: u32,
    /// Envoy `retry_on` names, e.g. `connect-failure`, `refused-stream`, `unavailable`.
    pub retry_on: Vec<String>,
    #[serde(default)]
    pub retriable_status_codes: Vec<u16>,
    #[serde(default = "yes")]
    pub avoid_previous_hosts: bool,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Istio's mesh default is 10s.
    #[serde(default = "ten_seconds", with = "duration")]
    pub connect_timeout: Duration,
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
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LoadBalancer {
    #[default]
    LeastRequest,
    RoundRobin,
    Random,
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
            if let Some(od) = &c.outlier_detection {
                if !(1..=100).contains(&od.max_ejection_percent) {
                    return invalid(
                        format!("clusters[{i}].outlierDetection.maxEjectionPercent"),
                        format!(
                            "{} is not in 1..100 (0 means the default, 10)",
                            od.max_ejection_percent
                        ),
                    );
                }
                if od.min_health_percent > 100 {
                    return invalid(
                        format!("clusters[{i}].outlierDetection.minHealthPercent"),
                        format!("{} is not in 0..100", od.min_health_percent),
                    );
                }
                if od.interval < Duration::from_millis(1)
                    || od.base_ejection_time < Duration::from_millis(1)
                {
                    return invalid(
                        format!("clusters[{i}].outlierDetection"),
                        "interval and baseEjectionTime must be at least 1ms".to_owned(),
                    );
                }
            }
        }
        let mut addresses = BTreeSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            if !addresses.insert(l.address) {
                return invalid(
                    format!("listeners[{i}].address"),
                    format!("{} is used by two listeners", l.address),
                );
            }
            for (j, r) in l.routes.iter().enumerate() {
                if self.cluster(&r.cluster).is_none() {
                    return invalid(
                        format!("listeners[{i}].routes[{j}].cluster"),
                        format!("no cluster named {:?}", r.cluster),
                    );
                }
            }
        }
        Ok(())
    }
}

/// Durations in the model use the same Go-style strings as Istio (`10s`, `100ms`).
mod duration {
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
        (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
    }
}

mod opt_duration {
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
        let route = &c.listeners[0].routes[0];
        assert_eq!(route.retry, RetryConfig::default());
        assert_eq!(route.timeout, None);
    }

    #[test]
    fn round_trips() {
        let c = Config::from_yaml(SEED).unwrap();
        let again = Config::from_yaml(&serde_yaml::to_string(&c).unwrap()).unwrap();
        assert_eq!(c, again);
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
                SEED.replace("interval: 10s", "interval: 10"),
                "invalid duration \"10\"",
            ),
            (
                SEED.replace("loadBalancer:", "loadBalancr:"),
                "unknown field `loadBalancr`",
            ),
            ("listeners: 5".to_owned(), "invalid type"),
        ];
        for (text, want) in cases {
            let err = Config::from_yaml(&text).unwrap_err().to_string();
            assert!(err.contains(want), "{want:?} not in {err:?}");
        }
    }
}
