//! Fault injection through the whole proxy on loopback, real backend and client.
//! The replies and log fields are Envoy 1.40's, by hand on 2026-12-07 with its HTTP
//! fault filter configured as Istio configures it (`typed_per_filter_config` on the
//! route): an abort is `<status>`, `content-type: text/plain`, body
//! `fault filter abort`, logged `FI fault_filter_abort` with no upstream host; a
//! delay is logged `DI via_upstream` with the delay in the duration; both are
//! `DI,FI`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

mod support;

struct Waypoint {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    /// Requests that reached the backend.
    backend_requests: Arc<std::sync::atomic::AtomicUsize>,
}

/// A route to one backend with `route_fault` on the route, and a rule on `/rule`
/// with `rule_fault` that replaces it.
async fn waypoint(route_fault: &str, rule_fault: &str) -> Waypoint {
    let backend_requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&backend_requests);
    let backend = support::serve_http("127.0.0.1", move |_req| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { support::text("in-ambient") }
    })
    .await;
    let yaml = format!(
        "listeners:
- name: plain
  address: 127.0.0.1:0
  routes:
  - cluster: backend
    fault: {route_fault}
    rules:
    - matches: [{{path: {{type: PathPrefix, value: /rule}}}}]
      fault: {rule_fault}
    - matches: [{{path: {{type: PathPrefix, value: /}}}}]
clusters:
- {{name: backend, endpoints: [{{address: \"{}\"}}]}}
",
        backend.addr
    );
    let (shared, log) = support::logged(&yaml);
    let addr = support::serve_first_listener(&shared).await;
    Waypoint {
        addr,
        log,
        backend_requests,
    }
}

struct Answer {
    status: u16,
    content_type: String,
    body: String,
    elapsed: Duration,
}

async fn send(addr: SocketAddr, method: &str, path: &str, body: &'static str) -> Answer {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let started = Instant::now();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        content_type,
        body: String::from_utf8_lossy(&body).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// The access log's last line.
fn last_line(w: &Waypoint) -> String {
    w.log.lock().unwrap().last().cloned().unwrap()
}

const ABORT_418: &str = "{abort: {httpStatus: 418, percentage: {numerator: 100}}}";
const DELAY_300MS: &str = "{delay: {fixedDelay: 300ms, percentage: {numerator: 100}}}";
const BOTH: &str = "{delay: {fixedDelay: 300ms, percentage: {numerator: 100}}, \
                    abort: {httpStatus: 503, percentage: {numerator: 100}}}";
const NEVER: &str = "{delay: {fixedDelay: 5s, percentage: {numerator: 0}}, \
                     abort: {httpStatus: 500, percentage: {numerator: 0}}}";

#[tokio::test]
async fn an_abort_is_answered_by_the_proxy_and_never_reaches_the_endpoint() {
    let w = waypoint(ABORT_418, NEVER).await;
    for method in ["GET", "POST"] {
        let a = send(w.addr, method, "/", "hello").await;
        assert_eq!(
            (a.status, a.content_type.as_str(), a.body.as_str()),
            (418, "text/plain", "fault filter abort")
        );
        let line = last_line(&w);
        assert!(
            line.contains(&format!(
                "\"{method} / HTTP/1.1\" 418 FI fault_filter_abort - \"-\" 0 18 "
            )),
            "{line}"
        );
        // No upstream host; the route's cluster is still logged, as Envoy logs it.
        assert!(line.contains("\"-\" backend - "), "{line}");
    }
    assert_eq!(w.backend_requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_delay_holds_the_request_then_it_goes_upstream() {
    let w = waypoint(DELAY_300MS, NEVER).await;
    let a = send(w.addr, "GET", "/", "").await;
    assert_eq!((a.status, a.body.as_str()), (200, "in-ambient"));
    assert!(a.elapsed >= Duration::from_millis(300), "{:?}", a.elapsed);
    let line = last_line(&w);
    assert!(line.contains(" 200 DI via_upstream "), "{line}");
    let duration: u64 = line
        .split("\" 0 10 ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(duration >= 300, "{line}");
    assert_eq!(w.backend_requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_delay_then_an_abort_is_flagged_di_fi() {
    let w = waypoint(BOTH, NEVER).await;
    let a = send(w.addr, "GET", "/", "").await;
    assert_eq!((a.status, a.body.as_str()), (503, "fault filter abort"));
    assert!(a.elapsed >= Duration::from_millis(300), "{:?}", a.elapsed);
    assert!(
        last_line(&w).contains(" 503 DI,FI fault_filter_abort "),
        "{}",
        last_line(&w)
    );
    assert_eq!(w.backend_requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_rules_fault_replaces_the_routes_and_a_zero_share_never_fires() {
    let w = waypoint(ABORT_418, NEVER).await;
    // `/rule` takes the rule's fault, which never fires: the route's abort is
    // replaced, not added to.
    for _ in 0..20 {
        let a = send(w.addr, "GET", "/rule", "").await;
        assert_eq!((a.status, a.body.as_str()), (200, "in-ambient"));
        assert!(a.elapsed < Duration::from_secs(5));
    }
    assert!(last_line(&w).contains(" 200 - via_upstream "));
    assert_eq!(send(w.addr, "GET", "/other", "").await.status, 418);
    assert_eq!(w.backend_requests.load(Ordering::SeqCst), 20);
}

#[tokio::test]
async fn a_half_share_aborts_some_requests_and_not_others() {
    let half = "{abort: {httpStatus: 503, percentage: {numerator: 50}}}";
    let w = waypoint(half, NEVER).await;
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..200 {
        *statuses
            .entry(send(w.addr, "GET", "/", "").await.status)
            .or_insert(0) += 1;
    }
    // 200 draws at 1/2: fewer than 60 of either would happen about once in 10^8.
    assert!(statuses[&503] >= 60 && statuses[&200] >= 60, "{statuses:?}");
    assert_eq!(statuses.values().sum::<i32>(), 200);
}

#[test]
fn invalid_faults_are_refused_naming_the_field() {
    for (fault, field, message) in [
        (
            "{abort: {httpStatus: 99, percentage: {numerator: 1}}}",
            "listeners[0].routes[0].fault.abort.httpStatus",
            "99 is not an HTTP status in 200..599",
        ),
        (
            "{delay: {fixedDelay: 0s, percentage: {numerator: 1}}}",
            "listeners[0].routes[0].fault.delay.fixedDelay",
            "under the minimum of 1ms",
        ),
        (
            "{delay: {fixedDelay: 1s, percentage: {numerator: 3, denominator: 2}}}",
            "listeners[0].routes[0].fault.delay.percentage",
            "3/2 is not a fraction between 0 and 1",
        ),
    ] {
        let yaml = format!(
            "listeners:
- name: plain
  address: 127.0.0.1:0
  routes: [{{cluster: backend, fault: {fault}}}]
clusters:
- {{name: backend, endpoints: [{{address: \"127.0.0.1:1\"}}]}}
"
        );
        let err = waypoint_config::Config::from_yaml(&yaml)
            .unwrap_err()
            .to_string();
        assert!(err.contains(field) && err.contains(message), "{err}");
    }
}
