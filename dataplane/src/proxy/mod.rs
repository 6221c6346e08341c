//! The proxy at run time: listeners from the config model (plain HTTP, or HTTPS
//! terminated in `https`), each request routed by authority to a cluster, an endpoint picked by the cluster's balancer, Istio's retry
//! policy around the attempts, the outlier detector told about every attempt, and one
//! access-log line per request.

mod body;
mod cluster;
pub mod connect;
pub(crate) mod handler;
mod head_timeout;
pub mod https;
mod idle;
mod replay;
mod upgrade;
mod upstream;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use tokio::net::TcpListener;
use waypoint_config::Config;

pub use cluster::Cluster;
pub use handler::{Downstream, serve_connection};
pub use idle::put_away_above as put_away_idle_http1_above;

use crate::identity::{MeshSlot, MeshTls};
use crate::metrics::Metrics;
use crate::rng::Rng;

/// Everything a request needs, built once per config.
pub struct Runtime {
    pub config: Config,
    clusters: HashMap<String, Arc<Cluster>>,
    /// Per listener, per route: its HTTPRoute rules compiled.
    matchers: HashMap<String, Vec<crate::route_match::Matcher>>,
    /// Per `HTTPS` listener: its TLS config, certificates parsed.
    tls: HashMap<String, Arc<rustls::ServerConfig>>,
    /// Shared by every runtime of one process, so counters survive reloads.
    pub metrics: Arc<Metrics>,
    /// Likewise: the credentials HBONE endpoints are reached with.
    mesh: Arc<MeshSlot>,
}

impl Runtime {
    pub fn new(config: Config) -> Arc<Self> {
        Self::next(config, None, Arc::default(), Arc::default())
    }

    /// A runtime for `config` that keeps the state (outlier ejections, round-robin
    /// position) of every cluster whose config did not change, as Envoy keeps a
    /// cluster across updates that do not modify it.
    fn next(
        config: Config,
        previous: Option<&Self>,
        metrics: Arc<Metrics>,
        mesh: Arc<MeshSlot>,
    ) -> Arc<Self> {
        let epoch = Instant::now();
        let mut seed = Rng::from_entropy();
        let clusters = config
            .clusters
            .iter()
            .map(|c| {
                let before = previous.and_then(|p| p.clusters.get(&c.name));
                let old = previous.and_then(|p| p.config.cluster(&c.name));
                let kept = before.filter(|_| old == Some(c)).cloned();
                let carried = cluster::Previous {
                    cluster: before.map(AsRef::as_ref),
                    same_policy: old.is_some_and(|o| o.same_but_endpoints(c)),
                };
                let cluster = kept.unwrap_or_else(|| {
                    Arc::new(Cluster::new(
                        c,
                        carried,
                        epoch,
                        Rng::seeded(seed.next_u64()),
                        Arc::clone(&metrics),
                        Arc::clone(&mesh),
                    ))
                });
                (c.name.clone(), cluster)
            })
            .collect();
        let matchers = config
            .listeners
            .iter()
            .map(|l| {
                let per_route = l
                    .routes
                    .iter()
                    .map(|r| crate::route_match::Matcher::new(&r.rules, r.rule_order))
                    .collect();
                (l.name.clone(), per_route)
            })
            .collect();
        let tls = config
            .listeners
            .iter()
            .filter_map(|l| Some((l, l.tls.as_ref()?)))
            .filter_map(|(l, tls)| {
                // Unchanged certificates keep their parsed keys (and session tickets).
                let kept = previous
                    .filter(|p| p.listener_tls(&l.name) == Some(tls))
                    .and_then(|p| p.tls.get(&l.name).cloned());
                let built = kept.map_or_else(|| https::server_config(&l.name, tls), Ok);
                match built {
                    Ok(server) => Some((l.name.clone(), server)),
                    Err(e) => {
                        tracing::error!(listener = %l.name, error = %e, "no TLS config");
                        None
                    }
                }
            })
            .collect();
        Arc::new(Self {
            config,
            clusters,
            matchers,
            tls,
            metrics,
            mesh,
        })
    }

    fn listener_tls(&self, listener: &str) -> Option<&waypoint_config::ListenerTls> {
        let l = self.config.listeners.iter().find(|l| l.name == listener)?;
        l.tls.as_ref()
    }

    /// The TLS config of an `HTTPS` listener.
    pub fn server_tls(&self, listener: &str) -> Option<Arc<rustls::ServerConfig>> {
        self.tls.get(listener).cloned()
    }

    /// The listener's `requestHeadersTimeout` (the default for one no longer in the
    /// config).
    pub fn request_headers_timeout(&self, listener: &str) -> std::time::Duration {
        self.config
            .listeners
            .iter()
            .find(|l| l.name == listener)
            .map_or(waypoint_config::DEFAULT_REQUEST_HEADERS_TIMEOUT, |l| {
                l.request_headers_timeout
            })
    }

    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.get(name)
    }

    /// The compiled rules of route `index` of `listener`.
    pub fn matcher(&self, listener: &str, index: usize) -> Option<&crate::route_match::Matcher> {
        self.matchers.get(listener)?.get(index)
    }

    /// Runs every cluster's outlier-detection interval timer until the task is
    /// dropped. A reload replaces the tasks; the ticks stay where the cluster's
    /// detector has them due (one missed while the tasks were swapped runs at once).
    pub fn spawn_timers(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        self.clusters
            .values()
            .filter(|c| c.next_tick().is_some())
            .map(|cluster| {
                let cluster = Arc::clone(cluster);
                tokio::spawn(async move {
                    while let Some(due) = cluster.next_tick() {
                        tokio::time::sleep_until(due.into()).await;
                        cluster.tick();
                    }
                })
            })
            .collect()
    }
}

/// Where access-log lines go: stdout in the binary, a collector in tests.
pub type AccessLog = Box<dyn Fn(&str) + Send + Sync>;

/// The runtime in force, swapped whole on reload; requests take a snapshot.
pub struct Shared {
    current: RwLock<Arc<Runtime>>,
    pub(crate) access_log: AccessLog,
    pub(crate) log_format: crate::access_log::Format,
    timers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    in_flight: AtomicUsize,
    idle: tokio::sync::Notify,
    draining: AtomicBool,
}

/// Counts a request in flight for as long as it lives, even if its task is dropped.
pub(crate) struct InFlight(Arc<Shared>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Shared {
    /// Must be called inside a tokio runtime: it starts the interval timers.
    pub fn new(config: Config) -> Arc<Self> {
        Self::with_access_log(config, Box::new(crate::log_line))
    }

    /// [`Shared::new`] writing access-log lines to `access_log`.
    pub fn with_access_log(config: Config, access_log: AccessLog) -> Arc<Self> {
        Self::with_access_log_format(config, access_log, crate::access_log::Format::Text)
    }

    /// [`Shared::with_access_log`] in a chosen encoding.
    pub fn with_access_log_format(
        config: Config,
        access_log: AccessLog,
        log_format: crate::access_log::Format,
    ) -> Arc<Self> {
        let runtime = Runtime::new(config);
        let timers = runtime.spawn_timers();
        Arc::new(Self {
            current: RwLock::new(runtime),
            access_log,
            log_format,
            timers: Mutex::new(timers),
            in_flight: AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
            draining: AtomicBool::new(false),
        })
    }

    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(self))
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Graceful shutdown: from now on responses carry `connection: close`, and this
    /// waits until no request is in flight or `within` has passed. Returns how many
    /// requests were still in flight at the end (0 after a clean drain).
    pub async fn drain(&self, within: std::time::Duration) -> usize {
        self.draining.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let idle = self.idle.notified();
            if self.in_flight() == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.in_flight();
            }
        }
    }

    /// The mesh credentials for endpoints marked `hbone`, kept across reloads.
    /// Without them such an endpoint fails every connect, saying why.
    pub fn set_mesh(&self, tls: Arc<MeshTls>) {
        self.current().mesh.set(tls);
    }

    pub fn current(&self) -> Arc<Runtime> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Parses, validates and swaps in a new config. On error the config in force
    /// stays, and the error names the field. Listener addresses are bound once at
    /// start: a reload changes routes and clusters, not sockets.
    pub fn reload(&self, yaml: &str) -> Result<(), waypoint_config::Error> {
        let config = Config::from_yaml(yaml)?;
        let previous = self.current();
        if config == previous.config {
            return Ok(());
        }
        for l in &config.listeners {
            if previous
                .config
                .listeners
                .iter()
                .all(|p| p.name != l.name || p.address != l.address)
            {
                tracing::warn!(listener = %l.name, address = %l.address, "listener addresses change only on restart");
            }
            if previous
                .config
                .listeners
                .iter()
                .any(|p| p.name == l.name && p.protocol != l.protocol)
            {
                tracing::warn!(listener = %l.name, protocol = ?l.protocol, "listener protocols change only on restart");
            }
        }
        let next = Runtime::next(
            config,
            Some(&previous),
            Arc::clone(&previous.metrics),
            Arc::clone(&previous.mesh),
        );
        let timers = next.spawn_timers();
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = next;
        let old = std::mem::replace(
            &mut *self.timers.lock().unwrap_or_else(PoisonError::into_inner),
            timers,
        );
        old.iter().for_each(tokio::task::JoinHandle::abort);
        Ok(())
    }
}

/// Binds every listener of the config; binding errors name the listener.
pub async fn bind(runtime: &Runtime) -> anyhow::Result<Vec<(TcpListener, String)>> {
    let mut out = Vec::new();
    for (i, l) in runtime.config.listeners.iter().enumerate() {
        let socket = TcpListener::bind(l.address).await.map_err(|e| {
            anyhow::anyhow!(
                "listeners[{i}] {:?}: cannot bind {}: {e}",
                l.name,
                l.address
            )
        })?;
        out.push((socket, l.name.clone()));
    }
    Ok(out)
}

/// Serves one bound listener, by name, with whatever config is in force.
pub async fn serve(shared: Arc<Shared>, socket: TcpListener, listener: String) {
    let listener: Arc<str> = listener.into();
    accept_loop(socket, |stream, peer| {
        tokio::spawn(handler::serve_tcp(
            Arc::clone(&shared),
            Arc::clone(&listener),
            stream,
            peer,
        ));
    })
    .await;
}

/// Accepts forever, handing each connection to `spawn`; a failed accept (out of file
/// descriptors, say) is logged and the next one tried.
pub(crate) async fn accept_loop(
    socket: TcpListener,
    mut spawn: impl FnMut(tokio::net::TcpStream, std::net::SocketAddr),
) {
    loop {
        match socket.accept().await {
            Ok((stream, peer)) => spawn(stream, peer),
            Err(e) => tracing::warn!(error = %e, "accept failed"),
        }
    }
}
