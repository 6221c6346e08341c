//! The reference's test oracles (traffic-policy.md §2.3, §2.4, §2.7), tick by tick.

use super::*;

fn s(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

/// 10 hosts, consecutive5xxErrors 3, interval 1s, baseEjectionTime 5s (§2.7).
fn ten_hosts() -> Detector<u32> {
    let cfg = Config::new(s(5))
        .with_consecutive_5xx(Some(3))
        .with_interval(s(1));
    let mut d = Detector::new(cfg);
    d.set_hosts(0..10);
    d
}

fn ejected(events: &[Event<u32>]) -> bool {
    events.iter().any(|e| matches!(e, Event::Ejected { .. }))
}

/// The reason when `events` is exactly one ejection.
fn ejected_for(events: &[Event<u32>]) -> Option<Reason> {
    match events {
        [Event::Ejected { reason, .. }] => Some(*reason),
        _ => None,
    }
}

#[test]
fn third_consecutive_503_ejects_immediately() {
    let mut d = ten_hosts();
    assert!(d.report(&0, Outcome::Status(503), s(0)).is_empty());
    assert!(d.report(&0, Outcome::Status(503), s(0)).is_empty());
    let events = d.report(&0, Outcome::Status(503), s(0));
    assert_eq!(
        events,
        vec![Event::Ejected {
            host: 0,
            reason: Reason::Consecutive5xx,
            count: 3,
            ejection_time: s(5)
        }]
    );
    assert!(d.is_ejected(&0));
    assert_eq!(d.ejections_active(), 1);
}

#[test]
fn a_success_in_between_resets_the_count() {
    let mut d = ten_hosts();
    for outcome in [503, 503, 200, 503, 503].map(Outcome::Status) {
        assert!(!ejected(&d.report(&0, outcome, s(0))));
    }
    assert!(!d.is_ejected(&0));
    // 4xx is a success too.
    let mut d = ten_hosts();
    for outcome in [500, 500, 404, 500, 500].map(Outcome::Status) {
        assert!(!ejected(&d.report(&0, outcome, s(0))));
    }
}

#[test]
fn a_500_resets_the_gateway_counter() {
    let cfg = Config::new(s(5))
        .with_consecutive_5xx(Some(0))
        .with_consecutive_gateway(Some(3))
        .with_interval(s(1));
    let mut d = Detector::new(cfg);
    d.set_hosts(0..10);
    for outcome in [500, 500, 502].map(Outcome::Status) {
        assert!(!ejected(&d.report(&0, outcome, s(0))));
    }
    // The 502 started a run: two more gateway errors make three and eject.
    assert!(!ejected(&d.report(&0, Outcome::Status(503), s(0))));
    let events = d.report(&0, Outcome::Status(504), s(0));
    assert!(matches!(
        events[..],
        [Event::Ejected {
            reason: Reason::ConsecutiveGatewayFailure,
            ..
        }]
    ));
}

#[test]
fn connect_failures_and_timeouts_count_as_503_and_504() {
    let mut d = ten_hosts();
    d.report(&0, Outcome::ConnectFailure, s(0));
    d.report(&0, Outcome::Reset, s(0));
    let events = d.report(&0, Outcome::Timeout, s(0));
    assert!(matches!(
        events[..],
        [Event::Ejected {
            reason: Reason::Consecutive5xx,
            ..
        }]
    ));
    // A successful connect does not reset the 5xx count in the default (non-split) mode.
    let mut d = ten_hosts();
    d.report(&1, Outcome::ConnectFailure, s(0));
    d.report(&1, Outcome::ConnectSuccess, s(0));
    d.report(&1, Outcome::ConnectFailure, s(0));
    assert!(ejected(&d.report(&1, Outcome::ConnectFailure, s(0))));
}

#[test]
fn split_mode_counts_local_origin_failures_separately() {
    let cfg = Config::new(s(5))
        .with_consecutive_5xx(Some(3))
        .with_split_local_origin(Some(2));
    let mut d = Detector::new(cfg);
    d.set_hosts(0..10);
    // Local-origin failures do not touch the 5xx counter...
    d.report(&0, Outcome::Status(500), s(0));
    d.report(&0, Outcome::Status(500), s(0));
    assert!(d.report(&0, Outcome::ConnectFailure, s(0)).is_empty());
    // ...a successful connect resets the local-origin counter...
    d.report(&0, Outcome::ConnectSuccess, s(0));
    assert!(d.report(&0, Outcome::Timeout, s(0)).is_empty());
    let events = d.report(&0, Outcome::Reset, s(0));
    assert!(matches!(
        events[..],
        [Event::Ejected {
            reason: Reason::ConsecutiveLocalOriginFailure,
            count: 2,
            ..
        }]
    ));
}

#[test]
fn unejection_waits_for_the_first_tick_after_the_ejection_time() {
    let mut d = ten_hosts();
    let ejected_at = Duration::from_millis(2_300);
    for _ in 0..3 {
        d.report(&0, Outcome::Status(503), ejected_at);
    }
    for t in 3..=7 {
        assert!(d.tick(s(t)).is_empty(), "unejected early at {t}s");
    }
    // Eligible at 7.3s, so the 8s tick brings it back.
    assert_eq!(
        d.tick(s(8)),
        vec![Event::Unejected {
            host: 0,
            ejected_for: Duration::from_millis(5_700)
        }]
    );
    assert!(!d.is_ejected(&0));
    assert_eq!(d.ejections_active(), 0);
}

#[test]
fn re_ejection_before_a_healthy_tick_doubles_the_time() {
    let mut d = ten_hosts();
    for _ in 0..3 {
        d.report(&0, Outcome::Status(503), s(0));
    }
    assert!(!d.tick(s(5)).is_empty());
    // Bad again before a whole healthy interval has passed.
    let mut last = Vec::new();
    for _ in 0..3 {
        last = d.report(&0, Outcome::Status(503), Duration::from_millis(5_500));
    }
    assert!(matches!(last[..], [Event::Ejected { ejection_time, .. }] if ejection_time == s(10)));
    for t in 6..=15 {
        assert!(d.tick(s(t)).is_empty(), "unejected early at {t}s");
    }
    assert!(!d.tick(s(16)).is_empty());
}

#[test]
fn backoff_decays_after_a_healthy_interval() {
    let mut d = ten_hosts();
    for _ in 0..3 {
        d.report(&0, Outcome::Status(503), s(0));
    }
    assert!(!d.tick(s(5)).is_empty());
    d.tick(s(6)); // a whole healthy interval: backoff 1 -> 0
    let mut last = Vec::new();
    for _ in 0..3 {
        last = d.report(&0, Outcome::Status(503), s(6));
    }
    assert!(matches!(last[..], [Event::Ejected { ejection_time, .. }] if ejection_time == s(5)));
}

#[test]
fn backoff_grows_to_the_max_ejection_time_and_stops() {
    // base 30s, max 300s: 30, 60, ..., 300, 300 (§2.4).
    let mut d = Detector::new(
        Config::new(s(30))
            .with_consecutive_5xx(Some(1))
            .with_max_ejection_percent(100),
    );
    d.set_hosts([0]);
    let mut times = Vec::new();
    let mut now = s(0);
    for _ in 0..12 {
        let events = d.report(&0, Outcome::Status(500), now);
        let Some(Event::Ejected { ejection_time, .. }) = events.first() else {
            panic!("{events:?}")
        };
        times.push(ejection_time.as_secs());
        now += *ejection_time;
        // Unejected on this tick, re-ejected before the next one: no decay.
        assert!(!d.tick(now).is_empty());
    }
    assert_eq!(
        times,
        [30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 300, 300]
    );
}

#[test]
fn max_ejection_percent_is_a_hard_cap() {
    // A second bad host while one is ejected: 100·2/10 = 20 > 10.
    let mut d = ten_hosts();
    for _ in 0..3 {
        d.report(&0, Outcome::Status(503), s(0));
    }
    let mut last = Vec::new();
    for _ in 0..3 {
        last = d.report(&1, Outcome::Status(503), s(0));
    }
    assert_eq!(
        last,
        vec![Event::Overflow {
            host: 1,
            reason: Reason::Consecutive5xx
        }]
    );
    assert!(!d.is_ejected(&1));
    // The counter was reset by the refused ejection: three more are needed.
    assert!(d.report(&1, Outcome::Status(503), s(0)).is_empty());
}

#[test]
fn default_ten_percent_never_ejects_in_small_clusters() {
    for n in 1..10 {
        let mut d = Detector::new(Config::default());
        d.set_hosts(0..n);
        let mut events = Vec::new();
        for _ in 0..5 {
            events = d.report(&0, Outcome::Status(503), s(0));
        }
        assert_eq!(
            events,
            vec![Event::Overflow {
                host: 0,
                reason: Reason::Consecutive5xx
            }],
            "{n} hosts"
        );
    }
    let mut d = Detector::new(Config::default());
    d.set_hosts(0..10);
    let events: Vec<_> = (0..5)
        .flat_map(|_| d.report(&0, Outcome::Status(503), s(0)))
        .collect();
    assert!(ejected(&events));
}

#[test]
fn max_ejection_table() {
    // (hosts, maxEjectionPercent, most hosts ejected at once) from §2.3.
    for (n, mep, most) in [
        (3, 50, 1),
        (3, 67, 2),
        (2, 100, 2),
        (1, 100, 1),
        (10, 10, 1),
        (19, 10, 1),
    ] {
        let cfg = Config::new(s(30))
            .with_consecutive_5xx(Some(1))
            .with_max_ejection_percent(mep);
        let mut d = Detector::new(cfg);
        d.set_hosts(0..n);
        for h in 0..n {
            d.report(&h, Outcome::Status(500), s(0));
        }
        assert_eq!(d.ejections_active(), most, "{n} hosts at {mep}%");
    }
}

#[test]
fn explicit_zero_disables_5xx_ejection() {
    let mut d = Detector::new(
        Config::new(s(30))
            .with_consecutive_5xx(Some(0))
            .with_max_ejection_percent(100),
    );
    d.set_hosts([0]);
    for _ in 0..100 {
        assert!(d.report(&0, Outcome::Status(503), s(0)).is_empty());
    }
}

#[test]
fn removed_hosts_leave_the_count_and_unknown_hosts_are_ignored() {
    let mut d = ten_hosts();
    for _ in 0..3 {
        d.report(&0, Outcome::Status(503), s(0));
    }
    d.set_hosts(1..10);
    assert_eq!(d.ejections_active(), 0);
    assert!(d.report(&42, Outcome::Status(503), s(0)).is_empty());
}

#[test]
fn rekeyed_hosts_keep_their_state_and_dropped_hosts_leave() {
    let mut d = ten_hosts();
    for _ in 0..3 {
        d.report(&4, Outcome::Status(503), s(0));
    }
    d.report(&7, Outcome::Status(503), s(0));
    d.report(&7, Outcome::Status(503), s(0));
    // A new endpoint list: host 4 is now index 0, host 7 index 1, the rest gone.
    let mut moved = d.rekeyed(|&k| match k {
        4 => Some(0),
        7 => Some(1),
        _ => None,
    });
    assert_eq!((moved.host_count(), moved.ejections_active()), (2, 1));
    assert!(moved.is_ejected(&0));
    // Host 7's two failures came along: the third ejects it (50% of 2 hosts is
    // over the 10% cap, so it overflows instead).
    let events = moved.report(&1, Outcome::Status(503), s(1));
    assert!(
        matches!(events[..], [Event::Overflow { host: 1, .. }]),
        "{events:?}"
    );
    // The ejection time came along too: back at the first tick 5 s after it.
    assert!(moved.tick(s(4)).is_empty());
    assert!(matches!(
        moved.tick(s(5))[..],
        [Event::Unejected { host: 0, .. }]
    ));
    // Dropping an ejected host takes it out of the active count.
    let d2 = d.rekeyed(|&k| (k != 4).then_some(k));
    assert_eq!(d2.ejections_active(), 0);
}

/// Envoy's router with a cluster `error_matcher` (RouterOutlierDetectionProcessTest):
/// a listed 5xx is reported as itself, a listed status below 500 as 500, and any
/// unlisted status as 200.
#[test]
fn error_codes_decide_what_counts_as_an_error() {
    let cfg = Config::new(s(5))
        .with_consecutive_5xx(Some(3))
        .with_consecutive_gateway(Some(2))
        .with_max_ejection_percent(100)
        .with_error_codes(vec![503, 429]);
    let mut d = Detector::new(cfg);
    d.set_hosts(0..4);
    // 500 is not listed: a success, which resets both counters.
    d.report(&0, Outcome::Status(503), s(0));
    d.report(&0, Outcome::Status(500), s(0));
    assert!(d.report(&0, Outcome::Status(503), s(0)).is_empty());
    // A listed 503 stays a gateway error: the second in a row ejects.
    let events = d.report(&0, Outcome::Status(503), s(0));
    assert_eq!(
        ejected_for(&events),
        Some(Reason::ConsecutiveGatewayFailure),
        "{events:?}"
    );
    // A listed 429 counts as 500: a 5xx but not a gateway error.
    for _ in 0..2 {
        assert!(d.report(&1, Outcome::Status(429), s(0)).is_empty());
    }
    let events = d.report(&1, Outcome::Status(429), s(0));
    assert_eq!(
        ejected_for(&events),
        Some(Reason::Consecutive5xx),
        "{events:?}"
    );
    // Connect failures are not statuses: still 503.
    d.report(&2, Outcome::ConnectFailure, s(0));
    let events = d.report(&2, Outcome::ConnectFailure, s(0));
    assert!(!events.is_empty(), "{events:?}");
}
