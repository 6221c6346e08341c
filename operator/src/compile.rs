//! Compiles what a waypoint serves into the dataplane config model: the Services
//! bound to it (`istio.io/use-waypoint`), their ready endpoints (EndpointSlices) and
//! the DestinationRules for them. Pure: the caller lists the objects.
//!
//! Scope today: Services in the waypoint's own namespace (the default
//! `allowedRoutes: Same`), bound by their own label or their namespace's, the
//! DestinationRule `loadBalancer` (`simple` and `consistentHash`),
//! `connectionPool` and `outlierDetection`, with port-level settings and subsets
//! (a subset's cluster exists when a VirtualService route names it); routes from
//! GAMMA HTTPRoutes, else from the Service's VirtualService.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use gateway_api::apis::experimental::httproutes::HttpRoute;
use gateway_api::apis::standard::gateways::Gateway;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use waypoint_config as model;
use waypoint_crds::destination_rule::{
    ConnectionPoolSettings, ConsistentHashLb, LbAlgorithm, LoadBalancerSettings, OutlierDetection,
    TrafficPolicy,
};
use waypoint_crds::{DestinationRule, VirtualService};

use waypoint_mesh::binding;

pub(crate) mod gamma;
pub(crate) mod virtual_service;

/// A cluster a rule sends or mirrors to: a Service port, or one DestinationRule
/// subset of its endpoints.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    pub cluster: String,
    pub service: String,
    pub namespace: String,
    pub port: i32,
    pub subset: Option<String>,
}

/// The objects of the waypoint's namespace that matter to it.
pub struct View<'a> {
    pub namespace: Option<&'a Namespace>,
    pub services: &'a [Service],
    pub slices: &'a [EndpointSlice],
    pub destination_rules: &'a [DestinationRule],
    /// HTTPRoutes of the namespace; those with a Service parent (GAMMA) apply.
    pub http_routes: &'a [HttpRoute],
    /// VirtualServices of the namespace: one applies to a Service port no HTTPRoute
    /// attaches to.
    pub virtual_services: &'a [VirtualService],
    /// The labels of the namespace's Pods by name, for DestinationRule subsets.
    pub pod_labels: &'a HashMap<String, BTreeMap<String, String>>,
    pub cluster_domain: &'a str,
}

/// Whether `svc` binds to `gw`: the shared resolution rules, the waypoint serves
/// service traffic, and (for now) only Services of the waypoint's own namespace.
pub fn binds(gw: &Gateway, svc: &Service, namespace: Option<&Namespace>) -> bool {
    let svc_ns = svc.namespace().unwrap_or_default();
    let Some(target) = binding::resolve(svc.labels(), &svc_ns, namespace.map(ResourceExt::labels))
    else {
        return false;
    };
    binding::serves(binding::waypoint_for(gw), binding::TrafficType::Service)
        && target.name == gw.name_any()
        && Some(&target.namespace) == gw.namespace().as_ref()
        && svc.namespace() == gw.namespace()
}

/// Istio's `applyOutlierDetection`. With `splitExternalLocalOriginErrors`,
/// `consecutiveLocalOriginFailures` is written only above 0, so unset and 0 leave
/// Envoy's default of 5.
fn outlier(od: &OutlierDetection) -> model::OutlierDetection {
    model::OutlierDetection {
        split_external_local_origin_errors: od.split_external_local_origin_errors == Some(true),
        consecutive_local_origin_failures: od
            .consecutive_local_origin_failures
            .filter(|n| *n > 0)
            .unwrap_or(5),
        // Statuses outside 100..599 are refused by the CRD; one that slipped past
        // is left out rather than refused with the whole config.
        http_error_codes: od
            .outlier_detection_http_error_codes
            .iter()
            .filter_map(|c| u16::try_from(*c).ok())
            .filter(|c| (100..=599).contains(c))
            .collect(),
        consecutive_5xx_errors: od.effective_consecutive_5xx(),
        consecutive_gateway_errors: od.effective_consecutive_gateway(),
        interval: od.effective_interval(),
        base_ejection_time: od.effective_base_ejection_time(),
        max_ejection_percent: od.effective_max_ejection_percent(),
        min_health_percent: od
            .min_health_percent
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(0)
            .min(100),
    }
}

/// The balancer for a top-level `loadBalancer` (Istio's `applyLoadBalancer`):
/// `consistentHash` and `simple` are a oneof, and the hash wins if both slipped in.
fn load_balancer(
    lb: Option<&LoadBalancerSettings>,
) -> (model::LoadBalancer, Option<model::ConsistentHash>) {
    if let Some(ch) = lb.and_then(|lb| lb.consistent_hash.as_ref()) {
        let (algorithm, hash) = consistent_hash(ch);
        return (algorithm, Some(hash));
    }
    let algorithm = match lb.map(LoadBalancerSettings::effective_algorithm) {
        Some(LbAlgorithm::RoundRobin) => model::LoadBalancer::RoundRobin,
        Some(LbAlgorithm::Random) => model::LoadBalancer::Random,
        // Istio's default, and PASSTHROUGH until original-destination routing exists.
        _ => model::LoadBalancer::LeastRequest,
    };
    (algorithm, None)
}

/// Istio's round-robin and least-request balancers (`applyRoundRobinLoadBalancer`,
/// `applyLeastRequestLoadBalancer`): `warmup`, else the deprecated
/// `warmupDurationSecs`, becomes Envoy's slow start with its defaults (10%, linear).
/// Other balancers have none. Values istiod would refuse do not reach the model: a
/// window under 1 ms drops the warmup, a share is clamped to 0..100, and an
/// aggression that is not above 0 is 1, as Envoy treats it.
fn slow_start(lb: Option<&LoadBalancerSettings>) -> Option<model::SlowStart> {
    let lb = lb.filter(|lb| lb.consistent_hash.is_none())?;
    if !matches!(
        lb.effective_algorithm(),
        LbAlgorithm::RoundRobin | LbAlgorithm::LeastRequest
    ) {
        return None;
    }
    let (window, min_percent, aggression) = match (&lb.warmup, &lb.warmup_duration_secs) {
        (Some(w), _) => (w.duration.as_std(), w.minimum_percent, w.aggression),
        (None, Some(d)) => (d.as_std(), None, None),
        (None, None) => return None,
    };
    (window >= Duration::from_millis(1)).then(|| model::SlowStart {
        window,
        min_weight_percent: min_percent
            .filter(|p| !p.is_nan())
            .map_or(10.0, |p| p.clamp(0.0, 100.0)),
        aggression: aggression
            .filter(|a| a.is_finite() && *a > 0.0)
            .unwrap_or(1.0),
    })
}

/// `maglev` → MAGLEV (`tableSize` when set); otherwise RING_HASH with
/// `ringHash.minimumRingSize`, the deprecated `minimumRingSize`, or 1024. Values
/// istiod admits but Envoy would refuse with the whole cluster or route (a ring
/// beyond Envoy's maximum, a header name with a space) fall back to Envoy's defaults
/// here, so one rule cannot take the waypoint's config down.
fn consistent_hash(ch: &ConsistentHashLb) -> (model::LoadBalancer, model::ConsistentHash) {
    let positive = |n: Option<u64>| n.filter(|n| *n > 0);
    let ring = positive(ch.ring_hash.as_ref().and_then(|r| r.minimum_ring_size))
        .or(positive(ch.minimum_ring_size))
        .unwrap_or(model::DEFAULT_MINIMUM_RING_SIZE)
        .min(model::MAXIMUM_RING_SIZE);
    let table = positive(ch.maglev.as_ref().and_then(|m| m.table_size))
        .filter(|&table_size| {
            model::ConsistentHash {
                table_size,
                ..model::ConsistentHash::random()
            }
            .validate("")
            .is_ok()
        })
        .unwrap_or(model::DEFAULT_MAGLEV_TABLE_SIZE);
    let mut hash = model::ConsistentHash {
        http_header_name: ch.http_header_name.clone(),
        http_cookie: ch.http_cookie.as_ref().map(|c| model::HttpCookie {
            name: c.name.clone(),
            path: c.path.clone(),
            ttl: c.ttl.as_ref().map(waypoint_crds::Duration::as_std),
            attributes: c
                .attributes
                .iter()
                .map(|a| model::CookieAttribute {
                    name: a.name.clone(),
                    value: a.value.clone().unwrap_or_default(),
                })
                .collect(),
        }),
        use_source_ip: ch.use_source_ip == Some(true),
        http_query_parameter_name: ch.http_query_parameter_name.clone(),
        minimum_ring_size: ring,
        table_size: table,
    };
    if hash.validate("").is_err() {
        hash = model::ConsistentHash {
            minimum_ring_size: ring,
            table_size: table,
            ..model::ConsistentHash::random()
        };
    }
    let algorithm = if ch.maglev.is_some() {
        model::LoadBalancer::Maglev
    } else {
        model::LoadBalancer::RingHash
    };
    (algorithm, hash)
}

/// Istio's `applyConnectionPool`: every limit is 2^32-1 unless set above 0 (negative
/// values too are ignored); `http.idleTimeout`, else `tcp.idleTimeout`, else 1h.
fn connection_pool(cp: Option<&ConnectionPoolSettings>) -> model::ConnectionPool {
    let limit = |n: Option<i32>| {
        n.and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0)
            .unwrap_or(model::UNLIMITED)
    };
    let (tcp, http) = (
        cp.and_then(|c| c.tcp.as_ref()),
        cp.and_then(|c| c.http.as_ref()),
    );
    let defaults = model::ConnectionPool::default();
    model::ConnectionPool {
        max_connections: limit(tcp.and_then(|t| t.max_connections)),
        max_pending_requests: limit(http.and_then(|h| h.http1_max_pending_requests)),
        max_requests: limit(http.and_then(|h| h.http2_max_requests)),
        max_retries: limit(http.and_then(|h| h.max_retries)),
        max_requests_per_connection: http
            .and_then(|h| h.max_requests_per_connection)
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(0),
        idle_timeout: http
            .and_then(|h| h.idle_timeout.as_ref())
            .or(tcp.and_then(|t| t.idle_timeout.as_ref()))
            .map_or(defaults.idle_timeout, waypoint_crds::Duration::as_std),
        max_connection_duration: tcp
            .and_then(|t| t.max_connection_duration.as_ref())
            .map(waypoint_crds::Duration::as_std)
            .filter(|d| *d >= Duration::from_millis(1)),
        // istiod requires both; one that slipped past the webhook is left out.
        http2_keep_alive: http
            .and_then(|h| h.http2_keep_alive.as_ref())
            .and_then(|k| {
                Some(model::Http2KeepAlive {
                    interval: k.interval.as_ref()?.as_std(),
                    timeout: k.timeout.as_ref()?.as_std(),
                })
            })
            .filter(|k| {
                k.interval >= Duration::from_millis(1) && k.timeout >= Duration::from_millis(1)
            }),
        tcp_keepalive: tcp
            .and_then(|t| t.tcp_keepalive.as_ref())
            .map(tcp_keepalive),
    }
}

/// As Istio's `applyConnectionPool`: probes when above 0, times in whole seconds
/// (truncated). A time under a second, which Envoy would set as 0 and the kernel
/// refuse, is left to the kernel's default instead.
fn tcp_keepalive(k: &waypoint_crds::destination_rule::TcpKeepalive) -> model::TcpKeepalive {
    let seconds = |d: Option<&waypoint_crds::Duration>| {
        d.map(|d| d.as_std().as_secs())
            .filter(|s| (1..=i32::MAX as u64).contains(s))
            .map(Duration::from_secs)
    };
    model::TcpKeepalive {
        probes: k.probes.filter(|p| (1..=127).contains(p)),
        time: seconds(k.time.as_ref()),
        interval: seconds(k.interval.as_ref()),
    }
}

/// The first DestinationRule (oldest first, as istiod) whose host names the Service.
fn rule_for<'a>(
    svc: &Service,
    fqdn: &str,
    rules: &'a [DestinationRule],
) -> Option<&'a DestinationRule> {
    let mut matching: Vec<&DestinationRule> = rules
        .iter()
        .filter(|r| r.namespace() == svc.namespace())
        .filter(|r| r.spec.host == svc.name_any() || r.spec.host == fqdn)
        .collect();
    matching.sort_by_key(|r| r.metadata.creation_timestamp.clone().map(|t| t.0));
    matching.first().copied()
}

/// The policy parts of one cluster (one Service port).
pub(crate) struct ClusterPolicy {
    load_balancer: model::LoadBalancer,
    consistent_hash: Option<model::ConsistentHash>,
    connection_pool: model::ConnectionPool,
    outlier_detection: Option<model::OutlierDetection>,
    connect_timeout: Duration,
    /// `connectionPool.http.h2UpgradePolicy` and `useClientProtocol`.
    http2: Http2Policy,
    slow_start: Option<model::SlowStart>,
}

impl ClusterPolicy {
    /// The cluster for one Service port (`None`: the Service or port is missing).
    pub(crate) fn into_cluster(
        self,
        name: String,
        endpoints: Vec<model::Endpoint>,
        port: Option<&k8s_openapi::api::core::v1::ServicePort>,
    ) -> model::Cluster {
        model::Cluster {
            name,
            endpoints,
            load_balancer: self.load_balancer,
            consistent_hash: self.consistent_hash,
            outlier_detection: self.outlier_detection,
            connect_timeout: self.connect_timeout,
            connection_pool: self.connection_pool,
            protocol: upstream_protocol(port, self.http2),
            slow_start: self.slow_start,
        }
    }
}

/// Istio's port-level rule (`GetPortLevelTrafficPolicy`): a `portLevelSettings`
/// entry for this port replaces loadBalancer, connectionPool and outlierDetection
/// wholesale; a part it omits falls to its default, not to the top-level value.
pub(crate) fn cluster_policy(policy: Option<&TrafficPolicy>, port: i32) -> ClusterPolicy {
    let port_level = policy.and_then(|p| {
        p.port_level_settings.iter().find(|s| {
            s.port
                .as_ref()
                .is_some_and(|n| i64::from(n.number) == i64::from(port))
        })
    });
    let (lb, cp, od) = match port_level {
        Some(s) => (
            s.load_balancer.as_ref(),
            s.connection_pool.as_ref(),
            s.outlier_detection.as_ref(),
        ),
        None => (
            policy.and_then(|p| p.load_balancer.as_ref()),
            policy.and_then(|p| p.connection_pool.as_ref()),
            policy.and_then(|p| p.outlier_detection.as_ref()),
        ),
    };
    let (load_balancer, consistent_hash) = load_balancer(lb);
    ClusterPolicy {
        load_balancer,
        consistent_hash,
        slow_start: slow_start(lb),
        connection_pool: connection_pool(cp),
        outlier_detection: od.map(outlier),
        connect_timeout: cp
            .and_then(|c| c.tcp.as_ref())
            .and_then(|t| t.connect_timeout.as_ref())
            .map_or(Duration::from_secs(10), waypoint_crds::Duration::as_std),
        http2: http2_policy(cp),
    }
}

/// What a DestinationRule says about HTTP/2 to the endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Http2Policy {
    #[default]
    Default,
    /// `h2UpgradePolicy: UPGRADE`.
    Upgrade,
    /// `useClientProtocol: true`.
    UseClientProtocol,
}

fn http2_policy(cp: Option<&ConnectionPoolSettings>) -> Http2Policy {
    let Some(http) = cp.and_then(|c| c.http.as_ref()) else {
        return Http2Policy::Default;
    };
    if http.use_client_protocol == Some(true) {
        Http2Policy::UseClientProtocol
    } else if http.h2_upgrade_policy
        == Some(waypoint_crds::destination_rule::H2UpgradePolicy::Upgrade)
    {
        Http2Policy::Upgrade
    } else {
        Http2Policy::Default
    }
}

/// Ready endpoints of `svc` for its port named `port_name`, at the slice's target
/// port, sorted and without duplicates (one pod can appear in two slices).
pub(crate) fn endpoints(
    slices: &[EndpointSlice],
    svc: &Service,
    port_name: Option<&str>,
) -> Vec<model::Endpoint> {
    let name = svc.name_any();
    let mut out: Vec<model::Endpoint> = slices
        .iter()
        .filter(|s| {
            s.labels().get("kubernetes.io/service-name") == Some(&name)
                && s.namespace() == svc.namespace()
        })
        .flat_map(|s| {
            let number = s
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().unwrap_or("") == port_name.unwrap_or(""))
                .and_then(|p| p.port);
            s.endpoints.iter().flatten().filter_map(move |e| {
                let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                let ip: IpAddr = e.addresses.first()?.parse().ok()?;
                let port = u16::try_from(number?).ok()?;
                ready.then(|| model::Endpoint {
                    address: SocketAddr::new(ip, port),
                    workload: e.target_ref.as_ref().and_then(|t| t.name.clone()),
                    // Marking mesh-enabled endpoints is the operator's part of issue 7.
                    hbone: false,
                    weight: 1,
                })
            })
        })
        .collect();
    out.sort_by_key(|e| e.address);
    out.dedup();
    out
}

/// Istio's explicit protocol selection: `appProtocol`, else the port name's prefix
/// (`tcp-db`). Opaque protocols are proxied as TCP; everything else as HTTP, which
/// the waypoint sniffs (HTTP/1.1 or HTTP/2).
/// The protocol a Service port declares, as Istio reads it: `appProtocol`, else the
/// port name's prefix before `-`; lower-cased.
fn declared_protocol(port: &k8s_openapi::api::core::v1::ServicePort) -> String {
    port.app_protocol
        .as_deref()
        .or_else(|| {
            port.name
                .as_deref()
                .map(|n| n.split('-').next().unwrap_or(n))
        })
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// HTTP/2 to the endpoints for a port declared gRPC or HTTP/2 (including Gateway
/// API's `kubernetes.io/h2c`), or when the DestinationRule asks for
/// `h2UpgradePolicy: UPGRADE`; HTTP/1.1 otherwise, as Istio builds the cluster.
/// `useClientProtocol` overrides both: Istio's `applyConnectionPool` sets Envoy's
/// `use_downstream_protocol_config` last, whatever the port.
pub(crate) fn upstream_protocol(
    port: Option<&k8s_openapi::api::core::v1::ServicePort>,
    policy: Http2Policy,
) -> model::UpstreamProtocol {
    if policy == Http2Policy::UseClientProtocol {
        return model::UpstreamProtocol::Downstream;
    }
    let declared = port.map(declared_protocol).unwrap_or_default();
    match declared.as_str() {
        "grpc" | "http2" | "h2c" | "kubernetes.io/h2c" => model::UpstreamProtocol::Http2,
        _ if policy == Http2Policy::Upgrade => model::UpstreamProtocol::Http2,
        _ => model::UpstreamProtocol::Http1,
    }
}

fn port_protocol(port: &k8s_openapi::api::core::v1::ServicePort) -> model::RouteProtocol {
    match declared_protocol(port).as_str() {
        "tcp" | "tls" | "mongo" | "mysql" | "redis" => model::RouteProtocol::Tcp,
        _ => model::RouteProtocol::Http,
    }
}

/// Clusters for the backends routes name that no bound Service already gave one:
/// other Services' ports, and DestinationRule subsets.
fn backend_clusters(view: &View<'_>, wanted: Vec<Backend>, clusters: &mut Vec<model::Cluster>) {
    for b in wanted {
        if clusters
            .iter()
            .any(|c: &model::Cluster| c.name == b.cluster)
        {
            continue;
        }
        // A backend Service of the namespace gets its endpoints and its
        // DestinationRule's policy; one that does not exist gets no endpoints, so its
        // share of traffic fails (503), as a missing backend must.
        let svc = view.services.iter().find(|s| {
            s.name_any() == b.service && s.namespace().as_deref() == Some(b.namespace.as_str())
        });
        let service_port = svc
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.ports.as_ref())
            .and_then(|ports| ports.iter().find(|p| p.port == b.port));
        let port_name = service_port.and_then(|p| p.name.clone());
        let mut endpoints = svc.map_or_else(Vec::new, |s| {
            endpoints(view.slices, s, port_name.as_deref())
        });
        let rule = svc.and_then(|s| {
            let fqdn = format!("{}.{}.svc.{}", b.service, b.namespace, view.cluster_domain);
            rule_for(s, &fqdn, view.destination_rules)
        });
        let policy = rule.and_then(|r| r.spec.traffic_policy.as_ref());
        let policy = match &b.subset {
            None => cluster_policy(policy, b.port),
            Some(name) => {
                let subset = rule.and_then(|r| r.spec.subsets.iter().find(|s| s.name == *name));
                match subset {
                    // Envoy answers a route to a cluster that does not exist 503; an
                    // empty cluster does too.
                    None => {
                        tracing::warn!(cluster = %b.cluster, "subset not defined by a DestinationRule; no endpoints");
                        endpoints.clear();
                    }
                    Some(subset) => endpoints.retain(|e| {
                        let labels = e.workload.as_ref().and_then(|w| view.pod_labels.get(w));
                        subset
                            .labels
                            .iter()
                            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
                    }),
                }
                let merged = subset_policy(
                    policy,
                    subset.and_then(|s| s.traffic_policy.as_ref()),
                    b.port,
                );
                cluster_policy(Some(&merged), b.port)
            }
        };
        clusters.push(policy.into_cluster(b.cluster, endpoints, service_port));
    }
}

/// Istio's `MergeSubsetTrafficPolicy`, after the port-level rule: each of the
/// subset's loadBalancer, connectionPool, outlierDetection and tls replaces the
/// DestinationRule's wholesale; a port-level entry of the subset replaces all four,
/// even with nothing.
fn subset_policy(
    rule: Option<&TrafficPolicy>,
    subset: Option<&TrafficPolicy>,
    port: i32,
) -> TrafficPolicy {
    let at_port = |p: &TrafficPolicy| {
        p.port_level_settings
            .iter()
            .find(|s| {
                s.port
                    .as_ref()
                    .is_some_and(|n| i64::from(n.number) == i64::from(port))
            })
            .map(|s| TrafficPolicy {
                load_balancer: s.load_balancer.clone(),
                connection_pool: s.connection_pool.clone(),
                outlier_detection: s.outlier_detection.clone(),
                tls: s.tls.clone(),
                ..TrafficPolicy::default()
            })
    };
    let mut out = rule.map_or_else(TrafficPolicy::default, |r| {
        at_port(r).unwrap_or_else(|| TrafficPolicy {
            port_level_settings: Vec::new(),
            ..r.clone()
        })
    });
    let Some(subset) = subset else {
        return out;
    };
    if let Some(whole) = at_port(subset) {
        return TrafficPolicy {
            tunnel: out.tunnel,
            proxy_protocol: out.proxy_protocol,
            retry_budget: out.retry_budget,
            ..whole
        };
    }
    if subset.load_balancer.is_some() {
        out.load_balancer.clone_from(&subset.load_balancer);
    }
    if subset.connection_pool.is_some() {
        out.connection_pool.clone_from(&subset.connection_pool);
    }
    if subset.outlier_detection.is_some() {
        out.outlier_detection.clone_from(&subset.outlier_detection);
    }
    if subset.tls.is_some() {
        out.tls.clone_from(&subset.tls);
    }
    out
}

/// A Service port's rules: its GAMMA HTTPRoutes if any attach, else its
/// VirtualService's, else none (every request to the Service's cluster).
fn route_rules(
    view: &View<'_>,
    target: &virtual_service::Target<'_>,
    wanted: &mut Vec<Backend>,
) -> (Vec<model::RouteRule>, model::RuleOrder) {
    let name = target.service.name_any();
    let ns = target.service.namespace().unwrap_or_default();
    let (rules, backends) = gamma::rules_for(
        view.http_routes,
        &name,
        &ns,
        target.port,
        view.cluster_domain,
    );
    if !rules.is_empty() {
        wanted.extend(backends);
        return (rules, model::RuleOrder::Precedence);
    }
    let from_vs = virtual_service::applicable(view.virtual_services, target)
        .and_then(|vs| virtual_service::rules(vs, target));
    match from_vs {
        Some((rules, backends)) => {
            wanted.extend(backends);
            (rules, model::RuleOrder::Declared)
        }
        None => (Vec::new(), model::RuleOrder::Precedence),
    }
}

pub fn compile(gw: &Gateway, view: &View<'_>) -> model::Config {
    let mut routes = Vec::new();
    let mut clusters = Vec::new();
    // Backends HTTPRoutes name, which need a cluster even when not bound here.
    let mut wanted: Vec<Backend> = Vec::new();
    let mut services: Vec<&Service> = view
        .services
        .iter()
        .filter(|s| binds(gw, s, view.namespace))
        .collect();
    services.sort_by_key(|s| s.name_any());
    for svc in services {
        let (name, ns) = (svc.name_any(), svc.namespace().unwrap_or_default());
        let fqdn = format!("{name}.{ns}.svc.{}", view.cluster_domain);
        let spec = svc.spec.clone().unwrap_or_default();
        let rule = rule_for(svc, &fqdn, view.destination_rules);
        let policy = rule.and_then(|r| r.spec.traffic_policy.as_ref());
        let mut ports = spec.ports.unwrap_or_default();
        ports.sort_by_key(|p| p.port);
        for (i, port) in ports.iter().enumerate() {
            let protocol = port_protocol(port);
            let kind = match protocol {
                model::RouteProtocol::Http => "http",
                model::RouteProtocol::Tcp => "tcp",
            };
            let cluster = format!("inbound-vip|{}|{kind}|{fqdn}", port.port);
            let policy = cluster_policy(policy, port.port);
            let load_balancer = policy.load_balancer;
            let endpoints = endpoints(view.slices, svc, port.name.as_deref());
            let mut hosts: Vec<String> = [fqdn.clone(), format!("{name}.{ns}"), name.clone()]
                .into_iter()
                .map(|h| format!("{h}:{}", port.port))
                .collect();
            hosts.extend(
                spec.cluster_ips
                    .iter()
                    .flatten()
                    .filter(|ip| *ip != "None")
                    .map(|ip| format!("{ip}:{}", port.port)),
            );
            if i == 0 {
                // Host headers without a port go to the Service's first port.
                hosts.extend([fqdn.clone(), format!("{name}.{ns}"), name.clone()]);
            }
            // Without previous-hosts avoidance for hashing clusters.
            let retry = model::RetryConfig::for_cluster(load_balancer);
            let (rules, rule_order) = if protocol == model::RouteProtocol::Http {
                let target = virtual_service::Target {
                    service: svc,
                    fqdn: &fqdn,
                    port: port.port,
                    services: view.services,
                    cluster_domain: view.cluster_domain,
                    default_retry: &retry,
                };
                route_rules(view, &target, &mut wanted)
            } else {
                (Vec::new(), model::RuleOrder::Precedence)
            };
            routes.push(model::Route {
                hosts,
                cluster: cluster.clone(),
                retry,
                timeout: None,
                fault: None,
                protocol,
                rules,
                rule_order,
            });
            clusters.push(policy.into_cluster(cluster, endpoints, Some(port)));
        }
    }
    backend_clusters(view, wanted, &mut clusters);
    model::Config {
        listeners: vec![model::Listener {
            name: "mesh".to_owned(),
            address: SocketAddr::from(([0, 0, 0, 0], 15008)),
            protocol: model::ListenerProtocol::Hbone,
            routes,
            tls: None,
            request_headers_timeout: model::DEFAULT_REQUEST_HEADERS_TIMEOUT,
        }],
        clusters,
    }
}

#[cfg(test)]
mod protocol_tests {
    use k8s_openapi::api::core::v1::ServicePort;

    use super::{model::RouteProtocol, port_protocol};

    fn port(name: Option<&str>, app: Option<&str>) -> ServicePort {
        ServicePort {
            name: name.map(str::to_owned),
            app_protocol: app.map(str::to_owned),
            port: 5432,
            ..ServicePort::default()
        }
    }

    #[test]
    fn opaque_ports_are_tcp_and_the_rest_http() {
        assert_eq!(
            port_protocol(&port(Some("tcp-db"), None)),
            RouteProtocol::Tcp
        );
        assert_eq!(
            port_protocol(&port(Some("mysql"), None)),
            RouteProtocol::Tcp
        );
        assert_eq!(
            port_protocol(&port(Some("http"), Some("TCP"))),
            RouteProtocol::Tcp
        );
        // appProtocol wins over the name.
        assert_eq!(
            port_protocol(&port(Some("tcp"), Some("http"))),
            RouteProtocol::Http
        );
        assert_eq!(port_protocol(&port(None, None)), RouteProtocol::Http);
        assert_eq!(
            port_protocol(&port(Some("grpc-web"), None)),
            RouteProtocol::Http
        );
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ObjectReference, ServicePort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use kube::api::ObjectMeta;

    use super::*;
    use waypoint_mesh::names::{USE_WAYPOINT, USE_WAYPOINT_NAMESPACE, WAYPOINT_FOR_LABEL};

    fn meta(name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
        crate::fixtures::meta("httpbin", name, labels)
    }

    fn waypoint(labels: &[(&str, &str)]) -> Gateway {
        crate::fixtures::seed_gateway(labels)
    }

    fn namespace(labels: &[(&str, &str)]) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some("httpbin".into()),
                ..meta("httpbin", labels)
            },
            ..Namespace::default()
        }
    }

    fn service(labels: &[(&str, &str)]) -> Service {
        Service {
            metadata: meta("in-ambient", labels),
            spec: Some(ServiceSpec {
                cluster_ips: Some(vec!["10.96.45.123".into()]),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: 8000,
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    fn slice() -> EndpointSlice {
        let ep = |ip: &str, pod: &str, ready| Endpoint {
            addresses: vec![ip.into()],
            conditions: Some(EndpointConditions {
                ready: Some(ready),
                ..EndpointConditions::default()
            }),
            target_ref: Some(ObjectReference {
                name: Some(pod.into()),
                ..ObjectReference::default()
            }),
            ..Endpoint::default()
        };
        EndpointSlice {
            metadata: meta(
                "in-ambient-abcde",
                &[("kubernetes.io/service-name", "in-ambient")],
            ),
            address_type: "IPv4".into(),
            endpoints: Some(vec![
                ep("10.244.0.16", "in-ambient-abc12", true),
                ep("10.244.0.15", "in-ambient-def34", true),
                ep("10.244.0.17", "in-ambient-ghi56", true),
                ep("10.244.0.18", "in-ambient-starting", false),
            ]),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                ..EndpointPort::default()
            }]),
        }
    }

    fn seed_rule() -> DestinationRule {
        let text = include_str!(
            "../../crds/tests/fixtures/destinationrule/01-seed-in-ambient-failover.yaml"
        );
        serde_yaml::from_str(text).unwrap()
    }

    /// The seed's namespace (bound or not) with in-ambient, its slice, and `rules`.
    fn compiled(ns_bound: bool, rules: &[DestinationRule]) -> model::Config {
        let labels: &[(&str, &str)] = if ns_bound {
            &[(USE_WAYPOINT, "httpbin-waypoint")]
        } else {
            &[]
        };
        let (ns, svcs, slices) = (namespace(labels), [service(&[])], [slice()]);
        let view = View {
            namespace: Some(&ns),
            services: &svcs,
            slices: &slices,
            destination_rules: rules,
            http_routes: &[],
            virtual_services: &[],
            pod_labels: &HashMap::new(),
            cluster_domain: "cluster.local",
        };
        compile(&waypoint(&[]), &view)
    }

    #[test]
    fn binding_follows_istios_precedence() {
        let gw = waypoint(&[]);
        let ns_bound = namespace(&[(USE_WAYPOINT, "httpbin-waypoint")]);
        assert!(
            binds(&gw, &service(&[]), Some(&ns_bound)),
            "namespace label binds"
        );
        assert!(
            binds(&gw, &service(&[(USE_WAYPOINT, "httpbin-waypoint")]), None),
            "service label binds"
        );
        assert!(
            !binds(&gw, &service(&[(USE_WAYPOINT, "none")]), Some(&ns_bound)),
            "none opts out"
        );
        assert!(
            !binds(&gw, &service(&[(USE_WAYPOINT, "other")]), Some(&ns_bound)),
            "the service's label wins"
        );
        assert!(
            !binds(&gw, &service(&[]), Some(&namespace(&[]))),
            "no label, no binding"
        );
        let workload_only = waypoint(&[(WAYPOINT_FOR_LABEL, "workload")]);
        assert!(
            !binds(&workload_only, &service(&[]), Some(&ns_bound)),
            "waypoint-for must cover services"
        );
        assert!(binds(
            &waypoint(&[(WAYPOINT_FOR_LABEL, "all")]),
            &service(&[]),
            Some(&ns_bound)
        ));
        let elsewhere = service(&[
            (USE_WAYPOINT, "httpbin-waypoint"),
            (USE_WAYPOINT_NAMESPACE, "other-ns"),
        ]);
        assert!(
            !binds(&gw, &elsewhere, None),
            "use-waypoint-namespace names another namespace"
        );
    }

    #[test]
    fn seed_service_and_rule_compile_to_a_round_robin_cluster_with_outlier_detection() {
        let config = compiled(true, &[seed_rule()]);
        config.validate().unwrap();
        let cluster = &config.clusters[0];
        assert_eq!(
            cluster.name,
            "inbound-vip|8000|http|in-ambient.httpbin.svc.cluster.local"
        );
        assert_eq!(cluster.load_balancer, model::LoadBalancer::RoundRobin);
        let addrs: Vec<_> = cluster
            .endpoints
            .iter()
            .map(|e| e.address.to_string())
            .collect();
        assert_eq!(
            addrs,
            ["10.244.0.15:8080", "10.244.0.16:8080", "10.244.0.17:8080"],
            "ready endpoints only, target port"
        );
        assert_eq!(
            cluster.endpoints[1].workload.as_deref(),
            Some("in-ambient-abc12")
        );
        let od = cluster.outlier_detection.as_ref().unwrap();
        assert_eq!(
            (
                od.consecutive_5xx_errors,
                od.max_ejection_percent,
                od.min_health_percent
            ),
            (Some(3), 50, 0)
        );
        assert_eq!(
            (od.interval.as_secs(), od.base_ejection_time.as_secs()),
            (10, 30)
        );
        let route = &config.listeners[0].routes[0];
        for host in [
            "in-ambient:8000",
            "in-ambient.httpbin.svc.cluster.local:8000",
            "10.96.45.123:8000",
            "in-ambient",
        ] {
            assert!(
                route.hosts.iter().any(|h| h == host),
                "{host} missing from {:?}",
                route.hosts
            );
        }
        assert_eq!(route.retry, model::RetryConfig::default());
    }

    #[test]
    fn without_a_rule_istios_defaults_apply() {
        let config = compiled(true, &[]);
        let cluster = &config.clusters[0];
        assert_eq!(cluster.load_balancer, model::LoadBalancer::LeastRequest);
        assert_eq!(cluster.outlier_detection, None);
        assert_eq!(cluster.connect_timeout, Duration::from_secs(10));
        assert_eq!(cluster.consistent_hash, None);
        assert_eq!(cluster.connection_pool, model::ConnectionPool::default());
        assert!(config.listeners[0].routes[0].retry.avoid_previous_hosts);
    }

    /// A DestinationRule for the seed's in-ambient with this `trafficPolicy` body.
    fn rule(traffic_policy: &str) -> DestinationRule {
        let text = format!(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: in-ambient, namespace: httpbin}}
spec:
  host: in-ambient
  trafficPolicy:
{traffic_policy}"
        );
        serde_yaml::from_str(&text).unwrap()
    }

    /// The cluster and route the seed service compiles to under `traffic_policy`.
    fn compiled_with(traffic_policy: &str) -> (model::Cluster, model::Route) {
        let config = compiled(true, &[rule(traffic_policy)]);
        config.validate().unwrap();
        (
            config.clusters[0].clone(),
            config.listeners[0].routes[0].clone(),
        )
    }

    #[test]
    fn http2_to_endpoints_for_grpc_http2_ports_an_upgrade_policy_or_http2_clients() {
        use k8s_openapi::api::core::v1::ServicePort;
        let port = |name: Option<&str>, app: Option<&str>| ServicePort {
            name: name.map(str::to_owned),
            app_protocol: app.map(str::to_owned),
            port: 8000,
            ..ServicePort::default()
        };
        let h2 = model::UpstreamProtocol::Http2;
        let h1 = model::UpstreamProtocol::Http1;
        let client = model::UpstreamProtocol::Downstream;
        let (default, upgrade, use_client) = (
            Http2Policy::Default,
            Http2Policy::Upgrade,
            Http2Policy::UseClientProtocol,
        );
        for (p, policy, want) in [
            (port(Some("http"), None), default, h1),
            (port(Some("grpc-api"), None), default, h2),
            (port(Some("http2"), None), default, h2),
            (port(None, Some("kubernetes.io/h2c")), default, h2),
            (port(Some("grpc"), Some("http")), default, h1),
            (port(None, Some("GRPC")), default, h2),
            (port(Some("http"), None), upgrade, h2),
            (port(Some("http"), None), use_client, client),
            (port(Some("grpc"), None), use_client, client),
        ] {
            assert_eq!(
                upstream_protocol(Some(&p), policy),
                want,
                "{p:?} {policy:?}"
            );
        }
        assert_eq!(upstream_protocol(None, default), h1);
        let (cluster, _) = compiled_with("    connectionPool: {http: {h2UpgradePolicy: UPGRADE}}");
        assert_eq!(cluster.protocol, h2);
        let (cluster, _) = compiled_with("    connectionPool: {http: {h2UpgradePolicy: DEFAULT}}");
        assert_eq!(cluster.protocol, h1);
        let (cluster, _) = compiled_with("    connectionPool: {http: {useClientProtocol: true}}");
        assert_eq!(cluster.protocol, client);
        let (cluster, _) = compiled_with(
            "    connectionPool: {http: {useClientProtocol: false, h2UpgradePolicy: UPGRADE}}",
        );
        assert_eq!(cluster.protocol, h2);
    }

    #[test]
    fn local_origin_failures_split_with_envoys_default_threshold() {
        let od = |body: &str| {
            let (cluster, _) = compiled_with(&format!("    outlierDetection: {body}"));
            let od = cluster.outlier_detection.unwrap();
            (
                od.split_external_local_origin_errors,
                od.consecutive_local_origin_failures,
            )
        };
        assert_eq!(od("{consecutive5xxErrors: 3}"), (false, 5));
        assert_eq!(
            od("{splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 2}"),
            (true, 2)
        );
        assert_eq!(od("{splitExternalLocalOriginErrors: true}"), (true, 5));
        let (cluster, _) = compiled_with(
            "    outlierDetection: {outlierDetectionHttpErrorCodes: [503, 429, 700]}",
        );
        assert_eq!(
            cluster.outlier_detection.unwrap().http_error_codes,
            [503, 429]
        );
        assert_eq!(
            od("{splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 0}"),
            (true, 5)
        );
    }

    #[test]
    fn warmup_becomes_slow_start_for_round_robin_and_least_request_only() {
        let ramp = |window_s, min_weight_percent, aggression| {
            Some(model::SlowStart {
                window: Duration::from_secs(window_s),
                min_weight_percent,
                aggression,
            })
        };
        for (lb, want) in [
            (
                "{simple: ROUND_ROBIN, warmup: {duration: 30s}}",
                ramp(30, 10.0, 1.0),
            ),
            (
                "{warmup: {duration: 1m, minimumPercent: 25, aggression: 2.5}}",
                ramp(60, 25.0, 2.5),
            ),
            (
                "{simple: LEAST_CONN, warmupDurationSecs: 15s}",
                ramp(15, 10.0, 1.0),
            ),
            // `warmup` wins over the deprecated field.
            (
                "{simple: LEAST_REQUEST, warmupDurationSecs: 15s, warmup: {duration: 5s}}",
                ramp(5, 10.0, 1.0),
            ),
            // Values only a missing webhook would let through: Envoy's readings.
            (
                "{warmup: {duration: 5s, minimumPercent: 150, aggression: 0}}",
                ramp(5, 100.0, 1.0),
            ),
            ("{warmup: {duration: 0s}}", None),
            ("{simple: RANDOM, warmup: {duration: 30s}}", None),
            ("{simple: PASSTHROUGH, warmup: {duration: 30s}}", None),
            (
                "{consistentHash: {httpHeaderName: x-user}, warmup: {duration: 30s}}",
                None,
            ),
            ("{simple: ROUND_ROBIN}", None),
        ] {
            let (cluster, _) = compiled_with(&format!("    loadBalancer: {lb}"));
            assert_eq!(cluster.slow_start, want, "{lb}");
        }
    }

    #[test]
    fn consistent_hash_maps_its_key_and_algorithm() {
        // T15's rule: header key, no algorithm named → RING_HASH with 1024 entries.
        let (cluster, route) =
            compiled_with("    loadBalancer: {consistentHash: {httpHeaderName: x-user}}");
        assert_eq!(cluster.load_balancer, model::LoadBalancer::RingHash);
        let hash = cluster.consistent_hash.unwrap();
        assert_eq!(hash.key(), Some(model::HashKey::Header("x-user")));
        assert_eq!(hash.minimum_ring_size, 1024);
        assert!(
            !route.retry.avoid_previous_hosts,
            "Istio's DefaultConsistentHashPolicy has no previous_hosts predicate"
        );
        assert_eq!(route.retry.attempts, 2);

        let (cluster, _) = compiled_with(
            "    loadBalancer:
      consistentHash:
        httpCookie:
          name: user
          path: /
          ttl: 0s
          attributes: [{name: SameSite, value: Lax}, {name: Secure}]
        maglev: {tableSize: 251}",
        );
        assert_eq!(cluster.load_balancer, model::LoadBalancer::Maglev);
        let hash = cluster.consistent_hash.unwrap();
        assert_eq!(hash.table_size, 251);
        let cookie = hash.http_cookie.unwrap();
        assert_eq!(
            (cookie.name.as_str(), cookie.path.as_deref(), cookie.ttl),
            ("user", Some("/"), Some(Duration::ZERO))
        );
        assert_eq!(cookie.attributes[0].value, "Lax");
        assert_eq!(cookie.attributes[1].value, "");

        let (cluster, _) = compiled_with(
            "    loadBalancer: {consistentHash: {useSourceIp: true, ringHash: {minimumRingSize: 64}}}",
        );
        let hash = cluster.consistent_hash.unwrap();
        assert_eq!(
            (hash.key(), hash.minimum_ring_size),
            (Some(model::HashKey::SourceIp), 64)
        );
        let (cluster, _) = compiled_with(
            "    loadBalancer: {consistentHash: {httpQueryParameterName: u, minimumRingSize: 2048}}",
        );
        let hash = cluster.consistent_hash.unwrap();
        assert_eq!(
            (hash.key(), hash.minimum_ring_size),
            (Some(model::HashKey::QueryParameter("u")), 2048),
            "the deprecated minimumRingSize still counts"
        );
    }

    #[test]
    fn what_envoy_would_refuse_falls_back_to_its_defaults() {
        let (cluster, _) = compiled_with(
            "    loadBalancer: {consistentHash: {httpHeaderName: \"x user\", maglev: {tableSize: 250}}}",
        );
        let hash = cluster.consistent_hash.unwrap();
        assert_eq!(hash.key(), None, "an invalid header name hashes nothing");
        assert_eq!(hash.table_size, 65_537, "250 is not prime");
        let (cluster, _) = compiled_with(
            "    loadBalancer: {consistentHash: {ringHash: {minimumRingSize: 99999999}}}",
        );
        assert_eq!(
            cluster.consistent_hash.unwrap().minimum_ring_size,
            model::MAXIMUM_RING_SIZE
        );
    }

    #[test]
    fn connection_pool_limits_map_with_zero_as_unset() {
        let (cluster, route) = compiled_with(
            "    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool:
      tcp: {maxConnections: 3, connectTimeout: 250ms, idleTimeout: 5m, maxConnectionDuration: 90s}
      http:
        http1MaxPendingRequests: 0
        http2MaxRequests: 5
        maxRetries: -1
        maxRequestsPerConnection: 1",
        );
        let pool = &cluster.connection_pool;
        assert_eq!(
            (
                pool.max_connections,
                pool.max_pending_requests,
                pool.max_requests,
                pool.max_retries
            ),
            (3, model::UNLIMITED, 5, model::UNLIMITED)
        );
        assert_eq!(pool.max_requests_per_connection, 1);
        assert_eq!(pool.idle_timeout, Duration::from_mins(5), "tcp.idleTimeout");
        assert_eq!(pool.max_connection_duration, Some(Duration::from_secs(90)));
        assert_eq!(cluster.connect_timeout, Duration::from_millis(250));
        assert!(route.retry.avoid_previous_hosts);
        // http.idleTimeout wins over tcp.idleTimeout; tcp's 0s disables it.
        let (cluster, _) =
            compiled_with("    connectionPool: {tcp: {idleTimeout: 0s}, http: {idleTimeout: 30s}}");
        assert_eq!(
            cluster.connection_pool.idle_timeout,
            Duration::from_secs(30)
        );
        let (cluster, _) = compiled_with("    connectionPool: {tcp: {idleTimeout: 0s}}");
        assert_eq!(cluster.connection_pool.idle_timeout, Duration::ZERO);
        let (cluster, _) = compiled_with(
            "    connectionPool: {tcp: {tcpKeepalive: {probes: 4, time: 90s, interval: 1500ms}}}",
        );
        assert_eq!(
            cluster.connection_pool.tcp_keepalive,
            Some(model::TcpKeepalive {
                probes: Some(4),
                time: Some(Duration::from_secs(90)),
                interval: Some(Duration::from_secs(1)),
            }),
            "whole seconds, truncated as Istio does"
        );
        let (cluster, _) =
            compiled_with("    connectionPool: {tcp: {tcpKeepalive: {time: 500ms}}}");
        assert_eq!(
            cluster.connection_pool.tcp_keepalive,
            Some(model::TcpKeepalive::default()),
            "keep-alive on, the time left to the kernel"
        );
        assert_eq!(cluster.connection_pool.max_connection_duration, None);
        let (cluster, _) = compiled_with(
            "    connectionPool: {http: {http2KeepAlive: {interval: 10s, timeout: 2s}}}",
        );
        assert_eq!(
            cluster.connection_pool.http2_keep_alive,
            Some(model::Http2KeepAlive {
                interval: Duration::from_secs(10),
                timeout: Duration::from_secs(2),
            })
        );
        let (cluster, _) =
            compiled_with("    connectionPool: {http: {http2KeepAlive: {interval: 10s}}}");
        assert_eq!(cluster.connection_pool.http2_keep_alive, None);
    }

    #[test]
    fn a_port_level_entry_replaces_each_part_wholesale_t16() {
        // T16: port-level connectionPool on the Service's port, outlierDetection and
        // loadBalancer only at the top: the port gets neither (defaults instead).
        let (cluster, _) = compiled_with(
            "    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 3}
    portLevelSettings:
    - port: {number: 8000}
      connectionPool: {http: {maxRequestsPerConnection: 1}}",
        );
        assert_eq!(cluster.connection_pool.max_requests_per_connection, 1);
        assert_eq!(
            cluster.outlier_detection, None,
            "no outlier detection on port 8000"
        );
        assert_eq!(
            cluster.load_balancer,
            model::LoadBalancer::LeastRequest,
            "the default, not ROUND_ROBIN"
        );
        // An entry for another port leaves this one on the top-level policy.
        let (cluster, _) = compiled_with(
            "    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 3}
    portLevelSettings:
    - port: {number: 9000}
      connectionPool: {http: {maxRequestsPerConnection: 1}}",
        );
        assert_eq!(cluster.load_balancer, model::LoadBalancer::RoundRobin);
        assert_eq!(
            cluster.outlier_detection.map(|o| o.consecutive_5xx_errors),
            Some(Some(3))
        );
        assert_eq!(cluster.connection_pool.max_requests_per_connection, 0);
    }

    #[test]
    fn unbound_services_are_not_served() {
        let config = compiled(false, &[]);
        assert!(config.clusters.is_empty() && config.listeners[0].routes.is_empty());
    }
}
