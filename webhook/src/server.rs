//! The HTTPS server: `/mutate` and `/validate` for the API server, `/healthz`,
//! `/readyz` and `/metrics` for the kubelet and Prometheus.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::Settings;
use crate::admission::{self, Endpoint};
use crate::metrics::Metrics;
use crate::rules::Context;
use crate::view::ClusterView;

/// The API server never sends more than 3 MiB (its own request limit); anything
/// bigger is not an AdmissionReview.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

pub struct AppState {
    pub settings: Settings,
    pub view: Arc<dyn ClusterView + Send + Sync>,
    pub metrics: Metrics,
    /// Caches synced and not shutting down.
    pub ready: AtomicBool,
}

impl AppState {
    pub fn new(settings: Settings, view: Arc<dyn ClusterView + Send + Sync>) -> Arc<Self> {
        Arc::new(Self {
            settings,
            view,
            metrics: Metrics::default(),
            ready: AtomicBool::new(false),
        })
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/validate", post(validate))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn mutate(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(&state, Endpoint::Mutate, body)
}

async fn validate(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    handle(&state, Endpoint::Validate, body)
}

/// Decodes, reviews and answers one request. Synchronous: the rules only read
/// in-memory caches.
pub fn handle(
    state: &AppState,
    endpoint: Endpoint,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            let status = rejection.status();
            state.metrics.rejected(status.as_u16());
            return (status, format!("{}\n", rejection.body_text())).into_response();
        }
    };
    // At trace level the raw review is logged: that is how tests/fixtures/recorded
    // was captured from the real API server.
    tracing::trace!(endpoint = endpoint.as_str(), body = %String::from_utf8_lossy(&body), "review");
    let req = match admission::decode(&body) {
        Ok(req) => req,
        Err(e) => {
            state.metrics.rejected(400);
            tracing::warn!(endpoint = endpoint.as_str(), error = %e, "bad request");
            return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response();
        }
    };
    let cx = Context {
        settings: &state.settings,
        view: state.view.as_ref(),
    };
    let (review, outcome) = admission::review(endpoint, &req, &cx);
    let result = match (outcome.allowed, outcome.mutated) {
        (false, _) => "denied",
        (true, true) => "mutated",
        (true, false) => "allowed",
    };
    if outcome.family.is_none() {
        tracing::info!(kind = %req.kind.kind, group = %req.kind.group, "not a kind we review; allowed");
    }
    tracing::debug!(endpoint = endpoint.as_str(), kind = %req.kind.kind, name = %req.name, result, "reviewed");
    state
        .metrics
        .review(endpoint.as_str(), &req.kind.kind, result, started.elapsed());
    match serde_json::to_vec(&review) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the response: {e}\n"),
        )
            .into_response(),
    }
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        "ok\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// Accepts TLS connections until `shutdown` resolves, serving HTTP/1.1 and HTTP/2
/// with keep-alive. Then every open connection is closed gracefully (HTTP/2 GOAWAY,
/// HTTP/1 close after the current response), waiting at most `drain`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        tokio::spawn(connection(
            acceptor.clone(),
            tcp,
            peer,
            app.clone(),
            graceful.watcher(),
        ));
    }
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?drain,
            "connections still open after the drain period; closing them"
        );
    }
}

async fn connection(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    watcher: Watcher,
) {
    let _ = tcp.set_nodelay(true);
    let tls = match acceptor.accept(tcp).await {
        Ok(tls) => tls,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
    };
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        app.clone().oneshot(req.map(axum::body::Body::new))
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder
        .serve_connection(TokioIo::new(tls), service)
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
