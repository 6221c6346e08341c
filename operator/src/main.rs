//! waypoint-operator: reconciles waypoint Gateways on the cluster it runs in.

use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use waypoint_operator::controller::{self, Context};

#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Image of the waypoint dataplane that generated Deployments run.
    #[arg(
        long,
        env = "WAYPOINT_DATAPLANE_IMAGE",
        default_value = "waypoint.local/waypoint-dataplane:dev"
    )]
    dataplane_image: String,
    #[arg(long, env = "WAYPOINT_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    controller::ensure_class(&client)
        .await
        .context("ensuring the istio-waypoint GatewayClass")?;
    let ctx = Arc::new(Context {
        client,
        dataplane_image: args.dataplane_image,
        cluster_domain: args.cluster_domain,
    });
    tracing::info!(image = %ctx.dataplane_image, "reconciling waypoint Gateways");
    controller::run(ctx).await;
    Ok(())
}
