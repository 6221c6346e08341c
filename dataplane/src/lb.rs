//! Envoy's load balancers as Istio uses them (`shared/reference/traffic-policy.md` §3).
//!
//! - Hosts come from the healthy set (not ejected); when the healthy share falls below
//!   `minHealthPercent` the cluster is in panic and every host is a candidate. Istio
//!   writes 0 whenever outlier detection is set, so by default there is no panic and an
//!   all-ejected cluster has no host (503 "no healthy upstream").
//! - Round robin starts at a random offset; least request draws two hosts at random
//!   (with replacement) and keeps the one with strictly fewer active requests.
//! - A retry's host predicate (previous hosts) is honoured by re-picking up to 5 times;
//!   after that the last pick stands, as Envoy's `host_selection_retry_max_attempts`.
//! - Ring hash and Maglev place hosts by key and weight ([`ring_hash`], [`maglev`]) and pick by a
//!   request hash; without one the hash is random (Envoy's `random()` fallback). The
//!   ring or table is built from the host source (healthy hosts, or all in panic) and
//!   rebuilt whenever that set changes, so an ejection moves the ejected host's keys.
//!   A re-pick for the retry predicate moves along the ring or flips the hash, as in
//!   Envoy; Istio's default retry has no predicate for hashing clusters.
//! - Round robin and least request pick by weight ([`edf`]) when the host source's
//!   weights differ or a host is in its slow-start window ([`slow_start`]); the
//!   schedule is rebuilt when the host source changes, from a random number of
//!   emulated picks, as Envoy's `refresh`. Least request then weighs each host by
//!   `weight / (active + 1)`.

pub mod edf;
pub mod maglev;
pub mod ring_hash;
pub mod slow_start;

use std::time::Duration;

use crate::rng::Rng;
use edf::Edf;
use maglev::Maglev;
use ring_hash::Ring;
use slow_start::SlowStart;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    RoundRobin,
    LeastRequest,
    Random,
    RingHash { minimum_ring_size: u64 },
    Maglev { table_size: u64 },
}

impl Policy {
    pub fn is_hashing(self) -> bool {
        matches!(self, Self::RingHash { .. } | Self::Maglev { .. })
    }
}

/// What the balancer needs to know about one endpoint at pick time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub healthy: bool,
    pub active_requests: u32,
    /// Envoy's `load_balancing_weight`, at least 1.
    pub weight: u32,
    /// How long ago the host joined the cluster (slow start reads it).
    pub age: Duration,
}

impl Candidate {
    /// A healthy, idle host of weight 1 that joined long ago.
    pub const IDLE: Self = Self {
        healthy: true,
        active_requests: 0,
        weight: 1,
        age: Duration::MAX,
    };
}

/// Istio's `host_selection_retry_max_attempts`.
pub const HOST_SELECTION_RETRIES: usize = 5;

#[derive(Clone, Debug)]
pub struct Balancer {
    policy: Policy,
    min_health_percent: u32,
    rr_index: usize,
    rng: Rng,
    /// Hashing policies: each host's placement key, by host index.
    keys: Vec<String>,
    /// The ring or table, with the host source it was built from.
    table: Option<(Vec<usize>, Table)>,
    slow_start: Option<SlowStart>,
    /// Envoy's `seed_`: how many picks a new weighted schedule starts after.
    seed: u32,
    /// Round robin and least request: the weighted schedule, with the host source
    /// it was built from; `None` inside when weights are equal and no host warms.
    schedule: Option<(Vec<usize>, Option<Edf>)>,
}

#[derive(Clone, Debug)]
enum Table {
    Ring(Ring),
    Maglev(Maglev),
}

impl Table {
    fn choose(&self, hash: u64, attempt: u32) -> Option<usize> {
        match self {
            Self::Ring(r) => r.choose(hash, attempt),
            Self::Maglev(m) => m.choose(hash, attempt),
        }
    }
}

impl Balancer {
    pub fn new(policy: Policy, min_health_percent: u32, mut rng: Rng) -> Self {
        let rr_index = rng.below(usize::MAX);
        #[allow(clippy::cast_possible_truncation)] // Envoy takes the seed as 32 bits
        let seed = rng.next_u64() as u32;
        Self {
            policy,
            min_health_percent,
            rr_index,
            rng,
            keys: Vec::new(),
            table: None,
            slow_start: None,
            seed,
            schedule: None,
        }
    }

    /// New hosts ramp up over the window (round robin and least request only).
    #[must_use]
    pub fn with_slow_start(mut self, slow_start: Option<SlowStart>) -> Self {
        self.slow_start = slow_start;
        self.schedule = None;
        self
    }

    /// The keys hashing policies place hosts by, one per host index: the address as
    /// Envoy prints it (`10.244.0.15:8080`). A host without a key uses its index.
    #[must_use]
    pub fn with_host_keys(mut self, keys: Vec<String>) -> Self {
        self.keys = keys;
        self.table = None;
        self
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Picks an index into `hosts`, or `None` when no host may be used. `avoid` is the
    /// retry predicate: hosts it rejects are re-picked, a bounded number of times.
    pub fn pick(&mut self, hosts: &[Candidate], avoid: impl Fn(usize) -> bool) -> Option<usize> {
        self.pick_hashed(hosts, None, avoid)
    }

    /// [`Balancer::pick`] with the request's hash, which only hashing policies use;
    /// `None` (no hash key in the request) draws a random hash.
    pub fn pick_hashed(
        &mut self,
        hosts: &[Candidate],
        hash: Option<u64>,
        avoid: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let source = self.host_source(hosts);
        if source.is_empty() {
            return None;
        }
        if self.policy.is_hashing() {
            let hash = hash.unwrap_or_else(|| self.rng.next_u64());
            let table = self.table_for(hosts, source);
            let mut choice = table.choose(hash, 0)?;
            for attempt in 1..=HOST_SELECTION_RETRIES {
                if !avoid(choice) {
                    break;
                }
                choice = table.choose(hash, u32::try_from(attempt).ok()?)?;
            }
            return Some(choice);
        }
        let mut choice = self.pick_once(hosts, &source);
        for _ in 0..HOST_SELECTION_RETRIES {
            if !avoid(choice) {
                break;
            }
            choice = self.pick_once(hosts, &source);
        }
        Some(choice)
    }

    /// Whether a pick would find a host: some host is healthy, or the cluster is in
    /// panic. Moves no balancer state.
    pub fn has_host(&self, hosts: &[Candidate]) -> bool {
        !self.host_source(hosts).is_empty()
    }

    /// Healthy hosts, or all of them when the cluster is in panic.
    fn host_source(&self, hosts: &[Candidate]) -> Vec<usize> {
        let healthy: Vec<usize> = (0..hosts.len()).filter(|&i| hosts[i].healthy).collect();
        let in_panic = !hosts.is_empty()
            && (healthy.len() as u64) * 100
                < u64::from(self.min_health_percent) * hosts.len() as u64;
        if in_panic {
            (0..hosts.len()).collect()
        } else {
            healthy
        }
    }

    /// The ring or table over `source`, rebuilt only when the set changed.
    fn table_for(&mut self, hosts: &[Candidate], source: Vec<usize>) -> &Table {
        if self
            .table
            .as_ref()
            .is_some_and(|(built, _)| *built != source)
        {
            self.table = None;
        }
        let (policy, keys) = (self.policy, &self.keys);
        let (_, table) = self.table.get_or_insert_with(|| {
            let table = build_table(policy, keys, hosts, &source);
            (source, table)
        });
        table
    }

    fn pick_once(&mut self, hosts: &[Candidate], source: &[usize]) -> usize {
        if let Some(i) = self.pick_scheduled(hosts, source) {
            return i;
        }
        match self.policy {
            Policy::RoundRobin => {
                let i = source[self.rr_index % source.len()];
                self.rr_index = self.rr_index.wrapping_add(1);
                i
            }
            // Hashing policies never get here; a random host is their no-hash fallback.
            Policy::Random | Policy::RingHash { .. } | Policy::Maglev { .. } => {
                source[self.rng.below(source.len())]
            }
            Policy::LeastRequest => {
                let first = source[self.rng.below(source.len())];
                let second = source[self.rng.below(source.len())];
                if hosts[second].active_requests < hosts[first].active_requests {
                    second
                } else {
                    first
                }
            }
        }
    }
}

impl Balancer {
    /// A pick from the weighted schedule, when round robin or least request uses
    /// one for this host source.
    fn pick_scheduled(&mut self, hosts: &[Candidate], source: &[usize]) -> Option<usize> {
        if !matches!(self.policy, Policy::RoundRobin | Policy::LeastRequest) {
            return None;
        }
        let warming = self
            .slow_start
            .filter(|s| hosts.iter().any(|h| h.healthy && s.is_warming(h.age)));
        let policy = self.policy;
        let weight = |i: usize| host_weight(policy, warming.as_ref(), &hosts[i]);
        if self
            .schedule
            .as_ref()
            .is_none_or(|(built, _)| built != source)
        {
            let first = source.first().map(|&i| hosts[i].weight);
            let weighted = source.len() > 1
                && (warming.is_some() || source.iter().any(|&i| Some(hosts[i].weight) != first));
            let edf = weighted.then(|| Edf::with_picks(source, self.seed, weight));
            self.schedule = Some((source.to_vec(), edf));
        }
        self.schedule.as_mut()?.1.as_mut()?.pick_and_add(weight)
    }
}

/// A host's weight at this moment (Envoy's `hostWeight`): least request divides by
/// the active requests plus one, and a warming cluster applies slow start to every
/// healthy host.
fn host_weight(policy: Policy, warming: Option<&SlowStart>, host: &Candidate) -> f64 {
    let mut weight = f64::from(host.weight);
    if policy == Policy::LeastRequest {
        weight /= f64::from(host.active_requests) + 1.0;
    }
    match warming {
        Some(s) if host.healthy => weight * s.factor(host.age),
        _ => weight,
    }
}

fn build_table(policy: Policy, keys: &[String], hosts: &[Candidate], source: &[usize]) -> Table {
    let owned: Vec<(String, usize)> = source
        .iter()
        .map(|&i| (keys.get(i).cloned().unwrap_or_else(|| i.to_string()), i))
        .collect();
    let weighted: Vec<(&str, usize, u32)> = owned
        .iter()
        .map(|(k, i)| (k.as_str(), *i, hosts[*i].weight))
        .collect();
    match policy {
        Policy::Maglev { table_size } => Table::Maglev(Maglev::build(&weighted, table_size)),
        Policy::RingHash { minimum_ring_size } => Table::Ring(Ring::build(
            &weighted,
            minimum_ring_size,
            waypoint_config::MAXIMUM_RING_SIZE,
        )),
        Policy::RoundRobin | Policy::LeastRequest | Policy::Random => {
            Table::Ring(Ring::build(&[], 0, 0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy(n: usize) -> Vec<Candidate> {
        vec![
            Candidate {
                healthy: true,
                active_requests: 0,
                ..Candidate::IDLE
            };
            n
        ]
    }

    #[test]
    fn round_robin_rotates_over_healthy_hosts_from_a_random_offset() {
        let mut hosts = healthy(3);
        let mut b = Balancer::new(Policy::RoundRobin, 0, Rng::seeded(7));
        let picks: Vec<_> = (0..6).map(|_| b.pick(&hosts, |_| false).unwrap()).collect();
        assert_eq!(picks[..3], picks[3..]);
        let mut sorted = picks[..3].to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 2]);
        hosts[1].healthy = false;
        let picks: Vec<_> = (0..4).map(|_| b.pick(&hosts, |_| false).unwrap()).collect();
        assert!(!picks.contains(&1));
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 2);
        // Different seeds start at different offsets.
        let starts: std::collections::BTreeSet<_> = (0..20)
            .map(|seed| {
                Balancer::new(Policy::RoundRobin, 0, Rng::seeded(seed)).pick(&healthy(3), |_| false)
            })
            .collect();
        assert!(starts.len() > 1);
    }

    #[test]
    fn no_healthy_host_means_no_pick_unless_in_panic() {
        let hosts = vec![
            Candidate {
                healthy: false,
                active_requests: 0,
                ..Candidate::IDLE
            };
            2
        ];
        assert_eq!(
            Balancer::new(Policy::RoundRobin, 0, Rng::seeded(1)).pick(&hosts, |_| false),
            None
        );
        // minHealthPercent 50: 0% healthy is panic, every host is a candidate.
        assert!(
            Balancer::new(Policy::RoundRobin, 50, Rng::seeded(1))
                .pick(&hosts, |_| false)
                .is_some()
        );
        assert_eq!(
            Balancer::new(Policy::Random, 0, Rng::seeded(1)).pick(&[], |_| false),
            None
        );
    }

    #[test]
    fn panic_threshold_compares_the_healthy_share() {
        let mut hosts = healthy(4);
        hosts[0].healthy = false;
        hosts[1].healthy = false;
        // 50% healthy is not below 50: no panic, unhealthy hosts never picked.
        let mut b = Balancer::new(Policy::RoundRobin, 50, Rng::seeded(3));
        assert!((0..40).all(|_| b.pick(&hosts, |_| false).unwrap() >= 2));
        // Below 60: panic, all four appear.
        let mut b = Balancer::new(Policy::RoundRobin, 60, Rng::seeded(3));
        let seen: std::collections::BTreeSet<_> = (0..40)
            .map(|_| b.pick(&hosts, |_| false).unwrap())
            .collect();
        assert_eq!(seen.len(), 4);
    }

    #[test]
    fn least_request_prefers_the_less_loaded_of_two_draws() {
        let mut hosts = healthy(2);
        hosts[0].active_requests = 10;
        let mut b = Balancer::new(Policy::LeastRequest, 0, Rng::seeded(11));
        let picks: Vec<_> = (0..1000)
            .map(|_| b.pick(&hosts, |_| false).unwrap())
            .collect();
        // Host 0 wins only when both draws land on it: about 1/4 of the time.
        let zeros = picks.iter().filter(|&&i| i == 0).count();
        assert!((180..320).contains(&zeros), "host 0 picked {zeros} times");
    }

    #[test]
    fn random_covers_all_hosts_evenly() {
        let hosts = healthy(4);
        let mut b = Balancer::new(Policy::Random, 0, Rng::seeded(5));
        let mut counts = [0u32; 4];
        for _ in 0..4000 {
            counts[b.pick(&hosts, |_| false).unwrap()] += 1;
        }
        assert!(
            counts.iter().all(|&c| (850..1150).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn previous_hosts_are_avoided_within_the_retry_budget() {
        let hosts = healthy(3);
        let mut b = Balancer::new(Policy::Random, 0, Rng::seeded(9));
        for _ in 0..200 {
            assert_ne!(b.pick(&hosts, |i| i == 0), Some(0));
        }
        // When every host is avoided, the last pick stands.
        assert!(b.pick(&hosts, |_| true).is_some());
    }

    fn hashing(policy: Policy, n: usize) -> Balancer {
        let keys = (0..n)
            .map(|i| format!("10.0.{}.{}:8080", i / 250, i % 250))
            .collect();
        Balancer::new(policy, 0, Rng::seeded(21)).with_host_keys(keys)
    }

    const RING: Policy = Policy::RingHash {
        minimum_ring_size: 1024,
    };
    const MAGLEV: Policy = Policy::Maglev { table_size: 65_537 };

    #[allow(clippy::unnecessary_wraps)] // the shape `pick_hashed` takes
    fn key_hash(i: u64) -> Option<u64> {
        Some(crate::xxhash::xxh64(format!("user-{i}").as_bytes(), 0))
    }

    #[test]
    fn the_same_hash_goes_to_the_same_host() {
        for policy in [RING, MAGLEV] {
            let hosts = healthy(5);
            let mut b = hashing(policy, 5);
            for i in 0..50 {
                let first = b.pick_hashed(&hosts, key_hash(i), |_| false);
                for _ in 0..3 {
                    assert_eq!(b.pick_hashed(&hosts, key_hash(i), |_| false), first);
                }
            }
            // Different hashes spread over every host.
            let seen: std::collections::BTreeSet<_> = (0..200)
                .map(|i| b.pick_hashed(&hosts, key_hash(i), |_| false))
                .collect();
            assert_eq!(seen.len(), 5, "{policy:?}");
        }
    }

    /// Share of 10 000 keys whose host changes when host 3 of `n` is ejected, and
    /// whether every key of a surviving host that moved is counted.
    fn moved_share(policy: Policy, n: usize) -> (f64, usize) {
        let mut hosts = healthy(n);
        let mut b = hashing(policy, n);
        let before: Vec<_> = (0..10_000)
            .map(|i| b.pick_hashed(&hosts, key_hash(i), |_| false).unwrap())
            .collect();
        hosts[3].healthy = false;
        let after: Vec<_> = (0..10_000)
            .map(|i| b.pick_hashed(&hosts, key_hash(i), |_| false).unwrap())
            .collect();
        assert!(!after.contains(&3), "the ejected host leaves the ring");
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let bystanders = before
            .iter()
            .zip(&after)
            .filter(|(a, b)| **a != 3 && a != b)
            .count();
        (
            f64::from(u32::try_from(moved).unwrap()) / 10_000.0,
            bystanders,
        )
    }

    #[test]
    fn removing_one_host_moves_about_one_nth_of_the_keys() {
        // Ring: host 3's keys (1/10) move, and the nine others grow from 103 to 114
        // entries each (Envoy rescales to keep the minimum size), taking about another
        // 1/10 from each other: 17% in all, 8% of them bystanders.
        let (ring, ring_bystanders) = moved_share(RING, 10);
        assert!((0.09..0.22).contains(&ring), "ring moved {ring}");
        assert!(
            ring_bystanders < 1_100,
            "{ring_bystanders} keys of other hosts moved"
        );
        // Maglev refills the table from the same permutations: little beyond host 3.
        let (maglev, maglev_bystanders) = moved_share(MAGLEV, 10);
        assert!((0.09..0.15).contains(&maglev), "maglev moved {maglev}");
        assert!(
            maglev_bystanders < 500,
            "{maglev_bystanders} keys of other hosts moved"
        );
    }

    #[test]
    fn without_a_hash_each_request_takes_a_random_host() {
        for policy in [RING, MAGLEV] {
            let hosts = healthy(4);
            let mut b = hashing(policy, 4);
            let mut counts = [0u32; 4];
            for _ in 0..4000 {
                counts[b.pick_hashed(&hosts, None, |_| false).unwrap()] += 1;
            }
            assert!(
                counts.iter().all(|&c| (800..1200).contains(&c)),
                "{policy:?} {counts:?}"
            );
        }
    }

    #[test]
    fn the_table_is_rebuilt_when_the_healthy_set_changes() {
        let mut hosts = healthy(3);
        let mut b = hashing(RING, 3);
        let h = key_hash(7);
        let home = b.pick_hashed(&hosts, h, |_| false).unwrap();
        hosts[home].healthy = false;
        let away = b.pick_hashed(&hosts, h, |_| false).unwrap();
        assert_ne!(away, home);
        hosts[home].healthy = true;
        assert_eq!(b.pick_hashed(&hosts, h, |_| false), Some(home), "back home");
        for c in &mut hosts {
            c.healthy = false;
        }
        assert_eq!(b.pick_hashed(&hosts, h, |_| false), None);
    }

    #[test]
    fn a_retry_without_the_predicate_returns_to_the_hashed_host() {
        let hosts = healthy(3);
        for policy in [RING, MAGLEV] {
            let mut b = hashing(policy, 3);
            let h = key_hash(11);
            let home = b.pick_hashed(&hosts, h, |_| false).unwrap();
            // Istio's default for hashing clusters: no previous-hosts predicate.
            assert_eq!(b.pick_hashed(&hosts, h, |_| false), Some(home));
            // With the predicate, Envoy's offsets find another host within 5 re-picks.
            let other = b.pick_hashed(&hosts, h, |i| i == home).unwrap();
            assert_ne!(other, home, "{policy:?}");
        }
    }

    fn weighted(weights: &[u32]) -> Vec<Candidate> {
        weights
            .iter()
            .map(|&weight| Candidate {
                weight,
                ..Candidate::IDLE
            })
            .collect()
    }

    fn shares(b: &mut Balancer, hosts: &[Candidate], picks: usize) -> Vec<usize> {
        let mut counts = vec![0; hosts.len()];
        for _ in 0..picks {
            counts[b.pick(hosts, |_| false).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn round_robin_follows_endpoint_weights_from_a_random_point() {
        let mut hosts = weighted(&[1, 3, 2]);
        let mut b = Balancer::new(Policy::RoundRobin, 0, Rng::seeded(3));
        let counts = shares(&mut b, &hosts, 600);
        for (got, want) in counts.iter().zip([100, 300, 200]) {
            assert!(got.abs_diff(want) <= 1, "{counts:?}");
        }
        // An ejection rebuilds the schedule over the healthy hosts.
        hosts[1].healthy = false;
        let counts = shares(&mut b, &hosts, 300);
        assert_eq!(counts[1], 0);
        assert!(
            counts[0].abs_diff(100) <= 1 && counts[2].abs_diff(200) <= 1,
            "{counts:?}"
        );
        // Each balancer's schedule starts somewhere of its own.
        let firsts: std::collections::BTreeSet<Vec<usize>> = (0..20)
            .map(|seed| {
                let mut b = Balancer::new(Policy::RoundRobin, 0, Rng::seeded(seed));
                (0..3)
                    .map(|_| b.pick(&weighted(&[1, 3, 2]), |_| false).unwrap())
                    .collect()
            })
            .collect();
        assert!(firsts.len() > 1);
    }

    #[test]
    fn least_request_with_weights_divides_each_by_its_active_requests() {
        // Weights 4 and 1; 3 requests active on the first: 4/4 against 1/1, even.
        let mut hosts = weighted(&[4, 1]);
        hosts[0].active_requests = 3;
        let mut b = Balancer::new(Policy::LeastRequest, 0, Rng::seeded(9));
        let counts = shares(&mut b, &hosts, 400);
        assert!(counts[0].abs_diff(200) <= 2, "{counts:?}");
        // Idle: 4 to 1.
        hosts[0].active_requests = 0;
        let counts = shares(&mut b, &hosts, 500);
        assert!(counts[0].abs_diff(400) <= 2, "{counts:?}");
    }

    fn warming(policy: Policy) -> Balancer {
        let ramp = SlowStart {
            window: Duration::from_secs(10),
            min_weight: 0.1,
            aggression: 1.0,
        };
        Balancer::new(policy, 0, Rng::seeded(5)).with_slow_start(Some(ramp))
    }

    #[test]
    fn a_new_host_ramps_up_over_the_slow_start_window() {
        for policy in [Policy::RoundRobin, Policy::LeastRequest] {
            // Two hosts long in the cluster and one that just joined.
            let mut hosts = weighted(&[1, 1, 1]);
            hosts[2].age = Duration::ZERO;
            let mut b = warming(policy);
            // 0.1 of a weight against 1 and 1: 100 of 2,100 picks.
            let counts = shares(&mut b, &hosts, 2_100);
            assert!(counts[2].abs_diff(100) <= 2, "{policy:?}: {counts:?}");
            // Half way through the window: 0.5 against 1 and 1, one pick in five.
            hosts[2].age = Duration::from_secs(5);
            shares(&mut b, &hosts, 10);
            let counts = shares(&mut b, &hosts, 2_500);
            assert!(counts[2].abs_diff(500) <= 2, "{policy:?}: {counts:?}");
            // Past the window: an equal share.
            hosts[2].age = Duration::from_secs(11);
            shares(&mut b, &hosts, 10);
            let counts = shares(&mut b, &hosts, 3_000);
            assert!(counts[2].abs_diff(1_000) <= 2, "{policy:?}: {counts:?}");
        }
    }

    #[test]
    fn slow_start_does_nothing_when_every_host_is_new() {
        let mut hosts = weighted(&[1, 1, 1]);
        for h in &mut hosts {
            h.age = Duration::from_millis(20);
        }
        let counts = shares(&mut warming(Policy::RoundRobin), &hosts, 300);
        assert_eq!(counts, [100, 100, 100]);
    }
}
