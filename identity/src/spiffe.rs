//! SPIFFE IDs in Istio's shape.

use std::fmt;
use std::str::FromStr;

/// `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error(
        "{0:?} is not a SPIFFE ID: expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    Shape(String),
    #[error(
        "{0:?} is not a ServiceAccount user name: expected system:serviceaccount:<namespace>:<name>"
    )]
    Username(String),
}

impl Identity {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        }
    }

    /// The identity of the ServiceAccount a TokenReview names
    /// (`system:serviceaccount:<ns>:<sa>`).
    pub fn from_service_account_username(
        trust_domain: &str,
        user: &str,
    ) -> Result<Self, ParseError> {
        let bad = || ParseError::Username(user.to_owned());
        let rest = user
            .strip_prefix("system:serviceaccount:")
            .ok_or_else(bad)?;
        let (ns, sa) = rest.split_once(':').ok_or_else(bad)?;
        if !is_segment(ns) || !is_segment(sa) {
            return Err(bad());
        }
        Ok(Self::new(trust_domain, ns, sa))
    }
}

/// Kubernetes names: lower-case alphanumerics, '-' and '.'; never empty, never a
/// path separator or ':'.
fn is_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

fn is_trust_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.' || b == b'_'
        })
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for Identity {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let bad = || ParseError::Shape(s.to_owned());
        let rest = s.strip_prefix("spiffe://").ok_or_else(bad)?;
        let mut parts = rest.split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None)
                if is_trust_domain(td) && is_segment(ns) && is_segment(sa) =>
            {
                Ok(Self::new(td, ns, sa))
            }
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_istio_shape() {
        let id: Identity = "spiffe://cluster.local/ns/httpbin/sa/httpbin-waypoint"
            .parse()
            .unwrap();
        assert_eq!(
            id,
            Identity::new("cluster.local", "httpbin", "httpbin-waypoint")
        );
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/httpbin/sa/httpbin-waypoint"
        );
    }

    #[test]
    fn refuses_other_shapes() {
        for bad in [
            "",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns/a/sa/b/extra",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe://cluster.local/ns/A/sa/b",
            "https://cluster.local/ns/a/sa/b",
            "spiffe:///ns/a/sa/b",
            "spiffe://cluster.local/sa/b/ns/a",
        ] {
            assert_eq!(
                bad.parse::<Identity>(),
                Err(ParseError::Shape(bad.to_owned())),
                "{bad}"
            );
        }
    }

    #[test]
    fn token_review_user_names() {
        assert_eq!(
            Identity::from_service_account_username("td", "system:serviceaccount:ns1:sa-1"),
            Ok(Identity::new("td", "ns1", "sa-1"))
        );
        for bad in [
            "system:serviceaccount:ns1",
            "system:node:n1",
            "system:serviceaccount:ns1:sa:x",
            "system:serviceaccount::sa",
        ] {
            assert!(
                Identity::from_service_account_username("td", bad).is_err(),
                "{bad}"
            );
        }
    }
}
