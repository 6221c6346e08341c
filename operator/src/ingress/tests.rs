//! The ingress decisions on the shapes the Gateway API conformance suite applies.

use std::collections::BTreeMap;

use gateway_api::apis::experimental::httproutes::HttpRoute;
use gateway_api::apis::standard::gateways::Gateway;
use gateway_api::apis::standard::referencegrants::ReferenceGrant;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::attach::{self, NamespaceLabels};
use super::compile::{self, View};
use super::listeners::{self, Secrets};
use super::status;
use crate::config_server::Applied;
use crate::status::Observed;

fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
    serde_yaml::from_str(text).unwrap()
}

const PEM_CERT: &str =
    "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ2Vy\n-----END CERTIFICATE-----\n";
const PEM_KEY: &str =
    "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEG\n-----END PRIVATE KEY-----\n";

fn secret(ns: &str, name: &str, crt: &str, key: &str) -> ((String, String), Secret) {
    let data = BTreeMap::from([
        ("tls.crt".to_owned(), ByteString(crt.as_bytes().to_vec())),
        ("tls.key".to_owned(), ByteString(key.as_bytes().to_vec())),
    ]);
    (
        (ns.to_owned(), name.to_owned()),
        Secret {
            data: Some(data),
            ..Secret::default()
        },
    )
}

fn grant(
    ns: &str,
    from_kind: &str,
    from_ns: &str,
    to_kind: &str,
    name: Option<&str>,
) -> ReferenceGrant {
    let to_group = if to_kind == "Service" || to_kind == "Secret" {
        "\"\""
    } else {
        "gateway.networking.k8s.io"
    };
    yaml(&format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: ReferenceGrant
metadata: {{name: g, namespace: {ns}}}
spec:
  from: [{{group: gateway.networking.k8s.io, kind: {from_kind}, namespace: {from_ns}}}]
  to: [{{group: {to_group}, kind: {to_kind}{}}}]",
        name.map(|n| format!(", name: {n}")).unwrap_or_default()
    ))
}

fn gateway(listeners: &str) -> Gateway {
    yaml(&format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: infra, generation: 2, uid: u}}
spec:
  gatewayClassName: waypoint
  listeners:
{listeners}"
    ))
}

fn route(ns: &str, name: &str, spec: &str) -> HttpRoute {
    yaml(&format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {ns}, generation: 1}}
spec:
{spec}"
    ))
}

fn service(ns: &str, name: &str, port: i32) -> Service {
    yaml(&format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec: {{ports: [{{name: http, port: {port}}}]}}"
    ))
}

/// A view without Services, EndpointSlices or grants.
fn nothing_to_send_to() -> View<'static> {
    View {
        services: &[],
        slices: &[],
        grants: &[],
        cluster_domain: "cluster.local",
    }
}

#[test]
fn listeners_get_the_reasons_the_suite_checks() {
    let gw = gateway(
        "  - {name: http, port: 80, protocol: HTTP}
  - {name: invalid, port: 1111, protocol: UNKNOWN}
  - {name: kinds, port: 81, protocol: HTTP, allowedRoutes: {kinds: [{kind: HTTPRoute}, {kind: TCPRoute}]}}
  - {name: only-bad-kinds, port: 82, protocol: HTTP, allowedRoutes: {kinds: [{kind: TCPRoute}]}}
  - {name: missing, port: 443, protocol: HTTPS, hostname: a.org, tls: {certificateRefs: [{name: nope}]}}
  - {name: other-ns, port: 443, protocol: HTTPS, hostname: b.org, tls: {certificateRefs: [{name: cert, namespace: web}]}}
  - {name: malformed, port: 443, protocol: HTTPS, hostname: c.org, tls: {certificateRefs: [{name: bad}]}}
  - {name: kind, port: 443, protocol: HTTPS, hostname: d.org, tls: {certificateRefs: [{group: '', kind: ConfigMap, name: cert}]}}
  - {name: good, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: cert}]}}",
    );
    let secrets: Secrets = [
        secret("infra", "cert", PEM_CERT, PEM_KEY),
        secret("web", "cert", PEM_CERT, PEM_KEY),
        secret("infra", "bad", "Hello world\n", "Hello world\n"),
    ]
    .into_iter()
    .collect();
    let v = listeners::judge(&gw, &secrets, &[]);
    let reason = |i: usize| v[i].resolved_refs.as_ref().err().map(|r| r.reason);
    assert!(v[0].usable());
    assert_eq!(
        v[1].accepted.as_ref().unwrap_err().reason,
        "UnsupportedProtocol"
    );
    assert!(!v[1].takes_http_routes);
    assert_eq!(
        (reason(2), v[2].takes_http_routes),
        (Some("InvalidRouteKinds"), true)
    );
    assert_eq!(
        (reason(3), v[3].takes_http_routes),
        (Some("InvalidRouteKinds"), false)
    );
    assert_eq!(reason(4), Some("InvalidCertificateRef"));
    assert_eq!(reason(5), Some("RefNotPermitted"));
    assert_eq!(reason(6), Some("InvalidCertificateRef"));
    assert_eq!(reason(7), Some("InvalidCertificateRef"));
    assert_eq!(reason(8), None);
    assert_eq!(v[8].certificate.as_ref().unwrap().cert_chain, PEM_CERT);

    // A ReferenceGrant in the Secret's namespace lets the Gateway use it.
    let with_grant = listeners::judge(
        &gw,
        &secrets,
        &[grant("web", "Gateway", "infra", "Secret", None)],
    );
    assert!(with_grant[5].resolved_refs.is_ok());
    // One naming another Secret does not.
    let other = listeners::judge(
        &gw,
        &secrets,
        &[grant("web", "Gateway", "infra", "Secret", Some("x"))],
    );
    assert_eq!(
        other[5].resolved_refs.as_ref().unwrap_err().reason,
        "RefNotPermitted"
    );
    assert_eq!(
        listeners::secret_refs(&gw),
        [
            ("infra", "bad"),
            ("infra", "cert"),
            ("infra", "nope"),
            ("web", "cert")
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
}

#[test]
fn listeners_on_one_port_conflict_on_protocol_or_hostname() {
    let gw = gateway(
        "  - {name: a, port: 80, protocol: HTTP}
  - {name: b, port: 80, protocol: HTTP, hostname: x.org}
  - {name: c, port: 80, protocol: HTTP, hostname: x.org}
  - {name: d, port: 80, protocol: HTTPS, tls: {certificateRefs: [{name: cert}]}}",
    );
    let v = listeners::judge(&gw, &Secrets::new(), &[]);
    let conflict = |i: usize| v[i].conflicted.as_ref().map(|c| c.reason);
    assert_eq!(
        [conflict(0), conflict(1), conflict(2), conflict(3)],
        [
            None,
            None,
            Some("HostnameConflict"),
            Some("ProtocolConflict")
        ]
    );
}

fn parents_of<'r>(
    gw: &Gateway,
    routes: &'r [HttpRoute],
    namespaces: &NamespaceLabels,
) -> Vec<attach::Parent<'r>> {
    let v = listeners::judge(gw, &Secrets::new(), &[]);
    attach::parents(gw, &v, routes, namespaces)
}

#[test]
fn routes_attach_by_section_namespace_and_hostname() {
    let gw = gateway(
        "  - {name: same, port: 80, protocol: HTTP}
  - {name: selected, port: 8080, protocol: HTTP, hostname: '*.example.com', allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {tier: backend}}}}}",
    );
    let routes = [
        route("infra", "plain", "  parentRefs: [{name: gw}]"),
        route(
            "infra",
            "wrong-section",
            "  parentRefs: [{name: gw, sectionName: nope}]",
        ),
        route(
            "web",
            "other-ns",
            "  parentRefs: [{name: gw, namespace: infra, sectionName: same}]",
        ),
        route(
            "web",
            "selected",
            "  parentRefs: [{name: gw, namespace: infra}]\n  hostnames: [foo.example.com]",
        ),
        route(
            "web",
            "wrong-host",
            "  parentRefs: [{name: gw, namespace: infra, port: 8080}]\n  hostnames: [foo.example.org]",
        ),
        route(
            "infra",
            "elsewhere",
            "  parentRefs: [{name: another-gateway}]",
        ),
    ];
    let namespaces: NamespaceLabels = BTreeMap::from([(
        "web".to_owned(),
        BTreeMap::from([("tier".to_owned(), "backend".to_owned())]),
    )]);
    let parents = parents_of(&gw, &routes, &namespaces);
    let outcome: Vec<_> = parents
        .iter()
        .map(|p| {
            (
                p.route.metadata.name.clone().unwrap(),
                p.outcome.clone().map_err(|r| r.reason),
            )
        })
        .collect();
    assert_eq!(
        outcome,
        [
            ("plain".to_owned(), Ok(vec![0])),
            ("wrong-section".to_owned(), Err("NoMatchingParent")),
            ("other-ns".to_owned(), Err("NotAllowedByListeners")),
            ("selected".to_owned(), Ok(vec![1])),
            ("wrong-host".to_owned(), Err("NoMatchingListenerHostname")),
        ]
    );
}

#[test]
fn compiled_routes_group_rules_by_hostname_oldest_route_first() {
    let gw = gateway(
        "  - {name: http, port: 80, protocol: HTTP}
  - {name: wild, port: 80, protocol: HTTP, hostname: '*.wildcard.io'}",
    );
    let mut older = route(
        "infra",
        "b-older",
        "  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: v1, port: 8080}]",
    );
    older.metadata.creation_timestamp = Some(Time("2026-01-01T00:00:00Z".parse().unwrap()));
    let mut newer = route(
        "infra",
        "a-newer",
        "  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: v2, port: 8080, weight: 3}, {name: missing, port: 8080}, {kind: Unknown, name: v1}]
  - {}",
    );
    newer.metadata.creation_timestamp = Some(Time("2026-02-01T00:00:00Z".parse().unwrap()));
    let cross = route(
        "web",
        "cross",
        "  parentRefs: [{name: gw, namespace: infra, sectionName: wild}]
  hostnames: [foo.wildcard.io]
  rules: [{backendRefs: [{name: v1, namespace: infra, port: 8080}]}]",
    );
    let routes = [newer, older, cross];
    let namespaces = NamespaceLabels::new();
    let mut gw_all = gw.clone();
    // The wildcard listener takes routes from every namespace.
    gw_all.spec.listeners[1].allowed_routes = Some(yaml("{namespaces: {from: All}}"));
    let v = listeners::judge(&gw_all, &Secrets::new(), &[]);
    let parents = attach::parents(&gw_all, &v, &routes, &namespaces);
    let services = [service("infra", "v1", 8080), service("infra", "v2", 8080)];
    let view = View {
        services: &services,
        slices: &[],
        grants: &[],
        cluster_domain: "cluster.local",
    };
    let config = compile::compile(&v, &parents, &view);
    assert_eq!(config.listeners.len(), 1, "one dataplane listener per port");
    let l = &config.listeners[0];
    assert_eq!((l.name.as_str(), l.address.port()), ("http-80", 80));
    let hosts: Vec<_> = l.routes.iter().map(|r| r.hosts.join(",")).collect();
    // Routes without hostnames take the wildcard listener's; the exact hostname of
    // the cross-namespace route is its own virtual host, which wins for its name.
    assert_eq!(hosts, ["*.wildcard.io", "foo.wildcard.io", ""]);
    assert_eq!(l.routes[0].rules.len(), 3);
    // Without a grant the cross-namespace route's backend is invalid.
    let foo = &l.routes[1];
    assert_eq!(foo.rules.len(), 1);
    assert!(
        foo.rules[0].backends[0]
            .cluster
            .starts_with("invalid|RefNotPermitted|")
    );
    let any = &l.routes[2];
    assert!(
        any.cluster.is_empty(),
        "no default cluster: rules without backends answer 500"
    );
    // The older route's rule comes first.
    assert_eq!(any.rules.len(), 3);
    assert_eq!(
        any.rules[0].backends[0].cluster,
        "outbound|8080||v1.infra.svc.cluster.local"
    );
    let clusters: Vec<_> = any.rules[1]
        .backends
        .iter()
        .map(|b| (b.cluster.as_str(), b.weight))
        .collect();
    assert_eq!(
        clusters,
        [
            ("outbound|8080||v2.infra.svc.cluster.local", 3),
            ("invalid|BackendNotFound|infra/missing", 1),
            ("invalid|InvalidKind|infra/v1", 1),
        ]
    );
    assert!(any.rules[2].backends.is_empty());
    let defined: Vec<_> = config.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        defined,
        [
            "outbound|8080||v1.infra.svc.cluster.local",
            "outbound|8080||v2.infra.svc.cluster.local"
        ]
    );
}

fn at(s: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap())
}

#[test]
fn gateway_status_counts_routes_and_judges_listeners() {
    let gw = gateway(
        "  - {name: http, port: 80, protocol: HTTP}
  - {name: invalid, port: 1111, protocol: UNKNOWN}",
    );
    let v = listeners::judge(&gw, &Secrets::new(), &[]);
    let ready = Observed {
        ready_replicas: 1,
        cluster_ips: vec!["10.96.0.10".to_owned()],
        config: Applied::Yes,
        ..Observed::default()
    };
    let s = status::gateway_status(&gw, &v, &[2, 0], &ready, &at(1));
    let conds = s.conditions.clone().unwrap();
    let get = |t: &str| conds.iter().find(|c| c.type_ == t).unwrap();
    assert_eq!(
        (
            get("Accepted").status.as_str(),
            get("Accepted").reason.as_str()
        ),
        ("True", "ListenersNotValid")
    );
    assert_eq!(get("Programmed").status, "True");
    assert!(conds.iter().all(|c| c.observed_generation == Some(2)));
    let ls = s.listeners.clone().unwrap();
    assert_eq!(
        (
            ls[0].attached_routes,
            ls[0].supported_kinds.as_ref().unwrap().len()
        ),
        (2, 1)
    );
    assert!(ls[1].supported_kinds.as_ref().unwrap().is_empty());
    assert_eq!(s.addresses.as_ref().unwrap()[0].value, "10.96.0.10");

    // Nothing changed: the same status, so no API write.
    let mut again = gw.clone();
    again.status = Some(s.clone());
    assert_eq!(
        status::gateway_status(&again, &v, &[2, 0], &ready, &at(9)),
        s
    );

    // No valid listener: not accepted, not programmed.
    let bad = gateway("  - {name: invalid, port: 1111, protocol: UNKNOWN}");
    let vb = listeners::judge(&bad, &Secrets::new(), &[]);
    let sb = status::gateway_status(&bad, &vb, &[0], &ready, &at(1));
    let c = sb.conditions.unwrap();
    assert_eq!(
        (c[0].status.as_str(), c[0].reason.as_str()),
        ("False", "ListenersNotValid")
    );
    assert_eq!(c[1].status, "False");
}

#[test]
fn backend_refs_resolve_with_grants() {
    let r = route(
        "infra",
        "r",
        "  parentRefs: [{name: gw}]
  rules: [{backendRefs: [{name: web-backend, namespace: web, port: 8080}]}]",
    );
    let services = [service("web", "web-backend", 8080)];
    assert_eq!(
        super::backends::resolved_refs(&r, &services, &[])
            .unwrap_err()
            .reason,
        "RefNotPermitted"
    );
    let g = grant("web", "HTTPRoute", "infra", "Service", Some("web-backend"));
    assert!(super::backends::resolved_refs(&r, &services, &[g]).is_ok());
    let other_name = grant("web", "HTTPRoute", "infra", "Service", Some("other"));
    assert!(super::backends::resolved_refs(&r, &services, &[other_name]).is_err());
}

#[test]
fn https_listeners_carry_their_certificates_but_the_bootstrap_does_not() {
    let gw = gateway(
        "  - {name: https, port: 443, protocol: HTTPS, hostname: a.org, tls: {certificateRefs: [{name: cert}]}}
  - {name: default, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: cert}]}}",
    );
    let secrets: Secrets = [secret("infra", "cert", PEM_CERT, PEM_KEY)]
        .into_iter()
        .collect();
    let v = listeners::judge(&gw, &secrets, &[]);
    let view = nothing_to_send_to();
    let config = compile::compile(&v, &[], &view);
    let l = &config.listeners[0];
    assert_eq!(
        (l.name.as_str(), l.protocol),
        ("https-443", waypoint_config::ListenerProtocol::Https)
    );
    let certs = &l.tls.as_ref().unwrap().certificates;
    let hosts: Vec<_> = certs.iter().map(|c| c.hostname.clone()).collect();
    assert_eq!(hosts, [Some("a.org".to_owned()), None]);
    assert_eq!(certs[0].private_key, PEM_KEY);
    let boot = crate::builders::bootstrap(&config);
    assert!(
        boot.listeners[0]
            .tls
            .as_ref()
            .unwrap()
            .certificates
            .is_empty()
    );
    assert!(!crate::builders::config_yaml(&boot).contains("PRIVATE KEY"));
}

#[test]
fn a_request_belongs_to_the_most_specific_listener_only() {
    // The conformance suite's listener isolation with intersecting hostnames: each
    // route lists every hostname, yet serves only the names its listener is the most
    // specific for.
    let gw = gateway(
        "  - {name: empty, port: 80, protocol: HTTP}
  - {name: wild, port: 80, protocol: HTTP, hostname: '*.example.com'}
  - {name: wild-foo, port: 80, protocol: HTTP, hostname: '*.foo.example.com'}
  - {name: abc, port: 80, protocol: HTTP, hostname: abc.foo.example.com}
  - {name: unused, port: 80, protocol: HTTP, hostname: '*.bar.example.com'}",
    );
    let hosts = "  hostnames: [bar.com, '*.example.com', '*.foo.example.com', abc.foo.example.com]\n  rules: [{}]";
    let routes: Vec<_> = ["empty", "wild", "wild-foo", "abc"]
        .iter()
        .map(|s| {
            route(
                "infra",
                s,
                &format!("  parentRefs: [{{name: gw, sectionName: {s}}}]\n{hosts}"),
            )
        })
        .collect();
    let v = listeners::judge(&gw, &Secrets::new(), &[]);
    let parents = attach::parents(&gw, &v, &routes, &NamespaceLabels::new());
    let view = nothing_to_send_to();
    let config = compile::compile(&v, &parents, &view);
    let by_host: Vec<(String, usize)> = config.listeners[0]
        .routes
        .iter()
        .map(|r| (r.hosts.join(","), r.rules.len()))
        .collect();
    assert_eq!(
        by_host,
        [
            ("*.bar.example.com".to_owned(), 0),
            ("*.example.com".to_owned(), 1),
            ("*.foo.example.com".to_owned(), 1),
            ("abc.foo.example.com".to_owned(), 1),
            ("bar.com".to_owned(), 1),
        ],
        "one route per name, each from its own listener; *.bar.example.com, with no route, answers 404"
    );
}

#[test]
fn mirrors_and_rewrites_compile_with_their_backends() {
    let gw = gateway("  - {name: http, port: 80, protocol: HTTP}");
    let routes = [route(
        "infra",
        "r",
        "  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /mirror}}]
    filters:
    - {type: RequestMirror, requestMirror: {backendRef: {name: v2, port: 8080}, percent: 35}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: gone, port: 8080}}}
    - {type: URLRewrite, urlRewrite: {hostname: elsewhere.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}
    backendRefs: [{name: v1, port: 8080}]",
    )];
    let v = listeners::judge(&gw, &Secrets::new(), &[]);
    let parents = attach::parents(&gw, &v, &routes, &NamespaceLabels::new());
    let services = [service("infra", "v1", 8080), service("infra", "v2", 8080)];
    let view = View {
        services: &services,
        slices: &[],
        grants: &[],
        cluster_domain: "cluster.local",
    };
    let config = compile::compile(&v, &parents, &view);
    let filters = &config.listeners[0].routes[0].rules[0].filters;
    assert!(
        matches!(&filters[0], waypoint_config::Filter::UrlRewrite { rewrite } if rewrite.hostname.as_deref() == Some("elsewhere.example"))
    );
    assert_eq!(
        filters[1..],
        [
            waypoint_config::Filter::RequestMirror {
                cluster: "outbound|8080||v2.infra.svc.cluster.local".into(),
                fraction: Some(waypoint_config::Fraction {
                    numerator: 35,
                    denominator: 100
                }),
            },
            waypoint_config::Filter::RequestMirror {
                cluster: "invalid|BackendNotFound|gone".into(),
                fraction: None,
            },
        ]
    );
    // The mirror's Service gets its cluster.
    assert!(
        config
            .clusters
            .iter()
            .any(|c| c.name == "outbound|8080||v2.infra.svc.cluster.local")
    );
}
