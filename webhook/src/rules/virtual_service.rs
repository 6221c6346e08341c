//! VirtualServices: istiod's checks of HTTP rules, in istiod's words (pilot
//! `pkg/config/validation`: `validateHTTPRoute`, `ValidateHTTPRetry`, fault and
//! mirror checks), and warnings Istio never gives: a rule a waypoint will skip
//! because it uses what waypoints do not carry, and a destination that names no
//! Service.

use waypoint_crds::virtual_service::{
    HttpFaultInjection, HttpMatchRequest, HttpRetry, HttpRoute, Percent, VirtualServiceSpec,
};

use super::destination_rule::service_of;
use super::{Context, Object};
use crate::Verdict;

/// Envoy's `retry_on` names istiod accepts, besides HTTP status codes.
const RETRY_ON: [&str; 16] = [
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

pub fn review(obj: &Object<'_>, cx: &Context<'_>) -> Verdict {
    let mut v = Verdict::default();
    let who = obj.display();
    let Some(spec) = super::decode_spec::<VirtualServiceSpec>(obj, &who, &mut v) else {
        return v;
    };
    for (i, http) in spec.http.iter().enumerate() {
        let at = format!("{who}: spec.http[{i}]");
        for e in errors(http) {
            v.deny(format!("{at}: {e}"));
        }
        for w in skipped(http) {
            v.warn(format!("{at}.{w}"));
        }
        for (j, d) in http.route.iter().enumerate() {
            let Some((ns, name)) = service_of(
                &d.destination.host,
                obj.namespace,
                &cx.settings.cluster_domain,
            ) else {
                continue;
            };
            if ns == obj.namespace && cx.view.service(ns, name).is_none() {
                v.warn(format!(
                    "{at}.route[{j}].destination.host: no Service {name:?} in namespace {ns:?}, so requests \
                     routed there fail with 503 (check the host for a typo)"
                ));
            }
        }
    }
    v
}

/// istiod's refusals for one HTTP rule.
fn errors(http: &HttpRoute) -> Vec<String> {
    let mut out = Vec::new();
    let has_route = !http.route.is_empty();
    let redirect = http.redirect.is_some();
    let direct = http.direct_response.is_some();
    if has_route && redirect {
        out.push("HTTP route cannot contain both route and redirect".to_owned());
    }
    if http.rewrite.is_some() && redirect {
        out.push("HTTP route cannot contain both rewrite and redirect".to_owned());
    }
    if !has_route && !redirect && !direct && http.delegate.is_none() {
        out.push("HTTP route, redirect or direct_response is required".to_owned());
    }
    if let Some(fault) = &http.fault {
        if redirect {
            out.push("HTTP route cannot contain both fault and redirect".to_owned());
        }
        if direct {
            out.push("HTTP route cannot contain both fault and direct_response".to_owned());
        }
        out.extend(fault_errors(fault));
    }
    if http.mirror.is_some() && !http.mirrors.is_empty() {
        out.push("HTTP route cannot contain both mirror and mirrors".to_owned());
    }
    let shares = http
        .mirror_percentage
        .iter()
        .chain(http.mirrors.iter().filter_map(|m| m.percentage.as_ref()));
    for p in shares {
        if p.value > 100.0 {
            out.push(format!(
                "mirror_percentage must have a max value of 100 (it has {})",
                go_float(p.value)
            ));
        } else if p.value < 0.0 {
            out.push(format!(
                "mirror_percentage must have a min value of 0 (it has {})",
                go_float(p.value)
            ));
        }
    }
    if let Some(p) = http.mirror_percent.filter(|p| *p > 100) {
        out.push(format!(
            "mirror_percent must have a max value of 100 (it has {p})"
        ));
    }
    if let Some(retries) = &http.retries {
        out.extend(retry_errors(retries));
    }
    out
}

fn retry_errors(r: &HttpRetry) -> Vec<String> {
    let mut out = Vec::new();
    if r.attempts < 0 {
        out.push("attempts cannot be negative".to_owned());
    }
    if r.attempts == 0
        && (r.per_try_timeout.is_some()
            || r.retry_on.is_some()
            || r.retry_remote_localities.is_some())
    {
        out.push("http retry policy configured when attempts are set to 0 (disabled)".to_owned());
    }
    for token in r.retry_on.iter().flat_map(|s| s.split(',')) {
        let token = token.trim();
        let is_status = token.parse::<u16>().is_ok_and(is_known_status);
        if !is_status && !RETRY_ON.contains(&token) {
            out.push(format!("{token:?} is not a valid retryOn policy"));
        }
    }
    out
}

fn fault_errors(f: &HttpFaultInjection) -> Vec<String> {
    let mut out = Vec::new();
    if f.delay.is_none() && f.abort.is_none() {
        out.push("HTTP fault injection must have an abort and/or a delay".to_owned());
    }
    let share = |p: &Percent| {
        (p.value != 0.0 && !(0.0001..=100.0).contains(&p.value)).then(|| {
            format!(
                "percentage {} is neither 0.0, nor in range [0.0001, 100.0]",
                go_float(p.value)
            )
        })
    };
    if let Some(d) = &f.delay {
        out.extend(d.percentage.as_ref().and_then(share));
        if d.exponential_delay.is_some() {
            out.push("exponentialDelay not supported yet".to_owned());
        }
    }
    if let Some(a) = &f.abort {
        out.extend(a.percentage.as_ref().and_then(share));
        if let Some(status) = a.http_status.filter(|s| *s < 200 || *s > 600) {
            out.push(format!("HTTP status {status} is not in range 200-599"));
        }
        if a.http2_error.is_some() {
            out.push("HTTP/2 abort fault injection not supported yet".to_owned());
        }
    }
    out
}

/// Whether Go's `net/http.StatusText` names `code`, as istiod asks of a retryOn code.
fn is_known_status(code: u16) -> bool {
    matches!(code,
        100..=103 | 200..=208 | 226 | 300..=305 | 307 | 308 | 400..=418 | 421..=426 | 428 | 429
        | 431 | 451 | 500..=508 | 510 | 511)
}

/// Go's `%v` of a float64: no trailing `.0` for whole numbers.
fn go_float(v: f64) -> String {
    let s = format!("{v}");
    s.strip_suffix(".0")
        .map_or_else(|| s.clone(), str::to_owned)
}

const SKIPPED: &str = "is not supported by waypoints here; the waypoint skips this rule";

/// What makes the waypoint skip a match or the whole rule (it never half-applies one).
fn skipped(http: &HttpRoute) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(what) = http.unsupported_at_waypoint() {
        out.push(format!("{what}: {SKIPPED}"));
    }
    for (j, m) in http.matches.iter().enumerate() {
        out.extend(skipped_match(m).map(|w| format!("match[{j}].{w}")));
    }
    out
}

fn skipped_match(m: &HttpMatchRequest) -> Option<String> {
    if !m.source_labels.is_empty() {
        return Some(
            "sourceLabels: waypoints drop matches on source labels (as Istio does, istio/istio#51565), so \
             this match never applies"
                .to_owned(),
        );
    }
    let regex = [m.uri.as_ref()]
        .into_iter()
        .chain(m.headers.values().map(Some))
        .chain(m.query_params.values().map(Some))
        .flatten()
        .filter_map(|s| s.regex.as_deref())
        .find(|r| regex::Regex::new(r).is_err());
    if let Some(r) = regex {
        return Some(format!(
            "{r:?} is not a regular expression the waypoint can use (RE2 syntax); it skips this match"
        ));
    }
    m.unsupported_at_waypoint().map(|what| {
        format!("{what}: matching on it is not supported by waypoints here; the waypoint skips this match")
    })
}
