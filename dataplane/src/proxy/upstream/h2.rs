//! A cluster's HTTP/2 endpoints: one multiplexed connection per endpoint, opened on
//! first use and again once it has closed, as Envoy's HTTP/2 pool behaves with
//! Istio's settings (no per-connection stream limit). Requests waiting for the
//! connection queue behind whoever is opening it; each failed connect fails the
//! requests that waited for it, and each is reported as a connect failure.
//!
//! Circuit breaking, as Envoy's HTTP/2 pool does it: a stream counts against
//! `max_requests` (Istio's `http2MaxRequests`); a stream waiting for its endpoint's
//! connection to open counts against `max_pending_requests`; and a connection is
//! opened for an endpoint without one even past `max_connections`, which counts
//! `upstream_cx_overflow` (see `super::Upstream::send_http2`).

use http::{HeaderValue, Request, Uri, header};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::time::Instant;

use tokio::sync::Mutex;

use super::super::connect::{self, Target};
use super::super::replay::Reader;
use super::{ConnectFailure, NoResponse};
use crate::identity::MeshSlot;

pub(super) type Sender = SendRequest<Reader>;

/// Each endpoint's connection, if one is open, and when it is to be retired
/// (`maxConnectionDuration`): from then on new streams go to a new connection,
/// and the old one closes once its streams are done and its senders dropped.
pub(super) struct Connections {
    slots: Vec<Mutex<Option<Open>>>,
    /// `tcp.maxConnectionDuration`.
    max_duration: Option<std::time::Duration>,
    /// `http.http2KeepAlive`.
    keep_alive: Option<waypoint_config::Http2KeepAlive>,
}

struct Open {
    sender: Sender,
    retire_at: Option<Instant>,
}

impl Open {
    fn usable(&self) -> Option<&Sender> {
        let young = self.retire_at.is_none_or(|at| Instant::now() < at);
        (young && !self.sender.is_closed()).then_some(&self.sender)
    }
}

impl Connections {
    pub(super) fn new(hosts: usize, pool: &waypoint_config::ConnectionPool) -> Self {
        Self {
            slots: (0..hosts).map(|_| Mutex::new(None)).collect(),
            max_duration: pool.max_connection_duration,
            keep_alive: pool.http2_keep_alive,
        }
    }

    /// A sender on `host`'s connection if it is open, without waiting.
    pub(super) fn ready(&self, host: usize) -> Option<Sender> {
        let slot = self.slots[host].try_lock().ok()?;
        slot.as_ref()?.usable().cloned()
    }

    /// A sender on `target`'s connection, opening one if there is none. `opening`
    /// is called before a connection is opened; `closed` once it has failed to open
    /// or, later, has closed.
    pub(super) async fn sender(
        &self,
        host: usize,
        (target, mesh, options): (Target, &MeshSlot, connect::Options),
        opening: impl FnOnce(),
        closed: impl FnOnce() + Send + 'static,
    ) -> Result<Sender, ConnectFailure> {
        let mut slot = self.slots[host].lock().await;
        if let Some(sender) = slot.as_ref().and_then(Open::usable) {
            return Ok(sender.clone());
        }
        *slot = None;
        opening();
        let on_close = OnClose(Some(Box::new(closed)));
        let stream = connect::open(target, mesh, options).await.map_err(|e| {
            tracing::debug!(error = %e, "upstream connect failed");
            ConnectFailure::of(&e)
        })?;
        let mut builder = http2::Builder::new(TokioExecutor::new());
        if let Some(k) = self.keep_alive {
            // Envoy PINGs at every interval, streams or not.
            builder
                .timer(TokioTimer::new())
                .keep_alive_interval(k.interval)
                .keep_alive_timeout(k.timeout)
                .keep_alive_while_idle(true);
        }
        let (sender, conn) = builder.handshake(stream).await.map_err(|e| {
            tracing::debug!(error = %e, "upstream HTTP/2 handshake failed");
            ConnectFailure::Other
        })?;
        tokio::spawn(async move {
            let _on_close = on_close;
            let _ = conn.await;
        });
        *slot = Some(Open {
            sender: sender.clone(),
            retire_at: self
                .max_duration
                .and_then(|d| Instant::now().checked_add(d)),
        });
        Ok(sender)
    }
}

/// Calls its function when dropped: when a connection failed to open, or when its
/// driver ended.
struct OnClose(Option<Box<dyn FnOnce() + Send>>);

impl Drop for OnClose {
    fn drop(&mut self) {
        if let Some(closed) = self.0.take() {
            closed();
        }
    }
}

/// The HTTP/1-shaped request in HTTP/2 form: the target in absolute form, its
/// authority from `host` (which HTTP/2 carries as `:authority`).
pub(super) fn http2_form<B>(mut req: Request<B>) -> Result<Request<B>, NoResponse> {
    let authority = req
        .headers_mut()
        .remove(header::HOST)
        .and_then(|h| h.to_str().ok().map(str::to_owned))
        .ok_or(NoResponse::Reset)?;
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let uri: Uri = format!("http://{authority}{path}")
        .parse()
        .map_err(|_| NoResponse::Reset)?;
    *req.uri_mut() = uri;
    *req.version_mut() = http::Version::HTTP_2;
    // HTTP/2 allows `te` only as `trailers`; nothing else hop-by-hop is left here.
    if req.headers().get(header::TE) != Some(&HeaderValue::from_static("trailers")) {
        req.headers_mut().remove(header::TE);
    }
    Ok(req)
}
