//! A rule's backendRefs: a core Service port, in another namespace only with a
//! ReferenceGrant. Anything else is an invalid backend: the route says why in
//! `ResolvedRefs`, and requests that would go there get 500.

use gateway_api::apis::experimental::httproutes::{HttpRoute, HttpRouteRulesBackendRefs};
use gateway_api::apis::standard::referencegrants::ReferenceGrant;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;

use super::{GATEWAY_GROUP, Refusal, grants};

/// A resolved backend: a Service port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServicePort {
    pub namespace: String,
    pub name: String,
    pub port: i32,
}

pub fn resolve(
    route: &HttpRoute,
    b: &HttpRouteRulesBackendRefs,
    services: &[Service],
    grants: &[ReferenceGrant],
) -> Result<ServicePort, Refusal> {
    let route_ns = route.namespace().unwrap_or_default();
    let (group, kind) = (
        b.group.as_deref().unwrap_or(""),
        b.kind.as_deref().unwrap_or("Service"),
    );
    if !group.is_empty() || kind != "Service" {
        return Err(Refusal::new(
            "InvalidKind",
            format!(
                "backendRef {:?} has kind {kind} in group {:?}; only core Services are supported",
                b.name, group
            ),
        ));
    }
    let ns = b.namespace.clone().unwrap_or_else(|| route_ns.clone());
    let permitted = grants::permitted(
        grants,
        grants::From {
            group: GATEWAY_GROUP,
            kind: "HTTPRoute",
            namespace: &route_ns,
        },
        grants::To {
            group: "",
            kind: "Service",
            namespace: &ns,
            name: &b.name,
        },
    );
    if !permitted {
        return Err(Refusal::new(
            "RefNotPermitted",
            format!(
                "Service {ns}/{} is in another namespace and no ReferenceGrant there allows HTTPRoutes from {route_ns}",
                b.name
            ),
        ));
    }
    let Some(svc) = services
        .iter()
        .find(|s| s.name_any() == b.name && s.namespace().as_deref() == Some(ns.as_str()))
    else {
        return Err(Refusal::new(
            "BackendNotFound",
            format!("Service {ns}/{} does not exist", b.name),
        ));
    };
    let Some(port) = b.port else {
        return Err(Refusal::new(
            "BackendNotFound",
            format!("backendRef to Service {ns}/{} needs a port", b.name),
        ));
    };
    let has_port = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .is_some_and(|ports| ports.iter().any(|p| p.port == port));
    if !has_port {
        return Err(Refusal::new(
            "BackendNotFound",
            format!("Service {ns}/{} has no port {port}", b.name),
        ));
    }
    Ok(ServicePort {
        namespace: ns,
        name: b.name.clone(),
        port,
    })
}

/// The route's `ResolvedRefs`: every backendRef of every rule resolves, or the first
/// reason one does not.
pub fn resolved_refs(
    route: &HttpRoute,
    services: &[Service],
    grants: &[ReferenceGrant],
) -> Result<(), Refusal> {
    for rule in route.spec.rules.iter().flatten() {
        for b in rule.backend_refs.iter().flatten() {
            resolve(route, b, services, grants)?;
        }
    }
    Ok(())
}

/// A rule's RequestMirror filters: the mirror's backendRef (as a backendRef, so it
/// resolves like one) and the share of requests mirrored.
pub fn mirrors(
    rule: &gateway_api::apis::experimental::httproutes::HttpRouteRules,
) -> Vec<(HttpRouteRulesBackendRefs, Option<waypoint_config::Fraction>)> {
    rule.filters
        .iter()
        .flatten()
        .filter_map(|f| f.request_mirror.as_ref())
        .filter_map(|m| {
            let backend = serde_json::to_value(&m.backend_ref)
                .ok()
                .and_then(|v| serde_json::from_value(v).ok())?;
            let fraction = match (&m.fraction, m.percent) {
                (Some(f), _) => Some(waypoint_config::Fraction {
                    numerator: u32::try_from(f.numerator).unwrap_or(0),
                    denominator: f
                        .denominator
                        .and_then(|d| u32::try_from(d).ok())
                        .unwrap_or(100),
                }),
                (None, Some(p)) => Some(waypoint_config::Fraction {
                    numerator: u32::try_from(p).unwrap_or(0),
                    denominator: 100,
                }),
                (None, None) => None,
            };
            Some((backend, fraction))
        })
        .collect()
}
