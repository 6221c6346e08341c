//! Envoy's HTTP fault filter as Istio configures it from a VirtualService route's
//! `fault`: a request is delayed, then aborted, each on its own share of requests.
//! Istio writes the share as a fraction of a million (`percentage.value` × 10,000);
//! the model takes any fraction.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Fraction;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    #[serde(with = "crate::duration")]
    pub fixed_delay: Duration,
    pub percentage: Fraction,
}

/// Answered by the proxy itself: `httpStatus` and Envoy's body `fault filter abort`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    pub http_status: u16,
    pub percentage: Fraction,
}

impl Fault {
    /// istiod's checks: a delay of at least 1 ms, an abort status in 200..=599, and
    /// shares between 0 and 1.
    pub(crate) fn validate(&self, at: &str) -> Result<(), crate::Error> {
        if let Some(delay) = &self.delay {
            if delay.fixed_delay < Duration::from_millis(1) {
                return crate::invalid(
                    format!("{at}.delay.fixedDelay"),
                    format!("{:?} is under the minimum of 1ms", delay.fixed_delay),
                );
            }
            delay
                .percentage
                .validate(&format!("{at}.delay.percentage"))?;
        }
        if let Some(abort) = &self.abort {
            if !(200..=599).contains(&abort.http_status) {
                return crate::invalid(
                    format!("{at}.abort.httpStatus"),
                    format!("{} is not an HTTP status in 200..599", abort.http_status),
                );
            }
            abort
                .percentage
                .validate(&format!("{at}.abort.percentage"))?;
        }
        Ok(())
    }
}
