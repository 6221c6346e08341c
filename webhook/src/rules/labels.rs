//! `istio.io/use-waypoint` labels on Namespaces, Services and Pods. Upstream, a typo
//! or a mismatch makes traffic bypass the waypoint without a word (#58432, #53637,
//! #56741); here the label is checked against the Gateway it names.

use waypoint_mesh::binding::{self, TrafficType, WaypointRef};
use waypoint_mesh::names::{
    INGRESS_USE_WAYPOINT, NO_WAYPOINT, USE_WAYPOINT, USE_WAYPOINT_NAMESPACE, WAYPOINT_FOR_LABEL,
};

use super::{Context, Object, is_dns1123_label};
use crate::Verdict;

/// The `istio.io/` label keys Istio reads on these objects and that we review.
const KNOWN: [&str; 4] = [
    USE_WAYPOINT,
    USE_WAYPOINT_NAMESPACE,
    WAYPOINT_FOR_LABEL,
    INGRESS_USE_WAYPOINT,
];
/// `istio.io/` keys of other Istio features, never typos of ours.
const OTHER_ISTIO: [&str; 3] = ["istio.io/dataplane-mode", "istio.io/rev", "istio.io/tag"];

pub fn review(obj: &Object<'_>, cx: &Context<'_>) -> Verdict {
    let mut v = Verdict::default();
    let who = obj.display();
    let labels = obj.labels();
    for key in labels.keys() {
        if let Some(meant) = misspelling_of(key) {
            v.deny(format!(
                "{who}: metadata.labels: unknown label {key:?}; did you mean {meant:?}? \
                 Istio ignores unknown labels, so traffic would bypass the waypoint"
            ));
        }
    }
    let Some(name) = labels.get(USE_WAYPOINT) else {
        if labels.contains_key(USE_WAYPOINT_NAMESPACE) {
            v.deny(format!(
                "{who}: metadata.labels[\"{USE_WAYPOINT_NAMESPACE}\"]: set without {USE_WAYPOINT}, so it \
                 selects no waypoint; add {USE_WAYPOINT}=<Gateway name>"
            ));
        }
        return v;
    };
    let at = format!("{who}: metadata.labels[\"{USE_WAYPOINT}\"]");
    if name == NO_WAYPOINT {
        return v;
    }
    if let Some((ns, gw)) = name.split_once('/') {
        v.deny(format!(
            "{at}: {name:?} is not a Gateway name; to use Gateway {gw:?} of namespace {ns:?}, set \
             {USE_WAYPOINT}={gw} and {USE_WAYPOINT_NAMESPACE}={ns}"
        ));
        return v;
    }
    if !is_dns1123_label(name) {
        v.deny(format!(
            "{at}: {name:?} is neither a Gateway name (a DNS-1123 label: lower-case letters, digits and '-', \
             at most 63 characters) nor \"none\""
        ));
        return v;
    }
    let own_ns = if obj.kind == "Namespace" {
        obj.name
    } else {
        obj.namespace
    };
    let target_ns = labels
        .get(USE_WAYPOINT_NAMESPACE)
        .map_or(own_ns, String::as_str);
    if !is_dns1123_label(target_ns) {
        v.deny(format!(
            "{who}: metadata.labels[\"{USE_WAYPOINT_NAMESPACE}\"]: {target_ns:?} is not a namespace name \
             (a DNS-1123 label)"
        ));
        return v;
    }
    let target = WaypointRef {
        namespace: target_ns.to_owned(),
        name: name.clone(),
    };
    check_target(obj, cx, own_ns, &target, &at, &mut v);
    v
}

/// The label names a Gateway: it must exist (or be coming), be a waypoint, carry
/// this kind of traffic and admit this namespace.
fn check_target(
    obj: &Object<'_>,
    cx: &Context<'_>,
    own_ns: &str,
    target: &WaypointRef,
    at: &str,
    v: &mut Verdict,
) {
    let Some(gw) = cx.view.gateway(&target.namespace, &target.name) else {
        let msg = format!(
            "{at}: Gateway {target} does not exist (yet); until it does, traffic to this {} bypasses the \
             waypoint and its L7 policy (check the name for a typo)",
            obj.kind
        );
        if cx.settings.strict {
            v.deny(msg);
        } else {
            v.warn(msg);
        }
        return;
    };
    let class = &gw.spec.gateway_class_name;
    if !cx.settings.is_waypoint_class(class) {
        v.deny(format!(
            "{at}: Gateway {target} has gatewayClassName {class:?}, which is not a waypoint class ({}); \
             traffic would bypass L7 policy",
            cx.settings.waypoint_classes.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
        return;
    }
    let waypoint_for = binding::waypoint_for(&gw);
    let needs: &[TrafficType] = match obj.kind {
        "Service" => &[TrafficType::Service],
        "Pod" => &[TrafficType::Workload],
        // A namespace's label binds both its Services and its pods; any type serves.
        _ => &[],
    };
    let unserved = needs.iter().find(|t| !binding::serves(waypoint_for, **t));
    if let Some(t) = unserved {
        let (addressed, instead) = match t {
            TrafficType::Service => ("a Service", "service or all"),
            TrafficType::Workload => ("a pod IP", "workload or all"),
        };
        v.deny(format!(
            "{at}: Gateway {target} has {WAYPOINT_FOR_LABEL}={waypoint_for}, which does not carry traffic \
             addressed to {addressed}; label the Gateway {WAYPOINT_FOR_LABEL}={instead}"
        ));
    } else if waypoint_for == NO_WAYPOINT {
        v.deny(format!(
            "{at}: Gateway {target} has {WAYPOINT_FOR_LABEL}=none and carries no traffic; label the Gateway \
             {WAYPOINT_FOR_LABEL}=service, workload or all"
        ));
    }
    let ns_labels = if obj.kind == "Namespace" {
        obj.labels()
    } else {
        cx.view.namespace_labels(own_ns).unwrap_or_default()
    };
    if !binding::admits(&gw, own_ns, &ns_labels) {
        v.deny(format!(
            "{at}: Gateway {target} does not admit namespace {own_ns:?} \
             (spec.listeners[0].allowedRoutes.namespaces); on the Gateway set from: All, or from: Selector \
             with a selector matching this namespace"
        ));
    }
}

/// The known key an unknown `istio.io/` key was probably meant to be.
fn misspelling_of(key: &str) -> Option<&'static str> {
    let rest = key.strip_prefix("istio.io/")?;
    if KNOWN.contains(&key) || OTHER_ISTIO.contains(&key) {
        return None;
    }
    KNOWN
        .iter()
        .map(|k| (*k, edit_distance(rest, k.trim_start_matches("istio.io/"))))
        .filter(|(k, d)| *d <= 3 || (rest.contains("waypoint") && k.contains("use-waypoint")))
        .min_by_key(|(_, d)| *d)
        .map(|(k, _)| k)
}

/// Levenshtein distance, for "did you mean" hints on short label keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}
