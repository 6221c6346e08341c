//! AdmissionReview in, AdmissionReview out: the edge between the API server's wire
//! format and the pure rules.

use kube::core::DynamicObject;
use kube::core::admission::{
    AdmissionRequest, AdmissionResponse, AdmissionReview, Operation as KubeOp,
};
use serde_json::Value;

use crate::rules::{self, Context, Family, Object, Operation};

/// Which webhook path was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Mutate,
    Validate,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mutate => "mutate",
            Self::Validate => "validate",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed AdmissionReview: {0}")]
    Json(#[from] serde_json::Error),
    #[error("malformed AdmissionReview: it has no request")]
    NoRequest,
}

pub fn decode(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, DecodeError> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)?;
    review.try_into().map_err(|_| DecodeError::NoRequest)
}

/// What happened, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `None` for kinds we do not review (allowed, and logged by the caller).
    pub family: Option<Family>,
    pub allowed: bool,
    pub mutated: bool,
}

/// Runs the rules of `endpoint` on the request and builds the response.
pub fn review(
    endpoint: Endpoint,
    req: &AdmissionRequest<DynamicObject>,
    cx: &Context<'_>,
) -> (AdmissionReview<DynamicObject>, Outcome) {
    let value = req
        .object
        .as_ref()
        .and_then(|o| serde_json::to_value(o).ok())
        .unwrap_or(Value::Null);
    let name = if req.name.is_empty() {
        req.object
            .as_ref()
            .and_then(|o| {
                o.metadata
                    .name
                    .as_deref()
                    .or(o.metadata.generate_name.as_deref())
            })
            .unwrap_or_default()
    } else {
        &req.name
    };
    let obj = Object {
        group: &req.kind.group,
        kind: &req.kind.kind,
        operation: match req.operation {
            KubeOp::Create => Operation::Create,
            KubeOp::Update => Operation::Update,
            KubeOp::Delete | KubeOp::Connect => Operation::Other,
        },
        namespace: req.namespace.as_deref().unwrap_or_default(),
        name,
        value: &value,
    };
    let verdict = match endpoint {
        Endpoint::Mutate => rules::mutate(&obj, cx),
        Endpoint::Validate => rules::validate(&obj, cx),
    };
    let mut response = AdmissionResponse::from(req);
    if !verdict.warnings.is_empty() {
        response.warnings = Some(verdict.warnings.clone());
    }
    let mut mutated = false;
    if let Some(message) = verdict.message() {
        response = response.deny(message);
    } else if !verdict.patch.is_empty() {
        match response
            .clone()
            .with_patch(json_patch::Patch(verdict.patch.clone()))
        {
            Ok(patched) => {
                response = patched;
                mutated = true;
            }
            Err(e) => {
                response =
                    response.deny(format!("waypoint-webhook could not encode its patch: {e}"));
            }
        }
    }
    let outcome = Outcome {
        family: rules::family(obj.group, obj.kind),
        allowed: response.allowed,
        mutated,
    };
    (response.into_review(), outcome)
}
