//! Consistent-hash load balancing in the model: which request property is hashed
//! (Envoy's route `hash_policy`) and the ring or table size (the cluster's
//! `ring_hash_lb_config` / `maglev_lb_config`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Error, invalid};

/// What a request's hash is computed from (at most one key, as Istio's oneof), and
/// the ring or table size. No key: each request gets a random hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsistentHash {
    /// Hash of the header's values; a request without the header gets a random host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_header_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_cookie: Option<HttpCookie>,
    /// Hash of the downstream peer's IP address (without the port).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_source_ip: bool,
    /// Hash of the first value of this query parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_query_parameter_name: Option<String>,
    /// RING_HASH only: Envoy's `minimum_ring_size`, default 1024 (at most 8388608,
    /// Envoy's `maximum_ring_size`).
    #[serde(default = "default_ring_size")]
    pub minimum_ring_size: u64,
    /// MAGLEV only: a prime below 5000011, default 65537.
    #[serde(default = "default_table_size")]
    pub table_size: u64,
}

/// Envoy's default (and Istio's, when neither ring size field is set).
pub const DEFAULT_MINIMUM_RING_SIZE: u64 = 1024;
/// Envoy's `maximum_ring_size` default; Istio never sets it.
pub const MAXIMUM_RING_SIZE: u64 = 8_388_608;
/// Envoy's Maglev default, a prime.
pub const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65_537;

fn default_ring_size() -> u64 {
    DEFAULT_MINIMUM_RING_SIZE
}

fn default_table_size() -> u64 {
    DEFAULT_MAGLEV_TABLE_SIZE
}

/// The one hash key of a [`ConsistentHash`], borrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashKey<'a> {
    Header(&'a str),
    Cookie(&'a HttpCookie),
    SourceIp,
    QueryParameter(&'a str),
}

impl ConsistentHash {
    /// A hash over nothing: random host per request.
    pub fn random() -> Self {
        Self {
            http_header_name: None,
            http_cookie: None,
            use_source_ip: false,
            http_query_parameter_name: None,
            minimum_ring_size: DEFAULT_MINIMUM_RING_SIZE,
            table_size: DEFAULT_MAGLEV_TABLE_SIZE,
        }
    }

    /// The key, when exactly one is set (`validate` refuses more than one).
    pub fn key(&self) -> Option<HashKey<'_>> {
        self.keys().into_iter().next()
    }

    fn keys(&self) -> Vec<HashKey<'_>> {
        let mut keys = Vec::new();
        keys.extend(self.http_header_name.as_deref().map(HashKey::Header));
        keys.extend(self.http_cookie.as_ref().map(HashKey::Cookie));
        if self.use_source_ip {
            keys.push(HashKey::SourceIp);
        }
        keys.extend(
            self.http_query_parameter_name
                .as_deref()
                .map(HashKey::QueryParameter),
        );
        keys
    }
}

/// Envoy's cookie hash policy. With the cookie absent and `ttl` set, Envoy makes up a
/// value, hashes it and returns it in `set-cookie`; with `ttl` unset there is no hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpCookie {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `0s` makes a session cookie (no `Max-Age`). Envoy keeps whole seconds.
    #[serde(
        default,
        with = "crate::opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    /// Extra `set-cookie` attributes (Istio 1.28+), e.g. `SameSite=Strict`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attributes: Vec<CookieAttribute>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CookieAttribute {
    pub name: String,
    /// Empty: the attribute is written bare (`Secure`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
}

impl ConsistentHash {
    /// The model's checks on this part alone; `at` prefixes the field names.
    pub fn validate(&self, at: &str) -> Result<(), Error> {
        if self.keys().len() > 1 {
            return invalid(
                at.to_owned(),
                "set at most one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName",
            );
        }
        if let Some(name) = &self.http_header_name
            && (name.is_empty() || !name.bytes().all(is_token_byte))
        {
            return invalid(
                format!("{at}.httpHeaderName"),
                format!("{name:?} is not a valid header name"),
            );
        }
        if self.http_query_parameter_name.as_deref() == Some("") {
            return invalid(format!("{at}.httpQueryParameterName"), "must not be empty");
        }
        if let Some(cookie) = &self.http_cookie {
            if cookie.name.is_empty() || !cookie.name.bytes().all(is_token_byte) {
                return invalid(
                    format!("{at}.httpCookie.name"),
                    format!("{:?} is not a valid cookie name", cookie.name),
                );
            }
            for (j, a) in cookie.attributes.iter().enumerate() {
                if a.name.is_empty() || !a.name.bytes().all(is_token_byte) {
                    return invalid(
                        format!("{at}.httpCookie.attributes[{j}].name"),
                        format!("{:?} is not a valid attribute name", a.name),
                    );
                }
            }
            let text = [cookie.path.as_deref().unwrap_or("")]
                .into_iter()
                .chain(cookie.attributes.iter().map(|a| a.value.as_str()));
            if text
                .into_iter()
                .any(|v| v.bytes().any(|b| b == b';' || b.is_ascii_control()))
            {
                return invalid(
                    format!("{at}.httpCookie"),
                    "path and attribute values must not contain ';' or control characters",
                );
            }
        }
        if !(1..=MAXIMUM_RING_SIZE).contains(&self.minimum_ring_size) {
            return invalid(
                format!("{at}.minimumRingSize"),
                format!(
                    "{} is not in 1..{MAXIMUM_RING_SIZE} (Envoy's maximum_ring_size)",
                    self.minimum_ring_size
                ),
            );
        }
        if self.table_size >= 5_000_011 || !is_prime(self.table_size) {
            return invalid(
                format!("{at}.tableSize"),
                format!(
                    "{} must be a prime below 5000011 (Maglev needs a prime table)",
                    self.table_size
                ),
            );
        }
        Ok(())
    }
}

/// RFC 9110 `tchar`: what header, cookie and attribute names may contain.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_prime(n: u64) -> bool {
    n >= 2 && (2..=n.isqrt()).all(|d| !n.is_multiple_of(d))
}
