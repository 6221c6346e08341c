//! waypoint-webhook. Only the command-line entry point exists so far: the component
//! itself is issue #4, and until it lands the binary says so and exits non-zero.

use clap::Parser;

#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let _args = Args::parse();
    anyhow::bail!("waypoint-webhook is not implemented yet (issue #4)")
}
