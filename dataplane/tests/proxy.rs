//! The whole proxy on loopback with real hyper backends and a real hyper client:
//! seed 001's failover journey with real sockets (times scaled down: interval 1s,
//! baseEjectionTime 3s), plus routing and local replies.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::format_push_string)] // test harness

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinHandle;
use waypoint_dataplane::proxy::{self, Shared};

mod support;
use support::{Pod, SEED_CLUSTER as CLUSTER, SEED_PODS as PODS};

struct Harness {
    shared: Arc<Shared>,
    proxy: SocketAddr,
    backends: Vec<Pod>,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
}

impl Harness {
    async fn start(retry_attempts: u32) -> Self {
        let mut backends = Vec::new();
        for name in PODS {
            backends.push(Pod::start("127.0.0.1:0".parse().unwrap(), name).await);
        }
        let endpoints: Vec<_> = backends.iter().map(|p| (p.addr, p.name)).collect();
        let yaml = support::seed_waypoint(
            &endpoints,
            retry_attempts,
            ("1s", "3s"),
            Duration::from_secs(10),
        );
        let config = waypoint_config::Config::from_yaml(&yaml).unwrap();
        let shared = Shared::new(config);
        let proxy_addr = support::serve_first_listener(&shared).await;
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
        Self {
            shared,
            proxy: proxy_addr,
            backends,
            client,
        }
    }

    async fn kill(&mut self, i: usize) {
        self.backends[i].kill().await;
    }

    async fn revive(&mut self, i: usize) {
        self.backends[i].revive().await;
    }

    async fn get(&self, host: &str) -> (u16, String) {
        let req = http::Request::builder()
            .uri(format!("http://{}/hostname", self.proxy))
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = self.client.request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    async fn burst(&self, n: usize) -> Vec<(u16, String)> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(self.get("in-ambient:8000").await);
        }
        out
    }

    fn ejected(&self) -> Vec<usize> {
        self.shared.current().cluster(CLUSTER).unwrap().ejected()
    }
}

fn counts(results: &[(u16, String)]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (status, body) in results {
        if *status == 200 {
            *m.entry(body.clone()).or_default() += 1;
        }
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_001_with_retries_no_request_fails_and_the_dead_pod_is_ejected() {
    let mut h = Harness::start(2).await;
    // Healthy: round robin over all three.
    let c = counts(&h.burst(6).await);
    assert_eq!(c.values().copied().collect::<Vec<_>>(), [2, 2, 2], "{c:?}");

    h.kill(0).await;
    let results = h.burst(15).await;
    assert!(results.iter().all(|(s, _)| *s == 200), "{results:?}");
    assert_eq!(h.ejected(), [0]);
    let metrics = h.shared.current().metrics.render();
    let enforced = format!(
        "envoy_cluster_outlier_detection_ejections_enforced_total{{cluster_name=\"{CLUSTER}\"}} 1"
    );
    assert!(metrics.contains(&enforced), "{metrics}");
    assert!(
        metrics.contains("istio_requests_total{reporter=\"waypoint\""),
        "{metrics}"
    );

    // The two healthy pods share traffic evenly.
    let c = counts(&h.burst(10).await);
    assert_eq!(c.get(PODS[0]), None);
    assert_eq!((c[PODS[1]], c[PODS[2]]), (5, 5));

    // The pod comes back at the first 1s tick at least 3s after its ejection.
    h.revive(0).await;
    let ejected_at = Instant::now();
    while !h.ejected().is_empty() {
        assert!(
            ejected_at.elapsed() < Duration::from_secs(6),
            "still ejected after 6s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = counts(&h.burst(12).await);
    assert_eq!(c.values().copied().collect::<Vec<_>>(), [4, 4, 4], "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_001_without_retries_exactly_three_requests_fail() {
    let mut h = Harness::start(0).await;
    h.kill(1).await;
    let results = h.burst(15).await;
    let failures: Vec<_> = results.iter().filter(|(s, _)| *s != 200).collect();
    assert_eq!(failures.len(), 3, "{results:?}");
    for (status, body) in failures {
        assert_eq!(*status, 503);
        assert_eq!(
            body,
            "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
        );
    }
    assert_eq!(h.ejected(), [1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_hosts_get_404_and_all_ejected_gets_no_healthy_upstream() {
    let mut h = Harness::start(0).await;
    assert_eq!(h.get("elsewhere:80").await.0, 404);
    assert_eq!(h.get("in-ambient.httpbin.svc.cluster.local").await.0, 200);
    // maxEjectionPercent 50 of 3 hosts lets only one go: the others keep serving.
    h.kill(0).await;
    h.kill(1).await;
    h.kill(2).await;
    let results = h.burst(12).await;
    assert!(results.iter().all(|(s, _)| *s == 503));
    assert_eq!(h.ejected().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_routes_keeps_state_and_refuses_bad_config() {
    let mut h = Harness::start(2).await;
    h.kill(0).await;
    // Round robin starts at a random offset and retries take turns too: send until the
    // dead pod has seen its third failure (at most 15 requests, as in the seed).
    for _ in 0..15 {
        if !h.ejected().is_empty() {
            break;
        }
        h.get("in-ambient:8000").await;
    }
    assert_eq!(h.ejected(), [0]);
    let yaml = serde_yaml::to_string(&h.shared.current().config).unwrap();

    // A route for a new host; the unchanged cluster keeps its ejection.
    let grown = yaml.replace("- in-ambient\n", "- in-ambient\n    - httpbin\n");
    assert_ne!(grown, yaml, "the test's edit must change the config");
    h.shared.reload(&grown).unwrap();
    assert_eq!(h.get("httpbin:8000").await.0, 200);
    assert_eq!(
        h.ejected(),
        [0],
        "outlier state survives a reload that keeps the cluster"
    );

    // An invalid config names the field and changes nothing.
    let err = h
        .shared
        .reload(&grown.replace("maxEjectionPercent: 50", "maxEjectionPercent: 500"))
        .unwrap_err();
    assert!(err.to_string().contains("maxEjectionPercent"), "{err}");
    assert_eq!(h.get("httpbin:8000").await.0, 200);

    // Dropping the route takes effect at once.
    h.shared.reload(&yaml).unwrap();
    assert_eq!(h.get("httpbin:8000").await.0, 404);
}

/// A backend that answers "slow" after `delay`, raising `answered` as it does.
async fn slow_backend(delay: Duration) -> (SocketAddr, JoinHandle<()>, Arc<AtomicBool>) {
    let answered = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&answered);
    let served = support::serve_http("127.0.0.1", move |_req| {
        let flag = Arc::clone(&flag);
        async move {
            tokio::time::sleep(delay).await;
            flag.store(true, Ordering::SeqCst);
            support::text("slow")
        }
    })
    .await;
    (served.addr, served.task, answered)
}

/// A proxy whose only route goes to `backend`, without retries.
async fn single_cluster_proxy(
    backend: SocketAddr,
    connect_timeout: &str,
) -> (Arc<Shared>, SocketAddr, JoinHandle<()>) {
    let yaml = format!(
        "listeners:
- name: mesh
  address: 127.0.0.1:0
  routes:
  - cluster: one
    retry: {{attempts: 0, retryOn: []}}
clusters:
- name: one
  connectTimeout: {connect_timeout}
  endpoints: [{{address: \"{backend}\"}}]
"
    );
    let shared = Shared::new(waypoint_config::Config::from_yaml(&yaml).unwrap());
    let (socket, name) = proxy::bind(&shared.current()).await.unwrap().remove(0);
    let addr = socket.local_addr().unwrap();
    let task = tokio::spawn(proxy::serve(shared.clone(), socket, name));
    (shared, addr, task)
}

fn get(addr: SocketAddr) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .uri(format!("http://{addr}/"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn client() -> hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
> {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_bounds_the_connect_not_a_slow_response() {
    let (backend, _b, _) = slow_backend(Duration::from_millis(300)).await;
    let (_shared, addr, _p) = single_cluster_proxy(backend, "100ms").await;
    let resp = client().request(get(addr)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "slow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_the_request_in_flight_and_closes_keep_alive() {
    let (backend, _b, answered) = slow_backend(Duration::from_millis(300)).await;
    let (shared, addr, _p) = single_cluster_proxy(backend, "10s").await;
    let request = tokio::spawn(async move { client().request(get(addr)).await.unwrap() });
    for _ in 0..100 {
        if shared.in_flight() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(shared.in_flight(), 1, "the request should be in flight");
    assert_eq!(shared.drain(Duration::from_secs(10)).await, 0);
    assert!(
        answered.load(Ordering::SeqCst),
        "drain returned before the upstream answered"
    );
    let resp = request.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("connection")
            .map(http::HeaderValue::as_bytes),
        Some(&b"close"[..])
    );
    // Nothing in flight: a second drain returns at once.
    assert_eq!(shared.drain(Duration::ZERO).await, 0);
}

/// Keep-alive requests reuse one pooled connection; each release re-arms its idle
/// timer (Istio's default, 1 h). The tasks alive must not grow with the requests
/// (one sleeping timer task per request was a leak that `hack/bench` found).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timers_do_not_pile_up_with_requests() {
    let pod = Pod::start("127.0.0.1:0".parse().unwrap(), "pod").await;
    let (_shared, addr, _p) = single_cluster_proxy(pod.addr, "10s").await;
    let client = client();
    let alive = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    for _ in 0..10 {
        let resp = client.request(get(addr)).await.unwrap();
        resp.into_body().collect().await.unwrap();
    }
    let before = alive();
    for _ in 0..300 {
        let resp = client.request(get(addr)).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
    }
    let after = alive();
    assert!(
        after < before + 20,
        "alive tasks grew from {before} to {after} over 300 requests"
    );
}
