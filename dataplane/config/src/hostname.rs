//! What the model accepts as a host pattern: a name or address, or a Gateway API
//! wildcard `*.suffix` (any name ending in `.suffix`), in `Route.hosts` optionally
//! with a port. Matching and specificity are the dataplane's (`host_match`); this
//! only refuses patterns that could never mean what their author wanted.

/// Why `pattern` is refused; `with_port` says whether `:port` may follow.
pub(crate) fn problem(pattern: &str, with_port: bool) -> Option<&'static str> {
    if pattern.is_empty() {
        return Some("is empty; leave the list empty to match every host");
    }
    if pattern.chars().any(char::is_whitespace) {
        return Some("contains whitespace");
    }
    if !with_port && pattern.contains(':') {
        return Some("is a hostname, without a port");
    }
    if pattern == "*" {
        return Some("matches nothing; leave the list empty to match every host");
    }
    let rest = pattern.strip_prefix("*.").unwrap_or(pattern);
    if rest.contains('*') || rest.is_empty() || rest.starts_with(':') {
        return Some("has a wildcard other than a whole first label, as in *.example.com");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::problem;

    #[test]
    fn names_addresses_and_leading_wildcards_pass() {
        for ok in [
            "svc",
            "svc:80",
            "10.96.0.10:8000",
            "[fd00::1]:80",
            "*.example.com",
            "*.example.com:443",
            "a.b.example.com",
        ] {
            assert_eq!(problem(ok, true), None, "{ok}");
        }
        assert_eq!(problem("*.example.com", false), None);
    }

    #[test]
    fn misplaced_wildcards_and_ports_are_refused() {
        for (bad, with_port, why) in [
            ("", true, "is empty"),
            ("*", true, "matches nothing"),
            ("*.", true, "wildcard"),
            ("*.:80", true, "wildcard"),
            ("a.*.com", true, "wildcard"),
            ("*a.com", true, "wildcard"),
            ("*.*.com", true, "wildcard"),
            ("a .com", true, "whitespace"),
            ("a.com:443", false, "without a port"),
        ] {
            let got = problem(bad, with_port).unwrap_or("accepted");
            assert!(got.contains(why), "{bad:?}: {got}");
        }
    }
}
