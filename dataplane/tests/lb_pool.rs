//! Load balancing (weights, slow start, consistent hash), outlier state across
//! endpoint updates, and connection-pool limits through the whole proxy
//! on loopback: real hyper backends (which count the connections they accept and can
//! hold a request until told to answer) and a real hyper client. No timing: requests
//! are held at the backend, and the test waits for the states it needs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::format_push_string)] // test harness

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;
use waypoint_dataplane::proxy::{self, Shared};

mod support;

const CLUSTER: &str = "inbound-vip|8000|http|echo.test.svc.cluster.local";

/// A backend answering with its name. It counts accepted connections and requests
/// seen, and when `gate` is set each request waits for a permit before answering.
struct Backend {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    arrived: Arc<AtomicUsize>,
    gate: Option<Arc<Semaphore>>,
}

async fn backend(name: &'static str, gated: bool) -> Backend {
    backend_answering(name, gated, 200).await
}

async fn backend_answering(name: &'static str, gated: bool, status: u16) -> Backend {
    let arrived = Arc::new(AtomicUsize::new(0));
    let gate = gated.then(|| Arc::new(Semaphore::new(0)));
    let (arr, g) = (arrived.clone(), gate.clone());
    let served = support::serve_http("127.0.0.1", move |_req| {
        let (arr, g) = (arr.clone(), g.clone());
        async move {
            arr.fetch_add(1, Ordering::SeqCst);
            if let Some(g) = g {
                g.acquire().await.unwrap().forget();
            }
            let mut resp = support::text(name);
            *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
            resp
        }
    })
    .await;
    Backend {
        addr: served.addr,
        accepted: served.accepted,
        arrived,
        gate,
    }
}

/// A proxy with one route to `CLUSTER` with retry policy `retry`, the cluster's
/// settings being `cluster_yaml` (indented under it), collecting its access log.
/// Istio's default retry policy, and its variant for consistent-hash clusters.
const DEFAULT_RETRY: &str =
    "{attempts: 2, retryOn: [connect-failure, refused-stream, unavailable, cancelled]}";
const HASH_RETRY: &str = "{attempts: 2, retryOn: [connect-failure, refused-stream, unavailable, cancelled], avoidPreviousHosts: false}";

struct Proxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

async fn proxy(backends: &[&Backend], cluster_yaml: &str, retry: &str) -> Proxy {
    let weighted: Vec<(&Backend, u32)> = backends.iter().map(|&b| (b, 1)).collect();
    let config = waypoint_config::Config::from_yaml(&proxy_yaml(&weighted, cluster_yaml, retry));
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    let shared = Shared::with_access_log(
        config.unwrap(),
        Box::new(move |line| sink.lock().unwrap().push(line.to_owned())),
    );
    let (socket, name) = proxy::bind(&shared.current()).await.unwrap().remove(0);
    let addr = socket.local_addr().unwrap();
    tokio::spawn(proxy::serve(shared.clone(), socket, name));
    Proxy { shared, addr, log }
}

/// The config of [`proxy`], with a weight for each endpoint.
fn proxy_yaml(backends: &[(&Backend, u32)], cluster_yaml: &str, retry: &str) -> String {
    let mut endpoints = String::new();
    for (b, weight) in backends {
        endpoints.push_str(&format!(
            "  - {{address: \"{}\", weight: {weight}}}\n",
            b.addr
        ));
    }
    format!(
        "listeners:
- name: mesh
  address: 127.0.0.1:0
  routes:
  - cluster: \"{CLUSTER}\"
    retry: {retry}
clusters:
- name: \"{CLUSTER}\"
{cluster_yaml}
  endpoints:
{endpoints}"
    )
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new())
}

struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

async fn get(client: &Client, proxy: SocketAddr, headers: &[(&str, &str)]) -> Reply {
    let mut req = http::Request::builder().uri(format!("http://{proxy}/"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Waits (up to 10s, then fails) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(10), "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn three_backends() -> [Backend; 3] {
    [
        backend("a", false).await,
        backend("b", false).await,
        backend("c", false).await,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_hash_keeps_each_user_on_one_backend_and_spreads_users() {
    let backends = three_backends().await;
    let refs: Vec<&Backend> = backends.iter().collect();
    for lb in [
        "  loadBalancer: RING_HASH\n  consistentHash: {httpHeaderName: x-user}",
        "  loadBalancer: MAGLEV\n  consistentHash: {httpHeaderName: x-user, tableSize: 251}",
    ] {
        let p = proxy(&refs, lb, HASH_RETRY).await;
        let c = client();
        let mut homes = BTreeMap::new();
        for round in 0..4 {
            for user in 0..12 {
                let r = get(&c, p.addr, &[("x-user", &format!("user-{user}"))]).await;
                assert_eq!(r.status, 200);
                assert!(r.headers.get("set-cookie").is_none());
                let home = homes.entry(user).or_insert_with(|| r.body.clone());
                assert_eq!(*home, r.body, "{lb}: user-{user} moved in round {round}");
            }
        }
        let used: BTreeSet<_> = homes.values().collect();
        assert!(used.len() > 1, "{lb}: 12 users all hashed to {used:?}");

        // T15: without the header each request gets a random host.
        let mut seen = BTreeSet::new();
        for _ in 0..30 {
            let r = get(&c, p.addr, &[]).await;
            assert!(r.headers.get("set-cookie").is_none());
            seen.insert(r.body);
        }
        assert!(
            seen.len() > 1,
            "{lb}: 30 unhashed requests all went to {seen:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_with_ttl_is_generated_once_and_then_sticks() {
    let backends = three_backends().await;
    let refs: Vec<&Backend> = backends.iter().collect();
    let p = proxy(
        &refs,
        "  loadBalancer: RING_HASH\n  consistentHash: {httpCookie: {name: session, path: /, ttl: 60s}}",
        HASH_RETRY,
    )
    .await;
    let c = client();
    let first = get(&c, p.addr, &[]).await;
    assert_eq!(first.status, 200);
    let set = first.headers["set-cookie"].to_str().unwrap().to_owned();
    let (value, _) = set
        .strip_prefix("session=\"")
        .and_then(|rest| rest.split_once('"'))
        .unwrap_or_else(|| panic!("unexpected set-cookie {set:?}"));
    let value = value.to_owned();
    assert_eq!(value.len(), 16, "hex of a 64-bit hash: {set}");
    assert!(value.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(set.ends_with("; Max-Age=60; Path=/; HttpOnly"), "{set}");

    let cookie = format!("session=\"{value}\"");
    for _ in 0..10 {
        let r = get(&c, p.addr, &[("cookie", &cookie)]).await;
        assert_eq!(r.body, first.body, "the cookie pins the backend");
        assert!(r.headers.get("set-cookie").is_none(), "nothing more to set");
    }
    // Other sessions spread over the backends.
    let mut seen = BTreeSet::new();
    for i in 0..24 {
        let r = get(&c, p.addr, &[("cookie", &format!("session=s{i}"))]).await;
        seen.insert(r.body);
    }
    assert!(seen.len() > 1, "24 sessions all on {seen:?}");
}

/// Sends a request on its own connection, returning its task. A reply that never
/// comes (a request let through to the held backend) fails the test, not hangs it.
fn spawn_get(addr: SocketAddr) -> tokio::task::JoinHandle<Reply> {
    tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(10), get(&client(), addr, &[]))
            .await
            .expect("no reply within 10s")
    })
}

/// Asserts that a reply is Envoy's overflow reply.
fn assert_overflow(r: &Reply) {
    assert_eq!(r.status, 503);
    assert_eq!(
        r.headers
            .get("x-envoy-overloaded")
            .map(|v| v.to_str().unwrap()),
        Some("true")
    );
    assert_eq!(
        r.body,
        "upstream connect error or disconnect/reset before headers. reset reason: overflow"
    );
}

const EJECT_ON_FIRST_ERROR: &str = "  outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_overflow_is_503_uo_and_never_ejects() {
    let b = backend("slow", true).await;
    let p = proxy(
        &[&b],
        &format!("  connectionPool: {{maxRequests: 1}}\n{EJECT_ON_FIRST_ERROR}"),
        DEFAULT_RETRY,
    )
    .await;
    let first = spawn_get(p.addr);
    until("the first request reaches the backend", || {
        b.arrived.load(Ordering::SeqCst) == 1
    })
    .await;
    // One request is in flight: every other one overflows, whatever else is free.
    let (r2, r3) = tokio::join!(spawn_get(p.addr), spawn_get(p.addr));
    assert_overflow(&r2.unwrap());
    assert_overflow(&r3.unwrap());
    b.gate.as_ref().unwrap().add_permits(1);
    let first = first.await.unwrap();
    assert_eq!((first.status, first.body.as_str()), (200, "slow"));
    assert_eq!(
        b.arrived.load(Ordering::SeqCst),
        1,
        "overflows never reach the backend"
    );

    let cluster = p.shared.current().cluster(CLUSTER).unwrap().clone();
    assert!(
        cluster.ejected().is_empty(),
        "overflow is not an outlier event"
    );
    let log = p.log.lock().unwrap().clone();
    let overflowed: Vec<_> = log
        .iter()
        .filter(|l| l.contains("\" 503 UO upstream_reset_before_response_started{overflow} "))
        .collect();
    assert_eq!(overflowed.len(), 2, "{log:#?}");
    let metrics = p.shared.current().metrics.render();
    assert!(
        metrics.contains(&format!(
            "envoy_cluster_upstream_rq_pending_overflow{{cluster_name=\"{CLUSTER}\"}} 2"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("response_flags=\"UO\""), "{metrics}");
    // The slot is free again.
    b.gate.as_ref().unwrap().add_permits(1);
    assert_eq!(get(&client(), p.addr, &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_one_pending_then_overflow() {
    let b = backend("slow", true).await;
    let p = proxy(
        &[&b],
        &format!(
            "  connectionPool: {{maxConnections: 1, maxPendingRequests: 1}}\n{EJECT_ON_FIRST_ERROR}"
        ),
        DEFAULT_RETRY,
    )
    .await;
    let cluster = p.shared.current().cluster(CLUSTER).unwrap().clone();
    let first = spawn_get(p.addr);
    until("the first request reaches the backend", || {
        b.arrived.load(Ordering::SeqCst) == 1
    })
    .await;
    let second = spawn_get(p.addr);
    until("the second request waits for the connection", || {
        cluster.pool_counts().pending == 1
    })
    .await;
    // The connection is busy and the queue is full.
    assert_overflow(&spawn_get(p.addr).await.unwrap());
    b.gate.as_ref().unwrap().add_permits(2);
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(second.await.unwrap().status, 200);
    assert_eq!(
        b.accepted.load(Ordering::SeqCst),
        1,
        "the queued request reused the one connection"
    );
    assert!(cluster.ejected().is_empty());
    let log = p.log.lock().unwrap().clone();
    assert_eq!(
        log.iter().filter(|l| l.contains(" 503 UO ")).count(),
        1,
        "{log:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_per_connection_one_opens_a_connection_per_request() {
    // Keep-alive by default (the control), a new connection per request with the limit.
    for (limit, want, open) in [
        ("", 1, 1),
        ("  connectionPool: {maxRequestsPerConnection: 1}", 5, 0),
    ] {
        let b = backend("one", false).await;
        let p = proxy(&[&b], limit, DEFAULT_RETRY).await;
        let c = client();
        for _ in 0..5 {
            assert_eq!(get(&c, p.addr, &[]).await.status, 200);
        }
        assert_eq!(
            b.accepted.load(Ordering::SeqCst),
            want,
            "connections for 5 requests with {limit:?}"
        );
        let cluster = p.shared.current().cluster(CLUSTER).unwrap().clone();
        until("used-up connections are closed", || {
            cluster.pool_counts().connections == open
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_close_after_the_idle_timeout() {
    let b = backend("one", false).await;
    let p = proxy(
        &[&b],
        "  connectionPool: {idleTimeout: 50ms}",
        DEFAULT_RETRY,
    )
    .await;
    let cluster = p.shared.current().cluster(CLUSTER).unwrap().clone();
    let c = client();
    assert_eq!(get(&c, p.addr, &[]).await.status, 200);
    until("the idle connection is closed", || {
        cluster.pool_counts().connections == 0
    })
    .await;
    assert_eq!(get(&c, p.addr, &[]).await.status, 200);
    assert_eq!(
        b.accepted.load(Ordering::SeqCst),
        2,
        "a new connection after the close"
    );
}

/// The idle timeout counts from when the connection last went idle, not from when
/// it opened: one used every 100 ms under a 1 s timeout stays open for 2.5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_in_steady_use_outlives_the_idle_timeout() {
    let b = backend("one", false).await;
    let p = proxy(&[&b], "  connectionPool: {idleTimeout: 1s}", DEFAULT_RETRY).await;
    let c = client();
    for _ in 0..25 {
        assert_eq!(get(&c, p.addr, &[]).await.status, 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        b.accepted.load(Ordering::SeqCst),
        1,
        "one upstream connection served every request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_beyond_max_retries_is_not_made_and_flagged_uo() {
    // Every answer is a 503 that the route retries once; one retry may be in flight.
    let b = backend_answering("busy", true, 503).await;
    let p = proxy(
        &[&b],
        "  connectionPool: {maxRetries: 1}",
        "{attempts: 1, retryOn: [retriable-status-codes], retriableStatusCodes: [503]}",
    )
    .await;
    let gate = b.gate.clone().unwrap();
    let first = spawn_get(p.addr);
    until("the first request is held", || {
        b.arrived.load(Ordering::SeqCst) == 1
    })
    .await;
    let second = spawn_get(p.addr);
    until("the second request is held", || {
        b.arrived.load(Ordering::SeqCst) == 2
    })
    .await;
    // The first gets its 503 and is retried; the retry is held, keeping the one slot.
    gate.add_permits(1);
    until("the first request's retry is held", || {
        b.arrived.load(Ordering::SeqCst) == 3
    })
    .await;
    // The second gets its 503 (the semaphore serves waiters in order): no slot left,
    // so it is not retried and its own response goes back, flagged UO.
    gate.add_permits(1);
    let second = second.await.unwrap();
    assert_eq!((second.status, second.body.as_str()), (503, "busy"));
    assert!(second.headers.get("x-envoy-overloaded").is_none());
    gate.add_permits(1);
    assert_eq!(first.await.unwrap().status, 503);
    assert_eq!(
        b.arrived.load(Ordering::SeqCst),
        3,
        "the second was not retried"
    );
    let log = p.log.lock().unwrap().clone();
    assert_eq!(
        log.iter()
            .filter(|l| l.contains("\" 503 UO via_upstream "))
            .count(),
        1,
        "{log:#?}"
    );
    let metrics = p.shared.current().metrics.render();
    assert!(
        metrics.contains(&format!(
            "envoy_cluster_upstream_rq_retry_overflow{{cluster_name=\"{CLUSTER}\"}} 1"
        )),
        "{metrics}"
    );
    assert_eq!(
        p.shared
            .current()
            .cluster(CLUSTER)
            .unwrap()
            .pool_counts()
            .retries,
        0,
        "slots are given back"
    );
}

/// How many of `n` sequential requests each backend answered, by name.
async fn answered_by(proxy: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let client = client();
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let r = get(&client, proxy, &[]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        *counts.entry(r.body).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_splits_traffic_by_endpoint_weight() {
    let [a, b, _c] = three_backends().await;
    let yaml = proxy_yaml(
        &[(&a, 1), (&b, 3)],
        "  loadBalancer: ROUND_ROBIN",
        DEFAULT_RETRY,
    );
    let p = proxy(&[], "", DEFAULT_RETRY).await;
    p.shared.reload(&yaml).unwrap();
    let counts = answered_by(p.addr, 400).await;
    assert!(counts["a"].abs_diff(100) <= 1, "{counts:?}");
    assert!(counts["b"].abs_diff(300) <= 1, "{counts:?}");
}

/// Envoy's slow start: an endpoint that joins a cluster by a config change gets a
/// share of its weight that grows over the window, from 10%; the endpoints that
/// were there before keep their age, so once past the window they are not ramped
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_added_by_a_reload_slow_starts() {
    let [a, b, c] = three_backends().await;
    let policy = "  loadBalancer: ROUND_ROBIN\n  slowStart: {window: 4s}";
    let p = proxy(&[], "", DEFAULT_RETRY).await;
    p.shared
        .reload(&proxy_yaml(&[(&a, 1), (&b, 1)], policy, DEFAULT_RETRY))
        .unwrap();
    // Every endpoint is new at first: they share evenly.
    let counts = answered_by(p.addr, 100).await;
    assert_eq!((counts["a"], counts["b"]), (50, 50), "{counts:?}");
    // Until a and b are out of their window.
    tokio::time::sleep(Duration::from_millis(4_100)).await;
    p.shared
        .reload(&proxy_yaml(
            &[(&a, 1), (&b, 1), (&c, 1)],
            policy,
            DEFAULT_RETRY,
        ))
        .unwrap();
    // For its first 400 ms c weighs 0.1 against 1 and 1: 10 of 210 if the requests
    // take that long, where an even split would give it 70. It takes half its
    // share only if they take longer than 1.5 s.
    let counts = answered_by(p.addr, 210).await;
    assert!((3..=35).contains(&counts["c"]), "{counts:?}");
    assert!(counts["a"].abs_diff(counts["b"]) <= 1, "{counts:?}");
}

fn ejections_active(p: &Proxy) -> String {
    let text = p.shared.current().metrics.render();
    let prefix =
        format!("envoy_cluster_outlier_detection_ejections_active{{cluster_name=\"{CLUSTER}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or("absent")
        .to_owned()
}

/// As Envoy keeps hosts and their detector across an endpoint update: an endpoint
/// list that changes while the policy stays keeps the ejection of the addresses it
/// keeps, and the interval timer keeps its phase however often the config
/// changes, so the ejected endpoint still returns on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ejection_outlives_endpoint_updates_and_ends_on_time() {
    let (bad, b, c, d) = (
        backend_answering("bad", false, 503).await,
        backend("b", false).await,
        backend("c", false).await,
        backend("d", false).await,
    );
    let policy = "  loadBalancer: ROUND_ROBIN
  outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 2s, maxEjectionPercent: 50}";
    let three = proxy_yaml(&[(&bad, 1), (&b, 1), (&c, 1)], policy, DEFAULT_RETRY);
    let four = proxy_yaml(
        &[(&bad, 1), (&b, 1), (&c, 1), (&d, 1)],
        policy,
        DEFAULT_RETRY,
    );
    let p = proxy(&[], "", DEFAULT_RETRY).await;
    p.shared.reload(&three).unwrap();
    let client = client();
    let mut statuses = Vec::new();
    while ejections_active(&p) != "1" {
        assert!(statuses.len() < 9, "not ejected after {statuses:?}");
        statuses.push(get(&client, p.addr, &[]).await.status);
    }
    assert_eq!(statuses.iter().filter(|&&s| s == 503).count(), 3);
    let ejected_at = Instant::now();
    // A fourth endpoint joins: the ejected one stays out.
    p.shared.reload(&four).unwrap();
    assert_eq!(ejections_active(&p), "1");
    let counts = answered_by(p.addr, 30).await;
    assert!(!counts.contains_key("bad"), "{counts:?}");
    assert_eq!(counts.len(), 3, "{counts:?}");
    // Config changes every 300 ms, each shorter than the 1 s interval: the
    // endpoint still comes back at the first tick 2 s after its ejection.
    let mut configs = [&three, &four].into_iter().cycle();
    while ejections_active(&p) != "0" {
        assert!(
            ejected_at.elapsed() < Duration::from_secs(8),
            "still ejected 8 s after the ejection"
        );
        p.shared.reload(configs.next().unwrap()).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let back = get(&client, p.addr, &[]).await;
    let mut seen = BTreeSet::from([back.body]);
    for _ in 0..4 {
        seen.insert(get(&client, p.addr, &[]).await.body);
    }
    assert!(seen.contains("bad"), "{seen:?}");
}

/// `tcp.maxConnectionDuration`, as Envoy's `max_connection_duration`: an upstream
/// connection that old takes no new request. Idle at its deadline it closes; busy,
/// its request completes and the next one gets a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_retired_at_their_maximum_duration() {
    let gated = backend("a", true).await;
    let policy = "  loadBalancer: ROUND_ROBIN\n  connectionPool: {maxConnectionDuration: 300ms}";
    let p = proxy(&[], "", DEFAULT_RETRY).await;
    p.shared
        .reload(&proxy_yaml(&[(&gated, 1)], policy, DEFAULT_RETRY))
        .unwrap();
    let gate = gated.gate.clone().unwrap();
    let client = client();
    // Busy past its deadline: the request is answered on that connection.
    let held = spawn_get(p.addr);
    until("the request reached the backend", || {
        gated.arrived.load(Ordering::SeqCst) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    gate.add_permits(1);
    assert_eq!(held.await.unwrap().status, 200);
    assert_eq!(gated.accepted.load(Ordering::SeqCst), 1);
    // The next request needs a new connection.
    gate.add_permits(1);
    assert_eq!(get(&client, p.addr, &[]).await.status, 200);
    assert_eq!(gated.accepted.load(Ordering::SeqCst), 2);
    // Idle past its deadline: closed, and the next request opens a third.
    until("the idle connection was retired", || {
        p.shared
            .current()
            .cluster(CLUSTER)
            .unwrap()
            .pool_counts()
            .connections
            == 0
    })
    .await;
    gate.add_permits(1);
    assert_eq!(get(&client, p.addr, &[]).await.status, 200);
    assert_eq!(gated.accepted.load(Ordering::SeqCst), 3);
}
