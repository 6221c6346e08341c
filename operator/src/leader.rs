//! Leader election over a `coordination.k8s.io` Lease, so that two operator replicas
//! never both write status. The decision is pure ([`decide`]); the loops around it do
//! the API calls. A leader that cannot renew before its lease runs out stops: exiting
//! is the only way to be sure it writes nothing more.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a lease holds without renewal.
    pub duration: Duration,
    /// How often the leader renews (well inside `duration`).
    pub renew_every: Duration,
    /// How often a follower retries.
    pub retry_every: Duration,
}

/// What to do with the lease as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it, or the holder's time ran out: take it over.
    Acquire,
    /// It is ours: renew it.
    Renew,
    /// Someone else holds it for this much longer.
    Wait { holder: String, remaining: Duration },
}

/// The decision for `identity` given the lease's spec at `now`. A lease without a
/// holder or a renew time is free; a released lease has an empty holder.
pub fn decide(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else {
        return Decision::Acquire;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() {
        return Decision::Acquire;
    }
    if holder == identity {
        return Decision::Renew;
    }
    let Some(renewed) = spec.renew_time.as_ref().map(|t| t.0) else {
        return Decision::Acquire;
    };
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    let expires = renewed.checked_add(duration).unwrap_or(renewed);
    if expires <= now {
        Decision::Acquire
    } else {
        Decision::Wait {
            holder: holder.to_owned(),
            remaining: Duration::try_from(expires.duration_since(now)).unwrap_or_default(),
        }
    }
}

/// The spec after this replica acquires or renews.
pub fn claimed(previous: Option<&LeaseSpec>, cfg: &LeaseConfig, now: Timestamp) -> LeaseSpec {
    let ours = previous.and_then(|p| p.holder_identity.as_deref()) == Some(cfg.identity.as_str());
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(i32::try_from(cfg.duration.as_secs()).unwrap_or(i32::MAX)),
        acquire_time: if ours {
            previous.and_then(|p| p.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if ours { transitions } else { transitions + 1 }),
        ..LeaseSpec::default()
    }
}

/// Tries once to acquire or renew. `Ok(true)` when we hold the lease afterwards.
/// A write conflict (another replica got there first) is `Ok(false)`.
pub async fn try_claim(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let existing = api.get_opt(&cfg.name).await?;
    match decide(
        existing.as_ref().and_then(|l| l.spec.as_ref()),
        &cfg.identity,
        now,
    ) {
        Decision::Wait { .. } => Ok(false),
        Decision::Acquire | Decision::Renew => {
            let spec = claimed(existing.as_ref().and_then(|l| l.spec.as_ref()), cfg, now);
            let result = if let Some(mut lease) = existing {
                lease.spec = Some(spec);
                api.replace(&cfg.name, &PostParams::default(), &lease).await
            } else {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(cfg.name.clone()),
                        namespace: Some(cfg.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                api.create(&PostParams::default(), &lease).await
            };
            match result {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            }
        }
    }
}

/// Waits until this replica leads.
pub async fn acquire(client: &Client, cfg: &LeaseConfig) {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let mut said = false;
    loop {
        match try_claim(&api, cfg).await {
            Ok(true) => {
                tracing::info!(identity = %cfg.identity, lease = %cfg.name, "acquired the lease; leading");
                return;
            }
            Ok(false) if !said => {
                tracing::info!(identity = %cfg.identity, lease = %cfg.name, "another replica leads; standing by");
                said = true;
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "leader election: API error; retrying"),
        }
        tokio::time::sleep(cfg.retry_every).await;
    }
}

/// Renews until a renewal has not succeeded for a whole lease duration; then returns
/// (the caller must stop writing).
pub async fn hold(client: &Client, cfg: &LeaseConfig) {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let mut last_ok = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(cfg.renew_every).await;
        match try_claim(&api, cfg).await {
            Ok(true) => last_ok = tokio::time::Instant::now(),
            Ok(false) => {
                tracing::error!(identity = %cfg.identity, "the lease was taken over");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "renewing the lease failed"),
        }
        if last_ok.elapsed() >= cfg.duration {
            tracing::error!(identity = %cfg.identity, "could not renew the lease in time");
            return;
        }
    }
}

/// Gives the lease up on shutdown, so a standby takes over at its next retry instead
/// of waiting for the lease to run out.
pub async fn release(client: &Client, cfg: &LeaseConfig) {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let Ok(Some(mut lease)) = api.get_opt(&cfg.name).await else {
        return;
    };
    let ours = lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        == Some(cfg.identity.as_str());
    if !ours {
        return;
    }
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = None;
        spec.renew_time = None;
    }
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => tracing::info!(identity = %cfg.identity, "released the lease"),
        Err(e) => tracing::warn!(error = %e, "releasing the lease failed"),
    }
}

/// Puts [`crate::ca::LEADER_LABEL`] on this replica's pod, or takes it off: the
/// `waypoint-config` Service selects the leader by it. Best effort; a replica that
/// runs outside a pod has none to label.
pub async fn label_pod(client: &Client, namespace: &str, pod: &str, leading: bool) {
    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), namespace);
    let value = if leading {
        serde_json::Value::String("true".to_owned())
    } else {
        serde_json::Value::Null
    };
    let patch = serde_json::json!({ "metadata": { "labels": { crate::ca::LEADER_LABEL: value } } });
    match api
        .patch(
            pod,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => tracing::info!(pod, leading, "leader label updated"),
        Err(e) => {
            tracing::warn!(pod, leading, error = %e, "could not update the leader label on this pod");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn cfg(identity: &str) -> LeaseConfig {
        LeaseConfig {
            namespace: "waypoint-system".into(),
            name: "waypoint-operator".into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            retry_every: Duration::from_secs(2),
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    #[test]
    fn a_missing_or_released_lease_is_free() {
        assert_eq!(decide(None, "a", at(0)), Decision::Acquire);
        let released = LeaseSpec {
            holder_identity: Some(String::new()),
            ..LeaseSpec::default()
        };
        assert_eq!(decide(Some(&released), "a", at(0)), Decision::Acquire);
    }

    #[test]
    fn a_held_lease_waits_until_it_runs_out() {
        let spec = claimed(None, &cfg("a"), at(0));
        assert_eq!(decide(Some(&spec), "a", at(3)), Decision::Renew);
        assert_eq!(
            decide(Some(&spec), "b", at(3)),
            Decision::Wait {
                holder: "a".into(),
                remaining: Duration::from_secs(12)
            }
        );
        assert_eq!(decide(Some(&spec), "b", at(15)), Decision::Acquire);
    }

    #[test]
    fn transitions_count_changes_of_holder_only() {
        let first = claimed(None, &cfg("a"), at(0));
        assert_eq!(first.lease_transitions, Some(1));
        let renewed = claimed(Some(&first), &cfg("a"), at(5));
        assert_eq!(renewed.lease_transitions, Some(1));
        assert_eq!(renewed.acquire_time, first.acquire_time);
        let taken = claimed(Some(&renewed), &cfg("b"), at(30));
        assert_eq!(taken.lease_transitions, Some(2));
        assert_eq!(taken.acquire_time, Some(MicroTime(at(30))));
    }
}
