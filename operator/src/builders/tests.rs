use gateway_api::apis::standard::gateways::{Gateway, GatewayInfrastructure};

use super::*;
use crate::compile::{View, compile};
use crate::names::{MANAGED_LABEL, MANAGED_VALUE};

fn seed_gateway() -> Gateway {
    crate::fixtures::seed_gateway(&[])
}

/// What `compile` makes of a namespace with nothing bound: the mesh listener only.
fn empty() -> waypoint_config::Config {
    let view = View {
        namespace: None,
        services: &[],
        slices: &[],
        destination_rules: &[],
        cluster_domain: "cluster.local",
    };
    compile(&seed_gateway(), &view)
}

#[test]
fn objects_are_named_after_the_gateway_and_owned_by_it() {
    let c = build(
        &seed_gateway(),
        "waypoint.local/waypoint-dataplane:dev",
        &empty(),
    )
    .unwrap();
    for meta in [
        &c.service_account.metadata,
        &c.deployment.metadata,
        &c.service.metadata,
    ] {
        assert_eq!(meta.name.as_deref(), Some("httpbin-waypoint"));
        assert_eq!(meta.namespace.as_deref(), Some("httpbin"));
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(
            labels["gateway.networking.k8s.io/gateway-name"],
            "httpbin-waypoint"
        );
        assert_eq!(
            labels["gateway.networking.k8s.io/gateway-class-name"],
            "istio-waypoint"
        );
        assert_eq!(labels[MANAGED_LABEL], MANAGED_VALUE);
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("Gateway", "httpbin-waypoint")
        );
        assert_eq!(owner.controller, Some(true));
    }
    assert_eq!(
        c.config_map.metadata.name.as_deref(),
        Some("httpbin-waypoint-dataplane")
    );
}

#[test]
fn deployment_matches_the_waypoint_contract() {
    let c = build(&seed_gateway(), "img:1", &empty()).unwrap();
    let spec = c.deployment.spec.unwrap();
    assert_eq!(
        spec.selector.match_labels.unwrap(),
        BTreeMap::from([(
            "gateway.networking.k8s.io/gateway-name".to_owned(),
            "httpbin-waypoint".to_owned()
        )])
    );
    let pod = spec.template.spec.unwrap();
    let labels = spec.template.metadata.unwrap().labels.unwrap();
    assert_eq!(labels["istio.io/dataplane-mode"], "none");
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("httpbin-waypoint")
    );
    let container = &pod.containers[0];
    assert_eq!(container.image.as_deref(), Some("img:1"));
    let ports: Vec<_> = container
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .map(|p| p.container_port)
        .collect();
    assert_eq!(ports, [15008, 15020, 15021]);
    for probe in [&container.startup_probe, &container.readiness_probe] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(
            (get.path.as_deref(), &get.port),
            (Some("/healthz/ready"), &IntOrString::Int(15021))
        );
    }
    let sc = container.security_context.as_ref().unwrap();
    assert_eq!(
        (sc.run_as_non_root, sc.read_only_root_filesystem),
        (Some(true), Some(true))
    );
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_owned()][..])
    );
    let res = container.resources.as_ref().unwrap();
    assert!(res.requests.is_some() && res.limits.is_some());
}

#[test]
fn service_exposes_mesh_and_status_ports() {
    let c = build(&seed_gateway(), "img", &empty()).unwrap();
    let spec = c.service.spec.unwrap();
    let ports: Vec<_> = spec
        .ports
        .unwrap()
        .into_iter()
        .map(|p| (p.name.unwrap(), p.port, p.app_protocol.unwrap()))
        .collect();
    assert_eq!(
        ports,
        [
            ("status-port".into(), 15021, "tcp".into()),
            ("mesh".into(), 15008, "hbone".into())
        ]
    );
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
}

#[test]
fn infrastructure_labels_and_annotations_propagate_but_cannot_override_ours() {
    let mut gw = seed_gateway();
    gw.spec.infrastructure = Some(GatewayInfrastructure {
        labels: Some(BTreeMap::from([
            ("team".to_owned(), "payments".to_owned()),
            (
                "gateway.networking.k8s.io/gateway-name".to_owned(),
                "spoofed".to_owned(),
            ),
            (MANAGED_LABEL.to_owned(), "someone-else".to_owned()),
        ])),
        annotations: Some(BTreeMap::from([("owner".to_owned(), "sre".to_owned())])),
        parameters_ref: None,
    });
    let c = build(&gw, "img", &empty()).unwrap();
    for meta in [
        &c.service_account.metadata,
        &c.config_map.metadata,
        &c.deployment.metadata,
        &c.service.metadata,
    ] {
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels["team"], "payments");
        assert_eq!(
            labels["gateway.networking.k8s.io/gateway-name"],
            "httpbin-waypoint"
        );
        assert_eq!(labels[MANAGED_LABEL], MANAGED_VALUE);
        assert_eq!(meta.annotations.as_ref().unwrap()["owner"], "sre");
    }
}

#[test]
fn the_initial_dataplane_config_loads_in_the_dataplane_model() {
    let c = build(&seed_gateway(), "img", &empty()).unwrap();
    let config =
        waypoint_config::Config::from_yaml(&c.config_map.data.unwrap()["config.yaml"]).unwrap();
    assert_eq!(config.listeners[0].address.to_string(), "0.0.0.0:15008");
}

#[test]
fn a_gateway_without_uid_or_namespace_is_an_error_not_a_panic() {
    let mut gw = seed_gateway();
    gw.metadata.uid = None;
    assert_eq!(build(&gw, "img", &empty()).unwrap_err(), BuildError::NoUid);
    let mut gw = seed_gateway();
    gw.metadata.namespace = None;
    assert_eq!(
        build(&gw, "img", &empty()).unwrap_err(),
        BuildError::NoNamespace
    );
}
