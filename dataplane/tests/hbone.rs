//! HBONE on loopback, every part real: a mesh CA, the dataplane's HBONE listener,
//! the `waypoint-hbone` client, hyper backends. Checks the contract of
//! waypoint-contract §5: TLS 1.3 mutual auth with ALPN h2, CONNECT routed by its
//! authority, ztunnel's refusal codes, HTTP/1.1 and HTTP/2 inside the tunnel, stream
//! pooling, and credential renewal without a failed request.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::{echo, issue};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use waypoint_dataplane::identity::MeshTls;
use waypoint_dataplane::proxy::Shared;
use waypoint_dataplane::{hbone, metrics};
use waypoint_hbone::{Client, Error};
use waypoint_identity::Identity;
use waypoint_identity::ca::Ca;
use waypoint_identity::tls::PeerCheck;

const DAY: Duration = Duration::from_hours(24);
const VIP: &str = "10.96.0.10:8000";
const EMPTY_VIP: &str = "10.96.0.20:8000";
const TCP_VIP: &str = "10.96.0.30:5432";
const DEAD_TCP_VIP: &str = "10.96.0.31:5432";

/// A loopback port nobody listens on.
async fn dead() -> SocketAddr {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    socket.local_addr().unwrap()
}

/// A backend that answers with its name, the Host it saw and the HTTP version.
async fn backend(name: &'static str) -> SocketAddr {
    let served = support::serve_http("127.0.0.1", move |req| async move {
        let host = support::header(&req, "host");
        let body = req.into_body().collect().await.unwrap().to_bytes();
        support::text(format!(
            "{name} host={host} body={}",
            String::from_utf8_lossy(&body)
        ))
    });
    served.await.addr
}

struct Mesh {
    ca: Ca,
    /// Another trust domain's CA, which the waypoint also trusts (a federation
    /// mistake): its clients pass TLS and must be refused with 401.
    foreign: Ca,
    waypoint: SocketAddr,
    tls: Arc<MeshTls>,
    shared: Arc<Shared>,
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Mesh {
    async fn start() -> Self {
        let ca = Ca::generate("cluster.local", OffsetDateTime::now_utc(), 365 * DAY).unwrap();
        let foreign = Ca::generate("evil.org", OffsetDateTime::now_utc(), 365 * DAY).unwrap();
        let pod = backend("in-ambient-abc12").await;
        let (db, dead) = (echo("127.0.0.1").await, dead().await);
        let yaml = format!(
            "listeners:
- name: mesh
  address: 127.0.0.1:0
  protocol: HBONE
  routes:
  - hosts: [in-ambient.httpbin.svc.cluster.local:8000, \"{VIP}\"]
    cluster: inbound-vip|8000|http|in-ambient.httpbin.svc.cluster.local
  - hosts: [\"{EMPTY_VIP}\"]
    cluster: inbound-vip|8000|http|empty.httpbin.svc.cluster.local
  - hosts: [\"{TCP_VIP}\"]
    cluster: inbound-vip|5432|tcp|db.httpbin.svc.cluster.local
    protocol: TCP
  - hosts: [\"{DEAD_TCP_VIP}\"]
    cluster: inbound-vip|5432|tcp|dead.httpbin.svc.cluster.local
    protocol: TCP
clusters:
- name: inbound-vip|8000|http|in-ambient.httpbin.svc.cluster.local
  endpoints: [{{address: \"{pod}\", workload: in-ambient-abc12}}]
- name: inbound-vip|8000|http|empty.httpbin.svc.cluster.local
  endpoints: []
- name: inbound-vip|5432|tcp|db.httpbin.svc.cluster.local
  endpoints: [{{address: \"{db}\"}}]
- name: inbound-vip|5432|tcp|dead.httpbin.svc.cluster.local
  endpoints: [{{address: \"{dead}\"}}]
"
        );
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        let shared = Shared::with_access_log(
            waypoint_config::Config::from_yaml(&yaml).unwrap(),
            Box::new(move |line| sink.lock().unwrap().push(line.to_owned())),
        );
        let id = Identity::new("cluster.local", "httpbin", "httpbin-waypoint");
        let tls = MeshTls::new(issue(&ca, &id, &[&ca, &foreign], DAY)).unwrap();
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let waypoint = socket.local_addr().unwrap();
        tokio::spawn(hbone::serve(
            Arc::clone(&shared),
            Arc::clone(&tls),
            socket,
            "mesh".to_owned(),
        ));
        Self {
            ca,
            foreign,
            waypoint,
            tls,
            shared,
            log,
        }
    }

    fn client_as(&self, sa: &str) -> Client {
        let creds = issue(
            &self.ca,
            &Identity::new("cluster.local", "httpbin", sa),
            &[&self.ca],
            DAY,
        );
        Client::new(
            &creds,
            PeerCheck::Identities(vec![Identity::new(
                "cluster.local",
                "httpbin",
                "httpbin-waypoint",
            )]),
        )
        .unwrap()
    }
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header(
            http::header::HOST,
            "in-ambient.httpbin.svc.cluster.local:8000",
        )
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn text(resp: http::Response<hyper::body::Incoming>) -> (StatusCode, String) {
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn http1_through_a_tunnel_is_routed_by_the_connect_authority() {
    let mesh = Mesh::start().await;
    let client = mesh.client_as("client");
    let resp = client
        .request(mesh.waypoint, VIP, get("/hostname"))
        .await
        .unwrap();
    assert_eq!(
        text(resp).await,
        (
            StatusCode::OK,
            "in-ambient-abc12 host=in-ambient.httpbin.svc.cluster.local:8000 body=".to_owned()
        )
    );
    // The Host header names no route, yet the CONNECT authority does.
    let odd = Request::post("/anything")
        .header(http::header::HOST, "whatever.example")
        .body(Full::new(Bytes::from("hello")))
        .unwrap();
    let (status, body) = text(client.request(mesh.waypoint, VIP, odd).await.unwrap()).await;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::OK,
            "in-ambient-abc12 host=whatever.example body=hello"
        )
    );
    let log = mesh.log.lock().unwrap().clone();
    assert_eq!(log.len(), 2);
    assert!(
        log[0].contains("\"GET /hostname HTTP/1.1\" 200 - via_upstream"),
        "{}",
        log[0]
    );
    assert!(
        log[0].contains("inbound-vip|8000|http|in-ambient.httpbin.svc.cluster.local"),
        "{}",
        log[0]
    );
    let prom = mesh.shared.current().metrics.render();
    assert!(
        prom.contains("source_principal=\"spiffe://cluster.local/ns/httpbin/sa/client\"")
            && prom.contains("connection_security_policy=\"mutual_tls\""),
        "{prom}"
    );
    let _ = metrics::Metrics::default();
}

#[tokio::test]
async fn http2_inside_the_tunnel_is_sniffed() {
    let mesh = Mesh::start().await;
    let client = mesh.client_as("client");
    let tunnel = client.connect(mesh.waypoint, VIP).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), tunnel)
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("http://in-ambient.httpbin.svc.cluster.local:8000/hostname")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let (status, body) = text(resp).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.starts_with("in-ambient-abc12 "), "{body}");
    let log = mesh.log.lock().unwrap().clone();
    assert!(
        log[0].contains("\"GET /hostname HTTP/2\" 200"),
        "{}",
        log[0]
    );
}

#[tokio::test]
async fn refusals_carry_ztunnels_codes_and_say_why() {
    let mesh = Mesh::start().await;
    let client = mesh.client_as("client");
    let refused = |r: Result<hyper::upgrade::Upgraded, Error>| match r {
        Err(Error::Refused { status, reason, .. }) => (status.as_u16(), reason),
        Err(e) => panic!("not a refusal: {e}"),
        Ok(_) => panic!("tunnel opened"),
    };
    assert_eq!(
        refused(client.connect(mesh.waypoint, "10.96.0.99:8000").await),
        (
            400,
            "this waypoint does not serve 10.96.0.99:8000".to_owned()
        )
    );
    assert_eq!(
        refused(client.connect(mesh.waypoint, EMPTY_VIP).await),
        (
            503,
            format!(
                "no healthy upstream for {EMPTY_VIP} (cluster inbound-vip|8000|http|empty.httpbin.svc.cluster.local)"
            )
        )
    );
    // A peer from another trust domain whose root the waypoint (wrongly) trusts.
    let stranger = issue(
        &mesh.foreign,
        &Identity::new("evil.org", "httpbin", "client"),
        &[&mesh.ca],
        DAY,
    );
    let client = Client::new(&stranger, PeerCheck::TrustDomain("cluster.local".into())).unwrap();
    assert_eq!(
        refused(client.connect(mesh.waypoint, VIP).await),
        (
            401,
            "peer spiffe://evil.org/ns/httpbin/sa/client is outside the trust domain cluster.local"
                .to_owned()
        )
    );
}

#[tokio::test]
async fn a_non_connect_request_gets_400() {
    let mesh = Mesh::start().await;
    let creds = issue(
        &mesh.ca,
        &Identity::new("cluster.local", "httpbin", "client"),
        &[&mesh.ca],
        DAY,
    );
    let config = waypoint_identity::tls::client_config(
        &creds,
        PeerCheck::TrustDomain("cluster.local".into()),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(mesh.waypoint).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("waypoint").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("http://{VIP}/"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, body) = text(sender.send_request(req).await.unwrap()).await;
    assert_eq!(
        (status.as_u16(), body.as_str()),
        (400, "HBONE accepts only CONNECT; got GET")
    );
}

#[tokio::test]
async fn handshakes_without_a_mesh_certificate_or_with_tls12_fail() {
    let mesh = Mesh::start().await;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // No client certificate: the server requires one.
    let no_cert = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(
            provider.signature_verification_algorithms,
        )))
        .with_no_client_auth();
    assert!(handshake_then_read(mesh.waypoint, no_cert).await.is_err());
    // TLS 1.2 only, with a valid mesh certificate: refused.
    let creds = issue(
        &mesh.ca,
        &Identity::new("cluster.local", "httpbin", "client"),
        &[&mesh.ca],
        DAY,
    );
    let tls12 = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(
            provider.signature_verification_algorithms,
        )))
        .with_client_auth_cert(creds.chain.clone(), creds.key.clone_key())
        .unwrap();
    assert!(handshake_then_read(mesh.waypoint, tls12).await.is_err());
}

/// Completes a handshake and reads: with TLS 1.3 a refused client certificate shows
/// only on the first read, as the server's alert.
async fn handshake_then_read(
    addr: SocketAddr,
    config: rustls::ClientConfig,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("waypoint").unwrap(),
            tcp,
        )
        .await?;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    let mut buf = [0u8; 64];
    match tls.read(&mut buf).await? {
        0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
        _ => Ok(()),
    }
}

#[derive(Debug)]
struct AcceptAny(rustls::crypto::WebPkiSupportedAlgorithms);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}

#[tokio::test]
async fn a_hundred_tunnels_share_one_connection_and_renewal_fails_none() {
    let mesh = Mesh::start().await;
    let client = Arc::new(mesh.client_as("client"));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let (client, failed, waypoint) = (Arc::clone(&client), Arc::clone(&failed), mesh.waypoint);
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                match client.request(waypoint, VIP, get("/hostname")).await {
                    Ok(r) if r.status() == StatusCode::OK => {}
                    other => {
                        eprintln!("worker {worker}: {:?}", other.map(|r| r.status()));
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        }));
    }
    // Renew the waypoint's certificate five times while the requests run.
    let id = Identity::new("cluster.local", "httpbin", "httpbin-waypoint");
    for _ in 0..5 {
        let renewed = issue(&mesh.ca, &id, &[&mesh.ca, &mesh.foreign], DAY);
        mesh.tls.set(renewed).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::SeqCst), 0);
    let log = mesh.log.lock().unwrap().clone();
    assert_eq!(log.len(), 100);
    // %DOWNSTREAM_REMOTE_ADDRESS% is third from the end: one TCP connection for all.
    let peers: std::collections::BTreeSet<&str> = log
        .iter()
        .map(|l| l.split(' ').rev().nth(2).unwrap())
        .collect();
    assert_eq!(peers.len(), 1, "{peers:?}");
    // A client that starts now sees the renewed certificate and still gets through.
    let late = mesh.client_as("late");
    let resp = late
        .request(mesh.waypoint, VIP, get("/hostname"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn an_opaque_tcp_port_is_relayed_byte_for_byte() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mesh = Mesh::start().await;
    let client = mesh.client_as("client");
    let tunnel = client.connect(mesh.waypoint, TCP_VIP).await.unwrap();
    let mut tunnel = TokioIo::new(tunnel);
    // Not HTTP: a PostgreSQL-like startup packet, then 1 MiB.
    let payload: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
    let len = payload.len();
    tunnel
        .write_all(&[0, 0, 0, 8, 4, 210, 22, 47])
        .await
        .unwrap();
    tunnel.write_all(&payload).await.unwrap();
    let mut back = vec![0u8; 8 + len];
    tunnel.read_exact(&mut back).await.unwrap();
    assert_eq!(&back[..8], &[0, 0, 0, 8, 4, 210, 22, 47]);
    assert!(back[8..] == payload[..]);
    // Half-close: the waypoint passes the FIN on, the echo server closes, and the
    // tunnel ends cleanly in both directions.
    tunnel.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tunnel.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    // The line is written when both directions close.
    for _ in 0..100 {
        if !mesh.log.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let log = mesh.log.lock().unwrap().clone();
    assert_eq!(log.len(), 1, "{log:?}");
    let n = 8 + (1 << 20);
    assert!(
        log[0].contains(&format!("\"- - -\" 0 - - - \"-\" {n} {n} ")),
        "{}",
        log[0]
    );
    assert!(
        log[0].contains("inbound-vip|5432|tcp|db.httpbin.svc.cluster.local"),
        "{}",
        log[0]
    );
}

#[tokio::test]
async fn a_tcp_upstream_that_refuses_gets_503_before_any_200() {
    let mesh = Mesh::start().await;
    let client = mesh.client_as("client");
    match client.connect(mesh.waypoint, DEAD_TCP_VIP).await {
        Err(Error::Refused { status, reason, .. }) => {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert!(
                reason.starts_with("connecting to upstream 127.0.0.1:"),
                "{reason}"
            );
        }
        Err(e) => panic!("not a refusal: {e}"),
        Ok(_) => panic!("tunnel opened to a dead upstream"),
    }
}

#[tokio::test]
async fn tunnels_close_cleanly_on_both_sides() {
    let mesh = Mesh::start().await;
    let client = mesh.client_as("client");
    let tunnel = client.connect(mesh.waypoint, VIP).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(tunnel)
        .await
        .unwrap();
    let closing = tokio::spawn(async move {
        let parts = conn.without_shutdown().await.unwrap();
        waypoint_hbone::close(parts.io).await
    });
    let resp = sender.send_request(get("/hostname")).await.unwrap();
    assert_eq!(text(resp).await.0, StatusCode::OK);
    drop(sender);
    // After our END_STREAM the waypoint's HTTP/1.1 server sees EOF and ends its side.
    assert!(closing.await.unwrap(), "the waypoint never closed its side");
}
