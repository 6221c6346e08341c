//! The admin ports: 15021 `/healthz/ready` answers 200 once the first config is
//! serving, 503 before (kubelet probes use it); 15020 `/stats/prometheus`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Draining: report not ready so the endpoint leaves the Service first.
    pub fn set_not_ready(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

pub async fn serve(socket: TcpListener, readiness: Readiness) {
    loop {
        let Ok((stream, _)) = socket.accept().await else {
            continue;
        };
        let readiness = readiness.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let ready = readiness.is_ready();
                    async move {
                        let (status, body) = match (req.uri().path(), ready) {
                            ("/healthz/ready", true) => (StatusCode::OK, "ready\n"),
                            ("/healthz/ready", false) => {
                                (StatusCode::SERVICE_UNAVAILABLE, "config not loaded\n")
                            }
                            _ => (StatusCode::NOT_FOUND, "not found\n"),
                        };
                        let mut resp =
                            Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                        *resp.status_mut() = status;
                        Ok::<_, Infallible>(resp)
                    }
                });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Serves `/stats/prometheus` (15020), from whichever runtime is in force.
pub async fn serve_metrics(socket: TcpListener, shared: Arc<crate::proxy::Shared>) {
    loop {
        let Ok((stream, _)) = socket.accept().await else {
            continue;
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let body = (req.uri().path() == "/stats/prometheus")
                        .then(|| shared.current().metrics.render());
                    async move {
                        let (status, text) = body
                            .map_or((StatusCode::NOT_FOUND, "not found\n".to_owned()), |t| {
                                (StatusCode::OK, t)
                            });
                        let mut resp = Response::new(Full::new(Bytes::from(text)));
                        *resp.status_mut() = status;
                        resp.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("text/plain; version=0.0.4"),
                        );
                        Ok::<_, Infallible>(resp)
                    }
                });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
