//! The client side of HBONE (waypoint-contract §5), as a node tunnel speaks it: a
//! mutual TLS 1.3 connection with ALPN h2 to a waypoint's 15008, and one HTTP/2
//! CONNECT stream per tunnel whose authority is the original destination. Streams
//! share the connection (up to the server's 100), as ztunnel pools them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper::upgrade::Upgraded;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;
use waypoint_identity::tls::{self, PeerCheck};
use waypoint_identity::workload::Credentials;

/// ztunnel's windows (waypoint-contract §5).
const STREAM_WINDOW: u32 = 4 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;
const MAX_FRAME: u32 = 1 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Tls(#[from] tls::Error),
    #[error("connecting to {waypoint}: {source}")]
    Connect {
        waypoint: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS handshake with {waypoint}: {source}")]
    Handshake {
        waypoint: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP/2 with {waypoint}: {source}")]
    Http2 {
        waypoint: SocketAddr,
        source: hyper::Error,
    },
    #[error("the waypoint refused CONNECT {authority}: {status}: {reason}")]
    Refused {
        authority: String,
        status: StatusCode,
        reason: String,
    },
    #[error("{0:?} is not a CONNECT authority (host:port)")]
    Authority(String),
    #[error("the request through the tunnel failed: {0}")]
    Request(hyper::Error),
}

type Slot = Arc<Mutex<Option<SendRequest<Empty<Bytes>>>>>;

/// Opens tunnels to waypoints, one pooled HTTP/2 connection per waypoint address.
pub struct Client {
    config: Arc<ClientConfig>,
    /// One slot per address, each with its own lock: a slow handshake to one pod
    /// does not hold up tunnels to the others.
    connections: std::sync::Mutex<HashMap<SocketAddr, Slot>>,
}

impl Client {
    /// A client presenting `credentials` that accepts waypoints `peer` admits.
    pub fn new(credentials: &Credentials, peer: PeerCheck) -> Result<Self, Error> {
        Ok(Self {
            config: Arc::new(tls::client_config(credentials, peer)?),
            connections: std::sync::Mutex::default(),
        })
    }

    /// A tunnel to `authority` (the original destination, `VIP:port`) through the
    /// waypoint at `waypoint`. Refusals carry the waypoint's status and reason.
    pub async fn connect(&self, waypoint: SocketAddr, authority: &str) -> Result<Upgraded, Error> {
        let uri = http::Uri::builder()
            .authority(authority)
            .build()
            .map_err(|_| Error::Authority(authority.to_owned()))?;
        let mut sender = self.sender(waypoint).await?;
        let mut req = Request::new(Empty::new());
        *req.method_mut() = Method::CONNECT;
        *req.uri_mut() = uri;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|source| Error::Http2 { waypoint, source })?;
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            let reason = resp
                .into_body()
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_default();
            return Err(Error::Refused {
                authority: authority.to_owned(),
                status,
                reason,
            });
        }
        hyper::upgrade::on(resp)
            .await
            .map_err(|source| Error::Http2 { waypoint, source })
    }

    /// One HTTP/1.1 request through a new tunnel.
    pub async fn request(
        &self,
        waypoint: SocketAddr,
        authority: &str,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, Error> {
        let tunnel = self.connect(waypoint, authority).await?;
        let mut sender = http1(tunnel).await?;
        sender.send_request(req).await.map_err(Error::Request)
    }

    /// The pooled connection to `waypoint`, or a new one when there is none or it
    /// closed.
    async fn sender(&self, waypoint: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, Error> {
        let slot = Arc::clone(
            self.connections
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(waypoint)
                .or_default(),
        );
        let mut connection = slot.lock().await;
        if let Some(s) = connection.as_ref()
            && !s.is_closed()
        {
            return Ok(s.clone());
        }
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(waypoint))
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
            .map_err(|source| Error::Connect { waypoint, source })?;
        let _ = tcp.set_nodelay(true);
        // The name is not checked (SPIFFE identities are); rustls needs one for SNI.
        let name = ServerName::IpAddress(waypoint.ip().into());
        let tls = TlsConnector::from(Arc::clone(&self.config))
            .connect(name, tcp)
            .await
            .map_err(|source| Error::Handshake { waypoint, source })?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20))
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|source| Error::Http2 { waypoint, source })?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HBONE connection ended with an error");
            }
        });
        *connection = Some(sender.clone());
        Ok(sender)
    }
}

/// An HTTP/1.1 client connection over a tunnel. When the sender is dropped and the
/// last response read, the tunnel is closed the clean way: our END_STREAM, then the
/// waypoint's. Dropping an open stream instead resets it, and h2 ends a connection
/// with ENHANCE_YOUR_CALM after 1024 such resets (the bench found this).
pub async fn http1<B>(tunnel: Upgraded) -> Result<hyper::client::conn::http1::SendRequest<B>, Error>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(tunnel)
        .await
        .map_err(Error::Request)?;
    tokio::spawn(async move {
        match conn.without_shutdown().await {
            Ok(parts) => {
                close(parts.io).await;
            }
            Err(e) => {
                tracing::debug!(error = %e, "tunnelled HTTP/1.1 connection ended with an error");
            }
        }
    });
    Ok(sender)
}

/// Half-closes a tunnel and waits (at most 5 s) for the other side's close; whether
/// it came.
pub async fn close(tunnel: Upgraded) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut io = TokioIo::new(tunnel);
    if io.shutdown().await.is_err() {
        return false;
    }
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), io.read(&mut buf)).await {
            Ok(Ok(0)) => return true,
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return false,
        }
    }
}
