//! The TLS configs of HBONE (waypoint-contract §5): TLS 1.3 only, ALPN h2, both
//! sides present a mesh certificate. Chains are verified against the mesh roots;
//! names are SPIFFE URI SANs, which WebPKI's DNS name check cannot express, so the
//! client checks the server's identity itself and the server hands the client's
//! identity to the request handler (a foreign trust domain is answered with 401
//! there, not by a failed handshake).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

use crate::Identity;
use crate::workload::{Credentials, Leaf};

pub const ALPN_H2: &[u8] = b"h2";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("building the TLS config: {0}")]
    Tls(#[from] rustls::Error),
    #[error("the trust roots are unusable: {0}")]
    Roots(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(creds: &Credentials) -> Result<RootCertStore, Error> {
    let mut store = RootCertStore::empty();
    let (_, bad) = store.add_parsable_certificates(creds.roots.iter().cloned());
    if store.is_empty() || bad > 0 {
        return Err(Error::Roots(format!(
            "{} usable of {} roots",
            store.len(),
            creds.roots.len()
        )));
    }
    Ok(store)
}

/// The HBONE listener's config: a client certificate chained to the mesh roots is
/// required.
pub fn server_config(creds: &Credentials) -> Result<ServerConfig, Error> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(creds)?), Arc::clone(&provider))
            .build()
            .map_err(|e| Error::Roots(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(creds.chain.clone(), creds.key.clone_key())?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// Which server identities a client accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerCheck {
    /// Exactly one of these (ztunnel's `upstream_sans`).
    Identities(Vec<Identity>),
    /// Any identity in this trust domain (Envoy's URI-SAN prefix matcher).
    TrustDomain(String),
}

impl PeerCheck {
    pub fn admits(&self, id: &Identity) -> bool {
        match self {
            Self::Identities(ids) => ids.contains(id),
            Self::TrustDomain(td) => &id.trust_domain == td,
        }
    }
}

/// An HBONE client's config: presents `creds`, accepts a server whose chain reaches
/// the mesh roots and whose SPIFFE identity `peer` admits.
pub fn client_config(creds: &Credentials, peer: PeerCheck) -> Result<ClientConfig, Error> {
    let provider = provider();
    let verifier = SpiffeServerVerifier {
        roots: roots(creds)?,
        algorithms: provider.signature_verification_algorithms,
        peer,
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(creds.chain.clone(), creds.key.clone_key())?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// A workload's client config for a mesh control-plane service with a DNS name
/// (the operator's config endpoint): WebPKI verification of that name against the
/// mesh roots, and `creds` presented so the service knows who asks.
pub fn service_client_config(creds: &Credentials) -> Result<ClientConfig, Error> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(creds)?)
        .with_client_auth_cert(creds.chain.clone(), creds.key.clone_key())?)
}

/// The SPIFFE identity in a peer's leaf certificate.
pub fn peer_identity(chain: &[CertificateDer<'_>]) -> Option<Identity> {
    Leaf::parse(chain.first()?).ok()?.identity.ok()
}

#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: RootCertStore,
    algorithms: WebPkiSupportedAlgorithms,
    peer: PeerCheck,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        match peer_identity(std::slice::from_ref(end_entity)) {
            Some(id) if self.peer.admits(&id) => Ok(ServerCertVerified::assertion()),
            Some(id) => Err(rustls::Error::General(format!(
                "server identity {id} is not the expected {:?}",
                self.peer
            ))),
            None => Err(rustls::Error::General(
                "server certificate carries no SPIFFE identity".to_owned(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
