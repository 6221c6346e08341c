//! `spec.infrastructure.parametersRef` overlays: a ConfigMap whose keys hold
//! strategic-merge patches for the objects a waypoint becomes, as in Istio 1.26+
//! (`shared/reference/waypoint-contract.md` §2, fact 7). Keys and messages are
//! Istio's. Unlike Istio, a bad overlay is reported in the Gateway's status
//! (`Accepted=False`, `InvalidParameters`) instead of only in a log line.

use std::collections::BTreeMap;

use serde_json::Value;

/// The overlay keys Istio accepts, in its order.
pub const KEYS: [&str; 5] = [
    "deployment",
    "horizontalPodAutoscaler",
    "podDisruptionBudget",
    "service",
    "serviceAccount",
];

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overlays {
    pub deployment: Option<Value>,
    pub horizontal_pod_autoscaler: Option<Value>,
    pub pod_disruption_budget: Option<Value>,
    pub service: Option<Value>,
    pub service_account: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverlayError {
    #[error(
        "unsupported overlay {0:?} (supported: [deployment horizontalPodAutoscaler podDisruptionBudget service serviceAccount])"
    )]
    Unsupported(String),
    #[error("overlay {key:?} is not a YAML object: {reason}")]
    NotAnObject { key: String, reason: String },
    #[error(
        "overlay {key:?}: illegal metadata change: only labels and annotations may be set, not metadata.{field}"
    )]
    Metadata { key: String, field: String },
    #[error("overlay {key:?} does not make a valid {kind}: {reason}")]
    Shape {
        key: String,
        kind: String,
        reason: String,
    },
}

/// Reads the ConfigMap's data. Every key must be one Istio knows; every value a
/// YAML object whose metadata changes only labels and annotations.
pub fn parse(data: &BTreeMap<String, String>) -> Result<Overlays, OverlayError> {
    let mut out = Overlays::default();
    for (key, text) in data {
        let slot = match key.as_str() {
            "deployment" => &mut out.deployment,
            "horizontalPodAutoscaler" => &mut out.horizontal_pod_autoscaler,
            "podDisruptionBudget" => &mut out.pod_disruption_budget,
            "service" => &mut out.service,
            "serviceAccount" => &mut out.service_account,
            other => return Err(OverlayError::Unsupported(other.to_owned())),
        };
        let value: Value = serde_yaml::from_str(text).map_err(|e| OverlayError::NotAnObject {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        if !value.is_object() {
            return Err(OverlayError::NotAnObject {
                key: key.clone(),
                reason: format!("got {}", kind_of(&value)),
            });
        }
        if let Some(meta) = value.get("metadata").and_then(Value::as_object)
            && let Some(field) = meta.keys().find(|k| *k != "labels" && *k != "annotations")
        {
            return Err(OverlayError::Metadata {
                key: key.clone(),
                field: field.clone(),
            });
        }
        *slot = Some(value);
    }
    Ok(out)
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The merge key of the lists Kubernetes' strategic merge merges by key (from the
/// `patchMergeKey` tags of the core types); every other list is replaced.
fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "hostAliases" => Some("name"),
        "volumeMounts" => Some("mountPath"),
        "volumeDevices" => Some("devicePath"),
        "topologySpreadConstraints" => Some("topologyKey"),
        "ports" => Some("port"),
        _ => None,
    }
}

/// Strategic merge of `patch` into `base`: objects merge field by field, `null`
/// deletes, keyed lists merge item by item, other lists and scalars replace.
/// Container ports merge by `containerPort`, Service ports by `port`.
pub fn merge(base: &mut Value, patch: &Value) {
    merge_at(base, patch, None);
}

fn merge_at(base: &mut Value, patch: &Value, field: Option<&str>) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    b.remove(k);
                } else if let Some(existing) = b.get_mut(k) {
                    merge_at(existing, v, Some(k));
                } else {
                    b.insert(k.clone(), v.clone());
                }
            }
        }
        (Value::Array(b), Value::Array(p)) => {
            let key = field.and_then(merge_key).map(|k| {
                // Container ports are keyed by containerPort, Service ports by port.
                if k == "port"
                    && p.iter()
                        .chain(b.iter())
                        .any(|i| i.get("containerPort").is_some())
                {
                    "containerPort"
                } else {
                    k
                }
            });
            let Some(key) = key else {
                b.clone_from(p);
                return;
            };
            for item in p {
                match item.get(key).filter(|v| !v.is_null()) {
                    Some(id) => {
                        if let Some(existing) = b.iter_mut().find(|e| e.get(key) == Some(id)) {
                            merge_at(existing, item, None);
                        } else {
                            b.push(item.clone());
                        }
                    }
                    None => b.push(item.clone()),
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// `obj` with `patch` merged in, back in its type. `key` and `kind` name the overlay
/// in errors.
pub fn apply<K>(obj: &K, patch: Option<&Value>, key: &str, kind: &str) -> Result<K, OverlayError>
where
    K: serde::Serialize + serde::de::DeserializeOwned + Clone,
{
    let Some(patch) = patch else {
        return Ok(obj.clone());
    };
    let shape = |reason: String| OverlayError::Shape {
        key: key.to_owned(),
        kind: kind.to_owned(),
        reason,
    };
    let mut value = serde_json::to_value(obj).map_err(|e| shape(e.to_string()))?;
    merge(&mut value, patch);
    serde_json::from_value(value).map_err(|e| shape(e.to_string()))
}

#[cfg(test)]
mod tests;
