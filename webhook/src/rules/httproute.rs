//! HTTPRoutes attached to a Service (GAMMA) take effect only at a waypoint; a route
//! on a Service no waypoint serves is accepted upstream and never enforced.

use serde_json::Value;
use waypoint_mesh::binding;
use waypoint_mesh::names::USE_WAYPOINT;

use super::{Context, Object};
use crate::Verdict;

pub fn review(obj: &Object<'_>, cx: &Context<'_>) -> Verdict {
    let mut v = Verdict::default();
    let who = obj.display();
    let refs = obj
        .value
        .pointer("/spec/parentRefs")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (i, r) in refs.iter().enumerate() {
        let text = |k: &str| r.get(k).and_then(Value::as_str);
        let is_service =
            text("kind") == Some("Service") && matches!(text("group"), Some("" | "core"));
        let Some(name) = text("name").filter(|_| is_service) else {
            continue;
        };
        let ns = text("namespace").unwrap_or(obj.namespace);
        let at = format!("{who}: spec.parentRefs[{i}]");
        let Some(svc) = cx.view.service(ns, name) else {
            v.warn(format!("{at}: Service {ns}/{name} does not exist (yet)"));
            continue;
        };
        let ns_labels = cx.view.namespace_labels(ns);
        let labels = svc.metadata.labels.unwrap_or_default();
        if binding::request_of(&labels, ns) == binding::Request::OptOut {
            v.warn(format!(
                "{at}: Service {ns}/{name} opted out of waypoints ({USE_WAYPOINT}=none), so this route will \
                 not be enforced"
            ));
        } else if binding::resolve(&labels, ns, ns_labels.as_ref()).is_none() {
            v.warn(format!(
                "{at}: Service {ns}/{name} is not bound to a waypoint (no {USE_WAYPOINT} label on it or its \
                 namespace), so this route will not be enforced; label the Service or its namespace \
                 {USE_WAYPOINT}=<waypoint>"
            ));
        }
    }
    v
}
