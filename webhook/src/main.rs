//! waypoint-webhook: `serve` runs the admission webhook; `certs` bootstraps its TLS
//! (in the cluster, or into a directory for out-of-cluster development).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use waypoint_webhook::Settings;
use waypoint_webhook::cache::Caches;
use waypoint_webhook::certs::{self, Target};
use waypoint_webhook::server::{self, AppState};
use waypoint_webhook::tls::{CertFiles, ReloadingResolver};

#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve /mutate, /validate, /healthz, /readyz and /metrics over HTTPS.
    Serve(Serve),
    /// Create or renew the CA and serving certificate and patch caBundle.
    Certs(Certs),
}

#[derive(Args, Debug)]
struct Serve {
    #[arg(long, default_value = "0.0.0.0:9443")]
    address: SocketAddr,
    #[arg(long, default_value = "/etc/waypoint-webhook/tls/tls.crt")]
    cert_file: PathBuf,
    #[arg(long, default_value = "/etc/waypoint-webhook/tls/tls.key")]
    key_file: PathBuf,
    /// How often to look for a rotated certificate.
    #[arg(long, default_value = "2", value_name = "SECONDS")]
    cert_poll_seconds: u64,
    /// GatewayClasses whose Gateways are waypoints (repeatable).
    #[arg(long = "waypoint-class", default_value = waypoint_mesh::names::WAYPOINT_CLASS)]
    waypoint_classes: Vec<String>,
    /// Deny, rather than warn, when a use-waypoint label names a missing Gateway.
    #[arg(long, env = "WAYPOINT_WEBHOOK_STRICT")]
    strict: bool,
    /// After SIGTERM, keep serving (while not ready) so endpoints drop us first.
    #[arg(long, default_value = "5", value_name = "SECONDS")]
    shutdown_delay_seconds: u64,
}

#[derive(Args, Debug)]
struct Certs {
    #[arg(long, default_value = "waypoint-system")]
    namespace: String,
    #[arg(long, default_value = "waypoint-webhook")]
    service: String,
    #[arg(long, default_value = "waypoint-webhook-ca")]
    ca_secret: String,
    #[arg(long, default_value = "waypoint-webhook-tls")]
    tls_secret: String,
    /// Name of both webhook configurations.
    #[arg(long, default_value = "waypoint-webhook")]
    webhook_config: String,
    /// Write ca.crt, tls.crt and tls.key here instead of touching the cluster.
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Extra IP SANs for --out-dir (an out-of-cluster webhook reached by URL).
    #[arg(long = "ip")]
    ips: Vec<IpAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve(args).await,
        Command::Certs(args) => certs(args).await,
    }
}

async fn serve(args: Serve) -> anyhow::Result<()> {
    let files = CertFiles {
        cert: args.cert_file,
        key: args.key_file,
    };
    let resolver =
        Arc::new(ReloadingResolver::load(files).context("loading the serving certificate")?);
    let tls = waypoint_webhook::tls::server_config(resolver.clone())?;
    tokio::spawn(resolver.watch(Duration::from_secs(args.cert_poll_seconds.max(1))));

    let client = kube::Client::try_default()
        .await
        .context("connecting to the API server")?;
    let (caches, run) = Caches::start(&client);
    tokio::spawn(run);
    let settings = Settings {
        waypoint_classes: args.waypoint_classes.into_iter().collect(),
        strict: args.strict,
        ..Settings::default()
    };
    let state = AppState::new(settings, Arc::new(caches.clone()));
    {
        let state = state.clone();
        tokio::spawn(async move {
            caches.synced().await;
            state.ready.store(true, Ordering::Relaxed);
            tracing::info!("watch caches synced; ready");
        });
    }

    let listener = tokio::net::TcpListener::bind(args.address)
        .await
        .with_context(|| format!("binding {}", args.address))?;
    tracing::info!(address = %args.address, "serving admission reviews");
    let delay = Duration::from_secs(args.shutdown_delay_seconds);
    let shutdown = {
        let state = state.clone();
        async move {
            terminated().await;
            state.ready.store(false, Ordering::Relaxed);
            tracing::info!(
                ?delay,
                "terminating: not ready, still serving while endpoints update"
            );
            tokio::time::sleep(delay).await;
        }
    };
    server::serve(
        listener,
        tls,
        server::router(state),
        shutdown,
        Duration::from_secs(5),
    )
    .await;
    tracing::info!("stopped");
    Ok(())
}

async fn terminated() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
}

async fn certs(args: Certs) -> anyhow::Result<()> {
    let now = time::OffsetDateTime::now_utc();
    if let Some(dir) = args.out_dir {
        let ca = certs::new_ca(now)?;
        let names = certs::service_names(&args.service, &args.namespace);
        let leaf = certs::serving(&ca, &names, &args.ips, now)?;
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (file, pem) in [
            ("ca.crt", &ca.cert_pem),
            ("tls.crt", &leaf.cert_pem),
            ("tls.key", &leaf.key_pem),
        ] {
            let path = dir.join(file);
            std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
        }
        tracing::info!(dir = %dir.display(), "wrote ca.crt, tls.crt and tls.key");
        return Ok(());
    }
    let client = kube::Client::try_default()
        .await
        .context("connecting to the API server")?;
    let target = Target {
        namespace: args.namespace,
        service: args.service,
        ca_secret: args.ca_secret,
        tls_secret: args.tls_secret,
        webhook_config: args.webhook_config,
    };
    certs::ensure(&client, &target, now).await?;
    tracing::info!("webhook certificates in place");
    Ok(())
}
