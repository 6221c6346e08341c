//! `HTTPS` listeners: TLS terminated with the certificate the client's server name
//! (SNI) selects (`host_match::select_certificates`), then the same HTTP/1.1 or
//! HTTP/2 handling as a plain listener. Each connection takes the TLS config of the
//! runtime in force when it arrives, so a reload changes certificates for new
//! connections while open ones keep theirs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use waypoint_config::ListenerTls;

use super::{Downstream, Shared, serve_connection};
use crate::host_match;

/// As the HBONE listener: a client that has not finished its handshake by then is
/// dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A listener's certificates, chosen per handshake by server name.
#[derive(Debug)]
struct SniResolver {
    certificates: Vec<(Option<String>, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for SniResolver {
    /// The most specific certificate for the server name; among equals, the first
    /// whose key can sign with a scheme the client offers. `None` refuses the
    /// handshake (no SNI and no certificate without hostname, or no match at all).
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let hostnames = self.certificates.iter().map(|(h, _)| h.as_deref());
        let best = host_match::select_certificates(hostnames, hello.server_name());
        let usable = |i: &&usize| {
            self.certificates[**i]
                .1
                .key
                .choose_scheme(hello.signature_schemes())
                .is_some()
        };
        let chosen = best.iter().find(usable).or(best.first());
        if chosen.is_none() {
            tracing::debug!(server_name = ?hello.server_name(), "no certificate for this server name");
        }
        chosen.map(|&i| Arc::clone(&self.certificates[i].1))
    }
}

/// The rustls config of one `HTTPS` listener: TLS 1.2 and 1.3, ALPN h2 and
/// http/1.1. A certificate that does not parse is left out with an error logged;
/// validation refuses such a config first, so that does not happen in practice.
pub(crate) fn server_config(
    listener: &str,
    tls: &ListenerTls,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let certificates = tls
        .certificates
        .iter()
        .enumerate()
        .filter_map(|(j, c)| match c.certified_key() {
            Ok(key) => Some((c.hostname.clone(), Arc::new(key))),
            Err(e) => {
                tracing::error!(listener, certificate = j, error = %e, "certificate left out");
                None
            }
        })
        .collect();
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(waypoint_config::crypto_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SniResolver { certificates }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves one bound `HTTPS` listener, by name, until the task is dropped.
pub async fn serve(shared: Arc<Shared>, socket: TcpListener, listener: String) {
    let listener: Arc<str> = listener.into();
    super::accept_loop(socket, |stream, peer| {
        tokio::spawn(connection(
            Arc::clone(&shared),
            Arc::clone(&listener),
            stream,
            peer,
        ));
    })
    .await;
}

async fn connection(shared: Arc<Shared>, listener: Arc<str>, tcp: TcpStream, peer: SocketAddr) {
    let Some(config) = shared.current().server_tls(&listener) else {
        tracing::debug!(%listener, %peer, "the config in force has no TLS for this listener");
        return;
    };
    let local = tcp.local_addr().ok();
    let _ = tcp.set_nodelay(true);
    let stream = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        TlsAcceptor::from(config).accept(tcp),
    )
    .await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, %peer, %listener, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, %listener, "TLS handshake timed out");
            return;
        }
    };
    let server_name = stream.get_ref().1.server_name().map(Arc::from);
    let mut downstream = Downstream {
        listener,
        peer,
        local,
        destination: None,
        source_principal: None,
        scheme: "https",
        server_name,
        head_clock: None,
    };
    let stream = super::handler::timed_heads(&shared, stream, &mut downstream);
    serve_connection(shared, TokioIo::new(stream), downstream).await;
}
