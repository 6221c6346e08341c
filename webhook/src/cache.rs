//! The [`ClusterView`] of a running webhook: watch caches (kube-runtime reflectors),
//! so a review never waits on the API server. Kinds whose content we never read are
//! watched as metadata only.

use std::future::Future;

use futures::{FutureExt, StreamExt, future};
use gateway_api::apis::standard::gateways::Gateway;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::view::{ClusterView, Labels, contains_all};

#[derive(Clone)]
pub struct Caches {
    gateways: Store<Gateway>,
    services: Store<Service>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    deployments: Store<PartialObjectMeta<Deployment>>,
    config_maps: Store<PartialObjectMeta<ConfigMap>>,
    pods: Store<PartialObjectMeta<Pod>>,
}

/// A store of `K` and the future that fills it. For `PartialObjectMeta<K>`, kube
/// asks the API server for metadata only.
fn cache<K>(client: &Client) -> (Store<K>, impl Future<Output = ()> + Send + use<K>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(
        writer,
        watcher(Api::<K>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .for_each(|_| future::ready(()));
    (reader, stream)
}

impl Caches {
    /// The caches, and the future that keeps them filled (run it forever).
    pub fn start(client: &Client) -> (Self, impl Future<Output = ()> + Send + use<>) {
        let (gateways, gateways_run) = cache::<Gateway>(client);
        let (services, services_run) = cache::<Service>(client);
        let (namespaces, namespaces_run) = cache::<PartialObjectMeta<Namespace>>(client);
        let (deployments, deployments_run) = cache::<PartialObjectMeta<Deployment>>(client);
        let (config_maps, config_maps_run) = cache::<PartialObjectMeta<ConfigMap>>(client);
        let (pods, pods_run) = cache::<PartialObjectMeta<Pod>>(client);
        let run = future::join_all([
            gateways_run.boxed(),
            services_run.boxed(),
            namespaces_run.boxed(),
            deployments_run.boxed(),
            config_maps_run.boxed(),
            pods_run.boxed(),
        ])
        .map(|_| ());
        let caches = Self {
            gateways,
            services,
            namespaces,
            deployments,
            config_maps,
            pods,
        };
        (caches, run)
    }

    /// Resolves once every cache has listed: before that, "not found" could be a lie.
    pub async fn synced(&self) {
        let _ = futures::join!(
            self.gateways.wait_until_ready(),
            self.services.wait_until_ready(),
            self.namespaces.wait_until_ready(),
            self.deployments.wait_until_ready(),
            self.config_maps.wait_until_ready(),
            self.pods.wait_until_ready(),
        );
    }
}

impl ClusterView for Caches {
    fn gateway(&self, namespace: &str, name: &str) -> Option<Gateway> {
        self.gateways
            .get(&ObjectRef::new(name).within(namespace))
            .map(|g| (*g).clone())
    }

    fn namespace_labels(&self, name: &str) -> Option<Labels> {
        self.namespaces
            .get(&ObjectRef::new(name))
            .map(|n| n.labels().clone())
    }

    fn service(&self, namespace: &str, name: &str) -> Option<Service> {
        self.services
            .get(&ObjectRef::new(name).within(namespace))
            .map(|s| (*s).clone())
    }

    fn deployment_labels(&self, namespace: &str, name: &str) -> Option<Labels> {
        self.deployments
            .get(&ObjectRef::new(name).within(namespace))
            .map(|d| d.labels().clone())
    }

    fn config_map_exists(&self, namespace: &str, name: &str) -> bool {
        self.config_maps
            .get(&ObjectRef::new(name).within(namespace))
            .is_some()
    }

    fn pods_matching(&self, namespace: &str, labels: &Labels) -> usize {
        self.pods
            .state()
            .iter()
            .filter(|p| {
                p.namespace().as_deref() == Some(namespace) && contains_all(p.labels(), labels)
            })
            .count()
    }
}
