//! The trust roots in every namespace: ConfigMap `waypoint-mesh-root`, key
//! `root-cert.pem` (Istio's `istio-ca-root-cert` pattern), so that a pod can mount
//! what it needs to trust the CA and its peers. The leader keeps them equal to the
//! roots from the CA Secret and writes only when one differs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt as _};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::metrics::Metrics;

pub const CONFIG_MAP: &str = "waypoint-mesh-root";
pub const KEY: &str = "root-cert.pem";
const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

/// The roots to trust: the signing root first, then each extra root not already
/// listed, each as one normalised PEM block. Text outside the blocks (comments) is
/// dropped; a block that is not a certificate is an error, because silently
/// trusting less than asked would break a rotation.
pub fn bundle(signing_root: &str, extra: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    let mut seen: Vec<Vec<u8>> = Vec::new();
    for (what, text) in [("the signing root", signing_root), ("extra roots", extra)] {
        let mut rest = text;
        while let Some(start) = rest.find(BEGIN) {
            let end = rest[start..]
                .find(END)
                .map(|e| start + e + END.len())
                .ok_or_else(|| format!("{what}: a certificate block has no END line"))?;
            let block = format!("{}\n", &rest[start..end]);
            let der = CertificateDer::from_pem_slice(block.as_bytes())
                .map_err(|e| format!("{what}: {e}"))?;
            if !seen.iter().any(|d| d.as_slice() == der.as_ref()) {
                seen.push(der.to_vec());
                out.push(block);
            }
            rest = &rest[end..];
        }
    }
    if out.is_empty() {
        return Err("no certificate found".to_owned());
    }
    Ok(out)
}

/// What the root ConfigMap of one namespace needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Create,
    Update,
    Nothing,
}

/// Create when missing, update when its roots differ, otherwise leave it alone;
/// nothing in a terminating namespace (the API server refuses creates there).
pub fn decide(namespace: &Namespace, existing: Option<&ConfigMap>, roots: &str) -> Write {
    let terminating = namespace.metadata.deletion_timestamp.is_some()
        || namespace.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating");
    if terminating {
        return Write::Nothing;
    }
    match existing {
        None => Write::Create,
        Some(cm)
            if cm
                .data
                .as_ref()
                .and_then(|d| d.get(KEY))
                .map(String::as_str)
                == Some(roots) =>
        {
            Write::Nothing
        }
        Some(_) => Write::Update,
    }
}

/// The ConfigMap as we want it (also the merge patch of an update).
pub fn desired(namespace: &str, roots: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(CONFIG_MAP.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                "waypoint-operator".to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(KEY.to_owned(), roots.to_owned())])),
        ..ConfigMap::default()
    }
}

struct Publisher {
    client: Client,
    roots: String,
    metrics: Arc<Metrics>,
}

async fn reconcile(ns: Arc<Namespace>, p: Arc<Publisher>) -> Result<Action, kube::Error> {
    let name = ns.name_any();
    let api: Api<ConfigMap> = Api::namespaced(p.client.clone(), &name);
    let existing = api.get_opt(CONFIG_MAP).await?;
    let write = decide(&ns, existing.as_ref(), &p.roots);
    let want = desired(&name, &p.roots);
    match write {
        Write::Nothing => return Ok(Action::await_change()),
        Write::Create => match api.create(&PostParams::default(), &want).await {
            Ok(_) => {}
            // Created since our read; its event brings us back to compare.
            Err(kube::Error::Api(e)) if e.code == 409 => return Ok(Action::await_change()),
            Err(e) => return Err(e),
        },
        Write::Update => {
            api.patch(CONFIG_MAP, &PatchParams::default(), &Patch::Merge(&want))
                .await?;
        }
    }
    p.metrics.root_written();
    tracing::info!(namespace = %name, configmap = CONFIG_MAP, action = ?write, "published the mesh trust roots");
    Ok(Action::await_change())
}

/// Keeps `waypoint-mesh-root` equal to `roots` in every namespace: a new namespace
/// gets it, an edited or deleted one is put back. Runs until SIGTERM/SIGINT.
pub async fn publish(client: Client, roots: String, metrics: Arc<Metrics>) {
    let ctx = Arc::new(Publisher {
        client: client.clone(),
        roots,
        metrics,
    });
    Controller::new(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .watches(
        Api::<ConfigMap>::all(client),
        watcher::Config::default().fields(&format!("metadata.name={CONFIG_MAP}")),
        |cm| cm.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns)),
    )
    .shutdown_on_signal()
    .run(
        reconcile,
        |_, error, _| {
            tracing::warn!(%error, "publishing the mesh roots failed; retrying");
            Action::requeue(Duration::from_secs(5))
        },
        ctx,
    )
    .for_each(|_| async {})
    .await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use k8s_openapi::api::core::v1::NamespaceStatus;
    use time::OffsetDateTime;
    use waypoint_identity::ca::Ca;

    use super::*;

    fn root() -> String {
        Ca::generate(
            "cluster.local",
            OffsetDateTime::now_utc(),
            Duration::from_hours(1),
        )
        .unwrap()
        .cert_pem()
        .to_owned()
    }

    #[test]
    fn the_bundle_lists_each_root_once_signing_root_first() {
        let (new, old) = (root(), root());
        let extra = format!("# the root before the rotation\n{old}\n{new}");
        let got = bundle(&new, &extra).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].trim(), new.trim());
        assert_eq!(got[1].trim(), old.trim());
        assert_eq!(bundle(&new, "").unwrap().len(), 1);
    }

    #[test]
    fn the_bundle_refuses_a_broken_extra_root() {
        let new = root();
        let cut = &new[..new.len() - 30];
        assert!(bundle(&new, cut).unwrap_err().contains("no END line"));
        let garbage = format!("{BEGIN}\nnot base64 at all!\n{END}\n");
        assert!(
            bundle(&new, &garbage)
                .unwrap_err()
                .starts_with("extra roots: ")
        );
        assert_eq!(bundle("", "").unwrap_err(), "no certificate found");
    }

    #[test]
    fn writes_only_what_differs() {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some("httpbin".into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let roots = root();
        assert_eq!(decide(&ns, None, &roots), Write::Create);
        let same = desired("httpbin", &roots);
        assert_eq!(decide(&ns, Some(&same), &roots), Write::Nothing);
        let stale = desired("httpbin", &root());
        assert_eq!(decide(&ns, Some(&stale), &roots), Write::Update);
        let mut emptied = same.clone();
        emptied.data = None;
        assert_eq!(decide(&ns, Some(&emptied), &roots), Write::Update);

        let mut gone = ns.clone();
        gone.status = Some(NamespaceStatus {
            phase: Some("Terminating".into()),
            ..NamespaceStatus::default()
        });
        assert_eq!(decide(&gone, None, &roots), Write::Nothing);
    }
}
