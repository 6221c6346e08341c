//! A structure-aware fuzzer for what clients send: raw HTTP/1.1 requests built from
//! seeds that reach every request-reading part of the proxy (host routing, header,
//! query and regex path matches, prefix rewrites, redirects, mirrors, hash policies on
//! a header, a cookie, a query parameter and the source address, fault aborts,
//! WebSocket upgrades, bodies in both framings) are mutated (request line, header
//! names and values from a dictionary of odd ones, headers added, doubled or dropped,
//! bytes flipped and cut) and sent through the whole proxy on loopback. No request
//! may panic the proxy, and it must still answer a plain request at the end.
//!
//! `cargo test -p waypoint-dataplane --test request_fuzz` runs a smoke; for a long run:
//! `WAYPOINT_FUZZ_CASES=100000 cargo test --release -p waypoint-dataplane --test request_fuzz`
//! (`WAYPOINT_FUZZ_SEED` picks another sequence).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use waypoint_dataplane::proxy::Shared;

mod support;
use support::Rng;

/// Every request-reading part of a route and a cluster, over two backends.
fn config(a: SocketAddr, b: SocketAddr) -> String {
    format!(
        r"
listeners:
- name: plain
  address: 127.0.0.1:0
  requestHeadersTimeout: 100ms
  routes:
  - hosts: ['hashed.example', 'hashed.example:80']
    cluster: by-cookie
  - hosts: ['*.query.example']
    cluster: by-query
  - hosts: ['vs.example']
    cluster: rr
    ruleOrder: declared
    rules:
    - matches: [{{path: {{type: Prefix, value: /old}}, headers: [{{type: RegularExpression, name: x-user, value: 'j.*'}}]}}]
      filters: [{{type: URLRewrite, path: {{type: PrefixRewrite, prefixRewrite: /new}}}}]
    - matches: [{{path: {{type: Prefix, value: /down}}}}]
      directResponse: {{status: 503, body: down for maintenance}}
    - {{}}
  - hosts: ['faulty.example']
    cluster: rr
    fault:
      abort: {{httpStatus: 503, percentage: {{numerator: 1, denominator: 2}}}}
  - cluster: rr
    retry: {{attempts: 1, retryOn: [connect-failure, 5xx]}}
    rules:
    - matches:
      - path: {{type: PathPrefix, value: /api}}
        headers: [{{name: x-canary, value: 'yes'}}, {{type: RegularExpression, name: x-v, value: 'v[0-9]+'}}]
        queryParams: [{{name: debug, value: '1'}}, {{type: RegularExpression, name: id, value: '^[a-z]*$'}}]
        method: POST
      filters:
      - {{type: RequestHeaderModifier, set: [{{name: x-env, value: canary}}], add: [{{name: x-a, value: b}}], remove: [x-drop]}}
      - {{type: ResponseHeaderModifier, add: [{{name: x-route, value: canary}}]}}
      - {{type: URLRewrite, hostname: other.example, path: {{type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}}
      - {{type: RequestMirror, cluster: by-header}}
      backends: [{{cluster: rr, weight: 3}}, {{cluster: by-header, weight: 1}}]
    - matches: [{{path: {{type: RegularExpression, value: '^/old/(.*)$'}}}}]
      filters: [{{type: RequestRedirect, scheme: https, path: {{type: ReplaceFullPath, replaceFullPath: /new}}, statusCode: 301}}]
    - matches: [{{path: {{type: PathPrefix, value: /prefix/}}}}]
      filters: [{{type: RequestRedirect, path: {{type: ReplacePrefixMatch, replacePrefixMatch: /}}, statusCode: 302}}]
    - matches: [{{path: {{type: Exact, value: /source}}}}]
      backends: [{{cluster: by-source}}]
    - matches: [{{path: {{type: PathPrefix, value: /upload}}}}, {{path: {{type: PathPrefix, value: /chat}}}}, {{path: {{type: PathPrefix, value: /abs}}}}]
clusters:
- name: rr
  loadBalancer: ROUND_ROBIN
  endpoints: [{{address: '{a}'}}, {{address: '{b}', weight: 2}}]
- name: by-header
  loadBalancer: RING_HASH
  consistentHash: {{httpHeaderName: x-user, minimumRingSize: 64}}
  endpoints: [{{address: '{a}'}}, {{address: '{b}'}}]
- name: by-cookie
  loadBalancer: MAGLEV
  consistentHash: {{httpCookie: {{name: session, path: /, ttl: 60s}}, tableSize: 251}}
  endpoints: [{{address: '{a}'}}, {{address: '{b}'}}]
- name: by-query
  loadBalancer: RING_HASH
  consistentHash: {{httpQueryParameterName: user}}
  endpoints: [{{address: '{a}'}}, {{address: '{b}'}}]
- name: by-source
  loadBalancer: MAGLEV
  consistentHash: {{useSourceIp: true}}
  endpoints: [{{address: '{a}'}}]
"
    )
}

/// Requests that take each path of the config above: (request line, headers, body).
const SEEDS: &[(&str, &[&str], &str)] = &[
    (
        "POST /api/items?debug=1&id=abc HTTP/1.1",
        &[
            "host: app.example",
            "x-canary: yes",
            "x-v: v2",
            "x-user: alice",
            "content-length: 5",
        ],
        "hello",
    ),
    (
        "GET /old/thing?x=1 HTTP/1.1",
        &["host: app.example", "x-drop: 1"],
        "",
    ),
    ("GET /prefix/a/b HTTP/1.1", &["host: app.example"], ""),
    (
        "GET / HTTP/1.1",
        &["host: hashed.example", "cookie: a=b; session=s1; c=d"],
        "",
    ),
    (
        "GET /?user=bob&user=carol HTTP/1.1",
        &["host: x.query.example"],
        "",
    ),
    ("GET /source HTTP/1.1", &["host: app.example"], ""),
    ("GET / HTTP/1.1", &["host: faulty.example"], ""),
    (
        "GET /oldest/x HTTP/1.1",
        &["host: vs.example", "x-user: jason"],
        "",
    ),
    ("GET /down/now HTTP/1.1", &["host: vs.example"], ""),
    (
        "PUT /upload HTTP/1.1",
        &["host: app.example", "transfer-encoding: chunked"],
        "5\r\nhello\r\n0\r\nx-trailer: t\r\n\r\n",
    ),
    (
        "GET /chat HTTP/1.1",
        &[
            "host: app.example",
            "connection: upgrade",
            "upgrade: websocket",
            "sec-websocket-version: 13",
            "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
        ],
        "",
    ),
    (
        "GET http://app.example:80/abs?q HTTP/1.1",
        &["host: app.example", "x-forwarded-for: 10.0.0.1, 10.0.0.2"],
        "",
    ),
    ("OPTIONS * HTTP/1.1", &["host: app.example"], ""),
    ("GET / HTTP/1.0", &[], ""),
];

/// Odd pieces for request lines, header names and values.
const ODD: &[&str] = &[
    "",
    " ",
    "\t",
    "x",
    "*",
    "/",
    "//",
    "/..",
    "/../../etc",
    "%",
    "%zz",
    "%00",
    "%2F",
    "?",
    "??",
    "#frag",
    "=",
    "&",
    ";",
    ",",
    ":",
    "[::1]",
    "[::1]:80",
    "host:99999",
    "a..b",
    ".",
    "-1",
    "0",
    "18446744073709551616",
    "v99999999999999999999",
    "session=",
    "session",
    "=s",
    "; ;",
    "\u{e9}",
    "\u{1F600}",
    "\\",
    "\"",
    "'",
    "(((((((((((((((((((((",
    "GET",
    "CONNECT",
    "PRI",
    "HTTP/2.0",
    "HTTP/1.1",
    "HTTP/9.9",
    "chunked",
    "gzip, chunked",
    "upgrade",
    "close",
    "keep-alive",
    "websocket",
    "h2c",
    "100-continue",
    "trailers",
];

const NAMES: &[&str] = &[
    "host",
    "x-canary",
    "x-v",
    "x-user",
    "cookie",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "expect",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-request-id",
    "traceparent",
    "user-agent",
    ":authority",
    "x-envoy-retriable-status-codes",
    "sec-websocket-key",
    "x-drop",
    "",
];

/// An odd piece, now and then repeated into a long one.
fn odd(rng: &mut Rng) -> String {
    let piece = ODD[rng.below(ODD.len())];
    match rng.below(8) {
        0 => piece.repeat(1 + rng.below(3000)),
        _ => piece.to_owned(),
    }
}

/// One mutated request, as bytes.
fn request(rng: &mut Rng) -> Vec<u8> {
    let (line, headers, body) = SEEDS[rng.below(SEEDS.len())];
    let mut line: Vec<String> = line.split(' ').map(str::to_owned).collect();
    let mut headers: Vec<(String, String)> = headers
        .iter()
        .map(|h| {
            let (n, v) = h.split_once(": ").unwrap();
            (n.to_owned(), v.to_owned())
        })
        .collect();
    for _ in 0..=rng.below(3) {
        match rng.below(7) {
            0 => {
                let i = rng.below(line.len());
                line[i] = odd(rng);
            }
            1 => {
                // Into the target: a path segment, the query, or both.
                let odd = odd(rng);
                line[1].push_str(&odd);
            }
            2 if !headers.is_empty() => {
                let i = rng.below(headers.len());
                headers[i].1 = odd(rng);
            }
            3 if !headers.is_empty() => {
                let i = rng.below(headers.len());
                headers.remove(i);
            }
            4 if !headers.is_empty() => {
                let i = rng.below(headers.len());
                headers.push(headers[i].clone());
            }
            _ => headers.push((NAMES[rng.below(NAMES.len())].to_owned(), odd(rng))),
        }
    }
    let mut text = line.join(" ");
    text.push_str("\r\n");
    for (n, v) in &headers {
        for piece in [n.as_str(), ": ", v.as_str(), "\r\n"] {
            text.push_str(piece);
        }
    }
    text.push_str("\r\n");
    text.push_str(body);
    let mut bytes = text.into_bytes();
    if rng.below(6) == 0 {
        support::damage(&mut bytes, rng);
    }
    bytes
}

/// Sends `bytes` and reads whatever comes back until the proxy closes or goes quiet (150 ms, past
/// the listener's 100 ms request-headers timeout);
/// the status of the first response, if one came.
async fn send(proxy: SocketAddr, bytes: Vec<u8>) -> Option<u16> {
    let mut s = TcpStream::connect(proxy).await.ok()?;
    let _ = s.write_all(&bytes).await;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16384];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(150), s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        if out.len() < 64 {
            out.extend_from_slice(&buf[..n.min(64)]);
        }
    }
    out.strip_prefix(b"HTTP/1.1 ")
        .or_else(|| out.strip_prefix(b"HTTP/1.0 "))
        .and_then(|rest| std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_panics_the_proxy() {
    let panics = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&panics);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        counted.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    let ok = |_req| async { support::text("ok") };
    let (a, b) = (
        support::serve_http("127.0.0.1", ok).await,
        support::serve_http("127.0.0.1", ok).await,
    );
    let shared = Shared::with_access_log(
        waypoint_config::Config::from_yaml(&config(a.addr, b.addr)).unwrap(),
        Box::new(|_| {}),
    );
    let proxy = support::serve_first_listener(&shared).await;
    let cases = support::fuzz_cases(2_000);
    let mut rng = Rng::from_env();
    let mut running = tokio::task::JoinSet::new();
    let mut statuses = std::collections::BTreeMap::<Option<u16>, usize>::new();
    for _ in 0..cases {
        if running.len() >= 128
            && let Some(status) = running.join_next().await
        {
            *statuses.entry(status.unwrap()).or_default() += 1;
        }
        running.spawn(send(proxy, request(&mut rng)));
    }
    while let Some(status) = running.join_next().await {
        *statuses.entry(status.unwrap()).or_default() += 1;
    }
    println!("statuses of {cases} mutated requests: {statuses:?}");
    assert_eq!(panics.load(Ordering::SeqCst), 0, "panics (printed above)");
    // Mutations that leave nothing to route test only the parser.
    let routed: usize = statuses
        .iter()
        .filter(|(s, _)| s.is_some_and(|s| (200..400).contains(&s)))
        .map(|(_, n)| n)
        .sum();
    assert!(
        routed * 4 > cases,
        "only {routed} of {cases} got a 2xx or 3xx"
    );
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(b"GET /upload HTTP/1.1\r\nhost: app.example\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}
