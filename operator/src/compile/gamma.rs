//! HTTPRoutes whose parent is a Service (GAMMA "producer routes": the route lives in
//! the Service's namespace) become the rules of that Service's waypoint route. Gateway
//! API's match shapes are the model's, so matches and redirects carry over as they
//! are; backends become the clusters of their Service ports.
//!
//! A rule's `retry` (attempts over Istio's default policy, `codes`),
//! `timeouts.request` and `timeouts.backendRequest` carry over too, and URLRewrite.
//! Not yet carried here: RequestMirror (the ingress compiler resolves it), CORS and
//! ExtensionRef filters (dropped, with a debug log), consumer routes from other
//! namespaces, route status.

use gateway_api::apis::experimental::httproutes::{
    HttpRoute, HttpRouteParentRefs, HttpRouteRules, HttpRouteRulesBackendRefs,
};
use kube::ResourceExt;
use serde_json::Value;
use waypoint_config as model;

use super::Backend;

fn is_parent(p: &HttpRouteParentRefs, svc: &str, ns: &str, route_ns: &str, port: i32) -> bool {
    p.kind.as_deref() == Some("Service")
        && p.group.as_deref() == Some("")
        && p.name == svc
        && p.namespace.as_deref().unwrap_or(route_ns) == ns
        && p.port.is_none_or(|p| p == port)
}

/// The rules for Service `svc`/`ns` port `port`, oldest route first (Gateway API's
/// tie-break), and the backend clusters they name. Empty: no route attaches.
pub fn rules_for(
    routes: &[HttpRoute],
    svc: &str,
    ns: &str,
    port: i32,
    cluster_domain: &str,
) -> (Vec<model::RouteRule>, Vec<Backend>) {
    let mut attached: Vec<&HttpRoute> = routes
        .iter()
        .filter(|r| r.namespace().as_deref() == Some(ns))
        .filter(|r| {
            r.spec
                .parent_refs
                .iter()
                .flatten()
                .any(|p| is_parent(p, svc, ns, ns, port))
        })
        .collect();
    attached.sort_by_key(|r| {
        (
            r.metadata.creation_timestamp.clone().map(|t| t.0),
            r.name_any(),
        )
    });
    let mut rules = Vec::new();
    let mut backends = Vec::new();
    for route in attached {
        for rule in route.spec.rules.iter().flatten() {
            let mut weighted = Vec::new();
            for b in rule.backend_refs.iter().flatten() {
                let kind = b.kind.as_deref().unwrap_or("Service");
                let group = b.group.as_deref().unwrap_or("");
                let (Some(port), "Service", "") = (b.port, kind, group) else {
                    tracing::debug!(route = %route.name_any(), backend = %b.name, "backend is not a Service port; skipped");
                    continue;
                };
                let backend_ns = b.namespace.clone().unwrap_or_else(|| ns.to_owned());
                let cluster = format!(
                    "inbound-vip|{port}|http|{}.{backend_ns}.svc.{cluster_domain}",
                    b.name
                );
                weighted.push(model::WeightedBackend {
                    cluster: cluster.clone(),
                    weight: u32::try_from(b.weight.unwrap_or(1)).unwrap_or(0),
                    filters: backend_filters(b, &route.name_any()),
                });
                backends.push(Backend {
                    cluster,
                    service: b.name.clone(),
                    namespace: backend_ns,
                    port,
                    subset: None,
                });
            }
            let mut converted = convert(&route.name_any(), rule, weighted);
            // A rule with no backendRefs has nowhere to send: Gateway API answers 500,
            // which an all-zero weight gives.
            if converted.backends.is_empty() && !has_redirect(&converted.filters) {
                converted.backends.push(model::WeightedBackend {
                    cluster: format!("inbound-vip|{port}|http|{svc}.{ns}.svc.{cluster_domain}"),
                    weight: 0,
                    filters: Vec::new(),
                });
            }
            rules.push(converted);
        }
    }
    backends.sort();
    backends.dedup();
    (rules, backends)
}

/// One HTTPRoute rule in the model's shape, sending to `backends`: matches and
/// filters carry over as they are, with the rule's `retry` and `timeouts.request`.
pub(crate) fn convert(
    route: &str,
    rule: &HttpRouteRules,
    backends: Vec<model::WeightedBackend>,
) -> model::RouteRule {
    let json = serde_json::to_value(rule).unwrap_or(Value::Null);
    let matches = json
        .get("matches")
        .and_then(|m| serde_json::from_value(m.clone()).ok())
        .unwrap_or_default();
    let filters: Vec<model::Filter> = json
        .get("filters")
        .and_then(Value::as_array)
        .map(|fs| fs.iter().filter_map(|f| filter(f, route)).collect())
        .unwrap_or_default();
    model::RouteRule {
        matches,
        filters,
        backends,
        retry: json.get("retry").map(retry),
        timeout: timeout(&json, "/timeouts/request", route),
        backend_timeout: timeout(&json, "/timeouts/backendRequest", route),
        // Gateway API has no fault filter; Istio's comes from VirtualService.
        fault: None,
        direct_response: None,
    }
}

/// A rule's timeout at `pointer`; "0s" and unreadable values mean none.
fn timeout(json: &Value, pointer: &str, route: &str) -> Option<std::time::Duration> {
    json.pointer(pointer)
        .and_then(Value::as_str)
        .and_then(|t| {
            let d = gateway_duration(t);
            if d.is_none() {
                tracing::debug!(route, timeout = t, "not a Gateway API duration; ignored");
            }
            d
        })
        .filter(|d| !d.is_zero())
}

/// A backendRef's own filters in the model's shape (those carried; see `filter`).
pub(crate) fn backend_filters(b: &HttpRouteRulesBackendRefs, route: &str) -> Vec<model::Filter> {
    b.filters
        .iter()
        .flatten()
        .filter_map(|f| serde_json::to_value(f).ok())
        .filter_map(|f| filter(&f, route))
        .collect()
}

/// HTTPRoute `retry` (GEP-1731) over Istio's default policy: `attempts` retries
/// (2 when unset; the v1.6 CRD refuses 0) and `codes` as retriable status codes.
fn retry(r: &Value) -> model::RetryConfig {
    let mut policy = model::RetryConfig::default();
    if let Some(n) = r.get("attempts").and_then(Value::as_u64) {
        policy.attempts = u32::try_from(n).unwrap_or(u32::MAX);
    }
    policy.retriable_status_codes = r
        .get("codes")
        .and_then(Value::as_array)
        .map(|codes| {
            codes
                .iter()
                .filter_map(Value::as_u64)
                .filter_map(|c| u16::try_from(c).ok())
                .collect()
        })
        .unwrap_or_default();
    policy
}

/// Gateway API's duration (GEP-2257): one to four number-unit pairs, units `h`,
/// `m`, `s`, `ms` (`1h`, `1m30s`, `500ms`).
pub fn gateway_duration(text: &str) -> Option<std::time::Duration> {
    let mut total = std::time::Duration::ZERO;
    let mut rest = text;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 || digits > 5 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (std::time::Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (std::time::Duration::from_hours(1), 1)
        } else if rest.starts_with('m') {
            (std::time::Duration::from_mins(1), 1)
        } else if rest.starts_with('s') {
            (std::time::Duration::from_secs(1), 1)
        } else {
            return None;
        };
        total = total.checked_add(unit.checked_mul(u32::try_from(n).ok()?)?)?;
        rest = &rest[len..];
        parts += 1;
    }
    (parts > 0 && parts <= 4).then_some(total)
}

pub(crate) fn has_redirect(filters: &[model::Filter]) -> bool {
    filters
        .iter()
        .any(|f| matches!(f, model::Filter::RequestRedirect { .. }))
}

/// One Gateway API filter in the model's shape, or `None` for kinds not carried yet.
pub(crate) fn filter(f: &Value, route: &str) -> Option<model::Filter> {
    let kind = f.get("type")?.as_str()?;
    let body = |key: &str| {
        f.get(key)
            .cloned()
            .unwrap_or_else(|| Value::Object(serde_json::Map::new()))
    };
    let parsed = match kind {
        "RequestHeaderModifier" => serde_json::from_value(body("requestHeaderModifier"))
            .map(|modifier| model::Filter::RequestHeaderModifier { modifier }),
        "ResponseHeaderModifier" => serde_json::from_value(body("responseHeaderModifier"))
            .map(|modifier| model::Filter::ResponseHeaderModifier { modifier }),
        "RequestRedirect" => serde_json::from_value(body("requestRedirect"))
            .map(|redirect| model::Filter::RequestRedirect { redirect }),
        "URLRewrite" => serde_json::from_value(body("urlRewrite"))
            .map(|rewrite| model::Filter::UrlRewrite { rewrite }),
        other => {
            tracing::debug!(route, filter = other, "filter not carried yet; dropped");
            return None;
        }
    };
    parsed
        .map_err(
            |e| tracing::debug!(route, filter = kind, error = %e, "filter unreadable; dropped"),
        )
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(yaml: &str) -> HttpRoute {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn producer_routes_become_rules_with_their_backends() {
        let routes = [
            route(
                "apiVersion: gateway.networking.k8s.io/v1
kind: HttpRoute
metadata: {name: reviews, namespace: httpbin}
spec:
  parentRefs: [{group: \"\", kind: Service, name: in-ambient, port: 8000}]
  rules:
  - matches: [{headers: [{type: Exact, name: x-tag, value: a}], path: {type: PathPrefix, value: /}}]
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-waypoint-route, value: tagged}]}
    - type: URLRewrite
      urlRewrite: {hostname: elsewhere}
    backendRefs:
    - {name: in-ambient, port: 8000, weight: 3}
    - name: v2
      port: 8000
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-v, value: \"2\"}]}}]
  - backendRefs: [{name: in-ambient, port: 8000}]",
            ),
            // Another namespace (a consumer route), and a Gateway parent: not ours.
            route(
                "apiVersion: gateway.networking.k8s.io/v1
kind: HttpRoute
metadata: {name: other, namespace: client-ns}
spec:
  parentRefs: [{group: \"\", kind: Service, name: in-ambient, namespace: httpbin}]
  rules: [{backendRefs: [{name: x, port: 1}]}]",
            ),
            route(
                "apiVersion: gateway.networking.k8s.io/v1
kind: HttpRoute
metadata: {name: ingress, namespace: httpbin}
spec:
  parentRefs: [{name: in-ambient}]
  rules: [{backendRefs: [{name: x, port: 1}]}]",
            ),
        ];
        let (rules, backends) = rules_for(&routes, "in-ambient", "httpbin", 8000, "cluster.local");
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].matches[0].headers[0].value, "a");
        // The URLRewrite travels as it is.
        assert_eq!(
            rules[0].filters[1],
            model::Filter::UrlRewrite {
                rewrite: model::UrlRewrite {
                    hostname: Some("elsewhere".into()),
                    path: None
                }
            }
        );
        assert_eq!(
            rules[0].backends,
            [
                model::WeightedBackend {
                    cluster: "inbound-vip|8000|http|in-ambient.httpbin.svc.cluster.local".into(),
                    weight: 3,
                    filters: Vec::new(),
                },
                model::WeightedBackend {
                    cluster: "inbound-vip|8000|http|v2.httpbin.svc.cluster.local".into(),
                    weight: 1,
                    // The backendRef's own filter travels with it.
                    filters: vec![model::Filter::RequestHeaderModifier {
                        modifier: model::HeaderModifier {
                            set: vec![model::Header {
                                name: "x-v".into(),
                                value: "2".into()
                            }],
                            ..model::HeaderModifier::default()
                        }
                    }],
                },
            ]
        );
        assert!(rules[1].matches.is_empty());
        assert_eq!(backends.len(), 2);
        // Another port of the Service: nothing attaches.
        assert!(
            rules_for(&routes, "in-ambient", "httpbin", 9000, "cluster.local")
                .0
                .is_empty()
        );
        assert_eq!((rules[0].retry.as_ref(), rules[0].timeout), (None, None));
    }

    #[test]
    fn a_rules_retry_and_request_timeout_carry_over() {
        let routes = [route(
            "apiVersion: gateway.networking.k8s.io/v1
kind: HttpRoute
metadata: {name: no-retries, namespace: httpbin}
spec:
  parentRefs: [{group: \"\", kind: Service, name: in-ambient, port: 8000}]
  rules:
  - retry: {attempts: 0}
    timeouts: {request: 1m30s}
    backendRefs: [{name: in-ambient, port: 8000}]
  - retry: {codes: [503, 504]}
    timeouts: {request: 0s}
    backendRefs: [{name: in-ambient, port: 8000}]",
        )];
        let (rules, _) = rules_for(&routes, "in-ambient", "httpbin", 8000, "cluster.local");
        let off = rules[0].retry.as_ref().unwrap();
        assert_eq!(off.attempts, 0);
        assert_eq!(rules[0].timeout, Some(std::time::Duration::from_secs(90)));
        let codes = rules[1].retry.as_ref().unwrap();
        assert_eq!(
            (codes.attempts, codes.retriable_status_codes.as_slice()),
            (2, &[503, 504][..])
        );
        assert_eq!(rules[1].timeout, None, "0s: no timeout");
    }

    #[test]
    fn gateway_api_durations() {
        use std::time::Duration;
        for (text, want) in [
            ("10s", Some(Duration::from_secs(10))),
            ("500ms", Some(Duration::from_millis(500))),
            ("1h2m3s4ms", Some(Duration::from_millis(3_723_004))),
            ("0s", Some(Duration::ZERO)),
            ("", None),
            ("10", None),
            ("s", None),
            ("1.5s", None),
            ("123456s", None),
            ("1s1s1s1s1s", None),
            ("-1s", None),
            ("1d", None),
        ] {
            assert_eq!(gateway_duration(text), want, "{text:?}");
        }
    }
}
