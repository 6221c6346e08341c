use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use gateway_api::apis::experimental::httproutes::HttpRoute;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use waypoint_config as model;
use waypoint_crds::{DestinationRule, VirtualService};

use crate::compile::{View, compile};

const REVIEWS: &str = "reviews.httpbin.svc.cluster.local";

fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
    serde_yaml::from_str(text).unwrap()
}

fn reviews() -> Service {
    yaml(
        "metadata: {name: reviews, namespace: httpbin, labels: {istio.io/use-waypoint: httpbin-waypoint}}
spec: {clusterIP: 10.96.0.9, ports: [{name: http, port: 9080}]}",
    )
}

/// Three pods, one per version.
fn slice() -> EndpointSlice {
    yaml(
        "metadata: {name: reviews-x, namespace: httpbin, labels: {kubernetes.io/service-name: reviews}}
addressType: IPv4
ports: [{name: http, port: 9080}]
endpoints:
- {addresses: [10.244.0.1], targetRef: {kind: Pod, name: reviews-v1}}
- {addresses: [10.244.0.2], targetRef: {kind: Pod, name: reviews-v2}}
- {addresses: [10.244.0.3], targetRef: {kind: Pod, name: reviews-v3}}",
    )
}

fn pod_labels() -> HashMap<String, BTreeMap<String, String>> {
    ["v1", "v2", "v3"]
        .into_iter()
        .map(|v| {
            (
                format!("reviews-{v}"),
                BTreeMap::from([
                    ("app".to_owned(), "reviews".to_owned()),
                    ("version".to_owned(), v.to_owned()),
                ]),
            )
        })
        .collect()
}

fn vs(name: &str, age: &str, spec: &str) -> VirtualService {
    yaml(&format!(
        "metadata: {{name: {name}, namespace: httpbin, creationTimestamp: \"2026-12-0{age}T00:00:00Z\"}}
spec:
{spec}"
    ))
}

fn rule(spec: &str) -> DestinationRule {
    yaml(&format!(
        "metadata: {{name: reviews, namespace: httpbin}}
spec:
{spec}"
    ))
}

fn compiled_with(
    vss: &[VirtualService],
    rules: &[DestinationRule],
    routes: &[HttpRoute],
) -> model::Config {
    let services = [reviews()];
    let slices = [slice()];
    let labels = pod_labels();
    compile(
        &crate::fixtures::seed_gateway(&[]),
        &View {
            namespace: None,
            services: &services,
            slices: &slices,
            destination_rules: rules,
            http_routes: routes,
            virtual_services: vss,
            pod_labels: &labels,
            cluster_domain: "cluster.local",
        },
    )
}

fn route(c: &model::Config) -> &model::Route {
    &c.listeners[0].routes[0]
}

fn cluster<'a>(c: &'a model::Config, name: &str) -> &'a model::Cluster {
    c.clusters
        .iter()
        .find(|cl| cl.name == name)
        .unwrap_or_else(|| panic!("no cluster {name} in {:?}", c.clusters))
}

fn addresses(c: &model::Cluster) -> Vec<String> {
    c.endpoints.iter().map(|e| e.address.to_string()).collect()
}

/// The Bookinfo shape: a header routes one user to v2, everyone else is split
/// 75/25 between v1 and v3; each subset's cluster holds its pods only and takes
/// the subset's policy over the DestinationRule's, part by part.
#[test]
fn subsets_become_clusters_of_their_pods_with_the_subset_policy_over_the_rules() {
    let c = compiled_with(
        &[vs(
            "reviews",
            "1",
            "  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 75}
    - {destination: {host: reviews, subset: v3}, weight: 25}",
        )],
        &[rule(
            "  host: reviews
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 3, interval: 10s, baseEjectionTime: 30s}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}, trafficPolicy: {loadBalancer: {simple: RANDOM}}}
  - name: v3
    labels: {version: v3}
    trafficPolicy:
      portLevelSettings: [{port: {number: 9080}, connectionPool: {tcp: {maxConnections: 7}}}]",
        )],
        &[],
    );
    let r = route(&c);
    assert_eq!(r.rule_order, model::RuleOrder::Declared);
    assert_eq!(r.rules.len(), 2);
    assert_eq!(r.rules[0].matches[0].headers[0].name, "end-user");
    assert_eq!(r.rules[0].matches[0].headers[0].value, "jason");
    let v = |s: &str| format!("inbound-vip|9080|http/{s}|{REVIEWS}");
    assert_eq!(r.rules[0].backends[0].cluster, v("v2"));
    let split: Vec<(String, u32)> = r.rules[1]
        .backends
        .iter()
        .map(|b| (b.cluster.clone(), b.weight))
        .collect();
    assert_eq!(split, [(v("v1"), 75), (v("v3"), 25)]);

    let v1 = cluster(&c, &v("v1"));
    assert_eq!(addresses(v1), ["10.244.0.1:9080"]);
    assert_eq!(v1.load_balancer, model::LoadBalancer::RoundRobin);
    assert_eq!(
        v1.outlier_detection
            .as_ref()
            .unwrap()
            .consecutive_5xx_errors,
        Some(3)
    );
    // The subset's loadBalancer replaces the rule's; its outlier detection stays.
    let v2 = cluster(&c, &v("v2"));
    assert_eq!(addresses(v2), ["10.244.0.2:9080"]);
    assert_eq!(v2.load_balancer, model::LoadBalancer::Random);
    assert!(v2.outlier_detection.is_some());
    // A port-level entry of the subset replaces all four parts, even with nothing.
    let v3 = cluster(&c, &v("v3"));
    assert_eq!(addresses(v3), ["10.244.0.3:9080"]);
    assert_eq!(v3.load_balancer, model::LoadBalancer::LeastRequest);
    assert!(v3.outlier_detection.is_none());
    assert_eq!(v3.connection_pool.max_connections, 7);
    // The Service's own cluster keeps every endpoint.
    let all = cluster(&c, &format!("inbound-vip|9080|http|{REVIEWS}"));
    assert_eq!(all.endpoints.len(), 3);
}

/// A subset no DestinationRule defines gets an empty cluster (503), not all pods.
#[test]
fn an_undefined_subset_has_no_endpoints() {
    let c = compiled_with(
        &[vs(
            "reviews",
            "1",
            "  hosts: [reviews.httpbin.svc.cluster.local]
  http: [{route: [{destination: {host: reviews, subset: v9}}]}]",
        )],
        &[],
        &[],
    );
    let v9 = cluster(&c, &format!("inbound-vip|9080|http/v9|{REVIEWS}"));
    assert!(v9.endpoints.is_empty());
}

#[test]
fn route_features_translate_as_istio_translates_them() {
    let c = compiled_with(
        &[vs(
            "reviews",
            "1",
            "  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /api}, sourceLabels: {app: x}}]
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /api}, method: {exact: POST}, queryParams: {v: {regex: \"[0-9]+\"}}}]
    rewrite: {uri: /v2, authority: internal}
    timeout: 3s
    retries: {attempts: 3, retryOn: \"5xx,503\", perTryTimeout: 1s, retryIgnorePreviousHosts: false}
    fault: {abort: {httpStatus: 418, percentage: {value: 50}}, delay: {fixedDelay: 1s}}
    mirror: {host: reviews, subset: v3}
    headers: {request: {set: {x-a: b, host: ignored-here}, remove: [x-drop]}}
    route: [{destination: {host: reviews, port: {number: 9080}}}]
  - match: [{uri: {prefix: /maintenance}}]
    directResponse: {status: 503, body: {bytes: ZG93bg==}}
  - match: [{uri: {exact: /none}}]
    retries: {attempts: 0}
    mirror: {host: reviews}
    mirrorPercentage: {value: 0}
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /}}]
    redirect: {uri: /moved, authority: elsewhere}
  - route: [{destination: {host: reviews}}]",
        )],
        &[],
        &[],
    );
    let r = route(&c);
    // The sourceLabels match is dropped; the catch-all prefix ends the list.
    assert_eq!(r.rules.len(), 4, "{:#?}", r.rules);
    let api = &r.rules[0];
    assert_eq!(
        api.matches[0].path,
        Some(model::PathMatch::Prefix("/api".into()))
    );
    assert_eq!(api.matches[0].method.as_deref(), Some("POST"));
    assert_eq!(
        api.matches[0].query_params[0].kind,
        model::MatchType::RegularExpression
    );
    assert_eq!(api.timeout, Some(Duration::from_secs(3)));
    assert_eq!(api.backend_timeout, Some(Duration::from_secs(1)));
    let retry = api.retry.as_ref().unwrap();
    assert_eq!(retry.attempts, 3);
    assert_eq!(retry.retry_on, ["5xx", "retriable-status-codes"]);
    assert_eq!(retry.retriable_status_codes, [503]);
    assert!(!retry.avoid_previous_hosts);
    // A delay without a share injects nothing; the abort takes half a million.
    let fault = api.fault.as_ref().unwrap();
    assert!(fault.delay.is_none());
    let abort = fault.abort.as_ref().unwrap();
    assert_eq!(
        (
            abort.http_status,
            abort.percentage.numerator,
            abort.percentage.denominator
        ),
        (418, 500_000, 1_000_000)
    );
    assert!(api.filters.iter().any(|f| matches!(f,
        model::Filter::UrlRewrite { rewrite } if rewrite.hostname.as_deref() == Some("internal")
            && rewrite.path == Some(model::PathRewrite::PrefixRewrite { prefix_rewrite: "/v2".into() }))));
    assert!(api.filters.iter().any(|f| matches!(f,
        model::Filter::RequestMirror { cluster, fraction: None } if *cluster == format!("inbound-vip|9080|http/v3|{REVIEWS}"))));
    assert!(api.filters.iter().any(|f| matches!(f,
        model::Filter::RequestHeaderModifier { modifier }
            if modifier.set.len() == 1 && modifier.set[0].name == "x-a" && modifier.remove == ["x-drop"])));
    // `host` in set is a host rewrite, not a header.
    assert!(api.filters.iter().any(|f| matches!(f,
        model::Filter::UrlRewrite { rewrite } if rewrite.hostname.as_deref() == Some("ignored-here"))));

    assert_eq!(
        r.rules[1].direct_response,
        Some(model::DirectResponse {
            status: 503,
            body: "down".into()
        })
    );
    let none = &r.rules[2];
    assert_eq!(none.retry.as_ref().unwrap().attempts, 0);
    assert!(
        !none
            .filters
            .iter()
            .any(|f| matches!(f, model::Filter::RequestMirror { .. }))
    );

    let moved = &r.rules[3];
    assert!(moved.backends.is_empty());
    assert!(moved.filters.iter().any(|f| matches!(f,
        model::Filter::RequestRedirect { redirect } if redirect.status_code == 301
            && redirect.hostname.as_deref() == Some("elsewhere"))));
    // The mirror's subset cluster exists even though no rule routes to it.
    cluster(&c, &format!("inbound-vip|9080|http/v3|{REVIEWS}"));
}

/// Istio's choice of VirtualService: `mesh` among its gateways, a host naming the
/// Service, the oldest first; and an HTTPRoute attached to the Service wins.
#[test]
fn the_oldest_mesh_virtual_service_for_the_host_applies_unless_an_httproute_attaches() {
    let to = |prefix: &str| {
        format!(
            "  http: [{{match: [{{uri: {{prefix: {prefix}}}}}], route: [{{destination: {{host: reviews}}}}]}}]"
        )
    };
    let vss = [
        vs(
            "ingress-only",
            "1",
            &format!(
                "  hosts: [reviews]\n  gateways: [istio-system/ingress]\n{}",
                to("/ingress")
            ),
        ),
        vs(
            "other-host",
            "1",
            &format!("  hosts: [ratings]\n{}", to("/ratings")),
        ),
        vs(
            "newer",
            "3",
            &format!(
                "  hosts: [\"*.httpbin.svc.cluster.local\"]\n{}",
                to("/newer")
            ),
        ),
        vs(
            "older",
            "2",
            &format!("  hosts: [reviews]\n  gateways: [mesh]\n{}", to("/older")),
        ),
    ];
    let c = compiled_with(&vss, &[], &[]);
    let r = route(&c);
    assert_eq!(r.rules.len(), 1);
    assert_eq!(
        r.rules[0].matches[0].path,
        Some(model::PathMatch::Prefix("/older".into()))
    );

    let http_route: HttpRoute = yaml(
        "metadata: {name: r, namespace: httpbin}
spec:
  parentRefs: [{group: \"\", kind: Service, name: reviews, port: 9080}]
  rules: [{matches: [{path: {type: PathPrefix, value: /gamma}}], backendRefs: [{name: reviews, port: 9080}]}]",
    );
    let c = compiled_with(&vss, &[], &[http_route]);
    let r = route(&c);
    assert_eq!(r.rule_order, model::RuleOrder::Precedence);
    assert_eq!(
        r.rules[0].matches[0].path,
        Some(model::PathMatch::PathPrefix("/gamma".into()))
    );
}

/// A rule the dataplane would refuse (a regex that does not compile) is dropped
/// alone: the config stays loadable and the other rules stay.
#[test]
fn a_rule_the_dataplane_would_refuse_is_dropped_alone() {
    let c = compiled_with(
        &[vs(
            "reviews",
            "1",
            "  hosts: [reviews]
  http:
  - match: [{uri: {regex: \"(\"}}]
    route: [{destination: {host: reviews}}]
  - match: [{authority: {exact: x}}]
    route: [{destination: {host: reviews}}]
  - match: [{uri: {prefix: /delegated}}]
    delegate: {name: elsewhere}
  - match: [{uri: {exact: /ok}}]
    route: [{destination: {host: reviews}}]",
        )],
        &[],
        &[],
    );
    let r = route(&c);
    assert_eq!(r.rules.len(), 1);
    assert_eq!(
        r.rules[0].matches[0].path,
        Some(model::PathMatch::Exact("/ok".into()))
    );
    model::Config::from_yaml(&serde_yaml::to_string(&c).unwrap()).expect("the config loads");
}
