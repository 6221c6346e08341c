//! Seed 001 (Solo "Waypoints (L7)", failover step) as a deterministic simulation over
//! the dataplane's pure parts: round robin, Istio's retry policy and Envoy's outlier
//! detector, driven by an injected clock. The sockets-and-processes version of this
//! journey belongs to the in-process harness and the cluster tests.
//!
//! DestinationRule: ROUND_ROBIN, consecutive5xxErrors 3, interval 10s,
//! baseEjectionTime 30s, maxEjectionPercent 50; three endpoints; one dies
//! (connection refused).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness

use std::collections::BTreeMap;
use std::time::Duration;

use waypoint_dataplane::lb::{Balancer, Candidate, Policy};
use waypoint_dataplane::outlier::{Config, Detector, Event, Outcome, Reason};
use waypoint_dataplane::retry::{Attempt, RetryPolicy};
use waypoint_dataplane::rng::Rng;

const PODS: [&str; 3] = ["in-ambient-abc12", "in-ambient-def34", "in-ambient-ghi56"];
const DEAD: usize = 0;

struct Waypoint {
    lb: Balancer,
    detector: Detector<usize>,
    retry: RetryPolicy,
    dead: bool,
    now: Duration,
    next_tick: Duration,
    attempts: BTreeMap<usize, u32>,
    ejections: Vec<(Duration, Event<usize>)>,
    unejections: Vec<(Duration, Event<usize>)>,
}

impl Waypoint {
    fn new(retry: RetryPolicy, seed: u64) -> Self {
        let cfg = Config::new(Duration::from_secs(30))
            .with_consecutive_5xx(Some(3))
            .with_interval(Duration::from_secs(10))
            .with_max_ejection_percent(50);
        let mut detector = Detector::new(cfg);
        detector.set_hosts(0..PODS.len());
        Self {
            lb: Balancer::new(Policy::RoundRobin, 0, Rng::seeded(seed)),
            detector,
            retry,
            dead: false,
            now: Duration::ZERO,
            next_tick: Duration::from_secs(10),
            attempts: BTreeMap::new(),
            ejections: Vec::new(),
            unejections: Vec::new(),
        }
    }

    /// Moves the clock, firing the interval timer on every 10 s boundary passed.
    fn advance(&mut self, by: Duration) {
        self.now += by;
        while self.next_tick <= self.now {
            let tick = self.next_tick;
            for e in self.detector.tick(tick) {
                self.unejections.push((tick, e));
            }
            self.next_tick += Duration::from_secs(10);
        }
    }

    /// One client request: `Ok(pod)` or `Err(status)` as the client sees it.
    fn request(&mut self) -> Result<&'static str, u16> {
        let mut tried = Vec::new();
        let mut retries = 0;
        loop {
            let candidates: Vec<_> = (0..PODS.len())
                .map(|i| Candidate {
                    healthy: !self.detector.is_ejected(&i),
                    ..Candidate::IDLE
                })
                .collect();
            let avoid = self.retry.avoid_previous_hosts;
            let Some(host) = self.lb.pick(&candidates, |i| avoid && tried.contains(&i)) else {
                return Err(503); // no healthy upstream
            };
            tried.push(host);
            *self.attempts.entry(host).or_default() += 1;
            if self.dead && host == DEAD {
                for e in self
                    .detector
                    .report(&host, Outcome::ConnectFailure, self.now)
                {
                    self.ejections.push((self.now, e));
                }
                if self.retry.should_retry(Attempt::ConnectFailure, retries) {
                    retries += 1;
                    continue;
                }
                return Err(503);
            }
            self.detector.report(&host, Outcome::Status(200), self.now);
            return Ok(PODS[host]);
        }
    }

    /// `for i in $(seq 1 n); do curl ...; sleep 0.5; done`
    fn burst(&mut self, n: usize) -> Vec<Result<&'static str, u16>> {
        (0..n)
            .map(|_| {
                let r = self.request();
                self.advance(Duration::from_millis(500));
                r
            })
            .collect()
    }
}

fn counts(results: &[Result<&'static str, u16>]) -> BTreeMap<&'static str, usize> {
    let mut m = BTreeMap::new();
    for pod in results.iter().flatten() {
        *m.entry(*pod).or_default() += 1;
    }
    m
}

fn journey(retry: RetryPolicy, seed: u64) -> (Waypoint, Vec<Result<&'static str, u16>>) {
    let mut w = Waypoint::new(retry, seed);
    w.advance(Duration::from_secs(3));
    w.dead = true; // kubectl exec ... -- pkill -9 gunicorn
    let first = w.burst(15);
    (w, first)
}

#[test]
fn without_retries_exactly_three_requests_fail_and_the_third_ejects() {
    for seed in 0..20 {
        let (w, results) = journey(RetryPolicy::none(), seed);
        let failures = results.iter().filter(|r| r.is_err()).count();
        assert_eq!(failures, 3, "seed {seed}: {results:?}");
        assert!(
            results
                .iter()
                .filter(|r| r.is_err())
                .all(|r| *r == Err(503))
        );
        assert_eq!(
            w.attempts[&DEAD], 3,
            "seed {seed}: the dead pod saw exactly 3 attempts"
        );
        assert_eq!(w.ejections.len(), 1);
        let (_, ejection) = &w.ejections[0];
        assert_eq!(
            *ejection,
            Event::Ejected {
                host: DEAD,
                reason: Reason::Consecutive5xx,
                count: 3,
                ejection_time: Duration::from_secs(30)
            }
        );
        // After the third failure, nothing more fails.
        let last_failure = results.iter().rposition(Result::is_err).unwrap();
        assert!(results[last_failure + 1..].iter().all(Result::is_ok));
    }
}

#[test]
fn with_istios_default_retries_no_request_fails() {
    for seed in 0..20 {
        let (w, results) = journey(RetryPolicy::istio_default(), seed);
        assert!(
            results.iter().all(Result::is_ok),
            "seed {seed}: {results:?}"
        );
        assert_eq!(
            w.attempts[&DEAD], 3,
            "seed {seed}: exactly 3 attempts reached the dead pod"
        );
        assert!(matches!(
            w.ejections[..],
            [(
                _,
                Event::Ejected {
                    host: DEAD,
                    count: 3,
                    ..
                }
            )]
        ));
    }
}

#[test]
fn the_healthy_pods_share_traffic_evenly_while_one_is_ejected() {
    let (mut w, _) = journey(RetryPolicy::istio_default(), 7);
    let results = w.burst(10);
    let c = counts(&results);
    assert_eq!(c.get(PODS[DEAD]), None);
    assert_eq!(c[PODS[1]], 5);
    assert_eq!(c[PODS[2]], 5);
}

#[test]
fn the_pod_returns_at_the_first_tick_after_thirty_seconds() {
    for seed in 0..10 {
        let (mut w, _) = journey(RetryPolicy::istio_default(), seed);
        let (ejected_at, _) = w.ejections[0];
        w.dead = false; // the container restarted
        w.advance(Duration::from_secs(35)); // sleep 35
        let [
            (
                back_at,
                Event::Unejected {
                    host: DEAD,
                    ejected_for,
                },
            ),
        ] = w.unejections[..]
        else {
            panic!("seed {seed}: {:?}", w.unejections);
        };
        assert!(
            (Duration::from_secs(30)..Duration::from_secs(40)).contains(&ejected_for),
            "seed {seed}: back after {ejected_for:?}"
        );
        assert_eq!(
            back_at.as_millis() % 10_000,
            0,
            "unejection happens on a tick"
        );
        assert!(back_at >= ejected_at + Duration::from_secs(30));
        // All three share traffic again: 12 requests, 4 each.
        let c = counts(&w.burst(12));
        assert_eq!(
            c.values().copied().collect::<Vec<_>>(),
            [4, 4, 4],
            "seed {seed}: {c:?}"
        );
    }
}
