//! Load balancer settings: consistent hash, Maglev, locality and warmup.

use serde_json::{Value, json};

use super::{assert_errors, assert_valid, check, findings, policy, syntax};

// ---- load balancer --------------------------------------------------------------

fn lb(lb: Value) -> Value {
    let mut settings = json!({});
    settings["loadBalancer"] = lb;
    policy(settings)
}

const LB: &str = "spec.trafficPolicy.loadBalancer";

#[test]
fn consistent_hash_cookie_and_ring_size_rules() {
    let hash = |h: Value| lb(json!({ "consistentHash": h }));
    let path = format!("{LB}.consistentHash");
    assert_valid(hash(json!({"httpCookie": {"name": "u", "attributes": [
        {"name": "SameSite", "value": "Strict"}, {"name": "Secure"},
    ]}})));
    assert_errors(
        hash(json!({"httpCookie": {"name": "", "attributes": [
            {"name": ""}, {"name": "a"}, {"name": "a"}, {"name": "A"},
        ]}})),
        &[
            (
                &format!("{path}.httpCookie.name"),
                "name required for HttpCookie",
            ),
            (
                &format!("{path}.httpCookie.attributes[0].name"),
                "cookie attribute name cannot be empty",
            ),
            (
                &format!("{path}.httpCookie.attributes[2].name"),
                "duplicate cookie attribute name: a",
            ),
        ],
    );
    let deprecated = (
        format!("{path}.minimumRingSize"),
        "consistent hash MinimumRingSize is deprecated, use ConsistentHashLB's RingHash configuration instead"
            .to_owned(),
    );
    let report = check(hash(json!({"useSourceIp": true, "minimumRingSize": 1024})));
    assert_eq!(report.errors, []);
    assert_eq!(
        findings(&report.warnings),
        [(deprecated.0.as_str(), deprecated.1.as_str())]
    );
    for algorithm in [
        json!({"ringHash": {}}),
        json!({"maglev": {"tableSize": 65537}}),
    ] {
        let mut h = json!({"httpHeaderName": "x-user", "minimumRingSize": 1024});
        h.as_object_mut()
            .unwrap()
            .extend(algorithm.as_object().unwrap().clone());
        let report = check(hash(h));
        assert_eq!(
            findings(&report.errors),
            [(
                deprecated.0.as_str(),
                "only one of MinimumRingSize or Maglev/Ringhash can be specified"
            )]
        );
        assert_eq!(report.warnings.len(), 1);
    }
    assert_valid(hash(json!({"minimumRingSize": 0})));
}

#[test]
fn maglev_table_size_must_be_a_small_prime() {
    let path = format!("{LB}.consistentHash.maglev.tableSize");
    let maglev = |m: Value| lb(json!({"consistentHash": {"useSourceIp": true, "maglev": m}}));
    // Envoy's isPrime, which istiod copies, calls 1 prime.
    for size in [1, 2, 3, 5, 65_537, 4_999_999] {
        assert_valid(maglev(json!({ "tableSize": size })));
    }
    let unset = [
        (path.as_str(), "tableSize must be set for maglev"),
        (path.as_str(), "tableSize must be a prime number for maglev"),
    ];
    assert_errors(maglev(json!({})), &unset);
    assert_errors(maglev(json!({"tableSize": 0})), &unset);
    assert_errors(
        maglev(json!({"tableSize": 65_536})),
        &[(&path, "tableSize must be a prime number for maglev")],
    );
    assert_errors(
        maglev(json!({"tableSize": 5_000_011})),
        &[(&path, "tableSize must be less than 5000011 for maglev")],
    );
    assert_errors(
        maglev(json!({"tableSize": 5_000_012})),
        &[
            (&path, "tableSize must be less than 5000011 for maglev"),
            (&path, "tableSize must be a prime number for maglev"),
        ],
    );
}

#[test]
fn is_prime_agrees_with_trial_division_and_is_fast_for_huge_sizes() {
    let naive = |x: u64| x != 0 && (x < 4 || (2..=x.isqrt()).all(|f| !x.is_multiple_of(f)));
    for x in 0..20_000 {
        assert_eq!(syntax::is_prime(x), naive(x), "{x}");
    }
    assert!(syntax::is_prime(2_305_843_009_213_693_951)); // 2^61 - 1
    assert!(syntax::is_prime(18_446_744_073_709_551_557)); // largest 64-bit prime
    assert!(!syntax::is_prime(u64::MAX));
    assert!(!syntax::is_prime(3_215_031_751)); // strong pseudoprime to bases 2, 3, 5, 7
}

#[test]
fn simple_and_consistent_hash_are_exclusive() {
    assert_errors(
        lb(json!({"simple": "ROUND_ROBIN", "consistentHash": {"useSourceIp": true}})),
        &[(LB, "only one of simple and consistentHash can be set")],
    );
}

#[test]
fn locality_distribute_weights_and_localities() {
    let path = format!("{LB}.localityLbSetting");
    let distribute = |d: Value| lb(json!({"localityLbSetting": {"distribute": d}}));
    assert_valid(distribute(json!([
        {"from": "us-west/zone1/*", "to": {"us-west/zone1/*": 80, "us-west/zone2/*": 20}},
        {"from": "us-west/zone2/*", "to": {"us-west/zone1/*": 20, "us-west/zone2/*": 80}},
    ])));
    let weight = |to: Value, at: &str, message: &str| {
        let expected = format!("{path}.distribute[0].to{at}");
        assert_errors(
            distribute(json!([{"from": "a", "to": to}])),
            &[(&expected, message)],
        );
    };
    weight(
        json!({"a": 0, "b": 100}),
        "[a]",
        "locality weight must be in range [1, 100]",
    );
    weight(
        json!({"a": 101}),
        "[a]",
        "locality weight must be in range [1, 100]",
    );
    weight(
        json!({"a": 50, "b": 40}),
        "",
        "total locality weight 90 != 100",
    );
    weight(
        json!({"us-west": 50, "us-west/zone1": 50}),
        "[us-west/zone1]",
        "locality us-west/zone1 overlap with previous specified ones",
    );
    weight(
        json!({"*": 50, "a": 50}),
        "[a]",
        "locality a overlap with previous specified ones",
    );
    weight(
        json!({"a/*/c": 100}),
        "[a/*/c]",
        "locality a/*/c wildcard '*' number can not exceed 1 and must be in the end",
    );
    weight(
        json!({"a//c": 100}),
        "[a//c]",
        "locality a//c must not contain empty region/zone/subzone info",
    );
    assert_errors(
        distribute(json!([
            {"from": "us-west/z1", "to": {"a": 100}},
            {"from": "us-west/z1/s1", "to": {"a": 100}},
            {"to": {"a": 100}},
        ])),
        &[(
            &format!("{path}.distribute[1].from"),
            "locality us-west/z1/s1 overlap with previous specified ones",
        )],
    );
    assert_errors(
        distribute(json!([{"to": {"a": 100}}])),
        &[(
            &format!("{path}.distribute[0].from"),
            "locality  must not contain empty region/zone/subzone info",
        )],
    );
}

#[test]
fn locality_failover_rules_and_the_outlier_detection_warning() {
    let path = format!("{LB}.localityLbSetting");
    let od = json!({"consecutive5xxErrors": 1});
    let with = |setting: Value, od: Option<&Value>| {
        let mut p = json!({"loadBalancer": {"localityLbSetting": setting}});
        if let Some(od) = od {
            p["outlierDetection"] = od.clone();
        }
        policy(p)
    };
    assert_valid(with(
        json!({"failover": [{"from": "us-east", "to": "eu-west"}]}),
        Some(&od),
    ));
    assert_errors(
        with(
            json!({"distribute": [{"from": "a", "to": {"a": 100}}], "failover": [{"from": "a", "to": "b"}]}),
            Some(&od),
        ),
        &[(
            &path,
            "can not simultaneously specify 'distribute' and 'failover'",
        )],
    );
    // The conflict ends validation, so the missing outlier detection is not reported.
    assert_errors(
        with(
            json!({"failover": [{"from": "a", "to": "b"}],
                   "failoverPriority": ["topology.istio.io/network", "topology.kubernetes.io/zone"]}),
            None,
        ),
        &[(
            &format!("{path}.failoverPriority[1]"),
            "can not simultaneously set 'failover' and topology label 'topology.kubernetes.io/zone' in 'failover_priority'",
        )],
    );
    assert_errors(
        with(
            json!({"failover": [
                {"from": "a", "to": "a"},
                {"from": "us-east/zone1", "to": "eu-*"},
            ]}),
            Some(&od),
        ),
        &[
            (
                &format!("{path}.failover[0]"),
                "locality lb failover settings must specify different regions",
            ),
            (
                &format!("{path}.failover[1]"),
                "locality lb failover only specify region",
            ),
            (
                &format!("{path}.failover[1]"),
                "locality lb failover region should not contain '*' wildcard",
            ),
        ],
    );
    let warning = [(
        path.as_str(),
        "outlier detection policy must be provided for failover",
    )];
    for setting in [
        json!({"failover": [{"from": "a", "to": "b"}]}),
        json!({"failoverPriority": ["topology.kubernetes.io/region"]}),
    ] {
        let report = check(with(setting, None));
        assert_eq!(report.errors, []);
        assert_eq!(findings(&report.warnings), warning);
    }
    // A port-level entry is checked against its own outlier detection.
    let report = check(policy(json!({
        "outlierDetection": od,
        "portLevelSettings": [{"port": {"number": 80},
            "loadBalancer": {"localityLbSetting": {"failoverPriority": ["x"]}}}],
    })));
    assert_eq!(
        findings(&report.warnings),
        [(
            "spec.trafficPolicy.portLevelSettings[0].loadBalancer.localityLbSetting",
            "outlier detection policy must be provided for failover"
        )]
    );
}

#[test]
fn warmup_duration_percent_and_aggression() {
    let path = format!("{LB}.warmup");
    let warmup = |w: Value| lb(json!({ "warmup": w }));
    assert_valid(warmup(
        json!({"duration": "100s", "minimumPercent": 100, "aggression": 0.5}),
    ));
    assert_errors(
        warmup(json!({"duration": "0s", "minimumPercent": 100.5, "aggression": 0})),
        &[
            (
                &format!("{path}.duration"),
                "duration must be greater than 1ms",
            ),
            (
                &format!("{path}.minimumPercent"),
                "minimumPercent value should be less than or equal to 100",
            ),
            (
                &format!("{path}.aggression"),
                "aggression should be greater than 0",
            ),
        ],
    );
    assert_errors(
        warmup(json!({"duration": "1500us"})),
        &[(
            &format!("{path}.duration"),
            "only durations to ms precision are supported",
        )],
    );
}
