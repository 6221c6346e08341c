//! Opening a byte stream to an endpoint: plain TCP by default, or an HBONE tunnel
//! when the endpoint is mesh-enabled. The tunnel goes to the destination pod's node
//! tunnel on 15008 with `CONNECT podIP:targetPort`, presenting the waypoint's own
//! certificate, so the destination sees the waypoint as the source
//! (waypoint-contract §5, "Hop by hop through a waypoint", step 8).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::identity::MeshSlot;

/// Where node tunnels accept HBONE.
pub const HBONE_PORT: u16 = 15008;

/// An endpoint as the connector needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub address: SocketAddr,
    pub hbone: bool,
}

impl Target {
    /// The node tunnel's address and the CONNECT authority for an HBONE target:
    /// the pod IP on 15008, and the pod's own `IP:port` as the original destination.
    pub fn tunnel(&self) -> (SocketAddr, String) {
        (
            SocketAddr::new(self.address.ip(), HBONE_PORT),
            self.address.to_string(),
        )
    }
}

/// A connected endpoint: one I/O type for hyper whichever way it was reached, so
/// that each client (the HTTP/1 pool, HTTP/2, WebSocket upgrades) shakes hands once.
pub enum Stream {
    Tcp(TokioIo<TcpStream>),
    /// An HBONE CONNECT stream, already answered 200.
    Tunnel(Upgraded),
}

impl Read for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tunnel(t) => Pin::new(t).poll_read(cx, buf),
        }
    }
}

impl Write for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tunnel(t) => Pin::new(t).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_flush(cx),
            Self::Tunnel(t) => Pin::new(t).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tunnel(t) => Pin::new(t).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Tcp(s) => s.is_write_vectored(),
            Self::Tunnel(t) => t.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tunnel(t) => Pin::new(t).poll_write_vectored(cx, bufs),
        }
    }
}

/// Why no stream was opened. Every case is a connect failure to the caller: the
/// endpoint never got to see a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to upstream {address}: timed out after {timeout:?}")]
    Timeout {
        address: SocketAddr,
        timeout: Duration,
    },
    #[error("connecting to upstream {address}: {source}")]
    Tcp {
        address: SocketAddr,
        source: io::Error,
    },
    #[error(
        "upstream {address} is HBONE but this dataplane has no mesh credentials (pass --identity-dir or --ca-address)"
    )]
    NoCredentials { address: SocketAddr },
    #[error("HBONE to upstream {address}: {source}")]
    Hbone {
        address: SocketAddr,
        source: waypoint_hbone::Error,
    },
}

/// How a cluster connects to its endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// Bounds TCP, and for HBONE also TLS and the CONNECT exchange, as Envoy's
    /// `connect_timeout` bounds a tunnelled cluster's connect.
    pub timeout: Duration,
    /// `tcpKeepalive`, on plain TCP connections to the endpoints.
    pub keepalive: Option<waypoint_config::TcpKeepalive>,
}

/// Opens a stream to `target` as `options` say.
pub async fn open(target: Target, mesh: &MeshSlot, options: Options) -> Result<Stream, Error> {
    let address = target.address;
    let timeout = options.timeout;
    let connect = async {
        if !target.hbone {
            let stream = TcpStream::connect(address)
                .await
                .map_err(|source| Error::Tcp { address, source })?;
            let _ = stream.set_nodelay(true);
            if let Some(k) = options.keepalive
                && let Err(e) = keepalive(&stream, k)
            {
                tracing::warn!(error = %e, %address, "cannot set TCP keep-alive");
            }
            return Ok(Stream::Tcp(TokioIo::new(stream)));
        }
        let tls = mesh.get().ok_or(Error::NoCredentials { address })?;
        let (node, authority) = target.tunnel();
        tls.client()
            .connect(node, &authority)
            .await
            .map(Stream::Tunnel)
            .map_err(|source| Error::Hbone { address, source })
    };
    let result = tokio::time::timeout(timeout, connect)
        .await
        .unwrap_or(Err(Error::Timeout { address, timeout }));
    if let Err(e @ Error::NoCredentials { .. }) = &result {
        // A deployment mistake rather than a failing endpoint: say so loudly.
        tracing::warn!(error = %e, "cannot reach an HBONE endpoint");
    }
    result
}

/// Turns keep-alive on with the fields given; the others keep the kernel's values,
/// as Envoy sets only the socket options its `TcpKeepalive` carries.
fn keepalive(stream: &TcpStream, k: waypoint_config::TcpKeepalive) -> io::Result<()> {
    let mut params = socket2::TcpKeepalive::new();
    if let Some(time) = k.time {
        params = params.with_time(time);
    }
    if let Some(interval) = k.interval {
        params = params.with_interval(interval);
    }
    if let Some(probes) = k.probes {
        params = params.with_retries(probes);
    }
    socket2::SockRef::from(stream).set_tcp_keepalive(&params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keep_alive_is_set_on_plain_connections_as_configured() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = Target {
            address: listener.local_addr().unwrap(),
            hbone: false,
        };
        let open_with = |keepalive| async move {
            let options = Options {
                timeout: Duration::from_secs(5),
                keepalive,
            };
            match open(target, &MeshSlot::default(), options).await.unwrap() {
                Stream::Tcp(io) => io.into_inner(),
                Stream::Tunnel(_) => unreachable!(),
            }
        };
        let plain = open_with(None).await;
        assert!(!socket2::SockRef::from(&plain).keepalive().unwrap());
        let kernel_interval = socket2::SockRef::from(&plain)
            .tcp_keepalive_interval()
            .unwrap();
        let kept = open_with(Some(waypoint_config::TcpKeepalive {
            probes: Some(3),
            time: Some(Duration::from_secs(30)),
            interval: None,
        }))
        .await;
        let sock = socket2::SockRef::from(&kept);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(30));
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 3);
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            kernel_interval,
            "a field left out keeps the kernel's value"
        );
    }

    #[test]
    fn a_tunnel_goes_to_the_pods_15008_and_names_the_pod_port() {
        let target = Target {
            address: "10.10.0.15:8080".parse().unwrap(),
            hbone: true,
        };
        let (node, authority) = target.tunnel();
        assert_eq!(node.to_string(), "10.10.0.15:15008");
        assert_eq!(authority, "10.10.0.15:8080");
        let v6 = Target {
            address: "[fd00::7]:9080".parse().unwrap(),
            hbone: true,
        };
        assert_eq!(
            v6.tunnel(),
            (
                "[fd00::7]:15008".parse().unwrap(),
                "[fd00::7]:9080".to_owned()
            )
        );
    }
}
