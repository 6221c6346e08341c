//! The mesh CA the operator runs: every replica signs workload certificates over
//! HTTPS on :15012 (Istio's CA port), the root lives in a Secret so that all
//! replicas and restarts sign with the same key, and the leader publishes the trust
//! roots to every namespace. What to answer is decided here, purely
//! ([`refusal_status`], [`ttl`], [`bearer`]); [`server`], [`secret`] and [`roots`]
//! do the I/O.

use std::time::Duration;

use http::StatusCode;
use waypoint_identity::ca;

pub mod roots;
pub mod secret;
pub mod server;

/// Istio's CA port (istiod's gRPC CA listens there too).
pub const PORT: u16 = 15012;
/// The Service in front of every replica's CA server.
pub const SERVICE_NAME: &str = "waypoint-ca";
/// The Service in front of the leader's config server: the same port, selecting
/// only the pod labelled [`LEADER_LABEL`].
pub const CONFIG_SERVICE_NAME: &str = "waypoint-config";
/// The label the leader puts on its own pod (and removes when it stops leading).
pub const LEADER_LABEL: &str = "waypoint.dev/leader";

/// Why a certificate request got no certificate. Each has a metrics label and an
/// HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("no bearer token: send 'Authorization: Bearer <projected ServiceAccount token>'")]
    NoToken,
    #[error("the token was not accepted: {0}")]
    InvalidToken(String),
    #[error("could not check the token with the API server: {0}")]
    AuthenticatorUnavailable(String),
    #[error("{0:?} is not a ServiceAccount; only workloads get certificates")]
    NotServiceAccount(String),
    #[error("the body is not a CertificateRequest: {0}")]
    BadRequest(String),
    #[error(transparent)]
    Sign(#[from] ca::Error),
}

impl Refusal {
    /// The `reason` label of `waypoint_operator_certificate_refusals_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoToken => "no_token",
            Self::InvalidToken(_) => "invalid_token",
            Self::AuthenticatorUnavailable(_) => "authenticator_unavailable",
            Self::NotServiceAccount(_) => "not_service_account",
            Self::BadRequest(_) | Self::Sign(ca::Error::Csr(_)) => "bad_request",
            Self::Sign(ca::Error::IdentityMismatch { .. }) => "identity_mismatch",
            Self::Sign(ca::Error::TrustDomain { .. }) => "trust_domain",
            Self::Sign(ca::Error::Generate(_) | ca::Error::Load(_)) => "internal",
        }
    }
}

/// 401 when we do not know who is asking, 403 when we know and the answer is no,
/// 400 when the request itself is malformed, 503 when the API server cannot tell
/// us (the workload should retry), 500 for our own failures.
pub fn refusal_status(refusal: &Refusal) -> StatusCode {
    match refusal {
        Refusal::NoToken | Refusal::InvalidToken(_) => StatusCode::UNAUTHORIZED,
        Refusal::AuthenticatorUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        Refusal::NotServiceAccount(_)
        | Refusal::Sign(ca::Error::IdentityMismatch { .. } | ca::Error::TrustDomain { .. }) => {
            StatusCode::FORBIDDEN
        }
        Refusal::BadRequest(_) | Refusal::Sign(ca::Error::Csr(_)) => StatusCode::BAD_REQUEST,
        Refusal::Sign(ca::Error::Generate(_) | ca::Error::Load(_)) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

/// The lifetime to sign for: what the workload asked, capped at `max`; `max` when
/// it did not ask. Zero is a request error, not a certificate that is born expired.
pub fn ttl(requested_seconds: Option<u64>, max: Duration) -> Result<Duration, Refusal> {
    match requested_seconds {
        None => Ok(max),
        Some(0) => Err(Refusal::BadRequest(
            "validitySeconds must be positive".to_owned(),
        )),
        Some(s) => Ok(Duration::from_secs(s).min(max)),
    }
}

/// The token of an `Authorization: Bearer <token>` header value (scheme
/// case-insensitive, RFC 6750).
pub fn bearer(authorization: Option<&str>) -> Option<&str> {
    let value = authorization?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The DNS names clients may use for the CA Service, for its serving certificate.
pub fn service_dns_names(namespace: &str, cluster_domain: &str) -> Vec<String> {
    [SERVICE_NAME, CONFIG_SERVICE_NAME]
        .iter()
        .flat_map(|name| {
            [
                format!("{name}.{namespace}.svc"),
                format!("{name}.{namespace}.svc.{cluster_domain}"),
                format!("{name}.{namespace}"),
            ]
        })
        .collect()
}

/// Where generated waypoint pods poll for their config (`WAYPOINT_CONFIG_URL`).
pub fn config_url(namespace: &str) -> String {
    format!("https://{CONFIG_SERVICE_NAME}.{namespace}.svc:{PORT}")
}

/// The address generated waypoint pods are given (`WAYPOINT_CA_ADDRESS`).
pub fn service_url(namespace: &str) -> String {
    format!("https://{SERVICE_NAME}.{namespace}.svc:{PORT}")
}

/// `90s`, `30m`, `24h` (or plain seconds) for `--workload-cert-ttl`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and s, m or h, e.g. 24h"))?;
    let seconds = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        _ => None,
    }
    .filter(|s| *s > 0)
    .ok_or_else(|| format!("{text:?}: expected a positive number and s, m or h, e.g. 24h"))?;
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use time::OffsetDateTime;
    use waypoint_identity::Identity;
    use waypoint_identity::workload::Request;

    use super::*;

    const DAY: Duration = Duration::from_hours(24);

    #[test]
    fn the_requested_lifetime_is_capped_and_zero_is_refused() {
        assert_eq!(ttl(None, DAY).unwrap(), DAY);
        assert_eq!(ttl(Some(3600), DAY).unwrap(), Duration::from_hours(1));
        assert_eq!(ttl(Some(7 * 86_400), DAY).unwrap(), DAY);
        let zero = ttl(Some(0), DAY).unwrap_err();
        assert_eq!(refusal_status(&zero), StatusCode::BAD_REQUEST);
        assert_eq!(zero.reason(), "bad_request");
    }

    #[test]
    fn durations_read_like_flags() {
        assert_eq!(parse_duration("24h").unwrap(), DAY);
        assert_eq!(parse_duration("90m").unwrap(), Duration::from_mins(90));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert!(parse_duration("0h").is_err());
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn bearer_tokens_are_read_like_rfc_6750() {
        assert_eq!(bearer(Some("Bearer abc.def")), Some("abc.def"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic abc")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(Some("Bearer")), None);
        assert_eq!(bearer(None), None);
    }

    /// Every outcome the server can meet, with the status and metrics reason it gets.
    #[test]
    fn each_refusal_has_its_status_and_reason() {
        let ca = ca::Ca::generate("cluster.local", OffsetDateTime::now_utc(), DAY).unwrap();
        let proved = Identity::new("cluster.local", "a", "client");
        let asked = Identity::new("cluster.local", "a", "admin");
        let csr = Request::new(&asked).unwrap();
        let mismatch = ca
            .sign(csr.csr_pem(), &proved, OffsetDateTime::now_utc(), DAY)
            .unwrap_err();
        let garbage = ca
            .sign("nonsense", &proved, OffsetDateTime::now_utc(), DAY)
            .unwrap_err();
        let foreign = ca
            .sign(
                csr.csr_pem(),
                &Identity::new("other.td", "a", "admin"),
                OffsetDateTime::now_utc(),
                DAY,
            )
            .unwrap_err();
        let cases = [
            (Refusal::NoToken, 401, "no_token"),
            (
                Refusal::InvalidToken("expired".into()),
                401,
                "invalid_token",
            ),
            (
                Refusal::AuthenticatorUnavailable("timeout".into()),
                503,
                "authenticator_unavailable",
            ),
            (
                Refusal::NotServiceAccount("kubernetes-admin".into()),
                403,
                "not_service_account",
            ),
            (Refusal::BadRequest("eof".into()), 400, "bad_request"),
            (Refusal::Sign(mismatch), 403, "identity_mismatch"),
            (Refusal::Sign(garbage), 400, "bad_request"),
            (Refusal::Sign(foreign), 403, "trust_domain"),
        ];
        for (refusal, status, reason) in cases {
            assert_eq!(refusal_status(&refusal).as_u16(), status, "{refusal}");
            assert_eq!(refusal.reason(), reason, "{refusal}");
        }
    }

    #[test]
    fn the_service_names_match_the_address_pods_are_given() {
        let names = service_dns_names("waypoint-system", "cluster.local");
        assert_eq!(
            names,
            [
                "waypoint-ca.waypoint-system.svc",
                "waypoint-ca.waypoint-system.svc.cluster.local",
                "waypoint-ca.waypoint-system",
                "waypoint-config.waypoint-system.svc",
                "waypoint-config.waypoint-system.svc.cluster.local",
                "waypoint-config.waypoint-system",
            ]
        );
        let url: http::Uri = service_url("waypoint-system").parse().unwrap();
        assert_eq!(url.host(), Some(names[0].as_str()));
        assert_eq!(url.port_u16(), Some(PORT));
        let url: http::Uri = config_url("waypoint-system").parse().unwrap();
        assert_eq!(url.host(), Some(names[3].as_str()));
        assert_eq!(url.port_u16(), Some(PORT));
    }
}
