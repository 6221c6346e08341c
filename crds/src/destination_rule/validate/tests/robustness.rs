//! The fixtures, a spec that sets every field, and a deterministic no-panic property.

use std::path::Path;

use serde_json::{Value, json};

use super::{NS, Report, assert_valid, validate};
use crate::DestinationRule;
use crate::destination_rule::DestinationRuleSpec;

fn fixture_rules() -> Vec<(String, DestinationRule)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/destinationrule");
    let mut rules: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let rule: DestinationRule =
                serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.display().to_string(), rule)
        })
        .collect();
    rules.sort_by(|a, b| a.0.cmp(&b.0));
    rules
}

#[test]
fn every_fixture_is_valid() {
    let rules = fixture_rules();
    assert!(
        rules
            .iter()
            .any(|(p, _)| p.ends_with("01-seed-in-ambient-failover.yaml"))
    );
    for (path, rule) in rules {
        let namespace = rule.metadata.namespace.as_deref().unwrap_or("default");
        let report = validate(&rule.spec, namespace);
        assert_eq!(report, Report::default(), "{path}");
    }
}

/// A spec that sets every field validly, so mutations reach every check.
fn kitchen_sink() -> Value {
    let settings = json!({
        "loadBalancer": {
            "simple": "ROUND_ROBIN", "warmupDurationSecs": "10s",
            "warmup": {"duration": "10s", "minimumPercent": 10, "aggression": 1.0},
            "localityLbSetting": {"enabled": true, "failover": [{"from": "a", "to": "b"}],
                                  "failoverPriority": ["topology.istio.io/network"]},
        },
        "connectionPool": {
            "tcp": {"maxConnections": 1, "connectTimeout": "1s", "maxConnectionDuration": "1h",
                    "idleTimeout": "0s", "tcpKeepalive": {"probes": 1, "time": "1s", "interval": "1s"}},
            "http": {"http1MaxPendingRequests": 1, "http2MaxRequests": 1,
                     "maxRequestsPerConnection": 1, "maxRetries": 1, "idleTimeout": "1s",
                     "h2UpgradePolicy": "DEFAULT", "useClientProtocol": true,
                     "maxConcurrentStreams": 1,
                     "http2KeepAlive": {"interval": "1s", "timeout": "1s"}},
        },
        "outlierDetection": {
            "splitExternalLocalOriginErrors": true, "consecutiveLocalOriginFailures": 1,
            "consecutiveGatewayErrors": 1, "consecutive5xxErrors": 1, "interval": "1s",
            "baseEjectionTime": "1s", "maxEjectionPercent": 1, "minHealthPercent": 1,
        },
        "tls": {"mode": "MUTUAL", "clientCertificate": "/c", "privateKey": "/k",
                "caCertificates": "/ca", "subjectAltNames": ["s"], "sni": "s",
                "insecureSkipVerify": false, "caCrl": "/crl"},
    });
    let mut top = settings.clone();
    top["portLevelSettings"] = json!([{
        "port": {"number": 80},
        "loadBalancer": {"consistentHash": {
            "httpCookie": {"name": "c", "path": "/", "ttl": "0s",
                           "attributes": [{"name": "a", "value": "v"}]},
            "maglev": {"tableSize": 65537}}},
        "connectionPool": settings["connectionPool"],
        "outlierDetection": settings["outlierDetection"],
        "tls": {"mode": "SIMPLE", "credentialName": "configmap://httpbin/ca"},
    }]);
    top["tunnel"] = json!({"protocol": "CONNECT", "targetHost": "h.example", "targetPort": 1});
    top["retryBudget"] = json!({"percent": 20.0, "minRetryConcurrency": 3, "budgetInterval": "1s"});
    let mut subset_policy = settings;
    subset_policy["proxyProtocol"] = json!({"version": "V2"});
    subset_policy["loadBalancer"] = json!({"consistentHash": {
        "httpHeaderName": "x", "ringHash": {"minimumRingSize": 1024},
    }, "localityLbSetting": {"distribute": [{"from": "a/b/*", "to": {"a/b/*": 60, "c": 40}}]}});
    json!({
        "host": "*.example.com",
        "trafficPolicy": top,
        "subsets": [{"name": "v1", "labels": {"version": "v1"}, "trafficPolicy": subset_policy}],
        "exportTo": ["."],
        "workloadSelector": {"matchLabels": {"app": "r"}},
    })
}

#[test]
fn kitchen_sink_is_valid() {
    assert_valid(kitchen_sink());
}

/// xorshift64: a deterministic source of choices, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        usize::try_from(self.0 % u64::try_from(n).unwrap()).unwrap()
    }
}

/// Every JSON pointer in `value`, with the parent pointer and key of object members.
fn pointers(value: &Value, at: &str, out: &mut Vec<(String, Option<(String, String)>)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let escaped = key.replace('~', "~0").replace('/', "~1");
                let pointer = format!("{at}/{escaped}");
                out.push((pointer.clone(), Some((at.to_owned(), key.clone()))));
                pointers(child, &pointer, out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                let pointer = format!("{at}/{i}");
                out.push((pointer.clone(), None));
                pointers(child, &pointer, out);
            }
        }
        _ => {}
    }
}

/// Edge values for each JSON kind; a replacement mostly keeps the original's kind so
/// that most mutants still deserialize and reach the validator.
struct Pool {
    strings: Vec<Value>,
    numbers: Vec<Value>,
    others: Vec<Value>,
}

impl Pool {
    fn new() -> Self {
        let strings = [
            "",
            "*",
            ".",
            "~",
            "a/b",
            "us-west/*",
            "a/*/b",
            "a//b",
            "configmap://x",
            "configmap:///",
            "CONNECT",
            "GET",
            "0s",
            "1ns",
            "1ms",
            "1.5ms",
            "9999h",
            "UPGRADE",
            "MUTUAL",
            "SIMPLE",
            "ISTIO_MUTUAL",
            "V1",
            "topology.kubernetes.io/zone",
            "x=y*",
            "::1",
            "é\u{7f}\"",
        ];
        let numbers = [
            json!(0),
            json!(1),
            json!(2),
            json!(4),
            json!(100),
            json!(101),
            json!(65_537),
            json!(5_000_011),
            json!(4_294_967_295_u32),
            json!(18_446_744_073_709_551_557_u64),
            json!(-1),
            json!(-0.5),
            json!(1.5),
            json!(i32::MIN),
        ];
        let mut strings: Vec<Value> = strings.into_iter().map(Value::from).collect();
        strings.push(json!("a".repeat(300)));
        Self {
            strings,
            numbers: numbers.into(),
            others: [
                json!(true),
                json!(false),
                json!(null),
                json!({}),
                json!([]),
                json!([{}]),
            ]
            .into(),
        }
    }

    fn replacement(&self, original: &Value, rng: &mut Rng) -> Value {
        let same_kind = match original {
            Value::String(_) => &self.strings,
            Value::Number(_) => &self.numbers,
            _ => &self.others,
        };
        let pool = match rng.below(8) {
            0 => &self.strings,
            1 => &self.others,
            _ => same_kind,
        };
        pool[rng.below(pool.len())].clone()
    }
}

/// Deletes a member, duplicates an array's first item, or replaces a value.
fn mutate(value: &mut Value, rng: &mut Rng, pool: &Pool) {
    let mut all = Vec::new();
    pointers(value, "", &mut all);
    if all.is_empty() {
        return;
    }
    let (pointer, member) = all.swap_remove(rng.below(all.len()));
    match (rng.below(4), member) {
        (0, Some((parent, key))) => {
            if let Some(Value::Object(map)) = value.pointer_mut(&parent) {
                map.remove(&key);
            }
        }
        (1, _) => {
            if let Some(Value::Array(items)) = value.pointer_mut(&pointer)
                && let Some(first) = items.first().cloned()
            {
                items.push(first);
            }
        }
        _ => {
            if let Some(slot) = value.pointer_mut(&pointer) {
                *slot = pool.replacement(slot, rng);
            }
        }
    }
}

#[test]
fn validation_never_panics_on_mutated_specs() {
    let mut seeds: Vec<Value> = fixture_rules()
        .into_iter()
        .map(|(_, rule)| serde_json::to_value(rule.spec).unwrap())
        .collect();
    seeds.push(kitchen_sink());
    let pool = Pool::new();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let rounds = 3_000;
    let (mut validated, mut rejected) = (0, 0);
    for round in 0..rounds {
        let mut candidate = seeds[round % seeds.len()].clone();
        for _ in 0..=rng.below(3) {
            mutate(&mut candidate, &mut rng, &pool);
        }
        if let Ok(spec) = serde_json::from_value::<DestinationRuleSpec>(candidate) {
            let _ = validate(&spec, "");
            if !validate(&spec, NS).errors.is_empty() {
                rejected += 1;
            }
            validated += 1;
        }
    }
    // Enough mutants must deserialize, and some be refused, or the property tests little.
    assert!(
        validated * 3 > rounds && rejected * 10 > validated,
        "{validated} of {rounds} mutated specs deserialized, {rejected} were refused"
    );
}
