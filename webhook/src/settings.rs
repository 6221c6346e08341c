//! What the webhook is told at start-up, parsed once.

use std::collections::BTreeSet;

use waypoint_mesh::names::WAYPOINT_CLASS;

#[derive(Debug, Clone)]
pub struct Settings {
    /// GatewayClass names whose Gateways are waypoints.
    pub waypoint_classes: BTreeSet<String>,
    /// Deny, rather than warn, when `istio.io/use-waypoint` names a Gateway that
    /// does not exist yet. Off by default: GitOps tools apply in any order.
    pub strict: bool,
    /// The label value that marks objects the operator manages (collision checks).
    pub managed_value: String,
    pub cluster_domain: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            waypoint_classes: BTreeSet::from([WAYPOINT_CLASS.to_owned()]),
            strict: false,
            managed_value: waypoint_mesh::names::MANAGED_VALUE.to_owned(),
            cluster_domain: "cluster.local".to_owned(),
        }
    }
}

impl Settings {
    pub fn is_waypoint_class(&self, class: &str) -> bool {
        self.waypoint_classes.contains(class)
    }
}
