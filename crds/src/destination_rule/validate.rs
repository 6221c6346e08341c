//! istiod's admission checks for DestinationRule (`ValidateDestinationRule` in
//! istio/istio `pkg/config/validation/validation.go`, with helpers from
//! `pkg/config/validation/agent/validation.go`), ported so that our webhook rejects
//! what istiod rejects and says so in istiod's words: users who know Istio recognise
//! the message, and the path says which field it is about.
//!
//! Checks that our types make impossible (a null subset, a warmup without duration,
//! an unknown PROXY protocol version) are not repeated here; serde refuses those
//! objects first.

mod load_balancer;
mod syntax;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use super::{
    ClientTlsSettings, ConnectionPoolSettings, DestinationRuleSpec, H2UpgradePolicy, HttpSettings,
    LoadBalancerSettings, OutlierDetection, PortTrafficPolicy, Subset, TcpSettings, TlsMode,
    TrafficPolicy, TunnelSettings, WorkloadSelector,
};
use crate::Duration;

/// One problem, located by its JSON field path from the object root, e.g.
/// `spec.trafficPolicy.outlierDetection.maxEjectionPercent` or `spec.subsets[1].name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub path: String,
    pub message: String,
}

/// Everything wrong with one DestinationRule: errors reject it, warnings are returned
/// to the user with an admitted object, as istiod does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub errors: Vec<Finding>,
    pub warnings: Vec<Finding>,
}

impl Report {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(Finding {
            path: path.into(),
            message: message.into(),
        });
    }

    fn warning(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Finding {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Records `result`'s message as an error at `path`.
    fn check<E: Into<String>>(&mut self, path: impl Into<String>, result: Result<(), E>) {
        if let Err(message) = result {
            self.error(path, message);
        }
    }
}

/// Validates a DestinationRule spec the way istiod's webhook does, reporting findings
/// in istiod's order.
///
/// `namespace` is the DestinationRule's namespace (needed for the exportTo rules); `.`
/// in `exportTo` and `configmap://` credentials are resolved against it.
///
/// Two checks go beyond istiod: `simple` together with `consistentHash` (a oneOf in
/// Istio's CRD that our schema lacks), and a port-level entry for port 0, which can
/// never match a service port.
pub fn validate(spec: &DestinationRuleSpec, namespace: &str) -> Report {
    let mut report = Report::default();
    report.check("spec.host", syntax::wildcard_domain(&spec.host));
    if let Some(policy) = &spec.traffic_policy {
        traffic_policy(&mut report, "spec.trafficPolicy", policy, namespace);
    }
    subsets(&mut report, &spec.subsets, namespace);
    export_to(
        &mut report,
        namespace,
        &spec.export_to,
        spec.workload_selector.is_some(),
    );
    if let Some(selector) = &spec.workload_selector {
        workload_selector(&mut report, selector);
    }
    report
}

// ---- top level ------------------------------------------------------------------

fn subsets(report: &mut Report, subsets: &[Subset], namespace: &str) {
    let mut seen = BTreeSet::new();
    for (i, subset) in subsets.iter().enumerate() {
        let path = format!("spec.subsets[{i}]");
        if !seen.insert(subset.name.as_str()) {
            report.error(
                format!("{path}.name"),
                format!("duplicate subset names: {}", subset.name),
            );
        }
        report.check(format!("{path}.name"), subset_name(&subset.name));
        labels(report, &format!("{path}.labels"), &subset.labels);
        if let Some(policy) = &subset.traffic_policy {
            traffic_policy(report, &format!("{path}.trafficPolicy"), policy, namespace);
        }
    }
}

/// istiod's `validateSubsetName`.
fn subset_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err("subset name cannot be empty".to_owned())
    } else if syntax::is_dns1123_label(name) {
        Ok(())
    } else {
        Err(format!("subset name is invalid: {name}"))
    }
}

/// `labels.Instance.Validate`, one finding per bad key or value.
fn labels(report: &mut Report, path: &str, labels: &BTreeMap<String, String>) {
    for (key, value) in labels {
        let path = format!("{path}[{key}]");
        report.check(path.clone(), syntax::label_key(key));
        report.check(path, syntax::label_value(value));
    }
}

/// istiod's `validateExportTo` for a DestinationRule: `.` stands for `namespace`, so
/// `.` and the namespace's own name are duplicates.
fn export_to(report: &mut Report, namespace: &str, entries: &[String], has_selector: bool) {
    if entries.is_empty() {
        return;
    }
    let mut accepted = BTreeSet::new();
    for (i, entry) in entries.iter().enumerate() {
        let path = format!("spec.exportTo[{i}]");
        let key = if entry == "." { namespace } else { entry };
        if accepted.contains(key) {
            let message = if key == entry {
                format!("duplicate entries in exportTo for entry {entry}")
            } else {
                format!("duplicate entries in exportTo: . and current namespace {namespace}")
            };
            report.error(path, message);
        } else if let Err(message) = visibility(key) {
            report.error(path, message);
        } else {
            accepted.insert(key);
        }
    }
    if has_selector && !accepted.is_empty() {
        if !accepted.contains(namespace) {
            report.error(
                "spec.exportTo",
                "destination rule with workload selector cannot have exportTo beyond current namespace",
            );
        } else if accepted.len() > 1 {
            report.error(
                "spec.exportTo",
                "destination rule with workload selector cannot have multiple entries in exportTo",
            );
        }
    }
    if accepted.contains("*") && entries.len() > 1 {
        report.error(
            "spec.exportTo",
            "cannot have both public (*) and non-public exportTo values for a resource",
        );
    }
}

/// `visibility.Instance.Validate`.
fn visibility(entry: &str) -> Result<(), &'static str> {
    match entry {
        "." | "*" => Ok(()),
        "~" => Err("exportTo ~ (none) is not allowed for Istio configuration objects"),
        _ if syntax::is_dns1123_label(entry) => Ok(()),
        _ => Err("only .,*, or a valid DNS 1123 label is allowed as exportTo entry"),
    }
}

/// istiod's `validateWorkloadSelector`.
fn workload_selector(report: &mut Report, selector: &WorkloadSelector) {
    for (key, value) in &selector.match_labels {
        let path = format!("spec.workloadSelector.matchLabels[{key}]");
        let pair = syntax::go_quote(&format!("{key}={value}"));
        if key.is_empty() {
            report.error(
                path.clone(),
                format!("empty key is not supported in selector: {pair}"),
            );
        }
        if key.contains('*') || value.contains('*') {
            report.error(
                path,
                format!("wildcard is not supported in selector: {pair}"),
            );
        }
    }
    if selector.match_labels.is_empty() {
        report.warning(
            "spec.workloadSelector",
            "workload selector specified without labels",
        );
    }
}

// ---- traffic policy -------------------------------------------------------------

/// The four settings a port-level entry can override; istiod validates them the same
/// way wherever they appear.
struct Settings<'a> {
    load_balancer: Option<&'a LoadBalancerSettings>,
    connection_pool: Option<&'a ConnectionPoolSettings>,
    outlier_detection: Option<&'a OutlierDetection>,
    tls: Option<&'a ClientTlsSettings>,
}

impl<'a> From<&'a TrafficPolicy> for Settings<'a> {
    fn from(p: &'a TrafficPolicy) -> Self {
        Self {
            load_balancer: p.load_balancer.as_ref(),
            connection_pool: p.connection_pool.as_ref(),
            outlier_detection: p.outlier_detection.as_ref(),
            tls: p.tls.as_ref(),
        }
    }
}

impl<'a> From<&'a PortTrafficPolicy> for Settings<'a> {
    fn from(p: &'a PortTrafficPolicy) -> Self {
        Self {
            load_balancer: p.load_balancer.as_ref(),
            connection_pool: p.connection_pool.as_ref(),
            outlier_detection: p.outlier_detection.as_ref(),
            tls: p.tls.as_ref(),
        }
    }
}

impl Settings<'_> {
    fn is_empty(&self) -> bool {
        self.load_balancer.is_none()
            && self.connection_pool.is_none()
            && self.outlier_detection.is_none()
            && self.tls.is_none()
    }
}

/// istiod's `validateTrafficPolicy`; the two shape errors stop it, as in istiod.
fn traffic_policy(report: &mut Report, path: &str, policy: &TrafficPolicy, namespace: &str) {
    let settings = Settings::from(policy);
    if settings.is_empty()
        && policy.port_level_settings.is_empty()
        && policy.tunnel.is_none()
        && policy.proxy_protocol.is_none()
        && policy.retry_budget.is_none()
    {
        report.error(path, "traffic policy must have at least one field");
        return;
    }
    if policy.tunnel.is_some() && policy.proxy_protocol.is_some() {
        report.error(path, "tunnel and proxyProtocol must not be set together");
        return;
    }
    validate_settings(report, path, &settings, namespace);
    port_level_settings(report, path, &policy.port_level_settings, namespace);
    if let Some(tunnel) = &policy.tunnel {
        tunnel_settings(report, &format!("{path}.tunnel"), tunnel);
    }
}

fn validate_settings(report: &mut Report, path: &str, settings: &Settings<'_>, namespace: &str) {
    if let Some(od) = settings.outlier_detection {
        outlier_detection(report, &format!("{path}.outlierDetection"), od);
    }
    if let Some(pool) = settings.connection_pool {
        connection_pool(report, &format!("{path}.connectionPool"), pool);
    }
    if let Some(lb) = settings.load_balancer {
        let path = format!("{path}.loadBalancer");
        load_balancer::load_balancer(report, &path, lb, settings.outlier_detection);
    }
    if let Some(tls) = settings.tls {
        tls_settings(report, &format!("{path}.tls"), tls, namespace);
    }
}

/// istiod's `validatePortTrafficPolicies`.
fn port_level_settings(
    report: &mut Report,
    path: &str,
    entries: &[PortTrafficPolicy],
    namespace: &str,
) {
    for (i, entry) in entries.iter().enumerate() {
        let path = format!("{path}.portLevelSettings[{i}]");
        match &entry.port {
            None => report.error(
                format!("{path}.port"),
                "portTrafficPolicy must have valid port",
            ),
            Some(port) if port.number == 0 => report.error(
                format!("{path}.port.number"),
                "portTrafficPolicy must have valid port",
            ),
            Some(_) => {}
        }
        let settings = Settings::from(entry);
        if settings.is_empty() {
            report.error(path, "port traffic policy must have at least one field");
        } else {
            validate_settings(report, &path, &settings, namespace);
        }
    }
}

/// istiod's `validateTunnelSettings`.
fn tunnel_settings(report: &mut Report, path: &str, tunnel: &TunnelSettings) {
    if let Some(protocol) = &tunnel.protocol
        && !matches!(protocol.as_str(), "" | "CONNECT" | "POST")
    {
        report.error(
            format!("{path}.protocol"),
            r#"tunnel protocol must be "CONNECT" or "POST""#,
        );
    }
    let host = &tunnel.target_host;
    if let (Err(fqdn), Err(ip)) = (syntax::fqdn(host), syntax::ip_address(host)) {
        report.error(
            format!("{path}.targetHost"),
            format!("tunnel target host must be valid FQDN or IP address: {fqdn}; {ip}"),
        );
    }
    if let Err(err) = syntax::port(tunnel.target_port) {
        report.error(
            format!("{path}.targetPort"),
            format!("tunnel target port is invalid: {err}"),
        );
    }
}

/// Checks a duration field with `agent.ValidateDuration` when it is set.
fn duration(report: &mut Report, path: &str, field: &str, value: Option<&Duration>) {
    if let Some(value) = value {
        report.check(format!("{path}.{field}"), syntax::duration(value));
    }
}

// ---- outlier detection ----------------------------------------------------------

/// istiod's `validateOutlierDetection`.
fn outlier_detection(report: &mut Report, path: &str, od: &OutlierDetection) {
    duration(
        report,
        path,
        "baseEjectionTime",
        od.base_ejection_time.as_ref(),
    );
    if od.consecutive_errors.is_some_and(|n| n != 0) {
        report.warning(
            format!("{path}.consecutiveErrors"),
            "outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors or consecutive5xxErrors instead",
        );
    }
    if od.split_external_local_origin_errors != Some(true)
        && od.consecutive_local_origin_failures.is_some_and(|n| n > 0)
    {
        report.error(
            format!("{path}.consecutiveLocalOriginFailures"),
            "outlier detection consecutive local origin failures is specified, but split external local origin errors is set to false",
        );
    }
    duration(report, path, "interval", od.interval.as_ref());
    for (i, code) in od.outlier_detection_http_error_codes.iter().enumerate() {
        if !(100..=599).contains(code) {
            report.error(
                format!("{path}.outlierDetectionHttpErrorCodes[{i}]"),
                format!("{code} is not an HTTP status code in 100..599"),
            );
        }
    }
    percent(report, path, "maxEjectionPercent", od.max_ejection_percent);
    percent(report, path, "minHealthPercent", od.min_health_percent);
}

/// istiod's `ValidatePercent`; unset is 0, which is in range.
fn percent(report: &mut Report, path: &str, field: &str, value: Option<i32>) {
    if let Some(value) = value
        && !(0..=100).contains(&value)
    {
        report.error(
            format!("{path}.{field}"),
            format!("percentage {value} is not in range 0..100"),
        );
    }
}

// ---- connection pool ------------------------------------------------------------

/// istiod's `validateConnectionPool`.
fn connection_pool(report: &mut Report, path: &str, pool: &ConnectionPoolSettings) {
    if pool.http.is_none() && pool.tcp.is_none() {
        report.error(path, "connection pool must have at least one field");
        return;
    }
    if let Some(http) = &pool.http {
        http_settings(report, &format!("{path}.http"), http);
    }
    if let Some(tcp) = &pool.tcp {
        tcp_settings(report, &format!("{path}.tcp"), tcp);
    }
}

/// The limits are `int32` in Istio's API, so a negative number gets through the schema.
fn non_negative(report: &mut Report, path: &str, field: &str, value: Option<i32>, message: &str) {
    if value.is_some_and(|n| n < 0) {
        report.error(format!("{path}.{field}"), message);
    }
}

fn http_settings(report: &mut Report, path: &str, http: &HttpSettings) {
    let limits = [
        (
            "http1MaxPendingRequests",
            http.http1_max_pending_requests,
            "http1 max pending requests must be non-negative",
        ),
        (
            "http2MaxRequests",
            http.http2_max_requests,
            "http2 max requests must be non-negative",
        ),
        (
            "maxRequestsPerConnection",
            http.max_requests_per_connection,
            "max requests per connection must be non-negative",
        ),
        (
            "maxRetries",
            http.max_retries,
            "max retries must be non-negative",
        ),
    ];
    for (field, value, message) in limits {
        non_negative(report, path, field, value, message);
    }
    duration(report, path, "idleTimeout", http.idle_timeout.as_ref());
    if http.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade)
        && http.use_client_protocol == Some(true)
    {
        report.error(
            format!("{path}.useClientProtocol"),
            "use client protocol must not be true when H2UpgradePolicy is UPGRADE",
        );
    }
    non_negative(
        report,
        path,
        "maxConcurrentStreams",
        http.max_concurrent_streams,
        "max concurrent streams must be non-negative",
    );
    if let Some(keepalive) = &http.http2_keep_alive {
        let path = format!("{path}.http2KeepAlive");
        required_duration(report, &path, "interval", keepalive.interval.as_ref());
        required_duration(report, &path, "timeout", keepalive.timeout.as_ref());
    }
}

/// HTTP/2 keepalive needs both of its durations ("http2 keepalive interval is required").
fn required_duration(report: &mut Report, path: &str, field: &str, value: Option<&Duration>) {
    match value {
        Some(_) => duration(report, path, field, value),
        None => report.error(
            format!("{path}.{field}"),
            format!("http2 keepalive {field} is required"),
        ),
    }
}

fn tcp_settings(report: &mut Report, path: &str, tcp: &TcpSettings) {
    non_negative(
        report,
        path,
        "maxConnections",
        tcp.max_connections,
        "max connections must be non-negative",
    );
    duration(report, path, "connectTimeout", tcp.connect_timeout.as_ref());
    duration(
        report,
        path,
        "maxConnectionDuration",
        tcp.max_connection_duration.as_ref(),
    );
    // istiod skips the check when the timeout truncates to 0ms: `0s` disables it.
    let idle = tcp
        .idle_timeout
        .as_ref()
        .filter(|d| d.as_std().as_millis() != 0);
    duration(report, path, "idleTimeout", idle);
    if let Some(keepalive) = &tcp.tcp_keepalive {
        let path = format!("{path}.tcpKeepalive");
        duration(report, &path, "time", keepalive.time.as_ref());
        duration(report, &path, "interval", keepalive.interval.as_ref());
    }
}

// ---- TLS ------------------------------------------------------------------------

/// `agent.ValidateTLS`.
fn tls_settings(report: &mut Report, path: &str, tls: &ClientTlsSettings, namespace: &str) {
    let set = |field: &Option<String>| field.as_deref().is_some_and(|v| !v.is_empty());
    let mode = tls.mode.unwrap_or(TlsMode::Disable);
    if let Some(name) = tls.credential_name.as_deref()
        && name.starts_with(CONFIGMAP_PREFIX)
    {
        report.check(
            format!("{path}.credentialName"),
            configmap_credential(name, namespace),
        );
    }
    if tls.insecure_skip_verify == Some(true) {
        let sans = !tls.subject_alt_names.is_empty();
        match mode {
            TlsMode::Simple if set(&tls.ca_certificates) || set(&tls.credential_name) || sans => {
                report.error(
                    path,
                    "cannot specify CaCertificates or CredentialName or SubjectAltNames when InsecureSkipVerify is set true",
                );
            }
            TlsMode::Mutual if set(&tls.ca_certificates) || sans => report.error(
                path,
                "cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is set true",
            ),
            _ => {}
        }
    }
    let files = [
        &tls.client_certificate,
        &tls.ca_certificates,
        &tls.private_key,
        &tls.ca_crl,
    ];
    if matches!(mode, TlsMode::Simple | TlsMode::Mutual) && set(&tls.credential_name) {
        // Credentials come from the named secret, so file paths would be ignored.
        if files.into_iter().any(set) {
            report.error(
                path,
                "cannot specify client certificates or CA certificate or CA CRL If credentialName is set",
            );
        }
        return;
    }
    if mode == TlsMode::Mutual {
        if !set(&tls.client_certificate) {
            report.error(
                format!("{path}.clientCertificate"),
                "client certificate required for mutual tls",
            );
        }
        if !set(&tls.private_key) {
            report.error(
                format!("{path}.privateKey"),
                "private key required for mutual tls",
            );
        }
    }
}

const CONFIGMAP_PREFIX: &str = "configmap://";

/// A `configmap://namespace/name` credential must name a ConfigMap in the rule's own
/// namespace (istiod's `credentials.ParseResourceName` plus the namespace check).
fn configmap_credential(name: &str, namespace: &str) -> Result<(), String> {
    let invalid = |what: &str| {
        format!(
            "invalid configmap:// credentialName: invalid resource name {}. Expected {what}",
            syntax::go_quote(name)
        )
    };
    let rest = name.strip_prefix(CONFIGMAP_PREFIX).unwrap_or(name);
    let mut parts = rest.split('/');
    let (Some(ns), Some(configmap)) = (parts.next(), parts.next()) else {
        return Err(invalid("namespace and name"));
    };
    if ns.is_empty() {
        return Err(invalid("namespace"));
    }
    if configmap.is_empty() {
        return Err(invalid("name"));
    }
    if ns != namespace || namespace.is_empty() {
        return Err(format!(
            "invalid configmap:// credentialName: namespace must match the configuration namespace {}",
            syntax::go_quote(namespace)
        ));
    }
    Ok(())
}
