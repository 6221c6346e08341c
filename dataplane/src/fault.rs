//! Envoy's HTTP fault filter, decided per request: whether to delay it, then whether
//! to abort it, each by its own draw. The filter runs before the router, so a fault
//! is decided once per request, never per retry.

use std::time::Duration;

use waypoint_config::Fault;

/// What the filter does to one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Injected {
    pub delay: Option<Duration>,
    /// The status of the local reply.
    pub abort: Option<u16>,
}

/// `draw` gives uniform 64-bit values (the delay's draw first, as Envoy draws it
/// first).
pub fn decide(fault: &Fault, mut draw: impl FnMut() -> u64) -> Injected {
    Injected {
        delay: fault
            .delay
            .as_ref()
            .filter(|d| d.percentage.admits(draw()))
            .map(|d| d.fixed_delay),
        abort: fault
            .abort
            .as_ref()
            .filter(|a| a.percentage.admits(draw()))
            .map(|a| a.http_status),
    }
}

#[cfg(test)]
mod tests {
    use waypoint_config::{FaultAbort, FaultDelay, Fraction};

    use super::*;

    fn fault(delay_share: u32, abort_share: u32) -> Fault {
        Fault {
            delay: Some(FaultDelay {
                fixed_delay: Duration::from_millis(300),
                percentage: Fraction {
                    numerator: delay_share,
                    denominator: 100,
                },
            }),
            abort: Some(FaultAbort {
                http_status: 503,
                percentage: Fraction {
                    numerator: abort_share,
                    denominator: 100,
                },
            }),
        }
    }

    /// Over draws 0..200 (each value mod 100 once or twice), the counts are exact.
    fn counts(f: &Fault) -> (usize, usize) {
        let mut next = 0u64;
        let mut draw = || {
            next += 1;
            next - 1
        };
        let mut delayed_aborted = (0, 0);
        for _ in 0..100 {
            let injected = decide(f, &mut draw);
            delayed_aborted.0 += usize::from(injected.delay.is_some());
            delayed_aborted.1 += usize::from(injected.abort.is_some());
        }
        delayed_aborted
    }

    #[test]
    fn shares_are_exact_fractions_of_the_draws() {
        assert_eq!(counts(&fault(0, 0)), (0, 0));
        assert_eq!(counts(&fault(100, 100)), (100, 100));
        // Draws alternate delay, abort: the delay sees the even values, the abort the
        // odd ones; 50 of 100 even and 50 of 100 odd values fall under 50 mod 100.
        assert_eq!(counts(&fault(50, 50)), (50, 50));
        assert_eq!(counts(&fault(10, 0)), (10, 0));
    }

    #[test]
    fn the_delay_is_drawn_before_the_abort_and_each_part_is_optional() {
        let mut draws = Vec::new();
        let f = fault(100, 100);
        let injected = decide(&f, || {
            draws.push(draws.len());
            0
        });
        assert_eq!(
            injected,
            Injected {
                delay: Some(Duration::from_millis(300)),
                abort: Some(503)
            }
        );
        assert_eq!(draws, [0, 1]);
        let only_abort = Fault { delay: None, ..f };
        assert_eq!(decide(&only_abort, || 0).delay, None);
        assert_eq!(decide(&Fault::default(), || 0), Injected::default());
    }
}
