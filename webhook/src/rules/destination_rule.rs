//! DestinationRules: Istio's own validation with Istio's messages (so users who know
//! istiod recognise them), plus two warnings Istio never gives: a host that names
//! no Service, and a subset whose labels select no pod.

use waypoint_crds::destination_rule::{DestinationRuleSpec, validate};

use super::{Context, Object};
use crate::Verdict;
use crate::view::Labels;

pub fn review(obj: &Object<'_>, cx: &Context<'_>) -> Verdict {
    let mut v = Verdict::default();
    let who = obj.display();
    let Some(spec) = super::decode_spec::<DestinationRuleSpec>(obj, &who, &mut v) else {
        return v;
    };
    let report = validate(&spec, obj.namespace);
    for f in report.errors {
        v.deny(format!("{who}: {}: {}", f.path, f.message));
    }
    for f in report.warnings {
        v.warn(format!("{who}: {}: {}", f.path, f.message));
    }
    if v.allowed() {
        check_in_scope(obj, cx, &spec, &who, &mut v);
    }
    v
}

/// `host` as `(namespace, service)` when it names a Service of this cluster. As
/// istiod (`ResolveShortnameToFQDN`), only a name without dots is short; anything
/// else is an FQDN, which is ours only as `name.ns.svc.<domain>`.
pub fn service_of<'h>(host: &'h str, own_ns: &'h str, domain: &str) -> Option<(&'h str, &'h str)> {
    if !host.contains('.') {
        return (host != "*").then_some((own_ns, host));
    }
    let rest = host.strip_suffix(domain)?.strip_suffix(".svc.")?;
    match rest.split('.').collect::<Vec<_>>()[..] {
        [name, ns] => Some((ns, name)),
        _ => None,
    }
}

fn check_in_scope(
    obj: &Object<'_>,
    cx: &Context<'_>,
    spec: &DestinationRuleSpec,
    who: &str,
    v: &mut Verdict,
) {
    let Some((ns, name)) = service_of(&spec.host, obj.namespace, &cx.settings.cluster_domain)
    else {
        return;
    };
    let Some(svc) = cx.view.service(ns, name) else {
        v.warn(format!(
            "{who}: spec.host: no Service {name:?} in namespace {ns:?}, so this DestinationRule applies to \
             nothing until one exists (check the host for a typo)"
        ));
        return;
    };
    let selector: Labels = svc.spec.and_then(|s| s.selector).unwrap_or_default();
    for (i, subset) in spec.subsets.iter().enumerate() {
        if subset.labels.is_empty() {
            continue;
        }
        let mut wanted = selector.clone();
        wanted.extend(subset.labels.clone());
        if cx.view.pods_matching(ns, &wanted) == 0 {
            v.warn(format!(
                "{who}: spec.subsets[{i}].labels: no pod of Service {ns}/{name} carries {}; requests routed to \
                 subset {:?} would fail with 503 (no healthy upstream)",
                render(&subset.labels),
                subset.name
            ));
        }
    }
}

fn render(labels: &Labels) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}
