//! The serving certificate, read from files (a mounted Secret) and swapped in place
//! when they change. New handshakes get the new certificate, open connections keep
//! theirs, so rotation fails no admission request.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no usable PEM private key: {reason}")]
    Key { path: PathBuf, reason: String },
}

/// The certificate and key files, by path: the kubelet swaps a mounted Secret
/// through a symlink, so the paths stay and the contents change.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    fn read(&self) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| TlsError::Read {
                path: p.into(),
                source,
            })
        };
        Ok((read(&self.cert)?, read(&self.key)?))
    }

    fn parse(&self, cert: &[u8], key: &[u8]) -> Result<CertifiedKey, TlsError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
            .filter_map(Result::ok)
            .collect();
        if chain.is_empty() {
            return Err(TlsError::NoCertificate {
                path: self.cert.clone(),
            });
        }
        let key_err = |reason: String| TlsError::Key {
            path: self.key.clone(),
            reason,
        };
        let der = PrivateKeyDer::from_pem_slice(key).map_err(|e| key_err(e.to_string()))?;
        let signing = any_supported_type(&der).map_err(|e| key_err(e.to_string()))?;
        Ok(CertifiedKey::new(chain, signing))
    }
}

/// Hands every handshake the newest good certificate.
pub struct ReloadingResolver {
    files: CertFiles,
    current: RwLock<(Arc<CertifiedKey>, Vec<u8>)>,
}

impl fmt::Debug for ReloadingResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingResolver")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ReloadingResolver {
    /// Fails when the files are missing or unusable: a webhook without a
    /// certificate cannot serve anyone.
    pub fn load(files: CertFiles) -> Result<Self, TlsError> {
        let (cert, key) = files.read()?;
        let certified = files.parse(&cert, &key)?;
        Ok(Self {
            current: RwLock::new((Arc::new(certified), fingerprint(&cert, &key))),
            files,
        })
    }

    /// Re-reads the files; swaps when they changed and parse. A half-written or
    /// bad pair keeps the old certificate. Returns whether it swapped.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (cert, key) = self.files.read()?;
        let print = fingerprint(&cert, &key);
        if self.current.read().is_ok_and(|c| c.1 == print) {
            return Ok(false);
        }
        let certified = self.files.parse(&cert, &key)?;
        if let Ok(mut c) = self.current.write() {
            *c = (Arc::new(certified), print);
        }
        Ok(true)
    }

    /// Polls the files forever.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            match self.reload() {
                Ok(true) => {
                    tracing::info!(cert = %self.files.cert.display(), "serving certificate reloaded");
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "serving certificate not reloaded; keeping the previous one");
                }
            }
        }
    }
}

/// The contents themselves: cheap at this size and immune to mtime games.
fn fingerprint(cert: &[u8], key: &[u8]) -> Vec<u8> {
    [cert, key].concat()
}

impl ResolvesServerCert for ReloadingResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| Arc::clone(&c.0))
    }
}

/// TLS 1.2 and 1.3, HTTP/2 preferred: the API server speaks both.
pub fn server_config(
    resolver: Arc<ReloadingResolver>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
