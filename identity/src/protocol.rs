//! The CA's HTTPS API: `POST /v1/certificates` with `Authorization: Bearer <projected
//! ServiceAccount token>`. JSON in both directions.

use serde::{Deserialize, Serialize};

/// Where the CA listens for certificate requests.
pub const PATH: &str = "/v1/certificates";
/// The audience the workload's projected token must carry.
pub const TOKEN_AUDIENCE: &str = "waypoint-ca";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateRequest {
    /// PKCS#10, PEM.
    pub csr: String,
    /// Requested lifetime; the CA may shorten it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validity_seconds: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertificateResponse {
    /// Leaf first, PEM.
    pub cert_chain: Vec<String>,
    /// Every root the mesh currently trusts, PEM; more than one during a rotation.
    pub roots: Vec<String>,
}

/// What a generated waypoint pod is given to reach the CA: the operator sets these,
/// the dataplane reads them.
pub mod env {
    /// `https://waypoint-ca.<operator namespace>.svc:15012`
    pub const CA_ADDRESS: &str = "WAYPOINT_CA_ADDRESS";
    /// A projected ServiceAccount token with audience [`super::TOKEN_AUDIENCE`],
    /// renewed by the kubelet: read it again before each request.
    pub const CA_TOKEN_FILE: &str = "WAYPOINT_CA_TOKEN_FILE";
    /// PEM trust roots (the `waypoint-mesh-root` ConfigMap), for the CA's serving
    /// certificate and for HBONE peers.
    pub const CA_ROOT_FILE: &str = "WAYPOINT_CA_ROOT_FILE";
    pub const TRUST_DOMAIN: &str = "WAYPOINT_TRUST_DOMAIN";
    pub const IDENTITY_NAMESPACE: &str = "WAYPOINT_IDENTITY_NAMESPACE";
    pub const IDENTITY_SERVICE_ACCOUNT: &str = "WAYPOINT_IDENTITY_SERVICE_ACCOUNT";

    pub const TOKEN_DIR: &str = "/var/run/secrets/tokens/waypoint-ca";
    pub const TOKEN_FILE: &str = "/var/run/secrets/tokens/waypoint-ca/token";
    pub const ROOT_DIR: &str = "/var/run/secrets/waypoint/root";
    pub const ROOT_FILE: &str = "/var/run/secrets/waypoint/root/root-cert.pem";
}
