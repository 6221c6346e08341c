//! HTTPRoute rules through the whole proxy on loopback, real backends and client:
//! matching precedence, header modifiers both ways, weighted backends, redirects,
//! 404 when no rule matches and 500 when every backend weighs 0; a rule's own retry
//! policy and timeout; a VirtualService's written order, prefix rewrite and direct
//! response.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use waypoint_dataplane::proxy::{self, Shared};

mod support;

/// Answers `<name> x-env=<the x-env header it got>`.
async fn backend(name: &'static str) -> SocketAddr {
    let served = support::serve_http("127.0.0.1", move |req| async move {
        let env = support::header(&req, "x-env");
        support::text(format!("{name} x-env={env}"))
    });
    served.await.addr
}

async fn start() -> SocketAddr {
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    let yaml = format!(
        "listeners:
- name: plain
  address: 127.0.0.1:0
  routes:
  - hosts: [reviews:9080]
    cluster: v1
    rules:
    - matches: [{{path: {{type: PathPrefix, value: /api}}}}]
      backends: [{{cluster: v1, weight: 50}}, {{cluster: v2, weight: 50}}]
    - matches: [{{path: {{type: PathPrefix, value: /api}}, headers: [{{name: x-canary, value: \"yes\"}}]}}]
      filters:
      - {{type: RequestHeaderModifier, set: [{{name: x-env, value: canary}}]}}
      - {{type: ResponseHeaderModifier, add: [{{name: x-route, value: canary}}]}}
      backends: [{{cluster: v2}}]
    - matches: [{{path: {{type: PathPrefix, value: /old}}}}]
      filters: [{{type: RequestRedirect, path: {{type: ReplacePrefixMatch, replacePrefixMatch: /new}}, statusCode: 301}}]
    - matches: [{{path: {{type: Exact, value: /zero}}}}]
      backends: [{{cluster: v1, weight: 0}}]
clusters:
- {{name: v1, endpoints: [{{address: \"{v1}\"}}]}}
- {{name: v2, endpoints: [{{address: \"{v2}\"}}]}}
"
    );
    serve(&yaml).await
}

/// The proxy for `yaml` on its `plain` listener, on a loopback port.
async fn serve(yaml: &str) -> SocketAddr {
    let shared = Shared::with_access_log(
        waypoint_config::Config::from_yaml(yaml).unwrap(),
        Box::new(|_| {}),
    );
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(proxy::serve(shared, socket, "plain".into()));
    addr
}

async fn get(proxy: SocketAddr, path: &str, headers: &[(&str, &str)]) -> http::Response<String> {
    let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::get(path).header("host", "reviews:9080");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
    http::Response::from_parts(parts, body)
}

#[tokio::test]
async fn more_header_matches_win_and_modifiers_apply_both_ways() {
    let proxy = start().await;
    let resp = get(proxy, "/api/reviews/1", &[("x-canary", "yes")]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.body(), "v2 x-env=canary");
    assert_eq!(resp.headers()["x-route"], "canary");
}

#[tokio::test]
async fn weighted_backends_both_serve() {
    let proxy = start().await;
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..100 {
        let resp = get(proxy, "/api/reviews/1", &[]).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers().get("x-route").is_none());
        *seen.entry(resp.body().clone()).or_insert(0) += 1;
    }
    // 50/50 over 100 draws: each side is all but certain to be seen.
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["v1 x-env=-", "v2 x-env=-"],
        "{seen:?}"
    );
}

#[tokio::test]
async fn redirects_404s_and_zero_weights() {
    let proxy = start().await;
    let resp = get(proxy, "/old/page?x=1", &[]).await;
    assert_eq!(resp.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        resp.headers()["location"],
        "http://reviews:9080/new/page?x=1"
    );
    assert_eq!(
        get(proxy, "/elsewhere", &[]).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(proxy, "/zero", &[]).await.status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
}

/// A port nothing listens on: connecting to it is refused.
async fn refused_address() -> SocketAddr {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    socket.local_addr().unwrap()
}

/// Answers after `delay`.
async fn slow_backend(delay: std::time::Duration) -> SocketAddr {
    let served = support::serve_http("127.0.0.1", move |_req| async move {
        tokio::time::sleep(delay).await;
        support::text("slow")
    });
    served.await.addr
}

/// A rule's own retry policy and request timeout replace the route's: with
/// `attempts: 0` a refused connection is the client's 503 (round robin sends every
/// other request to the dead endpoint), while the route's default retries hide it;
/// a rule's timeout answers 504.
#[tokio::test]
async fn a_rules_retry_and_timeout_replace_the_routes() {
    let dead = refused_address().await;
    let live = backend("live").await;
    let slow = slow_backend(std::time::Duration::from_secs(5)).await;
    let yaml = format!(
        "listeners:
- name: plain
  address: 127.0.0.1:0
  routes:
  - hosts: [reviews:9080]
    cluster: mixed
    rules:
    - matches: [{{path: {{type: PathPrefix, value: /no-retry}}}}]
      retry: {{attempts: 0, retryOn: [connect-failure]}}
    - matches: [{{path: {{type: PathPrefix, value: /slow}}}}]
      timeout: 100ms
      backends: [{{cluster: slow}}]
    - matches: [{{path: {{type: PathPrefix, value: /}}}}]
clusters:
- name: mixed
  loadBalancer: ROUND_ROBIN
  endpoints: [{{address: \"{dead}\"}}, {{address: \"{live}\"}}]
- {{name: slow, endpoints: [{{address: \"{slow}\"}}]}}
"
    );
    let proxy = serve(&yaml).await;

    let mut with_default = Vec::new();
    for _ in 0..4 {
        with_default.push(get(proxy, "/retried", &[]).await.status());
    }
    assert_eq!(
        with_default,
        [StatusCode::OK; 4],
        "the route's default retries"
    );
    let mut without = Vec::new();
    for _ in 0..4 {
        without.push(get(proxy, "/no-retry", &[]).await.status().as_u16());
    }
    without.sort_unstable();
    assert_eq!(
        without,
        [200, 200, 503, 503],
        "attempts 0: every other request fails"
    );
    assert_eq!(
        get(proxy, "/slow", &[]).await.status(),
        StatusCode::GATEWAY_TIMEOUT
    );
}

/// A VirtualService's shape: rules in written order (the first match wins where
/// Gateway API precedence would pick the exact path), Envoy's character-wise
/// prefix and `prefix_rewrite`, and a direct response.
#[tokio::test]
async fn declared_order_prefix_rewrite_and_direct_response() {
    let echo = support::serve_http("127.0.0.1", |req| async move {
        support::text(req.uri().path().to_owned())
    })
    .await
    .addr;
    let yaml = format!(
        "listeners:
- name: plain
  address: 127.0.0.1:0
  routes:
  - hosts: [reviews:9080]
    cluster: echo
    ruleOrder: declared
    rules:
    - matches: [{{path: {{type: Prefix, value: /old}}}}]
      filters: [{{type: URLRewrite, path: {{type: PrefixRewrite, prefixRewrite: /new}}}}]
    - matches: [{{path: {{type: Exact, value: /older/exact}}}}]
      directResponse: {{status: 418, body: shadowed}}
    - matches: [{{path: {{type: Prefix, value: /maintenance}}}}]
      directResponse: {{status: 503, body: down for maintenance}}
clusters:
- {{name: echo, endpoints: [{{address: \"{echo}\"}}]}}
"
    );
    let proxy = serve(&yaml).await;

    let resp = get(proxy, "/oldest/x", &[]).await;
    assert_eq!(
        (resp.status(), resp.body().as_str()),
        (StatusCode::OK, "/newest/x")
    );
    let resp = get(proxy, "/older/exact", &[]).await;
    assert_eq!(
        (resp.status(), resp.body().as_str()),
        (StatusCode::OK, "/newer/exact")
    );
    let resp = get(proxy, "/maintenance/today", &[]).await;
    assert_eq!(
        (resp.status(), resp.body().as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "down for maintenance")
    );
    assert_eq!(resp.headers()["content-type"], "text/plain");
    assert_eq!(
        get(proxy, "/other", &[]).await.status(),
        StatusCode::NOT_FOUND
    );
}
