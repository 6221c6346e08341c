#![allow(clippy::unwrap_used)]

use serde_json::json;

use super::*;

fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn parses_the_keys_istio_knows() {
    let o = parse(&data(&[
        ("deployment", "spec: {replicas: 3}"),
        (
            "horizontalPodAutoscaler",
            "spec: {minReplicas: 2, maxReplicas: 5}",
        ),
    ]))
    .unwrap();
    assert_eq!(o.deployment, Some(json!({"spec": {"replicas": 3}})));
    assert!(o.horizontal_pod_autoscaler.is_some() && o.service.is_none());
}

#[test]
fn refuses_unknown_keys_with_istios_message() {
    let e = parse(&data(&[("deploymnet", "spec: {}")])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "unsupported overlay \"deploymnet\" (supported: [deployment horizontalPodAutoscaler podDisruptionBudget service serviceAccount])"
    );
}

#[test]
fn refuses_metadata_changes_other_than_labels_and_annotations() {
    let e = parse(&data(&[(
        "service",
        "metadata: {name: other, labels: {a: b}}",
    )]))
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "overlay \"service\": illegal metadata change: only labels and annotations may be set, not metadata.name"
    );
    assert!(
        parse(&data(&[(
            "service",
            "metadata: {labels: {a: b}, annotations: {c: d}}"
        )]))
        .is_ok()
    );
}

#[test]
fn refuses_values_that_are_not_objects() {
    let e = parse(&data(&[("deployment", "- a\n- b")])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "overlay \"deployment\" is not a YAML object: got a list"
    );
    assert!(matches!(
        parse(&data(&[("deployment", "spec: {")])),
        Err(OverlayError::NotAnObject { .. })
    ));
}

#[test]
fn containers_merge_by_name_and_their_env_by_name() {
    let mut base = json!({"spec": {"template": {"spec": {"containers": [
        {"name": "istio-proxy", "image": "a", "env": [{"name": "X", "value": "1"}],
         "ports": [{"containerPort": 15021, "name": "status"}]}
    ]}}}});
    merge(
        &mut base,
        &json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [
            {"name": "istio-proxy", "resources": {"limits": {"cpu": "2"}},
             "env": [{"name": "X", "value": "2"}, {"name": "Y", "value": "3"}],
             "ports": [{"containerPort": 15090, "name": "prom"}]},
            {"name": "sidecar", "image": "b"}
        ]}}}}),
    );
    let c = &base["spec"]["template"]["spec"]["containers"];
    assert_eq!(base["spec"]["replicas"], 2);
    assert_eq!(c[0]["image"], "a");
    assert_eq!(c[0]["resources"]["limits"]["cpu"], "2");
    assert_eq!(
        c[0]["env"],
        json!([{"name": "X", "value": "2"}, {"name": "Y", "value": "3"}])
    );
    assert_eq!(c[0]["ports"].as_array().unwrap().len(), 2);
    assert_eq!(c[1]["name"], "sidecar");
}

#[test]
fn service_ports_merge_by_port_null_deletes_other_lists_replace() {
    let mut base = json!({"metadata": {"labels": {"a": "1"}},
        "spec": {"type": "ClusterIP", "ports": [{"port": 15008, "name": "mesh"}], "ipFamilies": ["IPv4"]}});
    merge(
        &mut base,
        &json!({"metadata": {"labels": {"a": null, "b": "2"}},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 15008, "nodePort": 30008}], "ipFamilies": ["IPv6"]}}),
    );
    assert_eq!(base["metadata"]["labels"], json!({"b": "2"}));
    assert_eq!(base["spec"]["type"], "LoadBalancer");
    assert_eq!(
        base["spec"]["ports"],
        json!([{"port": 15008, "name": "mesh", "nodePort": 30008}])
    );
    assert_eq!(base["spec"]["ipFamilies"], json!(["IPv6"]));
}

#[test]
fn apply_reports_an_overlay_that_breaks_the_type() {
    use k8s_openapi::api::core::v1::ServiceAccount;
    let sa = ServiceAccount::default();
    let e = apply(
        &sa,
        Some(&json!({"automountServiceAccountToken": "yes"})),
        "serviceAccount",
        "ServiceAccount",
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("overlay \"serviceAccount\" does not make a valid ServiceAccount: "),
        "{e}"
    );
    let ok = apply(
        &sa,
        Some(&json!({"automountServiceAccountToken": false})),
        "serviceAccount",
        "ServiceAccount",
    )
    .unwrap();
    assert_eq!(ok.automount_service_account_token, Some(false));
}
