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

use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    RoundRobin,
    LeastRequest,
    Random,
}

/// What the balancer needs to know about one endpoint at pick time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub healthy: bool,
    pub active_requests: u32,
}

/// Istio's `host_selection_retry_max_attempts`.
pub const HOST_SELECTION_RETRIES: usize = 5;

#[derive(Clone, Debug)]
pub struct Balancer {
    policy: Policy,
    min_health_percent: u32,
    rr_index: usize,
    rng: Rng,
}

impl Balancer {
    pub fn new(policy: Policy, min_health_percent: u32, mut rng: Rng) -> Self {
        let rr_index = rng.below(usize::MAX);
        Self {
            policy,
            min_health_percent,
            rr_index,
            rng,
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Picks an index into `hosts`, or `None` when no host may be used. `avoid` is the
    /// retry predicate: hosts it rejects are re-picked, a bounded number of times.
    pub fn pick(&mut self, hosts: &[Candidate], avoid: impl Fn(usize) -> bool) -> Option<usize> {
        let source = self.host_source(hosts);
        if source.is_empty() {
            return None;
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

    fn pick_once(&mut self, hosts: &[Candidate], source: &[usize]) -> usize {
        match self.policy {
            Policy::RoundRobin => {
                let i = source[self.rr_index % source.len()];
                self.rr_index = self.rr_index.wrapping_add(1);
                i
            }
            Policy::Random => source[self.rng.below(source.len())],
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

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy(n: usize) -> Vec<Candidate> {
        vec![
            Candidate {
                healthy: true,
                active_requests: 0
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
                active_requests: 0
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
}
