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
