//! Envoy's slow start (`applySlowStartFactor`, traffic-policy.md §3.6): a host new to
//! the cluster gets `weight × max(min_weight, time_factor^(1/aggression))`, where
//! `time_factor` is its age over the window in whole milliseconds (at least 1 ms).

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlowStart {
    pub window: Duration,
    /// The least share of its weight a new host gets, as a fraction (0.1 is 10%).
    pub min_weight: f64,
    pub aggression: f64,
}

impl SlowStart {
    pub fn from_config(c: &waypoint_config::SlowStart) -> Self {
        Self {
            window: c.window,
            min_weight: c.min_weight_percent / 100.0,
            aggression: c.aggression,
        }
    }

    /// The share of its weight a host `age` after it joined gets: 1 once the
    /// window has passed.
    pub fn factor(&self, age: Duration) -> f64 {
        if age >= self.window {
            return 1.0;
        }
        #[allow(clippy::cast_precision_loss)] // milliseconds far below 2^52
        let time = age.as_millis().max(1) as f64 / self.window.as_millis() as f64;
        #[allow(clippy::float_cmp)] // Envoy's shortcut for the exact values
        let grown = if self.aggression == 1.0 || time == 1.0 {
            time
        } else {
            time.powf(1.0 / self.aggression)
        };
        grown.max(self.min_weight)
    }

    /// Whether a host of this age keeps the cluster on weighted picks (Envoy's
    /// `noHostsAreInSlowStart` is false while the newest host is this young).
    pub fn is_warming(&self, age: Duration) -> bool {
        age <= self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slow_start(window_s: u64, min_percent: f64, aggression: f64) -> SlowStart {
        SlowStart::from_config(&waypoint_config::SlowStart {
            window: Duration::from_secs(window_s),
            min_weight_percent: min_percent,
            aggression,
        })
    }

    #[test]
    fn a_linear_ramp_starts_at_the_minimum_and_ends_at_the_full_weight() {
        let s = slow_start(10, 10.0, 1.0);
        let at = |ms| s.factor(Duration::from_millis(ms));
        assert!((at(0) - 0.1).abs() < 1e-12, "{}", at(0));
        assert!((at(999) - 0.1).abs() < 1e-12);
        assert!((at(2_500) - 0.25).abs() < 1e-12);
        assert!((at(9_999) - 0.9999).abs() < 1e-12);
        assert!((at(10_000) - 1.0).abs() < 1e-12);
        assert!((at(60_000) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn aggression_bends_the_ramp() {
        // Aggression 2: the square root of the time factor; 0.5: its square.
        let fast = slow_start(100, 0.0, 2.0);
        let slow = slow_start(100, 0.0, 0.5);
        let age = Duration::from_secs(25);
        assert!((fast.factor(age) - 0.5).abs() < 1e-12);
        assert!((slow.factor(age) - 0.0625).abs() < 1e-12);
        // A host is never weightless: the time factor counts at least 1 ms.
        assert!(slow.factor(Duration::ZERO) > 0.0);
    }

    #[test]
    fn a_host_warms_until_the_window_has_passed() {
        let s = slow_start(30, 10.0, 1.0);
        assert!(s.is_warming(Duration::from_secs(30)));
        assert!(!s.is_warming(Duration::from_millis(30_001)));
    }
}
