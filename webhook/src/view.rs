//! What rules may know about the cluster beyond the object under review. Production
//! answers from watch caches (`cache`), tests from a [`Snapshot`]; rules never call
//! the API server.

use std::collections::BTreeMap;

use gateway_api::apis::standard::gateways::Gateway;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;

pub type Labels = BTreeMap<String, String>;

pub trait ClusterView {
    fn gateway(&self, namespace: &str, name: &str) -> Option<Gateway>;
    fn namespace_labels(&self, name: &str) -> Option<Labels>;
    fn service(&self, namespace: &str, name: &str) -> Option<Service>;
    /// Labels of a Deployment, `None` when it does not exist.
    fn deployment_labels(&self, namespace: &str, name: &str) -> Option<Labels>;
    fn config_map_exists(&self, namespace: &str, name: &str) -> bool;
    /// How many pods of `namespace` carry all of `labels`.
    fn pods_matching(&self, namespace: &str, labels: &Labels) -> usize;
}

/// An in-memory cluster: plain lists, searched linearly.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub gateways: Vec<Gateway>,
    pub namespaces: Vec<(String, Labels)>,
    pub services: Vec<Service>,
    /// `(namespace, name, labels)`
    pub deployments: Vec<(String, String, Labels)>,
    /// `(namespace, name)`
    pub config_maps: Vec<(String, String)>,
    /// `(namespace, labels)`
    pub pods: Vec<(String, Labels)>,
}

fn is<K: ResourceExt>(obj: &K, namespace: &str, name: &str) -> bool {
    obj.namespace().as_deref() == Some(namespace) && obj.name_any() == name
}

impl ClusterView for Snapshot {
    fn gateway(&self, namespace: &str, name: &str) -> Option<Gateway> {
        self.gateways
            .iter()
            .find(|g| is(*g, namespace, name))
            .cloned()
    }

    fn namespace_labels(&self, name: &str) -> Option<Labels> {
        self.namespaces
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, l)| l.clone())
    }

    fn service(&self, namespace: &str, name: &str) -> Option<Service> {
        self.services
            .iter()
            .find(|s| is(*s, namespace, name))
            .cloned()
    }

    fn deployment_labels(&self, namespace: &str, name: &str) -> Option<Labels> {
        self.deployments
            .iter()
            .find(|(ns, n, _)| ns == namespace && n == name)
            .map(|(_, _, l)| l.clone())
    }

    fn config_map_exists(&self, namespace: &str, name: &str) -> bool {
        self.config_maps
            .iter()
            .any(|(ns, n)| ns == namespace && n == name)
    }

    fn pods_matching(&self, namespace: &str, labels: &Labels) -> usize {
        self.pods
            .iter()
            .filter(|(ns, l)| ns == namespace && contains_all(l, labels))
            .count()
    }
}

/// Whether `labels` carries every pair of `wanted`.
pub fn contains_all(labels: &Labels, wanted: &Labels) -> bool {
    wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}
