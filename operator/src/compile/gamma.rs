//! HTTPRoutes whose parent is a Service (GAMMA "producer routes": the route lives in
//! the Service's namespace) become the rules of that Service's waypoint route. Gateway
//! API's match shapes are the model's, so matches and redirects carry over as they
//! are; backends become the clusters of their Service ports.
//!
//! Not yet carried: URLRewrite, RequestMirror, CORS and ExtensionRef filters (dropped,
//! with a debug log), timeouts, consumer routes from other namespaces, route status.

use gateway_api::apis::standard::httproutes::{HttpRoute, HttpRouteParentRefs};
use kube::ResourceExt;
use serde_json::Value;
use waypoint_config as model;

/// A backend cluster a rule sends to: `(cluster name, Service name, namespace, port)`.
pub type Backend = (String, String, String, i32);

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
            let json = serde_json::to_value(rule).unwrap_or(Value::Null);
            let matches = json
                .get("matches")
                .and_then(|m| serde_json::from_value(m.clone()).ok())
                .unwrap_or_default();
            let filters: Vec<model::Filter> = json
                .get("filters")
                .and_then(Value::as_array)
                .map(|fs| {
                    fs.iter()
                        .filter_map(|f| filter(f, &route.name_any()))
                        .collect()
                })
                .unwrap_or_default();
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
                });
                backends.push((cluster, b.name.clone(), backend_ns, port));
            }
            // A rule with no backendRefs has nowhere to send: Gateway API answers 500,
            // which an all-zero weight gives.
            if weighted.is_empty() && !has_redirect(&filters) {
                weighted.push(model::WeightedBackend {
                    cluster: format!("inbound-vip|{port}|http|{svc}.{ns}.svc.{cluster_domain}"),
                    weight: 0,
                });
            }
            rules.push(model::RouteRule {
                matches,
                filters,
                backends: weighted,
            });
        }
    }
    backends.sort();
    backends.dedup();
    (rules, backends)
}

fn has_redirect(filters: &[model::Filter]) -> bool {
    filters
        .iter()
        .any(|f| matches!(f, model::Filter::RequestRedirect { .. }))
}

/// One Gateway API filter in the model's shape, or `None` for kinds not carried yet.
fn filter(f: &Value, route: &str) -> Option<model::Filter> {
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
    backendRefs: [{name: in-ambient, port: 8000, weight: 3}, {name: v2, port: 8000}]
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
        // URLRewrite is not carried yet.
        assert_eq!(rules[0].filters.len(), 1);
        assert_eq!(
            rules[0].backends,
            [
                model::WeightedBackend {
                    cluster: "inbound-vip|8000|http|in-ambient.httpbin.svc.cluster.local".into(),
                    weight: 3
                },
                model::WeightedBackend {
                    cluster: "inbound-vip|8000|http|v2.httpbin.svc.cluster.local".into(),
                    weight: 1
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
    }
}
