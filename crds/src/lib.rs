//! API types for the Istio-compatible custom resources that waypoint reads, and the
//! CRD manifests generated from them.
//!
//! Gateway API types are not defined here: they come from the `gateway-api` crate,
//! and their CRDs are the upstream bundle stored under `manifests/gateway-api/`.

pub mod crd;
pub mod destination_rule;
pub mod duration;
pub mod virtual_service;

pub use destination_rule::{DestinationRule, DestinationRuleSpec};
pub use duration::Duration;
pub use virtual_service::{VirtualService, VirtualServiceSpec};
