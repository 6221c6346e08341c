//! Request bodies stream up as they arrive, as Envoy's router sends them, and are kept
//! so that a retry or a mirror can send them again:
//! - a bidirectional stream (each message answered before the next is sent) works
//!   over HTTP/1.1 and HTTP/2 upstreams, and gRPC request trailers get through;
//! - a retry sends the whole body again;
//! - a body past the 1 MiB retry buffer is not retried: the attempt's answer stands,
//!   and `envoy_cluster_retry_or_shadow_abandoned` counts it;
//! - a mirror gets the body too;
//! - the route timeout starts when the request is complete, so a slow upload is not
//!   cut by it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
use waypoint_dataplane::proxy::Shared;

mod support;
use support::Fed;

/// Serves HTTP/1.1 and h2c on a loopback port, each request answered by `answer`.
async fn backend<F, Fut>(answer: F) -> SocketAddr
where
    F: Fn(http::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    support::serve_http("127.0.0.1", answer).await.addr
}

type Reply = http::Response<http_body_util::combinators::BoxBody<Bytes, hyper::Error>>;

/// Answers at once with the request body itself, frame by frame, trailers included.
async fn echo(req: http::Request<Incoming>) -> Reply {
    http::Response::new(req.into_body().boxed())
}

/// Reads the whole body, then answers with it.
async fn collect_then_echo(req: http::Request<Incoming>) -> Reply {
    let body = req.into_body().collect().await.unwrap().to_bytes();
    http::Response::new(Full::new(body).map_err(|never| match never {}).boxed())
}

fn proxy(backend: SocketAddr, protocol: &str, extra_route: &str) -> Arc<Shared> {
    let yaml = format!(
        "listeners:
- name: mesh
  address: 127.0.0.1:0
  routes:
  - cluster: one
{extra_route}
clusters:
- name: one
  protocol: {protocol}
  endpoints: [{{address: \"{backend}\"}}]
"
    );
    Shared::new(waypoint_config::Config::from_yaml(&yaml).unwrap())
}

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within 10 s"))
}

async fn next_frame(body: &mut Incoming) -> Frame<Bytes> {
    within("a response frame", body.frame())
        .await
        .expect("the response ended early")
        .unwrap()
}

/// Sends a message, then waits for its echo before the next: a proxy that held the
/// request body back until it ended would never answer the first.
async fn bidirectional(upstream_protocol: &str) {
    let backend = backend(echo).await;
    let addr = support::serve_first_listener(&proxy(backend, upstream_protocol, "")).await;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Fed>();
    let (tx, rx) = mpsc::channel(4);
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/echo.Echo/Chat"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Fed(rx))
        .unwrap();
    tx.send(Frame::data(Bytes::from_static(b"message 1")))
        .await
        .unwrap();
    let resp = within("the response head", client.request(req))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut echoed = Vec::new();
    for n in 1..=3 {
        let expected = format!("message {n}");
        while echoed.len() < expected.len() {
            echoed.extend_from_slice(&next_frame(&mut body).await.into_data().unwrap());
        }
        assert_eq!(String::from_utf8_lossy(&echoed), expected);
        echoed.clear();
        if n < 3 {
            tx.send(Frame::data(Bytes::from(format!("message {}", n + 1))))
                .await
                .unwrap();
        }
    }
    if upstream_protocol == "HTTP/2" {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-timeout-seen", "yes".parse().unwrap());
        tx.send(Frame::trailers(trailers)).await.unwrap();
        let last = next_frame(&mut body).await;
        let trailers = last
            .into_trailers()
            .expect("the request trailers came back");
        assert_eq!(trailers["grpc-timeout-seen"], "yes");
    }
    drop(tx);
    // The stream ends (an empty DATA frame may carry its END_STREAM).
    while let Some(frame) = within("the end of the response", body.frame()).await {
        let frame = frame.unwrap();
        assert!(frame.data_ref().is_some_and(Bytes::is_empty), "{frame:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bidirectional_stream_flows_to_an_http2_upstream() {
    bidirectional("HTTP/2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bidirectional_stream_flows_to_an_http1_upstream() {
    bidirectional("HTTP/1.1").await;
}

/// Istio's default retries no 503; these tests ask for it.
const RETRY_5XX: &str = "    retry: {attempts: 2, retryOn: [5xx]}";

type Answer = Pin<Box<dyn Future<Output = Reply> + Send>>;

/// Reads the whole body; answers 503 to every odd request and echoes even ones.
fn flaky() -> (
    impl Fn(http::Request<Incoming>) -> Answer + Clone + Send + Sync + 'static,
    Arc<AtomicUsize>,
) {
    let seen = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&seen);
    let answer = move |req: http::Request<Incoming>| {
        let n = count.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let mut resp = collect_then_echo(req).await;
            if n.is_multiple_of(2) {
                *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            }
            resp
        }) as Answer
    };
    (answer, seen)
}

async fn post(addr: SocketAddr, body: Bytes) -> (http::StatusCode, Bytes) {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/upload"))
        .header("host", "one.example")
        .body(Full::new(body))
        .unwrap();
    let resp = within("the response", client.request(req)).await.unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

fn counter(shared: &Shared, name: &str) -> String {
    let text = shared.current().metrics.render();
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or("0")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_sends_the_whole_body_again() {
    let (answer, seen) = flaky();
    let backend = backend(answer).await;
    let shared = proxy(backend, "HTTP/1.1", RETRY_5XX);
    let addr = support::serve_first_listener(&shared).await;
    let sent: Bytes = (0..100 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (status, got) = post(addr, sent.clone()).await;
    assert_eq!(
        status, 200,
        "Istio's default retry on 503 should have answered"
    );
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    assert!(got == sent, "the retry's body differs from the request's");
    assert_eq!(counter(&shared, "envoy_cluster_upstream_rq_retry"), "1");
    assert_eq!(
        counter(&shared, "envoy_cluster_retry_or_shadow_abandoned"),
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_past_the_retry_buffer_is_not_retried() {
    let (answer, seen) = flaky();
    let backend = backend(answer).await;
    let (shared, log) = support::logged(&format!(
        "listeners:
- name: mesh
  address: 127.0.0.1:0
  routes:
  - cluster: one
{RETRY_5XX}
clusters:
- name: one
  endpoints: [{{address: \"{backend}\"}}]
"
    ));
    let addr = support::serve_first_listener(&shared).await;
    let sent = Bytes::from(vec![b'x'; 2 << 20]);
    let (status, got) = post(addr, sent.clone()).await;
    assert_eq!(status, 503, "the first attempt's 503 should stand");
    assert_eq!(got.len(), sent.len(), "the upstream's own answer, streamed");
    assert_eq!(seen.load(Ordering::SeqCst), 1, "no retry");
    assert_eq!(
        counter(&shared, "envoy_cluster_retry_or_shadow_abandoned"),
        "1"
    );
    assert_eq!(counter(&shared, "envoy_cluster_upstream_rq_retry"), "0");
    let line = within("the access-log line", async {
        loop {
            if let Some(l) = log.lock().unwrap().first().cloned() {
                break l;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // No `URX`: the retries were given up, not used up; all 2 MiB were received.
    assert!(
        line.contains("\" 503 - via_upstream - \"-\" 2097152 2097152 "),
        "{line}"
    );
    // Bodies that fit are still retried.
    let (status, _) = post(addr, Bytes::from_static(b"small")).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_gets_the_body() {
    let (mirrored, rx) = mpsc::unbounded_channel::<Bytes>();
    let mirror = backend(move |req: http::Request<Incoming>| {
        let mirrored = mirrored.clone();
        async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            mirrored.send(body).unwrap();
            http::Response::new(Full::new(Bytes::new()).map_err(|n| match n {}).boxed())
        }
    })
    .await;
    let primary = backend(collect_then_echo).await;
    let yaml = format!(
        "listeners:
- name: mesh
  address: 127.0.0.1:0
  routes:
  - cluster: \"\"
    rules:
    - backends: [{{cluster: one}}]
      filters: [{{type: RequestMirror, cluster: mirror}}]
clusters:
- {{name: one, endpoints: [{{address: \"{primary}\"}}]}}
- {{name: mirror, endpoints: [{{address: \"{mirror}\"}}]}}
"
    );
    let shared = Shared::new(waypoint_config::Config::from_yaml(&yaml).unwrap());
    let addr = support::serve_first_listener(&shared).await;
    let sent = Bytes::from(vec![b'm'; 300 * 1024]);
    let (status, got) = post(addr, sent.clone()).await;
    assert_eq!(status, 200);
    assert!(got == sent);
    let mut rx = rx;
    let copy = within("the mirror's copy", rx.recv()).await.unwrap();
    assert!(copy == sent, "the mirror got {} bytes", copy.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_does_not_count_against_the_route_timeout() {
    let backend = backend(collect_then_echo).await;
    let shared = proxy(backend, "HTTP/1.1", "    timeout: 1s");
    let addr = support::serve_first_listener(&shared).await;
    let client =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http::<Fed>();
    let (tx, rx) = mpsc::channel(4);
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/upload"))
        .header("host", "one.example")
        .body(Fed(rx))
        .unwrap();
    let call = tokio::spawn(async move { client.request(req).await });
    // 2 s of upload against a 1 s route timeout.
    for _ in 0..4 {
        tx.send(Frame::data(Bytes::from_static(b"chunk ")))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(tx);
    let resp = within("the response", call).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "chunk chunk chunk chunk ");
}
