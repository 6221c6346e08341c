//! Binding reports beyond Istio, which reports only on Services: the
//! `istio.io/WaypointBound` condition on Pods and Namespaces that carry
//! `istio.io/use-waypoint`, and an Event each time its outcome changes, so that
//! `kubectl describe` says why a labelled pod or namespace is (not) bound.

use std::sync::Arc;

use futures::StreamExt as _;
use gateway_api::apis::standard::gateways::Gateway;
use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition, Pod, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::{reflector::ObjectRef, watcher};
use kube::{Resource, ResourceExt};
use waypoint_mesh::names::USE_WAYPOINT;

use crate::binding::{self, Subject};
use crate::controller::{Context, Error};

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

fn from_pod(c: &PodCondition) -> Condition {
    Condition {
        type_: c.type_.clone(),
        status: c.status.clone(),
        reason: c.reason.clone().unwrap_or_default(),
        message: c.message.clone().unwrap_or_default(),
        observed_generation: c.observed_generation,
        last_transition_time: c.last_transition_time.clone().unwrap_or_else(now),
    }
}

fn from_namespace(c: &NamespaceCondition) -> Condition {
    Condition {
        type_: c.type_.clone(),
        status: c.status.clone(),
        reason: c.reason.clone().unwrap_or_default(),
        message: c.message.clone().unwrap_or_default(),
        observed_generation: None,
        last_transition_time: c.last_transition_time.clone().unwrap_or_else(now),
    }
}

/// Whether two conditions say the same thing (time aside).
fn same(a: Option<&Condition>, b: Option<&Condition>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => {
            a.status == b.status && a.reason == b.reason && a.message == b.message
        }
        (None, None) => true,
        _ => false,
    }
}

/// The strategic-merge patch that sets (or, with `None`, removes) our condition;
/// other conditions are untouched (the list merges by `type`).
fn condition_patch(wanted: Option<&Condition>, with_generation: bool) -> serde_json::Value {
    let item = match wanted {
        Some(c) => {
            let mut v = serde_json::json!({
                "type": c.type_, "status": c.status, "reason": c.reason, "message": c.message,
                "lastTransitionTime": c.last_transition_time,
            });
            if with_generation && let Some(g) = c.observed_generation {
                v["observedGeneration"] = g.into();
            }
            v
        }
        None => serde_json::json!({"type": binding::CONDITION, "$patch": "delete"}),
    };
    serde_json::json!({"status": {"conditions": [item]}})
}

async fn announce<K>(recorder: &Recorder, obj: &K, wanted: &Condition) -> Result<(), Error>
where
    K: Resource<DynamicType = ()>,
{
    let event = Event {
        type_: if wanted.status == "True" {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason: wanted.reason.clone(),
        note: Some(wanted.message.clone()),
        action: "Bind".to_owned(),
        secondary: None,
    };
    recorder.publish(&event, &obj.object_ref(&())).await?;
    Ok(())
}

async fn reconcile_pod(pod: Arc<Pod>, ctx: Arc<Context>) -> Result<Action, Error> {
    let ns = pod.namespace().unwrap_or_default();
    let ns_labels = ctx.caches.namespace(&ns).map(|n| n.labels().clone());
    let previous = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == binding::CONDITION))
        .map(from_pod);
    let wanted = wanted(
        &ctx,
        Subject::Pod,
        pod.labels(),
        &ns,
        pod.metadata.generation,
        ns_labels.as_ref(),
        previous.as_ref(),
    );
    if !same(wanted.as_ref(), previous.as_ref()) {
        Api::<Pod>::namespaced(ctx.client.clone(), &ns)
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Strategic(condition_patch(wanted.as_ref(), true)),
            )
            .await?;
        ctx.metrics.status_written("Pod");
        if let Some(w) = &wanted {
            announce(&ctx.recorder, pod.as_ref(), w).await?;
        }
    }
    Ok(Action::await_change())
}

async fn reconcile_namespace(
    namespace: Arc<Namespace>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let name = namespace.name_any();
    let previous = namespace
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == binding::CONDITION))
        .map(from_namespace);
    let labels = namespace.labels();
    let wanted = wanted(
        &ctx,
        Subject::Namespace,
        labels,
        &name,
        None,
        Some(labels),
        previous.as_ref(),
    );
    if !same(wanted.as_ref(), previous.as_ref()) {
        Api::<Namespace>::all(ctx.client.clone())
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Strategic(condition_patch(wanted.as_ref(), false)),
            )
            .await?;
        ctx.metrics.status_written("Namespace");
        if let Some(w) = &wanted {
            announce(&ctx.recorder, namespace.as_ref(), w).await?;
        }
    }
    Ok(Action::await_change())
}

/// The condition the object should carry, from the cached Gateways of the
/// namespace its label points to.
#[allow(clippy::too_many_arguments)]
fn wanted(
    ctx: &Context,
    subject: Subject,
    labels: &std::collections::BTreeMap<String, String>,
    namespace: &str,
    generation: Option<i64>,
    namespace_labels: Option<&std::collections::BTreeMap<String, String>>,
    previous: Option<&Condition>,
) -> Option<Condition> {
    let target = waypoint_mesh::binding::resolve(labels, namespace, namespace_labels)?;
    let gateways = ctx.caches.gateways_in(&target.namespace);
    binding::condition_for(
        subject,
        labels,
        namespace,
        generation,
        namespace_labels,
        &gateways,
        previous,
        &now(),
    )
}

fn error_policy<K>(_obj: Arc<K>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "binding report failed; retrying");
    Action::requeue(crate::controller::retry_after_error())
}

/// Runs the Pod and Namespace reporters until asked to stop. Pods are watched only
/// when they carry the label; every Namespace is (few, and a removed label must
/// clear the condition).
pub async fn run(ctx: Arc<Context>) {
    let client = ctx.client.clone();
    let ctx2 = Arc::clone(&ctx);
    let labelled = watcher::Config::default().labels(USE_WAYPOINT);
    let pods = Controller::new(Api::<Pod>::all(client.clone()), labelled);
    let pod_store = pods.store();
    let pods = pods
        .watches(
            Api::<Gateway>::all(client.clone()),
            watcher::Config::default(),
            move |_| {
                pod_store
                    .state()
                    .iter()
                    .map(|p| ObjectRef::from_obj(p.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .shutdown_on_signal()
        .run(
            |pod, ctx| {
                crate::controller::timed("pod", ctx.metrics.clone(), reconcile_pod(pod, ctx))
            },
            error_policy,
            Arc::clone(&ctx),
        )
        .for_each(|_| async {});
    let namespaces = Controller::new(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    );
    let ns_store = namespaces.store();
    let namespaces = namespaces
        .watches(
            Api::<Gateway>::all(client),
            watcher::Config::default(),
            move |_| {
                ns_store
                    .state()
                    .iter()
                    .filter(|n| n.labels().contains_key(USE_WAYPOINT))
                    .map(|n| ObjectRef::from_obj(n.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .shutdown_on_signal()
        .run(
            |ns, ctx| {
                crate::controller::timed(
                    "namespace",
                    ctx.metrics.clone(),
                    reconcile_namespace(ns, ctx),
                )
            },
            error_policy,
            ctx,
        )
        .for_each(|_| async {});
    // The watcher has no signal of its own: it stops when both controllers have
    // (a join with it kept a terminated leader alive until SIGKILL, and the standby
    // waited out the Lease: 24-26 s failovers).
    tokio::select! {
        _ = async { futures::join!(pods, namespaces) } => {}
        () = clear_unlabelled(Arc::clone(&ctx2)) => {}
    }
}

/// A Pod whose `istio.io/use-waypoint` label is removed leaves the labelled watch as
/// a deletion, and no reconcile sees it again: if the Pod still exists, this removes
/// the condition it would otherwise keep.
async fn clear_unlabelled(ctx: Arc<Context>) {
    let labelled = watcher::Config::default().labels(USE_WAYPOINT);
    watcher(Api::<Pod>::all(ctx.client.clone()), labelled)
        .default_backoff()
        .for_each(|event| {
            let ctx = Arc::clone(&ctx);
            async move {
                if let Ok(watcher::Event::Delete(pod)) = event
                    && let Err(e) = clear_if_unlabelled(&ctx, &pod).await
                {
                    tracing::debug!(error = %e, pod = %pod.name_any(), "clearing a stale binding condition");
                }
            }
        })
        .await;
}

async fn clear_if_unlabelled(ctx: &Context, gone: &Pod) -> Result<(), Error> {
    let api = Api::<Pod>::namespaced(ctx.client.clone(), &gone.namespace().unwrap_or_default());
    let Some(pod) = api.get_opt(&gone.name_any()).await? else {
        return Ok(());
    };
    let has_condition = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == binding::CONDITION));
    if pod.labels().contains_key(USE_WAYPOINT) || !has_condition {
        return Ok(());
    }
    api.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Strategic(condition_patch(None, true)),
    )
    .await?;
    ctx.metrics.status_written("Pod");
    Ok(())
}
