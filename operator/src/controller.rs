//! The I/O half: kube-runtime controllers for waypoint Gateways and our
//! GatewayClass. Objects are server-side-applied with our field manager and Force;
//! status is patched only when it differs from what the API already has.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use futures::channel::mpsc::UnboundedReceiver;
use gateway_api::apis::experimental::httproutes::HttpRoute;
use gateway_api::apis::standard::gatewayclasses::{GatewayClass, GatewayClassSpec};
use gateway_api::apis::standard::gateways::Gateway;
use gateway_api::apis::standard::referencegrants::ReferenceGrant;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt as _;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use waypoint_crds::{DestinationRule, VirtualService};

use crate::binding;
use crate::builders::{self, BuildError};
use crate::compile;
use crate::metrics::Metrics;
use crate::names::USE_WAYPOINT;
use crate::names::{
    CONTROLLER_NAME, FIELD_MANAGER, INGRESS_CLASS, INGRESS_CONTROLLER_NAME, MANAGED_LABEL,
    MANAGED_VALUE, WAYPOINT_CLASS,
};
use crate::overlay::{self, Overlays};
use crate::status::{self, Observed};

mod applied;
mod ingress;
mod refresh;
pub use applied::Applied;
pub use ingress::Backends as IngressBackends;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("building the waypoint's objects: {0}")]
    Build(#[from] BuildError),
}

pub struct Context {
    pub client: Client,
    pub dataplane: builders::Dataplane,
    pub cluster_domain: String,
    pub metrics: Arc<Metrics>,
    pub caches: Caches,
    /// What each waypoint's dataplanes are served, and what they report running.
    pub configs: Arc<crate::config_server::Store>,
    pub recorder: kube::runtime::events::Recorder,
    /// The Services each waypoint served at its last reconcile, so that an event
    /// on a Service that is neither bound nor was bound wakes no waypoint.
    pub served: Served,
    /// What was last applied to each waypoint's objects.
    pub applied: Applied,
    /// The parametersRef ConfigMaps read so far.
    pub parameters: Parameters,
    /// The Services each ingress Gateway's routes sent to at its last reconcile.
    pub ingress_backends: IngressBackends,
}

/// `(namespace, gateway)` → names of the Services it serves.
#[derive(Debug, Default)]
pub struct Served(
    std::sync::Mutex<
        std::collections::BTreeMap<(String, String), std::collections::BTreeSet<String>>,
    >,
);

impl Served {
    fn set(&self, namespace: &str, gateway: &str, services: std::collections::BTreeSet<String>) {
        if let Ok(mut m) = self.0.lock() {
            m.insert((namespace.to_owned(), gateway.to_owned()), services);
        }
    }

    fn contains(&self, namespace: &str, service: &str) -> bool {
        self.0.lock().is_ok_and(|m| {
            m.iter()
                .any(|((ns, _), services)| ns == namespace && services.contains(service))
        })
    }
}

/// Managed fields and kubectl's last-applied copy are the bulk of most objects,
/// and nothing here reads them.
fn trimmed<K: Resource>(obj: &mut K) {
    obj.managed_fields_mut().clear();
    obj.annotations_mut()
        .remove("kubectl.kubernetes.io/last-applied-configuration");
}

/// What a watch cache can hold.
trait Cached:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static
{
}

impl<K> Cached for K where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static
{
}

/// A store of the objects `events` brings (trimmed, then shaped by `shape`), and
/// those events, each applied to the store before it comes out of the stream.
fn reflected<K: Cached>(
    events: impl futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send,
    shape: fn(&mut K),
) -> (
    Store<K>,
    impl futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send,
) {
    let (reader, writer) = reflector::store();
    let events = events
        .default_backoff()
        .modify(move |o| {
            trimmed(o);
            shape(o);
        })
        .reflect(writer);
    (reader, events)
}

/// Every `K` that `config` selects; for `PartialObjectMeta<K>`, kube asks the API
/// server for metadata only.
fn objects<K: Cached>(
    client: &Client,
    config: watcher::Config,
) -> impl futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send + use<K> {
    watcher(Api::<K>::all(client.clone()), config)
}

fn whole<K>(_: &mut K) {}

/// A store of every `K` that `config` selects, and the future that keeps it filled.
fn cache<K: Cached>(
    events: impl futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send,
) -> (Store<K>, impl Future<Output = ()> + Send) {
    let (reader, events) = reflected(events, whole::<K>);
    (reader, events.for_each(|_| futures::future::ready(())))
}

/// Like [`cache`], and every object the store has taken in (changed or deleted) is
/// then sent on to each of `N` controllers: their trigger, which so never runs a
/// reconcile on a store that has not seen the event that caused it. Controllers
/// share these stores rather than keep their own copies (thousands of Services).
fn shared_cache<K: Cached, const N: usize>(
    events: impl futures::Stream<Item = watcher::Result<watcher::Event<K>>> + Send,
    shape: fn(&mut K),
) -> (
    Store<K>,
    impl Future<Output = ()> + Send,
    [UnboundedReceiver<K>; N],
) {
    let (reader, events) = reflected(events, shape);
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..N).map(|_| futures::channel::mpsc::unbounded()).unzip();
    let fill = events.touched_objects().for_each(move |obj| {
        if let Ok(obj) = obj {
            for tx in &txs {
                // Closed once that controller has stopped.
                let _ = tx.unbounded_send(obj.clone());
            }
        }
        futures::future::ready(())
    });
    let Ok(rxs) = rxs.try_into() else {
        unreachable!("N receivers were made")
    };
    (reader, fill, rxs)
}

type PodMeta = PartialObjectMeta<k8s_openapi::api::core::v1::Pod>;

/// VirtualServices, and every Pod's metadata (DestinationRule subsets select
/// endpoints by Pod labels), with the future that fills both and their changes.
fn routing_caches(
    client: &Client,
) -> (
    RoutingStores,
    impl Future<Output = ()> + Send + use<>,
    Routing,
) {
    let all = watcher::Config::default;
    let (virtual_services, vs_run, vs_rx) =
        shared_cache(objects::<VirtualService>(client, all()), whole);
    let (pod_meta, pod_run, pod_rx) = shared_cache(objects::<PodMeta>(client, all()), whole);
    let run = async move {
        futures::join!(vs_run, pod_run);
    };
    let [virtual_services_rx] = vs_rx;
    let [pod_meta_rx] = pod_rx;
    (
        (virtual_services, pod_meta),
        run,
        Routing {
            virtual_services: virtual_services_rx,
            pod_meta: pod_meta_rx,
        },
    )
}

type RoutingStores = (Store<VirtualService>, Store<PodMeta>);

/// Watch caches that reconciles read instead of calling the API server: with
/// thousands of Services, a GET per reconcile starves everything else.
#[derive(Clone)]
pub struct Caches {
    namespaces: Store<PartialObjectMeta<Namespace>>,
    gateways: Store<Gateway>,
    classes: Store<GatewayClass>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    rules: Store<DestinationRule>,
    routes: Store<HttpRoute>,
    virtual_services: Store<VirtualService>,
    /// Every Pod's metadata: DestinationRule subsets select endpoints by labels.
    pod_meta: Store<PodMeta>,
    /// Pods that carry `istio.io/use-waypoint` (for the binding table).
    pods: Store<k8s_openapi::api::core::v1::Pod>,
    grants: Store<ReferenceGrant>,
    /// What a waypoint is made of, and what may stand in its way: whether a name
    /// is taken, by us or not, and whether an apply is still current, are read
    /// here instead of asked of the API server on every reconcile.
    pub(crate) owned: Owned,
}

/// Every ConfigMap, ServiceAccount and Deployment (metadata; a Deployment also its
/// status), and the HPAs and PDBs we manage (metadata).
#[derive(Clone)]
pub(crate) struct Owned {
    pub(crate) config_maps: Store<PartialObjectMeta<ConfigMap>>,
    pub(crate) service_accounts: Store<PartialObjectMeta<ServiceAccount>>,
    pub(crate) deployments: Store<Deployment>,
    pub(crate) autoscalers: Store<PartialObjectMeta<HorizontalPodAutoscaler>>,
    pub(crate) budgets: Store<PartialObjectMeta<PodDisruptionBudget>>,
}

/// The two kinds of Gateway this operator serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// `istio-waypoint`: the mesh listener, bound Services.
    Waypoint,
    /// `waypoint`: HTTP and HTTPS listeners with HTTPRoutes.
    Ingress,
}

/// What changed in the caches a waypoint's config is compiled from.
pub struct Triggers {
    gateways: UnboundedReceiver<Gateway>,
    namespaces: UnboundedReceiver<PartialObjectMeta<Namespace>>,
    services: UnboundedReceiver<Service>,
    slices: UnboundedReceiver<EndpointSlice>,
    rules: UnboundedReceiver<DestinationRule>,
    routes: UnboundedReceiver<HttpRoute>,
    routing: Routing,
    grants: UnboundedReceiver<ReferenceGrant>,
    parts: Parts,
    service_controller: ServiceTriggers,
}

/// Changes to VirtualServices and Pods.
struct Routing {
    virtual_services: UnboundedReceiver<VirtualService>,
    pod_meta: UnboundedReceiver<PodMeta>,
}

/// What wakes the Service controller.
struct ServiceTriggers {
    services: UnboundedReceiver<Service>,
    gateways: UnboundedReceiver<Gateway>,
    namespaces: UnboundedReceiver<PartialObjectMeta<Namespace>>,
}

/// Changes to the kinds a waypoint is made of.
struct Parts {
    config_maps: UnboundedReceiver<PartialObjectMeta<ConfigMap>>,
    service_accounts: UnboundedReceiver<PartialObjectMeta<ServiceAccount>>,
    deployments: UnboundedReceiver<Deployment>,
}

/// A Deployment's pod template is most of it, and only its status is read here.
fn status_only(d: &mut Deployment) {
    d.spec = None;
}

impl Caches {
    /// The caches, the future that keeps them filled (run it forever), and the
    /// changes the Gateway controller reacts to.
    pub fn start(client: &Client) -> (Self, impl Future<Output = ()> + Send + use<>, Triggers) {
        let all = watcher::Config::default;
        let managed = || all().labels(&format!("{MANAGED_LABEL}={MANAGED_VALUE}"));
        let (namespaces, ns_run, [ns_rx, ns_rx2]) = shared_cache(
            objects::<PartialObjectMeta<Namespace>>(client, all()),
            whole,
        );
        let (gateways, gw_run, [gw_rx, gw_rx2]) =
            shared_cache(objects::<Gateway>(client, all()), whole);
        let (classes, class_run) = cache(objects::<GatewayClass>(client, all()));
        let (pods, pod_run) = cache(objects(client, all().labels(USE_WAYPOINT)));
        let (services, svc_run, [svc_rx, svc_rx2]) =
            shared_cache(objects::<Service>(client, all()), whole);
        let (slices, slice_run, [slice_rx]) =
            shared_cache(objects::<EndpointSlice>(client, all()), whole);
        let (rules, rule_run, [rule_rx]) =
            shared_cache(objects::<DestinationRule>(client, all()), whole);
        let (routes, route_run, [route_rx]) =
            shared_cache(objects::<HttpRoute>(client, all()), whole);
        let ((virtual_services, pod_meta), vs_run, routing) = routing_caches(client);
        let (grants, grant_run, [grant_rx]) =
            shared_cache(objects::<ReferenceGrant>(client, all()), whole);
        let (config_maps, cm_run, [cm_rx]) = shared_cache(
            objects::<PartialObjectMeta<ConfigMap>>(client, all()),
            whole,
        );
        let (service_accounts, sa_run, [sa_rx]) = shared_cache(
            objects::<PartialObjectMeta<ServiceAccount>>(client, all()),
            whole,
        );
        let (deployments, deploy_run, [deploy_rx]) =
            shared_cache(objects::<Deployment>(client, all()), status_only);
        let (autoscalers, hpa_run) = cache(objects::<PartialObjectMeta<HorizontalPodAutoscaler>>(
            client,
            managed(),
        ));
        let (budgets, pdb_run) = cache(objects::<PartialObjectMeta<PodDisruptionBudget>>(
            client,
            managed(),
        ));
        (
            Self {
                namespaces,
                gateways,
                classes,
                services,
                slices,
                rules,
                routes,
                virtual_services,
                pod_meta,
                pods,
                grants,
                owned: Owned {
                    config_maps,
                    service_accounts,
                    deployments,
                    autoscalers,
                    budgets,
                },
            },
            async move {
                futures::join!(
                    ns_run, gw_run, class_run, svc_run, slice_run, rule_run, route_run, vs_run,
                    pod_run, grant_run, cm_run, sa_run, deploy_run, hpa_run, pdb_run
                );
            },
            Triggers {
                gateways: gw_rx,
                namespaces: ns_rx,
                services: svc_rx,
                slices: slice_rx,
                rules: rule_rx,
                routes: route_rx,
                routing,
                grants: grant_rx,
                parts: Parts {
                    config_maps: cm_rx,
                    service_accounts: sa_rx,
                    deployments: deploy_rx,
                },
                service_controller: ServiceTriggers {
                    services: svc_rx2,
                    gateways: gw_rx2,
                    namespaces: ns_rx2,
                },
            },
        )
    }

    pub async fn synced(&self) {
        let _ = futures::join!(
            self.namespaces.wait_until_ready(),
            self.gateways.wait_until_ready(),
            self.classes.wait_until_ready(),
            self.services.wait_until_ready(),
            self.slices.wait_until_ready(),
            self.rules.wait_until_ready(),
            self.routes.wait_until_ready(),
            self.virtual_services.wait_until_ready(),
            self.pod_meta.wait_until_ready(),
            self.grants.wait_until_ready(),
            self.owned.config_maps.wait_until_ready(),
            self.owned.service_accounts.wait_until_ready(),
            self.owned.deployments.wait_until_ready(),
            self.owned.autoscalers.wait_until_ready(),
            self.owned.budgets.wait_until_ready(),
        );
    }

    /// Which of our classes `name` is, if it exists and is ours.
    pub(crate) fn class_of(&self, name: &str) -> Option<Class> {
        let class = self.classes.get(&ObjectRef::new(name))?;
        match class.spec.controller_name.as_str() {
            CONTROLLER_NAME => Some(Class::Waypoint),
            INGRESS_CONTROLLER_NAME => Some(Class::Ingress),
            _ => None,
        }
    }

    /// The namespace as a `Namespace` with only its metadata (labels are what matter).
    pub(crate) fn namespace(&self, name: &str) -> Option<Namespace> {
        self.namespaces
            .get(&ObjectRef::new(name))
            .map(|m| Namespace {
                metadata: m.metadata.clone(),
                ..Namespace::default()
            })
    }

    /// Every object that asks for a waypoint, and what it is bound to.
    pub fn binding_table(&self) -> Vec<binding::table::Row> {
        let services: Vec<Service> = self
            .services
            .state()
            .iter()
            .map(|s| (**s).clone())
            .collect();
        let pods: Vec<_> = self.pods.state().iter().map(|p| (**p).clone()).collect();
        let namespaces: Vec<Namespace> = self
            .namespaces
            .state()
            .iter()
            .map(|m| Namespace {
                metadata: m.metadata.clone(),
                ..Namespace::default()
            })
            .collect();
        let gateways: Vec<Gateway> = self
            .gateways
            .state()
            .iter()
            .map(|g| (**g).clone())
            .collect();
        binding::table::compute(&binding::table::Objects {
            services: &services,
            pods: &pods,
            namespaces: &namespaces,
            gateways: &gateways,
        })
    }

    /// The labels of `namespace`'s Pods by name, read only when one of `rules`
    /// defines subsets.
    fn pod_labels(
        &self,
        namespace: &str,
        rules: &[DestinationRule],
    ) -> std::collections::HashMap<String, std::collections::BTreeMap<String, String>> {
        if rules.iter().all(|r| r.spec.subsets.is_empty()) {
            return std::collections::HashMap::new();
        }
        self.pod_meta
            .state()
            .iter()
            .filter(|p| p.namespace().as_deref() == Some(namespace))
            .map(|p| (p.name_any(), p.labels().clone()))
            .collect()
    }

    /// Whether a Pod's labels can matter to a waypoint: some DestinationRule of its
    /// namespace defines subsets.
    fn subsets_in(&self, namespace: Option<&str>) -> bool {
        self.rules
            .state()
            .iter()
            .any(|r| r.namespace().as_deref() == namespace && !r.spec.subsets.is_empty())
    }

    pub(crate) fn has_gateway(&self, namespace: &str, name: &str) -> bool {
        self.gateways
            .get(&ObjectRef::new(name).within(namespace))
            .is_some()
    }

    pub(crate) fn gateways_in(&self, namespace: &str) -> Vec<Gateway> {
        in_namespace_of(&self.gateways, namespace)
    }
}

/// Copies of the store's objects in `namespace`.
fn in_namespace_of<K: Resource + Clone>(store: &Store<K>, namespace: &str) -> Vec<K>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    store
        .state()
        .iter()
        .filter(|o| o.meta().namespace.as_deref() == Some(namespace))
        .map(|o| (**o).clone())
        .collect()
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Creates our classes (`istio-waypoint`, `waypoint`) if they are missing; never
/// touches an existing one.
pub async fn ensure_class(client: &Client, metrics: &Metrics) -> Result<(), Error> {
    for (class, controller, description) in [
        (
            WAYPOINT_CLASS,
            CONTROLLER_NAME,
            "Waypoints served by waypoint-operator",
        ),
        (
            INGRESS_CLASS,
            INGRESS_CONTROLLER_NAME,
            "Ingress Gateways (HTTP, HTTPS) served by waypoint-operator",
        ),
    ] {
        ensure_one_class(client, metrics, class, controller, description).await?;
    }
    Ok(())
}

async fn ensure_one_class(
    client: &Client,
    metrics: &Metrics,
    name: &str,
    controller: &str,
    description: &str,
) -> Result<(), Error> {
    let classes: Api<GatewayClass> = Api::all(client.clone());
    match classes.get_opt(name).await? {
        Some(c) if c.spec.controller_name != controller => {
            metrics
                .class_conflict
                .store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                class = name,
                owner = %c.spec.controller_name,
                "GatewayClass belongs to another controller; leaving it and its Gateways alone"
            );
        }
        Some(_) => {}
        None => {
            let class = GatewayClass {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    ..ObjectMeta::default()
                },
                spec: GatewayClassSpec {
                    controller_name: controller.to_owned(),
                    description: Some(description.to_owned()),
                    parameters_ref: None,
                },
                status: None,
            };
            match classes.create(&PostParams::default(), &class).await {
                // Another replica created it first.
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                other => drop(other?),
            }
            tracing::info!(class = name, "created GatewayClass");
        }
    }
    Ok(())
}

async fn reconcile_class(class: Arc<GatewayClass>, ctx: Arc<Context>) -> Result<Action, Error> {
    let features = match class.spec.controller_name.as_str() {
        CONTROLLER_NAME => None,
        INGRESS_CONTROLLER_NAME => Some(crate::ingress::status::SUPPORTED_FEATURES),
        _ => return Ok(Action::await_change()),
    };
    let status = status::class_status(
        class.status.as_ref(),
        class.metadata.generation,
        features,
        &now(),
    );
    if class.status.as_ref() != Some(&status) {
        let api: Api<GatewayClass> = Api::all(ctx.client.clone());
        let patch = serde_json::json!({ "status": status });
        api.patch_status(
            &class.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
        ctx.metrics.status_written("GatewayClass");
    }
    Ok(Action::await_change())
}

/// A waypoint's objects as the caches have them, whoever they belong to.
struct Seen {
    deployment: Option<Arc<Deployment>>,
    service: Option<Arc<Service>>,
    service_account: Option<ObjectMeta>,
    config_map: Option<ObjectMeta>,
}

impl Seen {
    fn of(caches: &Caches, ns: &str, name: &str) -> Self {
        let config_map = crate::names::config_map_name(name);
        Self {
            deployment: caches
                .owned
                .deployments
                .get(&ObjectRef::new(name).within(ns)),
            service: caches.services.get(&ObjectRef::new(name).within(ns)),
            service_account: caches
                .owned
                .service_accounts
                .get(&ObjectRef::new(name).within(ns))
                .map(|o| o.metadata.clone()),
            config_map: caches
                .owned
                .config_maps
                .get(&ObjectRef::new(&config_map).within(ns))
                .map(|o| o.metadata.clone()),
        }
    }

    /// The first object that has a name the waypoint needs and is not ours, as
    /// "Kind name". The caches hold every object of these kinds; a GET before the
    /// apply would leave the same window open between the read and the write.
    fn taken(&self) -> Option<String> {
        let ours = |m: &ObjectMeta| {
            m.labels
                .as_ref()
                .and_then(|l| l.get(MANAGED_LABEL))
                .map(String::as_str)
                == Some(MANAGED_VALUE)
        };
        [
            ("Deployment", self.deployment.as_ref().map(|o| &o.metadata)),
            ("Service", self.service.as_ref().map(|o| &o.metadata)),
            ("ServiceAccount", self.service_account.as_ref()),
            ("ConfigMap", self.config_map.as_ref()),
        ]
        .into_iter()
        .find_map(|(kind, meta)| {
            meta.filter(|m| !ours(m))
                .map(|m| format!("{kind} {}", m.name.as_deref().unwrap_or("?")))
        })
    }
}

/// What a waypoint is made of: namespaced objects, sent and read back.
trait Part:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Serialize
    + std::fmt::Debug
{
}

impl<K> Part for K where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + std::fmt::Debug
{
}

fn kind_of<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()) {
        std::borrow::Cow::Borrowed(kind) => kind,
        std::borrow::Cow::Owned(_) => "other",
    }
}

/// Server-side applies `obj`; returns the object as the API server now has it
/// (status included), which saves a GET.
async fn apply<K>(api: &Api<K>, obj: &K, metrics: &Metrics) -> Result<K, Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await?;
    metrics.applied(kind_of::<K>());
    Ok(applied)
}

/// Applies `wanted` unless the last apply of the same object still stands (`seen`:
/// the object as its watch cache has it). Returns the object when it applied.
async fn ensure<K: Part>(
    ctx: &Context,
    gateway: (&str, &str),
    wanted: &K,
    seen: Option<&ObjectMeta>,
) -> Result<Option<K>, Error> {
    let kind = kind_of::<K>();
    let digest = applied::digest(wanted);
    let version = seen.and_then(|m| applied::version(kind, m, wanted.meta()));
    if ctx
        .applied
        .current(kind, gateway, digest, version.as_deref())
    {
        return Ok(None);
    }
    let api = Api::namespaced(ctx.client.clone(), gateway.0);
    let got = apply(&api, wanted, &ctx.metrics).await?;
    let version = applied::version(kind, got.meta(), wanted.meta());
    ctx.applied.record(kind, gateway, digest, version);
    Ok(Some(got))
}

/// Parsed parametersRef ConfigMaps by resourceVersion: a reconcile reads one from
/// the API server only after it changed.
#[derive(Debug, Default)]
pub struct Parameters(std::sync::Mutex<std::collections::HashMap<(String, String), Parsed>>);

/// A ConfigMap's overlays, or why they cannot be used, at a resourceVersion.
#[derive(Debug)]
struct Parsed {
    version: String,
    overlays: Result<Overlays, String>,
}

/// The overlays of the Gateway's `infrastructure.parametersRef`: `Ok(Err(why))` when
/// the reference cannot be used (messages as Istio logs them).
async fn parameters(
    ctx: &Context,
    gw: &Gateway,
    ns: &str,
) -> Result<Result<Overlays, String>, Error> {
    let Some(r) = gw
        .spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.parameters_ref.as_ref())
    else {
        return Ok(Ok(Overlays::default()));
    };
    if !(r.group.is_empty() || r.group == "core") || r.kind != "ConfigMap" {
        return Ok(Err(format!(
            "unknown infrastructure parameters type {}/{}",
            r.group, r.kind
        )));
    }
    let key = (ns.to_owned(), r.name.clone());
    let cached = ctx
        .caches
        .owned
        .config_maps
        .get(&ObjectRef::new(&r.name).within(ns))
        .and_then(|m| m.metadata.resource_version.clone());
    if let Some(rv) = &cached
        && let Ok(m) = ctx.parameters.0.lock()
        && let Some(parsed) = m.get(&key)
        && parsed.version == *rv
    {
        return Ok(parsed.overlays.clone());
    }
    // Not cached yet (just created), or changed: read it.
    let Some(cm) = Api::<ConfigMap>::namespaced(ctx.client.clone(), ns)
        .get_opt(&r.name)
        .await?
    else {
        return Ok(Err(format!(
            "parametersRef targeting configmap \"{ns}/{}\", but configmap does not exist",
            r.name
        )));
    };
    let parsed = overlay::parse(&cm.data.unwrap_or_default()).map_err(|e| e.to_string());
    if let (Some(rv), Ok(mut m)) = (cm.metadata.resource_version, ctx.parameters.0.lock()) {
        m.insert(
            key,
            Parsed {
                version: rv,
                overlays: parsed.clone(),
            },
        );
    }
    Ok(parsed)
}

/// Server-side applies every object a waypoint is made of that is not as last
/// applied; deletes an HPA or PDB of ours whose overlay was removed. Returns the
/// Deployment and Service as the API server answered, for those it applied.
async fn apply_children(
    ctx: &Context,
    gateway: (&str, &str),
    children: &builders::Children,
    seen: &Seen,
) -> Result<(Option<Deployment>, Option<Service>), Error> {
    // The Deployment's pods need the ServiceAccount and the ConfigMap, so those
    // go first; the three are independent of each other, so they go together.
    let (_, _, service) = futures::try_join!(
        ensure(
            ctx,
            gateway,
            &children.service_account,
            seen.service_account.as_ref(),
        ),
        ensure(ctx, gateway, &children.config_map, seen.config_map.as_ref()),
        ensure(
            ctx,
            gateway,
            &children.service,
            seen.service.as_ref().map(|o| &o.metadata),
        ),
    )?;
    let deployment = ensure(
        ctx,
        gateway,
        &children.deployment,
        seen.deployment.as_ref().map(|o| &o.metadata),
    )
    .await?;
    let owned = &ctx.caches.owned;
    apply_or_remove(
        ctx,
        gateway,
        children.horizontal_pod_autoscaler.as_ref(),
        &owned.autoscalers,
    )
    .await?;
    apply_or_remove(
        ctx,
        gateway,
        children.pod_disruption_budget.as_ref(),
        &owned.budgets,
    )
    .await?;
    Ok((deployment, service))
}

/// Applies an object that only some overlays ask for (an HPA, a PDB), or deletes
/// ours (the cache `ours` has it) when the overlay no longer asks for it; one
/// already gone is fine.
async fn apply_or_remove<K: Part>(
    ctx: &Context,
    (ns, name): (&str, &str),
    wanted: Option<&K>,
    ours: &Store<PartialObjectMeta<K>>,
) -> Result<(), Error> {
    let api = Api::<K>::namespaced(ctx.client.clone(), ns);
    if let Some(obj) = wanted {
        apply(&api, obj, &ctx.metrics).await?;
    } else if ours.get(&ObjectRef::new(name).within(ns)).is_some() {
        match api.delete(name, &kube::api::DeleteParams::default()).await {
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
    }
    Ok(())
}

/// The waypoint's objects with its overlays, or without them and the reason the
/// overlays cannot be used.
async fn children_for(
    ctx: &Context,
    gw: &Gateway,
    ns: &str,
    config: &waypoint_config::Config,
) -> Result<(builders::Children, Option<String>), Error> {
    let (overlays, invalid) = match parameters(ctx, gw, ns).await? {
        Ok(o) => (o, None),
        Err(why) => (Overlays::default(), Some(why)),
    };
    match builders::build(gw, &ctx.dataplane, config, &overlays) {
        Ok(c) => Ok((c, invalid)),
        Err(BuildError::Overlay(e)) => Ok((
            builders::build(gw, &ctx.dataplane, config, &Overlays::default())?,
            Some(e.to_string()),
        )),
        Err(e) => Err(e.into()),
    }
}

/// The waypoint's config from its namespace as the caches have it; also records
/// which Services it serves.
fn compile_for(ctx: &Context, gw: &Gateway, ns: &str, name: &str) -> waypoint_config::Config {
    let caches = &ctx.caches;
    let view_services = in_namespace_of(&caches.services, ns);
    let view_slices = in_namespace_of(&caches.slices, ns);
    let view_rules = in_namespace_of(&caches.rules, ns);
    let view_routes = in_namespace_of(&caches.routes, ns);
    let view_virtual_services = in_namespace_of(&caches.virtual_services, ns);
    let view_pod_labels = caches.pod_labels(ns, &view_rules);
    let view_namespace = ctx.caches.namespace(ns);
    let config = compile::compile(
        gw,
        &compile::View {
            namespace: view_namespace.as_ref(),
            services: &view_services,
            slices: &view_slices,
            destination_rules: &view_rules,
            http_routes: &view_routes,
            virtual_services: &view_virtual_services,
            pod_labels: &view_pod_labels,
            cluster_domain: &ctx.cluster_domain,
        },
    );
    ctx.served.set(
        ns,
        name,
        view_services
            .iter()
            .filter(|s| compile::binds(gw, s, view_namespace.as_ref()))
            .map(ResourceExt::name_any)
            .collect(),
    );
    config
}

async fn reconcile_gateway(gw: Arc<Gateway>, ctx: Arc<Context>) -> Result<Action, Error> {
    let class = ctx.caches.class_of(&gw.spec.gateway_class_name);
    let ns = gw.namespace().ok_or(BuildError::NoNamespace)?;
    let name = gw.name_any();
    let key = (ns.clone(), name.clone());
    // Deleted Gateways are not reconciled: forget them here.
    ctx.configs.retain(|k| {
        if *k == key {
            class.is_some()
        } else {
            ctx.caches.has_gateway(&k.0, &k.1)
        }
    });
    ctx.applied
        .retain(|ns, gw| (ns, gw) != (key.0.as_str(), key.1.as_str()) || class.is_some());
    ctx.applied.retain(|ns, gw| ctx.caches.has_gateway(ns, gw));
    let Some(class) = class else {
        ctx.ingress_backends.forget(&ns, &name);
        return Ok(Action::await_change());
    };
    if gw.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    match class {
        Class::Waypoint => {
            let config = compile_for(&ctx, &gw, &ns, &name);
            let observed = Box::pin(deploy(&ctx, &gw, &key, &config)).await?;
            let status = status::gateway_status(&gw, &observed, &now());
            write_gateway_status(&ctx, &gw, status, observed.ready_replicas).await?;
            Ok(Action::requeue(Duration::from_mins(5)))
        }
        Class::Ingress => Box::pin(ingress::reconcile(&ctx, &gw, &key)).await,
    }
}

/// Publishes `config` to the Gateway's dataplanes and applies the objects that run
/// them, unless a same-named object is not ours or the overlays are unusable.
pub(crate) async fn deploy(
    ctx: &Context,
    gw: &Gateway,
    key: &(String, String),
    config: &waypoint_config::Config,
) -> Result<Observed, Error> {
    let (ns, name) = (key.0.as_str(), key.1.as_str());
    let (version, fresh) = ctx.configs.publish(key, builders::config_yaml(config));
    let (children, invalid_parameters) = children_for(ctx, gw, ns, config).await?;
    let seen = Seen::of(&ctx.caches, ns, name);
    let clash = seen.taken();
    let mut applied = (None, None);
    if let Some(why) = &invalid_parameters {
        // Istio renders nothing then; we keep what runs and say why in status.
        tracing::warn!(gateway = %name, namespace = %ns, %why, "parametersRef unusable; objects left as they are");
    } else if clash.is_none() {
        applied = apply_children(ctx, (ns, name), &children, &seen).await?;
    } else {
        tracing::warn!(gateway = %name, namespace = %ns, conflict = ?clash, "not adopting an object we do not manage");
    }
    // What was not applied now is read from the caches.
    let ready_replicas = match applied.0 {
        Some(d) => d.status.and_then(|s| s.ready_replicas),
        None => seen
            .deployment
            .as_ref()
            .and_then(|d| d.status.as_ref())
            .and_then(|s| s.ready_replicas),
    }
    .unwrap_or(0);
    let service_spec = match applied.1 {
        Some(s) => s.spec,
        None => seen.service.as_ref().and_then(|s| s.spec.clone()),
    };
    if fresh {
        // Running replicas apply a new config within milliseconds; waiting for
        // that keeps Programmed from flapping to Pending on every change.
        ctx.configs
            .wait_applied(key, &version, CONFIG_APPLY_WAIT)
            .await;
    }
    Ok(Observed {
        ready_replicas,
        cluster_ips: service_spec
            .and_then(|s| s.cluster_ips.or(s.cluster_ip.map(|ip| vec![ip])))
            .unwrap_or_default(),
        conflict: clash,
        invalid_parameters,
        cluster_domain: ctx.cluster_domain.clone(),
        config: ctx.configs.applied(key, std::time::Instant::now()),
    })
}

/// In [`Applied`], a Gateway's status write and the version it was computed from.
const STATUS_WRITE: &str = "Gateway status";

/// Patches the Gateway's status if it differs from what the API has.
pub(crate) async fn write_gateway_status(
    ctx: &Context,
    gw: &Gateway,
    status: gateway_api::apis::standard::gateways::GatewayStatus,
    ready: i32,
) -> Result<(), Error> {
    if gw.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let (ns, name) = (gw.namespace().unwrap_or_default(), gw.name_any());
    // A Gateway still at the version our last write was computed from has not come
    // back from the watch yet: its status here is stale, and that write's event
    // brings a reconcile that sees it. At a cold start that saves a second write
    // for a third of the waypoints.
    let at = gw.resource_version();
    if ctx
        .applied
        .current(STATUS_WRITE, (&ns, &name), 0, at.as_deref())
    {
        return Ok(());
    }
    let api: Api<Gateway> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({ "status": status });
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    ctx.applied.record(STATUS_WRITE, (&ns, &name), 0, at);
    ctx.metrics.status_written("Gateway");
    tracing::info!(gateway = %name, namespace = %ns, ready, "status updated");
    Ok(())
}

/// Writes `istio.io/WaypointBound` on a Service that asks for a waypoint, and removes
/// it from one that no longer does. Other controllers' conditions are kept.
async fn reconcile_service(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = svc.namespace().unwrap_or_default();
    let namespace = ctx.caches.namespace(&ns);
    let existing = svc
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let previous = existing.iter().find(|c| c.type_ == binding::CONDITION);
    let wanted = match binding::requested(&svc, namespace.as_ref()) {
        None => None,
        Some((waypoint_ns, _)) => {
            let gateways = ctx.caches.gateways_in(&waypoint_ns);
            binding::condition(&svc, namespace.as_ref(), &gateways, previous, &now())
        }
    };
    if wanted.as_ref() == previous {
        return Ok(Action::await_change());
    }
    let mut conditions: Vec<_> = existing
        .iter()
        .filter(|c| c.type_ != binding::CONDITION)
        .cloned()
        .collect();
    conditions.extend(wanted);
    let patch = serde_json::json!({ "status": { "conditions": conditions } });
    Api::<Service>::namespaced(ctx.client.clone(), &ns)
        .patch_status(
            &svc.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
    ctx.metrics.status_written("Service");
    Ok(Action::await_change())
}

/// Runs one reconcile, counting it and its duration.
pub(crate) async fn timed<F>(
    controller: &'static str,
    metrics: Arc<Metrics>,
    reconcile: F,
) -> Result<Action, Error>
where
    F: Future<Output = Result<Action, Error>>,
{
    metrics
        .in_flight
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let started = std::time::Instant::now();
    let result = reconcile.await;
    metrics
        .in_flight
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    metrics.reconciled(controller, result.is_ok(), started.elapsed());
    result
}

/// 5 s plus up to 2.5 s of jitter, so that objects failing together (an API server
/// restart) do not retry in lockstep.
pub(crate) fn retry_after_error() -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    Duration::from_secs(5) + Duration::from_millis(u64::from(nanos % 2500))
}

fn error_policy<K>(_obj: Arc<K>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "reconcile failed; retrying");
    Action::requeue(retry_after_error())
}

/// The Gateways of a GatewayClass.
fn gateways_of_class(store: &Store<Gateway>, class: &GatewayClass) -> Vec<ObjectRef<Gateway>> {
    let name = class.name_any();
    store
        .state()
        .iter()
        .filter(|g| g.spec.gateway_class_name == name)
        .map(|g| ObjectRef::from_obj(g.as_ref()))
        .collect()
}

/// The Gateways that own an object.
fn owners(meta: &ObjectMeta) -> Vec<ObjectRef<Gateway>> {
    let ns = meta.namespace.as_deref().unwrap_or_default();
    meta.owner_references
        .iter()
        .flatten()
        .filter(|o| o.kind == "Gateway" && o.api_version.starts_with("gateway.networking.k8s.io/"))
        .map(|o| ObjectRef::new(&o.name).within(ns))
        .collect()
}

/// The Gateways whose parametersRef names this ConfigMap.
fn parameters_of(store: &Store<Gateway>, cm: &ObjectMeta) -> Vec<ObjectRef<Gateway>> {
    let (ns, name) = (cm.namespace.clone(), cm.name.clone().unwrap_or_default());
    store
        .state()
        .iter()
        .filter(|g| g.namespace() == ns)
        .filter(|g| {
            g.spec
                .infrastructure
                .as_ref()
                .and_then(|i| i.parameters_ref.as_ref())
                .is_some_and(|r| r.kind == "ConfigMap" && r.name == name)
        })
        .map(|g| ObjectRef::from_obj(g.as_ref()))
        .collect()
}

/// Whether a Service event concerns the waypoints of its namespace: it, or its
/// namespace, asks for a waypoint, or a waypoint served it until now.
fn service_wakes(ctx: &Context, svc: &Service) -> bool {
    let ns = svc.namespace().unwrap_or_default();
    let labelled = |l: &std::collections::BTreeMap<String, String>| l.contains_key(USE_WAYPOINT);
    labelled(svc.labels())
        || ctx
            .caches
            .namespace(&ns)
            .is_some_and(|n| labelled(n.labels()))
        || ctx.served.contains(&ns, &svc.name_any())
}

/// Whether an EndpointSlice belongs to a Service some waypoint serves.
fn slice_wakes(ctx: &Context, slice: &EndpointSlice) -> bool {
    let ns = slice.namespace().unwrap_or_default();
    slice
        .labels()
        .get("kubernetes.io/service-name")
        .is_some_and(|service| ctx.served.contains(&ns, service))
}

/// Every Gateway of our ingress class: few, and any ReferenceGrant or namespace
/// label can change what they admit.
fn ingress_gateways(ctx: &Context) -> Vec<ObjectRef<Gateway>> {
    ctx.caches
        .gateways
        .state()
        .iter()
        .filter(|g| ctx.caches.class_of(&g.spec.gateway_class_name) == Some(Class::Ingress))
        .map(|g| ObjectRef::from_obj(g.as_ref()))
        .collect()
}

/// The ingress Gateways whose routes send to the Service `name` of `namespace`.
fn ingress_users(
    ctx: &Context,
    namespace: Option<String>,
    name: Option<String>,
) -> Vec<ObjectRef<Gateway>> {
    match (namespace, name) {
        (Some(ns), Some(name)) => ctx.ingress_backends.users(&ns, &name),
        _ => Vec::new(),
    }
}

/// The Gateways a route names in its parentRefs or in its status (to clear a parent
/// it no longer names).
fn ingress_parents(route: &HttpRoute) -> Vec<ObjectRef<Gateway>> {
    let route_ns = route.namespace().unwrap_or_default();
    let named = route
        .spec
        .parent_refs
        .iter()
        .flatten()
        .filter(|p| {
            p.group.as_deref().unwrap_or(crate::ingress::GATEWAY_GROUP)
                == crate::ingress::GATEWAY_GROUP
                && p.kind.as_deref().unwrap_or("Gateway") == "Gateway"
        })
        .map(|p| (p.namespace.clone(), p.name.clone()));
    let listed = route
        .status
        .iter()
        .flat_map(|s| &s.parents)
        .filter(|p| p.controller_name == INGRESS_CONTROLLER_NAME)
        .map(|p| (p.parent_ref.namespace.clone(), p.parent_ref.name.clone()));
    named
        .chain(listed)
        .map(|(ns, name)| (ns.unwrap_or_else(|| route_ns.clone()), name))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|(ns, name)| ObjectRef::new(&name).within(&ns))
        .collect()
}

/// Maps a namespace to the objects of a controller's store that live in it.
fn in_namespace<K>(store: Store<K>) -> impl Fn(Option<String>) -> Vec<ObjectRef<K>> + Clone
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    move |ns| {
        store
            .state()
            .iter()
            .filter(|o| o.namespace() == ns)
            .map(|o| ObjectRef::from_obj(o.as_ref()))
            .collect()
    }
}

/// Bounded parallel reconciles: the API server and this process share 2 cores with
/// everything else on a small node; a burst of thousands must queue.
fn reconciles() -> controller::Config {
    controller::Config::default().concurrency(8)
}

/// How long a reconcile that published a new config waits for a running replica
/// to apply it before writing status.
const CONFIG_APPLY_WAIT: Duration = Duration::from_secs(2);

/// Runs the three controllers (Gateways, GatewayClasses, Services) until asked to
/// stop. `reported` names Gateways whose replicas reported a new config version.
pub async fn run(
    ctx: Arc<Context>,
    triggers: Triggers,
    reported: impl futures::Stream<Item = crate::config_server::Key> + Send + 'static,
) {
    ctx.caches.synced().await;
    let ctx2 = Arc::clone(&ctx);
    let client = ctx.client.clone();
    let controller = Controller::for_stream(
        triggers.gateways.map(Ok::<_, watcher::Error>),
        ctx.caches.gateways.clone(),
    )
    .with_config(reconciles());
    // Anything in a namespace can change what its waypoints serve: map it to them.
    let gateways_in = in_namespace(controller.store());
    let params_store = controller.store();
    let class_store = controller.store();
    // What changes a waypoint's config also publishes it at once (`refresh`).
    let (refresh, publisher) = refresh::publisher(Arc::clone(&ctx), controller.store());
    let for_svc = refresh::refreshing(gateways_in.clone(), refresh);
    let [for_slice, for_rule, for_route, for_vs] = [(); 4].map(|()| for_svc.clone());
    // Ingress Gateways take routes and backends from any namespace.
    let (ingress_for_grant, ingress_for_ns) = (Arc::clone(&ctx), Arc::clone(&ctx));
    // Services and their EndpointSlices wake the namespace's waypoints only when
    // they are (or just were) bound: thousands of unrelated Services must not
    // reconcile every waypoint over and over.
    let (relevant_svc, relevant_slice) = (Arc::clone(&ctx), Arc::clone(&ctx));
    let controller = woken_by_parts(controller, triggers.parts, params_store);
    let gateways = woken_by_routing(controller, triggers.routing, for_vs, Arc::clone(&ctx))
        .watches_stream(
            triggers.services.map(Ok::<_, watcher::Error>),
            move |o: Service| {
                let mut wake = ingress_users(&relevant_svc, o.namespace(), Some(o.name_any()));
                wake.extend(owners(o.meta()));
                if service_wakes(&relevant_svc, &o) {
                    wake.extend(for_svc(o.namespace()));
                }
                wake
            },
        )
        .watches_stream(
            triggers.slices.map(Ok::<_, watcher::Error>),
            move |o: EndpointSlice| {
                let service = o.labels().get("kubernetes.io/service-name").cloned();
                let mut wake = ingress_users(&relevant_slice, o.namespace(), service);
                if slice_wakes(&relevant_slice, &o) {
                    wake.extend(for_slice(o.namespace()));
                }
                wake
            },
        )
        .watches_stream(
            triggers.rules.map(Ok::<_, watcher::Error>),
            move |o: DestinationRule| for_rule(o.namespace()),
        )
        .watches_stream(
            triggers.routes.map(Ok::<_, watcher::Error>),
            move |o: HttpRoute| {
                let mut wake = for_route(o.namespace());
                wake.extend(ingress_parents(&o));
                wake
            },
        )
        .watches_stream(
            triggers.grants.map(Ok::<_, watcher::Error>),
            move |_: ReferenceGrant| ingress_gateways(&ingress_for_grant),
        )
        .watches_stream(
            triggers.namespaces.map(Ok::<_, watcher::Error>),
            move |o: PartialObjectMeta<Namespace>| {
                let mut wake = gateways_in(Some(o.name_any()));
                wake.extend(ingress_gateways(&ingress_for_ns));
                wake
            },
        )
        // Ownership is read from the class cache: a class that appears or changes
        // owner wakes its Gateways.
        .watches(
            Api::<GatewayClass>::all(client.clone()),
            watcher::Config::default(),
            move |class| gateways_of_class(&class_store, &class),
        )
        .reconcile_on(reported.map(|(ns, name)| ObjectRef::new(&name).within(&ns)))
        .shutdown_on_signal()
        .run(
            |gw, ctx| timed("gateway", ctx.metrics.clone(), reconcile_gateway(gw, ctx)),
            error_policy,
            Arc::clone(&ctx),
        )
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "gateway reconcile");
            }
        });
    futures::join!(
        gateways,
        publisher,
        run_classes(Arc::clone(&ctx)),
        run_services(ctx, triggers.service_controller),
        crate::bound::run(Arc::clone(&ctx2))
    );
}

/// What a waypoint is made of wakes it: its Deployment's status for `Programmed`,
/// anyone's edit, to undo it. A ConfigMap also wakes the Gateways whose
/// parametersRef names it.
fn woken_by_parts(
    controller: Controller<Gateway>,
    parts: Parts,
    params_store: Store<Gateway>,
) -> Controller<Gateway> {
    controller
        .watches_stream(
            parts.deployments.map(Ok::<_, watcher::Error>),
            |o: Deployment| owners(o.meta()),
        )
        .watches_stream(
            parts.service_accounts.map(Ok::<_, watcher::Error>),
            |o: PartialObjectMeta<ServiceAccount>| owners(&o.metadata),
        )
        .watches_stream(
            parts.config_maps.map(Ok::<_, watcher::Error>),
            move |cm: PartialObjectMeta<ConfigMap>| {
                let mut wake = owners(&cm.metadata);
                wake.extend(parameters_of(&params_store, &cm.metadata));
                wake
            },
        )
}

/// A VirtualService wakes its namespace's waypoints (`wake`); a Pod does only where a
/// DestinationRule defines subsets, since Pods come and go by the thousand.
fn woken_by_routing<F>(
    controller: Controller<Gateway>,
    routing: Routing,
    wake: F,
    ctx: Arc<Context>,
) -> Controller<Gateway>
where
    F: Fn(Option<String>) -> Vec<ObjectRef<Gateway>> + Clone + Send + Sync + 'static,
{
    let for_pod = wake.clone();
    controller
        .watches_stream(
            routing.virtual_services.map(Ok::<_, watcher::Error>),
            move |o: VirtualService| wake(o.namespace()),
        )
        .watches_stream(
            routing.pod_meta.map(Ok::<_, watcher::Error>),
            move |o: PodMeta| {
                if ctx.caches.subsets_in(o.namespace().as_deref()) {
                    for_pod(o.namespace())
                } else {
                    Vec::new()
                }
            },
        )
}

/// The GatewayClass controller.
async fn run_classes(ctx: Arc<Context>) {
    Controller::new(
        Api::<GatewayClass>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .shutdown_on_signal()
    .run(
        |class, ctx| {
            timed(
                "gatewayclass",
                ctx.metrics.clone(),
                reconcile_class(class, ctx),
            )
        },
        error_policy,
        Arc::clone(&ctx),
    )
    .for_each(|_| async {})
    .await;
}

/// The Service controller. A Service's binding changes with its own labels, its
/// namespace's, and the Gateways of its namespace (existence, readiness,
/// waypoint-for, allowedRoutes).
async fn run_services(ctx: Arc<Context>, triggers: ServiceTriggers) {
    let services = Controller::for_stream(
        triggers.services.map(Ok::<_, watcher::Error>),
        ctx.caches.services.clone(),
    )
    .with_config(controller::Config::default().concurrency(8));
    let services_in = in_namespace(services.store());
    let by_gateway = services_in.clone();
    let services = services
        .watches_stream(
            triggers.gateways.map(Ok::<_, watcher::Error>),
            move |g: Gateway| by_gateway(g.namespace()),
        )
        .watches_stream(
            triggers.namespaces.map(Ok::<_, watcher::Error>),
            move |n: PartialObjectMeta<Namespace>| services_in(Some(n.name_any())),
        )
        .shutdown_on_signal()
        .run(
            |svc, ctx| timed("service", ctx.metrics.clone(), reconcile_service(svc, ctx)),
            error_policy,
            ctx,
        )
        .for_each(|_| async {});
    services.await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn meta(name: &str, ours: bool) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_owned()),
            labels: ours.then(|| [(MANAGED_LABEL.to_owned(), MANAGED_VALUE.to_owned())].into()),
            ..ObjectMeta::default()
        }
    }

    fn seen(deployment: Option<bool>, config_map: Option<bool>) -> Seen {
        Seen {
            deployment: deployment.map(|ours| {
                Arc::new(Deployment {
                    metadata: meta("wp", ours),
                    ..Deployment::default()
                })
            }),
            service: Some(Arc::new(Service {
                metadata: meta("wp", true),
                ..Service::default()
            })),
            service_account: None,
            config_map: config_map.map(|ours| meta("wp-config", ours)),
        }
    }

    #[test]
    fn a_name_is_taken_only_by_an_object_without_our_label() {
        assert_eq!(seen(None, None).taken(), None, "nothing there yet");
        assert_eq!(seen(Some(true), Some(true)).taken(), None, "all ours");
        assert_eq!(
            seen(Some(true), Some(false)).taken().as_deref(),
            Some("ConfigMap wp-config")
        );
        assert_eq!(
            seen(Some(false), Some(false)).taken().as_deref(),
            Some("Deployment wp"),
            "the first in Deployment, Service, ServiceAccount, ConfigMap order"
        );
    }

    #[test]
    fn owners_are_the_gateways_in_the_owner_references() {
        let mut m = meta("wp", true);
        m.namespace = Some("ns".into());
        m.owner_references = Some(vec![
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "gateway.networking.k8s.io/v1".into(),
                kind: "Gateway".into(),
                name: "wp".into(),
                ..Default::default()
            },
            k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                api_version: "apps/v1".into(),
                kind: "ReplicaSet".into(),
                name: "rs".into(),
                ..Default::default()
            },
        ]);
        assert_eq!(owners(&m), vec![ObjectRef::new("wp").within("ns")]);
    }
}
