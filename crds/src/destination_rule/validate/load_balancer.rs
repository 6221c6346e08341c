//! istiod's `validateLoadBalancer` and `agent.ValidateLocalityLbSetting`.

use std::collections::{BTreeMap, BTreeSet};

use super::{Report, duration, syntax};
use crate::destination_rule::{
    ConsistentHashLb, HttpCookie, LoadBalancerSettings, LocalityFailover,
    LocalityLoadBalancerSetting, OutlierDetection, WarmupConfiguration,
};

/// Envoy refuses Maglev tables this large.
const MAGLEV_TABLE_LIMIT: u64 = 5_000_011;

/// Node labels that already express locality, so `failover` would conflict with them.
const TOPOLOGY_LABELS: [&str; 3] = [
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
];

/// `outlier` is the outlier detection beside this load balancer: failover needs it.
pub(super) fn load_balancer(
    report: &mut Report,
    path: &str,
    lb: &LoadBalancerSettings,
    outlier: Option<&OutlierDetection>,
) {
    // Istio's CRD makes these a oneOf; ours does not, so the webhook says it.
    if lb.simple.is_some() && lb.consistent_hash.is_some() {
        report.error(path, "only one of simple and consistentHash can be set");
    }
    if let Some(hash) = &lb.consistent_hash {
        consistent_hash(report, &format!("{path}.consistentHash"), hash);
    }
    if let Some(locality) = &lb.locality_lb_setting {
        let path = format!("{path}.localityLbSetting");
        locality_lb_setting(report, &path, locality, outlier);
    }
    if let Some(warmup) = &lb.warmup {
        warmup_configuration(report, &format!("{path}.warmup"), warmup);
    }
}

fn consistent_hash(report: &mut Report, path: &str, hash: &ConsistentHashLb) {
    if let Some(cookie) = &hash.http_cookie {
        http_cookie(report, &format!("{path}.httpCookie"), cookie);
    }
    if hash.minimum_ring_size.is_some_and(|n| n != 0) {
        let path = format!("{path}.minimumRingSize");
        report.warning(
            path.clone(),
            "consistent hash MinimumRingSize is deprecated, use ConsistentHashLB's RingHash configuration instead",
        );
        if hash.ring_hash.is_some() || hash.maglev.is_some() {
            report.error(
                path,
                "only one of MinimumRingSize or Maglev/Ringhash can be specified",
            );
        }
    }
    if let Some(maglev) = &hash.maglev {
        maglev_table_size(
            report,
            &format!("{path}.maglev.tableSize"),
            maglev.table_size,
        );
    }
}

fn http_cookie(report: &mut Report, path: &str, cookie: &HttpCookie) {
    if cookie.name.is_empty() {
        report.error(format!("{path}.name"), "name required for HttpCookie");
    }
    let mut names = BTreeSet::new();
    for (i, attribute) in cookie.attributes.iter().enumerate() {
        let path = format!("{path}.attributes[{i}].name");
        if attribute.name.is_empty() {
            report.error(path, "cookie attribute name cannot be empty");
        } else if !names.insert(attribute.name.as_str()) {
            report.error(
                path,
                format!("duplicate cookie attribute name: {}", attribute.name),
            );
        }
    }
}

/// Unset counts as 0, which istiod reports as both unset and not prime.
fn maglev_table_size(report: &mut Report, path: &str, size: Option<u64>) {
    let size = size.unwrap_or(0);
    if size == 0 {
        report.error(path, "tableSize must be set for maglev");
    }
    if size >= MAGLEV_TABLE_LIMIT {
        report.error(path, "tableSize must be less than 5000011 for maglev");
    }
    if !syntax::is_prime(size) {
        report.error(path, "tableSize must be a prime number for maglev");
    }
}

fn warmup_configuration(report: &mut Report, path: &str, warmup: &WarmupConfiguration) {
    duration(report, path, "duration", Some(&warmup.duration));
    if warmup.minimum_percent.is_some_and(|p| p > 100.0) {
        report.error(
            format!("{path}.minimumPercent"),
            "minimumPercent value should be less than or equal to 100",
        );
    }
    if warmup.aggression.is_some_and(|a| a <= 0.0) {
        report.error(
            format!("{path}.aggression"),
            "aggression should be greater than 0",
        );
    }
}

// ---- locality -------------------------------------------------------------------

/// `agent.ValidateLocalityLbSetting`. Like istiod it stops at the first conflict or
/// weight error, so later checks only run on a coherent setting.
fn locality_lb_setting(
    report: &mut Report,
    path: &str,
    setting: &LocalityLoadBalancerSetting,
    outlier: Option<&OutlierDetection>,
) {
    if !setting.distribute.is_empty() && !setting.failover.is_empty() {
        report.error(
            path,
            "can not simultaneously specify 'distribute' and 'failover'",
        );
        return;
    }
    if !setting.failover.is_empty() {
        let conflict = setting
            .failover_priority
            .iter()
            .enumerate()
            .find(|(_, label)| TOPOLOGY_LABELS.contains(&label.as_str()));
        if let Some((i, label)) = conflict {
            report.error(
                format!("{path}.failoverPriority[{i}]"),
                format!(
                    "can not simultaneously set 'failover' and topology label '{label}' in 'failover_priority'"
                ),
            );
            return;
        }
    }
    if !distribute(report, path, setting) {
        return;
    }
    let failing_over = !setting.failover.is_empty() || !setting.failover_priority.is_empty();
    if failing_over && outlier.is_none() {
        report.warning(
            path,
            "outlier detection policy must be provided for failover",
        );
    }
    for (i, failover) in setting.failover.iter().enumerate() {
        failover_regions(report, &format!("{path}.failover[{i}]"), failover);
    }
}

/// The `distribute` half; `false` when a weight error ends validation, as in istiod.
fn distribute(report: &mut Report, path: &str, setting: &LocalityLoadBalancerSetting) -> bool {
    for (i, rule) in setting.distribute.iter().enumerate() {
        let path = format!("{path}.distribute[{i}].to");
        if let Some(weight) = rule.to.iter().find(|(_, w)| !(1..=100).contains(*w)) {
            report.error(
                format!("{path}[{}]", weight.0),
                "locality weight must be in range [1, 100]",
            );
            return false;
        }
        // Each weight is at most 100, so only an absurd number of entries could wrap,
        // and then Go's uint32 sum wraps the same way.
        let total = rule.to.values().fold(0_u32, |sum, w| sum.wrapping_add(*w));
        if total != 100 {
            report.error(path, format!("total locality weight {total} != 100"));
            return false;
        }
        let targets: Vec<&str> = rule.to.keys().map(String::as_str).collect();
        if let Some((j, message)) = localities(&targets) {
            report.error(format!("{path}[{}]", targets[j]), message);
        }
    }
    let sources: Vec<&str> = setting
        .distribute
        .iter()
        .map(|rule| rule.from.as_deref().unwrap_or_default())
        .collect();
    if let Some((i, message)) = localities(&sources) {
        report.error(format!("{path}.distribute[{i}].from"), message);
    }
    true
}

fn failover_regions(report: &mut Report, path: &str, failover: &LocalityFailover) {
    let from = failover.from.as_deref().unwrap_or_default();
    let to = failover.to.as_deref().unwrap_or_default();
    if from == to {
        report.error(
            path,
            "locality lb failover settings must specify different regions",
        );
    }
    if from.contains('/') || to.contains('/') {
        report.error(path, "locality lb failover only specify region");
    }
    if from.contains('*') || to.contains('*') {
        report.error(
            path,
            "locality lb failover region should not contain '*' wildcard",
        );
    }
}

/// Subzones seen per zone per region; `*` marks a wildcard at that level.
type LocalityTree<'a> = BTreeMap<&'a str, BTreeMap<&'a str, BTreeSet<&'a str>>>;

/// istiod's `validateLocalities`: the index and message of the first locality that is
/// malformed or overlaps an earlier one.
fn localities(list: &[&str]) -> Option<(usize, String)> {
    let mut seen = LocalityTree::new();
    for (i, locality) in list.iter().enumerate() {
        if let Err(message) = add_locality(&mut seen, locality) {
            return Some((i, message));
        }
    }
    None
}

fn add_locality<'a>(seen: &mut LocalityTree<'a>, locality: &'a str) -> Result<(), String> {
    let stars = locality.matches('*').count();
    if stars > 1 || (stars == 1 && !locality.ends_with('*')) {
        return Err(format!(
            "locality {locality} wildcard '*' number can not exceed 1 and must be in the end"
        ));
    }
    let overlap = || format!("locality {locality} overlap with previous specified ones");
    if seen.contains_key("*") {
        return Err(overlap());
    }
    let parts: Vec<&str> = locality.splitn(3, '/').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(format!(
            "locality {locality} must not contain empty region/zone/subzone info"
        ));
    }
    match parts[..] {
        [region] => {
            if seen.contains_key(region) {
                return Err(overlap());
            }
            seen.insert(region, BTreeMap::from([("*", BTreeSet::from(["*"]))]));
        }
        [region, zone] => {
            let zones = seen.entry(region).or_default();
            if zones.contains_key("*") || zones.contains_key(zone) {
                return Err(overlap());
            }
            zones.insert(zone, BTreeSet::from(["*"]));
        }
        [region, zone, subzone] => {
            let zones = seen.entry(region).or_default();
            if zones.contains_key("*") {
                return Err(overlap());
            }
            let subzones = zones.entry(zone).or_default();
            if subzones.contains("*") || !subzones.insert(subzone) {
                return Err(overlap());
            }
        }
        _ => {}
    }
    Ok(())
}
