//! HTTPRoute filters and weighted backends, as pure functions over the request's
//! parts: header modifiers, where a redirect points, which backend a weight draw picks.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use waypoint_config::{
    Filter, Fraction, HeaderModifier, PathRewrite, Redirect, UrlRewrite, WeightedBackend,
};

/// Gateway API's order: set, then add, then remove. Names or values that are not
/// valid HTTP are skipped (the config was validated; this keeps the proxy total).
pub fn modify_headers(m: &HeaderModifier, headers: &mut HeaderMap) {
    let pair = |name: &str, value: &str| {
        Some((
            HeaderName::from_bytes(name.as_bytes()).ok()?,
            HeaderValue::from_str(value).ok()?,
        ))
    };
    for h in &m.set {
        if let Some((name, value)) = pair(&h.name, &h.value) {
            headers.insert(name, value);
        }
    }
    for h in &m.add {
        if let Some((name, value)) = pair(&h.name, &h.value) {
            headers.append(name, value);
        }
    }
    for name in &m.remove {
        if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
            headers.remove(name);
        }
    }
}

/// The request a redirect is computed from.
pub struct Origin<'a> {
    pub scheme: &'a str,
    /// `host` or `host:port`.
    pub authority: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The `PathPrefix` or `Prefix` the rule matched with, for `ReplacePrefixMatch`
    /// and `PrefixRewrite`.
    pub matched_prefix: Option<&'a str>,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// The `Location` of a `RequestRedirect`. Port rules are Gateway API's: an explicit
/// port wins; a changed scheme takes its well-known port; otherwise the request's
/// port stays; a port well known for the scheme is not written.
pub fn redirect_location(r: &Redirect, o: &Origin<'_>) -> String {
    let parsed = o.authority.parse::<http::uri::Authority>().ok();
    let (req_host, req_port) = parsed
        .as_ref()
        .map_or((o.authority, None), |a| (a.host(), a.port_u16()));
    let scheme = r.scheme.as_deref().unwrap_or(o.scheme);
    let host = r.hostname.as_deref().unwrap_or(req_host);
    let port = r.port.or_else(|| {
        if r.scheme.is_some() {
            default_port(scheme)
        } else {
            req_port.or_else(|| default_port(scheme))
        }
    });
    let path = match &r.path {
        None => o.path.to_owned(),
        Some(p) => rewrite_path(p, o.path, o.matched_prefix),
    };
    let mut out = format!("{scheme}://{host}");
    if let Some(p) = port.filter(|p| Some(*p) != default_port(scheme)) {
        out.push(':');
        out.push_str(&p.to_string());
    }
    out.push_str(&path);
    if let Some(q) = o.query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// A path after a redirect's or a URL rewrite's `path`: the whole path replaced,
/// or the `PathPrefix` the rule matched (`matched_prefix`) replaced, element-wise.
pub fn rewrite_path(rewrite: &PathRewrite, path: &str, matched_prefix: Option<&str>) -> String {
    match rewrite {
        PathRewrite::ReplaceFullPath { replace_full_path } => replace_full_path.clone(),
        PathRewrite::ReplacePrefixMatch {
            replace_prefix_match,
        } => {
            let prefix = matched_prefix.unwrap_or("/").trim_end_matches('/');
            let rest = path.strip_prefix(prefix).unwrap_or(path);
            let base = replace_prefix_match.trim_end_matches('/');
            match (base.is_empty(), rest.is_empty()) {
                (true, true) => "/".to_owned(),
                (true, false) => rest.to_owned(),
                (false, _) => format!("{base}{rest}"),
            }
        }
        PathRewrite::PrefixRewrite { prefix_rewrite } => {
            let rest = path
                .strip_prefix(matched_prefix.unwrap_or("/"))
                .unwrap_or(path);
            format!("{prefix_rewrite}{rest}")
        }
    }
}

/// The request's new `host` and origin-form target after a URL rewrite; `None`
/// for a part the rewrite leaves alone.
pub fn rewrite_url<'a>(
    rewrite: &'a UrlRewrite,
    path: &str,
    query: Option<&str>,
    matched_prefix: Option<&str>,
) -> (Option<&'a str>, Option<String>) {
    let target = rewrite.path.as_ref().map(|p| {
        let mut t = rewrite_path(p, path, matched_prefix);
        if let Some(q) = query {
            t.push('?');
            t.push_str(q);
        }
        t
    });
    (rewrite.hostname.as_deref(), target)
}

/// Whether a request is mirrored: every one without a fraction, else when `draw`
/// (uniform in `0..denominator`) falls below the numerator.
pub fn mirrored(fraction: Option<Fraction>, draw: impl FnOnce(u64) -> u64) -> bool {
    fraction.is_none_or(|f| f.denominator > 0 && f.admits(draw(u64::from(f.denominator))))
}

/// Where a request goes once its rule (if any) is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// A cluster, and the filters of the backend that named it (none for the
    /// route's default cluster).
    Cluster(&'a str, &'a [Filter]),
    /// Gateway API's 500: the rule has no backend, every weight is 0, or the draw
    /// fell on an invalid backend (one the operator could not resolve: unknown kind,
    /// missing Service, cross-namespace without a ReferenceGrant), which the model
    /// writes as a cluster name that is not in the config.
    NoValidBackend,
}

/// The cluster for a request: a draw among the rule's `backends`, or the route's
/// `default` cluster when the rule lists none (an empty name: the route has none).
/// A drawn backend must `exist`; the route's own cluster is taken as written, so a
/// missing one stays Envoy's 503 `NC` further on.
pub fn target<'a>(
    default: &'a str,
    backends: &'a [WeightedBackend],
    exists: impl Fn(&str) -> bool,
    draw: impl FnOnce(u64) -> u64,
) -> Target<'a> {
    if backends.is_empty() {
        return if default.is_empty() {
            Target::NoValidBackend
        } else {
            Target::Cluster(default, &[])
        };
    }
    match pick_backend(backends, draw) {
        Some(b) if exists(&b.cluster) => Target::Cluster(&b.cluster, &b.filters),
        _ => Target::NoValidBackend,
    }
}

/// A backend by weight, from `draw` uniform in `0..total`; `None` when every weight
/// is 0 (Gateway API: answer 500).
pub fn pick_backend(
    backends: &[WeightedBackend],
    draw: impl FnOnce(u64) -> u64,
) -> Option<&WeightedBackend> {
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut at = draw(total);
    for b in backends {
        let w = u64::from(b.weight);
        if at < w {
            return Some(b);
        }
        at -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    use waypoint_config::{Header, HeaderModifier, Redirect, WeightedBackend};

    #[test]
    fn mirror_fractions() {
        use waypoint_config::Fraction;
        let half = Some(Fraction {
            numerator: 1,
            denominator: 2,
        });
        assert!(mirrored(None, |_| unreachable!()));
        assert!(mirrored(half, |n| n - 2));
        assert!(!mirrored(half, |n| n - 1));
        let none = Some(Fraction {
            numerator: 0,
            denominator: 100,
        });
        assert!(!mirrored(none, |_| 0));
    }

    use super::*;

    fn redirect(yaml: &str) -> Redirect {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn origin<'a>(authority: &'a str, path: &'a str, prefix: Option<&'a str>) -> Origin<'a> {
        Origin {
            scheme: "http",
            authority,
            path,
            query: Some("a=1"),
            matched_prefix: prefix,
        }
    }

    #[test]
    fn redirect_locations_follow_gateway_apis_port_rules() {
        let o = origin("example.com:8080", "/api/users", Some("/api"));
        assert_eq!(
            redirect_location(&redirect("{scheme: https}"), &o),
            "https://example.com/api/users?a=1"
        );
        assert_eq!(
            redirect_location(&redirect("{hostname: other.org}"), &o),
            "http://other.org:8080/api/users?a=1"
        );
        assert_eq!(
            redirect_location(&redirect("{port: 443, scheme: https}"), &o),
            "https://example.com/api/users?a=1"
        );
        assert_eq!(
            redirect_location(&redirect("{port: 9000}"), &origin("example.com", "/", None)),
            "http://example.com:9000/?a=1"
        );
        assert_eq!(
            redirect_location(
                &redirect("{path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}"),
                &o
            ),
            "http://example.com:8080/v2/users?a=1"
        );
        assert_eq!(
            redirect_location(
                &redirect("{path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}"),
                &origin("example.com", "/api", Some("/api/"))
            ),
            "http://example.com/?a=1"
        );
        assert_eq!(
            redirect_location(
                &redirect("{path: {type: ReplaceFullPath, replaceFullPath: /moved}}"),
                &o
            ),
            "http://example.com:8080/moved?a=1"
        );
        assert_eq!(redirect("{}").status_code, 302);
    }

    /// Envoy's `prefix_rewrite` replaces the matched characters, whatever follows.
    #[test]
    fn prefix_rewrite_replaces_the_matched_characters() {
        let rewrite = |to: &str| PathRewrite::PrefixRewrite {
            prefix_rewrite: to.to_owned(),
        };
        assert_eq!(
            rewrite_path(&rewrite("/v2"), "/api/users", Some("/api")),
            "/v2/users"
        );
        assert_eq!(
            rewrite_path(&rewrite("/v2"), "/apiary", Some("/api")),
            "/v2ary"
        );
        assert_eq!(
            rewrite_path(&rewrite("/"), "/api/users", Some("/api/")),
            "/users"
        );
        assert_eq!(
            rewrite_path(&rewrite("/bar"), "/foo/x", Some("/foo/")),
            "/barx"
        );
    }

    #[test]
    fn header_modifier_sets_adds_then_removes() {
        let mut h = HeaderMap::new();
        h.insert("x-a", "old".parse().unwrap());
        h.insert("x-gone", "1".parse().unwrap());
        let m = HeaderModifier {
            set: vec![Header {
                name: "X-A".into(),
                value: "new".into(),
            }],
            add: vec![
                Header {
                    name: "x-b".into(),
                    value: "1".into(),
                },
                Header {
                    name: "x-b".into(),
                    value: "2".into(),
                },
            ],
            remove: vec!["X-Gone".into()],
        };
        modify_headers(&m, &mut h);
        assert_eq!(h.get_all("x-a").iter().collect::<Vec<_>>(), ["new"]);
        assert_eq!(h.get_all("x-b").iter().collect::<Vec<_>>(), ["1", "2"]);
        assert!(h.get("x-gone").is_none());
    }

    #[test]
    fn weights_split_draws_and_all_zero_is_none() {
        let b = |c: &str, w| WeightedBackend {
            cluster: c.into(),
            weight: w,
            filters: Vec::new(),
        };
        let backends = [b("a", 90), b("zero", 0), b("c", 10)];
        let picks: Vec<&str> = (0..100)
            .map(|d| pick_backend(&backends, |_| d).unwrap().cluster.as_str())
            .collect();
        assert_eq!(picks.iter().filter(|p| **p == "a").count(), 90);
        assert_eq!(picks.iter().filter(|p| **p == "c").count(), 10);
        assert!(pick_backend(&[b("x", 0)], |_| 0).is_none());
    }

    #[test]
    fn invalid_backends_and_missing_defaults_have_no_target() {
        let b = |c: &str, w| WeightedBackend {
            cluster: c.into(),
            weight: w,
            filters: Vec::new(),
        };
        let exists = |c: &str| c == "good";
        // Half the weight on a backend the operator could not resolve: that half
        // of the draws gets no target (500), the other half the good cluster.
        let split = [b("good", 1), b("missing", 1)];
        assert_eq!(
            target("route", &split, exists, |_| 0),
            Target::Cluster("good", &[])
        );
        assert_eq!(
            target("route", &split, exists, |_| 1),
            Target::NoValidBackend
        );
        assert_eq!(
            target("route", &[b("good", 0)], exists, |_| 0),
            Target::NoValidBackend
        );
        // No backends: the route's cluster, as written, or none at all.
        assert_eq!(
            target("route", &[], exists, |_| unreachable!()),
            Target::Cluster("route", &[])
        );
        assert_eq!(
            target("", &[], exists, |_| unreachable!()),
            Target::NoValidBackend
        );
        // The route's default never stands in for an invalid backend.
        assert_eq!(
            target("good", &[b("missing", 1)], exists, |_| 0),
            Target::NoValidBackend
        );
    }
}
