//! The binding table: every Service, Pod and Namespace that asks for a waypoint,
//! the waypoint it asks for, and whether it is bound, with the reason. A typed view
//! computed from the watch caches whenever it is read, so it is never stale; the
//! same resolver writes the `istio.io/WaypointBound` conditions.

use std::collections::BTreeMap;

use gateway_api::apis::standard::gateways::Gateway;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde::Serialize;

use super::{Subject, condition_for};

/// One object that asks for a waypoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    pub kind: Subject,
    pub namespace: String,
    pub name: String,
    /// `namespace/name` of the Gateway it asks for.
    pub waypoint: String,
    pub bound: bool,
    /// The condition's reason (`WaypointAccepted`, `WaypointIsNotReady`, ...).
    pub reason: String,
    pub message: String,
}

/// What the table is computed from.
pub struct Objects<'a> {
    pub services: &'a [Service],
    /// Only Pods that carry `istio.io/use-waypoint`: a Pod binds by its own label.
    pub pods: &'a [Pod],
    pub namespaces: &'a [Namespace],
    pub gateways: &'a [Gateway],
}

/// Every object that asks for a waypoint, sorted by kind, namespace and name.
pub fn compute(objects: &Objects<'_>) -> Vec<Row> {
    let namespaces: BTreeMap<String, &Namespace> = objects
        .namespaces
        .iter()
        .map(|n| (n.name_any(), n))
        .collect();
    let gateways_in = |ns: &str| -> Vec<Gateway> {
        objects
            .gateways
            .iter()
            .filter(|g| g.namespace().as_deref() == Some(ns))
            .cloned()
            .collect()
    };
    let now = Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    let mut rows = Vec::new();
    let mut row = |kind, ns: &str, name: String, labels: &BTreeMap<String, String>| {
        let ns_labels = namespaces.get(ns).map(|n| n.labels());
        let Some(target) = waypoint_mesh::binding::resolve(labels, ns, ns_labels) else {
            return;
        };
        let gateways = gateways_in(&target.namespace);
        if let Some(c) = condition_for(kind, labels, ns, None, ns_labels, &gateways, None, &now) {
            rows.push(Row {
                kind,
                namespace: ns.to_owned(),
                name,
                waypoint: format!("{}/{}", target.namespace, target.name),
                bound: c.status == "True",
                reason: c.reason,
                message: c.message,
            });
        }
    };
    for svc in objects.services {
        row(
            Subject::Service,
            &svc.namespace().unwrap_or_default(),
            svc.name_any(),
            svc.labels(),
        );
    }
    for pod in objects.pods {
        row(
            Subject::Pod,
            &pod.namespace().unwrap_or_default(),
            pod.name_any(),
            pod.labels(),
        );
    }
    for ns in objects.namespaces {
        let name = ns.name_any();
        row(Subject::Namespace, &name.clone(), name, ns.labels());
    }
    rows.sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));
    rows
}

/// The rows bound to waypoint `namespace/name`.
pub fn bound_to<'a>(rows: &'a [Row], namespace: &str, name: &str) -> Vec<&'a Row> {
    let id = format!("{namespace}/{name}");
    rows.iter()
        .filter(|r| r.bound && r.waypoint == id)
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use gateway_api::apis::standard::gateways::{GatewayStatus, GatewayStatusAddresses};

    use super::*;

    fn labelled<K: kube::Resource<DynamicType = ()> + Default>(
        ns: &str,
        name: &str,
        labels: &[(&str, &str)],
    ) -> K {
        let mut k = K::default();
        *k.meta_mut() = crate::fixtures::meta(ns, name, labels);
        k
    }

    fn ready() -> Gateway {
        let mut gw = crate::fixtures::seed_gateway(&[]);
        gw.status = Some(GatewayStatus {
            addresses: Some(vec![GatewayStatusAddresses {
                r#type: Some("IPAddress".into()),
                value: "10.96.0.9".into(),
            }]),
            ..GatewayStatus::default()
        });
        gw
    }

    #[test]
    fn rows_for_every_kind_with_the_conditions_reasons() {
        let ready = ready();
        let services = [
            labelled::<Service>("httpbin", "in-ambient", &[]),
            labelled::<Service>("httpbin", "opted-out", &[("istio.io/use-waypoint", "none")]),
            labelled::<Service>(
                "httpbin",
                "typo",
                &[("istio.io/use-waypoint", "httpbin-waypiont")],
            ),
            labelled::<Service>("plain", "untouched", &[]),
        ];
        let pods = [labelled::<Pod>(
            "httpbin",
            "p",
            &[("istio.io/use-waypoint", "httpbin-waypoint")],
        )];
        let namespaces = [
            labelled::<Namespace>(
                "",
                "httpbin",
                &[("istio.io/use-waypoint", "httpbin-waypoint")],
            ),
            labelled::<Namespace>("", "plain", &[]),
        ];
        let rows = compute(&Objects {
            services: &services,
            pods: &pods,
            namespaces: &namespaces,
            gateways: std::slice::from_ref(&ready),
        });
        let summary: Vec<_> = rows
            .iter()
            .map(|r| {
                (
                    r.kind,
                    r.name.as_str(),
                    r.waypoint.as_str(),
                    r.bound,
                    r.reason.as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    Subject::Service,
                    "in-ambient",
                    "httpbin/httpbin-waypoint",
                    true,
                    "WaypointAccepted"
                ),
                (
                    Subject::Service,
                    "typo",
                    "httpbin/httpbin-waypiont",
                    false,
                    "WaypointIsNotReady"
                ),
                (
                    Subject::Pod,
                    "p",
                    "httpbin/httpbin-waypoint",
                    false,
                    "UnsupportedTrafficType"
                ),
                (
                    Subject::Namespace,
                    "httpbin",
                    "httpbin/httpbin-waypoint",
                    true,
                    "WaypointAccepted"
                ),
            ]
        );
        let bound: Vec<_> = bound_to(&rows, "httpbin", "httpbin-waypoint")
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(bound, ["in-ambient", "httpbin"]);
    }
}
