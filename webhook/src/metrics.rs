//! Prometheus counters for reviews, in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds, in seconds, of the review-duration histogram.
const BUCKETS: [f64; 8] = [0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.1];

#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// `(endpoint, kind, result)` → count
    reviews: BTreeMap<(String, String, &'static str), u64>,
    /// Requests answered 4xx before any rule ran: `code` → count.
    rejected: BTreeMap<u16, u64>,
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Metrics {
    pub fn review(&self, endpoint: &str, kind: &str, result: &'static str, took: Duration) {
        let Ok(mut m) = self.inner.lock() else { return };
        *m.reviews
            .entry((endpoint.to_owned(), kind.to_owned(), result))
            .or_default() += 1;
        let secs = took.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                m.buckets[i] += 1;
            }
        }
        m.count += 1;
        m.sum += secs;
    }

    pub fn rejected(&self, code: u16) {
        if let Ok(mut m) = self.inner.lock() {
            *m.rejected.entry(code).or_default() += 1;
        }
    }

    pub fn render(&self) -> String {
        let Ok(m) = self.inner.lock() else {
            return String::new();
        };
        let mut out = String::new();
        out.push_str(
            "# HELP waypoint_webhook_reviews_total Admission reviews answered, by result.\n",
        );
        out.push_str("# TYPE waypoint_webhook_reviews_total counter\n");
        for ((endpoint, kind, result), n) in &m.reviews {
            let _ = writeln!(
                out,
                "waypoint_webhook_reviews_total{{endpoint=\"{endpoint}\",kind=\"{kind}\",result=\"{result}\"}} {n}"
            );
        }
        out.push_str("# HELP waypoint_webhook_bad_requests_total Requests refused before review (400, 413).\n");
        out.push_str("# TYPE waypoint_webhook_bad_requests_total counter\n");
        for (code, n) in &m.rejected {
            let _ = writeln!(
                out,
                "waypoint_webhook_bad_requests_total{{code=\"{code}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP waypoint_webhook_review_duration_seconds Time to decide one review.\n",
        );
        out.push_str("# TYPE waypoint_webhook_review_duration_seconds histogram\n");
        for (le, n) in BUCKETS.iter().zip(m.buckets) {
            let _ = writeln!(
                out,
                "waypoint_webhook_review_duration_seconds_bucket{{le=\"{le}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "waypoint_webhook_review_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            m.count
        );
        let _ = writeln!(
            out,
            "waypoint_webhook_review_duration_seconds_sum {}",
            m.sum
        );
        let _ = writeln!(
            out,
            "waypoint_webhook_review_duration_seconds_count {}",
            m.count
        );
        out
    }
}
