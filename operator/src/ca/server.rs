//! The CA's HTTPS endpoint, `POST /v1/certificates`: the bearer token is checked
//! with a TokenReview (audience `waypoint-ca`), the ServiceAccount it names becomes
//! the only identity the CSR may ask for, and the answer is the signed leaf plus
//! every trust root. Token checking sits behind [`Authenticator`] so the real
//! server can be tested in-process with a fixed one.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::Client;
use kube::api::{Api, PostParams};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use waypoint_config::delivery;
use waypoint_identity::ca::{self, Ca};
use waypoint_identity::protocol::{CertificateRequest, CertificateResponse, PATH, TOKEN_AUDIENCE};
use waypoint_identity::tls::peer_identity;
use waypoint_identity::{Identity, ParseError};

use super::{Refusal, bearer, refusal_status, ttl};
use crate::config_server;
use crate::metrics::Metrics;

/// A CSR and a token are a few KiB; anything bigger is not a certificate request.
const MAX_BODY: usize = 64 * 1024;
/// A client that has not finished its handshake by then is not going to.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A TokenReview slower than this fails the request with 503; the workload retries.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = Result<String, Refusal>> + Send + 'a>>;

/// Turns a bearer token into the user name it proves (for a workload,
/// `system:serviceaccount:<ns>:<sa>`), or says why not.
pub trait Authenticator: Send + Sync {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a>;
}

/// The API server decides: a TokenReview for audience `waypoint-ca`, so a token
/// minted for anything else (the default API token included) is refused.
pub struct TokenReviewer {
    pub client: Client,
}

impl Authenticator for TokenReviewer {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
        Box::pin(async move {
            let api: Api<TokenReview> = Api::all(self.client.clone());
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: token.to_owned(),
                    audiences: Some(vec![TOKEN_AUDIENCE.to_owned()]),
                },
                ..TokenReview::default()
            };
            let done =
                tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &review))
                    .await
                    .map_err(|_| {
                        Refusal::AuthenticatorUnavailable(format!(
                            "the TokenReview took longer than {REVIEW_TIMEOUT:?}"
                        ))
                    })?
                    .map_err(|e| Refusal::AuthenticatorUnavailable(e.to_string()))?;
            let status = done.status.unwrap_or_default();
            let audience_ok = status
                .audiences
                .as_ref()
                .is_some_and(|a| a.iter().any(|a| a == TOKEN_AUDIENCE));
            match (status.authenticated, status.user.and_then(|u| u.username)) {
                (Some(true), Some(user)) if audience_ok => Ok(user),
                (Some(true), _) => Err(Refusal::InvalidToken(format!(
                    "the token is not for audience {TOKEN_AUDIENCE}"
                ))),
                _ => Err(Refusal::InvalidToken(
                    status
                        .error
                        .filter(|e| !e.is_empty())
                        .unwrap_or_else(|| "not authenticated".to_owned()),
                )),
            }
        })
    }
}

/// Everything one replica's CA server needs.
pub struct CaServer {
    pub ca: Ca,
    /// PEM, the signing root first.
    pub trust_roots: Vec<String>,
    pub authenticator: Arc<dyn Authenticator>,
    /// `--workload-cert-ttl`: the longest certificate it signs.
    pub max_ttl: Duration,
    pub metrics: Arc<Metrics>,
}

impl CaServer {
    /// Answers one HTTP request.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if req.uri().path() != PATH {
            return text(
                StatusCode::NOT_FOUND,
                format!("not found: the CA serves POST {PATH}\n"),
            );
        }
        if req.method() != Method::POST {
            let mut resp = text(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{PATH} takes POST\n"),
            );
            resp.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
            return resp;
        }
        match self.issue(req).await {
            Ok((identity, ttl, answer)) => {
                self.metrics.certificate_signed();
                tracing::info!(%identity, ttl_seconds = ttl.as_secs(), "signed a workload certificate");
                match serde_json::to_vec(&answer) {
                    Ok(json) => json_response(StatusCode::OK, json),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
                }
            }
            Err(refusal) => {
                let status = refusal_status(&refusal);
                self.metrics.certificate_refused(refusal.reason());
                match status {
                    StatusCode::FORBIDDEN => {
                        tracing::warn!(reason = refusal.reason(), error = %refusal, "refused a certificate request");
                    }
                    s if s.is_server_error() => {
                        tracing::error!(reason = refusal.reason(), error = %refusal, "could not answer a certificate request");
                    }
                    _ => {
                        tracing::info!(reason = refusal.reason(), error = %refusal, "refused a certificate request");
                    }
                }
                let body =
                    serde_json::json!({ "error": refusal.to_string(), "reason": refusal.reason() });
                json_response(status, body.to_string().into_bytes())
            }
        }
    }

    /// Authenticate, then read and sign: who is asking is settled before the body.
    async fn issue<B>(
        &self,
        req: Request<B>,
    ) -> Result<(Identity, Duration, CertificateResponse), Refusal>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let authorization = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let token = bearer(authorization).ok_or(Refusal::NoToken)?.to_owned();
        let user = self.authenticator.authenticate(&token).await?;
        let identity = Identity::from_service_account_username(self.ca.trust_domain(), &user)
            .map_err(|e| match e {
                ParseError::Username(u) | ParseError::Shape(u) => Refusal::NotServiceAccount(u),
            })?;
        let body = Limited::new(req.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| Refusal::BadRequest(format!("reading the body: {e}")))?
            .to_bytes();
        let request: CertificateRequest =
            serde_json::from_slice(&body).map_err(|e| Refusal::BadRequest(e.to_string()))?;
        let ttl = ttl(request.validity_seconds, self.max_ttl)?;
        let leaf = self
            .ca
            .sign(&request.csr, &identity, OffsetDateTime::now_utc(), ttl)?;
        Ok((
            identity,
            ttl,
            CertificateResponse {
                cert_chain: vec![leaf],
                roots: self.trust_roots.clone(),
            },
        ))
    }
}

/// A plain-text answer (the config endpoint's too).
pub(crate) fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("issuing the CA's serving certificate: {0}")]
    Issue(#[from] ca::Error),
    #[error("the CA's serving certificate is unusable: {0}")]
    Pem(String),
    #[error("building the CA's TLS config: {0}")]
    Tls(#[from] rustls::Error),
}

/// TLS for the mesh endpoint: a certificate for `dns_names` signed by the mesh root
/// itself, so the one root ConfigMap lets a workload trust both the CA and its
/// peers. It lives `ttl` (a year); replicas restart far more often. A client
/// certificate chained to `trust_roots` is optional: asking for a certificate needs
/// none, the config endpoint names its caller by it.
pub fn tls_config(
    ca: &Ca,
    dns_names: &[String],
    ttl: Duration,
    trust_roots: &[String],
) -> Result<ServerConfig, TlsError> {
    let (cert, key) = ca.serving_certificate(dns_names, OffsetDateTime::now_utc(), ttl)?;
    let chain = vec![
        CertificateDer::from_pem_slice(cert.as_bytes())
            .map_err(|e| TlsError::Pem(e.to_string()))?,
    ];
    let key =
        PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| TlsError::Pem(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for pem in trust_roots {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots
                .add(cert.map_err(|e| TlsError::Pem(e.to_string()))?)
                .map_err(|e| TlsError::Pem(e.to_string()))?;
        }
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Pem(format!("the trust roots: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Accepts TLS connections forever, HTTP/1.1 and HTTP/2: certificate requests
/// for anyone, and config polls for waypoints ([`config_server::http`]).
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    server: Arc<CaServer>,
    configs: Arc<config_server::Store>,
) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "CA: accept failed");
                continue;
            }
        };
        let (acceptor, server, configs) =
            (acceptor.clone(), Arc::clone(&server), Arc::clone(&configs));
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "CA: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "CA: TLS handshake timed out");
                    return;
                }
            };
            let client = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(peer_identity)
                .map(Arc::new);
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (server, configs, client) =
                    (Arc::clone(&server), Arc::clone(&configs), client.clone());
                async move {
                    Ok::<_, Infallible>(if req.uri().path() == delivery::PATH {
                        config_server::http::handle(
                            &configs,
                            &server.metrics.leader,
                            server.ca.trust_domain(),
                            client.as_deref(),
                            &req,
                        )
                        .await
                    } else {
                        server.handle(req).await
                    })
                }
            });
            if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "CA: connection ended with an error");
            }
        });
    }
}
