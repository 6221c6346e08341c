//! Whether an HBONE CONNECT stream is answered 200 (and tunnelled) or refused, and
//! with what, as ztunnel's inbound answers (waypoint-contract §5): 400 for anything
//! but CONNECT or a destination this waypoint does not serve, 401 for a peer outside
//! the trust domain, 503 when the destination has no usable upstream.

use http::{Method, StatusCode};
use waypoint_config::{Listener, Route};

use crate::proxy::Runtime;

#[derive(Debug, PartialEq)]
pub enum Decision<'a> {
    /// Answer 200 and serve the tunnel, routed by `destination`.
    Tunnel {
        destination: String,
        route: &'a Route,
    },
    Refuse {
        status: StatusCode,
        reason: String,
    },
}

fn refuse<'a>(status: StatusCode, reason: String) -> Decision<'a> {
    Decision::Refuse { status, reason }
}

/// The pure decision; `has_host` tells whether a cluster could serve a request now.
pub fn decide<'a>(
    method: &Method,
    authority: Option<&str>,
    peer: Option<&waypoint_identity::Identity>,
    trust_domain: &str,
    listener: &'a Listener,
    has_host: impl Fn(&str) -> bool,
) -> Decision<'a> {
    if method != Method::CONNECT {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("HBONE accepts only CONNECT; got {method}"),
        );
    }
    match peer {
        Some(id) if id.trust_domain == trust_domain => {}
        Some(id) => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                format!("peer {id} is outside the trust domain {trust_domain}"),
            );
        }
        None => {
            return refuse(
                StatusCode::UNAUTHORIZED,
                "the peer certificate carries no SPIFFE identity".to_owned(),
            );
        }
    }
    let Some(authority) = authority.filter(|a| is_host_port(a)) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!(
                "CONNECT needs an authority of the form host:port (the original destination); got {}",
                authority.unwrap_or("none")
            ),
        );
    };
    let Some(route) = crate::host_match::select_route(&listener.routes, Some(authority))
        .map(|i| &listener.routes[i])
    else {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("this waypoint does not serve {authority}"),
        );
    };
    if !has_host(&route.cluster) {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "no healthy upstream for {authority} (cluster {})",
                route.cluster
            ),
        );
    }
    Decision::Tunnel {
        destination: authority.to_owned(),
        route,
    }
}

/// `host:port` or `[v6]:port` with a numeric port.
fn is_host_port(a: &str) -> bool {
    a.rsplit_once(':').is_some_and(|(host, port)| {
        !host.is_empty() && !port.is_empty() && port.parse::<u16>().is_ok()
    })
}

/// [`decide`] against the runtime in force.
pub fn decide_in<'a>(
    runtime: &'a Runtime,
    listener: &str,
    method: &Method,
    authority: Option<&str>,
    peer: Option<&waypoint_identity::Identity>,
    trust_domain: &str,
) -> Decision<'a> {
    let Some(l) = runtime.config.listeners.iter().find(|l| l.name == listener) else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("listener {listener} is not in the config in force"),
        );
    };
    decide(method, authority, peer, trust_domain, l, |cluster| {
        runtime.cluster(cluster).is_some_and(|c| c.has_host())
    })
}

#[cfg(test)]
mod tests {
    use waypoint_identity::Identity;

    use super::*;

    fn listener() -> Listener {
        waypoint_config::Config::from_yaml(
            "listeners:
- name: mesh
  address: 0.0.0.0:15008
  protocol: HBONE
  routes:
  - hosts: [in-ambient.httpbin.svc.cluster.local:8000, 10.96.0.10:8000]
    cluster: inbound-vip|8000|http|in-ambient.httpbin.svc.cluster.local
clusters:
- name: inbound-vip|8000|http|in-ambient.httpbin.svc.cluster.local
  endpoints: [{address: 10.244.0.5:8080}]
",
        )
        .unwrap()
        .listeners
        .remove(0)
    }

    fn client() -> Identity {
        Identity::new("cluster.local", "httpbin", "client")
    }

    fn status(d: &Decision<'_>) -> (u16, String) {
        match d {
            Decision::Tunnel { destination, .. } => (200, destination.clone()),
            Decision::Refuse { status, reason } => (status.as_u16(), reason.clone()),
        }
    }

    #[test]
    fn tunnels_a_served_destination_from_the_trust_domain() {
        let l = listener();
        let d = decide(
            &Method::CONNECT,
            Some("10.96.0.10:8000"),
            Some(&client()),
            "cluster.local",
            &l,
            |_| true,
        );
        assert_eq!(status(&d), (200, "10.96.0.10:8000".to_owned()));
    }

    /// (method, authority, peer, cluster has a host, status, reason)
    type Case<'a> = (
        Method,
        Option<&'a str>,
        Option<&'a Identity>,
        bool,
        u16,
        &'a str,
    );

    #[test]
    fn refusals_in_ztunnels_order_and_words() {
        let l = listener();
        let id = client();
        let foreign = Identity::new("evil.org", "httpbin", "client");
        let cases: [Case<'_>; 7] = [
            (
                Method::GET,
                Some("10.96.0.10:8000"),
                Some(&id),
                true,
                400,
                "HBONE accepts only CONNECT; got GET",
            ),
            (
                Method::CONNECT,
                Some("10.96.0.10:8000"),
                Some(&foreign),
                true,
                401,
                "peer spiffe://evil.org/ns/httpbin/sa/client is outside the trust domain cluster.local",
            ),
            (
                Method::CONNECT,
                Some("10.96.0.10:8000"),
                None,
                true,
                401,
                "the peer certificate carries no SPIFFE identity",
            ),
            (
                Method::CONNECT,
                None,
                Some(&id),
                true,
                400,
                "CONNECT needs an authority of the form host:port (the original destination); got none",
            ),
            (
                Method::CONNECT,
                Some("10.96.0.10"),
                Some(&id),
                true,
                400,
                "CONNECT needs an authority of the form host:port (the original destination); got 10.96.0.10",
            ),
            (
                Method::CONNECT,
                Some("10.96.0.11:8000"),
                Some(&id),
                true,
                400,
                "this waypoint does not serve 10.96.0.11:8000",
            ),
            (
                Method::CONNECT,
                Some("10.96.0.10:8000"),
                Some(&id),
                false,
                503,
                "no healthy upstream for 10.96.0.10:8000 (cluster inbound-vip|8000|http|in-ambient.httpbin.svc.cluster.local)",
            ),
        ];
        for (method, authority, peer, healthy, code, reason) in cases {
            let d = decide(&method, authority, peer, "cluster.local", &l, |_| healthy);
            assert_eq!(
                status(&d),
                (code, reason.to_owned()),
                "{method} {authority:?}"
            );
        }
    }
}
