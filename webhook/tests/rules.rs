//! Table-driven rule tests: each case in `fixtures/*.yaml` is an AdmissionReview (or
//! an object the harness wraps in one, the way the API server does), the cluster
//! the webhook's caches would hold, and the exact response expected: allowed or the
//! denial message, the warnings, and the JSON patch.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;

use gateway_api::apis::standard::gateways::Gateway;
use k8s_openapi::api::core::v1::Service;
use serde::Deserialize;
use serde_json::{Value, json};
use waypoint_webhook::Settings;
use waypoint_webhook::admission::{self, Endpoint};
use waypoint_webhook::rules::Context;
use waypoint_webhook::view::Snapshot;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Case {
    name: String,
    endpoint: String,
    #[serde(default)]
    strict: bool,
    /// A full AdmissionReview, as recorded from the API server.
    review: Option<Value>,
    /// Or just the object, wrapped by the harness.
    object: Option<Value>,
    #[serde(default = "create")]
    operation: String,
    #[serde(default)]
    cluster: Cluster,
    expect: Expect,
}

fn create() -> String {
    "CREATE".into()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Cluster {
    #[serde(default)]
    gateways: Vec<Gateway>,
    #[serde(default)]
    services: Vec<Service>,
    #[serde(default)]
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// `namespace/name` → labels
    #[serde(default)]
    deployments: BTreeMap<String, BTreeMap<String, String>>,
    /// `namespace/name`
    #[serde(default)]
    config_maps: Vec<String>,
    /// `namespace` → label sets of its pods
    #[serde(default)]
    pods: BTreeMap<String, Vec<BTreeMap<String, String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    allowed: bool,
    message: Option<String>,
    #[serde(default)]
    warnings: Vec<String>,
    patch: Option<Value>,
}

fn split(id: &str) -> (String, String) {
    let (ns, name) = id.split_once('/').expect("namespace/name");
    (ns.into(), name.into())
}

impl Cluster {
    fn snapshot(self) -> Snapshot {
        Snapshot {
            gateways: self.gateways,
            services: self.services,
            namespaces: self.namespaces.into_iter().collect(),
            deployments: self
                .deployments
                .into_iter()
                .map(|(id, labels)| {
                    let (ns, name) = split(&id);
                    (ns, name, labels)
                })
                .collect(),
            config_maps: self.config_maps.iter().map(|id| split(id)).collect(),
            pods: self
                .pods
                .into_iter()
                .flat_map(|(ns, sets)| sets.into_iter().map(move |l| (ns.clone(), l)))
                .collect(),
        }
    }
}

/// The AdmissionReview the API server would send for `object`.
fn wrap(object: &Value, operation: &str) -> Value {
    let api_version = object["apiVersion"].as_str().unwrap();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let kind = object["kind"].as_str().unwrap();
    let resource = format!("{}s", kind.to_lowercase())
        .replace("ys", "ies")
        .replace("ss", "sses");
    // The API server sets a Namespace's request namespace to the Namespace's name.
    let namespace = if kind == "Namespace" {
        object.pointer("/metadata/name").cloned()
    } else {
        object.pointer("/metadata/namespace").cloned()
    };
    let gvk = json!({"group": group, "version": version, "kind": kind});
    let gvr = json!({"group": group, "version": version, "resource": resource});
    let old = if operation == "UPDATE" {
        object.clone()
    } else {
        Value::Null
    };
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "00000000-0000-0000-0000-000000000001",
            "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
            "name": object.pointer("/metadata/name").cloned().unwrap_or(json!("")),
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "kubernetes-admin", "groups": ["kubeadm:cluster-admins", "system:authenticated"]},
            "object": object, "oldObject": old, "dryRun": false,
            "options": {"kind": format!("{}Options", &operation[..1].to_uppercase()) , "apiVersion": "meta.k8s.io/v1"}
        }
    })
}

/// The response's JSON patch. kube sends the bytes as a JSON array of numbers, which
/// the API server's Go decoder reads like the usual base64 string.
fn patch_of(response: &Value) -> Option<Value> {
    let bytes: Vec<u8> = match &response["patch"] {
        Value::Null => return None,
        Value::String(b64) => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap()
        }
        other => serde_json::from_value(other.clone()).unwrap(),
    };
    Some(serde_json::from_slice(&bytes).unwrap())
}

fn run_file(path: &Path) -> usize {
    let file: File = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut failures = Vec::new();
    let count = file.cases.len();
    for case in file.cases {
        let review = match (&case.review, &case.object) {
            (Some(r), None) => r.clone(),
            (None, Some(o)) => wrap(o, &case.operation),
            _ => panic!("{}: give exactly one of review and object", case.name),
        };
        let endpoint = match case.endpoint.as_str() {
            "mutate" => Endpoint::Mutate,
            "validate" => Endpoint::Validate,
            other => panic!("{}: unknown endpoint {other}", case.name),
        };
        let settings = Settings {
            strict: case.strict,
            ..Settings::default()
        };
        let view = case.cluster.snapshot();
        let cx = Context {
            settings: &settings,
            view: &view,
        };
        let body = serde_json::to_vec(&review).unwrap();
        let req = admission::decode(&body).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let (out, _) = admission::review(endpoint, &req, &cx);
        let out = serde_json::to_value(&out).unwrap();
        let response = &out["response"];
        let got_allowed = response["allowed"].as_bool().unwrap();
        let got_message = response
            .pointer("/status/message")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let got_warnings: Vec<String> = response["warnings"]
            .as_array()
            .map(|w| w.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default();
        let got_patch = patch_of(response);
        let mut problems = Vec::new();
        if got_allowed != case.expect.allowed {
            problems.push(format!(
                "allowed: want {}, got {got_allowed} ({got_message:?})",
                case.expect.allowed
            ));
        }
        if case.expect.message.is_some() && got_message != case.expect.message {
            problems.push(format!(
                "message:\n  want {:?}\n  got  {got_message:?}",
                case.expect.message
            ));
        }
        if got_warnings != case.expect.warnings {
            problems.push(format!(
                "warnings:\n  want {:?}\n  got  {got_warnings:?}",
                case.expect.warnings
            ));
        }
        if got_patch != case.expect.patch {
            problems.push(format!(
                "patch:\n  want {:?}\n  got  {got_patch:?}",
                case.expect.patch
            ));
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}", case.name, problems.join("\n")));
        }
    }
    assert!(
        failures.is_empty(),
        "{}:\n{}",
        path.display(),
        failures.join("\n\n")
    );
    count
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[test]
fn gateway_mutation() {
    assert!(run_file(&fixture("gateway-mutate.yaml")) >= 5);
}

#[test]
fn gateway_validation() {
    assert!(run_file(&fixture("gateway-validate.yaml")) >= 10);
}

#[test]
fn use_waypoint_labels() {
    assert!(run_file(&fixture("labels.yaml")) >= 10);
}

#[test]
fn destination_rules() {
    assert!(run_file(&fixture("destinationrule.yaml")) >= 4);
}

#[test]
fn virtual_services() {
    assert!(run_file(&fixture("virtualservice.yaml")) >= 4);
}

#[test]
fn reviews_recorded_from_the_api_server() {
    assert!(run_file(&fixture("recorded.yaml")) >= 7);
}

#[test]
fn httproutes() {
    assert!(run_file(&fixture("httproute.yaml")) >= 2);
}

#[test]
fn a_mutated_gateway_passes_validation_and_mutates_no_further() {
    let settings = Settings::default();
    let view = Snapshot::default();
    let cx = Context {
        settings: &settings,
        view: &view,
    };
    let mut gw = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "wp", "namespace": "ns"},
        "spec": {"gatewayClassName": "istio-waypoint"}
    });
    let review = |gw: &Value, endpoint| {
        let body = serde_json::to_vec(&wrap(gw, "CREATE")).unwrap();
        let req = admission::decode(&body).unwrap();
        serde_json::to_value(admission::review(endpoint, &req, &cx).0).unwrap()
    };
    let out = review(&gw, Endpoint::Mutate);
    let patch: json_patch::Patch =
        serde_json::from_value(patch_of(&out["response"]).unwrap()).unwrap();
    json_patch::patch(&mut gw, &patch).unwrap();
    let again = review(&gw, Endpoint::Mutate);
    assert!(
        again["response"]["patch"].is_null(),
        "second mutation: {again}"
    );
    assert!(
        again["response"]["warnings"].is_null(),
        "second mutation: {again}"
    );
    let validated = review(&gw, Endpoint::Validate);
    assert_eq!(validated["response"]["allowed"], json!(true), "{validated}");
}
