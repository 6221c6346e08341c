//! A structure-aware fuzzer for the decoder and every rule: it mutates the fixture
//! objects and AdmissionReviews (fields replaced, removed, added from a dictionary of
//! the names the rules read; raw bytes flipped and cut) and checks that nothing
//! panics, that every mutation patch applies, and that mutation is idempotent.
//!
//! `cargo test -p waypoint-webhook --test fuzz` runs a short smoke; for a long run:
//! `WAYPOINT_FUZZ_CASES=1000000 cargo test --release -p waypoint-webhook --test fuzz`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout
)]

use std::path::Path;
use std::time::Instant;

use serde_json::{Map, Value, json};
use waypoint_webhook::Settings;
use waypoint_webhook::admission::{self, Endpoint};
use waypoint_webhook::rules::{self, Context, Object, Operation};
use waypoint_webhook::view::Snapshot;

/// xorshift64*: deterministic, so a failing seed reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n as u64)).unwrap()
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "namespace",
    "labels",
    "generateName",
    "spec",
    "gatewayClassName",
    "listeners",
    "port",
    "protocol",
    "hostname",
    "allowedRoutes",
    "namespaces",
    "from",
    "selector",
    "matchLabels",
    "matchExpressions",
    "key",
    "operator",
    "values",
    "infrastructure",
    "parametersRef",
    "group",
    "host",
    "trafficPolicy",
    "outlierDetection",
    "maxEjectionPercent",
    "minHealthPercent",
    "interval",
    "baseEjectionTime",
    "consecutive5xxErrors",
    "loadBalancer",
    "simple",
    "consistentHash",
    "maglev",
    "tableSize",
    "ringHash",
    "httpCookie",
    "ttl",
    "localityLbSetting",
    "distribute",
    "failover",
    "to",
    "connectionPool",
    "tcp",
    "http",
    "connectTimeout",
    "tls",
    "mode",
    "portLevelSettings",
    "number",
    "subsets",
    "exportTo",
    "workloadSelector",
    "parentRefs",
    "sectionName",
    "rules",
    "istio.io/use-waypoint",
    "istio.io/use-waypoint-namespace",
    "istio.io/waypoint-for",
    "istio.io/use-waypiont",
    "warmup",
    "duration",
    "aggression",
    "tunnel",
    "targetHost",
    "targetPort",
    "request",
    "object",
    "oldObject",
    "operation",
    "uid",
    "resource",
    "userInfo",
];

const STRINGS: &[&str] = &[
    "",
    "mesh",
    "HBONE",
    "hbone",
    "HTTP",
    "istio-waypoint",
    "none",
    "service",
    "workload",
    "all",
    "Same",
    "All",
    "Selector",
    "In",
    "NotIn",
    "Exists",
    "ConfigMap",
    "Service",
    "core",
    "10s",
    "1ms",
    "0s",
    "-1s",
    "1.5h",
    "999999999999h",
    "in-ambient",
    "*.example.com",
    "*",
    ".",
    "~",
    "ns/name",
    "UPDATE",
    "CREATE",
    "DELETE",
    "Gateway",
    "DestinationRule",
    "VirtualService",
    "HTTPRoute",
    "Namespace",
    "Pod",
    "networking.istio.io",
    "gateway.networking.k8s.io",
    "ÿ\u{0}\u{feff}",
    "a.b.c.d.e.f",
    "-bad-",
    "MAGLEV",
];

fn random_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth > 3 { 5 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 0),
        2 => json!(*rng.pick(&[
            0_i64,
            1,
            -1,
            15008,
            8080,
            65536,
            100,
            101,
            5_000_011,
            i64::MAX,
            i64::MIN
        ])),
        3 => json!(*rng.pick(&[0.5_f64, -0.0, 1e300, 15008.0])),
        4 => json!(*rng.pick(STRINGS)),
        5 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut m = Map::new();
            for _ in 0..rng.below(4) {
                m.insert((*rng.pick(KEYS)).to_owned(), random_value(rng, depth + 1));
            }
            Value::Object(m)
        }
    }
}

/// Every node of `v`, as JSON pointers.
fn pointers(v: &Value, at: &str, out: &mut Vec<String>) {
    out.push(at.to_owned());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                pointers(
                    c,
                    &format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                pointers(c, &format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn mutate_value(rng: &mut Rng, v: &mut Value) {
    for _ in 0..=rng.below(3) {
        let mut all = Vec::new();
        pointers(v, "", &mut all);
        let target = rng.pick(&all).clone();
        let Some(node) = v.pointer_mut(&target) else {
            continue;
        };
        match rng.below(5) {
            0 => *node = random_value(rng, 0),
            1 => match node {
                Value::Object(m) if !m.is_empty() => {
                    let key = m.keys().nth(rng.below(m.len())).unwrap().clone();
                    m.remove(&key);
                }
                Value::Array(a) if !a.is_empty() => {
                    a.remove(rng.below(a.len()));
                }
                _ => *node = Value::Null,
            },
            2 => match node {
                Value::Object(m) => {
                    m.insert((*rng.pick(KEYS)).to_owned(), random_value(rng, 1));
                }
                Value::Array(a) => a.push(random_value(rng, 1)),
                _ => *node = random_value(rng, 1),
            },
            3 => {
                if let Value::Array(a) = node
                    && let Some(first) = a.first().cloned()
                {
                    a.push(first);
                }
            }
            _ => *node = json!(*rng.pick(STRINGS)),
        }
    }
}

fn mutate_bytes(rng: &mut Rng, b: &mut Vec<u8>) {
    if b.is_empty() {
        return;
    }
    match rng.below(3) {
        0 => b.truncate(rng.below(b.len())),
        1 => {
            let i = rng.below(b.len());
            b[i] = u8::try_from(rng.below(256)).unwrap();
        }
        _ => {
            let i = rng.below(b.len());
            let chunk = b[i..].iter().take(16).copied().collect::<Vec<_>>();
            b.splice(i..i, chunk);
        }
    }
}

/// The fixture cases' objects, and the cluster views of those fixtures.
fn corpus() -> (Vec<Value>, Vec<Snapshot>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut objects = Vec::new();
    let mut views = vec![Snapshot::default()];
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let file: Value = serde_yaml::from_str(&text).unwrap();
        for case in file["cases"].as_array().unwrap() {
            if let Some(o) = case.get("object") {
                objects.push(o.clone());
            }
            if let Some(g) = case.pointer("/cluster/gateways") {
                let gateways = serde_json::from_value(g.clone()).unwrap_or_default();
                let namespaces = case
                    .pointer("/cluster/namespaces")
                    .and_then(|n| serde_json::from_value(n.clone()).ok())
                    .map(|m: std::collections::BTreeMap<String, _>| m.into_iter().collect())
                    .unwrap_or_default();
                views.push(Snapshot {
                    gateways,
                    namespaces,
                    ..Snapshot::default()
                });
            }
        }
    }
    (objects, views)
}

fn review_of(object: &Value, op: &str) -> Value {
    let kind = object.get("kind").cloned().unwrap_or(Value::Null);
    let (group, version) = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .map_or(("", "v1"), |a| a.split_once('/').unwrap_or(("", a)));
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "u", "kind": {"group": group, "version": version, "kind": kind},
        "resource": {"group": group, "version": version, "resource": "r"},
        "name": object.pointer("/metadata/name").cloned().unwrap_or(json!("x")),
        "namespace": object.pointer("/metadata/namespace").cloned().unwrap_or(json!("ns")),
        "operation": op, "userInfo": {}, "object": object}})
}

/// Runs one input through everything; panics only on a broken property.
fn exercise(body: &[u8], object: &Value, cx: &Context<'_>) {
    // The rules on the raw object, whatever its shape.
    for kind in [
        "Gateway",
        "DestinationRule",
        "VirtualService",
        "HTTPRoute",
        "Namespace",
        "Service",
        "Pod",
    ] {
        let group = match kind {
            "Gateway" | "HTTPRoute" => "gateway.networking.k8s.io",
            "DestinationRule" | "VirtualService" => "networking.istio.io",
            _ => "",
        };
        for operation in [Operation::Create, Operation::Update] {
            let obj = Object {
                group,
                kind,
                operation,
                namespace: "ns",
                name: "x",
                value: object,
            };
            let _ = rules::validate(&obj, cx);
            let mutation = rules::mutate(&obj, cx);
            // A patch the rules emit must apply, and applying it must settle.
            if !mutation.patch.is_empty() && object.get("metadata").is_some_and(Value::is_object) {
                let mut patched = object.clone();
                json_patch::patch(&mut patched, &json_patch::Patch(mutation.patch.clone()))
                    .unwrap_or_else(|e| {
                        panic!(
                            "patch does not apply: {e}\nobject: {object}\npatch: {:?}",
                            mutation.patch
                        )
                    });
                let again = rules::mutate(
                    &Object {
                        value: &patched,
                        ..obj
                    },
                    cx,
                );
                assert!(
                    again.patch.is_empty(),
                    "mutation not idempotent on {object}: {:?}",
                    again.patch
                );
            }
        }
    }
    // The decoder and the full path.
    if let Ok(req) = admission::decode(body) {
        for endpoint in [Endpoint::Mutate, Endpoint::Validate] {
            let (review, _) = admission::review(endpoint, &req, cx);
            serde_json::to_vec(&review).unwrap();
        }
    }
}

fn main() {
    let cases: u64 = std::env::var("WAYPOINT_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let seed: u64 = std::env::var("WAYPOINT_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let (objects, views) = corpus();
    assert!(objects.len() > 30, "corpus too small: {}", objects.len());
    let settings = Settings::default();
    let strict = Settings {
        strict: true,
        ..Settings::default()
    };
    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut decoded = 0_u64;
    for i in 0..cases {
        let mut object = rng.pick(&objects).clone();
        mutate_value(&mut rng, &mut object);
        let op: &&str = rng.pick(&["CREATE", "UPDATE", "DELETE"]);
        let mut body = serde_json::to_vec(&review_of(&object, op)).unwrap();
        if i % 4 == 0 {
            mutate_bytes(&mut rng, &mut body);
        }
        if admission::decode(&body).is_ok() {
            decoded += 1;
        }
        let view = rng.pick(&views);
        let cx = Context {
            settings: if i % 2 == 0 { &settings } else { &strict },
            view,
        };
        exercise(&body, &object, &cx);
    }
    println!(
        "fuzz: {cases} inputs (seed {seed:#x}), {decoded} decoded as AdmissionReviews, no panic, every patch applied \
         and settled, in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        decoded > cases / 3,
        "the corpus mostly fails to decode: {decoded}/{cases}"
    );
}
