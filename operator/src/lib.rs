//! waypoint-operator: turns each waypoint Gateway into a ServiceAccount, Deployment,
//! Service and dataplane ConfigMap, compiles the Services bound to it into the
//! dataplane's config, and writes honest status. Decision logic (`builders`,
//! `compile`, `status`) is pure; `controller` does the I/O. `ca` is the mesh CA.

pub mod binding;
pub mod bound;
pub mod builders;
pub mod ca;
pub mod compile;
pub mod config_server;
pub mod controller;
pub mod ingress;
pub mod leader;
pub mod metrics;
pub mod overlay;
pub mod status;

pub use waypoint_mesh::names;

#[cfg(test)]
mod fixtures;
