//! Status of an ingress Gateway, its listeners, and the route parents that name it,
//! with the reasons Gateway API defines (and its conformance suite checks).

use gateway_api::apis::experimental::httproutes::{
    HttpRouteParentRefs, HttpRouteStatusParents, HttpRouteStatusParentsParentRef,
};
use gateway_api::apis::standard::gateways::{
    Gateway, GatewayStatus, GatewayStatusAddresses, GatewayStatusListeners,
    GatewayStatusListenersSupportedKinds,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::listeners::Verdict;
use super::{GATEWAY_GROUP, Refusal};
use crate::config_server::Applied;
use crate::names::INGRESS_CONTROLLER_NAME;
use crate::status::{Observed, condition};

/// Gateway API's `supportedFeatures` for the class: only what the upstream
/// conformance suite passes here (`hack/conformance` runs exactly this list).
pub const SUPPORTED_FEATURES: &[&str] = &[
    "Gateway",
    "GatewayAddressEmpty",
    "GatewayHTTPListenerIsolation",
    "GatewayHTTPSListenerDetectMisdirectedRequests",
    "GatewayInfrastructure",
    "GatewayPort8080",
    "HTTPRoute",
    "HTTPRoute303RedirectStatusCode",
    "HTTPRoute307RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode",
    "HTTPRouteBackendProtocolH2C",
    "HTTPRouteBackendProtocolWebSocket",
    "HTTPRouteBackendRequestHeaderModification",
    "HTTPRouteBackendTimeout",
    "HTTPRouteDestinationPortMatching",
    "HTTPRouteHostRewrite",
    "HTTPRouteMethodMatching",
    "HTTPRouteNamedRouteRule",
    "HTTPRouteParentRefPort",
    "HTTPRoutePathRedirect",
    "HTTPRoutePathRewrite",
    "HTTPRoutePortRedirect",
    "HTTPRouteQueryParamMatching",
    "HTTPRouteRequestMirror",
    "HTTPRouteRequestMultipleMirrors",
    "HTTPRouteRequestPercentageMirror",
    "HTTPRouteRequestTimeout",
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteRetry",
    "HTTPRouteRetryBackendTimeout",
    "HTTPRouteRetryConnectionError",
    "HTTPRouteSchemeRedirect",
    "ReferenceGrant",
];

pub fn gateway_status(
    gw: &Gateway,
    listeners: &[Verdict],
    attached: &[i32],
    observed: &Observed,
    now: &Time,
) -> GatewayStatus {
    let previous = gw.status.as_ref();
    let generation = gw.metadata.generation;
    let old = previous.and_then(|s| s.conditions.as_deref());
    let cond = |t: &str, ok, reason: &str, msg: String| {
        condition(old, t, ok, reason, msg, generation, now)
    };

    let valid = listeners
        .iter()
        .filter(|l| l.accepted.is_ok() && l.conflicted.is_none())
        .count();
    let accepted = if let Some(why) = &observed.invalid_parameters {
        cond("Accepted", false, "InvalidParameters", why.clone())
    } else if valid == 0 {
        cond(
            "Accepted",
            false,
            "ListenersNotValid",
            "No listener is valid; see the listeners' conditions".to_owned(),
        )
    } else if valid < listeners.len() {
        cond(
            "Accepted",
            true,
            "ListenersNotValid",
            format!(
                "{} of {} listeners are invalid; see their conditions",
                listeners.len() - valid,
                listeners.len()
            ),
        )
    } else {
        cond("Accepted", true, "Accepted", "Resource accepted".to_owned())
    };
    let deployed = observed.conflict.is_none()
        && observed.invalid_parameters.is_none()
        && observed.ready_replicas > 0;
    let programmed_ok =
        deployed && valid > 0 && matches!(observed.config, Applied::Unknown | Applied::Yes);
    let programmed = programmed(gw, observed, valid, deployed, &cond);
    // Addresses appear once the dataplane is ready and stay (Istio's rule).
    let addresses = if deployed {
        Some(
            observed
                .cluster_ips
                .iter()
                .filter(|ip| !ip.is_empty() && *ip != "None")
                .map(|ip| GatewayStatusAddresses {
                    r#type: Some("IPAddress".to_owned()),
                    value: ip.clone(),
                })
                .collect(),
        )
    } else {
        previous.and_then(|s| s.addresses.clone())
    };
    let listener_status = listeners
        .iter()
        .zip(attached)
        .map(|(l, &n)| listener(gw, l, n, programmed_ok, now))
        .collect();
    GatewayStatus {
        addresses,
        attached_listener_sets: previous.and_then(|s| s.attached_listener_sets),
        conditions: Some(vec![accepted, programmed]),
        listeners: Some(listener_status),
    }
}

/// The Gateway's `Programmed`: deployed, a pod ready, and running the current config.
fn programmed(
    gw: &Gateway,
    observed: &Observed,
    valid: usize,
    deployed: bool,
    cond: &dyn Fn(&str, bool, &str, String) -> Condition,
) -> Condition {
    if let Some(what) = &observed.conflict {
        cond(
            "Programmed",
            false,
            "Invalid",
            format!(
                "{what} already exists and is not managed by waypoint-operator; delete or rename it, or rename the Gateway"
            ),
        )
    } else if observed.invalid_parameters.is_some() || valid == 0 {
        cond(
            "Programmed",
            false,
            "Invalid",
            "Not deployed: the Gateway is not accepted".to_owned(),
        )
    } else if !deployed {
        cond(
            "Programmed",
            false,
            "Pending",
            format!(
                "Waiting for a ready dataplane pod (deployment {}: {} ready)",
                gw.metadata.name.as_deref().unwrap_or_default(),
                observed.ready_replicas
            ),
        )
    } else {
        match &observed.config {
            Applied::Unknown | Applied::Yes => cond(
                "Programmed",
                true,
                "Programmed",
                "Resource programmed".to_owned(),
            ),
            Applied::Pending(why) => cond("Programmed", false, "Pending", why.clone()),
            Applied::Rejected(why) => cond("Programmed", false, "Invalid", why.clone()),
        }
    }
}

fn listener(
    gw: &Gateway,
    l: &Verdict,
    attached: i32,
    gateway_programmed: bool,
    now: &Time,
) -> GatewayStatusListeners {
    let old = gw
        .status
        .as_ref()
        .and_then(|s| s.listeners.as_ref())
        .and_then(|ls| ls.iter().find(|o| o.name == l.name))
        .map(|o| o.conditions.as_slice());
    let lc = |t: &str, ok, reason: &str, msg: String| {
        condition(old, t, ok, reason, msg, gw.metadata.generation, now)
    };
    let ok = "No errors found".to_owned();
    let accepted = match &l.accepted {
        Ok(()) => lc("Accepted", true, "Accepted", ok.clone()),
        Err(Refusal { reason, message }) => lc("Accepted", false, reason, message.clone()),
    };
    let resolved = match &l.resolved_refs {
        Ok(()) => lc("ResolvedRefs", true, "ResolvedRefs", ok.clone()),
        Err(Refusal { reason, message }) => lc("ResolvedRefs", false, reason, message.clone()),
    };
    let conflicted = match &l.conflicted {
        None => lc("Conflicted", false, "NoConflicts", ok.clone()),
        Some(Refusal { reason, message }) => lc("Conflicted", true, reason, message.clone()),
    };
    let programmed = if l.accepted.is_err() || l.conflicted.is_some() || l.resolved_refs.is_err() {
        lc(
            "Programmed",
            false,
            "Invalid",
            "The listener is invalid; see its other conditions".to_owned(),
        )
    } else if gateway_programmed {
        lc("Programmed", true, "Programmed", ok)
    } else {
        lc(
            "Programmed",
            false,
            "Pending",
            "Waiting for the dataplane (see the Gateway's Programmed condition)".to_owned(),
        )
    };
    GatewayStatusListeners {
        name: l.name.clone(),
        attached_routes: attached,
        conditions: vec![accepted, programmed, resolved, conflicted],
        supported_kinds: Some(if l.takes_http_routes && l.accepted.is_ok() {
            vec![GatewayStatusListenersSupportedKinds {
                group: Some(GATEWAY_GROUP.to_owned()),
                kind: "HTTPRoute".to_owned(),
            }]
        } else {
            Vec::new()
        }),
    }
}

/// This controller's entry for one parentRef of a route.
pub fn route_parent(
    parent_ref: &HttpRouteParentRefs,
    accepted: &Result<Vec<usize>, Refusal>,
    resolved_refs: &Result<(), Refusal>,
    generation: Option<i64>,
    previous: Option<&[Condition]>,
    now: &Time,
) -> HttpRouteStatusParents {
    let c = |t: &str, ok, reason: &str, msg: String| {
        condition(previous, t, ok, reason, msg, generation, now)
    };
    let accepted = match accepted {
        Ok(_) => c("Accepted", true, "Accepted", "Route was valid".to_owned()),
        Err(Refusal { reason, message }) => c("Accepted", false, reason, message.clone()),
    };
    let resolved = match resolved_refs {
        Ok(()) => c(
            "ResolvedRefs",
            true,
            "ResolvedRefs",
            "All references resolved".to_owned(),
        ),
        Err(Refusal { reason, message }) => c("ResolvedRefs", false, reason, message.clone()),
    };
    HttpRouteStatusParents {
        conditions: vec![accepted, resolved],
        controller_name: INGRESS_CONTROLLER_NAME.to_owned(),
        parent_ref: same_ref(parent_ref),
    }
}

/// The status copy of a spec parentRef.
pub fn same_ref(p: &HttpRouteParentRefs) -> HttpRouteStatusParentsParentRef {
    HttpRouteStatusParentsParentRef {
        group: p.group.clone(),
        kind: p.kind.clone(),
        name: p.name.clone(),
        namespace: p.namespace.clone(),
        port: p.port,
        section_name: p.section_name.clone(),
    }
}
