//! Ingress Gateways (class `waypoint`): ordinary Gateway API Gateways with HTTP and
//! HTTPS listeners and the HTTPRoutes attached to them, served by the same dataplane
//! as waypoints. Pure: the controller lists the objects, these modules decide.
//!
//! - `grants`: whether a ReferenceGrant permits a cross-namespace reference;
//! - `listeners`: each listener's verdict (protocol, route kinds, certificates,
//!   conflicts), which becomes its status and the dataplane's listeners;
//! - `attach`: which listeners of a Gateway a route's parentRef attaches to, or why not;
//! - `backends`: a rule's backendRefs resolved, or the reason each is invalid;
//! - `compile`: the dataplane config of one Gateway;
//! - `status`: Gateway, listener and route parent status.

pub mod attach;
pub mod backends;
pub mod compile;
pub mod grants;
pub mod hostnames;
pub mod listeners;
pub mod status;

#[cfg(test)]
mod tests;

/// The Gateway API group, which a route or parentRef kind defaults to.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// A reason and a message for a condition that is not `True`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}
