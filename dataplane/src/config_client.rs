//! Follows this waypoint's config on the operator (`waypoint_config::delivery`): a
//! long poll over mutual TLS with the mesh certificate, which tells the operator
//! which Gateway we serve. Each poll reports the version in force, or one we
//! refused, so the Gateway's status can say whether its config runs. A config is
//! swapped in whole or not at all; while the operator is away the last one keeps
//! serving and polls back off to [`MAX_BACKOFF`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use waypoint_config::delivery::{self, POLL_WAIT_SECONDS, VERSION_HEADER};
use waypoint_identity::workload::Credentials;

use crate::identity::MeshTls;
use crate::proxy::Shared;

/// A config is a few hundred KiB at most; more is not a config.
const MAX_CONFIG: usize = 16 * 1024 * 1024;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The operator answers within its poll wait; this much later it is gone.
const POLL_TIMEOUT: Duration = Duration::from_secs(POLL_WAIT_SECONDS + 15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("bad config URL {0}: {1}")]
    Url(Uri, &'static str),
    #[error("TLS config from the mesh credentials: {0}")]
    Tls(#[from] waypoint_identity::tls::Error),
    #[error("connecting to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("no answer in time")]
    Timeout,
    #[error("HTTP: {0}")]
    Http(String),
    #[error("the operator answered {status}: {body}")]
    Status { status: StatusCode, body: String },
}

/// Where to poll and who we are.
#[derive(Clone, Debug)]
pub struct Source {
    /// `https://waypoint-config.<ns>.svc:15012`.
    pub url: Uri,
    /// This pod's name, for the operator's per-replica view.
    pub pod: Option<String>,
}

/// A connection kept between polls, with the credentials it was made with: after a
/// renewal the next poll connects anew.
struct Connection {
    sender: SendRequest<Empty<Bytes>>,
    credentials: Arc<Credentials>,
}

/// What the replica runs and what it refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub have: Option<String>,
    pub rejected: Option<String>,
}

/// A new config, or `None` when the operator had nothing new within its wait.
pub type Polled = Option<(String, String)>;

pub struct Poller {
    source: Source,
    tls: Arc<MeshTls>,
    connection: Option<Connection>,
}

impl Poller {
    pub fn new(source: Source, tls: Arc<MeshTls>) -> Self {
        Self {
            source,
            tls,
            connection: None,
        }
    }

    /// One long poll reporting `state`: `(version, text)` of a config we do not run.
    pub async fn poll(&mut self, state: &State) -> Result<Polled, PollError> {
        let result = tokio::time::timeout(POLL_TIMEOUT, self.exchange(state))
            .await
            .unwrap_or(Err(PollError::Timeout));
        if result.is_err() {
            self.connection = None;
        }
        result
    }

    async fn exchange(&mut self, state: &State) -> Result<Polled, PollError> {
        let credentials = self.tls.credentials();
        let reusable = self
            .connection
            .as_mut()
            .is_some_and(|c| Arc::ptr_eq(&c.credentials, &credentials) && !c.sender.is_closed());
        if !reusable {
            self.connection = Some(self.connect(credentials).await?);
        }
        let Some(conn) = self.connection.as_mut() else {
            return Err(PollError::Http("no connection".to_owned()));
        };
        conn.sender
            .ready()
            .await
            .map_err(|e| PollError::Http(e.to_string()))?;
        let query = delivery::query(
            state.have.as_deref(),
            state.rejected.as_deref(),
            self.source.pod.as_deref(),
        );
        let authority = self
            .source
            .url
            .authority()
            .map(ToString::to_string)
            .unwrap_or_default();
        let req = Request::get(format!("{}?{query}", delivery::PATH))
            .header(header::HOST, authority)
            .body(Empty::new())
            .map_err(|e| PollError::Http(e.to_string()))?;
        let resp = conn
            .sender
            .send_request(req)
            .await
            .map_err(|e| PollError::Http(e.to_string()))?;
        let status = resp.status();
        let version = resp
            .headers()
            .get(VERSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = Limited::new(resp.into_body(), MAX_CONFIG)
            .collect()
            .await
            .map_err(|e| PollError::Http(format!("reading the answer: {e}")))?
            .to_bytes();
        match status {
            StatusCode::OK => {
                let text = String::from_utf8(body.to_vec())
                    .map_err(|_| PollError::Http("the config is not UTF-8".to_owned()))?;
                let version = version.unwrap_or_else(|| delivery::version(&text));
                Ok(Some((version, text)))
            }
            // Nothing new; or our Gateway has no config yet (a new leader still
            // reconciling): ask again.
            StatusCode::NOT_MODIFIED | StatusCode::NOT_FOUND => Ok(None),
            status => Err(PollError::Status {
                status,
                body: String::from_utf8_lossy(&body).trim().to_owned(),
            }),
        }
    }

    async fn connect(&self, credentials: Arc<Credentials>) -> Result<Connection, PollError> {
        let url = &self.source.url;
        if url.scheme_str() != Some("https") {
            return Err(PollError::Url(url.clone(), "the scheme must be https"));
        }
        let host = url
            .host()
            .ok_or_else(|| PollError::Url(url.clone(), "no host"))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port = url.port_u16().unwrap_or(443);
        let name = ServerName::try_from(host.to_owned())
            .map_err(|_| PollError::Url(url.clone(), "the host is not a DNS name or IP"))?;
        let config = waypoint_identity::tls::service_client_config(&credentials)?;
        let connect = async {
            let tcp = TcpStream::connect((host, port))
                .await
                .map_err(|e| PollError::Connect(format!("{host}:{port}"), e))?;
            let _ = tcp.set_nodelay(true);
            TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| PollError::Connect(format!("{host}:{port} (TLS)"), e))
        };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| PollError::Timeout)??;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| PollError::Http(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "config connection ended");
            }
        });
        Ok(Connection {
            sender,
            credentials,
        })
    }
}

/// Applies what a poll brought: the new state, and whether the config was taken.
pub fn apply(shared: &Shared, state: &State, version: String, text: &str) -> (State, bool) {
    match shared.reload(text) {
        Ok(()) => {
            tracing::info!(%version, "config applied");
            (
                State {
                    have: Some(version),
                    rejected: None,
                },
                true,
            )
        }
        Err(e) => {
            tracing::error!(%version, error = %e, "config rejected; the previous config stays in force");
            (
                State {
                    have: state.have.clone(),
                    rejected: Some(version),
                },
                false,
            )
        }
    }
}

/// Polls forever, starting from the config loaded at start (`initial`).
pub async fn follow(source: Source, tls: Arc<MeshTls>, shared: Arc<Shared>, initial: &str) {
    let url = source.url.clone();
    let mut poller = Poller::new(source, tls);
    let mut state = State {
        have: Some(delivery::version(initial)),
        rejected: None,
    };
    let mut backoff = FIRST_BACKOFF;
    let mut failing = false;
    loop {
        match poller.poll(&state).await {
            Ok(answer) => {
                if failing {
                    tracing::info!(%url, "config server reachable again");
                    failing = false;
                }
                backoff = FIRST_BACKOFF;
                if let Some((version, text)) = answer {
                    state = apply(&shared, &state, version, &text).0;
                }
            }
            Err(e) => {
                if failing {
                    tracing::debug!(%url, error = %e, "config poll failed");
                } else {
                    tracing::warn!(%url, error = %e, "config server unreachable; serving the last config and retrying");
                    failing = true;
                }
                tokio::time::sleep(jitter(backoff)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// 50–100% of `d`, so replicas that lost the operator together do not return in step.
fn jitter(d: Duration) -> Duration {
    let r = crate::rng::Rng::from_entropy().below(1000);
    d / 2 + d * u32::try_from(r).unwrap_or(0) / 2000
}
