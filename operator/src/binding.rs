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

pub const CONDITION: &str = "istio.io/WaypointBound";

/// The waypoint a Service asks for: `(namespace, name)`, or `None` when it asks for
/// none (no label anywhere, or `none`). The Service's label beats its namespace's.
pub fn requested(svc: &Service, namespace: Option<&Namespace>) -> Option<(String, String)> {
    let svc_ns = svc.namespace().unwrap_or_default();
    binding::resolve(svc.labels(), &svc_ns, namespace.map(ResourceExt::labels))
        .map(|w| (w.namespace, w.name))
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
    let (ns, name) = requested(svc, namespace)?;
    let id = format!("{ns}/{name}");
    let gw = waypoints
        .iter()
        .find(|g| g.name_any() == name && g.namespace().as_deref() == Some(ns.as_str()));
    let (ok, reason, message) = match gw {
        None => (
            false,
            "WaypointIsNotReady",
            format!(
                "waypoint {id:?} is not ready: no Gateway {name:?} exists in namespace {ns:?} \
                 (check the {USE_WAYPOINT} label for a typo)"
            ),
        ),
        Some(gw) if !serves_services(gw) => (
            false,
            "UnsupportedTrafficType",
            format!(
                "attempting to bind to traffic type \"service\" which the waypoint {id:?} does not support"
            ),
        ),
        Some(gw) if !admits(gw, svc, namespace) => (
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
        observed_generation: svc.metadata.generation,
        last_transition_time: unchanged
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone()),
    })
}

fn serves_services(gw: &Gateway) -> bool {
    binding::serves(binding::waypoint_for(gw), binding::TrafficType::Service)
}

/// Whether the mesh listener's `allowedRoutes` admits the Service's namespace.
fn admits(gw: &Gateway, svc: &Service, namespace: Option<&Namespace>) -> bool {
    let svc_ns = svc.namespace().unwrap_or_default();
    let empty = std::collections::BTreeMap::new();
    binding::admits(gw, &svc_ns, namespace.map_or(&empty, ResourceExt::labels))
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
}
