//! Bootstrap of the webhook's TLS: a private CA, a serving certificate for the
//! webhook Service, both kept in Secrets, and the CA patched into the webhook
//! configurations as `caBundle`. Idempotent: reruns reuse what is still good, so the
//! CA (and with it every API server's trust) survives serving-certificate renewals.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client, ResourceExt};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime, format_description::well_known::Rfc3339};

const NOT_AFTER: &str = "waypoint.dev/not-after";
const NAMES: &str = "waypoint.dev/names";
const CA_VALIDITY: Duration = Duration::days(3650);
const SERVING_VALIDITY: Duration = Duration::days(365);
/// Renew when less than this is left, so a monthly rerun always has room.
const RENEW_BEFORE: Duration = Duration::days(30);

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("formatting a time: {0}")]
    Time(#[from] time::error::Format),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// A certificate and its key, PEM-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: OffsetDateTime,
}

fn window(now: OffsetDateTime, validity: Duration) -> (OffsetDateTime, OffsetDateTime) {
    // An hour of slack for clocks that disagree.
    (now - Duration::hours(1), now + validity)
}

pub fn new_ca(now: OffsetDateTime) -> Result<Issued, CertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "waypoint-webhook CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (params.not_before, params.not_after) = window(now, CA_VALIDITY);
    let cert = params.self_signed(&key)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after: params.not_after,
    })
}

/// A serving certificate for `dns` names and `ips`, signed by `ca`.
pub fn serving(
    ca: &Issued,
    dns: &[String],
    ips: &[IpAddr],
    now: OffsetDateTime,
) -> Result<Issued, CertError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(dns.to_vec())?;
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    params.distinguished_name.push(
        DnType::CommonName,
        dns.first().map_or("waypoint-webhook", String::as_str),
    );
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    (params.not_before, params.not_after) = window(now, SERVING_VALIDITY);
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after: params.not_after,
    })
}

/// The names the API server uses for a Service: it dials `<svc>.<ns>.svc`.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_owned(),
    ]
}

/// Where the bootstrap keeps things in the cluster.
#[derive(Debug, Clone)]
pub struct Target {
    pub namespace: String,
    pub service: String,
    pub ca_secret: String,
    pub tls_secret: String,
    /// Name of both the Mutating- and the ValidatingWebhookConfiguration.
    pub webhook_config: String,
}

fn data(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

fn not_after(secret: &Secret) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(secret.annotations().get(NOT_AFTER)?, &Rfc3339).ok()
}

fn secret(
    name: &str,
    namespace: &str,
    type_: &str,
    files: &[(&str, &str)],
    notes: &[(&str, String)],
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_owned(),
                "waypoint-webhook".to_owned(),
            )])),
            annotations: Some(
                notes
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        type_: Some(type_.to_owned()),
        data: Some(
            files
                .iter()
                .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

async fn put(
    api: &Api<Secret>,
    existing: Option<Secret>,
    mut new: Secret,
) -> Result<(), CertError> {
    match existing {
        Some(old) => {
            new.metadata.resource_version = old.metadata.resource_version;
            api.replace(&new.name_any(), &PostParams::default(), &new)
                .await?;
        }
        None => {
            api.create(&PostParams::default(), &new).await?;
        }
    }
    Ok(())
}

/// Makes sure the CA and serving Secrets are good, and that both webhook
/// configurations trust the CA. Returns the CA certificate (PEM).
pub async fn ensure(client: &Client, t: &Target, now: OffsetDateTime) -> Result<String, CertError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &t.namespace);
    let good_until = now + RENEW_BEFORE;

    let ca_secret = api.get_opt(&t.ca_secret).await?;
    let stored = ca_secret.as_ref().and_then(|s| {
        let cert_pem = data(s, "ca.crt")?;
        let key_pem = data(s, "ca.key")?;
        let not_after = not_after(s).filter(|n| *n > good_until)?;
        Some(Issued {
            cert_pem,
            key_pem,
            not_after,
        })
    });
    let ca = if let Some(ca) = stored {
        ca
    } else {
        let ca = new_ca(now)?;
        let s = secret(
            &t.ca_secret,
            &t.namespace,
            "Opaque",
            &[("ca.crt", &ca.cert_pem), ("ca.key", &ca.key_pem)],
            &[(NOT_AFTER, ca.not_after.format(&Rfc3339)?)],
        );
        put(&api, ca_secret, s).await?;
        tracing::info!(secret = %t.ca_secret, not_after = %ca.not_after, "created the webhook CA");
        ca
    };

    let names = service_names(&t.service, &t.namespace);
    let tls_secret = api.get_opt(&t.tls_secret).await?;
    let reusable = tls_secret.as_ref().is_some_and(|s| {
        not_after(s).is_some_and(|n| n > good_until)
            && data(s, "ca.crt").as_deref() == Some(ca.cert_pem.as_str())
            && s.annotations().get(NAMES) == Some(&names.join(","))
    });
    if !reusable {
        let leaf = serving(&ca, &names, &[], now)?;
        let s = secret(
            &t.tls_secret,
            &t.namespace,
            "kubernetes.io/tls",
            &[
                ("tls.crt", &leaf.cert_pem),
                ("tls.key", &leaf.key_pem),
                ("ca.crt", &ca.cert_pem),
            ],
            &[
                (NOT_AFTER, leaf.not_after.format(&Rfc3339)?),
                (NAMES, names.join(",")),
            ],
        );
        put(&api, tls_secret, s).await?;
        tracing::info!(secret = %t.tls_secret, not_after = %leaf.not_after, "issued the serving certificate");
    }

    patch_bundles(client, &t.webhook_config, &ca.cert_pem).await?;
    Ok(ca.cert_pem)
}

/// Sets `caBundle` on every webhook of both configurations, when it differs.
async fn patch_bundles(client: &Client, name: &str, ca_pem: &str) -> Result<(), CertError> {
    let bundle = ByteString(ca_pem.as_bytes().to_vec());
    let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    if let Some(mut c) = mutating.get_opt(name).await? {
        let hooks = c.webhooks.iter_mut().flatten();
        if set_bundle(hooks.map(|w| &mut w.client_config.ca_bundle), &bundle) {
            mutating.replace(name, &PostParams::default(), &c).await?;
            tracing::info!(
                config = name,
                "caBundle set on the MutatingWebhookConfiguration"
            );
        }
    } else {
        tracing::warn!(
            config = name,
            "no MutatingWebhookConfiguration of that name; nothing to patch"
        );
    }
    let validating: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    if let Some(mut c) = validating.get_opt(name).await? {
        let hooks = c.webhooks.iter_mut().flatten();
        if set_bundle(hooks.map(|w| &mut w.client_config.ca_bundle), &bundle) {
            validating.replace(name, &PostParams::default(), &c).await?;
            tracing::info!(
                config = name,
                "caBundle set on the ValidatingWebhookConfiguration"
            );
        }
    } else {
        tracing::warn!(
            config = name,
            "no ValidatingWebhookConfiguration of that name; nothing to patch"
        );
    }
    Ok(())
}

/// Returns whether anything changed.
fn set_bundle<'a>(
    slots: impl Iterator<Item = &'a mut Option<ByteString>>,
    bundle: &ByteString,
) -> bool {
    let mut changed = false;
    for slot in slots {
        if slot.as_ref() != Some(bundle) {
            *slot = Some(bundle.clone());
            changed = true;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;

    use super::*;

    #[test]
    fn serving_certificate_chains_to_the_ca_and_names_the_service() {
        let now = OffsetDateTime::now_utc();
        let ca = new_ca(now).unwrap();
        let leaf = serving(
            &ca,
            &service_names("wh", "sys"),
            &["127.0.0.1".parse().unwrap()],
            now,
        )
        .unwrap();
        assert!(leaf.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(leaf.not_after < ca.not_after);
        // rustls verifies the chain and the name.
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
            .unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let end =
            rustls::pki_types::CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes()).unwrap();
        for name in ["wh.sys.svc", "127.0.0.1"] {
            let server = rustls::pki_types::ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&end, &[], &server, &[], rustls::pki_types::UnixTime::now())
                .unwrap();
        }
        let other = rustls::pki_types::ServerName::try_from("other.sys.svc").unwrap();
        assert!(
            verifier
                .verify_server_cert(&end, &[], &other, &[], rustls::pki_types::UnixTime::now())
                .is_err()
        );
    }

    #[test]
    fn set_bundle_reports_changes_only() {
        let b = ByteString(b"ca".to_vec());
        let mut slots = [None, Some(ByteString(b"old".to_vec()))];
        assert!(set_bundle(slots.iter_mut(), &b));
        assert!(!set_bundle(slots.iter_mut(), &b));
    }
}
