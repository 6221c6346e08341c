//! DestinationRule fixtures (Istio's docs and the seed guides): each one deserializes
//! into our types, round-trips unchanged, and is accepted by the generated CRD schema;
//! structurally wrong objects are rejected by the same schema.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may panic

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use waypoint_crds::destination_rule::{LbAlgorithm, SimpleLb};
use waypoint_crds::{DestinationRule, crd};

fn fixtures() -> Vec<(PathBuf, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/destinationrule");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            let v: Value = serde_yaml::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            (p, v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// YAML `10` and a typed `10.0` are the same value; compare numbers by value.
fn numbers_as_f64(v: &Value) -> Value {
    match v {
        Value::Number(n) => json!(n.as_f64()),
        Value::Array(a) => Value::Array(a.iter().map(numbers_as_f64).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), numbers_as_f64(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn schema_validator() -> jsonschema::Validator {
    let crd = serde_json::to_value(crd::destination_rule()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    jsonschema::validator_for(schema).unwrap()
}

#[test]
fn at_least_fifteen_fixtures() {
    assert!(fixtures().len() >= 15, "found {}", fixtures().len());
}

#[test]
fn every_fixture_deserializes_and_round_trips() {
    for (path, original) in fixtures() {
        let dr: DestinationRule = serde_json::from_value(original.clone())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let back = serde_json::to_value(&dr).unwrap();
        // apiVersion is normalised to the storage version; spec and metadata must be exact.
        for key in ["spec", "metadata"] {
            assert_eq!(
                numbers_as_f64(&back[key]),
                numbers_as_f64(&original[key]),
                "{}: {key} changed",
                path.display()
            );
        }
    }
}

#[test]
fn every_fixture_is_accepted_by_the_generated_schema() {
    let validator = schema_validator();
    for (path, original) in fixtures() {
        let errors: Vec<String> = validator
            .iter_errors(&original)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
    }
}

#[test]
fn structurally_wrong_objects_are_rejected_by_the_schema_and_the_types() {
    let validator = schema_validator();
    let base = |spec: Value| {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
               "metadata": {"name": "bad"}, "spec": spec})
    };
    let cases = [
        ("missing host", json!({"trafficPolicy": {}})),
        ("host is a number", json!({"host": 5})),
        (
            "unknown LB",
            json!({"host": "a", "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBBIN"}}}),
        ),
        (
            "5xx as string",
            json!({"host": "a", "trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": "three"}}}),
        ),
        (
            "negative uint",
            json!({"host": "a", "trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": -1}}}),
        ),
        (
            "subsets not a list",
            json!({"host": "a", "subsets": {"name": "v1"}}),
        ),
        (
            "subset without name",
            json!({"host": "a", "subsets": [{"labels": {"v": "1"}}]}),
        ),
        (
            "tls mode unknown",
            json!({"host": "a", "trafficPolicy": {"tls": {"mode": "STRICT"}}}),
        ),
        (
            "labels not strings",
            json!({"host": "a", "subsets": [{"name": "v1", "labels": {"v": 1}}]}),
        ),
        (
            "port number string",
            json!({"host": "a", "trafficPolicy": {"portLevelSettings": [{"port": {"number": "80"}}]}}),
        ),
        (
            "warmup without duration",
            json!({"host": "a", "trafficPolicy": {"loadBalancer": {"warmup": {"aggression": 1.0}}}}),
        ),
    ];
    for (what, spec) in cases {
        let obj = base(spec);
        assert!(!validator.is_valid(&obj), "schema accepted: {what}");
        assert!(
            serde_json::from_value::<DestinationRule>(obj).is_err(),
            "types accepted: {what}"
        );
    }
    // Range limits are the schema's (and the webhook's) job; the types take any number.
    let over = base(
        json!({"host": "a", "trafficPolicy": {"loadBalancer": {"warmup": {"duration": "1s", "minimumPercent": 150}}}}),
    );
    assert!(
        !validator.is_valid(&over),
        "schema accepted minimumPercent 150"
    );
    // A duration the API server's CEL rule would refuse is refused by the types too.
    let bad_duration =
        base(json!({"host": "a", "trafficPolicy": {"outlierDetection": {"interval": "10"}}}));
    let err = serde_json::from_value::<DestinationRule>(bad_duration).unwrap_err();
    assert!(err.to_string().contains("invalid duration \"10\""), "{err}");
}

#[test]
fn seed_rule_has_the_guides_semantics() {
    let (_, v) = fixtures()
        .into_iter()
        .find(|(p, _)| p.ends_with("01-seed-in-ambient-failover.yaml"))
        .unwrap();
    let dr: DestinationRule = serde_json::from_value(v).unwrap();
    let tp = dr.spec.traffic_policy.unwrap();
    let lb = tp.load_balancer.unwrap();
    assert_eq!(lb.simple, Some(SimpleLb::RoundRobin));
    assert_eq!(lb.effective_algorithm(), LbAlgorithm::RoundRobin);
    let od = tp.outlier_detection.unwrap();
    assert_eq!(od.effective_consecutive_5xx(), Some(3));
    assert_eq!(od.effective_interval().as_secs(), 10);
    assert_eq!(od.effective_base_ejection_time().as_secs(), 30);
    assert_eq!(od.effective_max_ejection_percent(), 50);
    assert_eq!(od.effective_consecutive_gateway(), None);
}

#[test]
fn envoy_defaults_apply_when_fields_are_unset_or_zero() {
    let od: waypoint_crds::destination_rule::OutlierDetection =
        serde_json::from_value(json!({"maxEjectionPercent": 0})).unwrap();
    assert_eq!(od.effective_consecutive_5xx(), Some(5));
    assert_eq!(od.effective_max_ejection_percent(), 10);
    assert_eq!(od.effective_interval().as_secs(), 10);
    assert_eq!(od.effective_base_ejection_time().as_secs(), 30);
    let disabled: waypoint_crds::destination_rule::OutlierDetection =
        serde_json::from_value(json!({"consecutive5xxErrors": 0})).unwrap();
    assert_eq!(disabled.effective_consecutive_5xx(), None);
    let lb: waypoint_crds::destination_rule::LoadBalancerSettings =
        serde_json::from_value(json!({"simple": "LEAST_CONN"})).unwrap();
    assert_eq!(lb.effective_algorithm(), LbAlgorithm::LeastRequest);
}

#[test]
fn crd_serves_three_versions_with_v1_as_storage() {
    let crd = crd::destination_rule();
    let versions: Vec<_> = crd
        .spec
        .versions
        .iter()
        .map(|v| (v.name.as_str(), v.served, v.storage))
        .collect();
    assert_eq!(
        versions,
        [
            ("v1", true, true),
            ("v1beta1", true, false),
            ("v1alpha3", true, false)
        ]
    );
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["dr".to_owned()][..])
    );
}

#[test]
fn checked_in_manifests_match_crdgen() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
    for (file, c) in crd::all() {
        let want = crd::to_yaml(&c).unwrap();
        let have = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert!(
            have == want,
            "crds/manifests/{file} is stale: run `cargo run -p waypoint-crds --bin crdgen`"
        );
    }
}
