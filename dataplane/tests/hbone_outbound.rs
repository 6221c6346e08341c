//! Outbound HBONE on loopback, every part real: waypoint A forwards to endpoints
//! marked `hbone` through a tunnel to the endpoint's "node" B, a second dataplane
//! with an HBONE listener on `<pod ip>:15008` (waypoint-contract §5, step 8). Each
//! test uses its own 127.0.0.N so that the fixed port 15008 never clashes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness

mod support;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpStream};
use waypoint_dataplane::hbone;
use waypoint_dataplane::identity::MeshTls;
use waypoint_dataplane::proxy::{self, Shared};
use waypoint_hbone::Client;
use waypoint_identity::Identity;
use waypoint_identity::ca::Ca;
use waypoint_identity::tls::PeerCheck;
use waypoint_identity::workload::Credentials;

const DAY: Duration = Duration::from_hours(24);
const WAYPOINT_SA: &str = "spiffe://cluster.local/ns/httpbin/sa/httpbin-waypoint";

fn issue(ca: &Ca, id: &Identity) -> Credentials {
    support::issue(ca, id, &[ca], DAY)
}

fn ca() -> Ca {
    Ca::generate("cluster.local", OffsetDateTime::now_utc(), 365 * DAY).unwrap()
}

fn waypoint_tls(ca: &Ca, sa: &str) -> Arc<MeshTls> {
    MeshTls::new(issue(ca, &Identity::new("cluster.local", "httpbin", sa))).unwrap()
}

/// A backend on `ip` that answers with its name and the Host it saw.
async fn backend(ip: &str, name: &'static str) -> SocketAddr {
    let served = support::serve_http(ip, move |req| async move {
        let host = support::header(&req, "host");
        support::text(format!("{name} host={host}"))
    });
    served.await.addr
}

type Log = Arc<Mutex<Vec<String>>>;

fn shared(yaml: &str) -> (Arc<Shared>, Log) {
    let log = Log::default();
    let sink = Arc::clone(&log);
    let shared = Shared::with_access_log(
        waypoint_config::Config::from_yaml(yaml).unwrap(),
        Box::new(move |line| sink.lock().unwrap().push(line.to_owned())),
    );
    (shared, log)
}

/// The destination's node: an HBONE listener on `ip:15008` whose routes send each
/// `(authority, protocol)` to the backend at that authority.
struct Node {
    shared: Arc<Shared>,
    log: Log,
}

async fn node(ca: &Ca, ip: &str, routes: &[(SocketAddr, &str)]) -> Node {
    let mut yaml =
        format!("listeners:\n- name: mesh\n  address: {ip}:15008\n  protocol: HBONE\n  routes:\n");
    for (addr, protocol) in routes {
        let route = format!("{{hosts: [\"{addr}\"], cluster: pod-{addr}, protocol: {protocol}}}");
        writeln!(yaml, "  - {route}").unwrap();
    }
    yaml += "clusters:\n";
    for (addr, _) in routes {
        writeln!(
            yaml,
            "- {{name: pod-{addr}, endpoints: [{{address: \"{addr}\"}}]}}"
        )
        .unwrap();
    }
    let (shared, log) = shared(&yaml);
    let tls = MeshTls::new(issue(
        ca,
        &Identity::new("cluster.local", "istio-system", "ztunnel"),
    ))
    .unwrap();
    let socket = TcpListener::bind((ip, 15008)).await.unwrap();
    tokio::spawn(hbone::serve(
        Arc::clone(&shared),
        tls,
        socket,
        "mesh".to_owned(),
    ));
    Node { shared, log }
}

/// Waypoint A: a plain HTTP listener `web` routing `<name>.example` to cluster
/// `<name>` for every cluster in `clusters` (YAML list items).
struct Waypoint {
    address: SocketAddr,
    shared: Arc<Shared>,
    log: Log,
}

fn waypoint_yaml(names: &[&str], clusters: &str) -> String {
    let mut routes = String::new();
    for n in names {
        let retry = "retry: {attempts: 0, retryOn: []}";
        writeln!(
            routes,
            "  - {{hosts: [{n}.example], cluster: {n}, {retry}}}"
        )
        .unwrap();
    }
    format!(
        "listeners:\n- name: web\n  address: 127.0.0.1:0\n  routes:\n{routes}clusters:\n{clusters}"
    )
}

async fn waypoint(names: &[&str], clusters: &str) -> Waypoint {
    let (shared, log) = shared(&waypoint_yaml(names, clusters));
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    tokio::spawn(proxy::serve(Arc::clone(&shared), socket, "web".to_owned()));
    Waypoint {
        address,
        shared,
        log,
    }
}

impl Waypoint {
    async fn get(&self, host: &str) -> (StatusCode, String) {
        let tcp = TcpStream::connect(self.address).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get("/hostname")
            .header(http::header::HOST, host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn last_log(&self) -> String {
        self.log.lock().unwrap().last().cloned().unwrap_or_default()
    }

    fn ejected(&self, cluster: &str) -> Vec<usize> {
        self.shared.current().cluster(cluster).unwrap().ejected()
    }
}

/// The source principals in B's request metrics, sorted.
fn principals(shared: &Shared) -> String {
    let mut all: Vec<String> = shared
        .current()
        .metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .filter_map(|l| l.split("source_principal=\"").nth(1))
        .filter_map(|l| l.split('"').next())
        .map(str::to_owned)
        .collect();
    all.sort();
    all.join(",")
}

const OUTLIER: &str = "outlierDetection: {consecutive5xxErrors: 1, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 100}";

#[tokio::test]
async fn a_mesh_enabled_endpoint_is_reached_through_hbone_as_the_waypoint() {
    let ca = ca();
    let pod = backend("127.0.0.71", "pod-71").await;
    let plain = backend("127.0.0.1", "plain").await;
    let b = node(&ca, "127.0.0.71", &[(pod, "HTTP")]).await;
    let a = waypoint(
        &["mesh", "plain"],
        &format!(
            "- {{name: mesh, endpoints: [{{address: \"{pod}\", hbone: true}}]}}\n\
             - {{name: plain, endpoints: [{{address: \"{plain}\"}}]}}\n"
        ),
    )
    .await;
    a.shared.set_mesh(waypoint_tls(&ca, "httpbin-waypoint"));

    for _ in 0..2 {
        assert_eq!(
            a.get("mesh.example").await,
            (StatusCode::OK, "pod-71 host=mesh.example".to_owned())
        );
    }
    // Both requests went through B, which saw the waypoint's identity, and over
    // one kept-alive tunnel: A opened a single upstream connection.
    assert_eq!(b.log.lock().unwrap().len(), 2);
    assert_eq!(principals(&b.shared), WAYPOINT_SA);
    let mesh = a.shared.current().cluster("mesh").unwrap().pool_counts();
    assert_eq!(mesh.connections, 1, "{mesh:?}");
    assert!(
        a.last_log().contains(&format!("\"{pod}\"")),
        "{}",
        a.last_log()
    );

    // A plain endpoint beside it is still reached directly.
    assert_eq!(
        a.get("plain.example").await,
        (StatusCode::OK, "plain host=plain.example".to_owned())
    );
    assert_eq!(b.log.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_refused_or_unreachable_tunnel_is_a_connect_failure() {
    let ca = ca();
    let pod = backend("127.0.0.72", "pod-72").await;
    // B runs but does not serve `stray`: CONNECT to it gets 400. On 127.0.0.73 no
    // node tunnel listens at all. Both pods would answer in plain text, which A
    // must not fall back to.
    let b = node(&ca, "127.0.0.72", &[(pod, "HTTP")]).await;
    let stray = backend("127.0.0.72", "stray").await;
    let unmeshed = backend("127.0.0.73", "unmeshed").await;
    let plain = backend("127.0.0.1", "plain").await;
    let a = waypoint(
        &["refused", "down", "plain"],
        &format!(
            "- {{name: refused, endpoints: [{{address: \"{stray}\", hbone: true}}], {OUTLIER}}}\n\
             - {{name: down, endpoints: [{{address: \"{unmeshed}\", hbone: true}}], {OUTLIER}}}\n\
             - {{name: plain, endpoints: [{{address: \"{plain}\"}}]}}\n"
        ),
    )
    .await;
    a.shared.set_mesh(waypoint_tls(&ca, "httpbin-waypoint"));

    for cluster in ["refused", "down"] {
        let (status, body) = a.get(&format!("{cluster}.example")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{cluster}: {body}");
        assert!(
            body.ends_with("reset reason: remote connection failure"),
            "{body}"
        );
        let line = a.last_log();
        assert!(
            line.contains(
                "\" 503 UF upstream_reset_before_response_started{remote_connection_failure} "
            ),
            "{line}"
        );
        // Reported to outlier detection as a connect failure: ejected after one.
        assert_eq!(a.ejected(cluster), [0], "{cluster}");
    }
    assert!(b.log.lock().unwrap().is_empty());
    assert_eq!(
        a.get("plain.example").await,
        (StatusCode::OK, "plain host=plain.example".to_owned())
    );
}

#[tokio::test]
async fn credentials_set_late_are_used_and_survive_a_reload() {
    let ca = ca();
    let pod = backend("127.0.0.74", "pod-74").await;
    let b = node(&ca, "127.0.0.74", &[(pod, "HTTP")]).await;
    let clusters = format!("- {{name: mesh, endpoints: [{{address: \"{pod}\", hbone: true}}]}}\n");
    let a = waypoint(&["mesh"], &clusters).await;

    // No mesh credentials: the endpoint cannot be reached, and nothing goes out
    // in plain text instead.
    let (status, _) = a.get("mesh.example").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(a.last_log().contains(" 503 UF "), "{}", a.last_log());
    assert!(b.log.lock().unwrap().is_empty());

    a.shared.set_mesh(waypoint_tls(&ca, "httpbin-waypoint"));
    assert_eq!(a.get("mesh.example").await.0, StatusCode::OK);
    // A changed cluster is rebuilt on reload; it keeps the credentials.
    let changed = clusters.replace("hbone: true", "hbone: true, workload: pod-74");
    a.shared
        .reload(&waypoint_yaml(&["mesh"], &changed))
        .unwrap();
    assert_eq!(
        a.shared.current().config.clusters[0].endpoints[0]
            .workload
            .as_deref(),
        Some("pod-74")
    );
    assert_eq!(a.get("mesh.example").await.0, StatusCode::OK);
    assert_eq!(b.log.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn new_tunnels_present_renewed_credentials() {
    let ca = ca();
    let pod = backend("127.0.0.75", "pod-75").await;
    let b = node(&ca, "127.0.0.75", &[(pod, "HTTP")]).await;
    // One request per connection, so each request opens a new tunnel.
    let a = waypoint(
        &["mesh"],
        &format!(
            "- {{name: mesh, endpoints: [{{address: \"{pod}\", hbone: true}}], connectionPool: {{maxRequestsPerConnection: 1}}}}\n"
        ),
    )
    .await;
    let tls = waypoint_tls(&ca, "httpbin-waypoint");
    a.shared.set_mesh(Arc::clone(&tls));
    assert_eq!(a.get("mesh.example").await.0, StatusCode::OK);
    // A renewal that (unlike a real one) changes the identity, so B can tell
    // which certificate the next tunnel presented.
    tls.set(issue(
        &ca,
        &Identity::new("cluster.local", "httpbin", "renewed"),
    ))
    .unwrap();
    assert_eq!(a.get("mesh.example").await.0, StatusCode::OK);
    assert_eq!(
        principals(&b.shared),
        format!("{WAYPOINT_SA},spiffe://cluster.local/ns/httpbin/sa/renewed")
    );
}

#[tokio::test]
async fn an_opaque_tcp_tunnel_to_a_mesh_enabled_endpoint_rides_hbone_too() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = ca();
    let db = support::echo("127.0.0.76").await;
    let b = node(&ca, "127.0.0.76", &[(db, "TCP")]).await;
    // A terminates HBONE from a client and relays the opaque port to B.
    let (a, a_log) = shared(&format!(
        "listeners:
- name: mesh
  address: 127.0.0.1:0
  protocol: HBONE
  routes: [{{hosts: [\"10.96.0.30:5432\"], cluster: db, protocol: TCP}}]
clusters: [{{name: db, endpoints: [{{address: \"{db}\", hbone: true}}]}}]
"
    ));
    let tls = waypoint_tls(&ca, "httpbin-waypoint");
    a.set_mesh(Arc::clone(&tls));
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a_addr = socket.local_addr().unwrap();
    tokio::spawn(hbone::serve(Arc::clone(&a), tls, socket, "mesh".to_owned()));

    let client = Client::new(
        &issue(&ca, &Identity::new("cluster.local", "httpbin", "client")),
        PeerCheck::TrustDomain("cluster.local".to_owned()),
    )
    .unwrap();
    let mut tunnel = TokioIo::new(client.connect(a_addr, "10.96.0.30:5432").await.unwrap());
    tunnel.write_all(b"\0\0\0\x08not http").await.unwrap();
    tunnel.shutdown().await.unwrap();
    let mut back = Vec::new();
    tunnel.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"\0\0\0\x08not http");
    // Each side writes its TCP line when both directions have closed.
    for _ in 0..200 {
        if !b.log.lock().unwrap().is_empty() && !a_log.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let b_log = b.log.lock().unwrap().clone();
    assert_eq!(b_log.len(), 1, "{b_log:?}");
    assert!(b_log[0].contains(" 0 - - - \"-\" 12 12 "), "{}", b_log[0]);
    let a_log = a_log.lock().unwrap().clone();
    assert_eq!(a_log.len(), 1, "{a_log:?}");
    assert!(a_log[0].contains(" 0 - - - \"-\" 12 12 "), "{}", a_log[0]);
}
