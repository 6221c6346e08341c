//! An ingress Gateway's config through the whole proxy on loopback, with real
//! backends and a real client: routes chosen by the most specific host (exact, then
//! the longest wildcard, then the catch-all) whatever their order, and Gateway API's
//! 500 for invalid backends.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use waypoint_dataplane::proxy::{self, Shared};

mod support;

/// Serves `answer` (request in, response body out) on a fresh loopback port.
async fn serve<F, Fut>(answer: F) -> SocketAddr
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = String> + Send + 'static,
{
    let served = support::serve_http("127.0.0.1", move |req| {
        let body = answer(req);
        async move { support::text(body.await) }
    });
    served.await.addr
}

/// Answers every request with its name.
async fn backend(name: &'static str) -> SocketAddr {
    serve(move |_| async move { name.to_owned() }).await
}

/// The `host` header and the origin-form target of a request, as one line.
fn host_and_target(req: &Request<hyper::body::Incoming>) -> String {
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("-");
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    format!("{host} {target}")
}

/// Serves `yaml`'s listener `gw` on a fresh port; access-log lines go to the vector.
async fn start(yaml: &str) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    let shared = Shared::with_access_log(
        waypoint_config::Config::from_yaml(yaml).unwrap(),
        Box::new(move |line| sink.lock().unwrap().push(line.to_owned())),
    );
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(proxy::serve(shared, socket, "gw".into()));
    (addr, lines)
}

async fn get(proxy: SocketAddr, host: &str, path: &str) -> (StatusCode, String) {
    let (status, _, body) = get_with_headers(proxy, host, path).await;
    (status, body)
}

async fn get_with_headers(
    proxy: SocketAddr,
    host: &str,
    path: &str,
) -> (StatusCode, http::HeaderMap, String) {
    let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8(body.to_vec()).unwrap())
}

/// The catch-all first and the wildcards before the exact host, as an operator
/// listing routes by name might write them: order must not matter.
#[tokio::test]
async fn the_most_specific_host_wins_whatever_the_order() {
    let names = ["any", "wild", "deeper", "exact"];
    let mut clusters = String::new();
    for name in names {
        let addr = backend(name).await;
        let _ = writeln!(
            clusters,
            "- {{name: {name}, endpoints: [{{address: \"{addr}\"}}]}}"
        );
    }
    let yaml = format!(
        "listeners:
- name: gw
  address: 127.0.0.1:0
  routes:
  - {{cluster: any}}
  - {{hosts: [\"*.example.com\"], cluster: wild}}
  - {{hosts: [\"*.b.example.com\"], cluster: deeper}}
  - {{hosts: [a.b.example.com], cluster: exact}}
clusters:
{clusters}"
    );
    let (proxy, _) = start(&yaml).await;
    for (host, want) in [
        ("a.b.example.com", "exact"),
        ("A.B.EXAMPLE.COM:8080", "exact"),
        ("c.b.example.com", "deeper"),
        ("x.y.b.example.com", "deeper"),
        ("b.example.com", "wild"),
        ("foo.example.com:80", "wild"),
        ("example.com", "any"),
        ("unrelated.net", "any"),
    ] {
        assert_eq!(
            get(proxy, host, "/").await,
            (StatusCode::OK, want.to_owned()),
            "{host}"
        );
    }
}

/// Gateway API's 500s: an invalid backend's share of the weight, a rule whose only
/// backend is invalid, and a rule without backends on a route without a cluster.
/// Each is a direct response in the access log (no flag, no upstream cluster). A
/// route with neither rules nor a cluster (a listener hostname nothing attached to)
/// is 404, and a route's own missing cluster stays Envoy's 503 `NC`.
#[tokio::test]
async fn invalid_backends_answer_500_and_a_missing_route_cluster_503() {
    let good = backend("good").await;
    let yaml = format!(
        "listeners:
- name: gw
  address: 127.0.0.1:0
  routes:
  - hosts: [gw.example.com]
    cluster: \"\"
    rules:
    - matches: [{{path: {{type: PathPrefix, value: /split}}}}]
      backends:
      - cluster: good
        weight: 1
        filters: [{{type: ResponseHeaderModifier, set: [{{name: x-backend, value: good}}]}}]
      - {{cluster: \"invalid:UnknownKind\", weight: 1}}
    - matches: [{{path: {{type: PathPrefix, value: /invalid}}}}]
      backends: [{{cluster: \"invalid:Service/default/gone\"}}]
    - matches: [{{path: {{type: PathPrefix, value: /none}}}}]
  - hosts: [bare.example.com]
    cluster: \"\"
  - hosts: [mesh.example.com]
    cluster: good
    rules: [{{}}]
  - hosts: [stale.example.com]
    cluster: stale
clusters:
- {{name: good, endpoints: [{{address: \"{good}\"}}]}}
"
    );
    // Not loadable as written (`stale` names no cluster): served unvalidated, to
    // show what a route whose own cluster is missing answers.
    let invalid = waypoint_config::Config::from_yaml(&yaml).unwrap_err();
    assert_eq!(
        invalid.to_string(),
        "listeners[0].routes[3].cluster: no cluster named \"stale\""
    );
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    let shared = Shared::with_access_log(
        serde_yaml::from_str(&yaml).unwrap(),
        Box::new(move |line| sink.lock().unwrap().push(line.to_owned())),
    );
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = socket.local_addr().unwrap();
    tokio::spawn(proxy::serve(shared, socket, "gw".into()));

    let mut split = std::collections::BTreeMap::new();
    for _ in 0..100 {
        let (status, headers, body) = get_with_headers(proxy, "gw.example.com", "/split").await;
        // The drawn backend's own filter applies to its responses only.
        let tagged = headers.get("x-backend").is_some_and(|v| v == "good");
        assert_eq!(tagged, status == StatusCode::OK, "{status} {headers:?}");
        *split.entry((status, body)).or_insert(0) += 1;
    }
    // 1:1 over 100 draws: each side is all but certain to be seen.
    assert_eq!(
        split.keys().collect::<Vec<_>>(),
        [
            &(StatusCode::OK, "good".to_owned()),
            &(StatusCode::INTERNAL_SERVER_ERROR, String::new())
        ],
        "{split:?}"
    );
    assert_eq!(
        get(proxy, "bare.example.com", "/").await.0,
        StatusCode::NOT_FOUND
    );
    for (host, path) in [("gw.example.com", "/invalid"), ("gw.example.com", "/none")] {
        assert_eq!(
            get(proxy, host, path).await.0,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{host}{path}"
        );
    }
    assert_eq!(
        get(proxy, "mesh.example.com", "/").await,
        (StatusCode::OK, "good".to_owned())
    );
    assert_eq!(
        get(proxy, "stale.example.com", "/").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let lines = lines.lock().unwrap();
    let line = |needle: &str| {
        lines
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
            .unwrap_or_default()
    };
    let invalid = line("GET /invalid");
    assert!(
        invalid.contains(" 500 - direct_response - ")
            && invalid.contains("\"gw.example.com\" \"-\" - "),
        "no flag, no upstream host or cluster: {invalid}"
    );
    let stale = line("\"stale.example.com\"");
    assert!(
        stale.contains(" 503 NC cluster_not_found - ") && stale.contains(" stale "),
        "{stale}"
    );
}

/// Answers every request with the `host` header and the target it received.
async fn echo_target() -> SocketAddr {
    serve(|req| async move { host_and_target(&req) }).await
}

/// Gateway API's URLRewrite: the upstream sees the new host and path (the matched
/// prefix replaced element-wise, the query kept); the client's request is unchanged.
#[tokio::test]
async fn url_rewrites_reach_the_upstream() {
    let echo = echo_target().await;
    let yaml = format!(
        "listeners:
- name: gw
  address: 127.0.0.1:0
  routes:
  - hosts: [gw.example.com]
    cluster: \"\"
    rules:
    - matches: [{{path: {{type: PathPrefix, value: /prefix/one}}}}]
      filters: [{{type: URLRewrite, hostname: one.example.org, path: {{type: ReplacePrefixMatch, replacePrefixMatch: /one}}}}]
      backends: [{{cluster: echo}}]
    - matches: [{{path: {{type: PathPrefix, value: /strip}}}}]
      filters: [{{type: URLRewrite, path: {{type: ReplacePrefixMatch, replacePrefixMatch: /}}}}]
      backends: [{{cluster: echo}}]
    - matches: [{{path: {{type: PathPrefix, value: /full}}}}]
      filters: [{{type: URLRewrite, path: {{type: ReplaceFullPath, replaceFullPath: /replaced}}}}]
      backends: [{{cluster: echo}}]
clusters:
- {{name: echo, endpoints: [{{address: \"{echo}\"}}]}}
"
    );
    let (proxy, _) = start(&yaml).await;
    for (path, want) in [
        ("/prefix/one/two?x=1", "one.example.org /one/two?x=1"),
        ("/prefix/one", "one.example.org /one"),
        ("/strip/a/b", "gw.example.com /a/b"),
        ("/strip", "gw.example.com /"),
        ("/full/anything?q", "gw.example.com /replaced?q"),
    ] {
        assert_eq!(
            get(proxy, "gw.example.com", path).await,
            (StatusCode::OK, want.to_owned()),
            "{path}"
        );
    }
}

/// Records the `host` and target of every request it gets.
async fn recorder() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let addr = serve(move |req| {
        log.lock().unwrap().push(host_and_target(&req));
        async { "mirror".to_owned() }
    })
    .await;
    (addr, seen)
}

/// Gateway API's RequestMirror: the client gets the primary backend's answer, the
/// mirror a copy with Envoy's `-shadow` host; a 0/100 fraction and an invalid
/// mirror backend send nothing.
#[tokio::test]
async fn requests_are_mirrored_by_fraction() {
    let good = backend("primary").await;
    let (mirror, seen) = recorder().await;
    let yaml = format!(
        "listeners:
- name: gw
  address: 127.0.0.1:0
  routes:
  - hosts: [gw.example.com]
    cluster: \"\"
    rules:
    - matches: [{{path: {{type: PathPrefix, value: /all}}}}]
      filters: [{{type: RequestMirror, cluster: mirror}}, {{type: RequestMirror, cluster: \"invalid|BackendNotFound|x/y\"}}]
      backends: [{{cluster: primary}}]
    - matches: [{{path: {{type: PathPrefix, value: /never}}}}]
      filters: [{{type: RequestMirror, cluster: mirror, fraction: {{numerator: 0}}}}]
      backends: [{{cluster: primary}}]
clusters:
- {{name: primary, endpoints: [{{address: \"{good}\"}}]}}
- {{name: mirror, endpoints: [{{address: \"{mirror}\"}}]}}
"
    );
    let (proxy, _) = start(&yaml).await;
    for path in ["/all/1?x", "/never/1", "/all/2"] {
        assert_eq!(
            get(proxy, "gw.example.com", path).await,
            (StatusCode::OK, "primary".to_owned())
        );
    }
    // Mirrors are fire-and-forget: wait for both copies to land.
    for _ in 0..100 {
        if seen.lock().unwrap().len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut got = seen.lock().unwrap().clone();
    got.sort();
    assert_eq!(
        got,
        [
            "gw.example.com-shadow /all/1?x",
            "gw.example.com-shadow /all/2"
        ]
    );
}

/// Answers after `delay`.
async fn slow(delay: std::time::Duration) -> SocketAddr {
    serve(move |_| async move {
        tokio::time::sleep(delay).await;
        "slow".to_owned()
    })
    .await
}

/// HTTPRoute `timeouts.backendRequest`: an attempt that outlives it is cut, and with
/// no retry left the client gets Envoy's 504 `UT`; without it the answer comes.
#[tokio::test]
async fn a_backend_timeout_cuts_each_attempt() {
    let backend = slow(std::time::Duration::from_millis(400)).await;
    let yaml = format!(
        "listeners:
- name: gw
  address: 127.0.0.1:0
  routes:
  - hosts: [gw.example.com]
    cluster: \"\"
    rules:
    - matches: [{{path: {{type: PathPrefix, value: /cut}}}}]
      backendTimeout: 100ms
      retry: {{attempts: 0, retryOn: [connect-failure]}}
      backends: [{{cluster: slow}}]
    - matches: [{{path: {{type: PathPrefix, value: /wait}}}}]
      backends: [{{cluster: slow}}]
clusters:
- {{name: slow, endpoints: [{{address: \"{backend}\"}}]}}
"
    );
    let (proxy, lines) = start(&yaml).await;
    // The backend would answer 200 after 400 ms: a 504 means the attempt was cut.
    assert_eq!(
        get(proxy, "gw.example.com", "/cut").await.0,
        StatusCode::GATEWAY_TIMEOUT
    );
    assert_eq!(
        get(proxy, "gw.example.com", "/wait").await,
        (StatusCode::OK, "slow".to_owned())
    );
    let cut = lines
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("GET /cut"))
        .cloned()
        .unwrap();
    assert!(cut.contains(" 504 UT upstream_per_try_timeout "), "{cut}");
}
