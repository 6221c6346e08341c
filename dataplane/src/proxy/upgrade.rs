//! WebSocket upgrades, which Istio enables on every HTTP route (`upgrade_configs:
//! websocket`): the upgrade request goes to one endpoint on a connection of its own,
//! outside the pool, with the route's retry policy for connect failures; once the
//! upstream answers 101 the two connections are spliced until either side closes.
//! The access-log line is written when the tunnel ends.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Request, Response, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

use super::body;
use super::cluster::Cluster;
use super::upstream::{ConnectFailure, NoResponse};
use crate::access_log::Entry;
use crate::outlier::Outcome;
use crate::retry::RetryPolicy;

/// How a tunnel ended: the bytes it carried each way, and which side closed first.
/// Envoy logs `DC downstream_remote_disconnect` when the downstream did, and `UC
/// upstream_reset_after_response_started{connection_termination}` when the upstream
/// did (`tests/envoy_differential.rs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Closed {
    pub from_downstream: u64,
    pub from_upstream: u64,
    pub downstream_first: bool,
}

/// A response extension, which must be `Clone`; the handler takes the receiver out
/// once.
#[derive(Clone, Debug)]
pub struct TunnelEnd(Arc<Mutex<Option<oneshot::Receiver<Closed>>>>);

impl TunnelEnd {
    /// How the tunnel ended, once it has; all zeros if it never opened.
    pub async fn closed(self) -> Closed {
        let rx = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        match rx {
            Some(rx) => rx.await.unwrap_or_default(),
            None => Closed::default(),
        }
    }
}

/// Whether the request asks to become a WebSocket (HTTP/1.1 `Upgrade: websocket`).
pub fn is_websocket(headers: &HeaderMap) -> bool {
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    let connection = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    upgrade && connection
}

/// How the upgrade attempt went, for the handler to answer from.
pub enum Upgraded {
    /// The upstream's answer: a 101 whose tunnel is already spliced (its end comes
    /// in the response's [`TunnelEnd`] extension), or any other status, relayed.
    Response(Response<body::Body>),
    /// No endpoint answered, as for any request: the handler's Envoy replies.
    Failed {
        failure: NoResponse,
        retries: u32,
    },
    NoHealthyUpstream,
}

/// Sends the upgrade request (`parts`, hop-by-hop headers already stripped) to an
/// endpoint of `cluster` and splices the tunnel on a 101.
pub async fn websocket(
    cluster: &Arc<Cluster>,
    policy: &RetryPolicy,
    mut parts: http::request::Parts,
    hash: Option<u64>,
    entry: &mut Entry,
) -> Upgraded {
    let downstream = parts.extensions.remove::<OnUpgrade>();
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    parts
        .headers
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri: Uri = path.parse().unwrap_or_else(|_| Uri::from_static("/"));
    let (mut tried, mut retries) = (Vec::new(), 0);
    loop {
        let Some(i) = cluster.pick(&tried, policy.avoid_previous_hosts, hash) else {
            return Upgraded::NoHealthyUpstream;
        };
        tried.push(i);
        entry.upstream_host = Some(cluster.endpoints[i].address.to_string());
        let mut req = Request::new(Empty::<Bytes>::new());
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = uri.clone();
        *req.headers_mut() = parts.headers.clone();
        match attempt(cluster, i, req).await {
            Ok(resp) => {
                cluster.report(i, Outcome::Status(resp.status().as_u16()));
                return Upgraded::Response(splice(resp, downstream).await);
            }
            Err(failure) => {
                let (outcome, kind) = failure.judged();
                cluster.report(i, outcome);
                if !policy.should_retry(kind, retries) {
                    return Upgraded::Failed { failure, retries };
                }
                retries += 1;
            }
        }
    }
}

/// One upgrade attempt on a fresh connection to endpoint `i`.
async fn attempt(
    cluster: &Cluster,
    i: usize,
    req: Request<Empty<Bytes>>,
) -> Result<Response<hyper::body::Incoming>, NoResponse> {
    let stream = cluster
        .upstream
        .open(i)
        .await
        .map_err(|e| NoResponse::ConnectFailure(ConnectFailure::of(&e)))?;
    cluster.connected(i);
    let (mut sender, conn) = http1::handshake(stream)
        .await
        .map_err(|_| NoResponse::ConnectFailure(ConnectFailure::Other))?;
    tokio::spawn(conn.with_upgrades());
    sender.send_request(req).await.map_err(|e| {
        tracing::debug!(error = %e, "WebSocket upgrade request failed");
        NoResponse::Reset
    })
}

/// A 101 becomes a tunnel between the two upgraded connections; any other answer
/// is passed on as it is.
async fn splice(
    mut resp: Response<hyper::body::Incoming>,
    downstream: Option<OnUpgrade>,
) -> Response<body::Body> {
    if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        let (head, incoming) = resp.into_parts();
        let bytes = incoming
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .unwrap_or_default();
        return Response::from_parts(head, body::full(bytes));
    }
    let upstream = hyper::upgrade::on(&mut resp);
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let closed = match (downstream, upstream.await) {
            (Some(down), Ok(up)) => match down.await {
                Ok(down) => pump(TokioIo::new(down), TokioIo::new(up)).await,
                Err(e) => {
                    tracing::debug!(error = %e, "downstream WebSocket upgrade failed");
                    Closed::default()
                }
            },
            (_, Err(e)) => {
                tracing::debug!(error = %e, "upstream WebSocket upgrade failed");
                Closed::default()
            }
            (None, Ok(_)) => Closed::default(),
        };
        let _ = tx.send(closed);
    });
    let (head, _) = resp.into_parts();
    let mut out = Response::from_parts(head, body::full(Bytes::new()));
    out.extensions_mut()
        .insert(TunnelEnd(Arc::new(Mutex::new(Some(rx)))));
    out
}

/// Copies both ways, passing each side's close on, until both are closed.
async fn pump<D, U>(down: D, up: U) -> Closed
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut down_r, mut down_w) = tokio::io::split(down);
    let (mut up_r, mut up_w) = tokio::io::split(up);
    let ((from_downstream, down_closed), (from_upstream, up_closed)) = tokio::join!(
        one_way(&mut down_r, &mut up_w),
        one_way(&mut up_r, &mut down_w)
    );
    Closed {
        from_downstream,
        from_upstream,
        downstream_first: match (down_closed, up_closed) {
            (Some(down), Some(up)) => down <= up,
            (down, _) => down.is_some(),
        },
    }
}

/// One direction: copies to the end, passes the close on, and says when the reading
/// side closed (`None`: the copy failed on the writing side).
async fn one_way<R, W>(r: &mut R, w: &mut W) -> (u64, Option<Instant>)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    let mut n = 0;
    let closed = loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break Some(Instant::now()),
            Ok(k) => {
                if w.write_all(&buf[..k]).await.is_err() {
                    break None;
                }
                n += k as u64;
            }
        }
    };
    let _ = w.shutdown().await;
    (n, closed)
}
