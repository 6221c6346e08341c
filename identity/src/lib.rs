//! Mesh identity, shared by the operator (the CA), the dataplane (the HBONE listener)
//! and the HBONE client.
//!
//! A workload is named by a SPIFFE ID, `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`
//! ([`Identity`]). Its private key never leaves it: it sends a CSR
//! ([`workload::Request`]) and the CA ([`ca::Ca`]) signs a short-lived certificate
//! carrying exactly that URI SAN. [`tls`] builds the TLS 1.3, ALPN h2, mutually
//! authenticated configs HBONE uses (waypoint-contract §5) and reads the peer's identity.
//! [`client::request_certificate`] is the workload's side of the CA's HTTPS API.

pub mod ca;
pub mod client;
pub mod protocol;
mod spiffe;
pub mod tls;
pub mod workload;

pub use spiffe::{Identity, ParseError};

/// Istio's default trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
