//! TLS termination on an `HTTPS` listener (a Gateway's `HTTPS` listeners with
//! `tls.mode: Terminate`): the certificates it serves, each for the hostname of the
//! Gateway listener it came from. The dataplane picks one per connection by the
//! client's server name (SNI): exact hostname, then the longest wildcard, then a
//! certificate without hostname.
//!
//! Certificates are parsed here, once for validation and again by the dataplane
//! through the same [`ServerCertificate::certified_key`], so a config that loads is
//! one whose certificates the dataplane can serve.

use std::fmt;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};

use crate::{hostname, invalid};

/// What `Debug` and [`crate::Config::redacted`] show in place of a private key.
pub const REDACTED: &str = "<redacted>";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ListenerTls {
    /// None at all is valid and refuses every handshake: the port is bound from the
    /// first config (a pod's bootstrap ConfigMap carries no private keys; the keys
    /// come over the config server's mutual TLS a moment later), and a listener whose
    /// certificates are all unusable must not serve.
    ///
    /// Several may share a hostname (one RSA, one ECDSA, say): the first whose key
    /// the client can use is served.
    pub certificates: Vec<ServerCertificate>,
}

/// One certificate and its key, as PEM (a Secret's `tls.crt` and `tls.key`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerCertificate {
    /// The Gateway listener's hostname, possibly a wildcard (`*.example.com`);
    /// none: the certificate for any other name, and for clients without SNI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The leaf certificate first, then any intermediates.
    pub cert_chain: String,
    /// PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub private_key: String,
}

/// Debug output ends up in logs: it never shows the key.
impl fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCertificate")
            .field("hostname", &self.hostname)
            .field("cert_chain", &self.cert_chain)
            .field("private_key", &REDACTED)
            .finish()
    }
}

/// Why a certificate cannot be served. Messages never quote the key.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("{0}")]
    CertChain(String),
    #[error("{0}")]
    PrivateKey(String),
    #[error("the private key does not belong to the first certificate of certChain")]
    KeyMismatch,
}

impl CertificateError {
    /// The field at fault, as a suffix of the certificate's path.
    fn field(&self) -> &'static str {
        match self {
            Self::CertChain(_) => ".certChain",
            Self::PrivateKey(_) => ".privateKey",
            Self::KeyMismatch => "",
        }
    }
}

/// The one crypto provider of the workspace (ring), as the HBONE configs use.
pub fn crypto_provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

impl ServerCertificate {
    /// The chain and key, parsed and checked to belong together, ready for rustls.
    pub fn certified_key(&self) -> Result<CertifiedKey, CertificateError> {
        let chain = CertificateDer::pem_slice_iter(self.cert_chain.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| CertificateError::CertChain(format!("is not valid PEM: {e}")))?;
        if chain.is_empty() {
            return Err(CertificateError::CertChain(
                "has no PEM CERTIFICATE block".to_owned(),
            ));
        }
        for (n, der) in chain.iter().enumerate() {
            ParsedCertificate::try_from(der).map_err(|e| {
                CertificateError::CertChain(format!("certificate {n} is not usable X.509: {e}"))
            })?;
        }
        // The PEM error could quote a line of the key: say only what kind it is.
        let key = PrivateKeyDer::from_pem_slice(self.private_key.as_bytes()).map_err(|e| {
            CertificateError::PrivateKey(match e {
                pem::Error::NoItemsFound => {
                    "has no PEM private key (PKCS#8, PKCS#1 or SEC1)".to_owned()
                }
                _ => "is not valid PEM".to_owned(),
            })
        })?;
        let signer = crypto_provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| CertificateError::PrivateKey(format!("is not a usable key: {e}")))?;
        let certified = CertifiedKey::new(chain, signer);
        match certified.keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
                Ok(certified)
            }
            Err(_) => Err(CertificateError::KeyMismatch),
        }
    }
}

impl ListenerTls {
    /// Checks every certificate; `at` is the path of this `tls`.
    pub(crate) fn validate(&self, at: &str) -> Result<(), crate::Error> {
        for (j, c) in self.certificates.iter().enumerate() {
            let at = format!("{at}.certificates[{j}]");
            if let Some(h) = &c.hostname
                && let Some(problem) = hostname::problem(h, false)
            {
                return invalid(format!("{at}.hostname"), format!("{h:?} {problem}"));
            }
            if let Err(e) = c.certified_key() {
                return invalid(format!("{at}{}", e.field()), e.to_string());
            }
        }
        Ok(())
    }

    /// The same certificates with every private key replaced by [`REDACTED`].
    pub(crate) fn redacted(&self) -> Self {
        let certificates = self
            .certificates
            .iter()
            .map(|c| ServerCertificate {
                private_key: REDACTED.to_owned(),
                ..c.clone()
            })
            .collect();
        Self { certificates }
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use crate::{Config, ListenerProtocol};

    /// A self-signed certificate for `name` and its key, as PEM.
    fn pem(name: &str) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    /// An HTTPS listener with the given certificates: (hostname, chain, key).
    fn https(certs: &[(Option<&str>, &str, &str)]) -> String {
        let mut yaml = "listeners:
- name: gw
  address: 0.0.0.0:443
  protocol: HTTPS
  tls:
    certificates:
"
        .to_owned();
        for (hostname, chain, key) in certs {
            if let Some(h) = hostname {
                let _ = write!(yaml, "    - hostname: \"{h}\"\n      ");
            } else {
                yaml.push_str("    - ");
            }
            let _ = writeln!(
                yaml,
                "certChain: {}\n      privateKey: {}",
                serde_json::to_string(chain).unwrap(),
                serde_json::to_string(key).unwrap(),
            );
        }
        yaml
    }

    #[test]
    fn an_https_listener_loads_and_round_trips() {
        let (exact, exact_key) = pem("example.com");
        let (wild, wild_key) = pem("*.wildcard.org");
        let c = Config::from_yaml(&https(&[
            (Some("example.com"), &exact, &exact_key),
            (Some("*.wildcard.org"), &wild, &wild_key),
        ]))
        .unwrap();
        let l = &c.listeners[0];
        assert_eq!(l.protocol, ListenerProtocol::Https);
        let tls = l.tls.as_ref().unwrap();
        assert_eq!(
            tls.certificates[1].hostname.as_deref(),
            Some("*.wildcard.org")
        );
        assert!(tls.certificates[0].certified_key().is_ok());
        let yaml = serde_yaml::to_string(&c).unwrap();
        assert!(
            yaml.contains("protocol: HTTPS") && yaml.contains("certChain:"),
            "{yaml}"
        );
        assert_eq!(Config::from_yaml(&yaml).unwrap(), c);
    }

    #[test]
    fn an_https_listener_without_certificates_loads() {
        // The bootstrap shape: the port is bound, handshakes wait for the keys.
        let c = Config::from_yaml(&https(&[]).replace("certificates:\n", "certificates: []\n"))
            .unwrap();
        assert!(c.listeners[0].tls.as_ref().unwrap().certificates.is_empty());
    }

    #[test]
    fn debug_output_never_shows_a_key() {
        let (chain, key) = pem("example.com");
        let c = Config::from_yaml(&https(&[(None, &chain, &key)])).unwrap();
        let debug = format!("{c:?}");
        assert!(debug.contains("<redacted>") && debug.contains("BEGIN CERTIFICATE"));
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
    }

    #[test]
    fn redacted_replaces_every_private_key_and_nothing_else() {
        let (a, a_key) = pem("example.com");
        let (b, b_key) = pem("*.wildcard.org");
        let mut yaml = https(&[(Some("example.com"), &a, &a_key), (None, &b, &b_key)]);
        yaml.push_str("- {name: plain, address: 0.0.0.0:80}\n");
        let c = Config::from_yaml(&yaml).unwrap();
        let r = c.redacted();
        let text = serde_yaml::to_string(&r).unwrap();
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        assert_eq!(text.matches("privateKey: <redacted>").count(), 2, "{text}");
        // Everything else is as it was, and the original keeps its keys.
        let certs = |c: &Config| c.listeners[0].tls.clone().unwrap().certificates;
        for (kept, redacted) in certs(&c).iter().zip(certs(&r)) {
            assert_eq!(kept.hostname, redacted.hostname);
            assert_eq!(kept.cert_chain, redacted.cert_chain);
            assert!(kept.private_key.contains("PRIVATE KEY"));
        }
        assert_eq!(r.listeners[1], c.listeners[1]);
        assert_eq!(r.clusters, c.clusters);
        // Redacted keys do not parse: the result is for reading, not for loading.
        let err = Config::from_yaml(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("listeners[0].tls.certificates[0].privateKey"),
            "{err}"
        );
    }

    #[test]
    fn unusable_certificates_are_refused_naming_the_field() {
        let (chain, key) = pem("example.com");
        let (other_chain, other_key) = pem("other.org");
        let secret = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0!!secret\n-----END PRIVATE KEY-----\n";
        let cases: [(String, &str); 8] = [
            (
                https(&[(None, &chain, &key), (None, "not pem", &key)]),
                "listeners[0].tls.certificates[1].certChain: has no PEM CERTIFICATE block",
            ),
            (
                https(&[(
                    None,
                    "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                    &key,
                )]),
                "listeners[0].tls.certificates[0].certChain: certificate 0 is not usable X.509",
            ),
            (
                https(&[(None, &chain, &other_chain)]),
                "listeners[0].tls.certificates[0].privateKey: has no PEM private key",
            ),
            (
                https(&[(None, &chain, secret)]),
                "listeners[0].tls.certificates[0].privateKey: is not valid PEM",
            ),
            (
                https(&[(None, &chain, &other_key)]),
                "listeners[0].tls.certificates[0]: the private key does not belong to the first certificate of certChain",
            ),
            (
                https(&[(Some("example.com:443"), &chain, &key)]),
                "listeners[0].tls.certificates[0].hostname: \"example.com:443\" is a hostname, without a port",
            ),
            (
                https(&[]).replace("  tls:\n    certificates:\n", ""),
                "listeners[0].tls: an HTTPS listener needs certificates",
            ),
            (
                https(&[(None, &chain, &key)]).replace("protocol: HTTPS", "protocol: HTTP"),
                "listeners[0].tls: only an HTTPS listener terminates TLS",
            ),
        ];
        for (yaml, want) in cases {
            let err = Config::from_yaml(&yaml).unwrap_err().to_string();
            assert!(
                err.starts_with(want),
                "{want:?} is not the start of {err:?}"
            );
            assert!(!err.contains("secret") && !err.contains("c2Vj"), "{err}");
        }
    }
}
