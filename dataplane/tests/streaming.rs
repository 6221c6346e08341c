//! Responses stream through the proxy as the upstream produces them, and the access
//! log is written when the stream ends, as Envoy writes it: a body held back by the
//! upstream reaches the client in part; the route timeout cuts a stalled body (`UT`);
//! a client that leaves mid-body is logged `DC`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

mod support;
use support::Fed;

/// A backend that answers one request at a time with a body the test feeds through
/// the returned sender (a new sender for each request).
async fn fed_backend() -> (SocketAddr, mpsc::Receiver<mpsc::Sender<Frame<Bytes>>>) {
    let (feeds, feeders) = mpsc::channel(4);
    let served = support::serve_http("127.0.0.1", move |_req| {
        let feeds = feeds.clone();
        async move {
            let (tx, rx) = mpsc::channel(4);
            feeds.send(tx).await.unwrap();
            http::Response::new(Fed(rx))
        }
    });
    (served.await.addr, feeders)
}

struct Proxy {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

async fn proxy(backend: SocketAddr, route_timeout: &str) -> Proxy {
    let yaml = format!(
        "listeners:
- name: mesh
  address: 127.0.0.1:0
  routes:
  - cluster: one
    timeout: {route_timeout}
clusters:
- name: one
  endpoints: [{{address: \"{backend}\"}}]
"
    );
    let (shared, log) = support::logged(&yaml);
    let addr = support::serve_first_listener(&shared).await;
    Proxy { addr, log }
}

impl Proxy {
    async fn get(&self) -> http::Response<hyper::body::Incoming> {
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
        let req = http::Request::builder()
            .uri(format!("http://{}/stream", self.addr))
            .body(Full::new(Bytes::new()))
            .unwrap();
        client.request(req).await.unwrap()
    }

    /// The only access-log line, once written.
    async fn line(&self) -> String {
        for _ in 0..200 {
            if let Some(line) = self.log.lock().unwrap().first() {
                return line.clone();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no access-log line")
    }
}

async fn next_data(body: &mut hyper::body::Incoming) -> Option<Bytes> {
    let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("no frame within 5 s")?;
    Some(frame.unwrap().into_data().unwrap())
}

/// A proxy whose upstream has sent the response head and `first`, and goes on only
/// when the test feeds it: the proxy, the feed and the client's body so far.
async fn streaming(
    route_timeout: &str,
    first: &'static [u8],
) -> (Proxy, mpsc::Sender<Frame<Bytes>>, hyper::body::Incoming) {
    let (backend, mut feeders) = fed_backend().await;
    let p = proxy(backend, route_timeout).await;
    let get = tokio::spawn(async move {
        let resp = p.get().await;
        (p, resp)
    });
    let feed = feeders.recv().await.unwrap();
    feed.send(Frame::data(Bytes::from_static(first)))
        .await
        .unwrap();
    // A proxy that buffered the body would send no head until the body ended.
    let (p, resp) = tokio::time::timeout(Duration::from_secs(5), get)
        .await
        .expect("no response head within 5 s of the first chunk")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    // The upstream has not finished: the first part arrives all the same.
    assert_eq!(next_data(&mut body).await.unwrap(), first);
    (p, feed, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_reaches_the_client_as_the_upstream_sends_it() {
    let (p, feed, body) = streaming("10s", b"first ").await;
    assert!(
        p.log.lock().unwrap().is_empty(),
        "logged before the stream ended"
    );
    feed.send(Frame::data(Bytes::from_static(b"second")))
        .await
        .unwrap();
    drop(feed);
    let remainder = body.collect().await.unwrap().to_bytes();
    assert_eq!(remainder, "second");
    let line = p.line().await;
    assert!(
        line.contains("\" 200 - via_upstream - \"-\" 0 12 "),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_timeout_cuts_a_stalled_body() {
    let (p, feed, mut body) = streaming("300ms", b"partial").await;
    // The upstream stalls; the stream is cut at the deadline, not left hanging.
    let end = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the stalled body was not cut");
    assert!(
        !matches!(end, Some(Ok(_))),
        "a frame after the cut: {end:?}"
    );
    let line = p.line().await;
    assert!(
        line.contains("\" 200 UT response_timeout - \"-\" 0 7 "),
        "{line}"
    );
    drop(feed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_body_is_logged_dc() {
    let (p, feed, body) = streaming("10s", b"some").await;
    drop(body);
    // The proxy learns of the close when it next writes: keep the upstream talking.
    for _ in 0..50 {
        if !p.log.lock().unwrap().is_empty() {
            break;
        }
        let _ = feed.send(Frame::data(Bytes::from_static(b"more"))).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let line = p.line().await;
    assert!(line.contains("\" 200 DC via_upstream - \"-\" 0 "), "{line}");
}
