//! A cluster's upstream HTTP/1 connections, opened, reused, queued for and closed as
//! the pure [`crate::pool::Pool`] decides: this module only owns the sockets, the
//! waiting requests and the timers.
//!
//! - `connectTimeout` bounds the TCP connect only, as Envoy's `connect_timeout`; for
//!   an HBONE endpoint it bounds TCP, TLS and CONNECT (`super::connect`), and a
//!   refused CONNECT is a connect failure like a refused TCP connect.
//! - An HBONE endpoint's connection is one tunnel: one HTTP/1.1 keep-alive
//!   connection per CONNECT stream, so the pool counts and limits them the same way.
//! - A request whose pooled keep-alive connection turns out to be closed before the
//!   request was written is sent again on another connection (the race between our
//!   reuse and the server's idle close); it is not an attempt and not an error.
//! - Connection tasks and timers hold the upstream weakly: when a reload drops the
//!   cluster, its idle connections close at once and busy ones after their request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use tokio::sync::oneshot;

mod h2;

use super::connect::{self, Stream, Target};
use super::replay::Reader;
use crate::identity::MeshSlot;
use crate::metrics::Metrics;
use crate::outlier::Outcome;
use crate::pool::{Acquire, ConnId, Counts, Handoff, Limits, Pool, Release, WaiterId};
use crate::retry::Attempt;

type Sender = SendRequest<Reader>;

/// How many stale keep-alive connections one request may run into before giving up.
const STALE_CONNECTIONS: usize = 4;

/// Why an attempt got no response headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoResponse {
    /// TCP connect refused, unreachable or timed out.
    ConnectFailure(ConnectFailure),
    /// The connection failed or closed after connecting, before response headers.
    Reset,
    /// A circuit breaker refused the request (503 `UO`, not an outlier event).
    Overflow,
}

/// Why a connect failed, in the terms Envoy reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectFailure {
    /// The OS failed the connect with this errno (refused, unreachable).
    Os(i32),
    /// `connect_timeout` ran out.
    Timeout,
    /// Anything else: no mesh credentials, a failed HBONE or HTTP handshake.
    Other,
}

impl ConnectFailure {
    pub(crate) fn of(e: &connect::Error) -> Self {
        match e {
            connect::Error::Timeout { .. } => Self::Timeout,
            connect::Error::Tcp { source, .. } => {
                source.raw_os_error().map_or(Self::Other, Self::Os)
            }
            connect::Error::NoCredentials { .. } | connect::Error::Hbone { .. } => Self::Other,
        }
    }
}

impl NoResponse {
    /// What outlier detection and the retry policy hear of it. An overflow is
    /// neither reported nor retried; it is not asked.
    pub(crate) fn judged(self) -> (Outcome, Attempt) {
        match self {
            Self::ConnectFailure(_) => (Outcome::ConnectFailure, Attempt::ConnectFailure),
            Self::Reset | Self::Overflow => (Outcome::Reset, Attempt::Reset),
        }
    }
}

pub struct Upstream {
    me: Weak<Self>,
    cluster: String,
    targets: Vec<Target>,
    /// The mesh credentials for HBONE endpoints, when the process has them.
    mesh: Arc<MeshSlot>,
    /// The connect timeout and TCP keep-alive.
    connect: connect::Options,
    /// `None`: idle connections stay open until the upstream closes them.
    idle_timeout: Option<Duration>,
    /// `tcp.maxConnectionDuration`: a connection this old is retired.
    max_connection_duration: Option<Duration>,
    inner: Mutex<Inner>,
    metrics: Arc<Metrics>,
    /// `Some` for a cluster spoken to in HTTP/2 (always, or to HTTP/2 clients): its
    /// connections, outside the pool.
    http2: Option<h2::Connections>,
    protocol: waypoint_config::UpstreamProtocol,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("cluster", &self.cluster)
            .field("counts", &self.counts())
            .finish_non_exhaustive()
    }
}

struct Inner {
    pool: Pool,
    idle: HashMap<ConnId, Idle>,
    waiters: HashMap<WaiterId, oneshot::Sender<Grant>>,
}

/// An idle connection's sender, and since when it has been idle, for its
/// connection's idle timer ([`Upstream::idle_timer`]).
struct Idle {
    sender: Sender,
    /// The pool's name for this idle period (`Pool::expire`).
    epoch: u64,
    since: tokio::time::Instant,
}

/// Aborts its task when dropped.
struct Timer(tokio::task::AbortHandle);

impl Drop for Timer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum Grant {
    Lease(Lease),
    Overflow,
    ConnectFailed(ConnectFailure),
}

/// Work decided under the lock and done after it: replies to waiters (a refused
/// lease is dropped, and its drop takes the lock) and senders to close.
#[derive(Default)]
struct After {
    grants: Vec<(oneshot::Sender<Grant>, Grant)>,
    /// Leases whose waiter went away: dropping them closes their connection.
    orphans: Vec<Lease>,
    close: Vec<Sender>,
    connect: Option<(usize, ConnId)>,
    /// Why the connect failed, told to the waiters it fails.
    connect_failure: Option<ConnectFailure>,
}

/// One connection, held by one request until [`Lease::finish`]. Dropped unfinished
/// (the request was abandoned mid-exchange), the connection is closed.
pub struct Lease {
    upstream: Arc<Upstream>,
    host: usize,
    conn: ConnId,
    sender: Option<Sender>,
    reused: bool,
    done: bool,
    /// An HTTP/2 stream rather than a pooled connection: releasing it only ends the
    /// stream's count.
    stream: bool,
}

impl Lease {
    /// The exchange is over; `reusable` if the response was read to its end.
    pub fn finish(mut self, reusable: bool) {
        self.release(reusable);
    }

    fn release(&mut self, reusable: bool) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        if self.stream {
            self.upstream.lock().pool.end_stream();
            return;
        }
        let sender = self.sender.take();
        self.upstream
            .release(self.host, self.conn, reusable && sender.is_some(), sender);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.release(false);
    }
}

/// A retry slot of `max_retries`, held until the retried attempt's outcome is known.
pub struct RetryPermit(Arc<Upstream>);

impl Drop for RetryPermit {
    fn drop(&mut self) {
        self.0.lock().pool.end_retry();
    }
}

/// An HTTP/2 stream waiting for its connection, counted until it has one or gives up.
struct PendingStream<'a>(&'a Upstream);

impl Drop for PendingStream<'_> {
    fn drop(&mut self) {
        self.0.lock().pool.end_pending_stream();
    }
}

/// Takes a waiter out of the pool if its request goes away while waiting.
struct WaitGuard<'a> {
    upstream: &'a Upstream,
    host: usize,
    waiter: WaiterId,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        let mut inner = self.upstream.lock();
        inner.pool.cancel(self.host, self.waiter);
        inner.waiters.remove(&self.waiter);
    }
}

impl Upstream {
    pub fn new(
        cluster: &str,
        targets: Vec<Target>,
        mesh: Arc<MeshSlot>,
        connect_timeout: Duration,
        pool: &waypoint_config::ConnectionPool,
        protocol: waypoint_config::UpstreamProtocol,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            cluster: cluster.to_owned(),
            connect: connect::Options {
                timeout: connect_timeout,
                keepalive: pool.tcp_keepalive,
            },
            idle_timeout: Some(pool.idle_timeout).filter(|t| !t.is_zero()),
            max_connection_duration: pool.max_connection_duration,
            inner: Mutex::new(Inner {
                pool: Pool::new(Limits::from(pool), targets.len()),
                idle: HashMap::new(),
                waiters: HashMap::new(),
            }),
            http2: (protocol != waypoint_config::UpstreamProtocol::Http1)
                .then(|| h2::Connections::new(targets.len(), pool)),
            protocol,
            targets,
            mesh,
            metrics,
        })
    }

    fn speaks_http2(&self, downstream: http::Version) -> bool {
        match self.protocol {
            waypoint_config::UpstreamProtocol::Http1 => false,
            waypoint_config::UpstreamProtocol::Http2 => true,
            waypoint_config::UpstreamProtocol::Downstream => downstream == http::Version::HTTP_2,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Connections, pending and active requests and retries right now.
    pub fn counts(&self) -> Counts {
        self.lock().pool.counts()
    }

    /// A retry slot, or `None` when `max_retries` retries are already in flight.
    pub fn try_retry(self: &Arc<Self>) -> Option<RetryPermit> {
        if self.lock().pool.try_retry() {
            self.metrics.retried(&self.cluster);
            return Some(RetryPermit(Arc::clone(self)));
        }
        self.metrics.retry_overflow(&self.cluster);
        None
    }

    /// Sends the request `make` builds to endpoint `host`, waiting for a connection as
    /// the pool decides. `make` is called once a connection is ready to carry it
    /// (again when a kept-alive one turns out closed). The lease must be finished
    /// once the response body is read. `downstream` is the client's HTTP version, which
    /// decides under `useClientProtocol`.
    pub async fn send(
        self: &Arc<Self>,
        host: usize,
        downstream: http::Version,
        make: impl Fn() -> Request<Reader>,
    ) -> Result<(Response<Incoming>, Lease), NoResponse> {
        if let Some(connections) = self
            .http2
            .as_ref()
            .filter(|_| self.speaks_http2(downstream))
        {
            // Boxed: opening a connection is a large future, and inline it would make
            // every HTTP/1 attempt's future as large, copied at each await.
            return Box::pin(self.send_http2(connections, host, make)).await;
        }
        for _ in 0..STALE_CONNECTIONS {
            let mut lease = self.lease(host).await?;
            let reused = lease.reused;
            let Some(sender) = lease.sender.as_mut() else {
                continue;
            };
            if sender.ready().await.is_err() {
                if reused {
                    continue;
                }
                return Err(NoResponse::Reset);
            }
            match sender.send_request(make()).await {
                Ok(resp) => return Ok((resp, lease)),
                // Never written: the keep-alive connection was closing under us.
                Err(e) if e.is_canceled() && reused => {}
                Err(e) => {
                    tracing::debug!(error = %e, cluster = %self.cluster, "upstream request failed");
                    return Err(NoResponse::Reset);
                }
            }
        }
        Err(NoResponse::Reset)
    }

    /// One stream on the endpoint's HTTP/2 connection, opened first if needed.
    async fn send_http2(
        self: &Arc<Self>,
        connections: &h2::Connections,
        host: usize,
        make: impl Fn() -> Request<Reader>,
    ) -> Result<(Response<Incoming>, Lease), NoResponse> {
        let mut sender = match connections.ready(host) {
            Some(sender) => sender,
            None => self.connection_http2(connections, host).await?,
        };
        if !self.lock().pool.begin_stream() {
            self.metrics.pending_overflow(&self.cluster);
            return Err(NoResponse::Overflow);
        }
        let lease = Lease {
            upstream: Arc::clone(self),
            host,
            conn: 0,
            sender: None,
            reused: false,
            done: false,
            stream: true,
        };
        if sender.ready().await.is_err() {
            return Err(NoResponse::Reset);
        }
        let req = h2::http2_form(make())?;
        match sender.send_request(req).await {
            Ok(resp) => Ok((resp, lease)),
            Err(e) => {
                tracing::debug!(error = %e, cluster = %self.cluster, "upstream HTTP/2 stream failed");
                Err(NoResponse::Reset)
            }
        }
    }

    /// Waits, as a pending stream, for `host`'s HTTP/2 connection, opening it if no
    /// one else is.
    async fn connection_http2(
        &self,
        connections: &h2::Connections,
        host: usize,
    ) -> Result<h2::Sender, NoResponse> {
        if !self.lock().pool.begin_pending_stream() {
            self.metrics.pending_overflow(&self.cluster);
            return Err(NoResponse::Overflow);
        }
        let _pending = PendingStream(self);
        let opening = || {
            if self.lock().pool.open_http2() {
                self.metrics.connection_overflow(&self.cluster);
            }
        };
        let me = Weak::clone(&self.me);
        let closed = move || {
            if let Some(upstream) = me.upgrade() {
                upstream.lock().pool.closed_http2();
            }
        };
        let how = (self.targets[host], &*self.mesh, self.connect);
        connections
            .sender(host, how, opening, closed)
            .await
            .map_err(|why| {
                self.metrics.connect_failed(&self.cluster);
                NoResponse::ConnectFailure(why)
            })
    }

    async fn lease(self: &Arc<Self>, host: usize) -> Result<Lease, NoResponse> {
        let (rx, waiter, connect) = {
            let mut inner = self.lock();
            match inner.pool.acquire(host) {
                Acquire::Ready(conn) => {
                    let sender = inner.idle.remove(&conn).map(|i| i.sender);
                    return Ok(self.lease_of(host, conn, sender, true));
                }
                Acquire::Overflow(_) => {
                    drop(inner);
                    self.metrics.pending_overflow(&self.cluster);
                    return Err(NoResponse::Overflow);
                }
                Acquire::Wait {
                    waiter,
                    connect,
                    cx_overflow,
                } => {
                    if cx_overflow {
                        self.metrics.connection_overflow(&self.cluster);
                    }
                    let (tx, rx) = oneshot::channel();
                    inner.waiters.insert(waiter, tx);
                    (rx, waiter, connect)
                }
            }
        };
        if let Some(conn) = connect {
            self.spawn_connect(host, conn);
        }
        let _guard = WaitGuard {
            upstream: self,
            host,
            waiter,
        };
        match rx.await {
            Ok(Grant::Lease(lease)) => Ok(lease),
            Ok(Grant::Overflow) => Err(NoResponse::Overflow),
            Ok(Grant::ConnectFailed(why)) => Err(NoResponse::ConnectFailure(why)),
            Err(_) => Err(NoResponse::ConnectFailure(ConnectFailure::Other)),
        }
    }

    fn lease_of(
        self: &Arc<Self>,
        host: usize,
        conn: ConnId,
        sender: Option<Sender>,
        reused: bool,
    ) -> Lease {
        Lease {
            upstream: Arc::clone(self),
            host,
            conn,
            sender,
            reused,
            done: false,
            stream: false,
        }
    }

    fn release(&self, host: usize, conn: ConnId, reusable: bool, sender: Option<Sender>) {
        // Leases hold an `Arc`, so this upstream is alive; `self` needs no upgrade.
        let after = {
            let mut inner = self.lock();
            let decision = inner.pool.release(host, conn, reusable);
            self.apply(&mut inner, host, conn, decision, sender, true)
        };
        self.finish(after);
    }

    /// Carries out a pool decision about `conn`: give it to a waiter, park it idle
    /// (with its timer) or close it. `reused`: it has served a request before.
    fn apply(
        &self,
        inner: &mut Inner,
        host: usize,
        conn: ConnId,
        decision: Release,
        sender: Option<Sender>,
        reused: bool,
    ) -> After {
        let mut after = After::default();
        let (handoffs, idle_epoch) = match decision {
            Release::Close => {
                after.close.extend(sender);
                return after;
            }
            Release::Handoffs(h) => (h, None),
            Release::Idle { epoch, handoffs } => (handoffs, Some(epoch)),
        };
        let mut sender = sender;
        self.hand_off(inner, host, handoffs, &mut sender, reused, &mut after);
        if let (Some(epoch), Some(s)) = (idle_epoch, sender.take()) {
            let idle = Idle {
                sender: s,
                epoch,
                since: tokio::time::Instant::now(),
            };
            inner.idle.insert(conn, idle);
        }
        after.close.extend(sender);
        after
    }

    fn hand_off(
        &self,
        inner: &mut Inner,
        host: usize,
        handoffs: Vec<Handoff>,
        sender: &mut Option<Sender>,
        reused: bool,
        after: &mut After,
    ) {
        for handoff in handoffs {
            let (waiter, grant) = match handoff {
                Handoff::Overflow { waiter } => {
                    self.metrics.pending_overflow(&self.cluster);
                    (waiter, Grant::Overflow)
                }
                Handoff::ConnectFailed { waiter } => (
                    waiter,
                    Grant::ConnectFailed(after.connect_failure.unwrap_or(ConnectFailure::Other)),
                ),
                Handoff::Use { waiter, conn } => {
                    let Some(upstream) = self.me() else { continue };
                    (
                        waiter,
                        Grant::Lease(upstream.lease_of(host, conn, sender.take(), reused)),
                    )
                }
            };
            match (inner.waiters.remove(&waiter), grant) {
                (Some(tx), grant) => after.grants.push((tx, grant)),
                (None, Grant::Lease(lease)) => after.orphans.push(lease),
                (None, _) => {}
            }
        }
    }

    fn finish(&self, after: After) {
        for (tx, grant) in after.grants {
            // A waiter that went away drops the grant: an unused lease closes.
            let _ = tx.send(grant);
        }
        drop(after.orphans);
        drop(after.close);
        if let (Some((host, conn)), Some(me)) = (after.connect, self.me()) {
            me.spawn_connect(host, conn);
        }
    }

    /// This upstream as an `Arc`, for work that outlives the call.
    fn me(&self) -> Option<Arc<Self>> {
        self.me.upgrade()
    }

    /// A byte stream to endpoint `host` outside the pool (the opaque TCP relay),
    /// opened as the pool opens its connections.
    pub async fn open(&self, host: usize) -> Result<Stream, connect::Error> {
        connect::open(self.targets[host], &self.mesh, self.connect).await
    }

    /// Opens connection `conn` to endpoint `host` and drives it until it closes.
    fn spawn_connect(&self, host: usize, conn: ConnId) {
        let target = self.targets[host];
        let (mesh, options, weak) = (Arc::clone(&self.mesh), self.connect, self.me.clone());
        tokio::spawn(async move {
            let addr = target.address;
            let handshake = match connect::open(target, &mesh, options).await {
                Ok(stream) => Ok(http1::handshake::<_, Reader>(stream).await.ok()),
                Err(e) => {
                    tracing::debug!(error = %e, %addr, "upstream connect failed");
                    Err(ConnectFailure::of(&e))
                }
            };
            let Some(upstream) = weak.upgrade() else {
                return;
            };
            let (sender, driver) = match handshake {
                Ok(Some(handshake)) => handshake,
                Ok(None) => return upstream.connect_failed(host, conn, ConnectFailure::Other),
                Err(why) => return upstream.connect_failed(host, conn, why),
            };
            let weak = Arc::downgrade(&upstream);
            let timers = (
                upstream.idle_timer(host, conn),
                upstream.duration_timer(host, conn),
            );
            tokio::spawn(async move {
                // Stopped when the connection ends.
                let _timers = timers;
                let io = driver.without_shutdown().await.map(|p| p.io);
                let io = io
                    .inspect_err(|e| {
                        tracing::debug!(error = %e, %addr, "upstream connection ended with an error");
                    })
                    .ok();
                if let Some(upstream) = weak.upgrade() {
                    upstream.closed(host, conn);
                }
                // After the pool knows. A TCP connection is shut down as hyper would.
                // A tunnel is closed with END_STREAM both ways, waiting for the
                // peer's side: a dropped open stream is a reset, and too many resets
                // end the node tunnel's connection.
                match io {
                    Some(Stream::Tcp(tcp)) => {
                        let _ = tokio::io::AsyncWriteExt::shutdown(&mut tcp.into_inner()).await;
                    }
                    Some(Stream::Tunnel(tunnel)) => {
                        let _ = waypoint_hbone::close(tunnel).await;
                    }
                    None => {}
                }
            });
            upstream.connected(host, conn, sender);
        });
    }

    fn connected(&self, host: usize, conn: ConnId, sender: Sender) {
        let after = {
            let mut inner = self.lock();
            let decision = inner.pool.connected(host, conn);
            self.apply(&mut inner, host, conn, decision, Some(sender), false)
        };
        self.finish(after);
    }

    fn connect_failed(&self, host: usize, conn: ConnId, why: ConnectFailure) {
        self.metrics.connect_failed(&self.cluster);
        let after = {
            let mut inner = self.lock();
            let failed = inner.pool.connect_failed(host, conn);
            let mut after = After {
                connect_failure: Some(why),
                ..After::default()
            };
            self.hand_off(&mut inner, host, failed, &mut None, false, &mut after);
            after
        };
        self.finish(after);
    }

    /// The connection's socket is gone (upstream close, idle expiry, quota reached).
    fn closed(&self, host: usize, conn: ConnId) {
        let after = {
            let mut inner = self.lock();
            let mut after = After::default();
            after
                .close
                .extend(inner.idle.remove(&conn).map(|i| i.sender));
            after.connect = inner.pool.closed(host, conn).map(|c| (host, c));
            after
        };
        self.finish(after);
    }

    /// Retires `conn` at its maximum duration (Envoy's `max_connection_duration`):
    /// closed at once if idle, else when its request is done.
    fn duration_timer(&self, host: usize, conn: ConnId) -> Option<Timer> {
        let limit = self.max_connection_duration?;
        let weak = self.me.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            let Some(upstream) = weak.upgrade() else {
                return;
            };
            let idle = {
                let mut inner = upstream.lock();
                if inner.pool.retire(host, conn) {
                    inner.idle.remove(&conn)
                } else {
                    None
                }
            };
            // Dropped outside the lock: the connection closes.
            drop(idle);
        });
        Some(Timer(task.abort_handle()))
    }

    /// Closes `conn` once it has been idle for the idle timeout. One task per
    /// connection, waking at most once per timeout while the connection is in use:
    /// a task per idle period, spawned and aborted around every request, cost more
    /// instructions than routing the request (callgrind). An earlier timer per
    /// release that slept out the whole timeout was a leak, about 0.5 KiB per
    /// request for an hour under Istio's default.
    fn idle_timer(&self, host: usize, conn: ConnId) -> Option<Timer> {
        let timeout = self.idle_timeout?;
        let weak = self.me.clone();
        let task = tokio::spawn(async move {
            let mut wake = tokio::time::Instant::now() + timeout;
            loop {
                tokio::time::sleep_until(wake).await;
                let Some(upstream) = weak.upgrade() else {
                    return;
                };
                let expired = {
                    let mut inner = upstream.lock();
                    let now = tokio::time::Instant::now();
                    // In use, it cannot expire sooner than a timeout from now.
                    wake = now + timeout;
                    match inner.idle.get(&conn).map(|i| (i.epoch, i.since + timeout)) {
                        Some((_, due)) if due > now => {
                            wake = due;
                            None
                        }
                        Some((epoch, _)) if inner.pool.expire(host, conn, epoch) => {
                            inner.idle.remove(&conn)
                        }
                        _ => None,
                    }
                };
                if expired.is_some() {
                    // Dropped outside the lock: the connection closes, and with it
                    // this timer.
                    return;
                }
            }
        });
        Some(Timer(task.abort_handle()))
    }
}
