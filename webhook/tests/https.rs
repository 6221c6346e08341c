//! The webhook's HTTPS server on loopback with real TLS clients: both HTTP versions
//! and both TLS versions, bad input (400, 413), and certificate rotation under load
//! with no failed request.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use waypoint_webhook::Settings;
use waypoint_webhook::certs::{self, Issued};
use waypoint_webhook::server::{self, AppState};
use waypoint_webhook::tls::{self, CertFiles, ReloadingResolver};
use waypoint_webhook::view::Snapshot;

struct Server {
    addr: SocketAddr,
    dir: PathBuf,
    resolver: Arc<ReloadingResolver>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// A new CA and a serving pair it signed.
fn mint() -> (Issued, Issued) {
    let now = time::OffsetDateTime::now_utc();
    let ca = certs::new_ca(now).unwrap();
    let leaf = certs::serving(
        &ca,
        &["localhost".into()],
        &["127.0.0.1".parse().unwrap()],
        now,
    )
    .unwrap();
    (ca, leaf)
}

/// Written the way the kubelet updates a Secret volume: new files, then renamed.
fn install(dir: &Path, leaf: &Issued) {
    for (name, pem) in [("tls.crt", &leaf.cert_pem), ("tls.key", &leaf.key_pem)] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, pem).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

fn issue(dir: &Path) -> Issued {
    let (ca, leaf) = mint();
    install(dir, &leaf);
    ca
}

async fn start(name: &str) -> (Server, Issued) {
    let dir = std::env::temp_dir().join(format!("waypoint-webhook-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = issue(&dir);
    let resolver = Arc::new(
        ReloadingResolver::load(CertFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        })
        .unwrap(),
    );
    let config = tls::server_config(resolver.clone()).unwrap();
    let state = AppState::new(Settings::default(), Arc::new(Snapshot::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::serve(
        listener,
        config,
        server::router(state),
        async {
            let _ = stopped.await;
        },
        Duration::from_secs(1),
    ));
    let server = Server {
        addr,
        dir,
        resolver,
        _stop: stop,
    };
    (server, ca)
}

fn client_config(
    cas: &[&Issued],
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[u8],
) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
            .unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// One open connection, HTTP/1.1 or HTTP/2 by ALPN.
enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Conn {
    async fn open(addr: SocketAddr, tls: &TlsConnector) -> Result<Self, String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let stream = tls.connect(name, tcp).await.map_err(|e| e.to_string())?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(stream);
        if h2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            Ok(Self::H2(send))
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            Ok(Self::H1(send))
        }
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(u16, Bytes), String> {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = match self {
            Self::H1(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await
            }
            Self::H2(s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await
            }
        }
        .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }
}

fn review_body() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "8a0c1b43-0000-4000-8000-000000000001",
            "kind": {"group": "gateway.networking.k8s.io", "version": "v1", "kind": "Gateway"},
            "resource": {"group": "gateway.networking.k8s.io", "version": "v1", "resource": "gateways"},
            "name": "wp", "namespace": "ns", "operation": "CREATE", "userInfo": {},
            "object": {
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "metadata": {"name": "wp", "namespace": "ns"},
                "spec": {"gatewayClassName": "istio-waypoint",
                         "listeners": [{"name": "mesh", "port": 8080, "protocol": "HTTP"}]}
            }
        }
    }))
    .unwrap()
}

fn denied(body: &Bytes) -> bool {
    let v: Value = serde_json::from_slice(body).unwrap();
    v["response"]["uid"] == "8a0c1b43-0000-4000-8000-000000000001"
        && v["response"]["allowed"] == false
}

#[tokio::test]
async fn reviews_over_http1_and_http2_with_tls12_and_tls13() {
    let (server, ca) = start("versions").await;
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        for alpn in [&b"h2"[..], &b"http/1.1"[..]] {
            let mut conn = Conn::open(server.addr, &client_config(&[&ca], versions, alpn))
                .await
                .unwrap();
            // Keep-alive: several reviews on one connection.
            for _ in 0..3 {
                let (status, body) = conn.send("POST", "/validate", review_body()).await.unwrap();
                assert_eq!(status, 200);
                assert!(denied(&body), "{}", String::from_utf8_lossy(&body));
            }
        }
    }
    let mut conn = Conn::open(
        server.addr,
        &client_config(&[&ca], &[&rustls::version::TLS13], b"h2"),
    )
    .await
    .unwrap();
    assert_eq!(conn.send("GET", "/healthz", vec![]).await.unwrap().0, 200);
    // Not ready: nothing marked the caches synced.
    assert_eq!(conn.send("GET", "/readyz", vec![]).await.unwrap().0, 503);
    let (status, metrics) = conn.send("GET", "/metrics", vec![]).await.unwrap();
    assert_eq!(status, 200);
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains(r#"waypoint_webhook_reviews_total{endpoint="validate",kind="Gateway",result="denied"} 12"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn bad_input_gets_400_or_413_and_the_server_keeps_serving() {
    let (server, ca) = start("bad-input").await;
    let mut conn = Conn::open(
        server.addr,
        &client_config(&[&ca], &[&rustls::version::TLS13], b"http/1.1"),
    )
    .await
    .unwrap();
    let (status, body) = conn
        .send("POST", "/validate", b"{not json".to_vec())
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert!(
        String::from_utf8_lossy(&body).starts_with("malformed AdmissionReview: "),
        "{body:?}"
    );
    let (status, body) = conn
        .send("POST", "/mutate", br#"{"kind":"AdmissionReview"}"#.to_vec())
        .await
        .unwrap();
    assert_eq!(status, 400, "{body:?}");
    let mut conn = Conn::open(
        server.addr,
        &client_config(&[&ca], &[&rustls::version::TLS13], b"h2"),
    )
    .await
    .unwrap();
    let (status, _) = conn
        .send("POST", "/validate", vec![b' '; server::MAX_BODY + 1])
        .await
        .unwrap();
    assert_eq!(status, 413);
    let (status, body) = conn.send("POST", "/validate", review_body()).await.unwrap();
    assert_eq!(status, 200);
    assert!(denied(&body));
}

#[tokio::test]
async fn certificate_rotation_fails_no_request() {
    let (server, old_ca) = start("rotation").await;
    // A load of reviews on fresh and kept-alive connections, trusting both CAs the
    // way an API server does while its caBundle carries old and new.
    let addr = server.addr;
    let dir = server.dir.clone();
    let new_ca = Arc::new(std::sync::Mutex::new(None::<Issued>));
    let failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut kept = Conn::open(
        addr,
        &client_config(&[&old_ca], &[&rustls::version::TLS13], b"h2"),
    )
    .await
    .unwrap();

    // Handshakes in flight by clients that do not trust the new CA yet.
    let old_only = Arc::new(AtomicUsize::new(0));
    let rotated = {
        let dir = dir.clone();
        let new_ca = new_ca.clone();
        let old_only = old_only.clone();
        let resolver = server.resolver.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            // As in a cluster, the clients trust the new CA before the serving pair
            // changes: a handshake begun trusting only the old CA must end first, or
            // it fails whatever the server does.
            let (ca, leaf) = mint();
            *new_ca.lock().unwrap() = Some(ca);
            while old_only.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            install(&dir, &leaf);
            assert!(
                resolver.reload().unwrap(),
                "the rotated files were not picked up"
            );
        })
    };
    let load = {
        let failures = failures.clone();
        let done = done.clone();
        let new_ca = new_ca.clone();
        let old_ca = old_ca.clone();
        let old_only = old_only.clone();
        tokio::spawn(async move {
            for _ in 0..60 {
                let next = new_ca.lock().unwrap().clone();
                let trusted: Vec<&Issued> = std::iter::once(&old_ca).chain(next.as_ref()).collect();
                let tls = client_config(&trusted, &[&rustls::version::TLS13], b"http/1.1");
                let counted = next.is_none();
                if counted {
                    old_only.fetch_add(1, Ordering::SeqCst);
                }
                let opened = Conn::open(addr, &tls).await;
                if counted {
                    old_only.fetch_sub(1, Ordering::SeqCst);
                }
                match opened {
                    Ok(mut c) => match c.send("POST", "/validate", review_body()).await {
                        Ok((200, body)) if denied(&body) => {}
                        other => {
                            eprintln!("review failed: {other:?}");
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    },
                    Err(e) => {
                        eprintln!("connect failed: {e}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    rotated.await.unwrap();
    load.await.unwrap();
    assert_eq!(done.load(Ordering::Relaxed), 60);
    assert_eq!(failures.load(Ordering::Relaxed), 0);

    // The connection opened before the rotation still serves.
    let (status, body) = kept.send("POST", "/validate", review_body()).await.unwrap();
    assert_eq!((status, denied(&body)), (200, true));
    // New handshakes present the new certificate: a client trusting only the old CA
    // is refused, one trusting only the new CA gets through.
    let new_ca = new_ca.lock().unwrap().clone().unwrap();
    let old_only = client_config(&[&old_ca], &[&rustls::version::TLS13], b"h2");
    assert!(Conn::open(addr, &old_only).await.is_err());
    let new_only = client_config(&[&new_ca], &[&rustls::version::TLS13], b"h2");
    let mut conn = Conn::open(addr, &new_only).await.unwrap();
    assert_eq!(
        conn.send("POST", "/validate", review_body())
            .await
            .unwrap()
            .0,
        200
    );
    // A half-written pair keeps the good certificate.
    std::fs::write(dir.join("tls.key"), "garbage").unwrap();
    assert!(server.resolver.reload().is_err());
    let mut conn = Conn::open(addr, &new_only).await.unwrap();
    assert_eq!(conn.send("GET", "/healthz", vec![]).await.unwrap().0, 200);
}
