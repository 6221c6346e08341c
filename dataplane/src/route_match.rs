//! Which HTTPRoute rule a request takes, by Gateway API's precedence: an exact path
//! beats a prefix, a longer prefix a shorter one, then a method match, then more
//! header matches, then more query matches; remaining ties go to the earlier rule.
//! Regular expressions rank below prefixes (the spec leaves them to implementations).
//! A VirtualService's rules are taken in their written order instead, the first
//! match winning, as Envoy walks routes.
//! Pure: compiled once per config, then asked per request.

use http::HeaderMap;
use regex::Regex;
use waypoint_config::{MatchType, PathMatch, RouteMatch, RouteRule, RuleOrder, ValueMatch};

/// What a request offers to matching.
pub struct Request<'a> {
    pub method: &'a str,
    /// Without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// A rule and the match of it that won (`None`: the rule has no matches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selected {
    pub rule: usize,
    pub matched: Option<usize>,
}

enum Path {
    Any,
    Exact(String),
    /// Without its trailing slash; empty matches everything.
    Prefix(String),
    /// Character by character (Envoy's `prefix`).
    StringPrefix(String),
    Regex(Option<Regex>),
}

enum Value {
    Exact(String),
    Regex(Option<Regex>),
}

/// (path kind, path length, has a method, header matches, query matches).
type Rank = (u8, usize, bool, usize, usize);

struct Compiled {
    path: Path,
    method: Option<String>,
    headers: Vec<(String, Value)>,
    query: Vec<(String, Value)>,
}

/// One route's rules, with their regular expressions compiled.
pub struct Matcher {
    /// Per rule: its matches (an empty list matches everything).
    rules: Vec<Vec<Compiled>>,
    order: RuleOrder,
}

fn value(v: &ValueMatch) -> Value {
    match v.kind {
        MatchType::Exact => Value::Exact(v.value.clone()),
        MatchType::RegularExpression => Value::Regex(whole(&v.value)),
    }
}

/// A regex anchored at both ends, as Gateway API's (and Envoy's) are. Validated when
/// the config loaded; one that still fails to compile matches nothing.
fn whole(re: &str) -> Option<Regex> {
    Regex::new(&format!("^(?:{re})$")).ok()
}

fn compile(m: &RouteMatch) -> Compiled {
    Compiled {
        path: match &m.path {
            None => Path::Any,
            Some(PathMatch::Exact(p)) => Path::Exact(p.clone()),
            Some(PathMatch::PathPrefix(p)) => Path::Prefix(p.trim_end_matches('/').to_owned()),
            Some(PathMatch::Prefix(p)) => Path::StringPrefix(p.clone()),
            Some(PathMatch::RegularExpression(re)) => Path::Regex(whole(re)),
        },
        method: m.method.clone(),
        headers: m
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), value(h)))
            .collect(),
        query: m
            .query_params
            .iter()
            .map(|q| (q.name.clone(), value(q)))
            .collect(),
    }
}

impl Value {
    fn is_match(&self, s: &str) -> bool {
        match self {
            Self::Exact(v) => v == s,
            Self::Regex(re) => re.as_ref().is_some_and(|re| re.is_match(s)),
        }
    }
}

impl Compiled {
    fn is_match(&self, req: &Request<'_>) -> bool {
        let path_ok = match &self.path {
            Path::Any => true,
            Path::Exact(p) => req.path == p,
            Path::Prefix(p) => {
                p.is_empty()
                    || req.path == p
                    || req
                        .path
                        .strip_prefix(p.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            }
            Path::StringPrefix(p) => req.path.starts_with(p.as_str()),
            Path::Regex(re) => re.as_ref().is_some_and(|re| re.is_match(req.path)),
        };
        path_ok
            && self.method.as_deref().is_none_or(|m| m == req.method)
            && self.headers.iter().all(|(name, v)| {
                let values: Vec<&str> = req
                    .headers
                    .get_all(name.as_str())
                    .iter()
                    .filter_map(|h| h.to_str().ok())
                    .collect();
                !values.is_empty() && v.is_match(&values.join(","))
            })
            && self.query.iter().all(|(name, v)| {
                // The first parameter of that name, as Envoy's query matcher.
                query_param(req.query, name).is_some_and(|q| v.is_match(q))
            })
    }

    /// Gateway API's precedence, larger wins.
    fn rank(&self) -> Rank {
        let (kind, len) = match &self.path {
            Path::Exact(p) => (3, p.len()),
            Path::Prefix(p) | Path::StringPrefix(p) => (2, p.len().max(1)),
            // No path is a "/" prefix.
            Path::Any => (2, 1),
            Path::Regex(_) => (1, 0),
        };
        (
            kind,
            len,
            self.method.is_some(),
            self.headers.len(),
            self.query.len(),
        )
    }
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl Matcher {
    pub fn new(rules: &[RouteRule], order: RuleOrder) -> Self {
        Self {
            rules: rules
                .iter()
                .map(|r| r.matches.iter().map(compile).collect())
                .collect(),
            order,
        }
    }

    /// The winning rule, or `None` when no rule matches (404).
    pub fn select(&self, req: &Request<'_>) -> Option<Selected> {
        let any = Compiled {
            path: Path::Any,
            method: None,
            headers: Vec::new(),
            query: Vec::new(),
        };
        let mut best: Option<(Rank, Selected)> = None;
        for (i, matches) in self.rules.iter().enumerate() {
            let candidates: Vec<(Option<usize>, &Compiled)> = if matches.is_empty() {
                vec![(None, &any)]
            } else {
                matches
                    .iter()
                    .enumerate()
                    .map(|(j, m)| (Some(j), m))
                    .collect()
            };
            for (j, m) in candidates {
                if !m.is_match(req) {
                    continue;
                }
                let selected = Selected {
                    rule: i,
                    matched: j,
                };
                if self.order == RuleOrder::Declared {
                    return Some(selected);
                }
                let rank = m.rank();
                // Strictly greater: on a tie the earlier rule stays.
                if best.as_ref().is_none_or(|(b, _)| rank > *b) {
                    best = Some((rank, selected));
                }
            }
        }
        best.map(|(_, s)| s)
    }
}

#[cfg(test)]
mod tests;
