//! waypoint-operator: turns each waypoint Gateway into a ServiceAccount, Deployment,
//! Service and dataplane ConfigMap, and writes honest status. Decision logic
//! (`builders`, `status`) is pure; `controller` does the I/O.

pub mod builders;
pub mod controller;
pub mod names;
pub mod status;
