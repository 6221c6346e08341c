use http::HeaderMap;
use waypoint_config::{RouteRule, RuleOrder};

use super::{Matcher, Request, Selected};

fn rules(yaml: &str) -> Vec<RouteRule> {
    serde_yaml::from_str(yaml).unwrap()
}

fn pick(m: &Matcher, method: &str, uri: &str, headers: &[(&str, &str)]) -> Option<usize> {
    let (path, query) = uri
        .split_once('?')
        .map_or((uri, None), |(p, q)| (p, Some(q)));
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    m.select(&Request {
        method,
        path,
        query,
        headers: &h,
    })
    .map(|Selected { rule, .. }| rule)
}

#[test]
fn exact_beats_prefix_and_longer_prefix_beats_shorter() {
    let m = Matcher::new(
        &rules(
            "- matches: [{path: {type: PathPrefix, value: /}}]
- matches: [{path: {type: PathPrefix, value: /api}}]
- matches: [{path: {type: PathPrefix, value: /api/v2/}}]
- matches: [{path: {type: Exact, value: /api/v2/users}}]
- matches: [{path: {type: RegularExpression, value: \"/api/.*\"}}]",
        ),
        RuleOrder::Precedence,
    );
    assert_eq!(pick(&m, "GET", "/", &[]), Some(0));
    assert_eq!(pick(&m, "GET", "/api", &[]), Some(1));
    assert_eq!(pick(&m, "GET", "/api/v1", &[]), Some(1));
    // Element-wise prefixes: /apiary is not under /api.
    assert_eq!(pick(&m, "GET", "/apiary", &[]), Some(0));
    assert_eq!(pick(&m, "GET", "/api/v2/groups", &[]), Some(2));
    assert_eq!(pick(&m, "GET", "/api/v2", &[]), Some(2));
    assert_eq!(pick(&m, "GET", "/api/v2/users", &[]), Some(3));
}

#[test]
fn then_method_then_header_count_then_query_count_then_order() {
    let m = Matcher::new(&rules(
        "- matches: [{path: {type: PathPrefix, value: /x}}]
- matches: [{path: {type: PathPrefix, value: /x}, queryParams: [{name: q, value: \"1\"}]}]
- matches: [{path: {type: PathPrefix, value: /x}, headers: [{name: X-A, value: a}]}]
- matches: [{path: {type: PathPrefix, value: /x}, headers: [{name: x-a, value: a}, {name: x-b, value: b}]}]
- matches: [{path: {type: PathPrefix, value: /x}, method: POST}]
- matches: [{path: {type: PathPrefix, value: /x}, method: POST}]",
    ), RuleOrder::Precedence);
    assert_eq!(pick(&m, "GET", "/x", &[]), Some(0));
    assert_eq!(pick(&m, "GET", "/x?q=1", &[]), Some(1));
    assert_eq!(pick(&m, "GET", "/x?q=1", &[("x-a", "a")]), Some(2));
    assert_eq!(
        pick(&m, "GET", "/x?q=1", &[("x-a", "a"), ("x-b", "b")]),
        Some(3)
    );
    // Method outranks headers; of two equal rules the first wins.
    assert_eq!(
        pick(&m, "POST", "/x", &[("x-a", "a"), ("x-b", "b")]),
        Some(4)
    );
}

#[test]
fn values_exact_and_regex_and_no_match_is_none() {
    let m = Matcher::new(
        &rules(
            "- matches:
  - path: {type: Exact, value: /only}
    headers: [{type: RegularExpression, name: x-version, value: \"v[0-9]+\"}]
    queryParams: [{name: env, value: prod}]",
        ),
        RuleOrder::Precedence,
    );
    assert_eq!(
        pick(&m, "GET", "/only?env=prod", &[("x-version", "v12")]),
        Some(0)
    );
    // Regexes match the whole value.
    assert_eq!(
        pick(&m, "GET", "/only?env=prod", &[("x-version", "xv12")]),
        None
    );
    assert_eq!(
        pick(&m, "GET", "/only?env=dev", &[("x-version", "v1")]),
        None
    );
    assert_eq!(pick(&m, "GET", "/only", &[("x-version", "v1")]), None);
    assert_eq!(pick(&m, "GET", "/only?env=prod", &[]), None);
}

#[test]
fn a_rule_without_matches_takes_everything_as_a_slash_prefix() {
    let m = Matcher::new(
        &rules(
            "- {}
- matches: [{path: {type: PathPrefix, value: /}}]
- matches: [{path: {type: PathPrefix, value: /a}}]",
        ),
        RuleOrder::Precedence,
    );
    assert_eq!(pick(&m, "GET", "/b", &[]), Some(0));
    assert_eq!(pick(&m, "GET", "/a/b", &[]), Some(2));
}

#[test]
fn declared_order_takes_the_first_match_and_prefix_is_by_character() {
    // A VirtualService: the catch-all first would shadow the rest under precedence
    // only if it were more specific; in written order it takes everything after it.
    let m = Matcher::new(
        &rules(
            "- matches: [{path: {type: Prefix, value: /api}}]
- matches: [{path: {type: Exact, value: /api/v2/users}}]
- {}",
        ),
        RuleOrder::Declared,
    );
    assert_eq!(pick(&m, "GET", "/api/v2/users", &[]), Some(0));
    // Envoy's `prefix` is not element-wise: /apiary is under /api.
    assert_eq!(pick(&m, "GET", "/apiary", &[]), Some(0));
    assert_eq!(pick(&m, "GET", "/other", &[]), Some(2));
    let m = Matcher::new(
        &rules(
            "- matches: [{path: {type: Prefix, value: /api}}]
- matches: [{path: {type: Exact, value: /api/v2/users}}]",
        ),
        RuleOrder::Precedence,
    );
    assert_eq!(pick(&m, "GET", "/api/v2/users", &[]), Some(1));
}
