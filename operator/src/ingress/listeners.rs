//! Each listener of an ingress Gateway judged on its own: a protocol we serve
//! (`HTTP`, `HTTPS` terminated here), route kinds we support (`HTTPRoute`), usable
//! certificates (Secrets of type TLS, across namespaces only with a ReferenceGrant),
//! and no conflict with another listener on the same port.

use std::collections::BTreeMap;

use gateway_api::apis::standard::gateways::{
    Gateway, GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom,
    GatewayListenersAllowedRoutesNamespacesSelector, GatewayListenersTlsMode,
};
use gateway_api::apis::standard::referencegrants::ReferenceGrant;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{GATEWAY_GROUP, Refusal, grants};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Https,
}

/// A certificate a listener serves, PEM as found in its Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Certificate {
    pub cert_chain: String,
    pub private_key: String,
}

/// Where routes may attach from.
#[derive(Clone, Debug, PartialEq)]
pub enum From {
    Same,
    All,
    /// Namespaces whose labels the selector matches; none given matches none.
    Selector(Option<GatewayListenersAllowedRoutesNamespacesSelector>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub name: String,
    pub port: i32,
    /// `None`: a protocol we do not serve (`accepted` says so).
    pub protocol: Option<Protocol>,
    pub hostname: Option<String>,
    /// Whether `HTTPRoute` is among the kinds the listener takes.
    pub takes_http_routes: bool,
    pub from: From,
    pub accepted: Result<(), Refusal>,
    pub resolved_refs: Result<(), Refusal>,
    pub conflicted: Option<Refusal>,
    /// The first usable certificate of an HTTPS listener.
    pub certificate: Option<Certificate>,
}

impl Verdict {
    /// Routes attach only to a listener that is accepted, not conflicted, and takes
    /// HTTPRoutes.
    pub fn usable(&self) -> bool {
        self.accepted.is_ok() && self.conflicted.is_none() && self.takes_http_routes
    }
}

/// The Secrets a Gateway's listeners name, as the controller found them
/// (`(namespace, name)`; absent: not found).
pub type Secrets = BTreeMap<(String, String), Secret>;

/// The `(namespace, name)` of every Secret the Gateway's listeners reference.
pub fn secret_refs(gw: &Gateway) -> Vec<(String, String)> {
    let ns = gw.namespace().unwrap_or_default();
    let mut refs: Vec<_> = gw
        .spec
        .listeners
        .iter()
        .filter_map(|l| l.tls.as_ref())
        .flat_map(|t| t.certificate_refs.iter().flatten())
        .filter(|r| {
            r.group.as_deref().unwrap_or("").is_empty()
                && r.kind.as_deref().unwrap_or("Secret") == "Secret"
        })
        .map(|r| {
            (
                r.namespace.clone().unwrap_or_else(|| ns.clone()),
                r.name.clone(),
            )
        })
        .collect();
    refs.sort();
    refs.dedup();
    refs
}

pub fn judge(gw: &Gateway, secrets: &Secrets, grants: &[ReferenceGrant]) -> Vec<Verdict> {
    let mut verdicts: Vec<Verdict> = gw
        .spec
        .listeners
        .iter()
        .map(|l| one(gw, l, secrets, grants))
        .collect();
    conflicts(&mut verdicts);
    verdicts
}

fn one(
    gw: &Gateway,
    l: &GatewayListeners,
    secrets: &Secrets,
    grants: &[ReferenceGrant],
) -> Verdict {
    let protocol = match l.protocol.as_str() {
        "HTTP" => Some(Protocol::Http),
        "HTTPS" => Some(Protocol::Https),
        _ => None,
    };
    let passthrough = l
        .tls
        .as_ref()
        .and_then(|t| t.mode.as_ref())
        .is_some_and(|m| matches!(m, GatewayListenersTlsMode::Passthrough));
    let accepted = match protocol {
        None => Err(Refusal::new(
            "UnsupportedProtocol",
            format!(
                "protocol {:?} is not supported; this class serves HTTP and HTTPS",
                l.protocol
            ),
        )),
        Some(Protocol::Https) if passthrough => Err(Refusal::new(
            "UnsupportedProtocol",
            "HTTPS with tls.mode Passthrough is not supported; use Terminate",
        )),
        Some(_) => Ok(()),
    };
    // Kinds: unset means the protocol's default, HTTPRoute.
    let kinds = l.allowed_routes.as_ref().and_then(|a| a.kinds.as_ref());
    let (takes_http_routes, invalid_kinds) = match (protocol, kinds) {
        (None, _) => (false, Vec::new()),
        (Some(_), None) => (true, Vec::new()),
        (Some(_), Some(kinds)) => {
            let (ours, others): (Vec<_>, Vec<_>) = kinds.iter().partition(|k| {
                k.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
                    && k.kind == "HTTPRoute"
            });
            (
                !ours.is_empty(),
                others.iter().map(|k| k.kind.clone()).collect::<Vec<_>>(),
            )
        }
    };
    let mut resolved_refs = if invalid_kinds.is_empty() {
        Ok(())
    } else {
        Err(Refusal::new(
            "InvalidRouteKinds",
            format!(
                "route kinds {} are not supported; this class takes HTTPRoute",
                invalid_kinds.join(", ")
            ),
        ))
    };
    let mut certificate = None;
    if protocol == Some(Protocol::Https) && !passthrough && resolved_refs.is_ok() {
        match certificate_of(gw, l, secrets, grants) {
            Ok(c) => certificate = Some(c),
            Err(why) => resolved_refs = Err(why),
        }
    }
    let from = match l
        .allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref())
    {
        None => From::Same,
        Some(n) => match n.from {
            Some(GatewayListenersAllowedRoutesNamespacesFrom::All) => From::All,
            Some(GatewayListenersAllowedRoutesNamespacesFrom::Selector) => {
                From::Selector(n.selector.clone())
            }
            Some(GatewayListenersAllowedRoutesNamespacesFrom::Same) | None => From::Same,
        },
    };
    Verdict {
        name: l.name.clone(),
        port: l.port,
        protocol,
        hostname: l.hostname.clone(),
        takes_http_routes,
        from,
        accepted,
        resolved_refs,
        conflicted: None,
        certificate,
    }
}

fn certificate_of(
    gw: &Gateway,
    l: &GatewayListeners,
    secrets: &Secrets,
    grants: &[ReferenceGrant],
) -> Result<Certificate, Refusal> {
    let gw_ns = gw.namespace().unwrap_or_default();
    let refs: Vec<_> = l
        .tls
        .as_ref()
        .and_then(|t| t.certificate_refs.as_ref())
        .map(|r| r.iter().collect())
        .unwrap_or_default();
    let Some(first) = refs.first() else {
        return Err(Refusal::new(
            "InvalidCertificateRef",
            "an HTTPS listener needs tls.certificateRefs",
        ));
    };
    // Every reference must be usable; the first one is served.
    let mut served = None;
    for r in &refs {
        let (group, kind) = (
            r.group.as_deref().unwrap_or(""),
            r.kind.as_deref().unwrap_or("Secret"),
        );
        if !group.is_empty() || kind != "Secret" {
            return Err(Refusal::new(
                "InvalidCertificateRef",
                format!(
                    "certificateRef {}/{} {:?}: only core Secrets are supported",
                    if group.is_empty() { "core" } else { group },
                    kind,
                    r.name
                ),
            ));
        }
        let ns = r.namespace.clone().unwrap_or_else(|| gw_ns.clone());
        let allowed = grants::permitted(
            grants,
            grants::From {
                group: GATEWAY_GROUP,
                kind: "Gateway",
                namespace: &gw_ns,
            },
            grants::To {
                group: "",
                kind: "Secret",
                namespace: &ns,
                name: &r.name,
            },
        );
        if !allowed {
            return Err(Refusal::new(
                "RefNotPermitted",
                format!(
                    "Secret {ns}/{} is in another namespace and no ReferenceGrant there allows Gateways from {gw_ns}",
                    r.name
                ),
            ));
        }
        let Some(secret) = secrets.get(&(ns.clone(), r.name.clone())) else {
            return Err(Refusal::new(
                "InvalidCertificateRef",
                format!("Secret {ns}/{} does not exist", r.name),
            ));
        };
        let cert = usable(secret).map_err(|why| {
            Refusal::new(
                "InvalidCertificateRef",
                format!("Secret {ns}/{}: {why}", r.name),
            )
        })?;
        if std::ptr::eq(*r, *first) {
            served = Some(cert);
        }
    }
    served.ok_or_else(|| Refusal::new("InvalidCertificateRef", "no usable certificate"))
}

/// `tls.crt` holds at least one PEM certificate and `tls.key` a PEM private key.
fn usable(secret: &Secret) -> Result<Certificate, &'static str> {
    let data = secret.data.as_ref().ok_or("it has no data")?;
    let crt = data.get("tls.crt").ok_or("it has no tls.crt")?;
    let key = data.get("tls.key").ok_or("it has no tls.key")?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&crt.0)
        .collect::<Result<_, _>>()
        .map_err(|_| "tls.crt is not PEM")?;
    if certs.is_empty() {
        return Err("tls.crt holds no PEM certificate");
    }
    PrivateKeyDer::from_pem_slice(&key.0).map_err(|_| "tls.key holds no PEM private key")?;
    Ok(Certificate {
        cert_chain: String::from_utf8(crt.0.clone()).map_err(|_| "tls.crt is not text")?,
        private_key: String::from_utf8(key.0.clone()).map_err(|_| "tls.key is not text")?,
    })
}

/// Listeners on one port must agree on the protocol, and no two may share a
/// hostname there; the later one is marked conflicted.
fn conflicts(verdicts: &mut [Verdict]) {
    for i in 0..verdicts.len() {
        if verdicts[i].accepted.is_err() {
            continue;
        }
        let earlier = verdicts[..i]
            .iter()
            .filter(|v| v.accepted.is_ok() && v.port == verdicts[i].port);
        let mut why = None;
        for e in earlier {
            if e.protocol != verdicts[i].protocol {
                why = Some(Refusal::new(
                    "ProtocolConflict",
                    format!(
                        "listener {:?} uses port {} with another protocol",
                        e.name, e.port
                    ),
                ));
                break;
            }
            if e.hostname == verdicts[i].hostname {
                why = Some(Refusal::new(
                    "HostnameConflict",
                    format!(
                        "listener {:?} already serves this hostname on port {}",
                        e.name, e.port
                    ),
                ));
                break;
            }
        }
        verdicts[i].conflicted = why;
    }
}
