//! Traffic policy shape, port-level settings, tunnel, connection pool, outlier
//! detection and TLS.

use serde_json::{Value, json};

use super::{assert_errors, assert_valid, check, findings, policy, spec, validate};
use crate::destination_rule::DestinationRuleSpec;

// ---- traffic policy shape -------------------------------------------------------

#[test]
fn traffic_policy_needs_a_field_and_not_both_tunnel_and_proxy_protocol() {
    assert_errors(
        policy(json!({})),
        &[(
            "spec.trafficPolicy",
            "traffic policy must have at least one field",
        )],
    );
    assert_valid(policy(json!({"retryBudget": {}})));
    assert_valid(policy(json!({"proxyProtocol": {}})));
    // Like istiod, the conflict stops validation of that policy.
    assert_errors(
        policy(json!({
            "tunnel": {"targetHost": "h", "targetPort": 0},
            "proxyProtocol": {"version": "V1"},
            "outlierDetection": {"maxEjectionPercent": 200},
        })),
        &[(
            "spec.trafficPolicy",
            "tunnel and proxyProtocol must not be set together",
        )],
    );
    // The PROXY version is an enum of V1 and V2 in our types, so istiod's
    // "proxy protocol version is invalid" cannot arise: serde refuses the object.
    let bad: Result<DestinationRuleSpec, _> =
        serde_json::from_value(policy(json!({"proxyProtocol": {"version": "V3"}})));
    assert!(bad.is_err());
}

#[test]
fn port_level_settings_need_a_port_and_a_setting() {
    let base = "spec.trafficPolicy.portLevelSettings";
    assert_valid(policy(
        json!({"portLevelSettings": [{"port": {"number": 80}, "tls": {"mode": "SIMPLE"}}]}),
    ));
    assert_errors(
        policy(json!({"portLevelSettings": [
            {"port": {"number": 80}},
            {"loadBalancer": {"simple": "RANDOM"}},
            {"port": {"number": 0}, "tls": {"mode": "SIMPLE"}},
            {"port": {"number": 81}, "outlierDetection": {"maxEjectionPercent": 101}},
        ]})),
        &[
            (
                &format!("{base}[0]"),
                "port traffic policy must have at least one field",
            ),
            (
                &format!("{base}[1].port"),
                "portTrafficPolicy must have valid port",
            ),
            (
                &format!("{base}[2].port.number"),
                "portTrafficPolicy must have valid port",
            ),
            (
                &format!("{base}[3].outlierDetection.maxEjectionPercent"),
                "percentage 101 is not in range 0..100",
            ),
        ],
    );
}

#[test]
fn tunnel_needs_a_known_protocol_and_a_reachable_target() {
    let tunnel = |t: Value| policy(json!({ "tunnel": t }));
    for host in ["mysql.example.com", "10.0.0.1", "::1", "fe80::1%eth0"] {
        assert_valid(tunnel(
            json!({"protocol": "POST", "targetHost": host, "targetPort": 3306}),
        ));
    }
    assert_valid(tunnel(
        json!({"protocol": "", "targetHost": "h", "targetPort": 65535}),
    ));
    assert_errors(
        tunnel(json!({"protocol": "GET", "targetHost": "not a host!", "targetPort": 0})),
        &[
            (
                "spec.trafficPolicy.tunnel.protocol",
                r#"tunnel protocol must be "CONNECT" or "POST""#,
            ),
            (
                "spec.trafficPolicy.tunnel.targetHost",
                r#"tunnel target host must be valid FQDN or IP address: domain name "not a host!" invalid (label "not a host!" invalid); not a host! is not a valid IP"#,
            ),
            (
                "spec.trafficPolicy.tunnel.targetPort",
                "tunnel target port is invalid: port number 0 must be in the range 1..65535",
            ),
        ],
    );
    assert_errors(
        tunnel(json!({"targetHost": "", "targetPort": 70000})),
        &[
            (
                "spec.trafficPolicy.tunnel.targetHost",
                "tunnel target host must be valid FQDN or IP address: empty domain name not allowed;  is not a valid IP",
            ),
            (
                "spec.trafficPolicy.tunnel.targetPort",
                "tunnel target port is invalid: port number 70000 must be in the range 1..65535",
            ),
        ],
    );
}

// ---- connection pool and outlier detection --------------------------------------

#[test]
fn connection_pool_limits_flags_and_keepalive() {
    let path = "spec.trafficPolicy.connectionPool";
    let pool = |p: Value| policy(json!({ "connectionPool": p }));
    assert_errors(
        pool(json!({})),
        &[(path, "connection pool must have at least one field")],
    );
    assert_valid(pool(
        json!({"http": {"h2UpgradePolicy": "UPGRADE", "useClientProtocol": false}}),
    ));
    assert_errors(
        pool(json!({
            "http": {
                "http1MaxPendingRequests": -1, "http2MaxRequests": -1,
                "maxRequestsPerConnection": -1, "maxRetries": -1,
                "h2UpgradePolicy": "UPGRADE", "useClientProtocol": true,
                "maxConcurrentStreams": -1, "http2KeepAlive": {},
            },
            "tcp": {"maxConnections": -1},
        })),
        &[
            (
                &format!("{path}.http.http1MaxPendingRequests"),
                "http1 max pending requests must be non-negative",
            ),
            (
                &format!("{path}.http.http2MaxRequests"),
                "http2 max requests must be non-negative",
            ),
            (
                &format!("{path}.http.maxRequestsPerConnection"),
                "max requests per connection must be non-negative",
            ),
            (
                &format!("{path}.http.maxRetries"),
                "max retries must be non-negative",
            ),
            (
                &format!("{path}.http.useClientProtocol"),
                "use client protocol must not be true when H2UpgradePolicy is UPGRADE",
            ),
            (
                &format!("{path}.http.maxConcurrentStreams"),
                "max concurrent streams must be non-negative",
            ),
            (
                &format!("{path}.http.http2KeepAlive.interval"),
                "http2 keepalive interval is required",
            ),
            (
                &format!("{path}.http.http2KeepAlive.timeout"),
                "http2 keepalive timeout is required",
            ),
            (
                &format!("{path}.tcp.maxConnections"),
                "max connections must be non-negative",
            ),
        ],
    );
}

#[test]
fn durations_are_at_least_1ms_in_whole_milliseconds() {
    let path = "spec.trafficPolicy.connectionPool";
    let pool = |p: Value| policy(json!({ "connectionPool": p }));
    let too_short = "duration must be greater than 1ms";
    let too_precise = "only durations to ms precision are supported";
    assert_valid(pool(json!({"tcp": {"connectTimeout": "1ms"}})));
    // tcp.idleTimeout 0s disables the timeout; istiod skips anything that truncates
    // to 0ms. http.idleTimeout has no such exemption.
    for idle in ["0s", "500us"] {
        assert_valid(pool(json!({"tcp": {"idleTimeout": idle}})));
    }
    assert_errors(
        pool(json!({
            "http": {"idleTimeout": "0s", "http2KeepAlive": {"interval": "1.5ms", "timeout": "0.5ms"}},
            "tcp": {
                "connectTimeout": "0.5ms", "maxConnectionDuration": "1.0001s",
                "idleTimeout": "1500us", "tcpKeepalive": {"time": "0s", "interval": "2h0.5ms"},
            },
        })),
        &[
            (&format!("{path}.http.idleTimeout"), too_short),
            (&format!("{path}.http.http2KeepAlive.interval"), too_precise),
            (&format!("{path}.http.http2KeepAlive.timeout"), too_short),
            (&format!("{path}.tcp.connectTimeout"), too_short),
            (&format!("{path}.tcp.maxConnectionDuration"), too_precise),
            (&format!("{path}.tcp.idleTimeout"), too_precise),
            (&format!("{path}.tcp.tcpKeepalive.time"), too_short),
            (&format!("{path}.tcp.tcpKeepalive.interval"), too_precise),
        ],
    );
}

#[test]
fn outlier_detection_percentages_durations_and_local_origin() {
    let path = "spec.trafficPolicy.outlierDetection";
    let od = |o: Value| policy(json!({ "outlierDetection": o }));
    assert_valid(od(json!({
        "splitExternalLocalOriginErrors": true, "consecutiveLocalOriginFailures": 3,
        "maxEjectionPercent": 100, "minHealthPercent": 0, "interval": "1s",
    })));
    assert_valid(od(json!({"consecutiveLocalOriginFailures": 0})));
    assert_valid(od(
        json!({"outlierDetectionHttpErrorCodes": [100, 503, 599]}),
    ));
    assert_errors(
        od(json!({"outlierDetectionHttpErrorCodes": [503, 600]})),
        &[(
            &format!("{path}.outlierDetectionHttpErrorCodes[1]"),
            "600 is not an HTTP status code in 100..599",
        )],
    );
    assert_errors(
        od(json!({
            "baseEjectionTime": "1.0005s", "consecutiveLocalOriginFailures": 3,
            "interval": "100us", "maxEjectionPercent": 101, "minHealthPercent": -1,
        })),
        &[
            (
                &format!("{path}.baseEjectionTime"),
                "only durations to ms precision are supported",
            ),
            (
                &format!("{path}.consecutiveLocalOriginFailures"),
                "outlier detection consecutive local origin failures is specified, but split external local origin errors is set to false",
            ),
            (
                &format!("{path}.interval"),
                "duration must be greater than 1ms",
            ),
            (
                &format!("{path}.maxEjectionPercent"),
                "percentage 101 is not in range 0..100",
            ),
            (
                &format!("{path}.minHealthPercent"),
                "percentage -1 is not in range 0..100",
            ),
        ],
    );
    let report = check(od(json!({"consecutiveErrors": 5})));
    assert_eq!(report.errors, []);
    assert_eq!(
        findings(&report.warnings),
        [(
            "spec.trafficPolicy.outlierDetection.consecutiveErrors",
            "outlier detection consecutive errors is deprecated, use consecutiveGatewayErrors or consecutive5xxErrors instead"
        )]
    );
}

// ---- TLS ------------------------------------------------------------------------

#[test]
fn tls_certificates_credential_name_and_insecure_skip_verify() {
    let path = "spec.trafficPolicy.tls";
    let tls = |t: Value| policy(json!({ "tls": t }));
    for ok in [
        json!({"mode": "DISABLE"}),
        json!({"mode": "ISTIO_MUTUAL", "caCertificates": "/ca.pem", "insecureSkipVerify": true}),
        json!({"mode": "SIMPLE", "insecureSkipVerify": true}),
        json!({"mode": "MUTUAL", "credentialName": "client"}),
        json!({"mode": "MUTUAL", "clientCertificate": "/c.pem", "privateKey": "/k.pem"}),
    ] {
        assert_valid(tls(ok));
    }
    assert_errors(
        tls(json!({"mode": "MUTUAL"})),
        &[
            (
                &format!("{path}.clientCertificate"),
                "client certificate required for mutual tls",
            ),
            (
                &format!("{path}.privateKey"),
                "private key required for mutual tls",
            ),
        ],
    );
    let files =
        "cannot specify client certificates or CA certificate or CA CRL If credentialName is set";
    assert_errors(
        tls(json!({"mode": "SIMPLE", "credentialName": "c", "caCrl": "/crl.pem"})),
        &[(path, files)],
    );
    assert_errors(
        tls(json!({"mode": "SIMPLE", "insecureSkipVerify": true, "subjectAltNames": ["a"]})),
        &[(
            path,
            "cannot specify CaCertificates or CredentialName or SubjectAltNames when InsecureSkipVerify is set true",
        )],
    );
    assert_errors(
        tls(
            json!({"mode": "MUTUAL", "insecureSkipVerify": true, "credentialName": "c",
                   "caCertificates": "/ca.pem"}),
        ),
        &[
            (
                path,
                "cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is set true",
            ),
            (path, files),
        ],
    );
}

#[test]
fn configmap_credentials_must_live_in_the_rules_namespace() {
    let path = "spec.trafficPolicy.tls.credentialName";
    let tls = |name: &str| policy(json!({"tls": {"mode": "SIMPLE", "credentialName": name}}));
    assert_valid(tls("configmap://httpbin/ca"));
    let cases = [
        (
            "configmap://other/ca",
            r#"invalid configmap:// credentialName: namespace must match the configuration namespace "httpbin""#,
        ),
        (
            "configmap://ca",
            r#"invalid configmap:// credentialName: invalid resource name "configmap://ca". Expected namespace and name"#,
        ),
        (
            "configmap:///ca",
            r#"invalid configmap:// credentialName: invalid resource name "configmap:///ca". Expected namespace"#,
        ),
        (
            "configmap://httpbin/",
            r#"invalid configmap:// credentialName: invalid resource name "configmap://httpbin/". Expected name"#,
        ),
    ];
    for (name, message) in cases {
        assert_errors(tls(name), &[(path, message)]);
    }
    let report = validate(&spec(tls("configmap://httpbin/ca")), "");
    assert_eq!(
        findings(&report.errors),
        [(
            path,
            r#"invalid configmap:// credentialName: namespace must match the configuration namespace """#
        )]
    );
}
