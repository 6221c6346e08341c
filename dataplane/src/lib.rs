//! The waypoint dataplane. It knows nothing of Kubernetes: its input is the typed
//! config model (`waypoint-config`). Decision logic lives in pure state machines over
//! an injected clock (`now` is a `Duration` since an arbitrary epoch): `lb` (with
//! ring hash and Maglev), `outlier`, `retry`, `pool` (connections and circuit
//! breakers), and the pure function `hash_policy`. `proxy` wires them to sockets.

pub mod access_log;
pub mod admin;
pub mod config_client;
pub mod fault;
pub mod filters;
pub mod hash_policy;
pub mod hbone;
pub mod host_match;
pub mod identity;
pub mod lb;
pub mod metrics;
pub mod outlier;
pub mod pool;
pub mod proxy;
pub mod retry;
pub mod rng;
pub mod route_match;
pub mod stdout_log;
pub mod text;
pub mod xxhash;

/// Writes one line to stdout (access log and outlier events), where `kubectl logs`
/// finds it, within [`stdout_log::FLUSH_INTERVAL`].
pub fn log_line(line: &str) {
    stdout_log::line(line);
}
