//! One test per family of istiod rules, asserting exact paths and messages, plus the
//! fixtures (all valid) and a cheap deterministic no-panic property. Shared helpers
//! and the top-level rules live here; the submodules cover the traffic policy.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic

use serde_json::{Value, json};

use super::{Finding, Report, syntax, validate};
use crate::destination_rule::DestinationRuleSpec;

mod load_balancer;
mod policies;
mod robustness;

const NS: &str = "httpbin";

fn spec(value: Value) -> DestinationRuleSpec {
    serde_json::from_value(value).unwrap()
}

fn check(value: Value) -> Report {
    validate(&spec(value), NS)
}

fn policy(policy: Value) -> Value {
    let mut spec = json!({"host": "reviews"});
    spec["trafficPolicy"] = policy;
    spec
}

fn findings(list: &[Finding]) -> Vec<(&str, &str)> {
    list.iter()
        .map(|f| (f.path.as_str(), f.message.as_str()))
        .collect()
}

/// Asserts the exact errors, in order, and no warnings.
#[track_caller]
fn assert_errors(value: Value, expected: &[(&str, &str)]) {
    let report = check(value);
    assert_eq!(findings(&report.errors), expected);
    assert_eq!(findings(&report.warnings), []);
}

#[track_caller]
fn assert_valid(value: Value) {
    assert_errors(value, &[]);
}

// ---- top level ------------------------------------------------------------------

#[test]
fn host_is_a_wildcard_domain() {
    for host in [
        "reviews",
        "reviews.prod.svc.cluster.local",
        "*.foo.com",
        "*",
        "istio.io.",
        "*foo.com",
        "*-foo.com",
        "Reviews",
    ] {
        assert_valid(json!({ "host": host }));
    }
    let long = "a".repeat(256);
    let cases = [
        ("", "empty domain name not allowed".to_owned()),
        (
            long.as_str(),
            format!("domain name \"{long}\" too long (max 255)"),
        ),
        (
            "foo_bar",
            r#"domain name "foo_bar" invalid (label "foo_bar" invalid)"#.to_owned(),
        ),
        (
            "a*.com",
            r#"domain name "a*.com" invalid (label "a*" invalid)"#.to_owned(),
        ),
        // istiod quotes only the part after the first label.
        (
            "foo.*.com",
            r#"domain name "*.com" invalid (label "*" invalid)"#.to_owned(),
        ),
        (
            "foo..com",
            r#"domain name ".com" invalid (label "" invalid)"#.to_owned(),
        ),
        (
            "10.0.0.1",
            r#"domain name "0.0.1" invalid (top level domain "1" cannot be all-numeric)"#
                .to_owned(),
        ),
    ];
    for (host, message) in cases {
        assert_errors(json!({ "host": host }), &[("spec.host", &message)]);
    }
}

#[test]
fn subsets_need_unique_dns_label_names_and_kubernetes_labels() {
    assert_valid(json!({"host": "r", "subsets": [
        {"name": "v1", "labels": {"version": "v1", "app.kubernetes.io/name": "r", "empty": ""}},
        {"name": "V2"},
    ]}));
    assert_errors(
        json!({"host": "r", "subsets": [{"name": ""}, {"name": "v_1"}, {"name": "v1"}, {"name": "v1"}]}),
        &[
            ("spec.subsets[0].name", "subset name cannot be empty"),
            ("spec.subsets[1].name", "subset name is invalid: v_1"),
            ("spec.subsets[3].name", "duplicate subset names: v1"),
        ],
    );
    let long_name = format!("k/{}", "n".repeat(64));
    let long_prefix = format!("{}/k", "p".repeat(254));
    let subset = json!({"name": "v1", "labels": {
        "": "x",
        "a/b/c": "x",
        "app": "bad value",
        "ok": "-bad",
        long_name.clone(): "x",
        long_prefix.clone(): "x",
    }});
    let long_name_error = format!("invalid tag key: \"{long_name}\" (name is too long)");
    let long_prefix_error = format!("invalid tag key: \"{long_prefix}\" (DNS prefix is too long)");
    let long_name_path = format!("spec.subsets[0].labels[{long_name}]");
    let long_prefix_path = format!("spec.subsets[0].labels[{long_prefix}]");
    assert_errors(
        json!({"host": "r", "subsets": [subset]}),
        &[
            ("spec.subsets[0].labels[]", r#"invalid tag key: """#),
            (
                "spec.subsets[0].labels[a/b/c]",
                r#"invalid tag key: "a/b/c""#,
            ),
            (
                "spec.subsets[0].labels[app]",
                r#"invalid tag value: "bad value""#,
            ),
            (&long_name_path, &long_name_error),
            ("spec.subsets[0].labels[ok]", r#"invalid tag value: "-bad""#),
            (&long_prefix_path, &long_prefix_error),
        ],
    );
}

/// exportTo entries, whether a workload selector is set, and the expected errors.
type ExportToCase = (Value, bool, &'static [(&'static str, &'static str)]);

#[test]
fn export_to_follows_istio_visibility_rules() {
    let run = |entries: Value, selector: bool| {
        let mut value = json!({"host": "r", "exportTo": entries});
        if selector {
            value["workloadSelector"] = json!({"matchLabels": {"app": "r"}});
        }
        check(value).errors
    };
    let cases: [ExportToCase; 12] = [
        (json!(["."]), false, &[]),
        (json!(["*"]), false, &[]),
        (json!(["other", "."]), false, &[]),
        (json!(["."]), true, &[]),
        (json!([NS]), true, &[]),
        (
            json!([".", "*"]),
            false,
            &[(
                "spec.exportTo",
                "cannot have both public (*) and non-public exportTo values for a resource",
            )],
        ),
        (
            json!([NS, "."]),
            false,
            &[(
                "spec.exportTo[1]",
                "duplicate entries in exportTo: . and current namespace httpbin",
            )],
        ),
        (
            json!([".", NS]),
            false,
            &[(
                "spec.exportTo[1]",
                "duplicate entries in exportTo for entry httpbin",
            )],
        ),
        (
            json!(["~"]),
            false,
            &[(
                "spec.exportTo[0]",
                "exportTo ~ (none) is not allowed for Istio configuration objects",
            )],
        ),
        (
            json!(["bad_ns"]),
            false,
            &[(
                "spec.exportTo[0]",
                "only .,*, or a valid DNS 1123 label is allowed as exportTo entry",
            )],
        ),
        (
            json!(["other"]),
            true,
            &[(
                "spec.exportTo",
                "destination rule with workload selector cannot have exportTo beyond current namespace",
            )],
        ),
        (
            json!([".", "other"]),
            true,
            &[(
                "spec.exportTo",
                "destination rule with workload selector cannot have multiple entries in exportTo",
            )],
        ),
    ];
    for (entries, selector, expected) in cases {
        let errors = run(entries.clone(), selector);
        assert_eq!(findings(&errors), expected, "{entries} selector={selector}");
    }
}

#[test]
fn workload_selector_refuses_empty_keys_and_wildcards_and_warns_when_empty() {
    assert_valid(json!({"host": "r", "workloadSelector": {"matchLabels": {"app": "r"}}}));
    assert_errors(
        json!({"host": "r", "workloadSelector": {"matchLabels": {"": "x", "app": "r*"}}}),
        &[
            (
                "spec.workloadSelector.matchLabels[]",
                r#"empty key is not supported in selector: "=x""#,
            ),
            (
                "spec.workloadSelector.matchLabels[app]",
                r#"wildcard is not supported in selector: "app=r*""#,
            ),
        ],
    );
    let report = check(json!({"host": "r", "workloadSelector": {}}));
    assert_eq!(findings(&report.errors), []);
    assert_eq!(
        findings(&report.warnings),
        [(
            "spec.workloadSelector",
            "workload selector specified without labels"
        )]
    );
}

// ---- recursion and quoting ------------------------------------------------------

#[test]
fn subset_and_port_level_policies_are_checked_with_their_paths() {
    assert_errors(
        json!({"host": "r", "subsets": [
            {"name": "a", "trafficPolicy": {}},
            {"name": "b", "trafficPolicy": {"portLevelSettings": [
                {"port": {"number": 80}, "connectionPool": {"tcp": {"maxConnections": -1}}},
            ]}},
        ]}),
        &[
            (
                "spec.subsets[0].trafficPolicy",
                "traffic policy must have at least one field",
            ),
            (
                "spec.subsets[1].trafficPolicy.portLevelSettings[0].connectionPool.tcp.maxConnections",
                "max connections must be non-negative",
            ),
        ],
    );
}

#[test]
fn go_quote_matches_strconv_quote() {
    assert_eq!(syntax::go_quote("plain"), r#""plain""#);
    assert_eq!(
        syntax::go_quote("a\"b\\c\n\t\u{1}\u{7f}é\u{a0}"),
        r#""a\"b\\c\n\t\x01\x7fé\u00a0""#
    );
}
