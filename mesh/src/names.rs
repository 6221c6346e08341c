//! Names, labels and ports users and other tools see. Istio's where the contract
//! says so (`shared/reference/waypoint-contract.md` §1–2), our own controller name so
//! that Istio and we never manage the same object.

pub const WAYPOINT_CLASS: &str = "istio-waypoint";
pub const CONTROLLER_NAME: &str = "waypoint.dev/mesh-controller";
/// The ordinary (ingress) Gateway class: HTTP and HTTPS listeners with HTTPRoutes,
/// served by the same dataplane. Its own controller name, so the two never mix.
pub const INGRESS_CLASS: &str = "waypoint";
pub const INGRESS_CONTROLLER_NAME: &str = "waypoint.dev/gateway-controller";
/// Istio's key with our value: Istio skips objects whose value is not its own.
pub const MANAGED_LABEL: &str = "gateway.istio.io/managed";
pub const MANAGED_VALUE: &str = "waypoint.dev-mesh-controller";
pub const FIELD_MANAGER: &str = "waypoint-operator";

pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
pub const GATEWAY_CLASS_LABEL: &str = "gateway.networking.k8s.io/gateway-class-name";
pub const WAYPOINT_FOR_LABEL: &str = "istio.io/waypoint-for";
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
pub const USE_WAYPOINT: &str = "istio.io/use-waypoint";
pub const USE_WAYPOINT_NAMESPACE: &str = "istio.io/use-waypoint-namespace";
/// Istio's label for ingress gateways that should send traffic through the waypoint.
pub const INGRESS_USE_WAYPOINT: &str = "istio.io/ingress-use-waypoint";
/// The value of `istio.io/use-waypoint` that opts an object out of its namespace's waypoint.
pub const NO_WAYPOINT: &str = "none";

pub const MESH_PORT: i32 = 15008;
pub const METRICS_PORT: i32 = 15020;
pub const STATUS_PORT: i32 = 15021;

/// The ConfigMap holding a waypoint's dataplane config, until the config server
/// streams it.
pub fn config_map_name(gateway: &str) -> String {
    format!("{gateway}-dataplane")
}
