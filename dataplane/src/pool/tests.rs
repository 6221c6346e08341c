use super::*;

fn limits() -> Limits {
    Limits::default()
}

/// Acquire on `host` expecting to wait with a new connection; returns (waiter, conn).
fn wait_connecting(p: &mut Pool, host: usize) -> (WaiterId, ConnId) {
    match p.acquire(host) {
        Acquire::Wait {
            waiter,
            connect: Some(conn),
            cx_overflow: false,
        } => (waiter, conn),
        other => panic!("expected a wait with a new connection, got {other:?}"),
    }
}

fn used(r: &Release) -> Option<(WaiterId, ConnId)> {
    let handoffs = match r {
        Release::Handoffs(h) | Release::Idle { handoffs: h, .. } => h,
        Release::Close => return None,
    };
    handoffs.iter().find_map(|h| match h {
        Handoff::Use { waiter, conn } => Some((*waiter, *conn)),
        _ => None,
    })
}

#[test]
fn a_connection_is_opened_used_and_kept_idle_for_the_next_request() {
    let mut p = Pool::new(limits(), 1);
    let (w, c) = wait_connecting(&mut p, 0);
    assert_eq!(used(&p.connected(0, c)), Some((w, c)));
    assert_eq!(p.counts().requests, 1);
    assert!(matches!(p.release(0, c, true), Release::Idle { .. }));
    assert_eq!(p.acquire(0), Acquire::Ready(c), "keep-alive reuse");
    assert_eq!(
        p.counts(),
        Counts {
            connections: 1,
            pending: 0,
            requests: 1,
            retries: 0
        }
    );
}

#[test]
fn pending_requests_overflow_past_the_limit_and_drain_in_order() {
    // maxConnections 1 + http1MaxPendingRequests 1: one in flight, one queued, the
    // third overflows.
    let mut p = Pool::new(
        Limits {
            max_connections: 1,
            max_pending_requests: 1,
            ..limits()
        },
        1,
    );
    let (w1, c) = wait_connecting(&mut p, 0);
    assert_eq!(used(&p.connected(0, c)), Some((w1, c)));
    let Acquire::Wait {
        waiter: w2,
        connect: None,
        cx_overflow: true,
    } = p.acquire(0)
    else {
        panic!("the second request waits: no second connection allowed")
    };
    assert_eq!(p.acquire(0), Acquire::Overflow(Overflow::PendingRequests));
    // The first request finishes: the queued one gets its connection.
    assert_eq!(used(&p.release(0, c, true)), Some((w2, c)));
    assert_eq!(p.counts().pending, 0);
    // Now there is room to queue again.
    assert!(matches!(p.acquire(0), Acquire::Wait { .. }));
}

#[test]
fn max_requests_overflows_at_attach_time() {
    // http2MaxRequests 1: the second request overflows even with a free connection.
    let mut p = Pool::new(
        Limits {
            max_requests: 1,
            ..limits()
        },
        2,
    );
    let (w1, c1) = wait_connecting(&mut p, 0);
    assert_eq!(used(&p.connected(0, c1)), Some((w1, c1)));
    let (w2, c2) = wait_connecting(&mut p, 1);
    let Release::Idle { handoffs, .. } = p.connected(1, c2) else {
        panic!("the connection stays idle")
    };
    assert_eq!(handoffs, [Handoff::Overflow { waiter: w2 }]);
    assert_eq!(p.acquire(1), Acquire::Overflow(Overflow::Requests));
    assert_eq!(p.counts().requests, 1);
    // Releasing frees the slot: the idle connection serves the next request.
    assert!(matches!(p.release(0, c1, true), Release::Idle { .. }));
    assert_eq!(p.acquire(1), Acquire::Ready(c2));
}

#[test]
fn max_connections_spares_a_host_without_any_connection() {
    let mut p = Pool::new(
        Limits {
            max_connections: 1,
            ..limits()
        },
        2,
    );
    let (_, c1) = wait_connecting(&mut p, 0);
    // Host 1 has nothing: it may open one despite the limit (flagged as cx overflow).
    let Acquire::Wait {
        connect: Some(_),
        cx_overflow: true,
        ..
    } = p.acquire(1)
    else {
        panic!("host 1 must be allowed its first connection")
    };
    assert_eq!(p.counts().connections, 2);
    // Host 0 already has one: its second request waits without a new connection.
    let Acquire::Wait { connect: None, .. } = p.acquire(0) else {
        panic!("no second connection for host 0")
    };
    // The connection in progress serves the first waiter, then the second.
    let r = p.connected(0, c1);
    let (_, c) = used(&r).unwrap();
    assert_eq!(c, c1);
    assert!(used(&p.release(0, c1, true)).is_some());
}

#[test]
fn max_requests_per_connection_closes_after_the_quota() {
    let mut p = Pool::new(
        Limits {
            max_requests_per_connection: 1,
            ..limits()
        },
        1,
    );
    let (_, c1) = wait_connecting(&mut p, 0);
    p.connected(0, c1);
    assert_eq!(
        p.release(0, c1, true),
        Release::Close,
        "keep-alive disabled"
    );
    // A new request opens a new connection while the old one is still closing.
    let (_, c2) = wait_connecting(&mut p, 0);
    assert_ne!(c1, c2);
    assert_eq!(p.counts().connections, 2);
    assert_eq!(p.closed(0, c1), None);
    assert_eq!(p.counts().connections, 1);
}

#[test]
fn a_retired_connection_closes_when_idle_or_when_its_request_is_done() {
    let mut p = Pool::new(limits(), 1);
    let (_, c1) = wait_connecting(&mut p, 0);
    p.connected(0, c1);
    // Busy when it reaches its duration: it serves on, then closes.
    assert!(!p.retire(0, c1));
    assert_eq!(p.release(0, c1, true), Release::Close);
    assert_eq!(p.closed(0, c1), None);
    // Idle when it reaches it: closed now, and the next request opens another.
    let (_, c2) = wait_connecting(&mut p, 0);
    p.connected(0, c2);
    assert!(matches!(p.release(0, c2, true), Release::Idle { .. }));
    assert!(p.retire(0, c2));
    let (_, c3) = wait_connecting(&mut p, 0);
    assert_ne!(c2, c3);
    // A connection already gone is nothing to retire.
    assert_eq!(p.closed(0, c2), None);
    assert!(!p.retire(0, c2));
}

#[test]
fn a_connect_failure_fails_every_waiter_of_the_host() {
    let mut p = Pool::new(
        Limits {
            max_connections: 1,
            ..limits()
        },
        1,
    );
    let (w1, c) = wait_connecting(&mut p, 0);
    let Acquire::Wait { waiter: w2, .. } = p.acquire(0) else {
        panic!()
    };
    assert_eq!(
        p.connect_failed(0, c),
        [
            Handoff::ConnectFailed { waiter: w1 },
            Handoff::ConnectFailed { waiter: w2 }
        ]
    );
    assert_eq!(p.counts(), Counts::default());
}

#[test]
fn idle_connections_expire_unless_reused_first() {
    let mut p = Pool::new(limits(), 1);
    let (_, c) = wait_connecting(&mut p, 0);
    assert!(used(&p.connected(0, c)).is_some());
    let Release::Idle { epoch, .. } = p.release(0, c, true) else {
        panic!("no waiter: idle")
    };
    assert_eq!(p.acquire(0), Acquire::Ready(c));
    assert!(!p.expire(0, c, epoch), "in use: not closed");
    let Release::Idle { epoch: again, .. } = p.release(0, c, true) else {
        panic!()
    };
    assert_ne!(epoch, again);
    assert!(!p.expire(0, c, epoch), "an older timer does not close it");
    assert!(p.expire(0, c, again));
    // Expired connections are not handed out; the socket closing ends the count.
    assert!(matches!(p.acquire(0), Acquire::Wait { .. }));
    p.closed(0, c);
    assert_eq!(p.counts().connections, 1, "only the new one");
}

#[test]
fn a_connection_closed_under_a_request_is_dropped_at_release() {
    let mut p = Pool::new(limits(), 1);
    let (_, c) = wait_connecting(&mut p, 0);
    p.connected(0, c);
    assert_eq!(p.closed(0, c), None);
    assert_eq!(p.counts().connections, 0);
    assert_eq!(p.release(0, c, true), Release::Close);
    assert_eq!(p.counts(), Counts::default());
    // A waiter left when its connection dies gets a new connection.
    let (w, c) = wait_connecting(&mut p, 0);
    p.connected(0, c);
    let Acquire::Wait {
        waiter: w2,
        connect: Some(c2),
        ..
    } = p.acquire(0)
    else {
        panic!()
    };
    assert_ne!(w, w2);
    p.connect_failed(0, c2);
    let Acquire::Wait {
        connect: Some(_), ..
    } = p.acquire(0)
    else {
        panic!()
    };
    assert_eq!(p.release(0, c, false), Release::Close);
    assert!(
        p.closed(0, c).is_none(),
        "one is already being opened for the waiter"
    );
}

#[test]
fn cancelled_waiters_leave_the_queue() {
    let mut p = Pool::new(
        Limits {
            max_pending_requests: 1,
            ..limits()
        },
        1,
    );
    let (w, c) = wait_connecting(&mut p, 0);
    p.cancel(0, w);
    assert_eq!(p.counts().pending, 0);
    assert!(matches!(p.acquire(0), Acquire::Wait { connect: None, .. }));
    p.cancel(0, w);
    assert_eq!(p.counts().pending, 1, "cancelling twice changes nothing");
    assert!(used(&p.connected(0, c)).is_some());
}

#[test]
fn retries_are_limited_while_in_flight() {
    let mut p = Pool::new(
        Limits {
            max_retries: 2,
            ..limits()
        },
        1,
    );
    assert!(p.try_retry());
    assert!(p.try_retry());
    assert!(!p.try_retry(), "third concurrent retry overflows");
    p.end_retry();
    assert!(p.try_retry());
    assert_eq!(p.counts().retries, 2);
}

#[test]
fn http2_streams_count_against_max_requests_once_their_connection_is_up() {
    let mut p = Pool::new(
        Limits {
            max_requests: 2,
            max_pending_requests: 0,
            max_connections: 0,
            ..Limits::default()
        },
        1,
    );
    assert!(p.begin_stream());
    assert!(p.begin_stream());
    assert!(!p.begin_stream(), "the third concurrent stream overflows");
    assert_eq!(p.counts().requests, 2);
    p.end_stream();
    assert!(p.begin_stream());
    assert_eq!(p.counts().connections, 0);
}

#[test]
fn http2_streams_waiting_for_their_connection_count_against_max_pending_requests() {
    let mut p = Pool::new(
        Limits {
            max_pending_requests: 1,
            ..Limits::default()
        },
        1,
    );
    assert!(p.begin_pending_stream());
    assert!(
        !p.begin_pending_stream(),
        "the second waiting stream overflows"
    );
    assert_eq!(p.counts().pending, 1);
    p.end_pending_stream();
    assert!(p.begin_pending_stream());
}

#[test]
fn http2_connections_open_past_max_connections_but_count_the_overflow() {
    let mut p = Pool::new(
        Limits {
            max_connections: 1,
            ..Limits::default()
        },
        2,
    );
    assert!(!p.open_http2(), "the first connection is within the limit");
    assert!(
        p.open_http2(),
        "the second endpoint's is past it, and opened"
    );
    assert_eq!(p.counts().connections, 2);
    p.closed_http2();
    p.closed_http2();
    assert!(!p.open_http2());
}
