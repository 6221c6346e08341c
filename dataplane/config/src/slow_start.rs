//! Envoy's slow start (`slow_start_config`), which Istio writes from a
//! DestinationRule's `loadBalancer.warmup` (or the older `warmupDurationSecs`) for
//! ROUND_ROBIN and LEAST_REQUEST clusters: an endpoint new to the cluster gets a
//! share of its weight that grows over `window`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SlowStart {
    #[serde(with = "crate::duration")]
    pub window: Duration,
    /// The least share of its weight a new endpoint gets, in percent (Envoy's
    /// `min_weight_percent`, default 10).
    #[serde(default = "ten")]
    pub min_weight_percent: f64,
    /// How the share grows: 1 is linear, above 1 faster at first (default 1).
    #[serde(default = "one")]
    pub aggression: f64,
}

fn ten() -> f64 {
    10.0
}

fn one() -> f64 {
    1.0
}

impl SlowStart {
    /// istiod's warmup checks: a window of at least 1 ms, a minimum share in
    /// 0..=100 and an aggression above 0.
    pub(crate) fn validate(&self, at: &str) -> Result<(), crate::Error> {
        if self.window < Duration::from_millis(1) {
            return crate::invalid(
                format!("{at}.window"),
                format!("{:?} is under the minimum of 1ms", self.window),
            );
        }
        if !(0.0..=100.0).contains(&self.min_weight_percent) {
            return crate::invalid(
                format!("{at}.minWeightPercent"),
                format!("{} is not in 0..100", self.min_weight_percent),
            );
        }
        if !(self.aggression.is_finite() && self.aggression > 0.0) {
            return crate::invalid(
                format!("{at}.aggression"),
                format!("{} is not a number above 0", self.aggression),
            );
        }
        Ok(())
    }
}
