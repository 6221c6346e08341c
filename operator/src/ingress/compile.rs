//! One ingress Gateway in the dataplane's config model. Each port of its usable
//! listeners becomes a dataplane listener; on it, each effective hostname (listener
//! hostname ∩ route hostnames) becomes a route holding the rules of every HTTPRoute
//! attached there, oldest route first, so Gateway API's tie-break by creation time
//! holds when the dataplane ranks matches. Routes have no default cluster: a rule
//! without backends, or a backend that does not resolve, answers 500.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use gateway_api::apis::experimental::httproutes::HttpRoute;
use gateway_api::apis::standard::referencegrants::ReferenceGrant;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use waypoint_config as model;

use super::attach::Parent;
use super::backends::{self, ServicePort};
use super::hostnames;
use super::listeners::{Certificate, Protocol, Verdict};
use crate::compile::gamma;

/// The cluster-wide objects a Gateway's routes may send to.
pub struct View<'a> {
    pub services: &'a [Service],
    pub slices: &'a [EndpointSlice],
    pub grants: &'a [ReferenceGrant],
    pub cluster_domain: &'a str,
}

/// The dataplane listener name for a port (also the container and Service port name).
pub fn listener_name(protocol: Protocol, port: i32) -> String {
    match protocol {
        Protocol::Http => format!("http-{port}"),
        Protocol::Https => format!("https-{port}"),
    }
}

/// The cluster name of a Service port, as Istio names outbound clusters.
pub fn cluster_name(b: &ServicePort, cluster_domain: &str) -> String {
    format!(
        "outbound|{}||{}.{}.svc.{cluster_domain}",
        b.port, b.name, b.namespace
    )
}

#[derive(Default)]
struct Port {
    protocol: Option<Protocol>,
    certificates: Vec<(Option<String>, Certificate)>,
    /// Effective hostname (`None`: any) → attached routes, keyed for ordering.
    hosts: BTreeMap<Option<String>, BTreeSet<RouteKey>>,
}

/// Oldest first, then by namespace/name: Gateway API's tie-break between routes.
type RouteKey = (Option<k8s_openapi::jiff::Timestamp>, String, String);

fn route_key(r: &HttpRoute) -> RouteKey {
    (
        r.metadata.creation_timestamp.as_ref().map(|t| t.0),
        r.namespace().unwrap_or_default(),
        r.name_any(),
    )
}

pub fn compile(listeners: &[Verdict], parents: &[Parent<'_>], view: &View<'_>) -> model::Config {
    let mut ports: BTreeMap<i32, Port> = BTreeMap::new();
    for l in listeners
        .iter()
        .filter(|l| l.accepted.is_ok() && l.conflicted.is_none())
    {
        let port = ports.entry(l.port).or_default();
        port.protocol = port.protocol.or(l.protocol);
        if let Some(c) = &l.certificate {
            port.certificates.push((l.hostname.clone(), c.clone()));
        }
    }
    let mut routes: BTreeMap<RouteKey, &HttpRoute> = BTreeMap::new();
    for p in parents {
        let Ok(attached) = &p.outcome else { continue };
        let key = route_key(p.route);
        routes.insert(key.clone(), p.route);
        let route_hosts = p.route.spec.hostnames.clone().unwrap_or_default();
        for &i in attached {
            let l = &listeners[i];
            let Some(port) = ports.get_mut(&l.port) else {
                continue;
            };
            for h in hostnames::intersect(l.hostname.as_deref(), &route_hosts) {
                if !isolated_away(listeners, i, h.as_deref()) {
                    port.hosts.entry(h).or_default().insert(key.clone());
                }
            }
        }
    }
    // Every listener hostname is a virtual host of its own, even without routes, so
    // its names never fall through to a less specific listener's routes (404).
    for l in listeners
        .iter()
        .filter(|l| l.accepted.is_ok() && l.conflicted.is_none())
    {
        if let (Some(h), Some(port)) = (&l.hostname, ports.get_mut(&l.port)) {
            port.hosts.entry(Some(h.to_ascii_lowercase())).or_default();
        }
    }
    // Each route's rules, compiled once.
    let mut wanted: Vec<ServicePort> = Vec::new();
    let rules: BTreeMap<RouteKey, Vec<model::RouteRule>> = routes
        .iter()
        .map(|(key, route)| (key.clone(), rules_of(route, view, &mut wanted)))
        .collect();
    let mut out = model::Config::default();
    for (number, port) in ports {
        let Some(protocol) = port.protocol else {
            continue;
        };
        let mut model_routes: Vec<model::Route> = port
            .hosts
            .into_iter()
            .map(|(host, attached)| model::Route {
                hosts: host.into_iter().collect(),
                cluster: String::new(),
                retry: model::RetryConfig::default(),
                timeout: None,
                fault: None,
                protocol: model::RouteProtocol::Http,
                rules: attached
                    .iter()
                    .flat_map(|k| rules.get(k).cloned().unwrap_or_default())
                    .collect(),
                rule_order: model::RuleOrder::Precedence,
            })
            .collect();
        // The catch-all last, though the dataplane ranks hosts by specificity anyway.
        model_routes.sort_by_key(|r| r.hosts.is_empty());
        out.listeners
            .push(listener(number, protocol, port.certificates, model_routes));
    }
    wanted.sort();
    wanted.dedup();
    for b in wanted {
        let Some(svc) = view
            .services
            .iter()
            .find(|s| s.name_any() == b.name && s.namespace().as_deref() == Some(&b.namespace))
        else {
            continue;
        };
        let service_port = svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.as_ref())
            .and_then(|ps| ps.iter().find(|p| p.port == b.port));
        let port_name = service_port.and_then(|p| p.name.as_deref());
        let endpoints = crate::compile::endpoints(view.slices, svc, port_name);
        out.clusters
            .push(crate::compile::cluster_policy(None, b.port).into_cluster(
                cluster_name(&b, view.cluster_domain),
                endpoints,
                service_port,
            ));
    }
    out
}

/// Gateway API listener isolation: a request goes to the most specific listener
/// whose hostname matches it, so listener `i` must not serve `host` when another
/// listener on its port is more specific than `i` and covers `host`.
fn isolated_away(listeners: &[Verdict], i: usize, host: Option<&str>) -> bool {
    let Some(host) = host else {
        return false;
    };
    let mine = specificity(listeners[i].hostname.as_deref());
    listeners.iter().enumerate().any(|(j, other)| {
        j != i
            && other.port == listeners[i].port
            && other.accepted.is_ok()
            && other.conflicted.is_none()
            && specificity(other.hostname.as_deref()) > mine
            && other
                .hostname
                .as_deref()
                .is_some_and(|o| hostnames::covers(o, host))
    })
}

/// Exact hostnames beat wildcards, longer wildcards beat shorter, any beats none.
fn specificity(hostname: Option<&str>) -> (u8, usize) {
    match hostname {
        None => (0, 0),
        Some(h) if h.starts_with('*') => (1, h.len()),
        Some(h) => (2, h.len()),
    }
}

fn listener(
    port: i32,
    protocol: Protocol,
    certificates: Vec<(Option<String>, Certificate)>,
    routes: Vec<model::Route>,
) -> model::Listener {
    let name = listener_name(protocol, port);
    let (protocol, tls) = match protocol {
        Protocol::Http => (model::ListenerProtocol::Http, None),
        Protocol::Https => (
            model::ListenerProtocol::Https,
            Some(model::ListenerTls {
                certificates: certificates
                    .into_iter()
                    .map(|(hostname, c)| model::ServerCertificate {
                        hostname,
                        cert_chain: c.cert_chain,
                        private_key: c.private_key,
                    })
                    .collect(),
            }),
        ),
    };
    model::Listener {
        name,
        address: SocketAddr::from(([0, 0, 0, 0], u16::try_from(port).unwrap_or(0))),
        protocol,
        tls,
        routes,
        request_headers_timeout: model::DEFAULT_REQUEST_HEADERS_TIMEOUT,
    }
}

/// A route's rules, each backend resolved: a Service port becomes its cluster, an
/// invalid one a cluster name no config defines, which the dataplane answers 500.
fn rules_of(
    route: &HttpRoute,
    view: &View<'_>,
    wanted: &mut Vec<ServicePort>,
) -> Vec<model::RouteRule> {
    let mut out = Vec::new();
    for rule in route.spec.rules.iter().flatten() {
        let mut weighted = Vec::new();
        for b in rule.backend_refs.iter().flatten() {
            let weight = u32::try_from(b.weight.unwrap_or(1)).unwrap_or(0);
            let cluster = match backends::resolve(route, b, view.services, view.grants) {
                Ok(sp) => {
                    let name = cluster_name(&sp, view.cluster_domain);
                    wanted.push(sp);
                    name
                }
                Err(why) => format!(
                    "invalid|{}|{}/{}",
                    why.reason,
                    b.namespace
                        .clone()
                        .unwrap_or_else(|| route.namespace().unwrap_or_default()),
                    b.name
                ),
            };
            weighted.push(model::WeightedBackend {
                cluster,
                weight,
                filters: gamma::backend_filters(b, &route.name_any()),
            });
        }
        let mut converted = gamma::convert(&route.name_any(), rule, weighted);
        for (b, fraction) in backends::mirrors(rule) {
            let cluster = match backends::resolve(route, &b, view.services, view.grants) {
                Ok(sp) => {
                    let name = cluster_name(&sp, view.cluster_domain);
                    wanted.push(sp);
                    name
                }
                // Names no cluster: the dataplane mirrors nothing.
                Err(why) => format!("invalid|{}|{}", why.reason, b.name),
            };
            converted
                .filters
                .push(model::Filter::RequestMirror { cluster, fraction });
        }
        out.push(converted);
    }
    out
}
