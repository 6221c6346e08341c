//! The HBONE listener (waypoint-contract §5): mutual TLS 1.3 with ALPN h2, then one
//! HTTP/2 CONNECT stream per tunnel. Each accepted tunnel is served by the same
//! HTTP handler as a plain listener, routed by the CONNECT authority.

pub mod connect;
mod tcp;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use waypoint_config::RouteProtocol;

use crate::identity::MeshTls;
use crate::proxy::{Downstream, Shared, serve_connection};
use connect::Decision;

/// ztunnel's and the waypoint Envoy's limits: 100 streams per connection, 4 MiB
/// stream and 16 MiB connection windows, 1 MiB frames, pings every 10 s.
const MAX_STREAMS: u32 = 100;
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;
const MAX_FRAME: u32 = 1 << 20;
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one bound HBONE listener until the task is dropped.
pub async fn serve(shared: Arc<Shared>, tls: Arc<MeshTls>, socket: TcpListener, listener: String) {
    let listener: Arc<str> = listener.into();
    crate::proxy::accept_loop(socket, |stream, peer| {
        tokio::spawn(connection(
            Arc::clone(&shared),
            Arc::clone(&tls),
            Arc::clone(&listener),
            stream,
            peer,
        ));
    })
    .await;
}

async fn connection(
    shared: Arc<Shared>,
    tls: Arc<MeshTls>,
    listener: Arc<str>,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let local = tcp.local_addr().ok();
    // Small frames (a CONNECT's 200, a window update) must not wait for Nagle: with
    // it, a stream per request ran at 363 req/s (40 ms delayed-ACK stalls).
    let _ = tcp.set_nodelay(true);
    let acceptor = TlsAcceptor::from(tls.server_config());
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, %peer, "HBONE TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "HBONE TLS handshake timed out");
            return;
        }
    };
    let source = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(waypoint_identity::tls::peer_identity);
    let trust_domain: Arc<str> = tls.trust_domain().into();
    let context = Arc::new(Tunnel {
        shared,
        listener,
        peer,
        local,
        source,
        trust_domain,
    });
    let service = hyper::service::service_fn(move |req| {
        let context = Arc::clone(&context);
        async move { Ok::<_, Infallible>(context.open(req).await) }
    });
    let result = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, %peer, "HBONE connection ended with an error");
    }
}

/// What every CONNECT stream of one HBONE connection shares.
struct Tunnel {
    shared: Arc<Shared>,
    listener: Arc<str>,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    source: Option<waypoint_identity::Identity>,
    trust_domain: Arc<str>,
}

impl Tunnel {
    /// Answers a CONNECT: 200 and the tunnel served in its own task, or the refusal.
    async fn open(&self, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
        let runtime = self.shared.current();
        let authority = req.uri().authority().map(ToString::to_string);
        let decision = connect::decide_in(
            &runtime,
            &self.listener,
            req.method(),
            authority.as_deref(),
            self.source.as_ref(),
            &self.trust_domain,
        );
        let (destination, route) = match decision {
            Decision::Refuse { status, reason } => return self.refuse(status, reason),
            Decision::Tunnel { destination, route } => (destination, route),
        };
        let upgrade = hyper::upgrade::on(&mut req);
        let shared = Arc::clone(&self.shared);
        if route.protocol == RouteProtocol::Tcp {
            let Some(cluster) = runtime.cluster(&route.cluster).cloned() else {
                let reason = format!("cluster {} is not in the config in force", route.cluster);
                return self.refuse(StatusCode::SERVICE_UNAVAILABLE, reason);
            };
            let upstream = match tcp::connect(cluster).await {
                Ok(u) => u,
                Err(reason) => return self.refuse(StatusCode::SERVICE_UNAVAILABLE, reason),
            };
            let down = tcp::Downstream {
                authority: destination,
                peer: self.peer,
                local: self.local,
            };
            tokio::spawn(tcp::relay(shared, upgrade, upstream, down));
            return ok();
        }
        let downstream = Downstream {
            listener: Arc::clone(&self.listener),
            peer: self.peer,
            local: self.local,
            destination: Some(destination.into()),
            source_principal: self.source.as_ref().map(|s| s.to_string().into()),
            // What travels inside the tunnel is plain HTTP.
            scheme: "http",
            server_name: None,
            head_clock: None,
        };
        tokio::spawn(async move {
            match upgrade.await {
                Ok(stream) => serve_connection(shared, stream, downstream).await,
                Err(e) => {
                    tracing::debug!(error = %e, "HBONE stream closed before the tunnel opened");
                }
            }
        });
        ok()
    }

    fn refuse(&self, status: StatusCode, reason: String) -> Response<Full<Bytes>> {
        tracing::debug!(peer = %self.peer, %status, %reason, "HBONE CONNECT refused");
        let mut resp = Response::new(Full::new(Bytes::from(reason)));
        *resp.status_mut() = status;
        resp
    }
}

/// The tunnel's 200: no body (RFC 9113 §8.5).
fn ok() -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::new()))
}
