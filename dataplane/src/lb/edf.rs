//! Envoy's earliest-deadline-first scheduler: weighted round robin over float
//! weights. Each host waits `1 / weight` after its last turn; the host with the
//! earliest deadline goes next (ties in insertion order) and is put back with the
//! weight it has then, so a weight that changes (slow start, active requests) takes
//! effect at the host's next turn. Pure: the weights come from the caller.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Envoy bounds the picks a new schedule emulates (`createWithPicks`).
const MAX_PICKS: u32 = 429_496_729;

#[derive(Clone, Debug, Default)]
pub struct Edf {
    now: f64,
    order: u64,
    queue: BinaryHeap<Entry>,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    deadline: f64,
    order: u64,
    host: usize,
}

impl Ord for Entry {
    /// Reversed, so that the max-heap yields the earliest deadline, then the first in.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .deadline
            .total_cmp(&self.deadline)
            .then(other.order.cmp(&self.order))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Entry {}

impl Edf {
    /// A schedule over `hosts` in the state that `picks` picks from an empty one
    /// would leave (Envoy's `createWithPicks`): a random `picks` gives every
    /// balancer its own starting point. Each host's share of the first `picks` is
    /// placed at once; only the remainder, fewer than `hosts.len()`, is picked.
    pub fn with_picks(hosts: &[usize], picks: u32, weight: impl Fn(usize) -> f64) -> Self {
        let picks = picks % MAX_PICKS;
        // Envoy nudges every weight so that weights that are multiples of each other
        // do not tie on a deadline that one-by-one picking would have ordered.
        let nudged = |h: usize| positive(weight(h)) + 1e-13;
        let total: f64 = hosts.iter().map(|&h| nudged(h)).sum();
        let per_pick = f64::from(picks) / total;
        let mut edf = Self {
            now: 0.0,
            order: hosts.len() as u64,
            queue: BinaryHeap::with_capacity(hosts.len()),
        };
        let mut placed: u32 = 0;
        for (order, &host) in hosts.iter().enumerate() {
            let w = nudged(host);
            // Truncation is the floor: `w * per_pick` is at most `picks`.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let mut done = (w * per_pick) as u32;
            // Floating point can put the floor past the exact share; step back.
            if done > 0 && f64::from(done) / w >= per_pick {
                done -= 1;
            }
            edf.now = edf.now.max(f64::from(done) / w);
            edf.queue.push(Entry {
                deadline: f64::from(done + 1) / w,
                order: order as u64,
                host,
            });
            placed += done;
        }
        while placed < picks {
            edf.pick_and_add(&weight);
            placed += 1;
        }
        edf
    }

    /// The next host, put back with its weight now.
    pub fn pick_and_add(&mut self, weight: impl Fn(usize) -> f64) -> Option<usize> {
        let next = self.queue.pop()?;
        self.now = next.deadline;
        self.queue.push(Entry {
            deadline: self.now + 1.0 / positive(weight(next.host)),
            order: self.order,
            host: next.host,
        });
        self.order += 1;
        Some(next.host)
    }
}

/// Envoy requires weights above 0; a weight that underflowed to 0 waits (almost)
/// forever instead of dividing by zero.
fn positive(w: f64) -> f64 {
    if w > 0.0 { w } else { f64::MIN_POSITIVE }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(edf: &mut Edf, n: usize, picks: usize, weight: impl Fn(usize) -> f64) -> Vec<usize> {
        let mut counts = vec![0; n];
        for _ in 0..picks {
            counts[edf.pick_and_add(&weight).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn hosts_are_picked_in_proportion_to_their_weights() {
        let weights = [1.0, 2.0, 4.0];
        let w = |h: usize| weights[h];
        let mut edf = Edf::with_picks(&[0, 1, 2], 0, w);
        // Every 7 picks is one whole round: 1, 2 and 4.
        assert_eq!(counts(&mut edf, 3, 700, w), [100, 200, 400]);
        // Within a round the heavy host is spread out, not sent in a burst.
        let round: Vec<usize> = (0..7).map(|_| edf.pick_and_add(w).unwrap()).collect();
        assert!(round.windows(3).all(|r| r.contains(&2)), "{round:?}");
    }

    #[test]
    fn equal_weights_take_turns_in_order() {
        let mut edf = Edf::with_picks(&[4, 7, 9], 0, |_| 1.0);
        let picks: Vec<usize> = (0..6).map(|_| edf.pick_and_add(|_| 1.0).unwrap()).collect();
        assert_eq!(picks, [4, 7, 9, 4, 7, 9]);
    }

    fn stepped(hosts: &[usize], picks: u32, w: impl Fn(usize) -> f64) -> Edf {
        let mut edf = Edf::with_picks(hosts, 0, &w);
        for _ in 0..picks {
            edf.pick_and_add(&w);
        }
        edf
    }

    #[test]
    fn a_schedule_with_picks_continues_as_if_it_had_picked_them() {
        // Weights whose deadlines are exact in binary: the same sequence.
        let exact = [1.0, 2.0, 4.0, 0.5];
        let w = |h: usize| exact[h];
        for picks in [0, 1, 3, 23, 24, 113, 1_000] {
            let mut emulated = Edf::with_picks(&[0, 1, 2, 3], picks, w);
            let mut one_by_one = stepped(&[0, 1, 2, 3], picks, w);
            let a: Vec<_> = (0..200)
                .map(|_| emulated.pick_and_add(w).unwrap())
                .collect();
            let b: Vec<_> = (0..200)
                .map(|_| one_by_one.pick_and_add(w).unwrap())
                .collect();
            assert_eq!(a, b, "after {picks} picks");
        }
        // Other weights: rounding may order near ties differently (as in Envoy),
        // never the shares.
        let inexact = [25.0, 75.0, 10.0, 3.5];
        let w = |h: usize| inexact[h];
        for picks in [3, 23, 113, 4_321, 99_999] {
            let mut emulated = Edf::with_picks(&[0, 1, 2, 3], picks, w);
            let mut one_by_one = stepped(&[0, 1, 2, 3], picks, w);
            let a = counts(&mut emulated, 4, 1_135, w);
            let b = counts(&mut one_by_one, 4, 1_135, w);
            for (x, y) in a.iter().zip(&b) {
                assert!(
                    x.abs_diff(*y) <= 1,
                    "after {picks} picks: {a:?} against {b:?}"
                );
            }
        }
    }

    #[test]
    fn a_new_weight_applies_from_the_hosts_next_turn() {
        let mut edf = Edf::with_picks(&[0, 1], 0, |_| 1.0);
        // Host 1 is put back at a tenth of its weight the next time it is picked.
        let w = |h: usize| if h == 1 { 0.1 } else { 1.0 };
        let picks = counts(&mut edf, 2, 110, w);
        assert_eq!(picks, [100, 10]);
    }

    #[test]
    fn a_zero_weight_waits_and_an_empty_schedule_has_no_host() {
        let mut edf = Edf::with_picks(&[0, 1], 5, |h| if h == 0 { 0.0 } else { 1.0 });
        assert_eq!(
            counts(&mut edf, 2, 50, |h| if h == 0 { 0.0 } else { 1.0 })[0],
            0
        );
        assert_eq!(Edf::with_picks(&[], 7, |_| 1.0).pick_and_add(|_| 1.0), None);
    }
}
