//! A workload's side of identity: a key that stays in the process, the CSR sent to
//! the CA, and the credentials (chain, key, roots) assembled from the answer.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::Identity;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("generating the key or CSR: {0}")]
    Generate(#[source] rcgen::Error),
    #[error("{what}: no PEM {kind} found")]
    Missing { what: String, kind: &'static str },
    #[error("{what}: {reason}")]
    Pem { what: String, reason: String },
    #[error("certificate is not valid X.509: {0}")]
    X509(String),
    #[error("the certificate names no SPIFFE identity (URI SANs: {0:?})")]
    NoIdentity(Vec<String>),
    #[error("the certificate was issued for {got}, not {want}")]
    WrongIdentity {
        want: Box<Identity>,
        got: Box<Identity>,
    },
}

/// A key pair and the CSR for `identity`; the key never leaves this value except
/// into the [`Credentials`] it completes.
pub struct Request {
    key: KeyPair,
    identity: Identity,
    csr_pem: String,
}

impl Request {
    pub fn new(identity: &Identity) -> Result<Self, Error> {
        let key = KeyPair::generate().map_err(Error::Generate)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            identity.to_string().try_into().map_err(Error::Generate)?,
        )];
        let csr = params.serialize_request(&key).map_err(Error::Generate)?;
        Ok(Self {
            csr_pem: csr.pem().map_err(Error::Generate)?,
            key,
            identity: identity.clone(),
        })
    }

    pub fn csr_pem(&self) -> &str {
        &self.csr_pem
    }

    /// The credentials from the CA's answer; refuses a leaf for another identity.
    pub fn complete(
        self,
        chain_pem: &[String],
        roots_pem: &[String],
    ) -> Result<Credentials, Error> {
        let creds = Credentials::from_pem(
            &chain_pem.concat(),
            &self.key.serialize_pem(),
            &roots_pem.concat(),
        )?;
        if creds.identity != self.identity {
            return Err(Error::WrongIdentity {
                want: Box::new(self.identity),
                got: Box::new(creds.identity),
            });
        }
        Ok(creds)
    }
}

/// What a workload presents and trusts.
#[derive(Debug)]
pub struct Credentials {
    pub identity: Identity,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub roots: Vec<CertificateDer<'static>>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Clone for Credentials {
    fn clone(&self) -> Self {
        Self {
            identity: self.identity.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            roots: self.roots.clone(),
            not_before: self.not_before,
            not_after: self.not_after,
        }
    }
}

impl Credentials {
    /// From PEM text: the chain (leaf first), the leaf's key and the trusted roots.
    pub fn from_pem(chain_pem: &str, key_pem: &str, roots_pem: &str) -> Result<Self, Error> {
        let chain = certs(chain_pem, "certificate chain")?;
        let roots = certs(roots_pem, "trust roots")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| Error::Pem {
            what: "private key".to_owned(),
            reason: e.to_string(),
        })?;
        let leaf = Leaf::parse(&chain[0])?;
        Ok(Self {
            identity: leaf.identity?,
            chain,
            key,
            roots,
            not_before: leaf.not_before,
            not_after: leaf.not_after,
        })
    }

    /// Renewal is due at half the lifetime, as Istio's agents renew.
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life / 2
    }

    /// The chain as PEM, leaf first.
    pub fn chain_pem(&self) -> String {
        self.chain.iter().map(|c| pem("CERTIFICATE", c)).collect()
    }

    pub fn roots_pem(&self) -> String {
        self.roots.iter().map(|c| pem("CERTIFICATE", c)).collect()
    }
}

fn certs(text: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem {
            what: what.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::Missing {
            what: what.to_owned(),
            kind: "CERTIFICATE",
        });
    }
    Ok(certs)
}

fn pem(label: &str, der: &[u8]) -> String {
    const LINE: usize = 64;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(LINE) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// What HBONE needs from a leaf certificate.
pub struct Leaf {
    pub identity: Result<Identity, Error>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Leaf {
    pub fn parse(der: &[u8]) -> Result<Self, Error> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| Error::X509(e.to_string()))?;
        let uris: Vec<String> = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        GeneralName::URI(u) => Some((*u).to_owned()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let identity = uris
            .iter()
            .find_map(|u| u.parse::<Identity>().ok())
            .ok_or(Error::NoIdentity(uris));
        let at = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or_default());
        Ok(Self {
            identity,
            not_before: at(cert.validity().not_before.timestamp()),
            not_after: at(cert.validity().not_after.timestamp()),
        })
    }
}
