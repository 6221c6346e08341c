//! Which waypoint a Service binds to, and the `istio.io/WaypointBound` condition that
//! tells its owner (reasons and messages from Istio: `shared/reference/waypoint-contract.md`
//! §3). Beyond Istio, a missing waypoint says that no such Gateway exists, because a
//! typo in the label is the usual cause and Istio's message hides it.

use gateway_api::apis::standard::gateways::Gateway;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use waypoint_mesh::binding;
use waypoint_mesh::names::USE_WAYPOINT;

pub mod table;

pub const CONDITION: &str = "istio.io/WaypointBound";

/// The waypoint a Service asks for: `(namespace, name)`, or `None` when it asks for
/// none (no label anywhere, or `none`). The Service's label beats its namespace's.
pub fn requested(svc: &Service, namespace: Option<&Namespace>) -> Option<(String, String)> {
    let svc_ns = svc.namespace().unwrap_or_default();
    binding::resolve(svc.labels(), &svc_ns, namespace.map(ResourceExt::labels))
        .map(|w| (w.namespace, w.name))
}

/// What a binding is reported on: the object's kind decides which traffic type the
/// waypoint must carry (a Namespace's label binds both kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Subject {
    Service,
    Pod,
    Namespace,
}

/// The condition for `svc`, or `None` when it asks for no waypoint. `waypoints` are
/// the Gateways of the requested namespace.
pub fn condition(
    svc: &Service,
    namespace: Option<&Namespace>,
    waypoints: &[Gateway],
    previous: Option<&Condition>,
    now: &Time,
) -> Option<Condition> {
    let svc_ns = svc.namespace().unwrap_or_default();
    condition_for(
        Subject::Service,
        svc.labels(),
        &svc_ns,
        svc.metadata.generation,
        namespace.map(ResourceExt::labels),
        waypoints,
        previous,
        now,
    )
}

/// The `istio.io/WaypointBound` condition of any bound object: `labels` are the
/// object's, `namespace` the namespace it lives in (for a Namespace, itself), and
/// `namespace_labels` that namespace's labels.
#[allow(clippy::too_many_arguments)]
pub fn condition_for(
    subject: Subject,
    labels: &std::collections::BTreeMap<String, String>,
    namespace: &str,
    generation: Option<i64>,
    namespace_labels: Option<&std::collections::BTreeMap<String, String>>,
    waypoints: &[Gateway],
    previous: Option<&Condition>,
    now: &Time,
) -> Option<Condition> {
    let target = binding::resolve(labels, namespace, namespace_labels)?;
    let (ns, name) = (target.namespace, target.name);
    let id = format!("{ns}/{name}");
    let gw = waypoints
        .iter()
        .find(|g| g.name_any() == name && g.namespace().as_deref() == Some(ns.as_str()));
    let traffic = match subject {
        Subject::Service => Some(binding::TrafficType::Service),
        Subject::Pod => Some(binding::TrafficType::Workload),
        Subject::Namespace => None,
    };
    let carries = |gw: &Gateway| {
        let wf = binding::waypoint_for(gw);
        traffic.map_or(wf != "none", |t| binding::serves(wf, t))
    };
    let empty = std::collections::BTreeMap::new();
    let (ok, reason, message) = match gw {
        None => (
            false,
            "WaypointIsNotReady",
            format!(
                "waypoint {id:?} is not ready: no Gateway {name:?} exists in namespace {ns:?} \
                 (check the {USE_WAYPOINT} label for a typo)"
            ),
        ),
        Some(gw) if !carries(gw) => (
            false,
            "UnsupportedTrafficType",
            format!(
                "attempting to bind to traffic type {:?} which the waypoint {id:?} does not support",
                traffic.map_or("service", binding::TrafficType::as_str)
            ),
        ),
        Some(gw) if !binding::admits(gw, namespace, namespace_labels.unwrap_or(&empty)) => (
            false,
            "AttachmentDenied",
            format!("we are not permitted to attach to waypoint {id:?} (missing allowedRoutes?)"),
        ),
        Some(gw)
            if gw
                .status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .is_none_or(Vec::is_empty) =>
        {
            (
                false,
                "WaypointIsNotReady",
                format!("waypoint {id:?} is not ready"),
            )
        }
        Some(_) => (
            true,
            "WaypointAccepted",
            format!("Successfully attached to waypoint {id}"),
        ),
    };
    let status = if ok { "True" } else { "False" }.to_owned();
    let unchanged =
        previous.filter(|c| c.status == status && c.reason == reason && c.message == message);
    Some(Condition {
        type_: CONDITION.to_owned(),
        status,
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: unchanged
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone()),
    })
}

#[cfg(test)]
mod tests {
    use gateway_api::apis::standard::gateways::{
        GatewayListenersAllowedRoutes, GatewayListenersAllowedRoutesNamespaces,
        GatewayListenersAllowedRoutesNamespacesFrom, GatewayStatus, GatewayStatusAddresses,
    };
    use waypoint_mesh::names::{USE_WAYPOINT_NAMESPACE, WAYPOINT_FOR_LABEL};

    use super::*;
    use crate::fixtures::seed_gateway;

    fn labelled<T: kube::Resource<DynamicType = ()> + Default>(
        ns: &str,
        name: &str,
        labels: &[(&str, &str)],
    ) -> T {
        let mut obj = T::default();
        *obj.meta_mut() = crate::fixtures::meta(ns, name, labels);
        obj
    }

    fn ready(mut gw: Gateway) -> Gateway {
        gw.status = Some(GatewayStatus {
            addresses: Some(vec![GatewayStatusAddresses {
                r#type: Some("IPAddress".into()),
                value: "10.96.0.9".into(),
            }]),
            ..GatewayStatus::default()
        });
        gw
    }

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1).unwrap())
    }

    fn reason(svc: &Service, ns: Option<&Namespace>, gws: &[Gateway]) -> Option<(String, String)> {
        condition(svc, ns, gws, None, &now()).map(|c| (c.status, c.reason))
    }

    #[allow(clippy::unnecessary_wraps)] // compared with reason()'s Option
    fn pair(status: &str, reason: &str) -> Option<(String, String)> {
        Some((status.into(), reason.into()))
    }

    #[test]
    fn each_reason_from_the_reference() {
        let bound: Service = labelled(
            "httpbin",
            "in-ambient",
            &[(USE_WAYPOINT, "httpbin-waypoint")],
        );
        let gw = ready(seed_gateway(&[]));
        assert_eq!(
            reason(&bound, None, std::slice::from_ref(&gw)),
            pair("True", "WaypointAccepted")
        );
        assert_eq!(
            reason(&bound, None, &[seed_gateway(&[])]),
            pair("False", "WaypointIsNotReady")
        );
        assert_eq!(
            reason(&bound, None, &[]),
            pair("False", "WaypointIsNotReady")
        );
        let workload_only = ready(seed_gateway(&[(WAYPOINT_FOR_LABEL, "workload")]));
        assert_eq!(
            reason(&bound, None, &[workload_only]),
            pair("False", "UnsupportedTrafficType")
        );
        let elsewhere: Service = labelled(
            "other",
            "in-ambient",
            &[
                (USE_WAYPOINT, "httpbin-waypoint"),
                (USE_WAYPOINT_NAMESPACE, "httpbin"),
            ],
        );
        assert_eq!(
            reason(&elsewhere, None, std::slice::from_ref(&gw)),
            pair("False", "AttachmentDenied")
        );
        let mut open = gw;
        open.spec.listeners[0].allowed_routes = Some(GatewayListenersAllowedRoutes {
            namespaces: Some(GatewayListenersAllowedRoutesNamespaces {
                from: Some(GatewayListenersAllowedRoutesNamespacesFrom::All),
                selector: None,
            }),
            kinds: None,
        });
        assert_eq!(
            reason(&elsewhere, None, &[open]),
            pair("True", "WaypointAccepted")
        );
    }

    #[test]
    fn messages_name_the_waypoint_and_the_typo() {
        let typo: Service = labelled(
            "httpbin",
            "in-ambient",
            &[(USE_WAYPOINT, "httpbin-waypiont")],
        );
        let c = condition(&typo, None, &[ready(seed_gateway(&[]))], None, &now()).unwrap();
        assert_eq!(
            c.message,
            "waypoint \"httpbin/httpbin-waypiont\" is not ready: no Gateway \"httpbin-waypiont\" exists in namespace \"httpbin\" (check the istio.io/use-waypoint label for a typo)"
        );
        let bound: Service = labelled(
            "httpbin",
            "in-ambient",
            &[(USE_WAYPOINT, "httpbin-waypoint")],
        );
        let c = condition(&bound, None, &[ready(seed_gateway(&[]))], None, &now()).unwrap();
        assert_eq!(
            c.message,
            "Successfully attached to waypoint httpbin/httpbin-waypoint"
        );
    }

    #[test]
    fn the_services_label_beats_the_namespaces_and_none_opts_out() {
        let ns: Namespace = labelled("", "httpbin", &[(USE_WAYPOINT, "httpbin-waypoint")]);
        let plain: Service = labelled("httpbin", "in-ambient", &[]);
        assert_eq!(
            requested(&plain, Some(&ns)),
            Some(("httpbin".into(), "httpbin-waypoint".into()))
        );
        let opted_out: Service = labelled("httpbin", "in-ambient", &[(USE_WAYPOINT, "none")]);
        assert_eq!(requested(&opted_out, Some(&ns)), None);
        assert_eq!(condition(&opted_out, Some(&ns), &[], None, &now()), None);
        let own: Service = labelled("httpbin", "in-ambient", &[(USE_WAYPOINT, "mine")]);
        assert_eq!(
            requested(&own, Some(&ns)),
            Some(("httpbin".into(), "mine".into()))
        );
        assert_eq!(requested(&plain, None), None);
    }

    #[test]
    fn an_unchanged_condition_keeps_its_time() {
        let bound: Service = labelled(
            "httpbin",
            "in-ambient",
            &[(USE_WAYPOINT, "httpbin-waypoint")],
        );
        let gws = [ready(seed_gateway(&[]))];
        let first = condition(&bound, None, &gws, None, &now()).unwrap();
        let later = Time(k8s_openapi::jiff::Timestamp::from_second(99).unwrap());
        assert_eq!(
            condition(&bound, None, &gws, Some(&first), &later),
            Some(first)
        );
    }

    fn reason_for(
        subject: Subject,
        labels: &[(&str, &str)],
        ns: &str,
        gws: &[Gateway],
    ) -> Option<String> {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        condition_for(subject, &labels, ns, None, None, gws, None, &now()).map(|c| c.reason)
    }

    #[test]
    fn pods_need_a_waypoint_that_carries_workload_traffic() {
        let service_only = ready(seed_gateway(&[]));
        let both = ready(seed_gateway(&[(WAYPOINT_FOR_LABEL, "all")]));
        let label = [(USE_WAYPOINT, "httpbin-waypoint")];
        assert_eq!(
            reason_for(
                Subject::Pod,
                &label,
                "httpbin",
                std::slice::from_ref(&service_only)
            )
            .as_deref(),
            Some("UnsupportedTrafficType")
        );
        assert_eq!(
            reason_for(Subject::Pod, &label, "httpbin", &[both]).as_deref(),
            Some("WaypointAccepted")
        );
        // A namespace binds both kinds: any waypoint that carries traffic will do.
        assert_eq!(
            reason_for(Subject::Namespace, &label, "httpbin", &[service_only]).as_deref(),
            Some("WaypointAccepted")
        );
        let none = ready(seed_gateway(&[(WAYPOINT_FOR_LABEL, "none")]));
        assert_eq!(
            reason_for(Subject::Namespace, &label, "httpbin", &[none]).as_deref(),
            Some("UnsupportedTrafficType")
        );
        assert_eq!(reason_for(Subject::Pod, &[], "httpbin", &[]), None);
    }
}
