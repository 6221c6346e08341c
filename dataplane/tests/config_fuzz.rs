//! A structure-aware fuzzer for the config decoder: seed configs that use every part
//! of the model are mutated (values replaced by odd ones, fields removed, added from
//! the model's own field names, arrays grown; raw bytes flipped and cut), and each
//! result is loaded as the dataplane loads a file or an operator update. Loading must
//! never panic, and a config that loads must build its runtime (balancers, rings,
//! Maglev tables, matchers) without panicking either.
//!
//! `cargo test -p waypoint-dataplane --test config_fuzz` runs a smoke; for a long run:
//! `WAYPOINT_FUZZ_CASES=200000 cargo test --release -p waypoint-dataplane --test config_fuzz`
//! (`WAYPOINT_FUZZ_SEED` picks another sequence).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::panic::{AssertUnwindSafe, catch_unwind};

use serde_json::Value;
use waypoint_config::Config;
use waypoint_dataplane::proxy::Runtime;

mod support;
use support::Rng;

/// Every listener kind, route shape and cluster policy the model has.
const SEEDS: &[&str] = &[
    r"
listeners:
- name: mesh
  address: 127.0.0.1:15008
  requestHeadersTimeout: 5s
  routes:
  - hosts: [in-ambient.httpbin.svc.cluster.local, 'in-ambient:8000', '*.example.com']
    cluster: rr
    timeout: 2s
    retry: {attempts: 2, retryOn: [connect-failure, 5xx], retriableStatusCodes: [503], avoidPreviousHosts: true}
    fault:
      delay: {fixedDelay: 10ms, percentage: {numerator: 1, denominator: 2}}
      abort: {httpStatus: 503, percentage: {numerator: 100000, denominator: 1000000}}
    rules:
    - matches:
      - path: {type: PathPrefix, value: /api}
        headers: [{name: x-canary, value: 'yes'}, {type: RegularExpression, name: x-v, value: 'v[0-9]+'}]
        queryParams: [{name: debug, value: '1'}]
        method: GET
      filters:
      - {type: RequestHeaderModifier, set: [{name: x-env, value: canary}], add: [{name: x-a, value: b}], remove: [x-drop]}
      - {type: ResponseHeaderModifier, add: [{name: x-route, value: canary}]}
      - {type: URLRewrite, hostname: other.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
      - {type: RequestMirror, cluster: lr, fraction: {numerator: 1, denominator: 2}}
      backends: [{cluster: rr, weight: 3}, {cluster: lr, weight: 1}]
      timeout: 1s
      backendTimeout: 300ms
    - matches: [{path: {type: RegularExpression, value: '^/old/.*'}}]
      filters: [{type: RequestRedirect, scheme: https, hostname: new.example, port: 8443, path: {type: ReplaceFullPath, replaceFullPath: /new}, statusCode: 301}]
    - matches: [{path: {type: Exact, value: /zero}}]
      backends: [{cluster: rr, weight: 0}]
  - hosts: [vs.example]
    cluster: rr
    ruleOrder: declared
    rules:
    - matches: [{path: {type: Prefix, value: /old}}]
      filters: [{type: URLRewrite, path: {type: PrefixRewrite, prefixRewrite: /new}}]
    - matches: [{path: {type: Exact, value: /down}}]
      directResponse: {status: 503, body: down for maintenance}
  - hosts: [tcp.example]
    cluster: rr
    protocol: TCP
clusters:
- name: rr
  loadBalancer: ROUND_ROBIN
  connectTimeout: 250ms
  protocol: HTTP/2
  slowStart: {window: 10s, minWeightPercent: 10, aggression: 1.5}
  connectionPool:
    maxConnections: 10
    maxPendingRequests: 5
    maxRequests: 100
    maxRequestsPerConnection: 3
    maxRetries: 2
    idleTimeout: 60s
    maxConnectionDuration: 30s
    http2KeepAlive: {interval: 10s, timeout: 5s}
    tcpKeepalive: {time: 30s, interval: 10s, probes: 3}
  outlierDetection:
    consecutive5xxErrors: 3
    consecutiveGatewayErrors: 2
    splitExternalLocalOriginErrors: true
    consecutiveLocalOriginFailures: 4
    interval: 10s
    baseEjectionTime: 30s
    maxEjectionPercent: 50
    minHealthPercent: 20
    httpErrorCodes: [503, 429]
  endpoints:
  - {address: 10.10.0.15:8080, workload: in-ambient-7d8f9b6c54-abc12, weight: 2}
  - {address: 10.10.0.16:8080, hbone: true}
- name: lr
  loadBalancer: LEAST_REQUEST
  protocol: downstream
  endpoints: [{address: '[::1]:8080'}]
",
    r"
clusters:
- name: hashed
  loadBalancer: MAGLEV
  consistentHash:
    httpCookie:
      name: session
      path: /
      ttl: 60s
      attributes: [{name: SameSite, value: Strict}, {name: Secure}]
    tableSize: 251
  connectionPool: {maxConnections: 1, maxPendingRequests: 2, maxRequestsPerConnection: 1, idleTimeout: 0s}
  endpoints: [{address: 10.10.0.15:8080, weight: 3}, {address: 10.10.0.16:8080, hbone: true}]
- name: ring
  loadBalancer: RING_HASH
  consistentHash: {httpHeaderName: x-user, minimumRingSize: 64}
  endpoints: [{address: 10.10.0.17:8080}, {address: 10.10.0.18:8080, weight: 5}]
- name: by-source
  loadBalancer: RING_HASH
  consistentHash: {useSourceIp: true}
  endpoints: [{address: 10.10.0.19:8080}]
- name: by-query
  loadBalancer: MAGLEV
  consistentHash: {httpQueryParameterName: user}
  endpoints: []
- name: random
  loadBalancer: RANDOM
  endpoints: [{address: 10.10.0.20:8080}]
",
];

/// Field names of the model, for mutations that add a field.
const NAMES: &[&str] = &[
    "listeners",
    "clusters",
    "name",
    "address",
    "protocol",
    "routes",
    "hosts",
    "cluster",
    "timeout",
    "retry",
    "attempts",
    "retryOn",
    "perTryTimeout",
    "fault",
    "delay",
    "abort",
    "fixedDelay",
    "percentage",
    "httpStatus",
    "rules",
    "ruleOrder",
    "directResponse",
    "status",
    "body",
    "prefixRewrite",
    "matches",
    "path",
    "type",
    "value",
    "headers",
    "queryParams",
    "method",
    "filters",
    "backends",
    "weight",
    "loadBalancer",
    "consistentHash",
    "httpCookie",
    "ttl",
    "tableSize",
    "minimumRingSize",
    "httpHeaderName",
    "useSourceIp",
    "httpQueryParameterName",
    "connectionPool",
    "maxConnections",
    "maxPendingRequests",
    "maxRequests",
    "maxRequestsPerConnection",
    "maxRetries",
    "idleTimeout",
    "maxConnectionDuration",
    "http2KeepAlive",
    "interval",
    "outlierDetection",
    "consecutive5xxErrors",
    "consecutiveGatewayErrors",
    "splitExternalLocalOriginErrors",
    "consecutiveLocalOriginFailures",
    "baseEjectionTime",
    "maxEjectionPercent",
    "minHealthPercent",
    "httpErrorCodes",
    "endpoints",
    "workload",
    "hbone",
    "slowStart",
    "window",
    "minWeightPercent",
    "aggression",
    "connectTimeout",
    "tls",
    "certificates",
    "requestHeadersTimeout",
    "fraction",
    "numerator",
    "denominator",
    "statusCode",
    "port",
    "scheme",
    "hostname",
];

/// Values that break assumptions: signs, extremes, wrong types, odd durations.
fn odd_value(rng: &mut Rng) -> Value {
    let pick = [
        "0",
        "-1",
        "1",
        "2",
        "3",
        "100",
        "101",
        "599",
        "600",
        "65537",
        "5000011",
        "4294967295",
        "4294967296",
        "18446744073709551615",
        "-9223372036854775808",
        "1e308",
        "-0.0",
        "0.5",
        "NaN",
        "\"\"",
        "\"x\"",
        "\"0s\"",
        "\"-1s\"",
        "\"1ms\"",
        "\"0.5ms\"",
        "\"1.5s\"",
        "\"9999999999999h\"",
        "\"18446744073709551615s\"",
        "\"1d\"",
        "\"10.10.0.15:8080\"",
        "\"[::1]:0\"",
        "\"*\"",
        "\"*.\"",
        "\"(\"",
        "\"^$\"",
        "\"/\"",
        "\"ROUND_ROBIN\"",
        "\"MAGLEV\"",
        "\"RING_HASH\"",
        "\"HTTP/2\"",
        "\"TCP\"",
        "\"PathPrefix\"",
        "\"RegularExpression\"",
        "\"ReplacePrefixMatch\"",
        "null",
        "true",
        "[]",
        "{}",
        "[1, 2]",
        "{\"name\": \"x\"}",
    ];
    let text = pick[rng.below(pick.len())];
    serde_json::from_str(text).unwrap_or(Value::String(text.to_owned()))
}

/// One structural change somewhere in the tree.
fn mutate(value: &mut Value, rng: &mut Rng) {
    // Walk down a random path, stopping at random.
    let mut node = value;
    loop {
        let children = match node {
            Value::Object(m) => m.len(),
            Value::Array(a) => a.len(),
            _ => 0,
        };
        if children == 0 || rng.below(3) == 0 {
            break;
        }
        let i = rng.below(children);
        node = match node {
            Value::Object(m) => m.values_mut().nth(i).unwrap(),
            Value::Array(a) => &mut a[i],
            _ => unreachable!(),
        };
    }
    match (rng.below(4), &mut *node) {
        (0, Value::Object(m)) if !m.is_empty() => {
            let key = m.keys().nth(rng.below(m.len())).unwrap().clone();
            m.remove(&key);
        }
        (0, Value::Array(a)) if !a.is_empty() => {
            let i = rng.below(a.len());
            a.remove(i);
        }
        (1, Value::Object(m)) => {
            m.insert(NAMES[rng.below(NAMES.len())].to_owned(), odd_value(rng));
        }
        (1, Value::Array(a)) if !a.is_empty() => {
            let copy = a[rng.below(a.len())].clone();
            a.push(copy);
        }
        _ => *node = odd_value(rng),
    }
}

/// Byte-level damage to the text (see [`support::damage`]).
fn damage(text: &str, rng: &mut Rng) -> String {
    let mut bytes = text.as_bytes().to_vec();
    support::damage(&mut bytes, rng);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Loads `text` as the dataplane does; a config that loads also builds its runtime
/// and starts its outlier-detection timers, as a reload does. Returns whether it
/// loaded, or the panic's message.
async fn load(text: &str) -> Result<bool, String> {
    let built = catch_unwind(AssertUnwindSafe(|| match Config::from_yaml(text) {
        Ok(config) => Some(Runtime::new(config)),
        Err(e) => {
            assert!(!e.to_string().is_empty(), "an error says what is wrong");
            None
        }
    }))
    .map_err(|panic| message(&*panic))?;
    let Some(runtime) = built else {
        return Ok(false);
    };
    let timers = runtime.spawn_timers();
    // Each timer computes its first due time when first polled.
    tokio::task::yield_now().await;
    for timer in timers {
        if timer.is_finished() {
            if let Err(e) = timer.await
                && e.is_panic()
            {
                return Err(message(&*e.into_panic()));
            }
        } else {
            timer.abort();
        }
    }
    Ok(true)
}

fn message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

#[test]
fn the_seeds_load() {
    for seed in SEEDS {
        if let Err(e) = Config::from_yaml(seed) {
            panic!("{e}\n{seed}");
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn no_mutated_config_panics_the_loader_or_the_runtime() {
    let cases = support::fuzz_cases(3_000);
    let seeds: Vec<Value> = SEEDS
        .iter()
        .map(|s| serde_yaml::from_str(s).unwrap())
        .collect();
    let mut rng = Rng::from_env();
    let (mut loaded, mut panics) = (0usize, Vec::new());
    for case in 0..cases {
        let mut value = seeds[case % seeds.len()].clone();
        for _ in 0..=rng.below(2) {
            mutate(&mut value, &mut rng);
        }
        let mut text = serde_yaml::to_string(&value).unwrap();
        if rng.below(8) == 0 {
            text = damage(&text, &mut rng);
        }
        match load(&text).await {
            Ok(true) => loaded += 1,
            Ok(false) => {}
            Err(why) => panics.push(format!("case {case}: {why}\n{text}")),
        }
    }
    println!("{loaded} of {cases} mutated configs loaded");
    assert!(
        panics.is_empty(),
        "{} panics; first:\n{}",
        panics.len(),
        panics[0]
    );
    // A fuzzer whose every case fails to parse tests only the parser's first check.
    assert!(
        loaded * 20 > cases,
        "only {loaded} of {cases} mutated configs loaded"
    );
}
