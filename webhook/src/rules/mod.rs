//! The admission rules: pure functions from the object under review and what the
//! watch caches know to a [`Verdict`]. One module per kind of object.

pub mod destination_rule;
pub mod gateway;
pub mod httproute;
pub mod labels;
pub mod virtual_service;

use serde_json::Value;

use crate::view::{ClusterView, Labels};
use crate::{Settings, Verdict};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    /// Delete and connect: nothing to check.
    Other,
}

/// The object under review, as the API server sent it (after earlier mutations).
#[derive(Debug, Clone, Copy)]
pub struct Object<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub operation: Operation,
    /// The request's namespace: set even when the object's metadata omits it.
    pub namespace: &'a str,
    pub name: &'a str,
    pub value: &'a Value,
}

impl Object<'_> {
    /// How messages name the object, e.g. `Gateway httpbin/waypoint`.
    pub fn display(&self) -> String {
        // The API server sets a Namespace's request namespace to its own name.
        if self.namespace.is_empty() || self.kind == "Namespace" {
            format!("{} {}", self.kind, self.name)
        } else {
            format!("{} {}/{}", self.kind, self.namespace, self.name)
        }
    }

    /// `metadata.labels`, ignoring anything that is not a string map entry (the API
    /// server's schema rejects those before validating webhooks run).
    pub fn labels(&self) -> Labels {
        self.value
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Everything a rule may consult besides the object.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub settings: &'a Settings,
    pub view: &'a dyn ClusterView,
}

/// Which rules own an object, or `None` for a kind we do not review.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Gateway,
    DestinationRule,
    VirtualService,
    HttpRoute,
    UseWaypointLabels,
}

pub fn family(group: &str, kind: &str) -> Option<Family> {
    match (group, kind) {
        ("gateway.networking.k8s.io", "Gateway") => Some(Family::Gateway),
        ("gateway.networking.k8s.io", "HTTPRoute") => Some(Family::HttpRoute),
        ("networking.istio.io", "DestinationRule") => Some(Family::DestinationRule),
        ("networking.istio.io", "VirtualService") => Some(Family::VirtualService),
        ("", "Namespace" | "Service" | "Pod") => Some(Family::UseWaypointLabels),
        _ => None,
    }
}

/// The mutating webhook's decision.
pub fn mutate(obj: &Object<'_>, cx: &Context<'_>) -> Verdict {
    match (obj.operation, family(obj.group, obj.kind)) {
        (Operation::Create | Operation::Update, Some(Family::Gateway)) => gateway::mutate(obj, cx),
        _ => Verdict::default(),
    }
}

/// The validating webhook's decision.
pub fn validate(obj: &Object<'_>, cx: &Context<'_>) -> Verdict {
    if obj.operation == Operation::Other {
        return Verdict::default();
    }
    match family(obj.group, obj.kind) {
        Some(Family::Gateway) => gateway::review(obj, cx),
        Some(Family::DestinationRule) => destination_rule::review(obj, cx),
        Some(Family::VirtualService) => virtual_service::review(obj, cx),
        Some(Family::HttpRoute) => httproute::review(obj, cx),
        Some(Family::UseWaypointLabels) => labels::review(obj, cx),
        None => Verdict::default(),
    }
}

/// The object's `spec` as `T`, or `None` after a warning when our types cannot read
/// it: the API server's schema accepted it, so our types are the stricter ones, and
/// a valid Istio object is let through unchecked rather than blocked.
pub fn decode_spec<T: serde::de::DeserializeOwned>(
    obj: &Object<'_>,
    who: &str,
    v: &mut Verdict,
) -> Option<T> {
    let spec = obj.value.get("spec").cloned().unwrap_or(Value::Null);
    match serde_json::from_value(spec) {
        Ok(spec) => Some(spec),
        Err(e) => {
            tracing::warn!(object = %who, error = %e, "{} not decodable; admitted unchecked", obj.kind);
            v.warn(format!("{who}: not validated by waypoint: {e}"));
            None
        }
    }
}

/// Kubernetes' DNS-1123 label: what Gateway, Service and namespace names must be.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// A short rendering of a user's value for messages: strings quoted, the rest as JSON.
pub fn show(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "nothing".to_owned(),
        Some(v) => v.to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests;
