//! The proxy at run time: listeners from the config model, each request routed by
//! authority to a cluster, an endpoint picked by the cluster's balancer, Istio's retry
//! policy around the attempts, the outlier detector told about every attempt, and one
//! access-log line per request.

mod cluster;
mod handler;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use waypoint_config::Config;

pub use cluster::Cluster;

use crate::rng::Rng;

/// Everything a request needs, built once per config.
pub struct Runtime {
    pub config: Config,
    clusters: HashMap<String, Arc<Cluster>>,
    client: handler::Client,
}

impl Runtime {
    pub fn new(config: Config) -> Arc<Self> {
        let epoch = Instant::now();
        let mut seed = Rng::from_entropy();
        let clusters = config
            .clusters
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    Arc::new(Cluster::new(c, epoch, Rng::seeded(seed.next_u64()))),
                )
            })
            .collect();
        Arc::new(Self {
            config,
            clusters,
            client: handler::client(),
        })
    }

    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.get(name)
    }

    /// Runs every cluster's outlier-detection interval timer until the task is dropped.
    pub fn spawn_timers(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        self.clusters
            .values()
            .filter_map(|c| c.interval().map(|i| (Arc::clone(c), i)))
            .map(|(cluster, interval)| {
                tokio::spawn(async move {
                    let mut timer =
                        tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
                    loop {
                        timer.tick().await;
                        cluster.tick();
                    }
                })
            })
            .collect()
    }
}

/// Binds every listener of the config; binding errors name the listener.
pub async fn bind(runtime: &Arc<Runtime>) -> anyhow::Result<Vec<(TcpListener, usize)>> {
    let mut out = Vec::new();
    for (i, l) in runtime.config.listeners.iter().enumerate() {
        let socket = TcpListener::bind(l.address).await.map_err(|e| {
            anyhow::anyhow!(
                "listeners[{i}] {:?}: cannot bind {}: {e}",
                l.name,
                l.address
            )
        })?;
        out.push((socket, i));
    }
    Ok(out)
}

/// Serves one bound listener until the task is dropped.
pub async fn serve(runtime: Arc<Runtime>, socket: TcpListener, listener: usize) {
    loop {
        let (stream, peer) = match socket.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let runtime = Arc::clone(&runtime);
        tokio::spawn(handler::serve_connection(runtime, listener, stream, peer));
    }
}
