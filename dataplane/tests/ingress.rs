//! An ingress Gateway's config through the whole proxy on loopback, with real
//! backends and a real client: routes chosen by the most specific host (exact, then
//! the longest wildcard, then the catch-all) whatever their order, and Gateway API's
//! 500 for invalid backends.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use waypoint_dataplane::proxy::{self, Shared};

/// Answers every request with its name.
async fn backend(name: &'static str) -> SocketAddr {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = socket.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(name))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
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
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
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
