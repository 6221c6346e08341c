//! The I/O of an ingress Gateway's reconcile: read the Secrets its listeners name,
//! judge listeners and routes (`crate::ingress`), deploy the dataplane with the
//! compiled config, then write the Gateway's status and its routes' parent entries.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use gateway_api::apis::experimental::httproutes::{HttpRoute, HttpRouteStatus};
use gateway_api::apis::standard::gateways::Gateway;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;

use super::{Context, Error, deploy, in_namespace_of, now, write_gateway_status};
use crate::ingress::{self, attach, backends, listeners, status as ingress_status};
use crate::names::INGRESS_CONTROLLER_NAME;

/// `(namespace, gateway)` → the `(namespace, service)` its routes send to, so that a
/// Service or EndpointSlice event wakes only the ingress Gateways that use it.
#[derive(Debug, Default)]
pub struct Backends(Mutex<BTreeMap<NamespacedName, BTreeSet<NamespacedName>>>);

type NamespacedName = (String, String);

impl Backends {
    fn set(&self, gateway: &(String, String), services: BTreeSet<(String, String)>) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(gateway.clone(), services);
        }
    }

    pub(crate) fn forget(&self, namespace: &str, gateway: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(&(namespace.to_owned(), gateway.to_owned()));
        }
    }

    /// The ingress Gateways whose routes send to Service `namespace/service`.
    pub(crate) fn users(&self, namespace: &str, service: &str) -> Vec<ObjectRef<Gateway>> {
        let want = (namespace.to_owned(), service.to_owned());
        self.0.lock().map_or_else(
            |_| Vec::new(),
            |m| {
                m.iter()
                    .filter(|(_, s)| s.contains(&want))
                    .map(|((ns, name), _)| ObjectRef::new(name).within(ns))
                    .collect()
            },
        )
    }
}

/// A listener whose certificate could not be read is looked at again this soon:
/// Secrets are not watched (the operator would have to cache every Secret).
const SECRET_RETRY: Duration = Duration::from_secs(10);

pub(crate) async fn reconcile(
    ctx: &Context,
    gw: &Gateway,
    key: &(String, String),
) -> Result<Action, Error> {
    let secrets = secrets_of(ctx, gw).await?;
    let grants: Vec<_> = ctx
        .caches
        .grants
        .state()
        .iter()
        .map(|g| (**g).clone())
        .collect();
    let verdicts = listeners::judge(gw, &secrets, &grants);
    let routes: Vec<HttpRoute> = ctx
        .caches
        .routes
        .state()
        .iter()
        .map(|r| (**r).clone())
        .collect();
    let namespaces: attach::NamespaceLabels = ctx
        .caches
        .namespaces
        .state()
        .iter()
        .map(|n| (n.name_any(), n.labels().clone()))
        .collect();
    let parents = attach::parents(gw, &verdicts, &routes, &namespaces);

    let named = backends_named(&parents);
    // Only the namespaces the routes' backends live in.
    let mut services: Vec<Service> = Vec::new();
    let mut slices: Vec<EndpointSlice> = Vec::new();
    for ns in named.iter().map(|(ns, _)| ns).collect::<BTreeSet<_>>() {
        services.extend(in_namespace_of(&ctx.caches.services, ns));
        slices.extend(in_namespace_of(&ctx.caches.slices, ns));
    }
    let view = ingress::compile::View {
        services: &services,
        slices: &slices,
        grants: &grants,
        cluster_domain: &ctx.cluster_domain,
    };
    let config = ingress::compile::compile(&verdicts, &parents, &view);
    ctx.ingress_backends.set(key, named);

    let observed = Box::pin(deploy(ctx, gw, key, &config)).await?;
    let attached: Vec<i32> = (0..verdicts.len())
        .map(|i| {
            let routes: BTreeSet<(String, String)> = parents
                .iter()
                .filter(|p| p.outcome.as_ref().is_ok_and(|ls| ls.contains(&i)))
                .map(|p| (p.route.namespace().unwrap_or_default(), p.route.name_any()))
                .collect();
            i32::try_from(routes.len()).unwrap_or(i32::MAX)
        })
        .collect();
    let status = ingress_status::gateway_status(gw, &verdicts, &attached, &observed, &now());
    write_gateway_status(ctx, gw, status, observed.ready_replicas).await?;
    write_route_parents(ctx, gw, &parents, &routes, &services, &grants).await?;

    let unresolved = verdicts.iter().any(|v| v.resolved_refs.is_err());
    Ok(Action::requeue(if unresolved {
        SECRET_RETRY
    } else {
        Duration::from_mins(5)
    }))
}

/// The Secrets the Gateway's listeners name that exist.
async fn secrets_of(ctx: &Context, gw: &Gateway) -> Result<listeners::Secrets, Error> {
    let mut secrets = listeners::Secrets::new();
    for (ns, name) in listeners::secret_refs(gw) {
        if let Some(s) = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&name)
            .await?
        {
            secrets.insert((ns, name), s);
        }
    }
    Ok(secrets)
}

/// Every `(namespace, Service)` the routes naming the Gateway send to.
fn backends_named(parents: &[attach::Parent<'_>]) -> BTreeSet<NamespacedName> {
    let mut out = BTreeSet::new();
    for p in parents {
        let route_ns = p.route.namespace().unwrap_or_default();
        for rule in p.route.spec.rules.iter().flatten() {
            let mirrors = backends::mirrors(rule).into_iter().map(|(b, _)| b);
            for b in rule.backend_refs.iter().flatten().cloned().chain(mirrors) {
                out.insert((
                    b.namespace.clone().unwrap_or_else(|| route_ns.clone()),
                    b.name.clone(),
                ));
            }
        }
    }
    out
}

/// Whether a status entry is this controller's, for a parentRef naming `gw`.
fn ours_for(
    p: &gateway_api::apis::experimental::httproutes::HttpRouteStatusParents,
    route_ns: &str,
    gw: &Gateway,
) -> bool {
    p.controller_name == INGRESS_CONTROLLER_NAME
        && p.parent_ref
            .group
            .as_deref()
            .unwrap_or(ingress::GATEWAY_GROUP)
            == ingress::GATEWAY_GROUP
        && p.parent_ref.kind.as_deref().unwrap_or("Gateway") == "Gateway"
        && p.parent_ref.name == gw.name_any()
        && p.parent_ref.namespace.as_deref().unwrap_or(route_ns)
            == gw.namespace().as_deref().unwrap_or("")
}

/// For every route that names `gw` (or did, per its status), replaces this
/// controller's entries for `gw` with what the routes are now. Other controllers'
/// and other Gateways' entries stay. Written with the route's resourceVersion: two
/// Gateways writing one route retry on conflict instead of dropping each other.
async fn write_route_parents(
    ctx: &Context,
    gw: &Gateway,
    parents: &[attach::Parent<'_>],
    routes: &[HttpRoute],
    services: &[Service],
    grants: &[gateway_api::apis::standard::referencegrants::ReferenceGrant],
) -> Result<(), Error> {
    let mut affected: BTreeSet<(String, String)> = parents
        .iter()
        .map(|p| (p.route.namespace().unwrap_or_default(), p.route.name_any()))
        .collect();
    for r in routes {
        let ns = r.namespace().unwrap_or_default();
        if r.status
            .iter()
            .flat_map(|s| &s.parents)
            .any(|p| ours_for(p, &ns, gw))
        {
            affected.insert((ns, r.name_any()));
        }
    }
    for (ns, name) in affected {
        let api: Api<HttpRoute> = Api::namespaced(ctx.client.clone(), &ns);
        let mut route = routes
            .iter()
            .find(|r| r.namespace().as_deref() == Some(&ns) && r.name_any() == name)
            .cloned();
        for _attempt in 0..3 {
            let Some(current) = route.take() else { break };
            let wanted = route_status(&current, gw, parents, services, grants);
            if current.status.as_ref().map_or(&[][..], |s| &s.parents[..])
                == wanted.parents.as_slice()
            {
                break;
            }
            let mut next = current.clone();
            next.status = Some(wanted);
            match api
                .replace_status(&name, &PostParams::default(), &next)
                .await
            {
                Ok(_) => {
                    ctx.metrics.status_written("HTTPRoute");
                    break;
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    route = api.get_opt(&name).await?;
                }
                Err(kube::Error::Api(e)) if e.code == 404 => break,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// The route's status with this controller's entries for `gw` recomputed.
fn route_status(
    route: &HttpRoute,
    gw: &Gateway,
    parents: &[attach::Parent<'_>],
    services: &[Service],
    grants: &[gateway_api::apis::standard::referencegrants::ReferenceGrant],
) -> HttpRouteStatus {
    let ns = route.namespace().unwrap_or_default();
    let old = route.status.clone().unwrap_or_default();
    let resolved = backends::resolved_refs(route, services, grants);
    let mut out: Vec<_> = old
        .parents
        .iter()
        .filter(|p| !ours_for(p, &ns, gw))
        .cloned()
        .collect();
    // Judged again against the route as it is now (it may be newer than `parents`).
    for p in route.spec.parent_refs.iter().flatten() {
        if !attach::names(p, &ns, gw) {
            continue;
        }
        let outcome = parents
            .iter()
            .find(|q| {
                q.route.namespace() == route.namespace()
                    && q.route.name_any() == route.name_any()
                    && q.parent_ref == p
            })
            .map(|q| q.outcome.clone());
        let Some(outcome) = outcome else { continue };
        let previous = old
            .parents
            .iter()
            .find(|q| {
                q.controller_name == INGRESS_CONTROLLER_NAME
                    && q.parent_ref == ingress_status::same_ref(p)
            })
            .map(|q| q.conditions.as_slice());
        out.push(ingress_status::route_parent(
            p,
            &outcome,
            &resolved,
            route.metadata.generation,
            previous,
            &now(),
        ));
    }
    HttpRouteStatus { parents: out }
}
