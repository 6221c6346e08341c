//! waypoint-webhook: admission for what ambient users get wrong silently upstream.
//! A waypoint Gateway on the wrong port, a misspelled `istio.io/use-waypoint` label or
//! an invalid DestinationRule is refused at `kubectl apply` time, with a message that
//! names the object, the field, the value and the fix.
//!
//! Layout: `rules` is pure decision logic over a [`view::ClusterView`]; `admission`
//! turns AdmissionReview JSON into rule input and verdicts into responses; `cache`
//! backs the view with watch caches; `server`, `tls` and `certs` are the I/O edges.

pub mod admission;
pub mod cache;
pub mod certs;
pub mod metrics;
pub mod rules;
pub mod server;
pub mod settings;
pub mod tls;
pub mod verdict;
pub mod view;

pub use settings::Settings;
pub use verdict::Verdict;
