//! A VirtualService's HTTP rules become a Service port's waypoint route, as istiod
//! builds a waypoint's inbound route (`buildWaypointInboundHTTPRouteConfig`,
//! `waypointInboundRoute`, pilot `listener_waypoint.go`):
//!
//! - the first VirtualService with HTTP rules, of the Service's (= the waypoint's)
//!   namespace, whose `hosts` name the Service and whose `gateways` include `mesh`
//!   (oldest first, then by name);
//! - one rule per match, in the order written, the first match winning; matches with
//!   `sourceLabels`, for another port or another gateway are dropped; a rule without
//!   matches or a catch-all match ends the list;
//! - destinations are `inbound-vip|<port>|http[/<subset>]|<fqdn>` clusters, the port
//!   being the destination's, else the Service's only port, else the route's.
//!
//! Carried: `uri`, `headers`, `queryParams` (exact, prefix, regex, presence) and
//! exact `method` matches, `ignoreUriCase`; weighted destinations with their header
//! operations; `headers`; `redirect` (`uri`, `authority`, `scheme`, `port`,
//! `redirectCode`); `rewrite` (`uri`, `authority`); `timeout`; `retries` (`attempts`,
//! `retryOn` with status codes, `perTryTimeout`, `retryIgnorePreviousHosts`); `fault`
//! (fixed delay, HTTP abort); `mirror`/`mirrorPercentage`/`mirrorPercent` and
//! `mirrors`; `directResponse`. A match or rule using anything else is dropped with a
//! warning, never half-applied: `authority`, `scheme` and `withoutHeaders` matches,
//! non-exact methods, `delegate`, `uriRegexRewrite`, exponential delays and gRPC or
//! HTTP/2 aborts.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use waypoint_config as model;
use waypoint_crds::VirtualService;
use waypoint_crds::virtual_service::{
    Destination, HeaderOperations, Headers, HttpMatchRequest, HttpRetry, HttpRoute, Percent,
    StringMatch,
};

use super::Backend;

/// The Service port a route is being built for.
pub struct Target<'a> {
    pub service: &'a Service,
    pub fqdn: &'a str,
    pub port: i32,
    /// The Services of the namespace: destinations resolve among them.
    pub services: &'a [Service],
    pub cluster_domain: &'a str,
    /// The route's default retry policy (no previous-hosts avoidance when hashing).
    pub default_retry: &'a model::RetryConfig,
}

/// Why a match or a rule is not carried.
type Dropped = String;

/// The VirtualService that applies to `target`, as istiod picks it.
pub fn applicable<'a>(
    vss: &'a [VirtualService],
    target: &Target<'_>,
) -> Option<&'a VirtualService> {
    let ns = target.service.namespace().unwrap_or_default();
    let mut matching: Vec<&VirtualService> = vss
        .iter()
        .filter(|vs| vs.namespace().as_deref() == Some(ns.as_str()))
        .filter(|vs| vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh"))
        .filter(|vs| {
            let vs_ns = vs.namespace().unwrap_or_default();
            vs.spec
                .hosts
                .iter()
                .any(|h| host_matches(h, &vs_ns, target.fqdn, target.cluster_domain))
        })
        .filter(|vs| !vs.spec.http.is_empty())
        .collect();
    matching.sort_by_key(|vs| {
        (
            vs.metadata.creation_timestamp.clone().map(|t| t.0),
            vs.name_any(),
        )
    });
    if matching.len() > 1 {
        tracing::warn!(
            service = target.fqdn,
            used = %matching[0].name_any(),
            "several VirtualServices for one service; the oldest applies"
        );
    }
    matching.first().copied()
}

/// Istio's short-name resolution: a host without a dot is a Service of the
/// VirtualService's namespace; `*` and `*.suffix` are wildcards.
fn host_matches(host: &str, vs_ns: &str, fqdn: &str, cluster_domain: &str) -> bool {
    let host = host.to_ascii_lowercase();
    if host == "*" {
        return true;
    }
    if let Some(suffix) = host.strip_prefix('*') {
        return fqdn.ends_with(suffix);
    }
    resolve(&host, vs_ns, cluster_domain) == fqdn
}

fn resolve(host: &str, ns: &str, cluster_domain: &str) -> String {
    if host.contains('.') {
        host.to_owned()
    } else {
        format!("{host}.{ns}.svc.{cluster_domain}")
    }
}

/// The route's rules from `vs` and the clusters they name; `None` when no rule is
/// left (istiod then builds the default route).
pub fn rules(
    vs: &VirtualService,
    target: &Target<'_>,
) -> Option<(Vec<model::RouteRule>, Vec<Backend>)> {
    let vs_ns = vs.namespace().unwrap_or_default();
    let name = vs.name_any();
    let mut rules = Vec::new();
    let mut backends = Vec::new();
    'rules: for (i, http) in vs.spec.http.iter().enumerate() {
        let at = format!("VirtualService {vs_ns}/{name} http[{i}]");
        if http.matches.is_empty() {
            push(&mut rules, &mut backends, http, None, &vs_ns, target, &at);
            break;
        }
        for (j, m) in http.matches.iter().enumerate() {
            let at = format!("{at}.match[{j}]");
            if !m.source_labels.is_empty() {
                tracing::debug!(
                    at,
                    "sourceLabels match dropped at a waypoint (istio/istio#51565)"
                );
                continue;
            }
            if !m.gateways.is_empty() && !m.gateways.iter().any(|g| g == "mesh") {
                continue;
            }
            if m.port
                .is_some_and(|p| i64::from(p) != i64::from(target.port))
            {
                continue;
            }
            let catch_all = is_catch_all(m);
            push(
                &mut rules,
                &mut backends,
                http,
                Some(m),
                &vs_ns,
                target,
                &at,
            );
            if catch_all {
                break 'rules;
            }
        }
    }
    backends.sort();
    backends.dedup();
    (!rules.is_empty()).then_some((rules, backends))
}

/// Converts one (rule, match) and keeps it if the dataplane would take it.
fn push(
    rules: &mut Vec<model::RouteRule>,
    backends: &mut Vec<Backend>,
    http: &HttpRoute,
    m: Option<&HttpMatchRequest>,
    vs_ns: &str,
    target: &Target<'_>,
    at: &str,
) {
    match convert(http, m, vs_ns, target) {
        Ok((rule, named)) => match rule.validate(at) {
            Ok(()) => {
                rules.push(rule);
                backends.extend(named);
            }
            Err(e) => tracing::warn!(at, error = %e, "VirtualService rule not carried"),
        },
        Err(why) => tracing::warn!(at, why, "VirtualService rule not carried"),
    }
}

/// A match Envoy would take every request by: no conditions but a `/` prefix.
fn is_catch_all(m: &HttpMatchRequest) -> bool {
    let any_path = match &m.uri {
        None => true,
        Some(u) => {
            u.prefix.as_deref() == Some("/")
                || u.regex.as_deref().is_some_and(|r| r == "*" || r == ".*")
        }
    };
    any_path
        && m.headers.is_empty()
        && m.query_params.is_empty()
        && m.method.is_none()
        && m.authority.is_none()
        && m.scheme.is_none()
        && m.without_headers.is_empty()
}

fn convert(
    http: &HttpRoute,
    m: Option<&HttpMatchRequest>,
    vs_ns: &str,
    target: &Target<'_>,
) -> Result<(model::RouteRule, Vec<Backend>), Dropped> {
    if let Some(what) = http.unsupported_at_waypoint() {
        return Err(format!("{what} is not supported by this waypoint"));
    }
    let route_match = m.map(route_match).transpose()?;
    let mut named = Vec::new();
    let mut filters = Vec::new();
    if let Some(headers) = &http.headers {
        filters.extend(header_filters(headers));
    }
    if let Some(r) = &http.redirect {
        filters.push(redirect(r));
    }
    let mut path_match = route_match;
    if let Some(r) = &http.rewrite {
        filters.push(rewrite(r, &mut path_match));
    }
    for (destination, percentage) in mirrors(http) {
        let b = backend(destination, vs_ns, target);
        filters.push(model::Filter::RequestMirror {
            cluster: b.cluster.clone(),
            fraction: percentage.map(fraction),
        });
        named.push(b);
    }
    let mut weighted = Vec::new();
    let lone = http.route.len() == 1;
    for d in &http.route {
        let b = backend(&d.destination, vs_ns, target);
        weighted.push(model::WeightedBackend {
            cluster: b.cluster.clone(),
            // A lone destination takes everything, whatever its weight.
            weight: if lone {
                1
            } else {
                u32::try_from(d.weight.unwrap_or(0)).unwrap_or(0)
            },
            filters: d.headers.as_ref().map(header_filters).unwrap_or_default(),
        });
        named.push(b);
    }
    let direct_response = http.direct_response.as_ref().map(direct).transpose()?;
    if weighted.is_empty() && http.redirect.is_none() && direct_response.is_none() {
        return Err("neither route, redirect nor directResponse".to_owned());
    }
    let rule = model::RouteRule {
        matches: path_match.into_iter().collect(),
        filters,
        backends: weighted,
        retry: http
            .retries
            .as_ref()
            .map(|r| retry(r, target.default_retry)),
        timeout: http
            .timeout
            .as_ref()
            .map(waypoint_crds::Duration::as_std)
            .filter(|d| !d.is_zero()),
        backend_timeout: http
            .retries
            .as_ref()
            .filter(|r| r.attempts > 0)
            .and_then(|r| r.per_try_timeout.as_ref())
            .map(waypoint_crds::Duration::as_std),
        fault: http.fault.as_ref().map(fault).transpose()?.flatten(),
        direct_response,
    };
    Ok((rule, named))
}

fn redirect(r: &waypoint_crds::virtual_service::HttpRedirect) -> model::Filter {
    model::Filter::RequestRedirect {
        redirect: model::Redirect {
            scheme: r.scheme.clone(),
            hostname: r.authority.clone(),
            path: r
                .uri
                .clone()
                .map(|replace_full_path| model::PathRewrite::ReplaceFullPath { replace_full_path }),
            port: r.port.and_then(|p| u16::try_from(p).ok()),
            status_code: match r.redirect_code {
                None | Some(0) => 301,
                Some(code) => u16::try_from(code).unwrap_or(0),
            },
        },
    }
}

/// Envoy's `prefix_rewrite`, which Istio writes for `rewrite.uri`: it replaces the
/// matched prefix (`/` when the match names no path, which then becomes a `/`
/// prefix), or the whole path of an exact or regex match.
fn rewrite(
    rewrite: &waypoint_crds::virtual_service::HttpRewrite,
    path_match: &mut Option<model::RouteMatch>,
) -> model::Filter {
    let prefix_rewrite = |uri: &String| model::PathRewrite::PrefixRewrite {
        prefix_rewrite: uri.clone(),
    };
    let path = rewrite.uri.as_ref().map(|uri| {
        let rm = path_match.get_or_insert_with(model::RouteMatch::default);
        match &rm.path {
            Some(model::PathMatch::Prefix(_)) => prefix_rewrite(uri),
            None => {
                rm.path = Some(model::PathMatch::Prefix("/".to_owned()));
                prefix_rewrite(uri)
            }
            Some(_) => model::PathRewrite::ReplaceFullPath {
                replace_full_path: uri.clone(),
            },
        }
    });
    model::Filter::UrlRewrite {
        rewrite: model::UrlRewrite {
            hostname: rewrite.authority.clone(),
            path,
        },
    }
}

/// `directResponse`: its status, and its body as a string (UTF-8 `bytes` too).
fn direct(
    d: &waypoint_crds::virtual_service::HttpDirectResponse,
) -> Result<model::DirectResponse, Dropped> {
    let body = match &d.body {
        None => String::new(),
        Some(b) => match (&b.string, &b.bytes) {
            (Some(s), _) => s.clone(),
            (None, Some(encoded)) => base64_text(encoded)
                .ok_or("directResponse.body.bytes is not base64 of UTF-8 text")?,
            (None, None) => String::new(),
        },
    };
    Ok(model::DirectResponse {
        status: u16::try_from(d.status).unwrap_or(0),
        body,
    })
}

/// Standard base64 of UTF-8 text, as protobuf's JSON writes `bytes`.
fn base64_text(encoded: &str) -> Option<String> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    String::from_utf8(raw).ok()
}

fn route_match(m: &HttpMatchRequest) -> Result<model::RouteMatch, Dropped> {
    if let Some(what) = m.unsupported_at_waypoint() {
        return Err(format!(
            "a match on {what} is not supported by this waypoint"
        ));
    }
    // Anything but an exact method was refused above.
    let method = m.method.as_ref().and_then(|s| s.exact.clone());
    let caseless = m.ignore_uri_case == Some(true);
    let path = m.uri.as_ref().map(|u| match (u, caseless) {
        (StringMatch { exact: Some(e), .. }, false) => model::PathMatch::Exact(e.clone()),
        (
            StringMatch {
                prefix: Some(p), ..
            },
            false,
        ) => model::PathMatch::Prefix(p.clone()),
        (StringMatch { exact: Some(e), .. }, true) => {
            model::PathMatch::RegularExpression(format!("(?i){}", regex::escape(e)))
        }
        (
            StringMatch {
                prefix: Some(p), ..
            },
            true,
        ) => model::PathMatch::RegularExpression(format!("(?i){}.*", regex::escape(p))),
        (StringMatch { regex: Some(r), .. }, _) => model::PathMatch::RegularExpression(r.clone()),
        // No condition: any path.
        _ => model::PathMatch::Prefix("/".to_owned()),
    });
    Ok(model::RouteMatch {
        path,
        headers: values(&m.headers, true),
        query_params: values(&m.query_params, false),
        method,
    })
}

/// Header (names lower-cased) or query matches; a prefix is a regex, an empty
/// match asks only that the value be present.
fn values(matches: &BTreeMap<String, StringMatch>, header: bool) -> Vec<model::ValueMatch> {
    matches
        .iter()
        .map(|(name, m)| {
            let (kind, value) = match m {
                StringMatch { exact: Some(e), .. } => (model::MatchType::Exact, e.clone()),
                StringMatch {
                    prefix: Some(p), ..
                } => (
                    model::MatchType::RegularExpression,
                    format!("{}.*", regex::escape(p)),
                ),
                StringMatch { regex: Some(r), .. } => {
                    (model::MatchType::RegularExpression, r.clone())
                }
                _ => (model::MatchType::RegularExpression, ".*".to_owned()),
            };
            model::ValueMatch {
                kind,
                name: if header {
                    name.to_ascii_lowercase()
                } else {
                    name.clone()
                },
                value,
            }
        })
        .collect()
}

/// Istio's header operations: keys are sorted; `:`-prefixed keys are dropped, and
/// `:authority` or `host` in `set` (else `add`) becomes a host rewrite.
fn header_filters(headers: &Headers) -> Vec<model::Filter> {
    let mut out = Vec::new();
    if let Some(ops) = &headers.request {
        let host = ["set", "add"].iter().find_map(|which| {
            let map = if *which == "set" { &ops.set } else { &ops.add };
            map.iter()
                .find(|(k, _)| {
                    let k = k.to_ascii_lowercase();
                    k == ":authority" || k == "host"
                })
                .map(|(_, v)| v.clone())
        });
        out.push(model::Filter::RequestHeaderModifier {
            modifier: modifier(ops),
        });
        if let Some(hostname) = host {
            out.push(model::Filter::UrlRewrite {
                rewrite: model::UrlRewrite {
                    hostname: Some(hostname),
                    path: None,
                },
            });
        }
    }
    if let Some(ops) = &headers.response {
        out.push(model::Filter::ResponseHeaderModifier {
            modifier: modifier(ops),
        });
    }
    out
}

fn modifier(ops: &HeaderOperations) -> model::HeaderModifier {
    let keep = |k: &String| {
        let k = k.to_ascii_lowercase();
        !k.starts_with(':') && k != "host"
    };
    let headers = |map: &BTreeMap<String, String>| {
        map.iter()
            .filter(|(k, _)| keep(k))
            .map(|(name, value)| model::Header {
                name: name.clone(),
                value: value.clone(),
            })
            .collect()
    };
    model::HeaderModifier {
        set: headers(&ops.set),
        add: headers(&ops.add),
        remove: ops.remove.iter().filter(|k| keep(k)).cloned().collect(),
    }
}

/// Mirrors and their shares: `mirror` with `mirrorPercentage` (an explicit 0 mirrors
/// nothing) or the deprecated `mirrorPercent`, absent meaning every request; and
/// each of `mirrors`.
fn mirrors(http: &HttpRoute) -> Vec<(&Destination, Option<Percent>)> {
    let mut out = Vec::new();
    if let Some(d) = &http.mirror {
        let share = http
            .mirror_percentage
            .or(http.mirror_percent.map(|p| Percent {
                value: f64::from(p),
            }));
        if share.is_none_or(|p| p.value > 0.0) {
            out.push((d, share));
        }
    }
    for m in &http.mirrors {
        if m.percentage.is_none_or(|p| p.value > 0.0) {
            out.push((&m.destination, m.percentage));
        }
    }
    out
}

/// Istio writes a percentage as a fraction of a million (four decimals kept).
fn fraction(p: Percent) -> model::Fraction {
    // Past 100 % (or not a number): a share validation refuses.
    let numerator = if (0.0..=100.0).contains(&p.value) {
        format!("{:.0}", p.value * 10_000.0)
            .parse()
            .unwrap_or(u32::MAX)
    } else {
        u32::MAX
    };
    model::Fraction {
        numerator,
        denominator: 1_000_000,
    }
}

/// The cluster of a destination: `inbound-vip|<port>|http[/<subset>]|<fqdn>`.
fn backend(d: &Destination, vs_ns: &str, target: &Target<'_>) -> Backend {
    let fqdn = resolve(&d.host.to_ascii_lowercase(), vs_ns, target.cluster_domain);
    let service = target.services.iter().find(|s| {
        format!(
            "{}.{}.svc.{}",
            s.name_any(),
            s.namespace().unwrap_or_default(),
            target.cluster_domain
        ) == fqdn
    });
    let ports: Vec<i32> = service
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.ports.as_ref())
        .map(|ps| ps.iter().map(|p| p.port).collect())
        .unwrap_or_default();
    let port = match (&d.port, ports.as_slice()) {
        (Some(p), _) => i32::try_from(p.number).unwrap_or(0),
        (None, [only]) => *only,
        (None, _) => target.port,
    };
    let subset = d.subset.clone().filter(|s| !s.is_empty());
    let kind = subset
        .as_ref()
        .map_or_else(|| "http".to_owned(), |s| format!("http/{s}"));
    Backend {
        cluster: format!("inbound-vip|{port}|{kind}|{fqdn}"),
        service: service.map_or_else(|| fqdn.clone(), ResourceExt::name_any),
        namespace: service.map_or_else(|| vs_ns.to_owned(), |s| s.namespace().unwrap_or_default()),
        port,
        subset,
    }
}

/// Istio's `ConvertPolicy`: no attempts, no retries; `retryOn` replaces the
/// conditions, its status codes becoming retriable ones.
fn retry(r: &HttpRetry, default: &model::RetryConfig) -> model::RetryConfig {
    if r.attempts <= 0 {
        return model::RetryConfig {
            attempts: 0,
            ..default.clone()
        };
    }
    let mut policy = model::RetryConfig {
        attempts: u32::try_from(r.attempts).unwrap_or(0),
        avoid_previous_hosts: default.avoid_previous_hosts
            && r.retry_ignore_previous_hosts != Some(false),
        ..default.clone()
    };
    if let Some(on) = &r.retry_on {
        let mut conditions = Vec::new();
        let mut codes = Vec::new();
        for token in on.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            match token.parse::<u16>() {
                Ok(code) => codes.push(code),
                Err(_) => conditions.push(token.to_owned()),
            }
        }
        if !codes.is_empty() && !conditions.iter().any(|c| c == "retriable-status-codes") {
            conditions.push("retriable-status-codes".to_owned());
        }
        policy.retry_on = conditions;
        policy.retriable_status_codes = codes;
    }
    policy
}

/// Istio's fault translation: a share given by `percentage` (else the deprecated
/// whole `percent`, else none, which injects nothing).
fn fault(
    f: &waypoint_crds::virtual_service::HttpFaultInjection,
) -> Result<Option<model::Fault>, Dropped> {
    let delay = match &f.delay {
        None => None,
        Some(d) if d.exponential_delay.is_some() => {
            return Err("exponentialDelay is not supported yet (as in Istio)".to_owned());
        }
        Some(d) => {
            let share = d
                .percentage
                .map(fraction)
                .or(d.percent.map(|p| model::Fraction {
                    numerator: u32::try_from(p).unwrap_or(0),
                    denominator: 100,
                }));
            match (d.fixed_delay.as_ref(), share) {
                (Some(fixed), Some(percentage)) if percentage.numerator > 0 => {
                    Some(model::FaultDelay {
                        fixed_delay: fixed.as_std(),
                        percentage,
                    })
                }
                _ => None,
            }
        }
    };
    let abort = match &f.abort {
        None => None,
        // gRPC aborts were refused with the rule (`unsupported_at_waypoint`).
        Some(a) if a.http2_error.is_some() => {
            return Err("HTTP/2 abort fault injection not supported yet (as in Istio)".to_owned());
        }
        Some(a) => match (a.http_status, a.percentage.map(fraction)) {
            (Some(status), Some(percentage)) if percentage.numerator > 0 => {
                Some(model::FaultAbort {
                    http_status: u16::try_from(status).unwrap_or(0),
                    percentage,
                })
            }
            _ => None,
        },
    };
    Ok((delay.is_some() || abort.is_some()).then_some(model::Fault { delay, abort }))
}

#[cfg(test)]
mod tests;
