//! A workload's call to the mesh CA: make a key and CSR here, send the CSR with the
//! workload's ServiceAccount token, and assemble [`Credentials`] from the answer. The
//! private key never leaves the process.
//!
//! One HTTP/1.1 request per call over a fresh TLS connection: a workload asks once
//! per half certificate lifetime, so pooling would buy nothing.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request as HttpRequest, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::Identity;
use crate::protocol::{CertificateRequest, CertificateResponse, PATH};
use crate::workload::{self, Credentials, Request};

/// The whole exchange, connect to answer; a CA that takes longer is down.
const TIMEOUT: Duration = Duration::from_secs(10);
/// A certificate chain and a few roots; anything larger is not an answer.
const MAX_RESPONSE: usize = 1024 * 1024;

/// Where the CA is and how to recognise it.
#[derive(Clone, Debug)]
pub struct CaEndpoint {
    /// `https://host:port`; `host` must be a DNS name (or IP) in the CA's serving
    /// certificate.
    pub url: Uri,
    /// PEM roots the CA's serving certificate chains to (the mesh root ConfigMap).
    pub roots_pem: String,
}

/// A failed request, naming the CA it went to.
#[derive(Debug, thiserror::Error)]
#[error("the CA at {url}: {failure}")]
pub struct ClientError {
    pub url: Uri,
    pub failure: Box<Failure>,
}

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("bad address: {0}")]
    Address(&'static str),
    #[error("unusable trust roots: {0}")]
    Roots(String),
    #[error("making the key and CSR: {0}")]
    Request(workload::Error),
    #[error("connecting: {0}")]
    Connect(std::io::Error),
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("HTTP exchange: {0}")]
    Http(String),
    #[error("no answer within {TIMEOUT:?}")]
    Timeout,
    #[error("refused the request: HTTP {status}: {body}")]
    Refused { status: StatusCode, body: String },
    #[error("answered with JSON that is not a CertificateResponse: {0}")]
    Decode(serde_json::Error),
    #[error("answered with unusable credentials: {0}")]
    Credentials(workload::Error),
}

impl ClientError {
    fn new(url: &Uri, failure: Failure) -> Self {
        Self {
            url: url.clone(),
            failure: Box::new(failure),
        }
    }

    /// The HTTP status of a refusal (401, 403, 400, 503...).
    pub fn status(&self) -> Option<StatusCode> {
        match *self.failure {
            Failure::Refused { status, .. } => Some(status),
            _ => None,
        }
    }
}

/// Requests a certificate for `identity`, proving it with `token` (a projected
/// ServiceAccount token with audience [`crate::protocol::TOKEN_AUDIENCE`]). The CA
/// may shorten `validity`. Fails unless the answer is a chain for `identity`.
pub async fn request_certificate(
    ca: &CaEndpoint,
    token: &str,
    identity: &Identity,
    validity: Option<Duration>,
) -> Result<Credentials, ClientError> {
    let url = &ca.url;
    let request = Request::new(identity).map_err(|e| ClientError::new(url, Failure::Request(e)))?;
    let body = CertificateRequest {
        csr: request.csr_pem().to_owned(),
        validity_seconds: validity.map(|v| v.as_secs()),
    };
    let answer = tokio::time::timeout(TIMEOUT, exchange(ca, token.trim(), &body))
        .await
        .map_err(|_| ClientError::new(url, Failure::Timeout))??;
    request
        .complete(&answer.cert_chain, &answer.roots)
        .map_err(|e| ClientError::new(url, Failure::Credentials(e)))
}

async fn exchange(
    ca: &CaEndpoint,
    token: &str,
    body: &CertificateRequest,
) -> Result<CertificateResponse, ClientError> {
    let url = &ca.url;
    let fail = |failure| ClientError::new(url, failure);
    let http_err = |reason: String| fail(Failure::Http(reason));
    let (host, port) = host_port(url)?;
    let server_name = ServerName::try_from(host.to_owned()).map_err(|_| {
        fail(Failure::Address(
            "the host is neither a DNS name nor an IP address",
        ))
    })?;
    let tls = TlsConnector::from(Arc::new(tls_config(url, &ca.roots_pem)?));
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|e| fail(Failure::Connect(e)))?;
    let _ = tcp.set_nodelay(true);
    let stream = tls
        .connect(server_name, tcp)
        .await
        .map_err(|e| fail(Failure::Tls(e)))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| http_err(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "CA connection ended with an error");
        }
    });
    let json = serde_json::to_vec(body).map_err(|e| http_err(e.to_string()))?;
    let authority = url.authority().map_or(host, http::uri::Authority::as_str);
    let req = HttpRequest::builder()
        .method(Method::POST)
        .uri(PATH)
        .header(header::HOST, authority)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::new(Bytes::from(json)))
        .map_err(|e| http_err(e.to_string()))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| http_err(e.to_string()))?;
    let status = resp.status();
    let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
        .collect()
        .await
        .map_err(|e| http_err(format!("reading the response: {e}")))?
        .to_bytes();
    if !status.is_success() {
        return Err(fail(Failure::Refused {
            status,
            body: String::from_utf8_lossy(&bytes).trim().to_owned(),
        }));
    }
    serde_json::from_slice(&bytes).map_err(|e| fail(Failure::Decode(e)))
}

/// `https://host[:port]` → `(host, port)`, brackets of an IPv6 literal removed.
fn host_port(url: &Uri) -> Result<(&str, u16), ClientError> {
    let bad = |reason| ClientError::new(url, Failure::Address(reason));
    if url.scheme_str() != Some("https") {
        return Err(bad("the scheme must be https"));
    }
    let host = url.host().ok_or_else(|| bad("no host"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Ok((host, url.port_u16().unwrap_or(443)))
}

/// WebPKI verification (chain and DNS name) against `roots_pem` only: the CA's
/// serving certificate is signed by the mesh root, not by a public CA.
fn tls_config(url: &Uri, roots_pem: &str) -> Result<ClientConfig, ClientError> {
    let bad = |reason: String| ClientError::new(url, Failure::Roots(reason));
    let certs = CertificateDer::pem_slice_iter(roots_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    let mut store = RootCertStore::empty();
    let (_, unusable) = store.add_parsable_certificates(certs);
    if store.is_empty() || unusable > 0 {
        return Err(bad(format!(
            "{} usable, {unusable} unusable PEM certificates",
            store.len()
        )));
    }
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))
        .map(|b| b.with_root_certificates(store).with_no_client_auth())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn reads_host_and_port_and_refuses_plain_http() {
        let url: Uri = "https://waypoint-ca.waypoint-system.svc:15012"
            .parse()
            .unwrap();
        assert_eq!(
            host_port(&url).unwrap(),
            ("waypoint-ca.waypoint-system.svc", 15012)
        );
        let v6: Uri = "https://[::1]/".parse().unwrap();
        assert_eq!(host_port(&v6).unwrap(), ("::1", 443));
        let plain: Uri = "http://ca:15012".parse().unwrap();
        assert_eq!(
            host_port(&plain).unwrap_err().to_string(),
            "the CA at http://ca:15012/: bad address: the scheme must be https"
        );
    }

    #[test]
    fn refuses_roots_that_are_not_certificates() {
        let url: Uri = "https://ca:15012".parse().unwrap();
        let err = tls_config(&url, "no PEM here").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the CA at https://ca:15012/: unusable trust roots: 0 usable, 0 unusable PEM certificates"
        );
    }
}
