//! Which listeners of a Gateway an HTTPRoute's parentRef attaches to. Gateway API's
//! order of checks: the parentRef must name a listener (`sectionName`, `port`) that
//! exists (`NoMatchingParent`), that listener must take HTTPRoutes from the route's
//! namespace (`NotAllowedByListeners`), and their hostnames must intersect
//! (`NoMatchingListenerHostname`).

use std::collections::BTreeMap;

use gateway_api::apis::experimental::httproutes::{HttpRoute, HttpRouteParentRefs};
use gateway_api::apis::standard::gateways::Gateway;
use kube::ResourceExt;
use waypoint_mesh::binding::selector_matches;

use super::listeners::{From, Verdict};
use super::{GATEWAY_GROUP, Refusal, hostnames};

/// Namespace name → its labels.
pub type NamespaceLabels = BTreeMap<String, BTreeMap<String, String>>;

/// One parentRef of a route that names this Gateway, and what became of it.
#[derive(Clone, Debug)]
pub struct Parent<'r> {
    pub route: &'r HttpRoute,
    pub parent_ref: &'r HttpRouteParentRefs,
    /// The indexes (into the Gateway's listeners) it attaches to.
    pub outcome: Result<Vec<usize>, Refusal>,
}

/// Whether `p`, on a route in `route_ns`, names Gateway `gw`.
pub fn names(p: &HttpRouteParentRefs, route_ns: &str, gw: &Gateway) -> bool {
    p.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
        && p.kind.as_deref().unwrap_or("Gateway") == "Gateway"
        && p.name == gw.name_any()
        && p.namespace.as_deref().unwrap_or(route_ns) == gw.namespace().as_deref().unwrap_or("")
}

/// Every parentRef of `routes` that names `gw`, judged.
pub fn parents<'r>(
    gw: &Gateway,
    listeners: &[Verdict],
    routes: &'r [HttpRoute],
    namespaces: &NamespaceLabels,
) -> Vec<Parent<'r>> {
    let mut out = Vec::new();
    for route in routes {
        let route_ns = route.namespace().unwrap_or_default();
        for p in route.spec.parent_refs.iter().flatten() {
            if names(p, &route_ns, gw) {
                out.push(Parent {
                    route,
                    parent_ref: p,
                    outcome: judge(gw, listeners, route, p, namespaces),
                });
            }
        }
    }
    out
}

fn judge(
    gw: &Gateway,
    listeners: &[Verdict],
    route: &HttpRoute,
    p: &HttpRouteParentRefs,
    namespaces: &NamespaceLabels,
) -> Result<Vec<usize>, Refusal> {
    let candidates: Vec<usize> = listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| p.section_name.as_deref().is_none_or(|s| s == l.name))
        .filter(|(_, l)| p.port.is_none_or(|port| port == l.port))
        .map(|(i, _)| i)
        .collect();
    if candidates.is_empty() {
        let what = match (&p.section_name, p.port) {
            (Some(s), Some(port)) => format!("no listener named {s:?} on port {port}"),
            (Some(s), None) => format!("no listener named {s:?}"),
            (None, Some(port)) => format!("no listener on port {port}"),
            (None, None) => "the Gateway has no listeners".to_owned(),
        };
        return Err(Refusal::new(
            "NoMatchingParent",
            format!("Gateway {}: {what}", gw.name_any()),
        ));
    }
    let route_ns = route.namespace().unwrap_or_default();
    let gw_ns = gw.namespace().unwrap_or_default();
    let no_labels = BTreeMap::new();
    let labels = namespaces.get(&route_ns).unwrap_or(&no_labels);
    let allowed: Vec<usize> = candidates
        .into_iter()
        .filter(|&i| listeners[i].usable())
        .filter(|&i| match &listeners[i].from {
            From::Same => route_ns == gw_ns,
            From::All => true,
            From::Selector(s) => s.as_ref().is_some_and(|s| selector_matches(s, labels)),
        })
        .collect();
    if allowed.is_empty() {
        return Err(Refusal::new(
            "NotAllowedByListeners",
            format!(
                "no listener of Gateway {}/{} takes HTTPRoutes from namespace {route_ns}",
                gw_ns,
                gw.name_any()
            ),
        ));
    }
    let route_hosts = route.spec.hostnames.clone().unwrap_or_default();
    let matching: Vec<usize> = allowed
        .into_iter()
        .filter(|&i| {
            !hostnames::intersect(listeners[i].hostname.as_deref(), &route_hosts).is_empty()
        })
        .collect();
    if matching.is_empty() {
        return Err(Refusal::new(
            "NoMatchingListenerHostname",
            format!(
                "none of the route's hostnames {route_hosts:?} matches a listener hostname of Gateway {}",
                gw.name_any()
            ),
        ));
    }
    Ok(matching)
}
