//! A request's consistent-hash key, as Envoy's route `hash_policy` computes it
//! (`source/common/http/hash_policy.cc`), from what Istio writes for a
//! DestinationRule's `consistentHash`. Pure: the caller hands in the request's parts.
//!
//! - header: XXH64 of the header's values, sorted, each seeding the next (Envoy's
//!   span hash); absent header → no hash.
//! - cookie: XXH64 of the cookie's value (surrounding quotes removed). Absent with a
//!   `ttl`: Envoy makes the value up as the hex XXH64 of the downstream remote and
//!   local addresses, hashes that, and returns it in `set-cookie`
//!   (`name="value"; Max-Age=ttl; Path=path; attributes; HttpOnly`). Absent without a
//!   `ttl` → no hash.
//! - source IP: XXH64 of the downstream peer's address without the port.
//! - query parameter: XXH64 of the first value (not URL-decoded); absent → no hash.
//!
//! No hash means the balancer draws a random one: a random host per request (T15).

use std::fmt::Write as _;
use std::net::SocketAddr;

use http::HeaderMap;
use waypoint_config::{ConsistentHash, HashKey, HttpCookie};

use crate::xxhash::{xxh64, xxh64_chain};

/// The parts of a request a hash key can come from.
#[derive(Clone, Copy, Debug)]
pub struct RequestParts<'a> {
    pub headers: &'a HeaderMap,
    /// The request target as received, query included (`/x?user=7`).
    pub path_and_query: &'a str,
    /// Downstream peer and the local address it connected to.
    pub remote: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
}

/// The outcome for one request: its hash, and the `set-cookie` value to add to the
/// response when the cookie was generated here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hashed {
    pub hash: Option<u64>,
    pub set_cookie: Option<String>,
}

pub fn hash(policy: &ConsistentHash, req: &RequestParts<'_>) -> Hashed {
    let Some(key) = policy.key() else {
        return Hashed::default();
    };
    let hash = match key {
        HashKey::Header(name) => {
            let mut values: Vec<&[u8]> = req
                .headers
                .get_all(name)
                .iter()
                .map(http::HeaderValue::as_bytes)
                .collect();
            if values.is_empty() {
                None
            } else {
                values.sort_unstable();
                Some(xxh64_chain(values))
            }
        }
        HashKey::Cookie(cookie) => return cookie_hash(cookie, req),
        HashKey::SourceIp => req.remote.map(|a| xxh64(a.ip().to_string().as_bytes(), 0)),
        HashKey::QueryParameter(name) => {
            query_value(req.path_and_query, name).map(|v| xxh64(v.as_bytes(), 0))
        }
    };
    Hashed {
        hash,
        set_cookie: None,
    }
}

fn cookie_hash(cookie: &HttpCookie, req: &RequestParts<'_>) -> Hashed {
    if let Some(value) = cookie_value(req.headers, &cookie.name).filter(|v| !v.is_empty()) {
        return Hashed {
            hash: Some(xxh64(value.as_bytes(), 0)),
            set_cookie: None,
        };
    }
    let Some(ttl) = cookie.ttl else {
        return Hashed::default();
    };
    // Envoy hashes an empty value when it cannot see both addresses.
    let value = match (req.remote, req.local) {
        (Some(remote), Some(local)) => generated_value(remote, local),
        _ => String::new(),
    };
    let set_cookie = (!value.is_empty()).then(|| set_cookie(cookie, &value, ttl.as_secs()));
    Hashed {
        hash: Some(xxh64(value.as_bytes(), 0)),
        set_cookie,
    }
}

/// Envoy's `generateCookie`: 16 hex digits of XXH64 over `remote` then `local`, both
/// printed `ip:port`. The same client connection gets the same value each time.
pub fn generated_value(remote: SocketAddr, local: SocketAddr) -> String {
    format!("{:016x}", xxh64(format!("{remote}{local}").as_bytes(), 0))
}

/// Envoy's `makeSetCookieValue`, with the HttpOnly flag Envoy always sets here.
fn set_cookie(cookie: &HttpCookie, value: &str, max_age_secs: u64) -> String {
    // Writing to a String cannot fail.
    let mut out = format!("{}=\"{value}\"", cookie.name);
    if max_age_secs != 0 {
        let _ = write!(out, "; Max-Age={max_age_secs}");
    }
    if let Some(path) = cookie.path.as_deref().filter(|p| !p.is_empty()) {
        let _ = write!(out, "; Path={path}");
    }
    for a in &cookie.attributes {
        let _ = write!(out, "; {}", a.name);
        if !a.value.is_empty() {
            let _ = write!(out, "={}", a.value);
        }
    }
    out.push_str("; HttpOnly");
    out
}

/// The first cookie called `name` over all `cookie` headers, as Envoy's `parseCookie`
/// reads them: pairs split on `;`, leading spaces skipped, quotes around the value
/// removed.
fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim_start_matches(' ') == name).then(|| {
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v)
                    .to_owned()
            })
        })
}

/// The first value of query parameter `name`, raw; a bare `name` has the value "".
fn query_value<'a>(path_and_query: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = path_and_query.split_once('?')?;
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    query.split('&').find_map(|param| {
        let (k, v) = param.split_once('=').unwrap_or((param, ""));
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::HeaderValue;
    use waypoint_config::CookieAttribute;

    use super::*;

    fn policy(yaml: &str) -> ConsistentHash {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn parts<'a>(headers: &'a HeaderMap, path: &'a str) -> RequestParts<'a> {
        RequestParts {
            headers,
            path_and_query: path,
            remote: Some("10.244.0.20:52341".parse().unwrap()),
            local: Some("10.96.132.123:8000".parse().unwrap()),
        }
    }

    #[test]
    fn header_values_hash_in_sorted_order() {
        let p = policy("httpHeaderName: x-user");
        let one = headers(&[("x-user", "alice")]);
        assert_eq!(
            hash(&p, &parts(&one, "/")).hash,
            Some(xxh64(b"alice", 0)),
            "one value: plain XXH64"
        );
        let ab = headers(&[("x-user", "a"), ("x-user", "b")]);
        let ba = headers(&[("x-user", "b"), ("x-user", "a")]);
        assert_eq!(
            hash(&p, &parts(&ab, "/")),
            hash(&p, &parts(&ba, "/")),
            "order does not matter"
        );
        assert_eq!(
            hash(&p, &parts(&ab, "/")).hash,
            Some(xxh64(b"b", xxh64(b"a", 0)))
        );
        // T15: the header is missing, so there is no hash and no cookie.
        let none = headers(&[("x-other", "alice")]);
        assert_eq!(hash(&p, &parts(&none, "/")), Hashed::default());
    }

    #[test]
    fn source_ip_and_query_parameter() {
        let h = HeaderMap::new();
        let ip = hash(&policy("useSourceIp: true"), &parts(&h, "/"));
        assert_eq!(ip.hash, Some(xxh64(b"10.244.0.20", 0)), "port left out");
        let q = policy("httpQueryParameterName: user");
        assert_eq!(
            hash(&q, &parts(&h, "/x?a=1&user=7&user=8")).hash,
            Some(xxh64(b"7", 0)),
            "first value"
        );
        assert_eq!(hash(&q, &parts(&h, "/x?user")).hash, Some(xxh64(b"", 0)));
        assert_eq!(hash(&q, &parts(&h, "/x?users=7")).hash, None);
        assert_eq!(hash(&q, &parts(&h, "/x")).hash, None);
        assert_eq!(hash(&policy("{}"), &parts(&h, "/x")), Hashed::default());
    }

    #[test]
    fn a_present_cookie_is_hashed_without_quotes() {
        let p = policy("httpCookie: {name: session, ttl: 60s}");
        for header in ["session=abc", "a=1; session=\"abc\"", "x=y;  session=abc"] {
            let h = headers(&[("cookie", header)]);
            assert_eq!(
                hash(&p, &parts(&h, "/")),
                Hashed {
                    hash: Some(xxh64(b"abc", 0)),
                    set_cookie: None
                },
                "{header}"
            );
        }
    }

    #[test]
    fn an_absent_cookie_with_a_ttl_is_generated_and_set() {
        let mut cookie = HttpCookie {
            name: "session".into(),
            path: Some("/".into()),
            ttl: Some(Duration::from_secs(90)),
            attributes: vec![
                CookieAttribute {
                    name: "SameSite".into(),
                    value: "Strict".into(),
                },
                CookieAttribute {
                    name: "Secure".into(),
                    value: String::new(),
                },
            ],
        };
        let p = ConsistentHash {
            http_cookie: Some(cookie.clone()),
            ..ConsistentHash::random()
        };
        let h = HeaderMap::new();
        let out = hash(&p, &parts(&h, "/"));
        let value = format!("{:016x}", xxh64(b"10.244.0.20:5234110.96.132.123:8000", 0));
        assert_eq!(value.len(), 16);
        assert_eq!(out.hash, Some(xxh64(value.as_bytes(), 0)));
        assert_eq!(
            out.set_cookie.as_deref(),
            Some(
                format!(
                    "session=\"{value}\"; Max-Age=90; Path=/; SameSite=Strict; Secure; HttpOnly"
                )
                .as_str()
            )
        );
        // Sending the cookie back hashes to the same value, with nothing more to set.
        let back = headers(&[("cookie", &format!("session=\"{value}\""))]);
        assert_eq!(
            hash(&p, &parts(&back, "/")),
            Hashed {
                hash: out.hash,
                set_cookie: None
            }
        );
        // A ttl of 0s makes a session cookie: no Max-Age.
        cookie.ttl = Some(Duration::ZERO);
        cookie.attributes.clear();
        cookie.path = None;
        let p = ConsistentHash {
            http_cookie: Some(cookie.clone()),
            ..ConsistentHash::random()
        };
        assert_eq!(
            hash(&p, &parts(&h, "/")).set_cookie,
            Some(format!("session=\"{value}\"; HttpOnly"))
        );
        // No ttl: no hash, no cookie.
        cookie.ttl = None;
        let p = ConsistentHash {
            http_cookie: Some(cookie),
            ..ConsistentHash::random()
        };
        assert_eq!(hash(&p, &parts(&h, "/")), Hashed::default());
    }
}
