//! Envoy's consecutive-error outlier detector, as Istio configures it
//! (`shared/reference/traffic-policy.md` §1.5 and §2).
//!
//! - Every upstream result is reported; the Nth consecutive error ejects at once.
//! - `maxEjectionPercent` is a hard cap counted over all hosts (Envoy ≥ 1.28: no
//!   "first host is always ejectable" exception), so with the default 10% no host of a
//!   cluster smaller than 10 is ever ejected.
//! - Ejection lasts `min(base × backoff, max)`; un-ejection happens only on interval
//!   ticks, so the real duration is rounded up to the next tick.
//! - Success-rate and failure-percentage detection are off under Istio and absent here.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Detector settings in Envoy's terms, after Istio's translation of a DestinationRule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `consecutive5xxErrors`: unset means 5; an explicit 0 disables (`None`).
    pub consecutive_5xx: Option<u32>,
    /// `consecutiveGatewayErrors`: ejects only when set above 0.
    pub consecutive_gateway: Option<u32>,
    /// `splitExternalLocalOriginErrors`: connect failures, resets and timeouts count
    /// as local-origin errors instead of as 503/504.
    pub split_local_origin: bool,
    /// `consecutiveLocalOriginFailures` (only with the split); Envoy's default is 5.
    pub consecutive_local_origin: Option<u32>,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    /// Istio never sets it, so Envoy's `max(300s, base)` applies.
    pub max_ejection_time: Duration,
    /// 1..=100; Istio maps unset and 0 to 10.
    pub max_ejection_percent: u32,
    /// `outlierDetectionHttpErrorCodes`; empty: every 5xx is an error.
    pub error_codes: Vec<u16>,
}

impl Default for Config {
    /// A DestinationRule with an empty `outlierDetection`.
    fn default() -> Self {
        Self::new(Duration::from_secs(30))
            .with_consecutive_5xx(Some(5))
            .with_interval(Duration::from_secs(10))
    }
}

impl Config {
    /// Envoy's defaults around a base ejection time; the max ejection time follows it.
    pub fn new(base_ejection_time: Duration) -> Self {
        Self {
            consecutive_5xx: Some(5),
            consecutive_gateway: None,
            split_local_origin: false,
            consecutive_local_origin: Some(5),
            interval: Duration::from_secs(10),
            base_ejection_time,
            max_ejection_time: base_ejection_time.max(Duration::from_mins(5)),
            max_ejection_percent: 10,
            error_codes: Vec::new(),
        }
    }

    #[must_use]
    pub fn with_consecutive_5xx(mut self, n: Option<u32>) -> Self {
        self.consecutive_5xx = n.filter(|n| *n > 0);
        self
    }

    #[must_use]
    pub fn with_consecutive_gateway(mut self, n: Option<u32>) -> Self {
        self.consecutive_gateway = n.filter(|n| *n > 0);
        self
    }

    #[must_use]
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    #[must_use]
    pub fn with_max_ejection_percent(mut self, percent: u32) -> Self {
        self.max_ejection_percent = if percent == 0 { 10 } else { percent.min(100) };
        self
    }

    /// Only these statuses are errors (Envoy's cluster `error_matcher`, as Istio
    /// writes `outlierDetectionHttpErrorCodes`).
    #[must_use]
    pub fn with_error_codes(mut self, codes: Vec<u16>) -> Self {
        self.error_codes = codes;
        self
    }

    /// The status a response counts as: with error codes set, a listed status is
    /// an error (a 5xx as itself, anything else as 500) and any other a success
    /// (200), as Envoy's router reports a matcher's verdict.
    fn counted_as(&self, status: u16) -> u16 {
        match (
            self.error_codes.is_empty(),
            self.error_codes.contains(&status),
        ) {
            (true, _) => status,
            (false, true) if status >= 500 => status,
            (false, true) => 500,
            (false, false) => 200,
        }
    }

    /// `Some(threshold)`: `splitExternalLocalOriginErrors` with
    /// `consecutiveLocalOriginFailures`; `None`: no split.
    #[must_use]
    pub fn with_split_local_origin(mut self, consecutive: Option<u32>) -> Self {
        self.split_local_origin = consecutive.is_some();
        self.consecutive_local_origin = consecutive.filter(|n| *n > 0);
        self
    }
}

/// What happened to one upstream attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Response headers arrived with this status (gRPC trailers-only responses are
    /// reported as their mapped HTTP status).
    Status(u16),
    /// TCP connect failed or was refused.
    ConnectFailure,
    /// The stream or connection was reset before a response (not a pool overflow:
    /// overflows are never reported).
    Reset,
    /// Per-try or route timeout.
    Timeout,
    /// A connection was established.
    ConnectSuccess,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Consecutive5xx,
    ConsecutiveGatewayFailure,
    ConsecutiveLocalOriginFailure,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Consecutive5xx => "consecutive_5xx",
            Self::ConsecutiveGatewayFailure => "consecutive_gateway_failure",
            Self::ConsecutiveLocalOriginFailure => "consecutive_local_origin_failure",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<K> {
    /// The host left the load-balancing set for `ejection_time` (rounded up to the
    /// next interval tick in practice).
    Ejected {
        host: K,
        reason: Reason,
        count: u32,
        ejection_time: Duration,
    },
    /// The threshold was reached, but ejecting would exceed maxEjectionPercent.
    Overflow { host: K, reason: Reason },
    /// Back in the set after `ejected_for`.
    Unejected { host: K, ejected_for: Duration },
}

#[derive(Clone, Debug, Default)]
struct HostState {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    consecutive_local_origin: u32,
    ejected: bool,
    backoff: u32,
    num_ejections: u32,
    last_ejection: Option<Duration>,
    last_unejection: Option<Duration>,
}

/// One cluster's detector. `K` identifies an endpoint (its address).
#[derive(Clone, Debug)]
pub struct Detector<K> {
    config: Config,
    hosts: BTreeMap<K, HostState>,
    ejections_active: usize,
}

impl<K: Ord + Clone> Detector<K> {
    pub fn new(config: Config) -> Self {
        Self {
            config,
            hosts: BTreeMap::new(),
            ejections_active: 0,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Replaces the host set: new hosts start clean, state of kept hosts is kept.
    pub fn set_hosts(&mut self, hosts: impl IntoIterator<Item = K>) {
        let mut next = BTreeMap::new();
        for host in hosts {
            let state = self.hosts.remove(&host).unwrap_or_default();
            next.insert(host, state);
        }
        self.hosts = next;
        self.ejections_active = self.hosts.values().filter(|h| h.ejected).count();
    }

    /// The detector with each host renamed by `key`; hosts it maps to `None` are
    /// dropped, as [`Detector::set_hosts`] drops them. Lets a new endpoint list
    /// (new indexes) keep the state of the addresses it keeps.
    #[must_use]
    pub fn rekeyed(&self, key: impl Fn(&K) -> Option<K>) -> Self {
        let hosts: BTreeMap<K, HostState> = self
            .hosts
            .iter()
            .filter_map(|(k, state)| Some((key(k)?, state.clone())))
            .collect();
        let ejections_active = hosts.values().filter(|h| h.ejected).count();
        Self {
            config: self.config.clone(),
            hosts,
            ejections_active,
        }
    }

    pub fn is_ejected(&self, host: &K) -> bool {
        self.hosts.get(host).is_some_and(|h| h.ejected)
    }

    pub fn ejections_active(&self) -> usize {
        self.ejections_active
    }

    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    /// Reports one attempt's result. Ejection, when it happens, is immediate.
    pub fn report(&mut self, host: &K, outcome: Outcome, now: Duration) -> Vec<Event<K>> {
        let split = self.config.split_local_origin;
        let Some(state) = self.hosts.get_mut(host) else {
            return Vec::new();
        };
        let code = match outcome {
            Outcome::Status(code) => Some(self.config.counted_as(code)),
            Outcome::ConnectFailure | Outcome::Reset if !split => Some(503),
            Outcome::Timeout if !split => Some(504),
            Outcome::ConnectFailure | Outcome::Reset | Outcome::Timeout => {
                state.consecutive_local_origin += 1;
                let fired =
                    Some(state.consecutive_local_origin) == self.config.consecutive_local_origin;
                return if fired {
                    self.fire(host, Reason::ConsecutiveLocalOriginFailure, now)
                        .into_iter()
                        .collect()
                } else {
                    Vec::new()
                };
            }
            Outcome::ConnectSuccess => {
                if split {
                    state.consecutive_local_origin = 0;
                }
                None
            }
        };
        let Some(code) = code else { return Vec::new() };
        let mut fired = Vec::new();
        if (500..600).contains(&code) {
            if (502..=504).contains(&code) {
                state.consecutive_gateway += 1;
                if Some(state.consecutive_gateway) == self.config.consecutive_gateway {
                    fired.push(Reason::ConsecutiveGatewayFailure);
                }
            } else {
                state.consecutive_gateway = 0;
            }
            state.consecutive_5xx += 1;
            if Some(state.consecutive_5xx) == self.config.consecutive_5xx {
                fired.push(Reason::Consecutive5xx);
            }
        } else {
            state.consecutive_5xx = 0;
            state.consecutive_gateway = 0;
        }
        fired
            .into_iter()
            .filter_map(|reason| self.fire(host, reason, now))
            .collect()
    }

    /// Envoy's `onConsecutiveErrorWorker`: an ejected host is left alone; otherwise
    /// try to eject, then reset the counter that fired whether or not it ejected.
    fn fire(&mut self, host: &K, reason: Reason, now: Duration) -> Option<Event<K>> {
        if self.hosts.get(host)?.ejected {
            return None;
        }
        let event = self.eject(host, reason, now);
        let state = self.hosts.get_mut(host)?;
        match reason {
            Reason::Consecutive5xx => state.consecutive_5xx = 0,
            Reason::ConsecutiveGatewayFailure => state.consecutive_gateway = 0,
            Reason::ConsecutiveLocalOriginFailure => state.consecutive_local_origin = 0,
        }
        Some(event)
    }

    fn eject(&mut self, host: &K, reason: Reason, now: Duration) -> Event<K> {
        let count = match reason {
            Reason::Consecutive5xx => self.config.consecutive_5xx,
            Reason::ConsecutiveGatewayFailure => self.config.consecutive_gateway,
            Reason::ConsecutiveLocalOriginFailure => self.config.consecutive_local_origin,
        }
        .unwrap_or_default();
        // 100·(active+1)/N <= mep, in integers: no float rounding at the boundary.
        let total = self.hosts.len() as u64;
        let allowed = 100 * (self.ejections_active as u64 + 1)
            <= u64::from(self.config.max_ejection_percent) * total;
        let Some(state) = self.hosts.get_mut(host).filter(|_| allowed) else {
            return Event::Overflow {
                host: host.clone(),
                reason,
            };
        };
        let (base, max) = (
            self.config.base_ejection_time,
            self.config.max_ejection_time,
        );
        state.ejected = true;
        state.num_ejections += 1;
        state.last_ejection = Some(now);
        if base * state.backoff < max + base {
            state.backoff += 1;
        }
        self.ejections_active += 1;
        Event::Ejected {
            host: host.clone(),
            reason,
            count,
            ejection_time: (base * state.backoff).min(max),
        }
    }

    /// The interval timer: un-eject hosts whose time is up, and let the backoff of
    /// hosts that stayed healthy for a whole interval decay by one.
    pub fn tick(&mut self, now: Duration) -> Vec<Event<K>> {
        let (base, max, interval) = (
            self.config.base_ejection_time,
            self.config.max_ejection_time,
            self.config.interval,
        );
        let mut events = Vec::new();
        for (host, state) in &mut self.hosts {
            if let (true, Some(at)) = (state.ejected, state.last_ejection) {
                let ejected_for = now.saturating_sub(at);
                if (base * state.backoff).min(max) <= ejected_for {
                    state.ejected = false;
                    state.last_unejection = Some(now);
                    state.consecutive_5xx = 0;
                    state.consecutive_gateway = 0;
                    state.consecutive_local_origin = 0;
                    self.ejections_active -= 1;
                    events.push(Event::Unejected {
                        host: host.clone(),
                        ejected_for,
                    });
                }
            }
        }
        for state in self.hosts.values_mut() {
            if let (false, Some(at)) = (state.ejected, state.last_unejection)
                && now.saturating_sub(at) >= interval
            {
                state.backoff = state.backoff.saturating_sub(1);
            }
        }
        events
    }
}

#[cfg(test)]
mod tests;
