//! The waypoint dataplane. It knows nothing of Kubernetes: its input is the typed
//! config model. This crate holds the decision logic as pure state machines over an
//! injected clock (`now` is a `Duration` since an arbitrary epoch), so that every
//! Envoy semantic it reproduces is tested tick by tick without sockets or sleeps.

pub mod lb;
pub mod outlier;
pub mod retry;
pub mod rng;
