//! The operator's mesh endpoint (the CA and the config server) with the identity
//! crate's and the dataplane's clients, all real, over HTTPS on loopback. Only the
//! TokenReview is replaced: a fixed table of tokens stands in for the API server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use time::OffsetDateTime;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use waypoint_dataplane::config_client::{PollError, Poller, Source, State, apply};
use waypoint_dataplane::identity::MeshTls;
use waypoint_dataplane::proxy::Shared;
use waypoint_identity::Identity;
use waypoint_identity::ca::Ca;
use waypoint_identity::client::{CaEndpoint, ClientError, Failure, request_certificate};
use waypoint_identity::tls::{PeerCheck, client_config, peer_identity, server_config};
use waypoint_identity::workload::Credentials;
use waypoint_operator::ca::Refusal;
use waypoint_operator::ca::server::{AuthFuture, Authenticator, CaServer, serve, tls_config};
use waypoint_operator::config_server::{Applied, Store};
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
    configs: Arc<Store>,
}

async fn start() -> Running {
    let ca = Ca::generate("cluster.local", OffsetDateTime::now_utc(), 365 * DAY).unwrap();
    let old = Ca::generate("cluster.local", OffsetDateTime::now_utc(), 365 * DAY).unwrap();
    let roots = vec![ca.cert_pem().to_owned(), old.cert_pem().to_owned()];
    let tls = tls_config(&ca, &["localhost".to_owned()], DAY, &roots).unwrap();
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
    let (configs, _reported) = Store::new();
    let configs = Arc::new(configs);
    tokio::spawn(serve(
        listener,
        Arc::new(tls),
        Arc::clone(&server),
        Arc::clone(&configs),
    ));
    Running {
        endpoint: CaEndpoint {
            url: format!("https://localhost:{port}").parse().unwrap(),
            roots_pem: roots[0].clone(),
        },
        server,
        metrics,
        configs,
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

/// The waypoint `httpbin/httpbin-waypoint`'s mesh credentials, from the CA itself.
async fn waypoint_tls(ca: &Running) -> Arc<MeshTls> {
    let creds = request_certificate(&ca.endpoint, "token-w", &id("httpbin-waypoint"), None)
        .await
        .unwrap();
    MeshTls::new(creds).unwrap()
}

fn waypoint_key() -> (String, String) {
    ("httpbin".to_owned(), "httpbin-waypoint".to_owned())
}

const CONFIG_V1: &str =
    "listeners: [{name: plain, address: \"127.0.0.1:0\", routes: []}]\nclusters: []\n";
const CONFIG_V2: &str = "listeners: [{name: plain, address: \"127.0.0.1:0\", routes: []}]\nclusters: [{name: c, endpoints: []}]\n";

/// The seed's config journey without Kubernetes: the dataplane's poller gets its
/// own Gateway's config, holds a poll until the next version, reports what it
/// applied (status sees it), and is not sent a version it refused again.
#[tokio::test]
async fn a_waypoint_follows_its_own_config_and_reports_what_it_runs() {
    let ca = start().await;
    ca.metrics.leader.store(true, Ordering::Relaxed);
    let tls = waypoint_tls(&ca).await;
    let (v1, _) = ca.configs.publish(&waypoint_key(), CONFIG_V1.to_owned());
    ca.configs.publish(
        &("httpbin".to_owned(), "other-waypoint".to_owned()),
        "listeners: []\n".to_owned(),
    );
    let source = Source {
        url: ca.endpoint.url.clone(),
        pod: Some("httpbin-waypoint-abc".to_owned()),
    };
    let mut poller = Poller::new(source, Arc::clone(&tls));
    let (version, text) = poller.poll(&State::default()).await.unwrap().unwrap();
    assert_eq!((version.as_str(), text.as_str()), (v1.as_str(), CONFIG_V1));

    let shared = Shared::new(waypoint_config::Config::default());
    let (state, taken) = apply(&shared, &State::default(), version, &text);
    assert!(taken);
    assert_eq!(state.have.as_deref(), Some(v1.as_str()));
    assert_eq!(shared.current().config.listeners.len(), 1);

    // The next poll waits; a new version ends it.
    let publisher = {
        let configs = Arc::clone(&ca.configs);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            configs.publish(&waypoint_key(), CONFIG_V2.to_owned()).0
        })
    };
    let (v2, text) = poller.poll(&state).await.unwrap().unwrap();
    assert_eq!(v2, publisher.await.unwrap());
    assert_eq!(text, CONFIG_V2);
    // That poll reported v1 running.
    assert_eq!(
        ca.configs.applied(&waypoint_key(), Instant::now()),
        Applied::Pending(format!(
            "Waiting for a waypoint pod to apply config version {v2} (1 pod(s) report to the config server)"
        ))
    );
    let (state, _) = apply(&shared, &state, v2.clone(), &text);

    // A config the dataplane refuses: kept out, reported, and not sent again.
    let (v3, _) = ca
        .configs
        .publish(&waypoint_key(), "listeners: 7\n".to_owned());
    let (got, text) = poller.poll(&state).await.unwrap().unwrap();
    assert_eq!(got, v3);
    let (state, taken) = apply(&shared, &state, got, &text);
    assert!(!taken);
    assert_eq!(
        state.have.as_deref(),
        Some(v2.as_str()),
        "v2 stays in force"
    );
    assert_eq!(shared.current().config.clusters.len(), 1);
    let again = {
        let state = state.clone();
        let mut poller = Poller::new(
            Source {
                url: ca.endpoint.url.clone(),
                pod: Some("httpbin-waypoint-abc".to_owned()),
            },
            Arc::clone(&tls),
        );
        tokio::spawn(async move { poller.poll(&state).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!again.is_finished(), "a refused version is not sent again");
    assert!(matches!(
        ca.configs.applied(&waypoint_key(), Instant::now()),
        Applied::Rejected(m) if m.contains("httpbin-waypoint-abc refused config version")
    ));
    let (v4, _) = ca.configs.publish(&waypoint_key(), CONFIG_V1.to_owned());
    let (got, _) = again.await.unwrap().unwrap().unwrap();
    assert_eq!(got, v4);
    assert_eq!(v4, v1, "the same text is the same version");
}

#[tokio::test]
async fn the_config_endpoint_wants_the_leader_and_a_mesh_certificate() {
    let ca = start().await;
    let tls = waypoint_tls(&ca).await;
    ca.configs.publish(&waypoint_key(), CONFIG_V1.to_owned());
    let source = Source {
        url: ca.endpoint.url.clone(),
        pod: None,
    };
    // A standby replica sends the poller away.
    let err = Poller::new(source.clone(), Arc::clone(&tls))
        .poll(&State::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PollError::Status { status, body } if *status == StatusCode::SERVICE_UNAVAILABLE && body.contains("not the leader")),
        "{err}"
    );
    ca.metrics.leader.store(true, Ordering::Relaxed);
    // Without a client certificate: 401 (the CA's own client presents none).
    let req = Request::get("/v1/config?have=x")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, body) = call(&ca.server, req).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "{body}: the CA handler does not serve config"
    );
    let resp = waypoint_operator::config_server::http::handle(
        &ca.configs,
        &ca.metrics.leader,
        "cluster.local",
        None,
        &Request::get("/v1/config").body(()).unwrap(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Another trust domain: 403.
    let stranger = Identity::new("evil.example", "httpbin", "httpbin-waypoint");
    let resp = waypoint_operator::config_server::http::handle(
        &ca.configs,
        &ca.metrics.leader,
        "cluster.local",
        Some(&stranger),
        &Request::get("/v1/config").body(()).unwrap(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // A waypoint with nothing new is told so when the wait ends.
    let resp = waypoint_operator::config_server::http::handle_with_wait(
        &ca.configs,
        &ca.metrics.leader,
        "cluster.local",
        Some(&id("httpbin-waypoint")),
        &Request::get(format!(
            "/v1/config?have={}",
            waypoint_config::delivery::version(CONFIG_V1)
        ))
        .body(())
        .unwrap(),
        Duration::from_millis(100),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    // And one whose Gateway has no config: 404.
    let resp = waypoint_operator::config_server::http::handle_with_wait(
        &ca.configs,
        &ca.metrics.leader,
        "cluster.local",
        Some(&id("client")),
        &Request::get("/v1/config").body(()).unwrap(),
        Duration::from_millis(100),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // Over the wire, the poller gets the config.
    let got = Poller::new(source, tls)
        .poll(&State::default())
        .await
        .unwrap();
    assert_eq!(got.map(|(_, t)| t).as_deref(), Some(CONFIG_V1));
}
