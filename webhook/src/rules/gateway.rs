//! Waypoint Gateways: give them the mesh listener and an explicit traffic type, and
//! refuse what istiod would accept and then silently fail on
//! (`shared/reference/waypoint-contract.md` §1.3, §7: #51294, #52916).

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation};
use serde_json::{Value, json};
use waypoint_mesh::names::{MANAGED_LABEL, MESH_PORT, NO_WAYPOINT, WAYPOINT_FOR_LABEL};

use super::{Context, Object, Operation, show};
use crate::Verdict;

/// The only listener a waypoint has, as users write it.
pub const MESH_LISTENER: &str = "{name: mesh, port: 15008, protocol: HBONE}";
const HBONE: &str = "HBONE";

fn is_waypoint(obj: &Object<'_>, cx: &Context<'_>) -> bool {
    obj.value
        .pointer("/spec/gatewayClassName")
        .and_then(Value::as_str)
        .is_some_and(|c| cx.settings.is_waypoint_class(c))
}

/// A JSON-patch `add` at the path made of `tokens` (unescaped).
fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(tokens.iter().copied()),
        value,
    })
}

fn listeners<'v>(obj: &Object<'v>) -> Option<&'v Vec<Value>> {
    obj.value
        .pointer("/spec/listeners")
        .and_then(Value::as_array)
}

fn field<'v>(listener: &'v Value, key: &str) -> Option<&'v Value> {
    listener.get(key)
}

/// Adds the mesh listener when there is none to fix, and makes the default
/// `istio.io/waypoint-for=service` explicit. Idempotent: a second pass adds nothing.
pub fn mutate(obj: &Object<'_>, cx: &Context<'_>) -> Verdict {
    let mut v = Verdict::default();
    if !is_waypoint(obj, cx) {
        return v;
    }
    let who = obj.display();
    let mesh = json!({"name": "mesh", "port": MESH_PORT, "protocol": HBONE});
    match obj.value.pointer("/spec/listeners") {
        None | Some(Value::Null) => {
            v.patch.push(add(&["spec", "listeners"], json!([mesh])));
            v.warn(format!(
                "{who}: added the listener {MESH_LISTENER}, which every waypoint needs"
            ));
        }
        Some(Value::Array(ls)) => {
            let named_mesh = ls
                .iter()
                .any(|l| field(l, "name").and_then(Value::as_str) == Some("mesh"));
            let has_hbone = ls
                .iter()
                .any(|l| field(l, "protocol").and_then(Value::as_str) == Some(HBONE));
            // A listener already named `mesh` is one to fix, not to duplicate: the
            // validating rule says what is wrong with it.
            if !has_hbone && !named_mesh {
                v.patch.push(add(&["spec", "listeners", "-"], mesh));
                v.warn(format!(
                    "{who}: added the listener {MESH_LISTENER}, which every waypoint needs"
                ));
            }
        }
        Some(_) => {}
    }
    match obj.value.pointer("/metadata/labels") {
        Some(Value::Object(labels)) if labels.contains_key(WAYPOINT_FOR_LABEL) => {}
        Some(Value::Object(_)) => {
            v.patch.push(add(
                &["metadata", "labels", WAYPOINT_FOR_LABEL],
                json!("service"),
            ));
            v.warn(format!(
                "{who}: set label {WAYPOINT_FOR_LABEL}=service, the default, to make it explicit"
            ));
        }
        _ => {
            v.patch.push(add(
                &["metadata", "labels"],
                json!({ WAYPOINT_FOR_LABEL: "service" }),
            ));
            v.warn(format!(
                "{who}: set label {WAYPOINT_FOR_LABEL}=service, the default, to make it explicit"
            ));
        }
    }
    v
}

pub fn review(obj: &Object<'_>, cx: &Context<'_>) -> Verdict {
    let mut v = Verdict::default();
    if !is_waypoint(obj, cx) {
        return v;
    }
    let who = obj.display();
    if obj.name == NO_WAYPOINT {
        v.deny(format!(
            "{who}: metadata.name: \"none\" is reserved: istio.io/use-waypoint=none means \"no waypoint\", \
             so no object could ever bind to this Gateway; choose another name"
        ));
    }
    check_listeners(obj, &who, &mut v);
    check_waypoint_for(obj, &who, &mut v);
    check_collisions(obj, cx, &who, &mut v);
    check_parameters(obj, cx, &who, &mut v);
    v
}

fn check_listeners(obj: &Object<'_>, who: &str, v: &mut Verdict) {
    let expected = format!("waypoint Gateways need exactly one listener {MESH_LISTENER}");
    let ls = listeners(obj).map(Vec::as_slice).unwrap_or_default();
    if ls.is_empty() {
        v.deny(format!("{who}: spec.listeners: {expected}; got none"));
        return;
    }
    let mut bad = 0;
    for (i, l) in ls.iter().enumerate() {
        let port = field(l, "port");
        let protocol = field(l, "protocol");
        let port_ok = port.and_then(Value::as_i64) == Some(i64::from(MESH_PORT));
        let protocol_ok = protocol.and_then(Value::as_str) == Some(HBONE);
        if !(port_ok && protocol_ok) {
            bad += 1;
            let mut msg = format!(
                "{who}: spec.listeners[{i}]: {expected}; got port {} protocol {}",
                show(port),
                protocol
                    .and_then(Value::as_str)
                    .map_or_else(|| show(protocol), str::to_owned),
            );
            if protocol
                .and_then(Value::as_str)
                .is_some_and(|p| p != HBONE && p.eq_ignore_ascii_case(HBONE))
            {
                msg.push_str(" (hint: protocol names are case-sensitive; use \"HBONE\")");
            } else if ls.len() > 1 {
                msg.push_str(" (hint: a waypoint serves only the mesh listener; remove this one)");
            }
            v.deny(msg);
        }
        check_allowed_routes(l, i, who, v);
    }
    if bad == 0 && ls.len() > 1 {
        v.deny(format!(
            "{who}: spec.listeners: {expected}; got {} listeners",
            ls.len()
        ));
    }
}

/// `allowedRoutes` decides which namespaces may bind (#52916, #57661: a selector that
/// silently matched nothing). Catch the shapes that can never match.
fn check_allowed_routes(listener: &Value, i: usize, who: &str, v: &mut Verdict) {
    let Some(ns) = listener.pointer("/allowedRoutes/namespaces") else {
        return;
    };
    let path = format!("spec.listeners[{i}].allowedRoutes.namespaces");
    let from = ns.get("from").and_then(Value::as_str);
    let selector = ns.get("selector").filter(|s| !s.is_null());
    if from == Some("Selector") && selector.is_none() {
        v.deny(format!(
            "{who}: {path}.selector: required when from is Selector; without it no namespace may bind \
             to this waypoint (hint: add matchLabels, or use from: All)"
        ));
    }
    let exprs = selector
        .and_then(|s| s.get("matchExpressions"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for (j, e) in exprs.iter().enumerate() {
        let op = e
            .get("operator")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let values = e
            .get("values")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let at = format!("{path}.selector.matchExpressions[{j}]");
        match op {
            "In" | "NotIn" if values == 0 => v.deny(format!(
                "{who}: {at}.values: operator {op} needs at least one value; got none"
            )),
            "Exists" | "DoesNotExist" if values > 0 => v.deny(format!(
                "{who}: {at}.values: operator {op} takes no values; got {values}"
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => v.deny(format!(
                "{who}: {at}.operator: must be one of In, NotIn, Exists, DoesNotExist; got {other:?} \
                 (operators are case-sensitive)"
            )),
        }
    }
}

fn check_waypoint_for(obj: &Object<'_>, who: &str, v: &mut Verdict) {
    let labels = obj.labels();
    if let Some(value) = labels.get(WAYPOINT_FOR_LABEL)
        && !waypoint_mesh::binding::WAYPOINT_FOR_VALUES.contains(&value.as_str())
    {
        v.deny(format!(
            "{who}: metadata.labels[\"{WAYPOINT_FOR_LABEL}\"]: must be one of service, workload, all, none; \
             got {value:?}"
        ));
    }
}

/// Istio skips a same-name object it does not manage and still reports "applied"
/// (#51294): the waypoint then never gets its Service or Deployment.
fn check_collisions(obj: &Object<'_>, cx: &Context<'_>, who: &str, v: &mut Verdict) {
    let managed = |labels: &crate::view::Labels| {
        labels.get(MANAGED_LABEL) == Some(&cx.settings.managed_value)
    };
    let existing = [
        (
            "Service",
            cx.view
                .service(obj.namespace, obj.name)
                .map(|s| s.metadata.labels.unwrap_or_default()),
        ),
        (
            "Deployment",
            cx.view.deployment_labels(obj.namespace, obj.name),
        ),
    ];
    for (kind, labels) in existing {
        let Some(labels) = labels else { continue };
        if managed(&labels) {
            continue;
        }
        let owner = labels.get(MANAGED_LABEL).map_or_else(
            || format!("it lacks the label {MANAGED_LABEL}"),
            |o| format!("it is managed by {o:?}"),
        );
        let msg = format!(
            "{who}: metadata.name: {kind} {}/{} already exists and is not ours ({owner}), so this waypoint \
             would never get its {kind}; choose another Gateway name, or delete or rename that {kind}",
            obj.namespace, obj.name
        );
        // An existing waypoint that meets a newcomer must stay editable.
        if obj.operation == Operation::Create {
            v.deny(msg);
        } else {
            v.warn(msg);
        }
    }
}

fn check_parameters(obj: &Object<'_>, cx: &Context<'_>, who: &str, v: &mut Verdict) {
    let Some(r) = obj.value.pointer("/spec/infrastructure/parametersRef") else {
        return;
    };
    let group = r.get("group").and_then(Value::as_str).unwrap_or_default();
    let kind = r.get("kind").and_then(Value::as_str).unwrap_or_default();
    let name = r.get("name").and_then(Value::as_str).unwrap_or_default();
    if !(group.is_empty() || group == "core") || kind != "ConfigMap" {
        v.deny(format!(
            "{who}: spec.infrastructure.parametersRef: waypoint parameters must be a ConfigMap in namespace \
             {} (group: \"\", kind: ConfigMap); got group {group:?} kind {kind:?}",
            obj.namespace
        ));
    } else if !cx.view.config_map_exists(obj.namespace, name) {
        v.warn(format!(
            "{who}: spec.infrastructure.parametersRef: ConfigMap {}/{name} does not exist yet",
            obj.namespace
        ));
    }
}
