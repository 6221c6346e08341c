//! waypoint-operator. Only the command-line entry point exists so far: the component
//! itself is issue #5, and until it lands the binary says so and exits non-zero.

use clap::Parser;

#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let _args = Args::parse();
    anyhow::bail!("waypoint-operator is not implemented yet (issue #5)")
}
