//! The waypoint contract both the operator and the webhook implement: the names and
//! labels users and Istio's tools see, and how an `istio.io/use-waypoint` label
//! resolves to a waypoint Gateway. Pure: no I/O, so admission and reconciliation can
//! never disagree on what a label means.

pub mod binding;
pub mod names;
