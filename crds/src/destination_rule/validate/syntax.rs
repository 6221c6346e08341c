//! The name, label, address and duration checks istiod's validation builds on
//! (`pkg/config/labels`, `pkg/config/validation/agent`), with Go's message text.
//! Istio's regular expressions are written out by hand so the crate needs no regex
//! dependency; each function names the expression it implements.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr};

use crate::Duration;

/// Istio's `labels.DNS1123LabelMaxLength`.
const DNS1123_LABEL_MAX: usize = 63;
/// Longest DNS prefix a label key may have (`dnsNamePrefixMaxLength`).
const DNS_PREFIX_MAX: usize = 253;
/// Longest domain `CheckDNS1123Preconditions` accepts.
const DOMAIN_MAX: usize = 255;
/// Miller-Rabin bases that decide primality exactly for every 64-bit integer.
const PRIME_WITNESSES: [u64; 12] = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37];

/// `^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$`, without a length limit. Istio's
/// DNS-1123 check accepts upper case, unlike Kubernetes'.
fn matches_dns1123_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        }
        _ => false,
    }
}

/// `labels.IsDNS1123Label`.
pub(super) fn is_dns1123_label(s: &str) -> bool {
    s.len() <= DNS1123_LABEL_MAX && matches_dns1123_label(s)
}

/// `labels.IsWildcardDNS1123Label`: `*`, or a label optionally prefixed by `*` or `*-`.
fn is_wildcard_dns1123_label(s: &str) -> bool {
    if s.len() > DNS1123_LABEL_MAX {
        return false;
    }
    match s.strip_prefix('*') {
        Some("") => true,
        Some(rest) => {
            matches_dns1123_label(rest) || rest.strip_prefix('-').is_some_and(matches_dns1123_label)
        }
        None => matches_dns1123_label(s),
    }
}

/// `agent.CheckDNS1123Preconditions`.
fn dns1123_preconditions(name: &str) -> Result<(), String> {
    if name.len() > DOMAIN_MAX {
        return Err(format!("domain name {} too long (max 255)", go_quote(name)));
    }
    if name.is_empty() {
        return Err("empty domain name not allowed".to_owned());
    }
    Ok(())
}

/// `agent.ValidateDNS1123Labels`: every label valid, a trailing dot allowed, and a
/// top-level domain that Go's `strconv.Atoi` would not read as a number.
fn dns1123_labels(domain: &str) -> Result<(), String> {
    let parts: Vec<&str> = domain.split('.').collect();
    let last = parts.len() - 1;
    if parts[last].parse::<i64>().is_ok() {
        return Err(format!(
            "domain name {} invalid (top level domain {} cannot be all-numeric)",
            go_quote(domain),
            go_quote(parts[last])
        ));
    }
    for (i, label) in parts.iter().enumerate() {
        if i == last && label.is_empty() {
            return Ok(());
        }
        if !is_dns1123_label(label) {
            return Err(format!(
                "domain name {} invalid (label {} invalid)",
                go_quote(domain),
                go_quote(label)
            ));
        }
    }
    Ok(())
}

/// `agent.ValidateWildcardDomain`: an FQDN whose first label may be a wildcard. As in
/// istiod, an error in the rest of the name quotes the rest, not the whole host.
pub(super) fn wildcard_domain(domain: &str) -> Result<(), String> {
    dns1123_preconditions(domain)?;
    let (first, rest) = match domain.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (domain, None),
    };
    if !is_wildcard_dns1123_label(first) {
        return Err(format!(
            "domain name {} invalid (label {} invalid)",
            go_quote(domain),
            go_quote(first)
        ));
    }
    rest.map_or(Ok(()), dns1123_labels)
}

/// `agent.ValidateFQDN`.
pub(super) fn fqdn(name: &str) -> Result<(), String> {
    dns1123_preconditions(name)?;
    dns1123_labels(name)
}

/// `agent.ValidateIPAddress` (Go's `netip.ParseAddr`, which also takes an IPv6 zone).
pub(super) fn ip_address(addr: &str) -> Result<(), String> {
    let valid = match addr.split_once('%') {
        Some((ip, zone)) => !zone.is_empty() && ip.parse::<Ipv6Addr>().is_ok(),
        None => addr.parse::<IpAddr>().is_ok(),
    };
    if valid {
        Ok(())
    } else {
        Err(format!("{addr} is not a valid IP"))
    }
}

/// `agent.ValidatePort`.
pub(super) fn port(number: u32) -> Result<(), String> {
    if (1..=65_535).contains(&number) {
        Ok(())
    } else {
        Err(format!(
            "port number {number} must be in the range 1..65535"
        ))
    }
}

/// `agent.ValidateDuration`: at least 1ms, in whole milliseconds.
pub(super) fn duration(d: &Duration) -> Result<(), &'static str> {
    let d = d.as_std();
    if d < std::time::Duration::from_millis(1) {
        return Err("duration must be greater than 1ms");
    }
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return Err("only durations to ms precision are supported");
    }
    Ok(())
}

/// Kubernetes' qualified name, `(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`.
fn is_qualified_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

/// `labels.Instance.Validate` for one key: an optional DNS prefix and `/`, then a
/// qualified name.
pub(super) fn label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| p.split('.').all(matches_dns1123_label));
    if !prefix_ok || !is_qualified_name(name) {
        return Err(format!("invalid tag key: {}", go_quote(key)));
    }
    if prefix.is_some_and(|p| p.len() > DNS_PREFIX_MAX) {
        return Err(format!(
            "invalid tag key: {} (DNS prefix is too long)",
            go_quote(key)
        ));
    }
    if name.len() > DNS1123_LABEL_MAX {
        return Err(format!(
            "invalid tag key: {} (name is too long)",
            go_quote(key)
        ));
    }
    Ok(())
}

/// `labels.Instance.Validate` for one value: empty or a qualified name (Istio sets no
/// length limit).
pub(super) fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_qualified_name(value) {
        Ok(())
    } else {
        Err(format!("invalid tag value: {}", go_quote(value)))
    }
}

/// Envoy's `isPrime` as istiod copies it (so 1 counts as prime), computed with a
/// deterministic Miller-Rabin test: trial division up to the square root, as Envoy
/// does, would let one large table size stall the webhook.
pub(super) fn is_prime(x: u64) -> bool {
    if x != 0 && x < 4 {
        return true;
    }
    if x.is_multiple_of(2) {
        return false;
    }
    let (mut d, mut s) = (x - 1, 0);
    while d.is_multiple_of(2) {
        d /= 2;
        s += 1;
    }
    PRIME_WITNESSES
        .iter()
        .filter(|a| **a % x != 0)
        .all(|a| passes_miller_rabin_round(x, d, s, *a))
}

/// One Miller-Rabin round: `x - 1 = d * 2^s` with `d` odd.
fn passes_miller_rabin_round(x: u64, d: u64, s: u32, base: u64) -> bool {
    let mut y = pow_mod(base, d, x);
    if y == 1 || y == x - 1 {
        return true;
    }
    for _ in 1..s {
        y = mul_mod(y, y, x);
        if y == x - 1 {
            return true;
        }
    }
    false
}

fn mul_mod(a: u64, b: u64, m: u64) -> u64 {
    let product = u128::from(a) * u128::from(b) % u128::from(m);
    // The remainder of a division by a u64 fits in a u64.
    u64::try_from(product).unwrap_or(0)
}

fn pow_mod(mut base: u64, mut exp: u64, m: u64) -> u64 {
    let mut result = 1;
    base %= m;
    while exp > 0 {
        if exp & 1 == 1 {
            result = mul_mod(result, base, m);
        }
        base = mul_mod(base, base, m);
        exp >>= 1;
    }
    result
}

/// Go's `%q` (`strconv.Quote`) for the characters users put in names: quotes and
/// backslashes escaped, control characters as Go escapes, everything else verbatim.
pub(super) fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if c.is_control() && u32::from(c) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if c.is_control() || (c.is_whitespace() && c != ' ') => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
