//! Envoy's HTTP/1 upstream connection pool and the cluster's circuit breakers
//! (`conn_pool_base.cc`, `circuit_breaking.rst`), as one pure state machine over
//! connection and waiter ids. `proxy::upstream` owns the sockets and follows its
//! decisions; `shared/reference/traffic-policy.md` §1.4 has the Istio mapping.
//!
//! - A request takes an idle connection of its host if there is one. Otherwise it
//!   waits (pending) and, if no connection is already being opened for it, opens one.
//! - `max_pending_requests`: a request that would wait beyond it overflows (503 `UO`).
//! - `max_requests`: a request is attached to a connection only below it; at the limit
//!   it overflows. Both count into Envoy's `upstream_rq_pending_overflow`.
//! - `max_connections`: past it no connection is opened (`upstream_cx_overflow`) and
//!   requests keep waiting for one to free up, except that a host with no connection
//!   at all may always open one (so its waiters are not stranded).
//! - `max_requests_per_connection`: after that many requests the connection closes.
//! - `max_connection_duration` (the caller's timer): a connection that reaches it
//!   closes if idle, or takes no new request and closes when its request is done.
//! - `max_retries`: concurrent retries across the cluster.
//! - A connect failure fails every request waiting on that host, as Envoy purges the
//!   pending streams of the host's pool.
//! - Limits count over all hosts of the cluster; Envoy counts per worker thread's pool
//!   and we have one pool, which is what a single-worker Envoy does.

use std::collections::{BTreeMap, VecDeque};

pub type ConnId = u64;
pub type WaiterId = u64;

/// Counters only go down for what went up; a miss is a bug, loud in tests and
/// harmless (no wrap to 2^32) in production.
fn dec<T: Copy + PartialEq + Default + std::ops::Sub<Output = T> + From<u8>>(n: &mut T) {
    debug_assert!(*n != T::default(), "counter below zero");
    if *n != T::default() {
        *n = *n - T::from(1);
    }
}

/// The thresholds, with Istio's "not set" as `u32::MAX` and `0` per connection as
/// unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
    pub max_requests_per_connection: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: u32::MAX,
            max_pending_requests: u32::MAX,
            max_requests: u32::MAX,
            max_retries: u32::MAX,
            max_requests_per_connection: 0,
        }
    }
}

impl From<&waypoint_config::ConnectionPool> for Limits {
    fn from(c: &waypoint_config::ConnectionPool) -> Self {
        Self {
            max_connections: c.max_connections,
            max_pending_requests: c.max_pending_requests,
            max_requests: c.max_requests,
            max_retries: c.max_retries,
            max_requests_per_connection: c.max_requests_per_connection,
        }
    }
}

/// Which breaker refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    PendingRequests,
    Requests,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acquire {
    /// Send on this idle connection now.
    Ready(ConnId),
    /// Wait as `waiter` for a [`Handoff`]; open `connect` if set.
    /// `cx_overflow`: a connection was wanted but `max_connections` was reached.
    Wait {
        waiter: WaiterId,
        connect: Option<ConnId>,
        cx_overflow: bool,
    },
    Overflow(Overflow),
}

/// What a waiting request gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handoff {
    Use { waiter: WaiterId, conn: ConnId },
    Overflow { waiter: WaiterId },
    ConnectFailed { waiter: WaiterId },
}

/// What to do with a connection a request has finished with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Release {
    /// Close it: it served its quota, cannot be reused, or is already gone.
    Close,
    /// Hand it to waiters (the first `Use` gets it; `Overflow`s before it fail).
    Handoffs(Vec<Handoff>),
    /// Keep it idle; close it unless used before the idle timer for `epoch` fires.
    Idle { epoch: u64, handoffs: Vec<Handoff> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnState {
    Connecting,
    Idle(u64),
    Busy,
    /// Told to close; counted until the socket is gone.
    Closing,
}

#[derive(Clone, Debug)]
struct Conn {
    state: ConnState,
    served: u32,
    /// False once the socket is gone while a request still holds the connection.
    open: bool,
    /// Past its maximum duration: not to be reused.
    retired: bool,
}

#[derive(Clone, Debug, Default)]
struct Host {
    conns: BTreeMap<ConnId, Conn>,
    /// Most recently freed first, as Envoy's ready list.
    idle: VecDeque<ConnId>,
    /// Oldest first.
    waiters: VecDeque<WaiterId>,
    connecting: usize,
}

/// Current counts, for gauges and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub connections: u32,
    pub pending: u32,
    pub requests: u32,
    pub retries: u32,
}

#[derive(Clone, Debug)]
pub struct Pool {
    limits: Limits,
    hosts: Vec<Host>,
    counts: Counts,
    next_id: u64,
}

impl Pool {
    pub fn new(limits: Limits, hosts: usize) -> Self {
        Self {
            limits,
            hosts: vec![Host::default(); hosts],
            counts: Counts::default(),
            next_id: 0,
        }
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// A request for `host` wants a connection.
    pub fn acquire(&mut self, host: usize) -> Acquire {
        if let Some(conn) = self.hosts[host].idle.pop_front() {
            if self.counts.requests >= self.limits.max_requests {
                self.hosts[host].idle.push_front(conn);
                return Acquire::Overflow(Overflow::Requests);
            }
            self.attach(host, conn);
            return Acquire::Ready(conn);
        }
        if self.counts.pending >= self.limits.max_pending_requests {
            return Acquire::Overflow(Overflow::PendingRequests);
        }
        let waiter = self.id();
        self.hosts[host].waiters.push_back(waiter);
        self.counts.pending += 1;
        let (connect, cx_overflow) = self.maybe_connect(host);
        Acquire::Wait {
            waiter,
            connect,
            cx_overflow,
        }
    }

    /// Envoy's `tryCreateNewConnection` with capacity 1 per HTTP/1 connection: open one
    /// when more requests wait than connections are being opened.
    fn maybe_connect(&mut self, host: usize) -> (Option<ConnId>, bool) {
        let h = &self.hosts[host];
        if h.waiters.len() <= h.connecting {
            return (None, false);
        }
        let allowed = self.counts.connections < self.limits.max_connections;
        if !allowed && !h.conns.is_empty() {
            return (None, true);
        }
        let conn = self.id();
        let h = &mut self.hosts[host];
        h.conns.insert(
            conn,
            Conn {
                state: ConnState::Connecting,
                served: 0,
                open: true,
                retired: false,
            },
        );
        h.connecting += 1;
        self.counts.connections += 1;
        (Some(conn), !allowed)
    }

    fn attach(&mut self, host: usize, conn: ConnId) {
        if let Some(c) = self.hosts[host].conns.get_mut(&conn) {
            c.state = ConnState::Busy;
            c.served += 1;
        }
        self.counts.requests += 1;
    }

    /// `conn` is connected and free: hand it to the waiters in order. A waiter that
    /// cannot be attached (requests at the limit) overflows; the next one is tried.
    fn available(&mut self, host: usize, conn: ConnId) -> Release {
        let mut handoffs = Vec::new();
        while let Some(waiter) = self.hosts[host].waiters.pop_front() {
            dec(&mut self.counts.pending);
            if self.counts.requests >= self.limits.max_requests {
                handoffs.push(Handoff::Overflow { waiter });
                continue;
            }
            self.attach(host, conn);
            handoffs.push(Handoff::Use { waiter, conn });
            return Release::Handoffs(handoffs);
        }
        let epoch = self.id();
        let h = &mut self.hosts[host];
        if let Some(c) = h.conns.get_mut(&conn) {
            c.state = ConnState::Idle(epoch);
        }
        h.idle.push_front(conn);
        Release::Idle { epoch, handoffs }
    }

    /// The connection `conn` opened for `host` is ready.
    pub fn connected(&mut self, host: usize, conn: ConnId) -> Release {
        let h = &mut self.hosts[host];
        match h.conns.get(&conn).map(|c| c.state) {
            Some(ConnState::Connecting) => dec(&mut h.connecting),
            _ => return Release::Close,
        }
        self.available(host, conn)
    }

    /// Opening `conn` failed: every request waiting on `host` fails with it.
    pub fn connect_failed(&mut self, host: usize, conn: ConnId) -> Vec<Handoff> {
        let h = &mut self.hosts[host];
        if h.conns.get(&conn).map(|c| c.state) != Some(ConnState::Connecting) {
            return Vec::new();
        }
        h.conns.remove(&conn);
        dec(&mut h.connecting);
        dec(&mut self.counts.connections);
        let failed: Vec<Handoff> = h
            .waiters
            .drain(..)
            .map(|waiter| Handoff::ConnectFailed { waiter })
            .collect();
        for _ in &failed {
            dec(&mut self.counts.pending);
        }
        failed
    }

    /// A request is done with `conn`; `reusable` is false when the exchange did not
    /// end cleanly (the connection state is unknown).
    pub fn release(&mut self, host: usize, conn: ConnId, reusable: bool) -> Release {
        dec(&mut self.counts.requests);
        let limit = self.limits.max_requests_per_connection;
        let h = &mut self.hosts[host];
        let Some(c) = h.conns.get_mut(&conn) else {
            return Release::Close;
        };
        if !c.open {
            h.conns.remove(&conn);
            return Release::Close;
        }
        if !reusable || c.retired || (limit != 0 && c.served >= limit) {
            c.state = ConnState::Closing;
            return Release::Close;
        }
        self.available(host, conn)
    }

    /// The idle timer for `epoch` fired: true if `conn` should now be closed.
    pub fn expire(&mut self, host: usize, conn: ConnId, epoch: u64) -> bool {
        let h = &mut self.hosts[host];
        match h.conns.get_mut(&conn) {
            Some(c) if c.state == ConnState::Idle(epoch) => {
                c.state = ConnState::Closing;
                h.idle.retain(|&i| i != conn);
                true
            }
            _ => false,
        }
    }

    /// `conn` reached its maximum duration: true if it is idle and should now be
    /// closed; if busy, it closes when its request is done.
    pub fn retire(&mut self, host: usize, conn: ConnId) -> bool {
        let h = &mut self.hosts[host];
        let Some(c) = h.conns.get_mut(&conn) else {
            return false;
        };
        c.retired = true;
        if matches!(c.state, ConnState::Idle(_)) {
            c.state = ConnState::Closing;
            h.idle.retain(|&i| i != conn);
            return true;
        }
        false
    }

    /// The socket of `conn` is gone. Returns a connection to open when requests are
    /// still waiting on `host` and none is being opened for them.
    pub fn closed(&mut self, host: usize, conn: ConnId) -> Option<ConnId> {
        let h = &mut self.hosts[host];
        let c = h.conns.get_mut(&conn)?;
        match c.state {
            ConnState::Busy if c.open => c.open = false,
            ConnState::Busy => return None,
            ConnState::Connecting => {
                dec(&mut h.connecting);
                h.conns.remove(&conn);
            }
            ConnState::Idle(_) | ConnState::Closing => {
                h.idle.retain(|&i| i != conn);
                h.conns.remove(&conn);
            }
        }
        dec(&mut self.counts.connections);
        self.maybe_connect(host).0
    }

    /// A waiting request went away (client gone, route timeout).
    pub fn cancel(&mut self, host: usize, waiter: WaiterId) {
        let h = &mut self.hosts[host];
        let before = h.waiters.len();
        h.waiters.retain(|&w| w != waiter);
        if h.waiters.len() < before {
            dec(&mut self.counts.pending);
        }
    }

    /// An HTTP/2 stream waiting for its endpoint's connection to open, counted
    /// against `max_pending_requests` as Envoy counts a stream no ready connection
    /// takes at once. `false`: overflow (503 `UO`).
    pub fn begin_pending_stream(&mut self) -> bool {
        if self.counts.pending >= self.limits.max_pending_requests {
            return false;
        }
        self.counts.pending += 1;
        true
    }

    pub fn end_pending_stream(&mut self) {
        dec(&mut self.counts.pending);
    }

    /// An HTTP/2 connection being opened: an endpoint's only one, so it is opened
    /// even past `max_connections`, as Envoy opens one for a host that has none.
    /// `true`: past the limit (`upstream_cx_overflow`).
    pub fn open_http2(&mut self) -> bool {
        let over = self.counts.connections >= self.limits.max_connections;
        self.counts.connections += 1;
        over
    }

    /// An HTTP/2 connection that failed to open or has closed.
    pub fn closed_http2(&mut self) {
        dec(&mut self.counts.connections);
    }

    /// An HTTP/2 stream, counted against `max_requests` (its multiplexed connection
    /// is kept outside this pool). `false`: overflow (503 `UO`).
    pub fn begin_stream(&mut self) -> bool {
        if self.counts.requests >= self.limits.max_requests {
            return false;
        }
        self.counts.requests += 1;
        true
    }

    pub fn end_stream(&mut self) {
        dec(&mut self.counts.requests);
    }

    /// Takes a retry slot, or `false` when `max_retries` retries are in flight.
    pub fn try_retry(&mut self) -> bool {
        if self.counts.retries >= self.limits.max_retries {
            return false;
        }
        self.counts.retries += 1;
        true
    }

    pub fn end_retry(&mut self) {
        self.counts.retries = self.counts.retries.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests;
