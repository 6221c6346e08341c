//! The operator's CA server and the identity crate's client, both real, over HTTPS
//! on loopback. Only the TokenReview is replaced: a fixed table of tokens stands in
//! for the API server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use time::OffsetDateTime;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use waypoint_identity::Identity;
use waypoint_identity::ca::Ca;
use waypoint_identity::client::{CaEndpoint, ClientError, Failure, request_certificate};
use waypoint_identity::tls::{PeerCheck, client_config, peer_identity, server_config};
use waypoint_identity::workload::Credentials;
use waypoint_operator::ca::Refusal;
use waypoint_operator::ca::server::{AuthFuture, Authenticator, CaServer, serve, tls_config};
use waypoint_operator::metrics::Metrics;

const DAY: Duration = Duration::from_hours(24);
const BACKDATE: Duration = Duration::from_mins(1);

/// token → user name, as a TokenReview would answer.
struct Fixed(BTreeMap<&'static str, &'static str>);

impl Authenticator for Fixed {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
        let user = self.0.get(token).map(|u| (*u).to_owned());
        Box::pin(async move { user.ok_or_else(|| Refusal::InvalidToken("unknown token".into())) })
    }
}

struct Running {
    endpoint: CaEndpoint,
    server: Arc<CaServer>,
    metrics: Arc<Metrics>,
}

async fn start() -> Running {
    let ca = Ca::generate("cluster.local", OffsetDateTime::now_utc(), 365 * DAY).unwrap();
    let old = Ca::generate("cluster.local", OffsetDateTime::now_utc(), 365 * DAY).unwrap();
    let tls = tls_config(&ca, &["localhost".to_owned()], DAY).unwrap();
    let roots = vec![ca.cert_pem().to_owned(), old.cert_pem().to_owned()];
    let metrics = Arc::new(Metrics::default());
    let server = Arc::new(CaServer {
        trust_roots: roots.clone(),
        ca,
        authenticator: Arc::new(Fixed(BTreeMap::from([
            ("token-a", "system:serviceaccount:httpbin:client"),
            ("token-w", "system:serviceaccount:httpbin:httpbin-waypoint"),
            ("token-admin", "kubernetes-admin"),
        ]))),
        max_ttl: DAY,
        metrics: Arc::clone(&metrics),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(serve(listener, Arc::new(tls), Arc::clone(&server)));
    Running {
        endpoint: CaEndpoint {
            url: format!("https://localhost:{port}").parse().unwrap(),
            roots_pem: roots[0].clone(),
        },
        server,
        metrics,
    }
}

fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", "httpbin", sa)
}

fn lifetime(c: &Credentials) -> Duration {
    c.not_after.duration_since(c.not_before).unwrap()
}

fn refused(err: ClientError) -> (StatusCode, String) {
    match *err.failure {
        Failure::Refused { status, body } => (status, body),
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test]
async fn a_workload_gets_its_own_identity_with_every_root_and_a_capped_lifetime() {
    let ca = start().await;
    let creds = request_certificate(&ca.endpoint, "token-a", &id("client"), None)
        .await
        .unwrap();
    assert_eq!(creds.identity, id("client"));
    assert_eq!(lifetime(&creds), DAY + BACKDATE);
    // Both roots of a rotation come back, signing root first.
    assert_eq!(creds.roots.len(), 2);

    let short = request_certificate(
        &ca.endpoint,
        "token-a",
        &id("client"),
        Some(Duration::from_hours(1)),
    )
    .await
    .unwrap();
    assert_eq!(lifetime(&short), Duration::from_hours(1) + BACKDATE);
    let long = request_certificate(&ca.endpoint, "token-a", &id("client"), Some(7 * DAY))
        .await
        .unwrap();
    assert_eq!(lifetime(&long), DAY + BACKDATE);
    assert!(
        ca.metrics
            .render()
            .contains("waypoint_operator_certificates_signed_total 3\n")
    );
}

/// What the CA issued is usable for HBONE: two workloads complete a TLS 1.3 mutual
/// handshake with the identity crate's configs and see each other's identity.
#[tokio::test]
async fn issued_credentials_complete_an_hbone_handshake() {
    let ca = start().await;
    let client = request_certificate(&ca.endpoint, "token-a", &id("client"), None)
        .await
        .unwrap();
    let waypoint = request_certificate(&ca.endpoint, "token-w", &id("httpbin-waypoint"), None)
        .await
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server_config(&waypoint).unwrap()));
    let connector = TlsConnector::from(Arc::new(
        client_config(&client, PeerCheck::Identities(vec![id("httpbin-waypoint")])).unwrap(),
    ));
    let (a, b) = tokio::io::duplex(64 * 1024);
    let name = rustls::pki_types::ServerName::try_from("waypoint").unwrap();
    let (server, client) = tokio::join!(acceptor.accept(b), connector.connect(name, a));
    let (server, client) = (server.unwrap(), client.unwrap());
    let seen_by_server = peer_identity(server.get_ref().1.peer_certificates().unwrap());
    let seen_by_client = peer_identity(client.get_ref().1.peer_certificates().unwrap());
    assert_eq!(seen_by_server, Some(id("client")));
    assert_eq!(seen_by_client, Some(id("httpbin-waypoint")));
}

#[tokio::test]
async fn a_missing_or_unknown_token_is_401() {
    let ca = start().await;
    for token in ["", "token-nobody"] {
        let (status, body) = refused(
            request_certificate(&ca.endpoint, token, &id("client"), None)
                .await
                .unwrap_err(),
        );
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    let text = ca.metrics.render();
    assert!(text.contains("waypoint_operator_certificate_refusals_total{reason=\"no_token\"} 1\n"));
    assert!(
        text.contains("waypoint_operator_certificate_refusals_total{reason=\"invalid_token\"} 1\n")
    );
}

#[tokio::test]
async fn asking_for_another_identity_is_403_naming_both() {
    let ca = start().await;
    let err = request_certificate(&ca.endpoint, "token-a", &id("httpbin-waypoint"), None)
        .await
        .unwrap_err();
    let message = err.to_string();
    let (status, body) = refused(err);
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        body.contains("spiffe://cluster.local/ns/httpbin/sa/httpbin-waypoint")
            && body.contains("authenticated as spiffe://cluster.local/ns/httpbin/sa/client"),
        "{body}"
    );
    // The client's error names the CA and the status too.
    assert!(message.contains("https://localhost:"), "{message}");
    assert!(message.contains("HTTP 403 Forbidden"), "{message}");

    let (status, body) = refused(
        request_certificate(&ca.endpoint, "token-admin", &id("client"), None)
            .await
            .unwrap_err(),
    );
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("not a ServiceAccount"), "{body}");
}

#[tokio::test]
async fn the_client_refuses_a_ca_it_does_not_trust_or_by_another_name() {
    let ca = start().await;
    let stranger = Ca::generate("cluster.local", OffsetDateTime::now_utc(), DAY).unwrap();
    let untrusted = CaEndpoint {
        url: ca.endpoint.url.clone(),
        roots_pem: stranger.cert_pem().to_owned(),
    };
    let err = request_certificate(&untrusted, "token-a", &id("client"), None)
        .await
        .unwrap_err();
    assert!(matches!(*err.failure, Failure::Tls(_)), "{err}");
    // Same server, reached by an IP its certificate does not name.
    let port = ca.endpoint.url.port_u16().unwrap();
    let by_ip = CaEndpoint {
        url: format!("https://127.0.0.1:{port}").parse().unwrap(),
        roots_pem: ca.endpoint.roots_pem.clone(),
    };
    let err = request_certificate(&by_ip, "token-a", &id("client"), None)
        .await
        .unwrap_err();
    assert!(matches!(*err.failure, Failure::Tls(_)), "{err}");
}

async fn call(server: &CaServer, req: Request<Full<Bytes>>) -> (StatusCode, String) {
    let resp = server.handle(req).await;
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// Malformed requests, through the same handler the HTTPS server runs.
#[tokio::test]
async fn malformed_requests_say_what_is_wrong() {
    let ca = start().await;
    let post = |body: &'static str| {
        Request::post("/v1/certificates")
            .header("authorization", "Bearer token-a")
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    };
    let (status, body) = call(&ca.server, post("{\"csr\": 3}")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body.contains("the body is not a CertificateRequest"),
        "{body}"
    );
    let (status, body) = call(&ca.server, post("{\"csr\": \"junk\"}")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("not a valid PKCS#10"), "{body}");
    let (status, body) = call(
        &ca.server,
        post("{\"csr\": \"junk\", \"validitySeconds\": 0}"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("validitySeconds must be positive"), "{body}");
    let get = Request::get("/v1/certificates")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        call(&ca.server, get).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    let elsewhere = Request::post("/v1/other")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(call(&ca.server, elsewhere).await.0, StatusCode::NOT_FOUND);
}
