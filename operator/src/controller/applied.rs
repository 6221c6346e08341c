//! What this process last applied to each object a Gateway is made of, so that a
//! reconcile applies an object only when what it wants has changed, or when
//! someone else has changed the object since. At a cold start every waypoint is
//! reconciled several times (its own status write, each status write of its
//! Deployment), and every server-side apply costs the API server a full merge even
//! when nothing changes: `hack/bench-operator` counted 3.8 applies per object.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::sync::Mutex;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

/// `(kind, namespace, gateway)`: a Gateway has one object of each kind.
type Key = (&'static str, String, String);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    wanted: u64,
    version: String,
}

#[derive(Debug, Default)]
pub struct Applied(Mutex<HashMap<Key, Record>>);

/// A digest of the object we want; equal objects digest equally within a process.
pub fn digest<K: Serialize>(wanted: &K) -> u64 {
    let mut h = DefaultHasher::new();
    serde_json::to_vec(wanted).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// The version of an object as a watch cache (or an apply's answer) shows it, in
/// the terms that tell another writer's change from ours: the generation for kinds
/// whose status is written by someone else (a Deployment: status writes do not
/// move it), else the resourceVersion. `None` when our labels or annotations are
/// no longer all there: that change moves neither, and must be repaired.
pub fn version(kind: &str, seen: &ObjectMeta, wanted: &ObjectMeta) -> Option<String> {
    let kept = |want: &Option<std::collections::BTreeMap<String, String>>,
                have: &Option<std::collections::BTreeMap<String, String>>| {
        want.iter()
            .flatten()
            .all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
    };
    if !kept(&wanted.labels, &seen.labels) || !kept(&wanted.annotations, &seen.annotations) {
        return None;
    }
    if kind == "Deployment" {
        seen.generation.map(|g| format!("g{g}"))
    } else {
        seen.resource_version.as_ref().map(|rv| format!("rv{rv}"))
    }
}

impl Applied {
    /// Whether the object needs no apply: what we want is what we last applied,
    /// and the object is still at the version that apply left it in.
    pub fn current(
        &self,
        kind: &'static str,
        gateway: (&str, &str),
        wanted: u64,
        seen: Option<&str>,
    ) -> bool {
        let key = (kind, gateway.0.to_owned(), gateway.1.to_owned());
        self.0.lock().is_ok_and(|m| {
            m.get(&key)
                .is_some_and(|r| r.wanted == wanted && Some(r.version.as_str()) == seen)
        })
    }

    /// Remembers an apply and the version it produced (`None`: nothing to compare
    /// against later, so the next reconcile applies again).
    pub fn record(
        &self,
        kind: &'static str,
        gateway: (&str, &str),
        wanted: u64,
        version: Option<String>,
    ) {
        let key = (kind, gateway.0.to_owned(), gateway.1.to_owned());
        if let Ok(mut m) = self.0.lock() {
            match version {
                Some(version) => m.insert(key, Record { wanted, version }),
                None => m.remove(&key),
            };
        }
    }

    /// Forgets Gateways for which `keep` is false (deleted ones).
    pub fn retain(&self, keep: impl Fn(&str, &str) -> bool) {
        if let Ok(mut m) = self.0.lock() {
            m.retain(|(_, ns, name), _| keep(ns, name));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use super::*;

    fn meta(labels: &[(&str, &str)], generation: i64, rv: &str) -> ObjectMeta {
        ObjectMeta {
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<BTreeMap<_, _>>(),
            ),
            generation: Some(generation),
            resource_version: Some(rv.to_owned()),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn a_deployment_is_tracked_by_generation_and_others_by_resource_version() {
        let wanted = meta(&[("managed", "us")], 0, "");
        let seen = meta(&[("managed", "us"), ("extra", "theirs")], 3, "812");
        assert_eq!(version("Deployment", &seen, &wanted).as_deref(), Some("g3"));
        assert_eq!(version("Service", &seen, &wanted).as_deref(), Some("rv812"));
    }

    #[test]
    fn a_label_of_ours_removed_or_changed_is_no_version() {
        let wanted = meta(&[("managed", "us"), ("gateway", "a")], 0, "");
        let removed = meta(&[("managed", "us")], 3, "812");
        let changed = meta(&[("managed", "us"), ("gateway", "b")], 3, "812");
        assert_eq!(version("Deployment", &removed, &wanted), None);
        assert_eq!(version("ConfigMap", &changed, &wanted), None);
    }

    #[test]
    fn an_apply_is_skipped_only_for_the_same_wish_at_the_same_version() {
        let applied = Applied::default();
        let gw = ("ns", "wp");
        assert!(
            !applied.current("Deployment", gw, 1, Some("g1")),
            "never applied"
        );
        applied.record("Deployment", gw, 1, Some("g1".into()));
        assert!(applied.current("Deployment", gw, 1, Some("g1")));
        assert!(
            !applied.current("Deployment", gw, 2, Some("g1")),
            "we want another object"
        );
        assert!(
            !applied.current("Deployment", gw, 1, Some("g2")),
            "someone else changed it"
        );
        assert!(
            !applied.current("Deployment", gw, 1, None),
            "gone from the cache, or ours removed"
        );
        assert!(
            !applied.current("Service", gw, 1, Some("g1")),
            "kinds are apart"
        );
        assert!(!applied.current("Deployment", ("ns", "other"), 1, Some("g1")));
        applied.record("Deployment", gw, 1, None);
        assert!(
            !applied.current("Deployment", gw, 1, Some("g1")),
            "an unversioned apply is forgotten"
        );
        applied.record("Deployment", gw, 1, Some("g1".into()));
        applied.retain(|_, name| name != "wp");
        assert!(
            !applied.current("Deployment", gw, 1, Some("g1")),
            "a deleted Gateway is forgotten"
        );
    }

    #[test]
    fn equal_objects_digest_equally_and_different_ones_not() {
        let a = meta(&[("managed", "us")], 1, "1");
        let b = meta(&[("managed", "us")], 1, "1");
        let c = meta(&[("managed", "them")], 1, "1");
        assert_eq!(digest(&a), digest(&b));
        assert_ne!(digest(&a), digest(&c));
    }
}
