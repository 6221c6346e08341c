//! The mesh CA: a self-signed root that signs workload certificates from CSRs.
//!
//! The caller authenticates the workload (the operator does it with a TokenReview)
//! and passes the identity it proved; the CA refuses a CSR that asks for any other
//! name, so a workload can only ever hold its own ServiceAccount's identity.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::Identity;

/// Workload certificates are backdated this much, for clocks a little behind ours.
const BACKDATE: Duration = Duration::from_mins(1);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("generating a certificate: {0}")]
    Generate(#[source] rcgen::Error),
    #[error("the CA's certificate or key is unusable: {0}")]
    Load(#[source] rcgen::Error),
    #[error("the CSR is not a valid PKCS#10 request: {0}")]
    Csr(#[source] rcgen::Error),
    #[error(
        "the CSR asks for {requested:?}, but the caller authenticated as {authenticated}; a workload may only request its own identity"
    )]
    IdentityMismatch {
        requested: Vec<String>,
        authenticated: Identity,
    },
    #[error("identity {identity} is outside this CA's trust domain {trust_domain}")]
    TrustDomain {
        identity: Identity,
        trust_domain: String,
    },
}

/// A signing root and the trust domain it vouches for.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    trust_domain: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// A new self-signed root valid from `now` for `lifetime`.
    pub fn generate(
        trust_domain: &str,
        now: OffsetDateTime,
        lifetime: Duration,
    ) -> Result<Self, Error> {
        let key = KeyPair::generate().map_err(Error::Generate)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, "waypoint mesh root");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - BACKDATE;
        params.not_after = now + lifetime;
        params.serial_number = Some(serial());
        let cert = params.self_signed(&key).map_err(Error::Generate)?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
            trust_domain: trust_domain.to_owned(),
        })
    }

    /// The root stored earlier (the operator keeps it in a Secret).
    pub fn from_pem(trust_domain: &str, cert_pem: &str, key_pem: &str) -> Result<Self, Error> {
        let key = KeyPair::from_pem(key_pem).map_err(Error::Load)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key).map_err(Error::Load)?;
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_owned(),
            trust_domain: trust_domain.to_owned(),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Signs `csr_pem` for `authenticated`, valid from `now` for `ttl`. The CSR must
    /// request exactly the URI SAN of `authenticated` and nothing else.
    pub fn sign(
        &self,
        csr_pem: &str,
        authenticated: &Identity,
        now: OffsetDateTime,
        ttl: Duration,
    ) -> Result<String, Error> {
        if authenticated.trust_domain != self.trust_domain {
            return Err(Error::TrustDomain {
                identity: authenticated.clone(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(Error::Csr)?;
        let wanted = authenticated.to_string();
        let requested: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(uri) => uri.as_str().to_owned(),
                other => format!("{other:?}"),
            })
            .collect();
        if requested != [wanted.as_str()] {
            return Err(Error::IdentityMismatch {
                requested,
                authenticated: authenticated.clone(),
            });
        }
        let params = workload_params(&wanted, now, ttl)?;
        let request = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        };
        Ok(request
            .signed_by(&self.issuer)
            .map_err(Error::Generate)?
            .pem())
    }

    /// A TLS serving certificate for DNS names (the CA's own HTTPS endpoint), with
    /// its freshly generated key: `(cert_pem, key_pem)`.
    pub fn serving_certificate(
        &self,
        dns_names: &[String],
        now: OffsetDateTime,
        ttl: Duration,
    ) -> Result<(String, String), Error> {
        let key = KeyPair::generate().map_err(Error::Generate)?;
        let mut params = CertificateParams::new(dns_names.to_vec()).map_err(Error::Generate)?;
        params.distinguished_name = DistinguishedName::new();
        params.not_before = now - BACKDATE;
        params.not_after = now + ttl;
        params.serial_number = Some(serial());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(Error::Generate)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Istio's workload certificate shape: empty subject, one URI SAN, both TLS usages.
fn workload_params(
    uri: &str,
    now: OffsetDateTime,
    ttl: Duration,
) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(
        uri.to_owned().try_into().map_err(Error::Generate)?,
    )];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = now - BACKDATE;
    params.not_after = now + ttl;
    params.serial_number = Some(serial());
    Ok(params)
}

/// 128 random bits, top bit clear so the DER integer stays positive and 16 bytes.
fn serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // The ring provider's system RNG; failing to read it is not recoverable.
    if rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .is_err()
    {
        let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
        bytes = nanos.to_be_bytes();
    }
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}
