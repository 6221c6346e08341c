//! `HTTPS` listeners on loopback with certificates from a test CA and a real rustls
//! client that verifies them: the certificate chosen by server name (exact, longest
//! wildcard, then the one without hostname; none: handshake refused), requests
//! routed by host over HTTP/1.1 and HTTP/2 after TLS, and certificates following
//! config reloads.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use waypoint_dataplane::proxy::{self, Shared};

mod support;

/// A CA that issues the listeners' certificates, and that the client trusts.
struct TestCa {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate for a listener: PEM for the config, DER to recognise it.
struct Leaf {
    chain: String,
    key: String,
    der: CertificateDer<'static>,
}

impl TestCa {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap().der().clone();
        Self {
            cert,
            issuer: Issuer::new(params, key),
        }
    }

    fn issue(&self, names: &[&str]) -> Leaf {
        let params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            chain: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A client that verifies the server against this CA, sending SNI or not.
    fn connector(&self, sni: bool, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.enable_sni = sni;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }
}

/// A YAML string literal for PEM text.
fn quoted(pem: &str) -> String {
    serde_json::to_string(pem).unwrap()
}

/// The config of one `HTTPS` listener `gw` with `certs` (hostname, leaf), whose
/// routes send example.com to `exact`, `*.wildcard.org` to `wild` and anything
/// else to `any`; example.com/old redirects without naming a scheme.
fn config(certs: &[(Option<&str>, &Leaf)], backends: &[(&str, SocketAddr)]) -> String {
    let mut yaml = "listeners:
- name: gw
  address: 127.0.0.1:0
  protocol: HTTPS
  tls:
    certificates:
"
    .to_owned();
    for (hostname, leaf) in certs {
        let hostname = hostname.map_or_else(String::new, |h| format!("hostname: \"{h}\", "));
        let _ = writeln!(
            yaml,
            "    - {{{hostname}certChain: {}, privateKey: {}}}",
            quoted(&leaf.chain),
            quoted(&leaf.key)
        );
    }
    yaml.push_str(
        "  routes:
  - {cluster: any}
  - hosts: [\"*.wildcard.org\"]
    cluster: wild
  - hosts: [example.com]
    cluster: exact
    rules:
    - matches: [{path: {type: PathPrefix, value: /old}}]
      filters: [{type: RequestRedirect, path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}]
    - {}
clusters:
",
    );
    for name in ["any", "wild", "exact"] {
        let addr = backends
            .iter()
            .find(|(n, _)| *n == name)
            .map_or_else(|| "127.0.0.1:1".to_owned(), |(_, a)| a.to_string());
        let _ = writeln!(
            yaml,
            "- {{name: {name}, endpoints: [{{address: \"{addr}\"}}]}}"
        );
    }
    yaml
}

/// Serves `yaml`'s listener `gw`; access-log lines go to the vector.
async fn start(yaml: &str) -> (SocketAddr, Arc<Shared>, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    let shared = Shared::with_access_log(
        waypoint_config::Config::from_yaml(yaml).unwrap(),
        Box::new(move |line| sink.lock().unwrap().push(line.to_owned())),
    );
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(proxy::https::serve(
        Arc::clone(&shared),
        socket,
        "gw".into(),
    ));
    (addr, shared, lines)
}

/// A TLS connection to `proxy` for `name`; the handshake error if refused.
async fn connect(
    proxy: SocketAddr,
    connector: &TlsConnector,
    name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(proxy).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    connector.connect(name, tcp).await
}

/// The leaf certificate the proxy presented.
fn served(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// Answers every request with its name.
async fn backend(name: &'static str) -> SocketAddr {
    let served = support::serve_http("127.0.0.1", move |_req| async move { support::text(name) });
    served.await.addr
}

#[tokio::test]
async fn the_server_name_selects_exact_then_longest_wildcard_then_the_default() {
    let ca = TestCa::new();
    // Each certificate also covers the names the test asks for, so the client's
    // own verification passes and only the server's choice is under test.
    let default = ca.issue(&["default.test", "unknown.test", "wildcard.org"]);
    let wild = ca.issue(&["*.wildcard.org", "x.y.wildcard.org"]);
    let deeper = ca.issue(&["*.b.wildcard.org"]);
    let exact = ca.issue(&["example.com"]);
    // The default first and the exact name last: the order must not matter.
    let yaml = config(
        &[
            (None, &default),
            (Some("*.wildcard.org"), &wild),
            (Some("*.b.wildcard.org"), &deeper),
            (Some("example.com"), &exact),
        ],
        &[],
    );
    let (proxy, _shared, _) = start(&yaml).await;
    let with_sni = ca.connector(true, &[b"http/1.1"]);
    for (name, want, which) in [
        ("example.com", &exact, "exact"),
        ("a.wildcard.org", &wild, "*.wildcard.org"),
        ("x.y.wildcard.org", &wild, "*.wildcard.org, two labels deep"),
        ("c.b.wildcard.org", &deeper, "the longer wildcard"),
        (
            "wildcard.org",
            &default,
            "a wildcard never matches its bare suffix",
        ),
        ("unknown.test", &default, "the default"),
    ] {
        let stream = connect(proxy, &with_sni, name).await.unwrap();
        assert_eq!(served(&stream), want.der, "{name}: {which}");
    }
    // No SNI at all: the certificate without hostname.
    let without_sni = ca.connector(false, &[b"http/1.1"]);
    let stream = connect(proxy, &without_sni, "default.test").await.unwrap();
    assert_eq!(served(&stream), default.der);
}

#[tokio::test]
async fn without_a_default_certificate_unknown_names_and_no_sni_are_refused() {
    let ca = TestCa::new();
    let wild = ca.issue(&["*.wildcard.org"]);
    let exact = ca.issue(&["example.com", "unknown.test"]);
    let yaml = config(
        &[
            (Some("*.wildcard.org"), &wild),
            (Some("example.com"), &exact),
        ],
        &[],
    );
    let (proxy, _shared, _) = start(&yaml).await;
    let with_sni = ca.connector(true, &[]);
    let stream = connect(proxy, &with_sni, "example.com").await.unwrap();
    assert_eq!(served(&stream), exact.der);
    // rustls refuses with a fatal alert when no certificate is chosen.
    let refused = connect(proxy, &with_sni, "unknown.test").await.unwrap_err();
    assert_eq!(refused.to_string(), "received fatal alert: AccessDenied");
    let without_sni = ca.connector(false, &[]);
    let refused = connect(proxy, &without_sni, "example.com")
        .await
        .unwrap_err();
    assert_eq!(refused.to_string(), "received fatal alert: AccessDenied");
}

async fn get_h1(stream: TlsStream<TcpStream>, host: &str, path: &str) -> http::Response<String> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let (parts, body) = sender.send_request(req).await.unwrap().into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    http::Response::from_parts(parts, String::from_utf8(body.to_vec()).unwrap())
}

/// A listener with a default certificate (default.test), one for `*.wildcard.org`
/// and one for example.com, each name routed to its own backend; the CA, the
/// proxy's address and its access-log lines.
async fn three_listeners() -> (TestCa, SocketAddr, Arc<Mutex<Vec<String>>>) {
    let ca = TestCa::new();
    let default = ca.issue(&["default.test"]);
    let wild = ca.issue(&["*.wildcard.org"]);
    let exact = ca.issue(&["example.com"]);
    let backends = [
        ("any", backend("any").await),
        ("wild", backend("wild").await),
        ("exact", backend("exact").await),
    ];
    let yaml = config(
        &[
            (None, &default),
            (Some("*.wildcard.org"), &wild),
            (Some("example.com"), &exact),
        ],
        &backends,
    );
    let (proxy, _shared, lines) = start(&yaml).await;
    (ca, proxy, lines)
}

#[tokio::test]
async fn requests_are_routed_by_host_after_tls_over_h1_and_h2() {
    let (ca, proxy, lines) = three_listeners().await;
    let h1 = ca.connector(true, &[b"http/1.1"]);
    for (name, want) in [
        ("example.com", "exact"),
        ("a.wildcard.org", "wild"),
        ("default.test", "any"),
    ] {
        let stream = connect(proxy, &h1, name).await.unwrap();
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let resp = get_h1(stream, name, "/").await;
        assert_eq!(
            (resp.status(), resp.body().as_str()),
            (StatusCode::OK, want),
            "{name}"
        );
    }
    // A redirect that names no scheme keeps the request's: https.
    let stream = connect(proxy, &h1, "example.com").await.unwrap();
    let resp = get_h1(stream, "example.com", "/old/page").await;
    assert_eq!(resp.status(), StatusCode::FOUND);
    assert_eq!(resp.headers()["location"], "https://example.com/new/page");

    // HTTP/2 through ALPN; the authority routes, as on a plain listener.
    let h2 = ca.connector(true, &[b"h2", b"http/1.1"]);
    let stream = connect(proxy, &h2, "b.wildcard.org").await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("https://b.wildcard.org/h2")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"wild");

    // The server name is logged where Envoy puts %REQUESTED_SERVER_NAME%.
    let lines = lines.lock().unwrap();
    let h2_line = lines.iter().find(|l| l.contains("GET /h2 HTTP/2")).unwrap();
    assert!(h2_line.ends_with(" b.wildcard.org default"), "{h2_line}");
}

#[tokio::test]
async fn certificates_follow_reloads_and_a_bad_one_keeps_the_previous() {
    let ca = TestCa::new();
    let first = ca.issue(&["example.com"]);
    let second = ca.issue(&["example.com"]);
    let (proxy, shared, _) = start(&config(&[(Some("example.com"), &first)], &[])).await;
    let client = ca.connector(true, &[]);
    let stream = connect(proxy, &client, "example.com").await.unwrap();
    assert_eq!(served(&stream), first.der);

    shared
        .reload(&config(&[(Some("example.com"), &second)], &[]))
        .unwrap();
    let stream = connect(proxy, &client, "example.com").await.unwrap();
    assert_eq!(
        served(&stream),
        second.der,
        "new connections, new certificate"
    );

    // A key that is not the certificate's: refused, naming the field; the
    // certificate in force stays.
    let mismatched = Leaf {
        key: first.key.clone(),
        ..ca.issue(&["example.com"])
    };
    let err = shared
        .reload(&config(&[(Some("example.com"), &mismatched)], &[]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "listeners[0].tls.certificates[0]: the private key does not belong to the first certificate of certChain"
    );
    let stream = connect(proxy, &client, "example.com").await.unwrap();
    assert_eq!(served(&stream), second.der);
}

/// Gateway API's misdirected requests: a host that belongs to another listener than
/// the connection's server name gets 421; a host of the same listener is served.
#[tokio::test]
async fn a_host_of_another_listener_than_the_server_name_gets_421() {
    let (ca, proxy, lines) = three_listeners().await;
    let h1 = ca.connector(true, &[b"http/1.1"]);
    for (sni, host, want) in [
        ("a.wildcard.org", "b.wildcard.org", StatusCode::OK),
        (
            "a.wildcard.org",
            "example.com",
            StatusCode::MISDIRECTED_REQUEST,
        ),
        (
            "example.com",
            "default.test",
            StatusCode::MISDIRECTED_REQUEST,
        ),
        ("default.test", "other.test", StatusCode::OK),
    ] {
        let stream = connect(proxy, &h1, sni).await.unwrap();
        assert_eq!(
            get_h1(stream, host, "/").await.status(),
            want,
            "{sni} {host}"
        );
    }
    let lines = lines.lock().unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" 421 - misdirected_request ")),
        "{lines:?}"
    );
}
