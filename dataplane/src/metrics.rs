//! Istio's standard HTTP metrics as a waypoint reports them (`reporter="waypoint"`,
//! `shared/reference/traffic-policy.md` §5.4), plus Envoy's outlier-detection and
//! circuit-breaker overflow counters per cluster, in the Prometheus text format served
//! on 15020.
//!
//! Labels we cannot know yet (source identity arrives with HBONE) read `unknown`, and
//! `*_canonical_revision` reads `latest`, as Istio writes them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};

use crate::outlier::Reason;

/// Envoy's default histogram buckets, in milliseconds for durations and bytes for sizes.
pub const BUCKETS: [f64; 19] = [
    0.5,
    1.0,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1000.0,
    2500.0,
    5000.0,
    10000.0,
    30000.0,
    60000.0,
    300_000.0,
    600_000.0,
    1_800_000.0,
    3_600_000.0,
];

/// What varies per request among Istio's labels.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RequestLabels {
    /// The cluster's service FQDN, e.g. `in-ambient.httpbin.svc.cluster.local`.
    pub destination_service: String,
    pub destination_workload: String,
    pub response_code: u16,
    pub response_flags: String,
    /// The HBONE client's SPIFFE ID; `None` on plain listeners.
    pub source_principal: Option<String>,
}

#[derive(Clone, Debug, Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    #[allow(clippy::cast_precision_loss)] // byte counts and milliseconds fit f64's mantissa
    fn observe(&mut self, v: f64) {
        for (b, bound) in self.buckets.iter_mut().zip(BUCKETS) {
            if v <= bound {
                *b += 1;
            }
        }
        self.count += 1;
        self.sum += v;
    }
}

#[derive(Clone, Debug, Default)]
struct Series {
    requests: u64,
    duration_ms: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

#[derive(Clone, Copy, Debug, Default)]
struct Outlier {
    enforced: u64,
    overflow: u64,
    active: u64,
    /// By [`Reason`]: thresholds reached (`ejections_detected_<reason>`), and
    /// ejections made (`ejections_enforced_<reason>`).
    detected_by: [u64; 3],
    enforced_by: [u64; 3],
}

/// The index of a reason in [`Outlier`]'s arrays, in Envoy's stat name order.
fn reason_index(reason: Reason) -> usize {
    match reason {
        Reason::Consecutive5xx => 0,
        Reason::ConsecutiveGatewayFailure => 1,
        Reason::ConsecutiveLocalOriginFailure => 2,
    }
}

/// Envoy's upstream counters of one cluster: circuit-breaker overflows, connect
/// failures and retries, under Envoy's stat names.
#[derive(Clone, Copy, Debug, Default)]
struct Upstream {
    /// `upstream_rq_pending_overflow`: requests refused by max pending or max
    /// requests (503 `UO`).
    rq_pending: u64,
    /// `upstream_rq_retry_overflow`: retries not made because of max retries.
    rq_retry: u64,
    /// `upstream_cx_overflow`: connections not opened because of max connections.
    cx: u64,
    /// `upstream_cx_connect_fail`: connection attempts that failed or timed out.
    cx_connect_fail: u64,
    /// `upstream_rq_retry`: retries made.
    rq_retry_made: u64,
    /// `retry_or_shadow_abandoned`: requests whose body outgrew the retry buffer.
    retry_or_shadow_abandoned: u64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<RequestLabels, Series>>,
    outlier: Mutex<BTreeMap<String, Outlier>>,
    upstream: Mutex<BTreeMap<String, Upstream>>,
}

/// The Deployment a ReplicaSet pod belongs to: `<deployment>-<hash>-<suffix>`.
pub fn workload_of(pod: &str) -> &str {
    let mut parts = pod.rsplitn(3, '-');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(_), Some(deployment)) if !deployment.is_empty() => deployment,
        _ => pod,
    }
}

impl Metrics {
    #[allow(clippy::cast_precision_loss)]
    pub fn record(
        &self,
        labels: RequestLabels,
        duration_ms: u128,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        let mut map = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
        let s = map.entry(labels).or_default();
        s.requests += 1;
        s.duration_ms.observe(duration_ms as f64);
        s.request_bytes.observe(request_bytes as f64);
        s.response_bytes.observe(response_bytes as f64);
    }

    pub fn ejection_enforced(&self, cluster: &str, reason: Reason) {
        let mut map = self.outlier.lock().unwrap_or_else(PoisonError::into_inner);
        let o = map.entry(cluster.to_owned()).or_default();
        o.enforced += 1;
        o.detected_by[reason_index(reason)] += 1;
        o.enforced_by[reason_index(reason)] += 1;
    }

    /// A threshold reached that maxEjectionPercent kept from ejecting: detected,
    /// not enforced.
    pub fn ejection_overflow(&self, cluster: &str, reason: Reason) {
        let mut map = self.outlier.lock().unwrap_or_else(PoisonError::into_inner);
        let o = map.entry(cluster.to_owned()).or_default();
        o.overflow += 1;
        o.detected_by[reason_index(reason)] += 1;
    }

    /// The ejected endpoints now, as the cluster's detector counts them: an
    /// ejected endpoint that leaves the cluster, or a detector replaced by a new
    /// policy, takes its ejection with it.
    pub fn set_ejections_active(&self, cluster: &str, active: usize) {
        let mut map = self.outlier.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(cluster.to_owned()).or_default().active = active as u64;
    }

    fn upstream(&self, cluster: &str, bump: impl FnOnce(&mut Upstream)) {
        bump(
            self.upstream
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(cluster.to_owned())
                .or_default(),
        );
    }

    pub fn pending_overflow(&self, cluster: &str) {
        self.upstream(cluster, |o| o.rq_pending += 1);
    }

    pub fn retry_overflow(&self, cluster: &str) {
        self.upstream(cluster, |o| o.rq_retry += 1);
    }

    pub fn connection_overflow(&self, cluster: &str) {
        self.upstream(cluster, |o| o.cx += 1);
    }

    pub fn connect_failed(&self, cluster: &str) {
        self.upstream(cluster, |o| o.cx_connect_fail += 1);
    }

    pub fn retried(&self, cluster: &str) {
        self.upstream(cluster, |o| o.rq_retry_made += 1);
    }

    pub fn retry_or_shadow_abandoned(&self, cluster: &str) {
        self.upstream(cluster, |o| o.retry_or_shadow_abandoned += 1);
    }

    /// The Prometheus text exposition of everything recorded.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let requests = self
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let _ = writeln!(out, "# TYPE istio_requests_total counter");
        for (l, s) in &requests {
            let _ = writeln!(
                out,
                "istio_requests_total{{{}}} {}",
                istio_labels(l),
                s.requests
            );
        }
        for (name, pick) in [
            (
                "istio_request_duration_milliseconds",
                (|s: &Series| &s.duration_ms) as fn(&Series) -> &Histogram,
            ),
            ("istio_request_bytes", |s: &Series| &s.request_bytes),
            ("istio_response_bytes", |s: &Series| &s.response_bytes),
        ] {
            let _ = writeln!(out, "# TYPE {name} histogram");
            for (l, s) in &requests {
                let (h, labels) = (pick(s), istio_labels(l));
                for (bound, n) in BUCKETS.iter().zip(h.buckets) {
                    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {n}");
                }
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
                let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
                let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
            }
        }
        self.render_clusters(&mut out);
        out
    }

    /// Envoy's per-cluster outlier and upstream stats.
    fn render_clusters(&self, out: &mut String) {
        let outlier = self
            .outlier
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        cluster_stats(
            out,
            &outlier,
            &[
                (
                    "envoy_cluster_outlier_detection_ejections_active",
                    "gauge",
                    |o| o.active,
                ),
                (
                    "envoy_cluster_outlier_detection_ejections_enforced_total",
                    "counter",
                    |o| o.enforced,
                ),
                (
                    "envoy_cluster_outlier_detection_ejections_overflow",
                    "counter",
                    |o| o.overflow,
                ),
            ],
        );
        reason_stats(out, &outlier);
        let upstream = self
            .upstream
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        cluster_stats(
            out,
            &upstream,
            &[
                (
                    "envoy_cluster_upstream_rq_pending_overflow",
                    "counter",
                    |o| o.rq_pending,
                ),
                ("envoy_cluster_upstream_rq_retry_overflow", "counter", |o| {
                    o.rq_retry
                }),
                ("envoy_cluster_upstream_cx_overflow", "counter", |o| o.cx),
                ("envoy_cluster_upstream_cx_connect_fail", "counter", |o| {
                    o.cx_connect_fail
                }),
                ("envoy_cluster_upstream_rq_retry", "counter", |o| {
                    o.rq_retry_made
                }),
                ("envoy_cluster_retry_or_shadow_abandoned", "counter", |o| {
                    o.retry_or_shadow_abandoned
                }),
            ],
        );
    }
}

/// Envoy's `ejections_{detected,enforced}_<reason>` counters of every cluster.
fn reason_stats(out: &mut String, clusters: &BTreeMap<String, Outlier>) {
    const REASONS: [&str; 3] = [
        "consecutive_5xx",
        "consecutive_gateway_failure",
        "consecutive_local_origin_failure",
    ];
    for (i, reason) in REASONS.iter().enumerate() {
        for (kind, by) in [
            (
                "detected",
                (|o: &Outlier| o.detected_by) as fn(&Outlier) -> [u64; 3],
            ),
            ("enforced", |o: &Outlier| o.enforced_by),
        ] {
            let name = format!("envoy_cluster_outlier_detection_ejections_{kind}_{reason}");
            series(out, &name, "counter", clusters, |o| by(o)[i]);
        }
    }
}

/// A stat's name, its Prometheus type, and how to read it from a cluster's stats.
type Stat<T> = (&'static str, &'static str, fn(&T) -> u64);

/// Envoy cluster stats, one line per cluster labelled with its name.
fn cluster_stats<T>(out: &mut String, clusters: &BTreeMap<String, T>, stats: &[Stat<T>]) {
    for (name, kind, pick) in stats {
        series(out, name, kind, clusters, pick);
    }
}

/// One stat: its type line, then a line per cluster labelled with its name.
fn series<T>(
    out: &mut String,
    name: &str,
    kind: &str,
    clusters: &BTreeMap<String, T>,
    pick: impl Fn(&T) -> u64,
) {
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (cluster, stats) in clusters {
        let _ = writeln!(
            out,
            "{name}{{cluster_name=\"{}\"}} {}",
            escape(cluster),
            pick(stats)
        );
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Istio's labels in the filter's order.
fn istio_labels(l: &RequestLabels) -> String {
    let mut parts = l.destination_service.splitn(3, '.');
    let (svc_name, svc_ns) = (
        parts.next().unwrap_or("unknown"),
        parts.next().unwrap_or("unknown"),
    );
    let principal = l.source_principal.as_deref();
    // spiffe://<td>/ns/<ns>/sa/<sa>: the namespace is the fourth segment.
    let source_ns = principal
        .and_then(|p| p.split('/').nth(4))
        .unwrap_or("unknown");
    let labels: [(&str, &str); 25] = [
        ("reporter", "waypoint"),
        ("source_workload", "unknown"),
        ("source_workload_namespace", source_ns),
        ("source_principal", principal.unwrap_or("unknown")),
        ("source_app", "unknown"),
        ("source_version", "unknown"),
        ("source_canonical_service", "unknown"),
        ("source_canonical_revision", "latest"),
        ("source_cluster", "unknown"),
        ("destination_workload", &l.destination_workload),
        ("destination_workload_namespace", svc_ns),
        ("destination_principal", "unknown"),
        ("destination_app", "unknown"),
        ("destination_version", "unknown"),
        ("destination_service", &l.destination_service),
        ("destination_service_name", svc_name),
        ("destination_service_namespace", svc_ns),
        ("destination_canonical_service", &l.destination_workload),
        ("destination_canonical_revision", "latest"),
        ("destination_cluster", "unknown"),
        ("request_protocol", "http"),
        ("response_flags", &l.response_flags),
        (
            "connection_security_policy",
            if principal.is_some() {
                "mutual_tls"
            } else {
                "none"
            },
        ),
        ("response_code", ""),
        ("grpc_response_status", ""),
    ];
    let code = l.response_code.to_string();
    labels
        .iter()
        .map(|(k, v)| {
            let v = if *k == "response_code" {
                code.as_str()
            } else {
                v
            };
            format!("{k}=\"{}\"", escape(v))
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(code: u16) -> RequestLabels {
        RequestLabels {
            destination_service: "in-ambient.httpbin.svc.cluster.local".into(),
            destination_workload: "in-ambient".into(),
            response_code: code,
            response_flags: "-".into(),
            source_principal: None,
        }
    }

    #[test]
    fn renders_istio_series_with_envoys_buckets() {
        let m = Metrics::default();
        m.record(labels(200), 3, 0, 360);
        m.record(labels(200), 700, 10, 360);
        m.record(labels(503), 1, 0, 95);
        let text = m.render();
        let ok = text
            .lines()
            .find(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"200\""))
            .unwrap();
        assert!(
            ok.starts_with(
                "istio_requests_total{reporter=\"waypoint\",source_workload=\"unknown\""
            ),
            "{ok}"
        );
        assert!(ok.contains("destination_service=\"in-ambient.httpbin.svc.cluster.local\",destination_service_name=\"in-ambient\",destination_service_namespace=\"httpbin\""), "{ok}");
        assert!(ok.ends_with("} 2"), "{ok}");
        let bucket = |le: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with("istio_request_duration_milliseconds_bucket{")
                        && l.contains("response_code=\"200\"")
                        && l.contains(&format!("le=\"{le}\""))
                })
                .unwrap()
                .rsplit(' ')
                .next()
                .unwrap()
                .to_owned()
        };
        assert_eq!(
            (bucket("5"), bucket("500"), bucket("1000"), bucket("+Inf")),
            ("1".into(), "1".into(), "2".into(), "2".into())
        );
        assert!(text.contains("istio_response_bytes_count{"));
    }

    #[test]
    fn outlier_counters() {
        let m = Metrics::default();
        m.ejection_enforced("c", Reason::ConsecutiveGatewayFailure);
        m.set_ejections_active("c", 1);
        m.ejection_overflow("c", Reason::Consecutive5xx);
        m.ejection_overflow("c", Reason::ConsecutiveGatewayFailure);
        let text = m.render();
        assert!(text.contains(
            "envoy_cluster_outlier_detection_ejections_enforced_total{cluster_name=\"c\"} 1"
        ));
        assert!(
            text.contains(
                "envoy_cluster_outlier_detection_ejections_overflow{cluster_name=\"c\"} 2"
            )
        );
        assert!(
            text.contains("envoy_cluster_outlier_detection_ejections_active{cluster_name=\"c\"} 1")
        );
        // Envoy's per-reason counters: an overflow is detected, not enforced.
        for (series, n) in [
            ("detected_consecutive_5xx", 1),
            ("enforced_consecutive_5xx", 0),
            ("detected_consecutive_gateway_failure", 2),
            ("enforced_consecutive_gateway_failure", 1),
            ("detected_consecutive_local_origin_failure", 0),
        ] {
            let line = format!(
                "envoy_cluster_outlier_detection_ejections_{series}{{cluster_name=\"c\"}} {n}\n"
            );
            assert!(text.contains(&line), "{line} not in {text}");
        }
        m.set_ejections_active("c", 0);
        assert!(
            m.render()
                .contains("envoy_cluster_outlier_detection_ejections_active{cluster_name=\"c\"} 0")
        );
    }

    #[test]
    fn upstream_counters() {
        let m = Metrics::default();
        m.pending_overflow("c");
        m.pending_overflow("c");
        m.retry_overflow("c");
        let text = m.render();
        assert!(text.contains("# TYPE envoy_cluster_upstream_rq_pending_overflow counter"));
        assert!(text.contains("envoy_cluster_upstream_rq_pending_overflow{cluster_name=\"c\"} 2"));
        assert!(text.contains("envoy_cluster_upstream_rq_retry_overflow{cluster_name=\"c\"} 1"));
        assert!(text.contains("envoy_cluster_upstream_cx_overflow{cluster_name=\"c\"} 0"));
        m.connect_failed("c");
        m.retried("c");
        m.retried("c");
        m.retry_or_shadow_abandoned("c");
        let text = m.render();
        assert!(text.contains("envoy_cluster_retry_or_shadow_abandoned{cluster_name=\"c\"} 1"));
        assert!(text.contains("envoy_cluster_upstream_cx_connect_fail{cluster_name=\"c\"} 1"));
        assert!(text.contains("envoy_cluster_upstream_rq_retry{cluster_name=\"c\"} 2"));
        assert!(text.contains("envoy_cluster_upstream_rq_retry_overflow{cluster_name=\"c\"} 1"));
    }

    #[test]
    fn workloads_from_pod_names() {
        assert_eq!(workload_of("in-ambient-7d8f9b6c54-abc12"), "in-ambient");
        assert_eq!(workload_of("client"), "client");
        assert_eq!(workload_of("a-b"), "a-b");
    }
}
