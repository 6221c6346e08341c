//! Webhook speed, measured (never asserted):
//! 1. the handler in-process: decode, review, encode one recorded Gateway review;
//!    p50/p99/max over many runs;
//! 2. over HTTPS with keep-alive, the server on one thread (one core): reviews/s,
//!    next to the same TLS + HTTP stack answering a fixed response (the peer).
//!
//! `cargo bench -p waypoint-webhook --bench review` (hack/bench-webhook runs it).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::cast_precision_loss
)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;
use waypoint_webhook::Settings;
use waypoint_webhook::admission::{self, Endpoint};
use waypoint_webhook::certs;
use waypoint_webhook::rules::Context;
use waypoint_webhook::server::{self, AppState};
use waypoint_webhook::tls::{self, CertFiles, ReloadingResolver};
use waypoint_webhook::view::Snapshot;

/// The recorded validate review of the guide's Gateway, and the cluster it met.
fn recorded() -> (Vec<u8>, Snapshot) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/recorded.yaml");
    let file: Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let case = &file["cases"][1];
    assert_eq!(case["endpoint"], "validate");
    let body = serde_json::to_vec(&case["review"]).unwrap();
    // A cluster with some size: 200 namespaces of Services and Deployments.
    let mut view = Snapshot::default();
    for i in 0..200 {
        let ns = format!("ns-{i}");
        view.namespaces.push((ns.clone(), BTreeMap::default()));
        view.deployments
            .push((ns.clone(), format!("app-{i}"), BTreeMap::default()));
    }
    (body, view)
}

/// The value at `per_mille`/1000 of a sorted sample (nearest rank).
fn percentile(sorted: &[Duration], per_mille: usize) -> Duration {
    sorted[(sorted.len() - 1) * per_mille / 1000]
}

fn in_process() {
    let (body, view) = recorded();
    let settings = Settings::default();
    let cx = Context {
        settings: &settings,
        view: &view,
    };
    let runs = 100_000;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let req = admission::decode(&body).unwrap();
        let (review, outcome) = admission::review(Endpoint::Validate, &req, &cx);
        let out = serde_json::to_vec(&review).unwrap();
        times.push(t.elapsed());
        assert!(outcome.allowed && !out.is_empty());
    }
    times.sort();
    println!(
        "bench handler in-process (decode+review+encode, {} bytes, {runs} runs): p50 {:?} p99 {:?} max {:?}",
        body.len(),
        percentile(&times, 500),
        percentile(&times, 990),
        times[runs - 1]
    );
}

/// Starts the real server on a current-thread runtime on its own OS thread: one core.
fn start_server(app: axum::Router, dir: &Path) -> (SocketAddr, certs::Issued) {
    let now = time::OffsetDateTime::now_utc();
    let ca = certs::new_ca(now).unwrap();
    let leaf = certs::serving(&ca, &[], &["127.0.0.1".parse().unwrap()], now).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("tls.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &leaf.key_pem).unwrap();
    let resolver = Arc::new(
        ReloadingResolver::load(CertFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        })
        .unwrap(),
    );
    let config = tls::server_config(resolver).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            server::serve(
                listener,
                config,
                app,
                std::future::pending(),
                Duration::from_secs(1),
            )
            .await;
        });
    });
    (addr, ca)
}

/// Drives `connections` keep-alive connections (h2 or http/1.1) for `secs`.
fn load(
    addr: SocketAddr,
    ca: &certs::Issued,
    body: &[u8],
    h2: bool,
    connections: usize,
    secs: u64,
) -> f64 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let body = Bytes::copy_from_slice(body);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let tls = connector
                .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
                .await
                .unwrap();
            let io = TokioIo::new(tls);
            // h2: 4 streams in flight per connection; http/1.1: one at a time.
            let streams = if h2 { 4 } else { 1 };
            if h2 {
                let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                for _ in 0..streams {
                    let (mut send, body, done, stop) =
                        (send.clone(), body.clone(), done.clone(), stop.clone());
                    tasks.push(tokio::spawn(async move {
                        while !stop.load(Ordering::Relaxed) {
                            let req = hyper::Request::post("/validate")
                                .body(Full::new(body.clone()))
                                .unwrap();
                            send.ready().await.unwrap();
                            let resp = send.send_request(req).await.unwrap();
                            assert_eq!(resp.status(), 200);
                            resp.into_body().collect().await.unwrap();
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }));
                }
            } else {
                let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
                tokio::spawn(conn);
                let (body, done, stop) = (body.clone(), done.clone(), stop.clone());
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let req = hyper::Request::post("/validate")
                            .header("host", "127.0.0.1")
                            .body(Full::new(body.clone()))
                            .unwrap();
                        send.ready().await.unwrap();
                        let resp = send.send_request(req).await.unwrap();
                        assert_eq!(resp.status(), 200);
                        resp.into_body().collect().await.unwrap();
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
        }
        // Warm up, then measure.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let start = done.load(Ordering::Relaxed);
        let t = Instant::now();
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let n = done.load(Ordering::Relaxed) - start;
        let rate = n as f64 / t.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            let _ = t.await;
        }
        rate
    })
}

fn over_https() {
    let (body, view) = recorded();
    let dir = std::env::temp_dir().join(format!("waypoint-webhook-bench-{}", std::process::id()));
    let state = AppState::new(Settings::default(), Arc::new(view));
    let (ours, ours_ca) = start_server(server::router(state), &dir.join("ours"));
    // The peer: the same TLS and HTTP stack, reading the body and sending a fixed
    // answer: no decoding, no rules, no encoding.
    let fixed = Bytes::from_static(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"u","allowed":true}}"#);
    let peer_app = axum::Router::new().route(
        "/validate",
        axum::routing::post(move |_body: Bytes| async move { fixed.clone() }),
    );
    let (peer, peer_ca) = start_server(peer_app, &dir.join("peer"));
    let secs = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    for (h2, conns, label) in [
        (true, 2, "h2, 2 connections x 4 streams"),
        (false, 8, "http/1.1, 8 connections"),
    ] {
        let r_ours = load(ours, &ours_ca, &body, h2, conns, secs);
        let r_peer = load(peer, &peer_ca, &body, h2, conns, secs);
        println!(
            "bench https one server thread ({label}): webhook {r_ours:.0} reviews/s, fixed-response peer \
             {r_peer:.0} req/s, ratio {:.2}",
            r_ours / r_peer
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn main() {
    in_process();
    over_https();
}
