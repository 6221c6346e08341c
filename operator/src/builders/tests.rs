use gateway_api::apis::standard::gateways::{Gateway, GatewayInfrastructure};

use super::*;
use crate::compile::{View, compile};
use crate::names::{MANAGED_LABEL, MANAGED_VALUE};
use crate::overlay::Overlays;

fn dp(image: &str) -> Dataplane {
    Dataplane {
        image: image.to_owned(),
        ca_address: "https://waypoint-ca.waypoint-system.svc:15012".to_owned(),
        config_url: "https://waypoint-config.waypoint-system.svc:15012".to_owned(),
        trust_domain: "cluster.local".to_owned(),
    }
}

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
        http_routes: &[],
        virtual_services: &[],
        pod_labels: &std::collections::HashMap::new(),
        cluster_domain: "cluster.local",
    };
    compile(&seed_gateway(), &view)
}

#[test]
fn objects_are_named_after_the_gateway_and_owned_by_it() {
    let c = build(
        &seed_gateway(),
        &dp("waypoint.local/waypoint-dataplane:dev"),
        &empty(),
        &Overlays::default(),
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
    let c = build(
        &seed_gateway(),
        &dp("img:1"),
        &empty(),
        &Overlays::default(),
    )
    .unwrap();
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

/// The files the env vars name are where the volumes put them: the token's path in
/// its projection and the root ConfigMap's key under their mount points.
#[test]
fn the_pod_can_find_its_ca_token_and_roots() {
    let c = build(&seed_gateway(), &dp("img"), &empty(), &Overlays::default()).unwrap();
    let pod = c.deployment.spec.unwrap().template.spec.unwrap();
    let container = &pod.containers[0];
    let env: BTreeMap<_, _> = container
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| {
            let v = e.value.clone().or_else(|| {
                e.value_from
                    .as_ref()
                    .and_then(|f| f.field_ref.as_ref())
                    .map(|f| format!("fieldRef:{}", f.field_path))
            });
            (e.name.as_str(), v.unwrap())
        })
        .collect();
    assert_eq!(
        env["WAYPOINT_CA_ADDRESS"],
        "https://waypoint-ca.waypoint-system.svc:15012"
    );
    assert_eq!(env["WAYPOINT_TRUST_DOMAIN"], "cluster.local");
    assert_eq!(
        env["WAYPOINT_IDENTITY_NAMESPACE"],
        "fieldRef:metadata.namespace"
    );
    assert_eq!(
        env["WAYPOINT_IDENTITY_SERVICE_ACCOUNT"],
        "fieldRef:spec.serviceAccountName"
    );
    let mounted = |volume: &str| {
        container
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == volume)
            .map(|m| m.mount_path.clone())
            .unwrap()
    };
    let volume = |name: &str| {
        pod.volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == name)
            .unwrap()
            .clone()
    };
    let token = volume("waypoint-ca-token")
        .projected
        .unwrap()
        .sources
        .unwrap()[0]
        .service_account_token
        .clone()
        .unwrap();
    assert_eq!(token.audience.as_deref(), Some("waypoint-ca"));
    assert_eq!(token.expiration_seconds, Some(3600));
    assert_eq!(
        format!("{}/{}", mounted("waypoint-ca-token"), token.path),
        env["WAYPOINT_CA_TOKEN_FILE"]
    );
    let root = volume("waypoint-mesh-root").config_map.unwrap();
    assert_eq!(root.name, "waypoint-mesh-root");
    assert_eq!(
        format!("{}/root-cert.pem", mounted("waypoint-mesh-root")),
        env["WAYPOINT_CA_ROOT_FILE"]
    );
}

#[test]
fn service_exposes_mesh_and_status_ports() {
    let c = build(&seed_gateway(), &dp("img"), &empty(), &Overlays::default()).unwrap();
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
    let c = build(&gw, &dp("img"), &empty(), &Overlays::default()).unwrap();
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
    let c = build(&seed_gateway(), &dp("img"), &empty(), &Overlays::default()).unwrap();
    let config =
        waypoint_config::Config::from_yaml(&c.config_map.data.unwrap()["config.yaml"]).unwrap();
    assert_eq!(config.listeners[0].address.to_string(), "0.0.0.0:15008");
}

#[test]
fn a_gateway_without_uid_or_namespace_is_an_error_not_a_panic() {
    let mut gw = seed_gateway();
    gw.metadata.uid = None;
    assert_eq!(
        build(&gw, &dp("img"), &empty(), &Overlays::default()).unwrap_err(),
        BuildError::NoUid
    );
    let mut gw = seed_gateway();
    gw.metadata.namespace = None;
    assert_eq!(
        build(&gw, &dp("img"), &empty(), &Overlays::default()).unwrap_err(),
        BuildError::NoNamespace
    );
}

#[test]
fn overlays_patch_the_objects_and_add_an_hpa_and_a_pdb() {
    let overlays = overlay::parse(
        &[
            ("deployment", "metadata: {labels: {team: a, gateway.istio.io/managed: hijack}}\nspec:\n  replicas: 0\n  template:\n    spec:\n      containers:\n      - name: waypoint\n        resources: {limits: {cpu: '2'}}\n"),
            ("service", "spec: {type: NodePort}"),
            ("horizontalPodAutoscaler", "spec: {minReplicas: 2, maxReplicas: 5}"),
            ("podDisruptionBudget", "spec: {minAvailable: 1}"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
    )
    .unwrap();
    let c = build(&seed_gateway(), &dp("img"), &empty(), &overlays).unwrap();
    let d = c.deployment.spec.as_ref().unwrap();
    assert_eq!(d.replicas, Some(0));
    let container = &d.template.spec.as_ref().unwrap().containers[0];
    assert_eq!(
        container.name, "waypoint",
        "the overlay merged into our container, not beside it"
    );
    assert_eq!(d.template.spec.as_ref().unwrap().containers.len(), 1);
    assert_eq!(
        container
            .resources
            .as_ref()
            .unwrap()
            .limits
            .as_ref()
            .unwrap()["cpu"]
            .0,
        "2"
    );
    let labels = c.deployment.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["team"], "a");
    assert_eq!(
        labels[MANAGED_LABEL], MANAGED_VALUE,
        "our labels win over an overlay's"
    );
    assert_eq!(
        c.service.spec.as_ref().unwrap().type_.as_deref(),
        Some("NodePort")
    );
    let hpa = c.horizontal_pod_autoscaler.unwrap();
    assert_eq!((hpa.spec.min_replicas, hpa.spec.max_replicas), (Some(2), 5));
    assert_eq!(hpa.spec.scale_target_ref.name, "httpbin-waypoint");
    assert_eq!(hpa.metadata.owner_references.unwrap()[0].kind, "Gateway");
    let pdb = c.pod_disruption_budget.unwrap().spec.unwrap();
    assert_eq!(
        pdb.selector.unwrap().match_labels.unwrap()["gateway.networking.k8s.io/gateway-name"],
        "httpbin-waypoint"
    );
    // Without overlays there is neither.
    let plain = build(&seed_gateway(), &dp("img"), &empty(), &Overlays::default()).unwrap();
    assert!(plain.horizontal_pod_autoscaler.is_none() && plain.pod_disruption_budget.is_none());
}

#[test]
fn an_overlay_that_breaks_the_object_is_an_error_naming_it() {
    let overlays =
        overlay::parse(&[("deployment".to_owned(), "spec: {replicas: many}".to_owned())].into())
            .unwrap();
    let e = build(&seed_gateway(), &dp("img"), &empty(), &overlays).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("overlay \"deployment\" does not make a valid Deployment: "),
        "{e}"
    );
}
