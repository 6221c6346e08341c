//! Prometheus metrics and health endpoints. Status writes are counted so that "no
//! write when nothing changed" can be checked from outside.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds, in seconds, of the reconcile-duration histogram.
const BUCKETS: [f64; 9] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Debug, Default)]
pub struct Metrics {
    pub leader: AtomicBool,
    /// Set when the istio-waypoint class belongs to another controller.
    pub class_conflict: AtomicBool,
    /// Reconciles running right now (the closest kube-runtime lets us get to a
    /// queue depth).
    pub in_flight: AtomicU64,
    certificates_signed: AtomicU64,
    root_writes: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// `(controller, result)` → count
    reconciles: BTreeMap<(&'static str, &'static str), u64>,
    /// `controller` → (bucket counts, count, sum)
    durations: BTreeMap<&'static str, ([u64; BUCKETS.len()], u64, f64)>,
    /// `kind` → count
    status_writes: BTreeMap<&'static str, u64>,
    /// `kind` → count
    applies: BTreeMap<&'static str, u64>,
    /// `reason` → count
    certificate_refusals: BTreeMap<&'static str, u64>,
}

impl Metrics {
    pub fn reconciled(&self, controller: &'static str, ok: bool, took: Duration) {
        let Ok(mut m) = self.inner.lock() else { return };
        let result = if ok { "ok" } else { "error" };
        *m.reconciles.entry((controller, result)).or_default() += 1;
        let secs = took.as_secs_f64();
        let (buckets, count, sum) = m.durations.entry(controller).or_default();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                buckets[i] += 1;
            }
        }
        *count += 1;
        *sum += secs;
    }

    pub fn status_written(&self, kind: &'static str) {
        if let Ok(mut m) = self.inner.lock() {
            *m.status_writes.entry(kind).or_default() += 1;
        }
    }

    pub fn applied(&self, kind: &'static str) {
        if let Ok(mut m) = self.inner.lock() {
            *m.applies.entry(kind).or_default() += 1;
        }
    }

    pub fn certificate_signed(&self) {
        self.certificates_signed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn certificate_refused(&self, reason: &'static str) {
        if let Ok(mut m) = self.inner.lock() {
            *m.certificate_refusals.entry(reason).or_default() += 1;
        }
    }

    /// A `waypoint-mesh-root` ConfigMap was created or updated.
    pub fn root_written(&self) {
        self.root_writes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"
            );
        };
        gauge(
            &mut out,
            "waypoint_operator_leader",
            "1 while this replica holds the lease.",
            u64::from(self.leader.load(Ordering::Relaxed)),
        );
        gauge(
            &mut out,
            "waypoint_operator_gatewayclass_conflict",
            "1 when GatewayClass istio-waypoint belongs to another controller.",
            u64::from(self.class_conflict.load(Ordering::Relaxed)),
        );
        gauge(
            &mut out,
            "waypoint_operator_reconciles_in_flight",
            "Reconciles running now.",
            self.in_flight.load(Ordering::Relaxed),
        );
        self.render_ca(&mut out);
        let Ok(m) = self.inner.lock() else { return out };
        out.push_str(
            "# HELP waypoint_operator_reconciles_total Reconciles, by controller and result.\n",
        );
        out.push_str("# TYPE waypoint_operator_reconciles_total counter\n");
        for ((controller, result), n) in &m.reconciles {
            let _ = writeln!(
                out,
                "waypoint_operator_reconciles_total{{controller=\"{controller}\",result=\"{result}\"}} {n}"
            );
        }
        out.push_str("# HELP waypoint_operator_reconcile_duration_seconds Time per reconcile.\n");
        out.push_str("# TYPE waypoint_operator_reconcile_duration_seconds histogram\n");
        for (controller, (buckets, count, sum)) in &m.durations {
            for (le, n) in BUCKETS.iter().zip(buckets) {
                let _ = writeln!(
                    out,
                    "waypoint_operator_reconcile_duration_seconds_bucket{{controller=\"{controller}\",le=\"{le}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "waypoint_operator_reconcile_duration_seconds_bucket{{controller=\"{controller}\",le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "waypoint_operator_reconcile_duration_seconds_sum{{controller=\"{controller}\"}} {sum}"
            );
            let _ = writeln!(
                out,
                "waypoint_operator_reconcile_duration_seconds_count{{controller=\"{controller}\"}} {count}"
            );
        }
        for (name, help, map) in [
            (
                "waypoint_operator_status_writes_total",
                "Status subresource writes, by kind.",
                &m.status_writes,
            ),
            (
                "waypoint_operator_applies_total",
                "Server-side applies, by kind.",
                &m.applies,
            ),
        ] {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} counter\n");
            for (kind, n) in map {
                let _ = writeln!(out, "{name}{{kind=\"{kind}\"}} {n}");
            }
        }
        out
    }

    /// The mesh CA's counters.
    fn render_ca(&self, out: &mut String) {
        for (name, help, v) in [
            (
                "waypoint_operator_certificates_signed_total",
                "Workload certificates this replica signed.",
                &self.certificates_signed,
            ),
            (
                "waypoint_operator_root_configmap_writes_total",
                "Creates and updates of waypoint-mesh-root ConfigMaps.",
                &self.root_writes,
            ),
        ] {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
                v.load(Ordering::Relaxed)
            );
        }
        let Ok(m) = self.inner.lock() else { return };
        out.push_str("# HELP waypoint_operator_certificate_refusals_total Certificate requests refused, by reason.\n");
        out.push_str("# TYPE waypoint_operator_certificate_refusals_total counter\n");
        for (reason, n) in &m.certificate_refusals {
            let _ = writeln!(
                out,
                "waypoint_operator_certificate_refusals_total{{reason=\"{reason}\"}} {n}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_histogram() {
        let m = Metrics::default();
        m.reconciled("gateway", true, Duration::from_millis(30));
        m.reconciled("gateway", false, Duration::from_secs(2));
        m.status_written("Gateway");
        m.certificate_signed();
        m.certificate_refused("identity_mismatch");
        m.certificate_refused("identity_mismatch");
        let text = m.render();
        assert!(text.contains(
            "waypoint_operator_reconciles_total{controller=\"gateway\",result=\"ok\"} 1\n"
        ));
        assert!(text.contains(
            "waypoint_operator_reconciles_total{controller=\"gateway\",result=\"error\"} 1\n"
        ));
        assert!(text.contains("waypoint_operator_reconcile_duration_seconds_bucket{controller=\"gateway\",le=\"0.05\"} 1\n"));
        assert!(text.contains("waypoint_operator_reconcile_duration_seconds_bucket{controller=\"gateway\",le=\"+Inf\"} 2\n"));
        assert!(text.contains("waypoint_operator_status_writes_total{kind=\"Gateway\"} 1\n"));
        assert!(text.contains("waypoint_operator_leader 0\n"));
        assert!(text.contains("waypoint_operator_certificates_signed_total 1\n"));
        assert!(text.contains(
            "waypoint_operator_certificate_refusals_total{reason=\"identity_mismatch\"} 2\n"
        ));
    }
}
