//! waypoint-dataplane: serves a config model file (standalone mode), reloading it
//! when it changes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use waypoint_config::ListenerProtocol;
use waypoint_dataplane::{admin, config_client, hbone, identity, proxy};

#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The config model, as YAML; reloaded when it changes.
    #[arg(long, env = "WAYPOINT_CONFIG")]
    config: PathBuf,
    /// Readiness endpoint (`/healthz/ready`).
    #[arg(long, default_value = "0.0.0.0:15021")]
    admin_address: SocketAddr,
    /// On SIGTERM, how long to keep accepting while the endpoint is withdrawn
    /// (Istio's `terminationDrainDuration`, 5 s), before waiting for in-flight
    /// requests as long again.
    #[arg(long, default_value = "5", value_name = "SECONDS")]
    drain_seconds: u64,
    /// Access-log encoding, as Istio's `accessLogEncoding`.
    #[arg(
        long,
        env = "WAYPOINT_ACCESS_LOG_ENCODING",
        value_enum,
        default_value_t
    )]
    access_log_encoding: waypoint_dataplane::access_log::Format,
    /// Prometheus endpoint (`/stats/prometheus`).
    #[arg(long, default_value = "0.0.0.0:15020")]
    metrics_address: SocketAddr,
    /// Mesh credentials for HBONE listeners and HBONE endpoints: `cert-chain.pem`, `key.pem` and
    /// `root-cert.pem`, reloaded when they change.
    #[arg(long, env = "WAYPOINT_IDENTITY_DIR", conflicts_with = "ca_address")]
    identity_dir: Option<PathBuf>,
    /// The mesh CA (`https://host:port`): HBONE credentials are requested from it
    /// with the projected ServiceAccount token and renewed at half their lifetime.
    #[arg(long, env = "WAYPOINT_CA_ADDRESS", requires_all = ["identity_namespace", "identity_service_account"])]
    ca_address: Option<http::Uri>,
    /// The projected token (audience waypoint-ca).
    #[arg(
        long,
        env = "WAYPOINT_CA_TOKEN_FILE",
        default_value = "/var/run/secrets/tokens/waypoint-ca/token"
    )]
    ca_token_file: PathBuf,
    /// PEM roots the CA's serving certificate chains to.
    #[arg(
        long,
        env = "WAYPOINT_CA_ROOT_FILE",
        default_value = "/var/run/secrets/waypoint/root/root-cert.pem"
    )]
    ca_root_file: PathBuf,
    #[arg(long, env = "WAYPOINT_TRUST_DOMAIN", default_value = waypoint_identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// This pod's namespace (downward API).
    #[arg(long, env = "WAYPOINT_IDENTITY_NAMESPACE")]
    identity_namespace: Option<String>,
    /// This pod's ServiceAccount (downward API).
    #[arg(long, env = "WAYPOINT_IDENTITY_SERVICE_ACCOUNT")]
    identity_service_account: Option<String>,
    /// The certificate lifetime to ask the CA for (it may cap it); default its own.
    #[arg(long, env = "WAYPOINT_CERT_TTL_SECONDS", value_name = "SECONDS")]
    cert_ttl_seconds: Option<u64>,
    /// The operator's config server (`https://host:port`). `--config` is then only
    /// the config to start with (the operator keeps it current in the ConfigMap);
    /// updates come from the server. Needs mesh credentials.
    #[arg(long, env = "WAYPOINT_CONFIG_URL")]
    config_url: Option<http::Uri>,
    /// This pod's name (downward API), reported to the config server.
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
}

fn main() -> anyhow::Result<()> {
    // One worker (`TOKIO_WORKER_THREADS=1`, as hack/bench runs every proxy on one
    // core) gets a current-thread runtime: with nothing to steal work from, the
    // multi-thread scheduler only added cost, 34-35k against 44k req/s in the same
    // run (wrk -c64, one pinned core). Otherwise tokio's multi-thread runtime, which
    // reads the same variable for its worker count.
    let one_worker = std::env::var("TOKIO_WORKER_THREADS").is_ok_and(|v| v.trim() == "1");
    let mut builder = if one_worker {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let result = builder
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run());
    waypoint_dataplane::stdout_log::flush();
    result
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour only on a terminal: `kubectl logs` and log collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let flavor = tokio::runtime::Handle::current().runtime_flavor();
    tracing::info!(runtime = ?flavor, "starting");
    // Installed first: as a container's PID 1 we would otherwise ignore SIGTERM and
    // be killed only at the end of the grace period.
    let mut stop = stop_signal()?;
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let config = waypoint_config::Config::from_yaml(&text)
        .with_context(|| format!("loading {}", args.config.display()))?;
    let readiness = admin::Readiness::default();
    let admin_socket = tokio::net::TcpListener::bind(args.admin_address)
        .await
        .with_context(|| format!("binding the admin address {}", args.admin_address))?;
    tokio::spawn(admin::serve(admin_socket, readiness.clone()));
    let shared = proxy::Shared::with_access_log_format(
        config,
        Box::new(waypoint_dataplane::log_line),
        args.access_log_encoding,
    );
    let metrics_socket = tokio::net::TcpListener::bind(args.metrics_address)
        .await
        .with_context(|| format!("binding the metrics address {}", args.metrics_address))?;
    tokio::spawn(admin::serve_metrics(metrics_socket, Arc::clone(&shared)));
    let mesh_tls = match &args.identity_dir {
        Some(dir) => {
            let tls = identity::MeshTls::new(identity::load_dir(dir)?)?;
            tracing::info!(identity = %tls.credentials().identity, dir = %dir.display(), "mesh credentials loaded");
            tokio::spawn(identity::watch_dir(dir.clone(), Arc::clone(&tls)));
            Some(tls)
        }
        None => match &args.ca_address {
            Some(url) => {
                let source = identity::CaSource {
                    url: url.clone(),
                    root_file: args.ca_root_file.clone(),
                    token_file: args.ca_token_file.clone(),
                    identity: waypoint_identity::Identity::new(
                        &args.trust_domain,
                        args.identity_namespace.as_deref().unwrap_or_default(),
                        args.identity_service_account.as_deref().unwrap_or_default(),
                    ),
                    validity: args.cert_ttl_seconds.map(Duration::from_secs),
                };
                let creds = tokio::select! {
                    creds = identity::fetch_until_ok(&source) => creds,
                    _ = stop.changed() => {
                        tracing::info!("stopping before the first certificate arrived");
                        return Ok(());
                    }
                };
                tracing::info!(identity = %creds.identity, expires = ?creds.not_after, ca = %url, "mesh certificate issued");
                let tls = identity::MeshTls::new(creds)?;
                tokio::spawn(identity::renew(source, Arc::clone(&tls)));
                Some(tls)
            }
            None => None,
        },
    };
    if let Some(tls) = &mesh_tls {
        // Endpoints marked `hbone` are reached with the same (renewed) credentials.
        shared.set_mesh(Arc::clone(tls));
    }
    serve_listeners(&shared, mesh_tls.as_ref()).await?;
    readiness.set_ready();
    keep_config_current(
        args.config_url,
        args.pod_name,
        args.config,
        text,
        mesh_tls.as_ref(),
        &shared,
    )?;
    let _ = stop.changed().await;
    drain(&shared, &readiness, Duration::from_secs(args.drain_seconds)).await;
    Ok(())
}

/// Binds every listener of the config loaded at start and serves it.
async fn serve_listeners(
    shared: &Arc<proxy::Shared>,
    mesh_tls: Option<&Arc<identity::MeshTls>>,
) -> anyhow::Result<()> {
    let runtime = shared.current();
    for (socket, name) in proxy::bind(&runtime).await? {
        let protocol = runtime
            .config
            .listeners
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.protocol)
            .unwrap_or_default();
        tracing::info!(listener = %name, ?protocol, address = ?socket.local_addr().ok(), "serving");
        match (protocol, mesh_tls) {
            (ListenerProtocol::Http, _) => {
                tokio::spawn(proxy::serve(Arc::clone(shared), socket, name));
            }
            (ListenerProtocol::Https, _) => {
                tokio::spawn(proxy::https::serve(Arc::clone(shared), socket, name));
            }
            (ListenerProtocol::Hbone, Some(tls)) => {
                tokio::spawn(hbone::serve(
                    Arc::clone(shared),
                    Arc::clone(tls),
                    socket,
                    name,
                ));
            }
            (ListenerProtocol::Hbone, None) => anyhow::bail!(
                "listener {name:?} is HBONE, which needs mesh credentials: pass --identity-dir or --ca-address"
            ),
        }
    }
    Ok(())
}

/// From the operator's config server with `--config-url`, else from the file.
fn keep_config_current(
    url: Option<http::Uri>,
    pod: Option<String>,
    path: PathBuf,
    text: String,
    mesh_tls: Option<&Arc<identity::MeshTls>>,
    shared: &Arc<proxy::Shared>,
) -> anyhow::Result<()> {
    match (url, mesh_tls) {
        (Some(url), Some(tls)) => {
            tracing::info!(%url, "following the operator's config");
            let source = config_client::Source { url, pod };
            let (tls, shared) = (Arc::clone(tls), Arc::clone(shared));
            tokio::spawn(async move { config_client::follow(source, tls, shared, &text).await });
        }
        (Some(_), None) => anyhow::bail!(
            "--config-url needs mesh credentials to authenticate: pass --identity-dir or --ca-address"
        ),
        (None, _) => {
            tokio::spawn(watch_config(path, text, Arc::clone(shared)));
        }
    }
    Ok(())
}

/// Not ready, so the endpoint is withdrawn; until kube-proxy has caught up, new
/// connections still arrive and are served (exiting at once refused them: e2e saw
/// one request fail during a waypoint rollout). Responses say `connection: close`
/// meanwhile; then in-flight requests get as long again to finish.
async fn drain(shared: &proxy::Shared, readiness: &admin::Readiness, period: Duration) {
    readiness.set_not_ready();
    let _ = shared.drain(Duration::ZERO).await;
    tokio::time::sleep(period).await;
    let left = shared.drain(period).await;
    tracing::info!(in_flight_left = left, "drained; exiting");
}

/// Flips to true on SIGTERM or SIGINT.
fn stop_signal() -> anyhow::Result<tokio::sync::watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}

/// Polls the config file: a mounted ConfigMap is swapped by the kubelet through a
/// symlink, which path-based inotify misses.
async fn watch_config(path: PathBuf, mut last: String, shared: Arc<proxy::Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Ok(text) = tokio::fs::read_to_string(&path).await else {
            continue;
        };
        if text == last {
            continue;
        }
        match shared.reload(&text) {
            Ok(()) => tracing::info!(path = %path.display(), "config reloaded"),
            Err(e) => tracing::error!(
                path = %path.display(),
                error = %e,
                "config rejected; the previous config stays in force"
            ),
        }
        last = text;
    }
}
