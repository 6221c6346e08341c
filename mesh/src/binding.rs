//! How `istio.io/use-waypoint` resolves (`shared/reference/waypoint-contract.md` §3):
//! the object's own label beats its namespace's, `none` opts out, and the waypoint's
//! `istio.io/waypoint-for` must cover the kind of traffic, with no fallback.

use std::collections::BTreeMap;

use gateway_api::apis::standard::gateways::{
    Gateway, GatewayListenersAllowedRoutesNamespacesFrom,
    GatewayListenersAllowedRoutesNamespacesSelector,
};
use kube::ResourceExt;

use crate::names::{NO_WAYPOINT, USE_WAYPOINT, USE_WAYPOINT_NAMESPACE, WAYPOINT_FOR_LABEL};

/// The Gateway an object asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaypointRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for WaypointRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What a label asks for, before looking at any Gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// No `istio.io/use-waypoint` label on the object (the namespace's may apply).
    Unset,
    /// `istio.io/use-waypoint: none`.
    OptOut,
    Waypoint(WaypointRef),
}

/// The request one set of labels makes; `namespace` is where those labels live.
pub fn request_of(labels: &BTreeMap<String, String>, namespace: &str) -> Request {
    match labels.get(USE_WAYPOINT).map(String::as_str) {
        None => Request::Unset,
        Some(NO_WAYPOINT) => Request::OptOut,
        Some(name) => Request::Waypoint(WaypointRef {
            namespace: labels
                .get(USE_WAYPOINT_NAMESPACE)
                .cloned()
                .unwrap_or_else(|| namespace.to_owned()),
            name: name.to_owned(),
        }),
    }
}

/// The waypoint an object in `namespace` binds to: its own label first, then its
/// namespace's. `None` when neither asks, or the nearest asks for `none`.
pub fn resolve(
    object_labels: &BTreeMap<String, String>,
    namespace: &str,
    namespace_labels: Option<&BTreeMap<String, String>>,
) -> Option<WaypointRef> {
    let own = request_of(object_labels, namespace);
    let effective = match own {
        Request::Unset => namespace_labels.map_or(Request::Unset, |l| request_of(l, namespace)),
        other => other,
    };
    match effective {
        Request::Waypoint(w) => Some(w),
        Request::Unset | Request::OptOut => None,
    }
}

/// The kind of traffic a binding carries, matched against `istio.io/waypoint-for`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficType {
    /// Traffic addressed to a Service VIP.
    Service,
    /// Traffic addressed to a pod IP.
    Workload,
}

impl TrafficType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::Workload => "workload",
        }
    }
}

/// The values `istio.io/waypoint-for` may take.
pub const WAYPOINT_FOR_VALUES: [&str; 4] = ["service", "workload", "all", "none"];

/// The Gateway's traffic type: its label, else `service` (Istio's default).
pub fn waypoint_for(gw: &Gateway) -> &str {
    gw.labels()
        .get(WAYPOINT_FOR_LABEL)
        .map_or("service", String::as_str)
}

/// Whether a waypoint of type `waypoint_for` carries `traffic`.
pub fn serves(waypoint_for: &str, traffic: TrafficType) -> bool {
    waypoint_for == "all" || waypoint_for == traffic.as_str()
}

/// Whether the mesh listener's `allowedRoutes` admits objects of `namespace` (whose
/// labels are `namespace_labels`). Unset means `Same`, as in Gateway API.
pub fn admits(gw: &Gateway, namespace: &str, namespace_labels: &BTreeMap<String, String>) -> bool {
    let namespaces = gw
        .spec
        .listeners
        .first()
        .and_then(|l| l.allowed_routes.as_ref())
        .and_then(|a| a.namespaces.as_ref());
    match namespaces.and_then(|n| n.from.as_ref()) {
        None | Some(GatewayListenersAllowedRoutesNamespacesFrom::Same) => {
            gw.namespace().as_deref() == Some(namespace)
        }
        Some(GatewayListenersAllowedRoutesNamespacesFrom::All) => true,
        Some(GatewayListenersAllowedRoutesNamespacesFrom::Selector) => namespaces
            .and_then(|n| n.selector.as_ref())
            .is_some_and(|s| selector_matches(s, namespace_labels)),
    }
}

/// Kubernetes label-selector semantics: every requirement must hold; an empty
/// selector matches everything; an unknown operator matches nothing.
pub fn selector_matches(
    selector: &GatewayListenersAllowedRoutesNamespacesSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    by_labels && by_expressions
}

#[cfg(test)]
mod tests;
