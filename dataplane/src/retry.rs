//! Istio's retry policy decisions (`shared/reference/traffic-policy.md` §4.1).
//!
//! Istio's default on every waypoint route: 2 retries on `connect-failure`,
//! `refused-stream`, `unavailable` and `cancelled` (plus `retriable-status-codes` with
//! an empty list), avoiding hosts already tried. Plain 500/503 responses are not
//! retried. Back-off is fully jittered exponential from 25 ms, capped at 250 ms.

use std::time::Duration;

use crate::rng::Rng;

/// How one attempt ended, in the terms `retry_on` conditions use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// Response headers arrived; `grpc_status` only when it is in the headers.
    Response {
        status: u16,
        grpc_status: Option<u8>,
    },
    ConnectFailure,
    /// HTTP/2 REFUSED_STREAM from the upstream.
    RefusedStream,
    /// Disconnect or reset after connecting, before a response.
    Reset,
    PerTryTimeout,
}

/// One Envoy `retry_on` condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RetryOn {
    FiveXx,
    GatewayError,
    Reset,
    ConnectFailure,
    Retriable4xx,
    RefusedStream,
    Cancelled,
    DeadlineExceeded,
    Internal,
    ResourceExhausted,
    Unavailable,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub num_retries: u32,
    pub retry_on: Vec<RetryOn>,
    /// `retriable-status-codes`: statuses retried in addition to the conditions.
    pub retriable_status_codes: Vec<u16>,
    /// The `previous_hosts` predicate (off for consistent-hash destinations).
    pub avoid_previous_hosts: bool,
    pub per_try_timeout: Option<Duration>,
    pub base_interval: Duration,
}

impl RetryPolicy {
    /// Istio's default for waypoint routes (Istio ≥ 1.24: 503 is not retried).
    pub fn istio_default() -> Self {
        Self {
            num_retries: 2,
            retry_on: vec![
                RetryOn::ConnectFailure,
                RetryOn::RefusedStream,
                RetryOn::Unavailable,
                RetryOn::Cancelled,
            ],
            retriable_status_codes: Vec::new(),
            avoid_previous_hosts: true,
            per_try_timeout: None,
            base_interval: Duration::from_millis(25),
        }
    }

    /// No retries at all (a VirtualService with `attempts: 0`).
    pub fn none() -> Self {
        Self {
            num_retries: 0,
            ..Self::istio_default()
        }
    }

    /// Whether `attempt` (the `retries_done`-th retry has already happened) is retried.
    pub fn should_retry(&self, attempt: Attempt, retries_done: u32) -> bool {
        retries_done < self.num_retries && self.covers(attempt)
    }

    /// Whether `attempt` would have been retried but the retries ran out: Envoy's
    /// `NoRetryLimitExceeded`, flagged `URX`.
    pub fn exhausted(&self, attempt: Attempt, retries_done: u32) -> bool {
        self.num_retries > 0 && retries_done >= self.num_retries && self.covers(attempt)
    }

    /// Whether `retry_on` names this outcome, whatever the count.
    fn covers(&self, attempt: Attempt) -> bool {
        let on = |c| self.retry_on.contains(&c);
        match attempt {
            Attempt::ConnectFailure => on(RetryOn::ConnectFailure) || on(RetryOn::FiveXx),
            Attempt::RefusedStream => on(RetryOn::RefusedStream) || on(RetryOn::FiveXx),
            Attempt::Reset => on(RetryOn::Reset) || on(RetryOn::FiveXx),
            Attempt::PerTryTimeout => true,
            Attempt::Response {
                status,
                grpc_status,
            } => {
                let grpc = |code, cond| grpc_status == Some(code) && on(cond);
                (on(RetryOn::FiveXx) && (500..600).contains(&status))
                    || (on(RetryOn::GatewayError) && (502..=504).contains(&status))
                    || (on(RetryOn::Retriable4xx) && status == 409)
                    || self.retriable_status_codes.contains(&status)
                    || grpc(1, RetryOn::Cancelled)
                    || grpc(4, RetryOn::DeadlineExceeded)
                    || grpc(13, RetryOn::Internal)
                    || grpc(8, RetryOn::ResourceExhausted)
                    || grpc(14, RetryOn::Unavailable)
            }
        }
    }

    /// Envoy's fully jittered back-off before retry number `n` (1-based): uniform in
    /// `[0, (2^n - 1) · base)`, capped at `10 · base`.
    pub fn backoff(&self, n: u32, rng: &mut Rng) -> Duration {
        let base = self.base_interval;
        let ceiling = base.saturating_mul((1u32 << n.min(20)) - 1).min(base * 10);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX).max(1);
        Duration::from_nanos(rng.next_u64() % nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16) -> Attempt {
        Attempt::Response {
            status,
            grpc_status: None,
        }
    }

    #[test]
    fn istio_default_retries_connect_failures_but_not_503() {
        let p = RetryPolicy::istio_default();
        assert!(p.should_retry(Attempt::ConnectFailure, 0));
        assert!(p.should_retry(Attempt::RefusedStream, 1));
        assert!(
            !p.should_retry(Attempt::ConnectFailure, 2),
            "only 2 retries"
        );
        assert!(!p.should_retry(status(503), 0));
        assert!(!p.should_retry(status(500), 0));
        assert!(
            !p.should_retry(Attempt::Reset, 0),
            "reset is not in Istio's default"
        );
        assert!(p.should_retry(
            Attempt::Response {
                status: 200,
                grpc_status: Some(14)
            },
            0
        ));
        assert!(p.should_retry(
            Attempt::Response {
                status: 200,
                grpc_status: Some(1)
            },
            0
        ));
        assert!(!p.should_retry(
            Attempt::Response {
                status: 200,
                grpc_status: Some(13)
            },
            0
        ));
        assert!(!RetryPolicy::none().should_retry(Attempt::ConnectFailure, 0));
    }

    #[test]
    fn five_xx_and_gateway_error_conditions() {
        let p = RetryPolicy {
            retry_on: vec![RetryOn::GatewayError],
            ..RetryPolicy::istio_default()
        };
        assert!(p.should_retry(status(503), 0));
        assert!(!p.should_retry(status(500), 0));
        let p = RetryPolicy {
            retry_on: vec![RetryOn::FiveXx],
            ..RetryPolicy::istio_default()
        };
        assert!(p.should_retry(status(500), 0));
        assert!(p.should_retry(Attempt::Reset, 0));
        let p = RetryPolicy {
            retriable_status_codes: vec![418],
            ..RetryPolicy::istio_default()
        };
        assert!(p.should_retry(status(418), 0));
    }

    #[test]
    fn backoff_stays_in_envoys_window() {
        let p = RetryPolicy::istio_default();
        let mut rng = Rng::seeded(1);
        for n in 1..8 {
            let cap = Duration::from_millis(25 * ((1 << n) - 1)).min(Duration::from_millis(250));
            for _ in 0..200 {
                assert!(p.backoff(n, &mut rng) < cap, "retry {n}");
            }
        }
    }
}
