//! The dataplane's mesh credentials: loaded from files (standalone mode, Istio's
//! `cert-chain.pem`, `key.pem`, `root-cert.pem`) and swapped whole when they change.
//! New HBONE connections take the config in force; open ones keep theirs, so a
//! renewal drops nothing. The same holds for the outbound HBONE client, rebuilt
//! with every credential change.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use waypoint_hbone::Client;
use waypoint_identity::tls::{self, PeerCheck};
use waypoint_identity::workload::Credentials;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("credentials in {dir}: {source}")]
    Credentials {
        dir: PathBuf,
        source: waypoint_identity::workload::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::Error),
    #[error(transparent)]
    Client(#[from] waypoint_hbone::Error),
}

struct Current {
    credentials: Arc<Credentials>,
    server: Arc<ServerConfig>,
    client: Arc<Client>,
}

/// The credentials in force, the HBONE server config and the outbound HBONE client
/// built from them.
pub struct MeshTls {
    current: RwLock<Current>,
}

impl MeshTls {
    pub fn new(credentials: Credentials) -> Result<Arc<Self>, Error> {
        Ok(Arc::new(Self {
            current: RwLock::new(Self::build(credentials)?),
        }))
    }

    fn build(credentials: Credentials) -> Result<Current, Error> {
        let server = Arc::new(tls::server_config(&credentials)?);
        // Any destination in our trust domain, as Envoy's URI-SAN prefix matcher on
        // `connect_originate`: the node tunnel's identity is not in the config model.
        let peer = PeerCheck::TrustDomain(credentials.identity.trust_domain.clone());
        let client = Arc::new(Client::new(&credentials, peer)?);
        Ok(Current {
            credentials: Arc::new(credentials),
            server,
            client,
        })
    }

    /// Swaps in renewed credentials; on error the old ones stay.
    pub fn set(&self, credentials: Credentials) -> Result<(), Error> {
        let next = Self::build(credentials)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = next;
        Ok(())
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .server,
        )
    }

    pub fn credentials(&self) -> Arc<Credentials> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .credentials,
        )
    }

    /// The outbound HBONE client presenting the credentials in force. Its pooled
    /// HTTP/2 connections belong to these credentials: after a renewal new tunnels
    /// go over new connections, and open ones finish on the old.
    pub fn client(&self) -> Arc<Client> {
        Arc::clone(
            &self
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .client,
        )
    }

    /// Peers from another trust domain are refused (401).
    pub fn trust_domain(&self) -> String {
        self.credentials().identity.trust_domain.clone()
    }
}

/// Where the upstreams find the mesh credentials, if the process has any. One slot
/// per process, shared by every config's runtime so a reload keeps it.
#[derive(Default)]
pub struct MeshSlot(RwLock<Option<Arc<MeshTls>>>);

impl MeshSlot {
    pub fn set(&self, tls: Arc<MeshTls>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Some(tls);
    }

    pub fn get(&self) -> Option<Arc<MeshTls>> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The three PEM files of a credentials directory, as text.
fn read_dir(dir: &Path) -> Result<[String; 3], Error> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| Error::Read { path, source })
    };
    Ok([
        read("cert-chain.pem")?,
        read("key.pem")?,
        read("root-cert.pem")?,
    ])
}

pub fn load_dir(dir: &Path) -> Result<Credentials, Error> {
    let [chain, key, roots] = read_dir(dir)?;
    Credentials::from_pem(&chain, &key, &roots).map_err(|source| Error::Credentials {
        dir: dir.to_owned(),
        source,
    })
}

/// Polls `dir` (a mounted Secret changes through a symlink swap, which path-based
/// inotify misses) and swaps in credentials that changed and parse. A half-written
/// set fails to parse and is retried at the next poll.
pub async fn watch_dir(dir: PathBuf, tls: Arc<MeshTls>) {
    let mut last = read_dir(&dir).ok();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Ok(now) = read_dir(&dir) else { continue };
        if last.as_ref() == Some(&now) {
            continue;
        }
        let [chain, key, roots] = &now;
        match Credentials::from_pem(chain, key, roots)
            .map_err(|source| Error::Credentials {
                dir: dir.clone(),
                source,
            })
            .and_then(|c| tls.set(c))
        {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), identity = %tls.credentials().identity, "mesh credentials reloaded");
                last = Some(now);
            }
            Err(e) => {
                tracing::warn!(error = %e, "mesh credentials changed but are unusable; keeping the old ones");
            }
        }
    }
}

/// Where the mesh CA is and whom to ask for: the pod's env, set by the operator.
#[derive(Clone, Debug)]
pub struct CaSource {
    pub url: http::Uri,
    /// PEM roots for the CA's serving certificate (the mounted root ConfigMap).
    pub root_file: PathBuf,
    /// The projected ServiceAccount token, re-read before each request (the
    /// kubelet rotates it).
    pub token_file: PathBuf,
    pub identity: waypoint_identity::Identity,
    /// The lifetime to ask for; `None`: the CA's default (24 h).
    pub validity: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Client(#[from] waypoint_identity::client::ClientError),
}

/// One certificate request to the CA.
pub async fn fetch(source: &CaSource) -> Result<Credentials, CaError> {
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path).map_err(|e| CaError::Read {
            path: path.clone(),
            source: e,
        })
    };
    let endpoint = waypoint_identity::client::CaEndpoint {
        url: source.url.clone(),
        roots_pem: read(&source.root_file)?,
    };
    let token = read(&source.token_file)?;
    Ok(waypoint_identity::client::request_certificate(
        &endpoint,
        &token,
        &source.identity,
        source.validity,
    )
    .await?)
}

/// The first certificate: retried with backoff (1 s doubling to 30 s) until the CA
/// answers; HBONE cannot be served without it.
pub async fn fetch_until_ok(source: &CaSource) -> Credentials {
    let mut backoff = Duration::from_secs(1);
    loop {
        match fetch(source).await {
            Ok(creds) => return creds,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "no mesh certificate yet");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Renews at half the certificate's lifetime, as Istio's agents do; a failed
/// renewal is retried with backoff while the certificate in force stays.
pub async fn renew(source: CaSource, tls: Arc<MeshTls>) {
    loop {
        tokio::time::sleep(until_renewal(
            &tls.credentials(),
            std::time::SystemTime::now(),
        ))
        .await;
        let creds = fetch_until_ok(&source).await;
        let (identity, expires) = (creds.identity.clone(), creds.not_after);
        match tls.set(creds) {
            Ok(()) => tracing::info!(%identity, ?expires, "mesh certificate renewed"),
            Err(e) => {
                tracing::warn!(error = %e, "renewed mesh certificate is unusable; retrying in 30 s");
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        }
    }
}

/// Half of what is left of the certificate's life at `now`, and at least a second.
/// Measured from now, not from `notBefore`: the CA backdates certificates a minute
/// for clock skew, which would put the half-life of a short certificate in the past
/// and renew in a tight loop.
fn until_renewal(creds: &Credentials, now: std::time::SystemTime) -> Duration {
    let left = creds.not_after.duration_since(now).unwrap_or_default();
    (left / 2).max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use time::OffsetDateTime;
    use waypoint_identity::Identity;
    use waypoint_identity::ca::Ca;
    use waypoint_identity::workload::Request;

    #[test]
    fn a_short_certificate_renews_at_half_its_remaining_life_not_at_once() {
        let ca = Ca::generate(
            "cluster.local",
            OffsetDateTime::now_utc(),
            Duration::from_hours(1),
        )
        .unwrap();
        let id = Identity::new("cluster.local", "ns", "sa");
        let req = Request::new(&id).unwrap();
        let cert = ca
            .sign(
                req.csr_pem(),
                &id,
                OffsetDateTime::now_utc(),
                Duration::from_secs(40),
            )
            .unwrap();
        let creds = req.complete(&[cert], &[ca.cert_pem().to_owned()]).unwrap();
        // Backdated a minute: half of notBefore..notAfter is already past.
        assert!(creds.renew_at() < SystemTime::now());
        // At issue time (40 s before notAfter), renewal is 20 s away.
        let issued = creds.not_after - Duration::from_secs(40);
        assert_eq!(
            super::until_renewal(&creds, issued),
            Duration::from_secs(20)
        );
        // An expired certificate is renewed after a second, not in a loop.
        let later = creds.not_after + Duration::from_hours(1);
        assert_eq!(super::until_renewal(&creds, later), Duration::from_secs(1));
    }
}
