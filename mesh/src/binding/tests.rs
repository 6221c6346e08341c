#![allow(clippy::unwrap_used, clippy::unnecessary_wraps)]

use std::collections::BTreeMap;

use gateway_api::apis::standard::gateways::{
    Gateway, GatewayListeners, GatewayListenersAllowedRoutes,
    GatewayListenersAllowedRoutesNamespaces, GatewayListenersAllowedRoutesNamespacesFrom as From,
    GatewayListenersAllowedRoutesNamespacesSelector as Selector,
    GatewayListenersAllowedRoutesNamespacesSelectorMatchExpressions as Expr, GatewaySpec,
};
use kube::api::ObjectMeta;

use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn waypoint(from: Option<From>, selector: Option<Selector>) -> Gateway {
    Gateway {
        metadata: ObjectMeta {
            name: Some("wp".into()),
            namespace: Some("mesh".into()),
            ..ObjectMeta::default()
        },
        spec: GatewaySpec {
            gateway_class_name: "istio-waypoint".into(),
            listeners: vec![GatewayListeners {
                name: "mesh".into(),
                port: 15008,
                protocol: "HBONE".into(),
                allowed_routes: Some(GatewayListenersAllowedRoutes {
                    namespaces: Some(GatewayListenersAllowedRoutesNamespaces { from, selector }),
                    kinds: None,
                }),
                ..GatewayListeners::default()
            }],
            ..GatewaySpec::default()
        },
        status: None,
    }
}

fn wp(ns: &str, name: &str) -> Option<WaypointRef> {
    Some(WaypointRef {
        namespace: ns.into(),
        name: name.into(),
    })
}

#[test]
fn object_label_beats_namespace_label() {
    let ns = labels(&[(USE_WAYPOINT, "ns-wp")]);
    assert_eq!(
        resolve(&labels(&[(USE_WAYPOINT, "own")]), "a", Some(&ns)),
        wp("a", "own")
    );
    assert_eq!(resolve(&labels(&[]), "a", Some(&ns)), wp("a", "ns-wp"));
    assert_eq!(resolve(&labels(&[]), "a", None), None);
}

#[test]
fn none_opts_out_of_the_namespace_waypoint() {
    let ns = labels(&[(USE_WAYPOINT, "ns-wp")]);
    assert_eq!(
        resolve(&labels(&[(USE_WAYPOINT, "none")]), "a", Some(&ns)),
        None
    );
}

#[test]
fn use_waypoint_namespace_points_elsewhere() {
    let own = labels(&[(USE_WAYPOINT, "shared"), (USE_WAYPOINT_NAMESPACE, "mesh")]);
    assert_eq!(resolve(&own, "a", None), wp("mesh", "shared"));
    // The namespace's pair is read together, from the namespace.
    let ns = labels(&[(USE_WAYPOINT, "shared"), (USE_WAYPOINT_NAMESPACE, "mesh")]);
    assert_eq!(resolve(&labels(&[]), "a", Some(&ns)), wp("mesh", "shared"));
}

#[test]
fn waypoint_for_defaults_to_service_and_must_cover_the_traffic() {
    let mut gw = waypoint(None, None);
    assert_eq!(waypoint_for(&gw), "service");
    assert!(serves(waypoint_for(&gw), TrafficType::Service));
    assert!(!serves(waypoint_for(&gw), TrafficType::Workload));
    gw.metadata.labels = Some(labels(&[(WAYPOINT_FOR_LABEL, "all")]));
    assert!(serves(waypoint_for(&gw), TrafficType::Workload));
    assert!(!serves("none", TrafficType::Service));
}

#[test]
fn allowed_routes_same_all_and_selector() {
    let none = labels(&[]);
    assert!(admits(&waypoint(None, None), "mesh", &none));
    assert!(!admits(&waypoint(None, None), "other", &none));
    assert!(!admits(&waypoint(Some(From::Same), None), "other", &none));
    assert!(admits(&waypoint(Some(From::All), None), "other", &none));
    let sel = Selector {
        match_labels: Some(labels(&[("team", "a")])),
        match_expressions: Some(vec![Expr {
            key: "env".into(),
            operator: "NotIn".into(),
            values: Some(vec!["prod".into()]),
        }]),
    };
    let gw = waypoint(Some(From::Selector), Some(sel));
    assert!(admits(&gw, "other", &labels(&[("team", "a")])));
    assert!(!admits(
        &gw,
        "other",
        &labels(&[("team", "a"), ("env", "prod")])
    ));
    assert!(!admits(&gw, "other", &labels(&[("team", "b")])));
    // Selector without a selector admits nothing.
    assert!(!admits(
        &waypoint(Some(From::Selector), None),
        "mesh",
        &none
    ));
}

#[test]
fn selector_operators() {
    let l = labels(&[("k", "v")]);
    let one = |op: &str, values: Option<Vec<String>>| Selector {
        match_labels: None,
        match_expressions: Some(vec![Expr {
            key: "k".into(),
            operator: op.into(),
            values,
        }]),
    };
    assert!(selector_matches(&one("In", Some(vec!["v".into()])), &l));
    assert!(!selector_matches(&one("In", Some(vec!["w".into()])), &l));
    assert!(selector_matches(&one("Exists", None), &l));
    assert!(!selector_matches(&one("DoesNotExist", None), &l));
    assert!(!selector_matches(&one("Bogus", None), &l));
    assert!(selector_matches(&Selector::default(), &l));
}
