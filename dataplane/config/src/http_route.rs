//! HTTPRoute-shaped rules on a route (Gateway API `HTTPRouteRule`): matches on
//! path, headers, query parameters and method; request and response header
//! modifiers; redirects; weighted backends. Which rule wins when several match is
//! Gateway API's precedence, decided in the dataplane (`route_match`).

use serde::{Deserialize, Serialize};

use crate::invalid;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRule {
    /// Any one match selects the rule; none at all matches every request (Gateway
    /// API's default, a `/` prefix).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
    /// Weighted clusters; none: the route's own cluster (500 when it has none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<WeightedBackend>,
    /// HTTPRoute `retry`; none: the route's policy (Istio's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<crate::RetryConfig>,
    /// HTTPRoute `timeouts.request`; none: the route's.
    #[serde(
        default,
        with = "crate::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<std::time::Duration>,
    /// HTTPRoute `timeouts.backendRequest`: each attempt's own limit (Envoy's
    /// per-try timeout), answered 504 `UT` when the last attempt runs out.
    #[serde(
        default,
        with = "crate::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub backend_timeout: Option<std::time::Duration>,
    /// Fault injection on this rule's requests; none: the route's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<crate::Fault>,
    /// Answered by the proxy itself, as Envoy's `direct_response` (VirtualService
    /// `directResponse`); the rule's backends are not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponse>,
}

/// A fixed answer: a status and a body (`text/plain`, as Envoy's local replies).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DirectResponse {
    pub status: u16,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
}

/// Istio's limit for a waypoint's direct response body
/// (`DefaultMaxDirectResponseBodySizeBytes`).
pub const MAX_DIRECT_RESPONSE_BODY: usize = 1024 * 1024;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<ValueMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<ValueMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value")]
pub enum PathMatch {
    Exact(String),
    /// Element-wise: `/foo` matches `/foo` and `/foo/bar`, not `/foobar`.
    PathPrefix(String),
    /// Envoy's `prefix`, character by character: `/foo` also matches `/foobar`
    /// (VirtualService `uri.prefix`).
    Prefix(String),
    RegularExpression(String),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MatchType {
    #[default]
    Exact,
    RegularExpression,
}

/// A header (name case-insensitive) or query parameter (name exact) match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValueMatch {
    #[serde(default, rename = "type")]
    pub kind: MatchType,
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum Filter {
    RequestHeaderModifier {
        #[serde(flatten)]
        modifier: HeaderModifier,
    },
    ResponseHeaderModifier {
        #[serde(flatten)]
        modifier: HeaderModifier,
    },
    RequestRedirect {
        #[serde(flatten)]
        redirect: Redirect,
    },
    /// Gateway API's `RequestMirror`: a copy of a `fraction` of the requests goes to
    /// `cluster` too, its answer ignored. A cluster not in the config (an invalid
    /// backendRef) mirrors nothing.
    RequestMirror {
        cluster: String,
        /// Absent: every request (Gateway API's `percent: 50` is `50/100`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fraction: Option<Fraction>,
    },
    /// Gateway API's `URLRewrite`: the request goes upstream with another host
    /// and/or path.
    #[serde(rename = "URLRewrite")]
    UrlRewrite {
        #[serde(flatten)]
        rewrite: UrlRewrite,
    },
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderModifier {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<Header>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<Header>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// `numerator / denominator` of the requests (Gateway API's `fraction`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fraction {
    pub numerator: u32,
    #[serde(default = "hundred")]
    pub denominator: u32,
}

fn hundred() -> u32 {
    100
}

impl Fraction {
    pub(crate) fn validate(self, at: &str) -> Result<(), crate::Error> {
        let Self {
            numerator,
            denominator,
        } = self;
        if denominator == 0 || numerator > denominator {
            return invalid(
                at.to_owned(),
                format!("{numerator}/{denominator} is not a fraction between 0 and 1"),
            );
        }
        Ok(())
    }

    /// Whether `draw`, uniform over the `u64`s or over `0..denominator`, falls in
    /// this share. A zero denominator admits nothing.
    #[must_use]
    pub fn admits(self, draw: u64) -> bool {
        self.denominator > 0 && draw % u64::from(self.denominator) < u64::from(self.numerator)
    }
}

/// Gateway API's `HTTPURLRewriteFilter`; unset parts keep the request's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UrlRewrite {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
}

/// Gateway API's `HTTPRequestRedirectFilter`; unset parts keep the request's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Redirect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathRewrite>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default = "found")]
    pub status_code: u16,
}

fn found() -> u16 {
    302
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
pub enum PathRewrite {
    ReplaceFullPath {
        replace_full_path: String,
    },
    /// Replaces the matched `PathPrefix`; only valid on a rule matched by prefix.
    ReplacePrefixMatch {
        replace_prefix_match: String,
    },
    /// Envoy's `prefix_rewrite`: the matched `Prefix` replaced character by
    /// character (VirtualService `rewrite.uri`); only valid on a rule whose every
    /// match is a `Prefix`.
    PrefixRewrite {
        prefix_rewrite: String,
    },
}

/// One HTTPRoute `backendRef`. Gateway API answers 500 for the share of requests
/// that would go to an invalid backendRef (unknown kind, missing Service,
/// cross-namespace without a ReferenceGrant); the model says "invalid" with a
/// `cluster` that is not in `Config.clusters`. Validation therefore accepts unknown
/// names here, and only here: the dataplane answers 500 for them, as Envoy's
/// `direct_response`. The operator should write a name that says what was wrong
/// with the reference, for whoever reads the config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WeightedBackend {
    pub cluster: String,
    /// Gateway API's default is 1; 0 sends nothing there.
    #[serde(default = "one")]
    pub weight: u32,
    /// The backendRef's own filters (header modifiers), applied after the rule's
    /// when this backend is the one drawn.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
}

fn one() -> u32 {
    1
}

impl RouteRule {
    /// Checks what serde cannot: regexes compile, paths are absolute, redirect codes
    /// are Gateway API's. Backends may name clusters that do not exist
    /// ([`WeightedBackend`]: invalid backends, answered 500). Public so that a
    /// producer can drop one bad rule rather than have the whole config refused.
    pub fn validate(&self, at: &str) -> Result<(), crate::Error> {
        for (i, m) in self.matches.iter().enumerate() {
            let at = format!("{at}.matches[{i}]");
            match &m.path {
                Some(PathMatch::Exact(p) | PathMatch::PathPrefix(p) | PathMatch::Prefix(p))
                    if !p.starts_with('/') =>
                {
                    return invalid(
                        format!("{at}.path.value"),
                        format!("{p:?} does not start with /"),
                    );
                }
                Some(PathMatch::RegularExpression(re)) => regex(&format!("{at}.path.value"), re)?,
                _ => {}
            }
            for (list, values) in [("headers", &m.headers), ("queryParams", &m.query_params)] {
                for (j, v) in values.iter().enumerate() {
                    if v.kind == MatchType::RegularExpression {
                        regex(&format!("{at}.{list}[{j}].value"), &v.value)?;
                    }
                }
            }
        }
        if let Some(fault) = &self.fault {
            fault.validate(&format!("{at}.fault"))?;
        }
        if let Some(d) = &self.direct_response {
            if !(200..=599).contains(&d.status) {
                return invalid(
                    format!("{at}.directResponse.status"),
                    format!("{} is not an HTTP status in 200..599", d.status),
                );
            }
            if d.body.len() > MAX_DIRECT_RESPONSE_BODY {
                return invalid(
                    format!("{at}.directResponse.body"),
                    format!(
                        "{} bytes is over the limit of {MAX_DIRECT_RESPONSE_BODY}",
                        d.body.len()
                    ),
                );
            }
        }
        for (i, f) in self.filters.iter().enumerate() {
            if let Filter::RequestMirror {
                fraction: Some(fraction),
                ..
            } = f
            {
                fraction.validate(&format!("{at}.filters[{i}].fraction"))?;
            }
            if let Filter::UrlRewrite { rewrite } = f {
                self.check_prefix_rewrite(rewrite.path.as_ref(), &format!("{at}.filters[{i}]"))?;
            }
            if let Filter::RequestRedirect { redirect } = f {
                if ![301, 302, 303, 307, 308].contains(&redirect.status_code) {
                    return invalid(
                        format!("{at}.filters[{i}].statusCode"),
                        format!(
                            "{} is not one of 301, 302, 303, 307, 308",
                            redirect.status_code
                        ),
                    );
                }
                self.check_prefix_rewrite(redirect.path.as_ref(), &format!("{at}.filters[{i}]"))?;
            }
        }
        Ok(())
    }

    /// A rewrite of the matched prefix needs every match of the rule to be a prefix
    /// of its kind: there is nothing else to replace.
    fn check_prefix_rewrite(
        &self,
        path: Option<&PathRewrite>,
        at: &str,
    ) -> Result<(), crate::Error> {
        let (name, kind, is_kind): (_, _, fn(&PathMatch) -> bool) = match path {
            Some(PathRewrite::ReplacePrefixMatch { .. }) => {
                ("ReplacePrefixMatch", "PathPrefix", |p| {
                    matches!(p, PathMatch::PathPrefix(_))
                })
            }
            Some(PathRewrite::PrefixRewrite { .. }) => ("PrefixRewrite", "Prefix", |p| {
                matches!(p, PathMatch::Prefix(_))
            }),
            _ => return Ok(()),
        };
        if self.matches.is_empty()
            || !self
                .matches
                .iter()
                .all(|m| m.path.as_ref().is_some_and(is_kind))
        {
            return invalid(
                format!("{at}.path"),
                format!("{name} needs every match of the rule to be a {kind}"),
            );
        }
        Ok(())
    }
}

fn regex(at: &str, re: &str) -> Result<(), crate::Error> {
    match regex::Regex::new(re) {
        Ok(_) => Ok(()),
        Err(e) => invalid(
            at.to_owned(),
            format!("{re:?} is not a regular expression: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use crate::Config;

    fn load(rules: &str) -> Result<Config, crate::Error> {
        Config::from_yaml(&format!(
            "listeners:
- name: mesh
  address: 0.0.0.0:15008
  routes:
  - hosts: [svc:80]
    cluster: a
    rules:
{rules}
clusters: [{{name: a}}, {{name: b}}]
"
        ))
    }

    #[test]
    fn reads_gateway_api_shaped_rules() {
        let c = load(
            "    - matches:
      - path: {type: PathPrefix, value: /api}
        headers: [{name: x-canary, value: \"yes\"}]
        queryParams: [{type: RegularExpression, name: v, value: \"^[0-9]+$\"}]
        method: GET
      filters:
      - type: RequestHeaderModifier
        set: [{name: x-env, value: canary}]
        remove: [x-debug]
      - type: RequestRedirect
        scheme: https
        path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}
        statusCode: 301
      backends: [{cluster: a, weight: 90}, {cluster: b, weight: 10}]",
        )
        .unwrap();
        let rule = &c.listeners[0].routes[0].rules[0];
        assert_eq!(rule.backends[1].weight, 10);
        assert_eq!(
            rule.matches[0].query_params[0].kind,
            crate::MatchType::RegularExpression
        );
        // Round trip.
        let again = Config::from_yaml(&serde_yaml::to_string(&c).unwrap()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn refusals_name_the_field() {
        for (rules, field, message) in [
            (
                "    - matches: [{path: {type: Exact, value: api}}]",
                "listeners[0].routes[0].rules[0].matches[0].path.value",
                "\"api\" does not start with /",
            ),
            (
                "    - matches: [{headers: [{type: RegularExpression, name: a, value: \"(\"}]}]",
                "listeners[0].routes[0].rules[0].matches[0].headers[0].value",
                "\"(\" is not a regular expression",
            ),
            (
                "    - filters: [{type: RequestRedirect, statusCode: 305}]",
                "listeners[0].routes[0].rules[0].filters[0].statusCode",
                "305 is not one of 301, 302, 303, 307, 308",
            ),
            (
                "    - matches: [{path: {type: Exact, value: /a}}]
      filters: [{type: RequestRedirect, path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}]",
                "listeners[0].routes[0].rules[0].filters[0].path",
                "ReplacePrefixMatch needs every match of the rule to be a PathPrefix",
            ),
            (
                "    - matches: [{path: {type: PathPrefix, value: /a}}]
      filters: [{type: URLRewrite, path: {type: PrefixRewrite, prefixRewrite: /b}}]",
                "listeners[0].routes[0].rules[0].filters[0].path",
                "PrefixRewrite needs every match of the rule to be a Prefix",
            ),
        ] {
            let err = load(rules).unwrap_err().to_string();
            assert!(err.contains(field) && err.contains(message), "{err}");
        }
    }

    /// Invalid backends are the model's way to say "answer 500": they load, on a
    /// route with or without a cluster of its own.
    #[test]
    fn backends_outside_the_clusters_load_as_invalid_backends() {
        let c = load("    - backends: [{cluster: a, weight: 1}, {cluster: \"invalid:Service/default/gone\"}]")
            .unwrap();
        let rule = &c.listeners[0].routes[0].rules[0];
        assert!(c.cluster(&rule.backends[1].cluster).is_none());
        let ingress = Config::from_yaml(
            "listeners:
- name: gw
  address: 0.0.0.0:80
  routes:
  - hosts: [\"*.example.com\"]
    cluster: \"\"
    rules: [{backends: [{cluster: gone}]}, {matches: [{path: {type: Exact, value: /none}}]}]
",
        )
        .unwrap();
        assert_eq!(ingress.listeners[0].routes[0].cluster, "");
    }

    #[test]
    fn the_routes_own_cluster_must_exist_unless_it_is_empty() {
        let at = "listeners[0].routes[0].cluster";
        let yaml = |cluster: &str, protocol: &str| {
            format!(
                "listeners:
- {{name: mesh, address: 0.0.0.0:15008, routes: [{{cluster: \"{cluster}\", protocol: {protocol}}}]}}
clusters: [{{name: a}}]"
            )
        };
        assert!(Config::from_yaml(&yaml("a", "HTTP")).is_ok());
        assert!(Config::from_yaml(&yaml("", "HTTP")).is_ok());
        let err = Config::from_yaml(&yaml("b", "HTTP"))
            .unwrap_err()
            .to_string();
        assert_eq!(err, format!("{at}: no cluster named \"b\""));
        let err = Config::from_yaml(&yaml("", "TCP")).unwrap_err().to_string();
        assert_eq!(err, format!("{at}: a TCP route needs a cluster"));
    }
}
