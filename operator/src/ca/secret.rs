//! The root's home: Secret `waypoint-mesh-ca` in the operator's namespace, keys
//! `ca.crt` and `ca.key`, plus an optional `trust-roots.pem` of extra roots to
//! trust during a rotation. The first replica to start creates it; the others (and
//! every restart) read it, so every replica signs with the same key.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use time::OffsetDateTime;
use waypoint_identity::ca::{self, Ca};

use super::roots;

pub const NAME: &str = "waypoint-mesh-ca";
pub const CERT_KEY: &str = "ca.crt";
pub const KEY_KEY: &str = "ca.key";
pub const TRUST_ROOTS_KEY: &str = "trust-roots.pem";
/// The root's lifetime, as Istio's self-signed root.
pub const ROOT_LIFETIME: Duration = Duration::from_hours(10 * 365 * 24);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Secret {namespace}/{NAME}: key {key} is missing or not UTF-8")]
    MissingKey {
        namespace: String,
        key: &'static str,
    },
    #[error("Secret {namespace}/{NAME}: {source}")]
    Unusable {
        namespace: String,
        source: Box<ca::Error>,
    },
    #[error("Secret {namespace}/{NAME}: {key}: {reason}")]
    TrustRoots {
        namespace: String,
        key: &'static str,
        reason: String,
    },
    #[error("generating the mesh root: {0}")]
    Generate(#[source] Box<ca::Error>),
    #[error("Secret {namespace}/{NAME}: {source}")]
    Kube {
        namespace: String,
        source: Box<kube::Error>,
    },
}

/// The root that signs, and every root workloads should trust (the signing root
/// first).
#[derive(Debug)]
pub struct Loaded {
    pub ca: Ca,
    pub trust_roots: Vec<String>,
}

fn text<'a>(secret: &'a Secret, key: &str) -> Option<&'a str> {
    let bytes = secret.data.as_ref()?.get(key)?;
    std::str::from_utf8(&bytes.0).ok()
}

/// The CA and trust roots a Secret holds.
pub fn from_secret(secret: &Secret, trust_domain: &str) -> Result<Loaded, Error> {
    let namespace = secret.metadata.namespace.clone().unwrap_or_default();
    let get = |key: &'static str| {
        text(secret, key).ok_or_else(|| Error::MissingKey {
            namespace: namespace.clone(),
            key,
        })
    };
    let cert = get(CERT_KEY)?;
    let ca = Ca::from_pem(trust_domain, cert, get(KEY_KEY)?).map_err(|source| Error::Unusable {
        namespace: namespace.clone(),
        source: Box::new(source),
    })?;
    let extra = text(secret, TRUST_ROOTS_KEY).unwrap_or_default();
    let trust_roots = roots::bundle(ca.cert_pem(), extra).map_err(|reason| Error::TrustRoots {
        namespace: namespace.clone(),
        key: TRUST_ROOTS_KEY,
        reason,
    })?;
    Ok(Loaded { ca, trust_roots })
}

/// The Secret that stores `ca`.
pub fn to_secret(ca: &Ca, namespace: &str) -> Secret {
    let bytes = |s: String| ByteString(s.into_bytes());
    Secret {
        metadata: ObjectMeta {
            name: Some(NAME.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                "waypoint-operator".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([
            (CERT_KEY.to_owned(), bytes(ca.cert_pem().to_owned())),
            (KEY_KEY.to_owned(), bytes(ca.key_pem())),
        ])),
        ..Secret::default()
    }
}

/// Reads the root, or creates it when there is none. When two replicas start at
/// once, one create wins and the other reads the winner's root.
pub async fn load_or_create(
    client: &Client,
    namespace: &str,
    trust_domain: &str,
) -> Result<Loaded, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let kube_err = |source| Error::Kube {
        namespace: namespace.to_owned(),
        source: Box::new(source),
    };
    if let Some(existing) = api.get_opt(NAME).await.map_err(kube_err)? {
        tracing::info!(secret = NAME, %namespace, "loaded the mesh root");
        return from_secret(&existing, trust_domain);
    }
    let ca = Ca::generate(trust_domain, OffsetDateTime::now_utc(), ROOT_LIFETIME)
        .map_err(|e| Error::Generate(Box::new(e)))?;
    match api
        .create(&PostParams::default(), &to_secret(&ca, namespace))
        .await
    {
        Ok(created) => {
            tracing::info!(secret = NAME, %namespace, "generated a new mesh root (10 years)");
            from_secret(&created, trust_domain)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            tracing::info!(secret = NAME, %namespace, "another replica created the mesh root first; using it");
            let theirs = api.get(NAME).await.map_err(kube_err)?;
            from_secret(&theirs, trust_domain)
        }
        Err(e) => Err(kube_err(e)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn a_stored_root_reads_back_the_same_and_extra_roots_follow_it() {
        let now = OffsetDateTime::now_utc();
        let ca = Ca::generate("cluster.local", now, ROOT_LIFETIME).unwrap();
        let old = Ca::generate("cluster.local", now, ROOT_LIFETIME).unwrap();
        let mut secret = to_secret(&ca, "waypoint-system");
        let loaded = from_secret(&secret, "cluster.local").unwrap();
        assert_eq!(loaded.ca.cert_pem(), ca.cert_pem());
        assert_eq!(loaded.ca.key_pem(), ca.key_pem());
        assert_eq!(loaded.trust_roots, [ca.cert_pem()]);

        secret.data.as_mut().unwrap().insert(
            TRUST_ROOTS_KEY.to_owned(),
            ByteString(format!("{}{}", old.cert_pem(), ca.cert_pem()).into_bytes()),
        );
        let loaded = from_secret(&secret, "cluster.local").unwrap();
        assert_eq!(loaded.trust_roots, [ca.cert_pem(), old.cert_pem()]);
    }

    #[test]
    fn a_secret_without_the_key_says_which_key() {
        let ca = Ca::generate("cluster.local", OffsetDateTime::now_utc(), ROOT_LIFETIME).unwrap();
        let mut secret = to_secret(&ca, "waypoint-system");
        secret.data.as_mut().unwrap().remove(KEY_KEY);
        assert_eq!(
            from_secret(&secret, "cluster.local")
                .unwrap_err()
                .to_string(),
            "Secret waypoint-system/waypoint-mesh-ca: key ca.key is missing or not UTF-8"
        );
    }
}
