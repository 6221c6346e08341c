//! Gateway API hostnames: a listener's hostname and a route's hostnames intersect
//! (GEP-1867 / the HTTPRoute `hostnames` rules). `*.example.com` matches any name
//! with at least one more label, never `example.com` itself.

/// Whether `name` (exact) falls under `pattern` (exact or `*.` wildcard).
pub fn covers(pattern: &str, name: &str) -> bool {
    let (pattern, name) = (pattern.to_ascii_lowercase(), name.to_ascii_lowercase());
    match pattern.strip_prefix('*') {
        // `suffix` is `.example.com`: at least one label must come before it.
        Some(suffix) => name == pattern || (name.len() > suffix.len() && name.ends_with(suffix)),
        None => pattern == name,
    }
}

/// The hostnames a route serves on a listener: the route's hostnames that intersect
/// the listener's, each as the more specific of the pair. `None` inside means "any".
/// An empty result means the route does not match the listener at all.
pub fn intersect(listener: Option<&str>, route: &[String]) -> Vec<Option<String>> {
    match (listener, route.is_empty()) {
        (None, true) => vec![None],
        (Some(l), true) => vec![Some(l.to_ascii_lowercase())],
        (None, false) => route.iter().map(|h| Some(h.to_ascii_lowercase())).collect(),
        (Some(l), false) => {
            let mut out = Vec::new();
            for h in route {
                if covers(l, h) {
                    out.push(Some(h.to_ascii_lowercase()));
                } else if covers(h, l) {
                    out.push(Some(l.to_ascii_lowercase()));
                }
            }
            out.sort();
            out.dedup();
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_need_one_more_label() {
        assert!(covers("*.example.com", "a.example.com"));
        assert!(covers("*.example.com", "a.b.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(covers("*.example.com", "*.foo.example.com"));
        assert!(covers("*.example.com", "*.example.com"));
        assert!(!covers("*.foo.example.com", "*.example.com"));
        assert!(covers("Example.COM", "example.com"));
        assert!(!covers("a.example.com", "*.example.com"));
    }

    #[test]
    fn intersection_keeps_the_more_specific_name() {
        let v = |hs: &[&str]| hs.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>();
        assert_eq!(intersect(None, &[]), vec![None]);
        assert_eq!(
            intersect(Some("*.wildcard.io"), &v(&["foo.wildcard.io", "other.org"])),
            vec![Some("foo.wildcard.io".to_owned())]
        );
        assert_eq!(
            intersect(Some("very.specific.com"), &v(&["*.specific.com"])),
            vec![Some("very.specific.com".to_owned())]
        );
        assert!(intersect(Some("foo.com"), &v(&["bar.com"])).is_empty());
        assert_eq!(
            intersect(Some("*.com"), &v(&["*.foo.com"])),
            vec![Some("*.foo.com".to_owned())]
        );
    }
}
