//! Gateway and GatewayClass status as pure functions of what the operator observed.
//! A condition keeps its `lastTransitionTime` while status, reason and message stay
//! the same, so an unchanged world produces an identical status and no API write.

use gateway_api::apis::standard::gatewayclasses::{
    GatewayClassStatus, GatewayClassStatusSupportedFeatures,
};
use gateway_api::apis::standard::gateways::{
    Gateway, GatewayListeners, GatewayStatus, GatewayStatusAddresses, GatewayStatusListeners,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::config_server::Applied;
use crate::names::MESH_PORT;

/// What the operator saw of a Gateway's generated objects (waypoint or ingress).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub ready_replicas: i32,
    pub cluster_ips: Vec<String>,
    /// A same-name object we may not manage ("Deployment httpbin-waypoint").
    pub conflict: Option<String>,
    /// Why `infrastructure.parametersRef` cannot be used (missing ConfigMap, bad
    /// overlay), in words for the user.
    pub invalid_parameters: Option<String>,
    pub cluster_domain: String,
    /// Whether a running replica has applied the current config.
    pub config: Applied,
}

pub(crate) fn condition(
    previous: Option<&[Condition]>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if ok { "True" } else { "False" }.to_owned();
    let same = previous
        .and_then(|p| p.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status && c.reason == reason && c.message == message);
    Condition {
        type_: type_.to_owned(),
        status,
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: same.map_or_else(|| now.clone(), |c| c.last_transition_time.clone()),
    }
}

pub const UNEXPECTED_LISTENER: &str =
    r#"Expected a single listener on port 15008 with protocol "HBONE""#;

pub fn gateway_status(gw: &Gateway, observed: &Observed, now: &Time) -> GatewayStatus {
    let previous = gw.status.as_ref();
    let generation = gw.metadata.generation;
    let fqdn = format!(
        "{}.{}.svc.{}",
        gw.name_any(),
        gw.namespace().unwrap_or_default(),
        observed.cluster_domain
    );
    let ready = observed.conflict.is_none()
        && observed.invalid_parameters.is_none()
        && observed.ready_replicas > 0;
    let old_conditions = previous.and_then(|s| s.conditions.as_deref());
    let cond = |t: &str, ok, reason: &str, msg: String| {
        condition(old_conditions, t, ok, reason, msg, generation, now)
    };

    let programmed = match (&observed.conflict, ready) {
        _ if observed.invalid_parameters.is_some() => cond(
            "Programmed",
            false,
            "Invalid",
            "Not deployed: the Gateway's parametersRef cannot be used (see Accepted)".to_owned(),
        ),
        (Some(what), _) => cond(
            "Programmed",
            false,
            "Invalid",
            format!(
                "{what} already exists and is not managed by waypoint-operator; delete or rename it, or rename the Gateway"
            ),
        ),
        (None, true) => match &observed.config {
            Applied::Unknown | Applied::Yes => cond(
                "Programmed",
                true,
                "Programmed",
                format!("Resource programmed, assigned to service(s) {fqdn}:{MESH_PORT}"),
            ),
            Applied::Pending(why) => cond("Programmed", false, "Pending", why.clone()),
            Applied::Rejected(why) => cond("Programmed", false, "Invalid", why.clone()),
        },
        (None, false) => cond(
            "Programmed",
            false,
            "Pending",
            format!(
                "Waiting for a ready waypoint pod (deployment {}: {} ready)",
                gw.name_any(),
                observed.ready_replicas
            ),
        ),
    };

    // Addresses appear once the waypoint is ready and are never removed (Istio's rule).
    let addresses = if ready {
        let mut a: Vec<GatewayStatusAddresses> = observed
            .cluster_ips
            .iter()
            .filter(|ip| !ip.is_empty() && *ip != "None")
            .map(|ip| GatewayStatusAddresses {
                r#type: Some("IPAddress".to_owned()),
                value: ip.clone(),
            })
            .collect();
        a.push(GatewayStatusAddresses {
            r#type: Some("Hostname".to_owned()),
            value: fqdn,
        });
        Some(a)
    } else {
        previous.and_then(|s| s.addresses.clone())
    };

    let listeners = gw
        .spec
        .listeners
        .iter()
        .map(|l| listener_status(gw, l, now))
        .collect();

    GatewayStatus {
        addresses,
        attached_listener_sets: previous.and_then(|s| s.attached_listener_sets),
        conditions: Some(vec![
            match &observed.invalid_parameters {
                Some(why) => cond("Accepted", false, "InvalidParameters", why.clone()),
                None => cond("Accepted", true, "Accepted", "Resource accepted".to_owned()),
            },
            programmed,
        ]),
        listeners: Some(listeners),
    }
}

/// A waypoint takes exactly one listener, `mesh` on 15008 with protocol HBONE;
/// anything else is refused on the listener with Istio's message and a hint.
fn listener_status(gw: &Gateway, l: &GatewayListeners, now: &Time) -> GatewayStatusListeners {
    let old = gw
        .status
        .as_ref()
        .and_then(|s| s.listeners.as_ref())
        .and_then(|ls| ls.iter().find(|o| o.name == l.name))
        .map(|o| o.conditions.as_slice());
    let lc = |t: &str, ok, reason: &str, msg: &str| {
        condition(
            old,
            t,
            ok,
            reason,
            msg.to_owned(),
            gw.metadata.generation,
            now,
        )
    };
    let valid = l.port == MESH_PORT && l.protocol == "HBONE" && gw.spec.listeners.len() == 1;
    let (accepted, programmed) = if valid {
        (
            lc("Accepted", true, "Accepted", "No errors found"),
            lc("Programmed", true, "Programmed", "No errors found"),
        )
    } else {
        let hint = if l.protocol.eq_ignore_ascii_case("hbone") && l.protocol != "HBONE" {
            format!(
                "{UNEXPECTED_LISTENER}; got protocol {:?} (hint: \"HBONE\" is upper-case)",
                l.protocol
            )
        } else {
            format!(
                "{UNEXPECTED_LISTENER}; got port {} protocol {}",
                l.port, l.protocol
            )
        };
        (
            lc("Accepted", false, "UnsupportedProtocol", &hint),
            lc("Programmed", false, "Invalid", &hint),
        )
    };
    GatewayStatusListeners {
        name: l.name.clone(),
        attached_routes: 0,
        conditions: vec![
            accepted,
            programmed,
            lc("ResolvedRefs", true, "ResolvedRefs", "No errors found"),
            lc("Conflicted", false, "NoConflicts", "No errors found"),
        ],
        supported_kinds: Some(vec![]),
    }
}

/// `Accepted=True` for a class we own; `features`, when given, replace
/// `supportedFeatures` (sorted, as Gateway API requires).
pub fn class_status(
    previous: Option<&GatewayClassStatus>,
    generation: Option<i64>,
    features: Option<&[&str]>,
    now: &Time,
) -> GatewayClassStatus {
    let old = previous.and_then(|s| s.conditions.as_deref());
    GatewayClassStatus {
        conditions: Some(vec![condition(
            old,
            "Accepted",
            true,
            "Accepted",
            "Handled by waypoint-operator".to_owned(),
            generation,
            now,
        )]),
        supported_features: match features {
            Some(f) => {
                let mut names: Vec<&str> = f.to_vec();
                names.sort_unstable();
                Some(
                    names
                        .into_iter()
                        .map(|name| GatewayClassStatusSupportedFeatures {
                            name: name.to_owned(),
                        })
                        .collect(),
                )
            }
            None => previous.and_then(|s| s.supported_features.clone()),
        },
    }
}

#[cfg(test)]
mod tests {
    use gateway_api::apis::standard::gateways::{GatewayListeners, GatewaySpec};
    use kube::api::ObjectMeta;

    use super::*;

    fn gw(port: i32, protocol: &str) -> Gateway {
        Gateway {
            metadata: ObjectMeta {
                name: Some("httpbin-waypoint".into()),
                namespace: Some("httpbin".into()),
                generation: Some(3),
                ..ObjectMeta::default()
            },
            spec: GatewaySpec {
                gateway_class_name: "istio-waypoint".into(),
                listeners: vec![GatewayListeners {
                    name: "mesh".into(),
                    port,
                    protocol: protocol.into(),
                    ..GatewayListeners::default()
                }],
                ..GatewaySpec::default()
            },
            status: None,
        }
    }

    fn at(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    fn observed(ready: i32) -> Observed {
        Observed {
            ready_replicas: ready,
            cluster_ips: vec!["10.96.0.42".into()],
            conflict: None,
            invalid_parameters: None,
            cluster_domain: "cluster.local".into(),
            config: Applied::Yes,
        }
    }

    #[test]
    fn programmed_waits_for_a_replica_to_run_the_current_config() {
        let pending = "Waiting for a waypoint pod to apply config version 0011223344556677";
        let obs = Observed {
            config: Applied::Pending(pending.into()),
            ..observed(1)
        };
        let s = gateway_status(&gw(15008, "HBONE"), &obs, &at(1));
        let p = cond(&s, "Programmed");
        assert_eq!(
            (p.status.as_str(), p.reason.as_str(), p.message.as_str()),
            ("False", "Pending", pending)
        );
        assert!(
            s.addresses.is_some(),
            "the Service exists and a pod is ready"
        );

        let refused = "waypoint pod w-1 refused config version 0011223344556677; its log says why";
        let obs = Observed {
            config: Applied::Rejected(refused.into()),
            ..observed(1)
        };
        let p = gateway_status(&gw(15008, "HBONE"), &obs, &at(1));
        assert_eq!(cond(&p, "Programmed").reason, "Invalid");
        assert_eq!(cond(&p, "Programmed").message, refused);

        // A new leader that has heard from no replica yet keeps Programmed.
        let obs = Observed {
            config: Applied::Unknown,
            ..observed(1)
        };
        let s = gateway_status(&gw(15008, "HBONE"), &obs, &at(1));
        assert_eq!(cond(&s, "Programmed").status, "True");
    }

    #[test]
    fn unusable_parameters_are_not_accepted_and_not_programmed() {
        let why = "parametersRef targeting configmap \"ns/params\", but configmap does not exist";
        let obs = Observed {
            invalid_parameters: Some(why.into()),
            ..observed(1)
        };
        let s = gateway_status(&gw(15008, "HBONE"), &obs, &at(1));
        let a = cond(&s, "Accepted");
        assert_eq!(
            (a.status.as_str(), a.reason.as_str(), a.message.as_str()),
            ("False", "InvalidParameters", why)
        );
        assert_eq!(cond(&s, "Programmed").status, "False");
        assert!(s.addresses.is_none());
    }

    fn cond<'a>(s: &'a GatewayStatus, t: &str) -> &'a Condition {
        s.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == t)
            .unwrap()
    }

    #[test]
    fn programmed_and_addressed_only_once_a_pod_is_ready() {
        let s = gateway_status(&gw(15008, "HBONE"), &observed(0), &at(1));
        assert_eq!(cond(&s, "Accepted").status, "True");
        assert_eq!(
            (
                cond(&s, "Programmed").status.as_str(),
                cond(&s, "Programmed").reason.as_str()
            ),
            ("False", "Pending")
        );
        assert_eq!(s.addresses, None);
        assert_eq!(cond(&s, "Programmed").observed_generation, Some(3));

        let s = gateway_status(&gw(15008, "HBONE"), &observed(1), &at(2));
        let p = cond(&s, "Programmed");
        assert_eq!(p.status, "True");
        assert_eq!(
            p.message,
            "Resource programmed, assigned to service(s) httpbin-waypoint.httpbin.svc.cluster.local:15008"
        );
        let addrs: Vec<_> = s
            .addresses
            .unwrap()
            .into_iter()
            .map(|a| (a.r#type.unwrap(), a.value))
            .collect();
        assert_eq!(
            addrs,
            [
                ("IPAddress".into(), "10.96.0.42".into()),
                (
                    "Hostname".into(),
                    "httpbin-waypoint.httpbin.svc.cluster.local".into()
                )
            ]
        );
    }

    #[test]
    fn addresses_stay_once_set() {
        let mut g = gw(15008, "HBONE");
        g.status = Some(gateway_status(&g, &observed(1), &at(1)));
        let s = gateway_status(&g, &observed(0), &at(2));
        assert_eq!(cond(&s, "Programmed").status, "False");
        assert_eq!(s.addresses, g.status.unwrap().addresses);
    }

    #[test]
    fn an_unchanged_world_gives_an_identical_status() {
        let mut g = gw(15008, "HBONE");
        g.status = Some(gateway_status(&g, &observed(1), &at(1)));
        assert_eq!(Some(gateway_status(&g, &observed(1), &at(99))), g.status);
        // A change moves only the changed condition's transition time.
        let s = gateway_status(&g, &observed(0), &at(99));
        assert_eq!(cond(&s, "Programmed").last_transition_time, at(99));
        assert_eq!(cond(&s, "Accepted").last_transition_time, at(1));
    }

    #[test]
    fn a_wrong_listener_is_reported_on_the_listener_with_istios_message() {
        let s = gateway_status(&gw(8080, "HTTP"), &observed(1), &at(1));
        let l = &s.listeners.unwrap()[0];
        let accepted = l.conditions.iter().find(|c| c.type_ == "Accepted").unwrap();
        assert_eq!(
            (accepted.status.as_str(), accepted.reason.as_str()),
            ("False", "UnsupportedProtocol")
        );
        assert_eq!(
            accepted.message,
            format!("{UNEXPECTED_LISTENER}; got port 8080 protocol HTTP")
        );
        let s = gateway_status(&gw(15008, "hbone"), &observed(1), &at(1));
        let msg = &s.listeners.unwrap()[0].conditions[0].message;
        assert!(msg.contains("upper-case"), "{msg}");
    }

    #[test]
    fn a_conflict_is_named_in_programmed() {
        let obs = Observed {
            conflict: Some("Deployment httpbin-waypoint".into()),
            ..observed(1)
        };
        let s = gateway_status(&gw(15008, "HBONE"), &obs, &at(1));
        let p = cond(&s, "Programmed");
        assert_eq!((p.status.as_str(), p.reason.as_str()), ("False", "Invalid"));
        assert!(
            p.message
                .starts_with("Deployment httpbin-waypoint already exists and is not managed"),
            "{}",
            p.message
        );
        assert_eq!(s.addresses, None);
    }

    #[test]
    fn class_status_is_stable() {
        let first = class_status(None, Some(1), None, &at(1));
        assert_eq!(class_status(Some(&first), Some(1), None, &at(5)), first);
        assert_eq!(first.conditions.unwrap()[0].reason, "Accepted");
    }
}
