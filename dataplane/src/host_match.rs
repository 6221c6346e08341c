//! Which route serves a request's authority, and which certificate answers a TLS
//! server name: the most specific match wins, whatever the order in the config.
//! An exact `host:port` beats an exact host, which beats the longest `*.suffix`
//! wildcard, which beats a catch-all (a route without hosts, a certificate without a
//! hostname). Remaining ties go to the earlier entry. Pure.
//!
//! Wildcards follow Gateway API listener and route hostnames: `*.example.com`
//! matches `a.example.com` and `a.b.example.com`, never `example.com`. Names are
//! compared ASCII case-insensitively (DNS names are).

use waypoint_config::Route;

/// How specifically a host pattern matches; a greater value is more specific.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fit {
    /// No hosts at all: anything.
    Any,
    /// `*.suffix`, ranked by the length of `.suffix` (longer is more specific).
    Wildcard(usize),
    /// The host alone, whatever the port.
    Host,
    /// The host and the port, `name:port` or `ip:port`.
    Authority,
}

/// How `pattern` (`host`, `host:port`, `*.suffix` or `*.suffix:port`) matches
/// `authority` (`host` or `host:port`); `None` when it does not. A pattern with a
/// port matches only that port; one without matches any.
pub fn fit(pattern: &str, authority: &str) -> Option<Fit> {
    let (host, port) = split_port(authority);
    let (want_host, want_port) = split_port(pattern);
    if want_port.is_some() && want_port != port {
        return None;
    }
    if want_host.eq_ignore_ascii_case(host) {
        return Some(if want_port.is_some() {
            Fit::Authority
        } else {
            Fit::Host
        });
    }
    let suffix = want_host.strip_prefix('*')?;
    let (host, suffix) = (host.as_bytes(), suffix.as_bytes());
    let matches = suffix.first() == Some(&b'.')
        && host.len() > suffix.len()
        && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix);
    matches.then_some(Fit::Wildcard(suffix.len()))
}

/// `host` and the port of `host:port` or `[v6]:port`; no port otherwise.
fn split_port(authority: &str) -> (&str, Option<&str>) {
    let port_at = if authority.starts_with('[') {
        authority.find("]:").map(|i| i + 1)
    } else if authority.bytes().filter(|&b| b == b':').count() == 1 {
        authority.find(':')
    } else {
        None
    };
    match port_at {
        Some(i) => (&authority[..i], Some(&authority[i + 1..])),
        None => (authority, None),
    }
}

/// The indices of the most specific entries, in config order; empty when none fits.
pub fn best(fits: impl IntoIterator<Item = Option<Fit>>) -> Vec<usize> {
    let mut top: Option<Fit> = None;
    let mut winners = Vec::new();
    for (i, f) in fits.into_iter().enumerate() {
        let Some(f) = f else { continue };
        match top.map(|t| f.cmp(&t)) {
            Some(std::cmp::Ordering::Less) => {}
            Some(std::cmp::Ordering::Equal) => winners.push(i),
            None | Some(std::cmp::Ordering::Greater) => {
                top = Some(f);
                winners = vec![i];
            }
        }
    }
    winners
}

/// How a route's hosts match `authority`: its best host, or [`Fit::Any`] without
/// hosts. No authority (an HTTP/1.0 request without `Host`) reaches only catch-alls.
pub fn route_fit(route: &Route, authority: Option<&str>) -> Option<Fit> {
    if route.hosts.is_empty() {
        return Some(Fit::Any);
    }
    let authority = authority?;
    route.hosts.iter().filter_map(|h| fit(h, authority)).max()
}

/// The index of the route that serves `authority`.
pub fn select_route(routes: &[Route], authority: Option<&str>) -> Option<usize> {
    best(routes.iter().map(|r| route_fit(r, authority)))
        .first()
        .copied()
}

/// The certificates equally best for a TLS server name, in config order. Without
/// a server name only certificates without a hostname qualify; with one, a
/// certificate without a hostname is the last resort.
pub fn select_certificates<'a>(
    hostnames: impl IntoIterator<Item = Option<&'a str>>,
    server_name: Option<&str>,
) -> Vec<usize> {
    best(hostnames.into_iter().map(|h| match (h, server_name) {
        (None, _) => Some(Fit::Any),
        (Some(h), Some(name)) => fit(h, name),
        (Some(_), None) => None,
    }))
}

/// Gateway API's misdirected request (421): on an HTTPS listener, the TLS server
/// name and the request's host would each be served by a different Gateway listener,
/// told apart by the most specific certificate hostname that fits each.
pub fn misdirected(hostnames: &[Option<&str>], server_name: &str, authority: &str) -> bool {
    let listener = |name: &str| {
        select_certificates(hostnames.iter().copied(), Some(name))
            .first()
            .map(|&i| hostnames[i])
    };
    listener(server_name) != listener(authority)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_of_another_listener_than_the_server_name_is_misdirected() {
        // The conformance suite's HTTPS Gateway: no hostname, an exact one, a
        // wildcard and an exact one under the wildcard.
        let listeners = [
            None,
            Some("second-example.org"),
            Some("*.wildcard.org"),
            Some("fourth-example.wildcard.org"),
        ];
        for (sni, host, want) in [
            ("example.org", "example.org", false),
            ("example.org", "second-example.org", true),
            ("example.org", "unknown-example.org", false),
            ("second-example.org", "example.org", true),
            (
                "third-example.wildcard.org",
                "fith-example.wildcard.org:443",
                false,
            ),
            (
                "third-example.wildcard.org",
                "fourth-example.wildcard.org",
                true,
            ),
            (
                "fourth-example.wildcard.org",
                "fith-example.wildcard.org",
                true,
            ),
            ("unknown-example.org", "example.org", false),
        ] {
            assert_eq!(misdirected(&listeners, sni, host), want, "{sni} {host}");
        }
    }

    #[test]
    fn wildcards_match_one_or_more_labels_never_the_bare_suffix() {
        let star = "*.example.com";
        assert_eq!(fit(star, "a.example.com"), Some(Fit::Wildcard(12)));
        assert_eq!(fit(star, "a.b.example.com"), Some(Fit::Wildcard(12)));
        assert_eq!(fit(star, "A.Example.COM:8080"), Some(Fit::Wildcard(12)));
        assert_eq!(fit(star, "example.com"), None);
        assert_eq!(fit(star, ".example.com"), None);
        assert_eq!(fit(star, "aexample.com"), None);
        assert_eq!(fit(star, "example.com.evil"), None);
        // Not a wildcard: `*` only stands for whole leading labels.
        assert_eq!(fit("*example.com", "a.example.com"), None);
        assert_eq!(fit("*", "example.com"), None);
        // Non-ASCII hosts are compared byte-wise, without panicking mid-character.
        assert_eq!(fit(star, "é.example.com"), Some(Fit::Wildcard(12)));
        assert_eq!(fit("*.é", "aé"), None);
    }

    #[test]
    fn ports_in_patterns_must_match_ports_in_authorities() {
        assert_eq!(fit("svc:80", "svc:80"), Some(Fit::Authority));
        assert_eq!(fit("svc", "svc:80"), Some(Fit::Host));
        assert_eq!(fit("SVC", "svc"), Some(Fit::Host));
        assert_eq!(fit("svc:80", "svc:81"), None);
        assert_eq!(fit("svc:80", "svc"), None);
        assert_eq!(
            fit("10.96.0.10:8000", "10.96.0.10:8000"),
            Some(Fit::Authority)
        );
        assert_eq!(fit("[fd00::1]:80", "[fd00::1]:80"), Some(Fit::Authority));
        assert_eq!(fit("[fd00::1]", "[fd00::1]:80"), Some(Fit::Host));
        assert_eq!(fit("[fd00::1]:80", "[fd00::1]:81"), None);
        assert_eq!(fit("*.a.org:443", "x.a.org:443"), Some(Fit::Wildcard(6)));
        assert_eq!(fit("*.a.org:443", "x.a.org:80"), None);
        assert_eq!(fit("*.a.org:443", "x.a.org"), None);
    }

    #[test]
    fn specificity_orders_the_kinds_then_the_suffix_length() {
        assert!(Fit::Authority > Fit::Host);
        assert!(Fit::Host > Fit::Wildcard(100));
        assert!(Fit::Wildcard(12) > Fit::Wildcard(8));
        assert!(Fit::Wildcard(1) > Fit::Any);
        assert_eq!(best([None, Some(Fit::Any), Some(Fit::Wildcard(3))]), [2]);
        assert_eq!(best([Some(Fit::Host), None, Some(Fit::Host)]), [0, 2]);
        assert!(best([None, None]).is_empty());
    }

    fn routes(hosts: &[&[&str]]) -> Vec<Route> {
        hosts
            .iter()
            .map(|h| Route {
                hosts: h.iter().map(|s| (*s).to_owned()).collect(),
                cluster: String::new(),
                retry: waypoint_config::RetryConfig::default(),
                timeout: None,
                protocol: waypoint_config::RouteProtocol::Http,
                rules: Vec::new(),
                rule_order: waypoint_config::RuleOrder::Precedence,
                fault: None,
            })
            .collect()
    }

    #[test]
    fn the_most_specific_route_wins_in_any_order() {
        let hosts: [&[&str]; 5] = [
            &[],
            &["*.example.com"],
            &["*.b.example.com"],
            &["a.b.example.com"],
            &["other.org"],
        ];
        let cases = [
            ("a.b.example.com", "a.b.example.com"),
            ("A.B.Example.com:8080", "a.b.example.com"),
            ("x.b.example.com", "*.b.example.com"),
            ("x.y.b.example.com", "*.b.example.com"),
            ("b.example.com", "*.example.com"),
            ("example.com", "catch-all"),
            ("other.org", "other.org"),
            ("nothing.net", "catch-all"),
        ];
        // Every rotation of the route list picks the same route.
        for shift in 0..hosts.len() {
            let mut order = hosts.to_vec();
            order.rotate_left(shift);
            let rs = routes(&order);
            for (authority, want) in cases {
                let got = select_route(&rs, Some(authority)).map(|i| order[i]);
                let got = got.map_or("none", |h| h.first().copied().unwrap_or("catch-all"));
                assert_eq!(got, want, "{authority} with routes {order:?}");
            }
            let none = select_route(&rs, None).map(|i| order[i].len());
            assert_eq!(none, Some(0), "no authority: the catch-all");
        }
    }

    #[test]
    fn without_a_catch_all_an_unknown_host_has_no_route() {
        let rs = routes(&[&["*.example.com"], &["a.org"]]);
        assert_eq!(select_route(&rs, Some("example.com")), None);
        assert_eq!(select_route(&rs, None), None);
    }

    /// The mesh config lists bare names on a Service's first port only, so that a
    /// `Host` without a port reaches it; `name:port` must still reach its own port
    /// even though the bare name (a host-only match) is on an earlier route.
    #[test]
    fn host_and_port_beats_a_bare_host_on_an_earlier_route() {
        let rs = routes(&[&["svc:8000", "svc"], &["svc:9000"], &["10.96.0.10:9000"]]);
        assert_eq!(select_route(&rs, Some("svc:9000")), Some(1));
        assert_eq!(select_route(&rs, Some("svc:8000")), Some(0));
        assert_eq!(select_route(&rs, Some("svc")), Some(0));
        assert_eq!(select_route(&rs, Some("svc:7000")), Some(0));
        assert_eq!(select_route(&rs, Some("10.96.0.10:9000")), Some(2));
        assert_eq!(select_route(&rs, Some("10.96.0.10:8000")), None);
    }

    #[test]
    fn certificates_by_server_name() {
        let names = [
            None,
            Some("*.wildcard.org"),
            Some("*.b.wildcard.org"),
            Some("exact.org"),
            Some("exact.org"),
        ];
        let pick = |sni| select_certificates(names, sni);
        assert_eq!(pick(Some("exact.org")), [3, 4], "both, for the key type");
        assert_eq!(pick(Some("EXACT.org")), [3, 4]);
        assert_eq!(pick(Some("a.wildcard.org")), [1]);
        assert_eq!(pick(Some("a.b.wildcard.org")), [2]);
        assert_eq!(pick(Some("wildcard.org")), [0]);
        assert_eq!(pick(None), [0]);
        let no_default = &names[1..];
        assert!(select_certificates(no_default.iter().copied(), None).is_empty());
        assert!(select_certificates(no_default.iter().copied(), Some("x.org")).is_empty());
    }
}
