//! waypoint-dataplane: serves a config model file (standalone mode).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use waypoint_dataplane::{admin, proxy};

#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The config model, as YAML.
    #[arg(long, env = "WAYPOINT_CONFIG")]
    config: PathBuf,
    /// Readiness endpoint (`/healthz/ready`).
    #[arg(long, default_value = "0.0.0.0:15021")]
    admin_address: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let config = waypoint_config::Config::from_yaml(&text)
        .with_context(|| format!("loading {}", args.config.display()))?;
    let readiness = admin::Readiness::default();
    let admin_socket = tokio::net::TcpListener::bind(args.admin_address)
        .await
        .with_context(|| format!("binding the admin address {}", args.admin_address))?;
    tokio::spawn(admin::serve(admin_socket, readiness.clone()));
    let runtime = proxy::Runtime::new(config);
    let sockets = proxy::bind(&runtime).await?;
    let _timers = runtime.spawn_timers();
    for (socket, i) in sockets {
        tracing::info!(listener = %runtime.config.listeners[i].name, address = %runtime.config.listeners[i].address, "serving");
        tokio::spawn(proxy::serve(runtime.clone(), socket, i));
    }
    readiness.set_ready();
    tokio::signal::ctrl_c()
        .await
        .context("waiting for a signal")?;
    Ok(())
}
