//! HTTP/2 to the endpoints (a Service port declared grpc, http2 or h2c): requests are
//! multiplexed on one connection per endpoint, gRPC's `te: trailers` reaches the
//! server and its trailers reach an HTTP/2 client, and HTTP/1.1 clients are served
//! too.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use waypoint_dataplane::proxy::Shared;

mod support;

/// An h2c-only server answering like a gRPC service: `pong` and `grpc-status: 0` as
/// a trailer, with the request's version, authority and `te` echoed in headers.
/// Counts the connections it accepts.
async fn h2c_backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let (stream, _) = socket.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let te = req.headers().get("te").cloned();
                        let authority = req
                            .uri()
                            .authority()
                            .map(ToString::to_string)
                            .unwrap_or_default();
                        let version = format!("{:?}", req.version());
                        let _ = req.into_body().collect().await;
                        let mut trailers = HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        let body = Full::new(Bytes::from_static(b"pong"))
                            .with_trailers(async move { Some(Ok::<_, Infallible>(trailers)) });
                        let mut resp = http::Response::new(body);
                        resp.headers_mut()
                            .insert("x-version", version.parse().unwrap());
                        resp.headers_mut()
                            .insert("x-authority", authority.parse().unwrap());
                        if let Some(te) = te {
                            resp.headers_mut().insert("x-te", te);
                        }
                        Ok::<_, Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, accepted)
}

/// A waypoint whose one route goes to `backend` in HTTP/2.
fn grpc_waypoint(backend: SocketAddr) -> String {
    format!(
        "listeners:
- name: mesh
  address: 127.0.0.1:0
  routes:
  - cluster: grpc
clusters:
- name: grpc
  protocol: HTTP/2
  endpoints: [{{address: \"{backend}\"}}]
"
    )
}

async fn proxy_to(backend: SocketAddr) -> SocketAddr {
    let yaml = grpc_waypoint(backend);
    let shared = Shared::new(waypoint_config::Config::from_yaml(&yaml).unwrap());
    support::serve_first_listener(&shared).await
}

/// A unary gRPC call; an HTTP/1.1 one names its host in `host`, an HTTP/2 one in the
/// URI (`:authority`).
fn call(proxy: SocketAddr, http1: bool) -> http::Request<Full<Bytes>> {
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{proxy}/echo.Echo/Ping"));
    if http1 {
        req = req.header("host", "grpc.example");
    }
    req.header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_share_one_upstream_connection_and_keep_their_trailers() {
    let (backend, accepted) = h2c_backend().await;
    let proxy = proxy_to(backend).await;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let client = client.clone();
        calls.spawn(async move {
            let resp = client.request(call(proxy, false)).await.unwrap();
            let headers = resp.headers().clone();
            let collected = resp.into_body().collect().await.unwrap();
            let trailers = collected.trailers().cloned();
            (headers, collected.to_bytes(), trailers)
        });
    }
    while let Some(done) = calls.join_next().await {
        let (headers, body, trailers) = done.unwrap();
        assert_eq!(body, "pong");
        assert_eq!(headers["x-version"], "HTTP/2.0");
        // An HTTP/2 client's `:authority` travels on as the upstream's.
        assert_eq!(headers["x-authority"], proxy.to_string().as_str());
        assert_eq!(
            headers["x-te"], "trailers",
            "te: trailers must reach a gRPC server"
        );
        let trailers = trailers.expect("the gRPC trailers were lost");
        assert_eq!(trailers["grpc-status"], "0");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "ten calls should share one multiplexed upstream connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_clients_reach_an_http2_upstream() {
    let (backend, _) = h2c_backend().await;
    let proxy = proxy_to(backend).await;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let resp = client.request(call(proxy, true)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-version"], "HTTP/2.0");
    // An HTTP/1.1 client's `host` becomes the upstream's `:authority`.
    assert_eq!(resp.headers()["x-authority"], "grpc.example");
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_http2_endpoint_is_a_connect_failure() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let proxy = proxy_to(dead).await;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let resp = client.request(call(proxy, true)).await.unwrap();
    assert_eq!(resp.status(), 503);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(
        body.ends_with(b"reset reason: remote connection failure"),
        "{body:?}"
    );
}

fn limited_proxy(endpoints: &[SocketAddr], pool: &str, connect_timeout: &str) -> Arc<Shared> {
    let list: Vec<String> = endpoints
        .iter()
        .map(|e| format!("{{address: \"{e}\"}}"))
        .collect();
    let yaml = format!(
        "listeners:
- name: mesh
  address: 127.0.0.1:0
  routes:
  - cluster: grpc
    retry: {{attempts: 0, retryOn: []}}
clusters:
- name: grpc
  protocol: HTTP/2
  loadBalancer: ROUND_ROBIN
  connectTimeout: {connect_timeout}
  connectionPool: {pool}
  endpoints: [{}]
",
        list.join(", ")
    );
    Shared::new(waypoint_config::Config::from_yaml(&yaml).unwrap())
}

fn counter(shared: &Shared, name: &str) -> String {
    let text = shared.current().metrics.render();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}{{cluster_name=\"grpc\"}} ")))
        .unwrap_or("0")
        .to_owned()
}

/// As Envoy's HTTP/2 pool: a stream that finds no open connection waits for it as a
/// pending request, and past `maxPendingRequests` it overflows (503 `UO`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_waiting_for_the_connection_count_against_max_pending_requests() {
    let (backend, _held) = support::unanswering_endpoint().await;
    let shared = limited_proxy(&[backend], "{maxPendingRequests: 1}", "3s");
    let proxy = support::serve_first_listener(&shared).await;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let first = tokio::spawn({
        let client = client.clone();
        async move { client.request(call(proxy, true)).await.unwrap() }
    });
    // Let the first stream start waiting for the connection, which cannot open
    // before the 3 s connect timeout.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..2 {
        let resp = client.request(call(proxy, true)).await.unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["x-envoy-overloaded"], "true");
    }
    let resp = first.await.unwrap();
    assert_eq!(resp.status(), 503);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(
        body.ends_with(b"reset reason: connection timeout"),
        "{body:?}"
    );
    assert_eq!(
        counter(&shared, "envoy_cluster_upstream_rq_pending_overflow"),
        "2"
    );
}

/// An endpoint without a connection gets one even past `maxConnections` (its
/// streams could not go anywhere else); the overflow is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_endpoint_gets_its_connection_past_max_connections() {
    let (a, accepted_a) = h2c_backend().await;
    let (b, accepted_b) = h2c_backend().await;
    let shared = limited_proxy(&[a, b], "{maxConnections: 1}", "10s");
    let proxy = support::serve_first_listener(&shared).await;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    for _ in 0..4 {
        let resp = client.request(call(proxy, true)).await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(accepted_a.load(Ordering::SeqCst), 1);
    assert_eq!(accepted_b.load(Ordering::SeqCst), 1);
    assert_eq!(counter(&shared, "envoy_cluster_upstream_cx_overflow"), "1");
}

/// HTTP/1.1 cannot carry the trailers after a body of known length: the client gets
/// the whole body, and the line says the response completed (not `DC`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_of_a_grpc_upstream_is_logged_complete() {
    let (backend, _) = h2c_backend().await;
    let (shared, log) = support::logged(&grpc_waypoint(backend));
    let proxy = support::serve_first_listener(&shared).await;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let resp = client.request(call(proxy, true)).await.unwrap();
    assert_eq!(resp.into_body().collect().await.unwrap().to_bytes(), "pong");
    let line = loop {
        if let Some(line) = log.lock().unwrap().first().cloned() {
            break line;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(line.contains("\" 200 - via_upstream - "), "{line}");
}

/// `maxConnectionDuration` on an HTTP/2 cluster: once the endpoint's connection is
/// that old, the next stream opens a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_past_its_maximum_duration_is_replaced() {
    let (backend, accepted) = h2c_backend().await;
    let shared = limited_proxy(&[backend], "{maxConnectionDuration: 200ms}", "1s");
    let proxy = support::serve_first_listener(&shared).await;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    for _ in 0..3 {
        let resp = client.request(call(proxy, false)).await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let resp = client.request(call(proxy, false)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// A TCP relay to `backend` that a switch freezes: it then drops what either side
/// sends and answers nothing, with both sockets left open, as a hung peer. Counts
/// the connections the proxy's side closed.
async fn freezable_relay(
    backend: SocketAddr,
) -> (
    SocketAddr,
    Arc<std::sync::atomic::AtomicBool>,
    Arc<AtomicUsize>,
) {
    use std::sync::atomic::AtomicBool;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let frozen = Arc::new(AtomicBool::new(false));
    let closed = Arc::new(AtomicUsize::new(0));
    let (freeze, count) = (Arc::clone(&frozen), Arc::clone(&closed));
    tokio::spawn(async move {
        loop {
            let (down, _) = socket.accept().await.unwrap();
            let up = tokio::net::TcpStream::connect(backend).await.unwrap();
            let ((mut down_r, mut down_w), (mut up_r, mut up_w)) =
                (down.into_split(), up.into_split());
            let (f1, f2, count) = (Arc::clone(&freeze), Arc::clone(&freeze), Arc::clone(&count));
            tokio::spawn(async move {
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match down_r.read(&mut buf).await {
                        Ok(0) | Err(_) => {
                            count.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        Ok(_) if f1.load(Ordering::SeqCst) => {}
                        Ok(n) => {
                            if up_w.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
            tokio::spawn(async move {
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match up_r.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) if f2.load(Ordering::SeqCst) => {}
                        Ok(n) => {
                            if down_w.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, frozen, closed)
}

/// `http2KeepAlive`, as Envoy's `connection_keepalive`: a PING every interval, and
/// an upstream connection whose PING goes unanswered for the timeout is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_that_stops_answering_pings_is_closed() {
    let (backend, accepted) = h2c_backend().await;
    let (relay, frozen, closed) = freezable_relay(backend).await;
    let shared = limited_proxy(
        &[relay],
        "{http2KeepAlive: {interval: 100ms, timeout: 100ms}}",
        "1s",
    );
    let proxy = support::serve_first_listener(&shared).await;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let resp = client.request(call(proxy, false)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    // Idle and answered, the connection stays.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(closed.load(Ordering::SeqCst), 0);
    frozen.store(true, Ordering::SeqCst);
    let start = std::time::Instant::now();
    while closed.load(Ordering::SeqCst) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the hung connection was never closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Speaks HTTP/1.1 and h2c (by preface) and answers with the version it was asked in.
async fn any_version_backend() -> SocketAddr {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = socket.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let version = format!("{:?}", req.version());
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(version))))
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// `useClientProtocol` (`protocol: downstream`): each request goes up in the
/// version it came down in, as Envoy's `USE_DOWNSTREAM_PROTOCOL` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_protocol_is_kept_when_the_cluster_says_so() {
    let backend = any_version_backend().await;
    let yaml = grpc_waypoint(backend).replace("protocol: HTTP/2", "protocol: downstream");
    let shared = Shared::new(waypoint_config::Config::from_yaml(&yaml).unwrap());
    let proxy = support::serve_first_listener(&shared).await;
    for (http2, want) in [(false, "HTTP/1.1"), (true, "HTTP/2.0"), (false, "HTTP/1.1")] {
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .http2_only(http2)
            .build_http::<Full<Bytes>>();
        let resp = client.request(call(proxy, !http2)).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, want.as_bytes(), "client in HTTP/2: {http2}");
    }
}
