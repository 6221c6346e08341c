//! How a config reaches the dataplanes of a waypoint: a long poll on the operator's
//! mesh endpoint (`GET /v1/config`, mutual TLS with the mesh certificate, whose
//! ServiceAccount names the Gateway). The request says which version the replica
//! runs; the answer comes when there is another one, or after the wait with 304.
//! A version is a digest of the YAML, so operator and dataplane compute the same
//! one from the same text without agreeing on anything else.

/// The operator serves it on its mesh port (15012), behind the `waypoint-config`
/// Service that selects the leader only.
pub const PATH: &str = "/v1/config";
/// The version the replica has applied (absent before it has any).
pub const QUERY_HAVE: &str = "have";
/// A version the replica refused (its validation failed): not sent again.
pub const QUERY_REJECTED: &str = "rejected";
/// The pod's name, so the operator can say which replica runs what.
pub const QUERY_POD: &str = "pod";
/// The version of the config in a 200 answer.
pub const VERSION_HEADER: &str = "x-waypoint-config-version";
/// How long the operator holds a poll with nothing new before answering 304.
pub const POLL_WAIT_SECONDS: u64 = 30;

/// The first 16 hex digits of the SHA-256 of the config's text.
pub fn version(text: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref()[..8]
        .iter()
        .fold(String::with_capacity(16), |mut hex, b| {
            use std::fmt::Write as _;
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

/// A poll's query string: `have`, `rejected` and `pod` (each only when known).
pub fn query(have: Option<&str>, rejected: Option<&str>, pod: Option<&str>) -> String {
    let pairs = [
        (QUERY_HAVE, have),
        (QUERY_REJECTED, rejected),
        (QUERY_POD, pod),
    ];
    pairs
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", encode(v))))
        .collect::<Vec<_>>()
        .join("&")
}

/// The poll's parameters from a query string; unknown keys are ignored, so an
/// older operator and a newer dataplane still talk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Poll {
    pub have: Option<String>,
    pub rejected: Option<String>,
    pub pod: Option<String>,
}

impl Poll {
    pub fn parse(query: Option<&str>) -> Self {
        let mut poll = Self::default();
        for pair in query.unwrap_or_default().split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = decode(v).filter(|v| !v.is_empty());
            match k {
                QUERY_HAVE => poll.have = v,
                QUERY_REJECTED => poll.rejected = v,
                QUERY_POD => poll.pod = v,
                _ => {}
            }
        }
        poll
    }
}

/// Versions are hex and pod names DNS labels; anything else is percent-encoded.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `None` for malformed escapes or non-UTF-8: such a parameter is treated as absent.
fn decode(v: &str) -> Option<String> {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_a_stable_digest_of_the_text() {
        // SHA-256("") starts e3b0c44298fc1c14.
        assert_eq!(version(""), "e3b0c44298fc1c14");
        assert_eq!(version("a"), version("a"));
        assert_ne!(version("listeners: []\n"), version("listeners: [] \n"));
        assert_eq!(version("x").len(), 16);
    }

    #[test]
    fn query_round_trips() {
        let q = query(Some("00ff"), None, Some("wp-7d9f-x"));
        assert_eq!(q, "have=00ff&pod=wp-7d9f-x");
        assert_eq!(
            Poll::parse(Some(&q)),
            Poll {
                have: Some("00ff".into()),
                rejected: None,
                pod: Some("wp-7d9f-x".into())
            }
        );
        let odd = query(None, Some("a b&c=d"), None);
        assert_eq!(Poll::parse(Some(&odd)).rejected.as_deref(), Some("a b&c=d"));
    }

    #[test]
    fn malformed_queries_lose_only_the_bad_parameter() {
        for q in [
            "have=%",
            "have=%zz",
            "have=%ff%fe",
            "have",
            "have=",
            "&&",
            "=x",
        ] {
            let p = Poll::parse(Some(&format!("{q}&pod=p1&future=1")));
            assert_eq!(p.have, None, "{q}");
            assert_eq!(p.pod.as_deref(), Some("p1"), "{q}");
        }
        assert_eq!(Poll::parse(None), Poll::default());
    }
}
