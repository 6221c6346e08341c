//! A cluster at run time: its endpoints, its load balancer and its outlier detector
//! (the pure state machines of `crate::lb` and `crate::outlier` behind one lock), its
//! request hash policy, and its upstream connections and circuit breakers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use waypoint_config as config;

use super::connect::Target;
use super::upstream::Upstream;
use crate::access_log::rfc3339_millis;
use crate::hash_policy::{self, Hashed, RequestParts};
use crate::identity::MeshSlot;
use crate::lb::slow_start::SlowStart;
use crate::lb::{Balancer, Candidate, Policy};
use crate::metrics::Metrics;
use crate::outlier::{self, Detector, Event, Outcome};
use crate::rng::Rng;

#[derive(Debug)]
pub struct Endpoint {
    pub address: SocketAddr,
    pub workload: Option<String>,
    /// Reached through an HBONE tunnel to its node (`super::connect`).
    pub hbone: bool,
    weight: u32,
    /// When the address joined the cluster; kept across config changes that keep
    /// it, so that only new endpoints slow-start.
    added: Instant,
    active: AtomicU32,
}

impl Endpoint {
    pub fn begin(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    pub fn end(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct State {
    balancer: Balancer,
    detector: Option<Detector<usize>>,
}

/// The cluster of the same name in the config before, if any. Its endpoints keep
/// the time they joined; when only the endpoint list changed (`same_policy`), the
/// addresses kept also keep their outlier state (ejection, counters, backoff) and
/// the interval timer its phase, as Envoy keeps hosts and the detector across an
/// endpoint update.
#[derive(Clone, Copy)]
pub struct Previous<'a> {
    pub cluster: Option<&'a Cluster>,
    pub same_policy: bool,
}

#[derive(Debug)]
pub struct Cluster {
    pub name: String,
    pub connect_timeout: Duration,
    pub(super) upstream: Arc<Upstream>,
    /// The request hash of a RING_HASH or MAGLEV cluster.
    hash: Option<config::ConsistentHash>,
    pub endpoints: Vec<Endpoint>,
    interval: Option<Duration>,
    /// The clock of the outlier detector and its interval timer.
    epoch: Instant,
    /// Interval ticks run since `epoch`; the next is due at `epoch + (ticks + 1) ·
    /// interval`, so a config change does not move the timer.
    ticks: AtomicU64,
    /// Whether picks read endpoint ages (slow start is configured).
    aged: bool,
    /// Outlier detection splits local-origin errors, so a connection made resets
    /// their count.
    split: bool,
    state: Mutex<State>,
    metrics: Arc<Metrics>,
}

impl Cluster {
    /// The cluster for `c`, after `previous`: see [`Previous`].
    pub fn new(
        c: &config::Cluster,
        previous: Previous<'_>,
        epoch: Instant,
        rng: Rng,
        metrics: Arc<Metrics>,
        mesh: Arc<MeshSlot>,
    ) -> Self {
        let hash = c.load_balancer.is_consistent_hash().then(|| {
            c.consistent_hash
                .clone()
                .unwrap_or_else(config::ConsistentHash::random)
        });
        let policy = balancer_policy(c.load_balancer, hash.as_ref());
        let same = previous.cluster.filter(|_| previous.same_policy);
        // The detector's clock: the previous one's when its state carries over.
        let (clock, ticks) =
            same.map_or((epoch, 0), |p| (p.epoch, p.ticks.load(Ordering::Relaxed)));
        let detector = detector(c, same);
        metrics.set_ejections_active(
            &c.name,
            detector.as_ref().map_or(0, Detector::ejections_active),
        );
        // With outlier detection Istio writes minHealthPercent as the panic threshold;
        // without it Envoy's default of 50% applies.
        let min_health = c
            .outlier_detection
            .as_ref()
            .map_or(50, |od| od.min_health_percent);
        // Hosts sit on the ring by their address, as Envoy keys them.
        let keys = c.endpoints.iter().map(|e| e.address.to_string()).collect();
        Self {
            name: c.name.clone(),
            connect_timeout: c.connect_timeout,
            upstream: Upstream::new(
                &c.name,
                c.endpoints
                    .iter()
                    .map(|e| Target {
                        address: e.address,
                        hbone: e.hbone,
                    })
                    .collect(),
                mesh,
                c.connect_timeout,
                &c.connection_pool,
                c.protocol,
                Arc::clone(&metrics),
            ),
            hash,
            endpoints: c
                .endpoints
                .iter()
                .map(|e| Endpoint {
                    address: e.address,
                    workload: e.workload.clone(),
                    hbone: e.hbone,
                    weight: e.weight,
                    added: previous
                        .cluster
                        .and_then(|p| p.endpoints.iter().find(|k| k.address == e.address))
                        .map_or(epoch, |k| k.added),
                    active: AtomicU32::new(0),
                })
                .collect(),
            interval: c.outlier_detection.as_ref().map(|od| od.interval),
            epoch: clock,
            ticks: AtomicU64::new(ticks),
            aged: c.slow_start.is_some(),
            split: c
                .outlier_detection
                .as_ref()
                .is_some_and(|od| od.split_external_local_origin_errors),
            state: Mutex::new(State {
                balancer: Balancer::new(policy, min_health, rng)
                    .with_host_keys(keys)
                    .with_slow_start(c.slow_start.as_ref().map(SlowStart::from_config)),
                detector,
            }),
            metrics,
        }
    }

    /// The previous cluster's detector with its endpoints' state moved to their new
    /// indexes, by address.
    fn carried_detector(&self, endpoints: &[config::Endpoint]) -> Option<Detector<usize>> {
        let index = |address| endpoints.iter().position(|e| e.address == address);
        let state = self.state();
        let detector = state.detector.as_ref()?;
        Some(detector.rekeyed(|&i| index(self.endpoints.get(i)?.address)))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The request's hash (and a cookie to set) when the cluster hashes requests.
    pub fn hash(&self, parts: &RequestParts<'_>) -> Hashed {
        self.hash
            .as_ref()
            .map(|h| hash_policy::hash(h, parts))
            .unwrap_or_default()
    }

    /// An endpoint index, avoiding `tried` within Envoy's re-pick budget; `hash` is
    /// the request's hash for hashing balancers.
    pub fn pick(&self, tried: &[usize], avoid_tried: bool, hash: Option<u64>) -> Option<usize> {
        let mut state = self.state();
        let candidates = self.candidates(&state);
        state
            .balancer
            .pick_hashed(&candidates, hash, |i| avoid_tried && tried.contains(&i))
    }

    /// Whether a request now would find an endpoint (Envoy's "no healthy upstream"
    /// otherwise), without moving the balancer.
    pub fn has_host(&self) -> bool {
        let state = self.state();
        state.balancer.has_host(&self.candidates(&state))
    }

    fn candidates(&self, state: &State) -> Vec<Candidate> {
        let now = self.aged.then(Instant::now);
        self.endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| Candidate {
                healthy: !state.detector.as_ref().is_some_and(|d| d.is_ejected(&i)),
                active_requests: e.active.load(Ordering::Relaxed),
                weight: e.weight,
                age: now.map_or(Duration::MAX, |now| now.saturating_duration_since(e.added)),
            })
            .collect()
    }

    pub fn report(&self, endpoint: usize, outcome: Outcome) {
        let now = self.epoch.elapsed();
        let (events, active) = match self.state().detector.as_mut() {
            Some(d) => (d.report(&endpoint, outcome, now), d.ejections_active()),
            None => return,
        };
        self.log_events(&events, active);
    }

    /// An attempt to endpoint `i` has its connection (Envoy's `onPoolReady`, which
    /// reports `LocalOriginConnectSuccess`): with split local-origin errors that
    /// resets their count; otherwise it means nothing, so it is not reported.
    pub fn connected(&self, i: usize) {
        if self.split {
            self.report(i, Outcome::ConnectSuccess);
        }
    }

    /// Indexes of the endpoints outlier detection has ejected right now.
    pub fn ejected(&self) -> Vec<usize> {
        let state = self.state();
        (0..self.endpoints.len())
            .filter(|i| state.detector.as_ref().is_some_and(|d| d.is_ejected(i)))
            .collect()
    }

    /// The upstream connections, pending and active requests and retries right now.
    pub fn pool_counts(&self) -> crate::pool::Counts {
        self.upstream.counts()
    }

    /// A byte stream to endpoint `i`, plain or through HBONE as the endpoint is
    /// marked, within the connect timeout; not reported to outlier detection.
    pub async fn open(&self, i: usize) -> Result<super::connect::Stream, super::connect::Error> {
        self.upstream.open(i).await
    }

    /// When the outlier detector's next interval tick is due, when the cluster has
    /// a detector: one interval after the last tick, counted from the detector's
    /// start, whatever config changes came between.
    pub fn next_tick(&self) -> Option<Instant> {
        let interval = self.interval?;
        let ticks = u32::try_from(self.ticks.load(Ordering::Relaxed) + 1).ok()?;
        self.epoch.checked_add(interval.checked_mul(ticks)?)
    }

    pub fn tick(&self) {
        self.ticks.fetch_add(1, Ordering::Relaxed);
        let now = self.epoch.elapsed();
        let (events, active) = match self.state().detector.as_mut() {
            Some(d) => (d.tick(now), d.ejections_active()),
            None => return,
        };
        self.log_events(&events, active);
    }

    /// Ejection log lines on stdout beside the access log, in the seed guide's words;
    /// `active` is the detector's count of ejected endpoints after them.
    fn log_events(&self, events: &[Event<usize>], active: usize) {
        if events.is_empty() {
            return;
        }
        self.metrics.set_ejections_active(&self.name, active);
        for e in events {
            match e {
                Event::Ejected { reason, .. } => {
                    self.metrics.ejection_enforced(&self.name, *reason);
                }
                Event::Overflow { reason, .. } => {
                    self.metrics.ejection_overflow(&self.name, *reason);
                }
                Event::Unejected { .. } => {}
            }
            let (host, text) = match e {
                Event::Ejected {
                    host,
                    reason,
                    count,
                    ejection_time,
                } => (
                    *host,
                    format!(
                        "ejecting endpoint due to {reason} {reason}={count} ejection_time={}s",
                        ejection_time.as_secs()
                    ),
                ),
                Event::Overflow { host, reason } => (
                    *host,
                    format!(
                        "not ejecting endpoint: {reason} reached but maxEjectionPercent would be exceeded"
                    ),
                ),
                Event::Unejected { host, ejected_for } => (
                    *host,
                    format!("unejecting endpoint after {}s", ejected_for.as_secs()),
                ),
            };
            let ep = &self.endpoints[host];
            crate::log_line(&format!(
                "[{}] warn outlier {text} endpoint={} workload=\"{}\" cluster={}",
                rfc3339_millis(SystemTime::now()),
                ep.address,
                ep.workload.as_deref().unwrap_or("-"),
                self.name
            ));
        }
    }
}

fn balancer_policy(lb: config::LoadBalancer, hash: Option<&config::ConsistentHash>) -> Policy {
    match (lb, hash) {
        (config::LoadBalancer::RoundRobin, _) => Policy::RoundRobin,
        (config::LoadBalancer::LeastRequest, _) => Policy::LeastRequest,
        (config::LoadBalancer::RingHash, Some(h)) => Policy::RingHash {
            minimum_ring_size: h.minimum_ring_size,
        },
        (config::LoadBalancer::Maglev, Some(h)) => Policy::Maglev {
            table_size: h.table_size,
        },
        _ => Policy::Random,
    }
}

/// The outlier detector of `c`: `same`'s, carried over, when only the endpoint list
/// changed; else a new one.
fn detector(c: &config::Cluster, same: Option<&Cluster>) -> Option<Detector<usize>> {
    let od = c.outlier_detection.as_ref()?;
    let mut d = same
        .and_then(|p| p.carried_detector(&c.endpoints))
        .unwrap_or_else(|| {
            Detector::new(
                outlier::Config::new(od.base_ejection_time)
                    .with_consecutive_5xx(od.consecutive_5xx_errors)
                    .with_consecutive_gateway(od.consecutive_gateway_errors)
                    .with_interval(od.interval)
                    .with_max_ejection_percent(od.max_ejection_percent)
                    .with_error_codes(od.http_error_codes.clone())
                    .with_split_local_origin(
                        od.split_external_local_origin_errors
                            .then_some(od.consecutive_local_origin_failures),
                    ),
            )
        });
    d.set_hosts(0..c.endpoints.len());
    Some(d)
}
