//! An HBONE tunnel to an opaque TCP port: one endpoint is picked and connected before
//! the 200 goes back (so a dead upstream is a 503, as in ztunnel), then bytes are
//! relayed both ways, and one Envoy TCP access-log line is written at the end. A
//! mesh-enabled endpoint is connected through its own HBONE tunnel, as the pool does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::access_log::{Entry, Flags};
use crate::outlier::Outcome;
use crate::proxy::connect::Stream;
use crate::proxy::{Cluster, Shared};

/// A connected upstream for a tunnel.
pub struct Upstream {
    stream: Stream,
    cluster: Arc<Cluster>,
    endpoint: usize,
}

/// Picks an endpoint and connects within the cluster's connect timeout; the outcome
/// is reported to outlier detection like any connect.
pub async fn connect(cluster: Arc<Cluster>) -> Result<Upstream, String> {
    let Some(endpoint) = cluster.pick(&[], false, None) else {
        return Err(format!("no healthy upstream in cluster {}", cluster.name));
    };
    match cluster.open(endpoint).await {
        Ok(stream) => {
            cluster.report(endpoint, Outcome::ConnectSuccess);
            Ok(Upstream {
                stream,
                cluster,
                endpoint,
            })
        }
        Err(e) => {
            cluster.report(endpoint, Outcome::ConnectFailure);
            Err(e.to_string())
        }
    }
}

/// What the access-log line says about the downstream side.
pub struct Downstream {
    pub authority: String,
    pub peer: SocketAddr,
    pub local: Option<SocketAddr>,
}

/// Relays until both directions are closed.
pub async fn relay(shared: Arc<Shared>, upgrade: OnUpgrade, upstream: Upstream, down: Downstream) {
    let start_time = SystemTime::now();
    let started = Instant::now();
    let Upstream {
        stream,
        cluster,
        endpoint,
    } = upstream;
    let ep = &cluster.endpoints[endpoint];
    ep.begin();
    let upstream_local = match &stream {
        Stream::Tcp(s) => s.inner().local_addr().ok(),
        Stream::Tunnel(_) => None,
    };
    let (received, sent, flags) = match upgrade.await {
        Ok(tunnel) => match stream {
            Stream::Tcp(s) => pump_both(TokioIo::new(tunnel), s.into_inner()).await,
            Stream::Tunnel(t) => pump_both(TokioIo::new(tunnel), TokioIo::new(t)).await,
        },
        Err(e) => {
            tracing::debug!(error = %e, "HBONE stream closed before the tunnel opened");
            (0, 0, Flags::DC)
        }
    };
    ep.end();
    let entry = Entry {
        start_time: Some(start_time),
        method: "-".to_owned(),
        path: "-".to_owned(),
        protocol: "-",
        response_code: 0,
        response_flags: flags,
        bytes_received: received,
        bytes_sent: sent,
        duration_ms: started.elapsed().as_millis(),
        authority: Some(down.authority),
        upstream_host: Some(ep.address.to_string()),
        upstream_cluster: Some(cluster.name.clone()),
        upstream_local_address: upstream_local.map(|a| a.to_string()),
        downstream_local_address: down.local.map(|a| a.to_string()),
        downstream_remote_address: Some(down.peer.to_string()),
        ..Entry::default()
    };
    (shared.access_log)(&entry.render(shared.log_format));
}

/// Copies both ways, passing each half-close on, and counts bytes even when a side
/// fails: `(from downstream, from upstream, flag)`, the flag naming the side that
/// failed (Envoy's DC or UC).
async fn pump_both<D, U>(downstream: D, upstream: U) -> (u64, u64, Flags)
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut down_r, mut down_w) = tokio::io::split(downstream);
    let (mut up_r, mut up_w) = tokio::io::split(upstream);
    let (mut received, mut sent) = (0, 0);
    let (to_upstream, to_downstream) = tokio::join!(
        pump(&mut down_r, &mut up_w, &mut received),
        pump(&mut up_r, &mut down_w, &mut sent),
    );
    let flag = match (to_upstream, to_downstream) {
        (Ok(()), Ok(())) => Flags::NONE,
        (Err(e), _) => {
            tracing::debug!(error = %e, "TCP relay: downstream side failed");
            Flags::DC
        }
        (_, Err(e)) => {
            tracing::debug!(error = %e, "TCP relay: upstream side failed");
            Flags::UC
        }
    };
    (received, sent, flag)
}

async fn pump<R, W>(r: &mut R, w: &mut W, count: &mut u64) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return w.shutdown().await;
        }
        w.write_all(&buf[..n]).await?;
        *count += n as u64;
    }
}
