//! Envoy's Maglev table (`maglev_lb.cc`), host placement and lookup bit for bit.
//!
//! Hosts are sorted by key; each has an offset `XXH64(key, 0) % M` and a skip
//! `XXH64(key, 1) % (M - 1) + 1`, and in turns each takes the next free slot of its
//! permutation `offset + skip · j` until all `M` slots (a prime) are filled. A request
//! hash `h` maps to slot `h % M`. A host takes a turn when its share of the
//! weight has caught up with the heaviest host's, so slots follow weights; with
//! equal weights every host gets ⌊M/n⌋ or ⌈M/n⌉. The key caveat of [`super::ring_hash`] applies here too.

use crate::xxhash::xxh64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Maglev {
    /// Slot → index of the host the caller gave.
    table: Vec<usize>,
}

struct Entry {
    index: usize,
    offset: u64,
    skip: u64,
    next: u64,
    weight: f64,
    target_weight: f64,
}

impl Maglev {
    /// Builds the table over `hosts` (key, index and weight); `size` must be a
    /// prime ≥ 2.
    pub fn build(hosts: &[(&str, usize, u32)], size: u64) -> Self {
        if hosts.is_empty() || size < 2 {
            return Self { table: Vec::new() };
        }
        let mut sorted = hosts.to_vec();
        sorted.sort_unstable();
        let total: f64 = hosts.iter().map(|&(_, _, w)| f64::from(w)).sum();
        let mut entries: Vec<Entry> = sorted
            .iter()
            .map(|&(key, index, weight)| Entry {
                index,
                offset: xxh64(key.as_bytes(), 0) % size,
                skip: xxh64(key.as_bytes(), 1) % (size - 1) + 1,
                next: 0,
                weight: f64::from(weight) / total,
                target_weight: 0.0,
            })
            .collect();
        let heaviest = entries.iter().map(|e| e.weight).fold(0.0, f64::max);
        let Ok(slots) = usize::try_from(size) else {
            return Self { table: Vec::new() };
        };
        let mut table: Vec<Option<usize>> = vec![None; slots];
        let mut filled = 0;
        let mut iteration = 1_u32;
        // Envoy's weighted turns: a host takes a slot when iteration · its weight has
        // caught up with its target, which grows by the heaviest weight. With equal
        // weights that is every turn.
        while filled < slots {
            for e in &mut entries {
                if filled == slots {
                    break;
                }
                if f64::from(iteration) * e.weight < e.target_weight {
                    continue;
                }
                e.target_weight += heaviest;
                let mut slot = permutation(e, size);
                while table[slot].is_some() {
                    e.next += 1;
                    slot = permutation(e, size);
                }
                table[slot] = Some(e.index);
                e.next += 1;
                filled += 1;
            }
            iteration += 1;
        }
        Self {
            table: table.into_iter().flatten().collect(),
        }
    }

    /// The host for request hash `hash`. A retry that must avoid the previous hosts
    /// flips the hash with `2^64 - attempt` (Envoy: `hash ^= ~0 - attempt + 1`).
    pub fn choose(&self, hash: u64, attempt: u32) -> Option<usize> {
        let hash = if attempt > 0 {
            hash ^ u64::from(attempt).wrapping_neg()
        } else {
            hash
        };
        let at = usize::try_from(hash % self.table.len().max(1) as u64).ok()?;
        self.table.get(at).copied()
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

fn permutation(e: &Entry, size: u64) -> usize {
    // offset and skip are below `size`, which fits a usize (the table was allocated).
    usize::try_from((e.offset + e.skip * e.next) % size).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("10.0.0.{i}:8080")).collect()
    }

    fn table(keys: &[String], size: u64) -> Maglev {
        let hosts: Vec<(&str, usize, u32)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.as_str(), i, 1))
            .collect();
        Maglev::build(&hosts, size)
    }

    #[test]
    fn every_slot_is_filled_and_hosts_share_evenly() {
        let t = table(&keys(3), 65_537);
        assert_eq!(t.len(), 65_537);
        let mut counts = [0; 3];
        for &i in &t.table {
            counts[i] += 1;
        }
        counts.sort_unstable();
        assert_eq!(counts, [21_845, 21_846, 21_846]);
        assert!(table(&[], 65_537).is_empty());
        assert_eq!(table(&[], 65_537).choose(1, 0), None);
    }

    #[test]
    fn slots_follow_weights() {
        let hosts = [("10.0.0.1:8080", 0, 1), ("10.0.0.2:8080", 1, 3)];
        let t = Maglev::build(&hosts, 65_537);
        let light = t.table.iter().filter(|&&i| i == 0).count();
        // A quarter of the slots, give or take the last round.
        assert!(light.abs_diff(65_537 / 4) <= 1, "{light}");
    }

    /// Golden values from a Python model of `maglev_lb.cc` over libxxhash.
    #[test]
    fn placement_matches_envoys_algorithm() {
        let t = table(&keys(3), 65_537);
        let picks: Vec<usize> = (0..12)
            .map(|i| {
                let h = xxh64(format!("user-{i}").as_bytes(), 0);
                t.choose(h, 0).unwrap()
            })
            .collect();
        assert_eq!(picks, [2, 1, 0, 1, 2, 2, 0, 2, 1, 2, 0, 2]);
        let small = table(&keys(3), 251);
        assert_eq!(
            small.table[..20],
            [2, 1, 0, 1, 1, 1, 0, 2, 2, 1, 0, 0, 1, 1, 2, 2, 2, 1, 0, 0]
        );
    }

    #[test]
    fn a_retry_flips_the_hash() {
        let t = table(&keys(3), 251);
        let h = 12_345_u64;
        assert_eq!(t.choose(h, 0), Some(t.table[(h % 251) as usize]));
        let flipped = h ^ u64::MAX; // attempt 1: ~0 - 1 + 1
        assert_eq!(t.choose(h, 1), Some(t.table[(flipped % 251) as usize]));
    }
}
