//! The config fast path. A change to what a waypoint serves (a Service, an
//! EndpointSlice, a DestinationRule, an HTTPRoute) is compiled and published to its
//! dataplanes as soon as the caches hold it, instead of waiting behind the Gateway's
//! reconcile, which may still be busy with the previous change (object applies,
//! status, the wait for replicas): `hack/bench-config` measured that queueing as
//! the tail of endpoint changes. Requests that arrive while a batch compiles are
//! merged into the next batch, so a storm of events costs one compile per waypoint
//! per batch. The reconcile still runs for every change; it publishes the same
//! version and finds nothing new.

use std::collections::HashSet;
use std::sync::Arc;

use futures::StreamExt as _;
use futures::channel::mpsc::{UnboundedSender, unbounded};
use gateway_api::apis::standard::gateways::Gateway;
use kube::ResourceExt as _;
use kube::runtime::reflector::{ObjectRef, Store};

use super::{Class, Context, compile_for};
use crate::builders;

/// Asks for waypoints' configs to be compiled and published now.
#[derive(Clone)]
pub(super) struct Refresh(UnboundedSender<ObjectRef<Gateway>>);

impl Refresh {
    pub(super) fn request(&self, gateways: &[ObjectRef<Gateway>]) {
        for gw in gateways {
            // Closed only once the publisher has stopped with the controller.
            let _ = self.0.unbounded_send(gw.clone());
        }
    }
}

/// `waypoints_in` that also asks for the waypoints it names to be published now.
pub(super) fn refreshing(
    waypoints_in: impl Fn(Option<String>) -> Vec<ObjectRef<Gateway>> + Clone,
    refresh: Refresh,
) -> impl Fn(Option<String>) -> Vec<ObjectRef<Gateway>> + Clone {
    move |ns| {
        let waypoints = waypoints_in(ns);
        refresh.request(&waypoints);
        waypoints
    }
}

/// The requester and the publisher, which runs until every requester is dropped.
pub(super) fn publisher(
    ctx: Arc<Context>,
    gateways: Store<Gateway>,
) -> (Refresh, impl Future<Output = ()>) {
    let (tx, rx) = unbounded::<ObjectRef<Gateway>>();
    let task = async move {
        let mut rx = rx.ready_chunks(1024);
        while let Some(first) = rx.next().await {
            let mut batch: HashSet<ObjectRef<Gateway>> = first.into_iter().collect();
            // Whatever else is already queued joins this batch.
            while let Some(Some(more)) = futures::FutureExt::now_or_never(rx.next()) {
                batch.extend(more);
            }
            for gw in &batch {
                publish(&ctx, &gateways, gw);
            }
        }
    };
    (Refresh(tx), task)
}

fn publish(ctx: &Context, gateways: &Store<Gateway>, gw: &ObjectRef<Gateway>) {
    let Some(gw) = gateways.get(gw) else {
        return;
    };
    let waypoint = ctx.caches.class_of(&gw.spec.gateway_class_name) == Some(Class::Waypoint);
    if !waypoint || gw.metadata.deletion_timestamp.is_some() {
        return;
    }
    let (Some(ns), name) = (gw.namespace(), gw.name_any()) else {
        return;
    };
    let config = compile_for(ctx, &gw, &ns, &name);
    let (version, fresh) = ctx
        .configs
        .publish(&(ns.clone(), name.clone()), builders::config_yaml(&config));
    if fresh {
        tracing::debug!(gateway = %name, namespace = %ns, %version, "config published ahead of the reconcile");
    }
}
