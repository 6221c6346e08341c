//! Test fixtures shared by the operator's unit tests.

use std::collections::BTreeMap;

use gateway_api::apis::standard::gateways::{Gateway, GatewayListeners, GatewaySpec};
use kube::api::ObjectMeta;

/// Metadata with a name, a namespace (none when empty) and labels.
pub fn meta(namespace: &str, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: (!namespace.is_empty()).then(|| namespace.into()),
        labels: Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..ObjectMeta::default()
    }
}

/// The seed guides' waypoint: `httpbin-waypoint` in `httpbin`, with `labels`.
pub fn seed_gateway(labels: &[(&str, &str)]) -> Gateway {
    Gateway {
        metadata: ObjectMeta {
            uid: Some("3b9c2f0e-0000-4000-8000-000000000001".into()),
            generation: Some(1),
            ..meta("httpbin", "httpbin-waypoint", labels)
        },
        spec: GatewaySpec {
            gateway_class_name: "istio-waypoint".into(),
            listeners: vec![GatewayListeners {
                name: "mesh".into(),
                port: 15008,
                protocol: "HBONE".into(),
                ..GatewayListeners::default()
            }],
            ..GatewaySpec::default()
        },
        status: None,
    }
}
