//! Envoy's ring hash (`ring_hash_lb.cc`), host placement and lookup bit for bit.
//!
//! Each host gets `scale · w` entries, `w` its weight over the total (`scale =
//! min(ceil(w_min · minimum) / w_min, maximum)`; with equal weights that is
//! `ceil(minimum / n)` per host). Entry `i` of a host is the XXH64 of `"<key>_<i>"`, where the key is the
//! host's address as Envoy prints it; the ring is sorted by hash and a request hash
//! takes the first entry at or above it, wrapping to the first (ketama).
//!
//! Difference from Istio's Envoy: a waypoint's endpoints there are internal addresses
//! (`envoy://connect_originate/10.244.0.15:8080`), so the same pods sit at other ring
//! positions; the caller chooses the key and we use the plain `ip:port`.

use crate::xxhash::xxh64;

/// A built ring; entries name hosts by the index the caller gave them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ring {
    entries: Vec<(u64, usize)>,
}

impl Ring {
    /// Builds the ring over `hosts` (key, index and weight, in host-set order).
    pub fn build(hosts: &[(&str, usize, u32)], minimum_size: u64, maximum_size: u64) -> Self {
        if hosts.is_empty() {
            return Self {
                entries: Vec::new(),
            };
        }
        // Envoy's arithmetic in doubles, so that fractional shares round the same way.
        let total: f64 = hosts.iter().map(|&(_, _, w)| f64::from(w)).sum();
        let lightest = hosts.iter().map(|&(_, _, w)| w).min().unwrap_or(1);
        #[allow(clippy::cast_precision_loss)] // ring sizes are far below 2^52
        let (min_weight, minimum, maximum) = (
            f64::from(lightest) / total,
            minimum_size as f64,
            maximum_size as f64,
        );
        let scale = ((min_weight * minimum).ceil() / min_weight).min(maximum);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // positive, ≤ maximum
        let mut entries = Vec::with_capacity(scale.ceil() as usize);
        let (mut current, mut target) = (0.0_f64, 0.0_f64);
        for &(key, index, weight) in hosts {
            target += scale * (f64::from(weight) / total);
            let mut i = 0_u64;
            while current < target {
                let hash = xxh64(format!("{key}_{i}").as_bytes(), 0);
                entries.push((hash, index));
                i += 1;
                current += 1.0;
            }
        }
        entries.sort_by_key(|&(hash, _)| hash);
        Self { entries }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The host for request hash `hash`. A retry that must avoid the previous hosts
    /// (`attempt` > 0) walks `attempt` entries further round the ring, as Envoy does;
    /// that may land on the same host again.
    pub fn choose(&self, hash: u64, attempt: u32) -> Option<usize> {
        if self.entries.is_empty() {
            return None;
        }
        let at = self.ketama(hash);
        let at = (at + attempt as usize) % self.entries.len();
        Some(self.entries[at].1)
    }

    /// Envoy's port of libketama's binary search, with its signed bounds and its
    /// fallbacks to entry 0, so that edge hashes (0, above the last entry) agree.
    fn ketama(&self, h: u64) -> usize {
        let size = self.entries.len();
        let (mut low, mut high) = (0_isize, size.cast_signed());
        loop {
            // Both bounds are non-negative here, so rounding is as in C++.
            let mid = isize::midpoint(low, high);
            let Ok(at) = usize::try_from(mid) else {
                return 0;
            };
            if at == size {
                return 0;
            }
            let here = self.entries[at].0;
            let before = if at == 0 { 0 } else { self.entries[at - 1].0 };
            if h <= here && h > before {
                return at;
            }
            if here < h {
                low = mid + 1;
            } else {
                high = mid - 1;
            }
            if low > high {
                return 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    fn ring(keys: &[String], minimum: u64) -> Ring {
        let hosts: Vec<(&str, usize, u32)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.as_str(), i, 1))
            .collect();
        Ring::build(&hosts, minimum, waypoint_config::MAXIMUM_RING_SIZE)
    }

    #[test]
    fn each_host_gets_an_equal_share_of_at_least_the_minimum() {
        assert_eq!(ring(&keys(3), 1024).len(), 1026, "ceil(1024/3) = 342 each");
        assert_eq!(ring(&keys(4), 1024).len(), 1024);
        assert_eq!(ring(&keys(1), 5).len(), 5);
        // The maximum caps the scale: 3 hosts, 1.5 entries each rounds per host.
        let capped = [("a", 0, 1), ("b", 1, 1), ("c", 2, 1), ("d", 3, 1)];
        assert_eq!(Ring::build(&capped, 1024, 6).len(), 6);
        assert!(ring(&[], 1024).is_empty());
        assert_eq!(ring(&[], 1024).choose(7, 0), None);
    }

    #[test]
    fn lookup_takes_the_first_entry_at_or_above_the_hash_and_wraps() {
        let r = ring(&keys(3), 16);
        let (first, last) = (r.entries[0], r.entries[r.len() - 1]);
        assert_eq!(r.choose(first.0, 0), Some(first.1));
        assert_eq!(r.choose(first.0 - 1, 0), Some(first.1));
        assert_eq!(r.choose(last.0, 0), Some(last.1));
        assert_eq!(r.choose(last.0 + 1, 0), Some(first.1), "wraps");
        assert_eq!(r.choose(u64::MAX, 0), Some(first.1));
        for w in r.entries.windows(2) {
            assert_eq!(r.choose(w[0].0 + 1, 0), Some(w[1].1));
        }
        // A retry walks one entry further per attempt.
        assert_eq!(r.choose(first.0, 1), Some(r.entries[1].1));
        assert_eq!(r.choose(last.0, 1), Some(first.1));
    }

    /// Golden values from a Python model of `ring_hash_lb.cc` over libxxhash: the
    /// request hash is XXH64 of the header value `user-<i>`.
    #[test]
    fn placement_matches_envoys_algorithm() {
        let r = ring(&keys(3), 1024);
        let picks: Vec<usize> = (0..12)
            .map(|i| {
                let h = xxh64(format!("user-{i}").as_bytes(), 0);
                r.choose(h, 0).unwrap()
            })
            .collect();
        assert_eq!(picks, GOLDEN_RING);
    }

    #[test]
    fn a_host_gets_entries_in_proportion_to_its_weight() {
        // Weights 1, 2, 3: the lightest gets ceil(1/6 · 1024) = 171 entries, and
        // the scale gives the others 342 and 513.
        let hosts = [("a", 0, 1), ("b", 1, 2), ("c", 2, 3)];
        let r = Ring::build(&hosts, 1024, waypoint_config::MAXIMUM_RING_SIZE);
        let count = |i| r.entries.iter().filter(|e| e.1 == i).count();
        assert_eq!((count(0), count(1), count(2)), (171, 342, 513));
    }

    const GOLDEN_RING: [usize; 12] = [0, 1, 2, 0, 0, 2, 2, 2, 0, 0, 1, 2];
}
