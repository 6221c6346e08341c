//! waypoint-operator: reconciles waypoint Gateways on the cluster it runs in. Only the
//! replica holding the Lease reconciles; the others wait, ready to take over. Every
//! replica serves the mesh CA.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use axum::response::IntoResponse as _;
use axum::routing::get;
use clap::Parser;
use waypoint_operator::builders::Dataplane;
use waypoint_operator::ca::{self, server::CaServer};
use waypoint_operator::config_server;
use waypoint_operator::controller::{self, Caches, Context};
use waypoint_operator::leader::{self, LeaseConfig};
use waypoint_operator::metrics::Metrics;

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
    /// `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, default_value = "0.0.0.0:9090")]
    admin_address: SocketAddr,
    /// This replica's name in the Lease (the pod name in a cluster).
    #[arg(long, env = "POD_NAME", default_value = "waypoint-operator-local")]
    identity: String,
    /// The operator's namespace: the Lease, the CA Secret and the CA Service.
    #[arg(long, env = "POD_NAMESPACE", default_value = "waypoint-system")]
    lease_namespace: String,
    #[arg(long, default_value = "waypoint-operator")]
    lease_name: String,
    #[arg(long, default_value = "15", value_name = "SECONDS")]
    lease_seconds: u64,
    /// The SPIFFE trust domain the mesh CA signs for.
    #[arg(long, env = "WAYPOINT_TRUST_DOMAIN", default_value = waypoint_identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// The mesh CA's HTTPS listener (every replica).
    #[arg(long, default_value = "0.0.0.0:15012")]
    ca_address: SocketAddr,
    /// The longest workload certificate the CA signs, e.g. `24h`, `90m`.
    #[arg(long, default_value = "24h", value_parser = ca::parse_duration)]
    workload_cert_ttl: Duration,
}

/// The CA's own serving certificate; a replica lives far shorter than this.
const CA_SERVING_TTL: Duration = Duration::from_hours(365 * 24);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let metrics = Arc::new(Metrics::default());
    let (configs, reported) = config_server::Store::new();
    let configs = Arc::new(configs);
    // Filled once this replica leads; `/debug/bindings` reads it.
    let leader_caches: Arc<OnceLock<Caches>> = Arc::default();
    let listener = tokio::net::TcpListener::bind(args.admin_address)
        .await
        .with_context(|| format!("binding {}", args.admin_address))?;
    tokio::spawn(serve_admin(
        listener,
        metrics.clone(),
        Arc::clone(&configs),
        Arc::clone(&leader_caches),
    ));

    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let namespace = args.lease_namespace.clone();
    let roots_pem = serve_mesh_endpoint(&args, &client, &metrics, &configs).await?;
    let lease = LeaseConfig {
        namespace: args.lease_namespace,
        name: args.lease_name,
        identity: args.identity,
        duration: Duration::from_secs(args.lease_seconds.max(3)),
        renew_every: Duration::from_secs(args.lease_seconds.max(3) / 3),
        retry_every: Duration::from_secs(1),
    };
    // A restarted container keeps its pod, and the pod its label from the last run.
    leader::label_pod(&client, &namespace, &lease.identity, false).await;
    tokio::select! {
        () = leader::acquire(&client, &lease) => {}
        () = terminated() => return Ok(()),
    }
    configs.start_leading();
    metrics.leader.store(true, Ordering::Relaxed);
    leader::label_pod(&client, &namespace, &lease.identity, true).await;
    controller::ensure_class(&client, &metrics)
        .await
        .context("ensuring the istio-waypoint GatewayClass")?;
    tokio::spawn(ca::roots::publish(
        client.clone(),
        roots_pem,
        metrics.clone(),
    ));
    let (caches, fill, triggers) = Caches::start(&client);
    tokio::spawn(fill);
    let _ = leader_caches.set(caches.clone());
    let ctx = Arc::new(Context {
        client: client.clone(),
        dataplane: Dataplane {
            image: args.dataplane_image,
            ca_address: ca::service_url(&namespace),
            config_url: ca::config_url(&namespace),
            trust_domain: args.trust_domain,
        },
        cluster_domain: args.cluster_domain,
        metrics: metrics.clone(),
        caches,
        configs,
        served: controller::Served::default(),
        applied: controller::Applied::default(),
        parameters: controller::Parameters::default(),
        ingress_backends: controller::IngressBackends::default(),
        recorder: kube::runtime::events::Recorder::new(
            client.clone(),
            kube::runtime::events::Reporter {
                controller: "waypoint-operator".to_owned(),
                instance: Some(lease.identity.clone()),
            },
        ),
    });
    tracing::info!(image = %ctx.dataplane.image, "reconciling waypoint Gateways");
    tokio::select! {
        // The controllers stop on SIGTERM/SIGINT (shutdown_on_signal).
        () = controller::run(ctx, triggers, reported) => {
            metrics.leader.store(false, Ordering::Relaxed);
            leader::label_pod(&client, &namespace, &lease.identity, false).await;
            leader::release(&client, &lease).await;
            Ok(())
        }
        () = leader::hold(&client, &lease) => {
            anyhow::bail!("lost the leader lease; exiting so that only the new leader writes")
        }
    }
}

/// Loads (or creates) the mesh root and serves the CA and the config server on
/// `--ca-address`; returns the trust roots as one PEM for publishing.
async fn serve_mesh_endpoint(
    args: &Args,
    client: &kube::Client,
    metrics: &Arc<Metrics>,
    configs: &Arc<config_server::Store>,
) -> anyhow::Result<String> {
    let namespace = &args.lease_namespace;
    let loaded = ca::secret::load_or_create(client, namespace, &args.trust_domain)
        .await
        .context("loading the mesh root")?;
    let roots_pem = loaded.trust_roots.concat();
    let dns_names = ca::service_dns_names(namespace, &args.cluster_domain);
    let tls = ca::server::tls_config(&loaded.ca, &dns_names, CA_SERVING_TTL, &loaded.trust_roots)
        .context("the CA's serving certificate")?;
    let ca_listener = tokio::net::TcpListener::bind(args.ca_address)
        .await
        .with_context(|| format!("binding {}", args.ca_address))?;
    tracing::info!(address = %args.ca_address, names = ?dns_names, roots = loaded.trust_roots.len(), "serving the mesh CA");
    tokio::spawn(ca::server::serve(
        ca_listener,
        Arc::new(tls),
        Arc::new(CaServer {
            ca: loaded.ca,
            trust_roots: loaded.trust_roots,
            authenticator: Arc::new(ca::server::TokenReviewer {
                client: client.clone(),
            }),
            max_ttl: args.workload_cert_ttl,
            metrics: Arc::clone(metrics),
        }),
        Arc::clone(configs),
    ));
    Ok(roots_pem)
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

/// Liveness and readiness say the process serves; a standby replica is ready too
/// (it is what a failover needs). `waypoint_operator_leader` says who leads.
async fn serve_admin(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    configs: Arc<config_server::Store>,
    caches: Arc<OnceLock<Caches>>,
) {
    let (debug_metrics, debug_configs) = (Arc::clone(&metrics), Arc::clone(&configs));
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(move || {
                let (metrics, configs) = (metrics.clone(), configs.clone());
                async move {
                    let mut out = metrics.render();
                    config_server::http::render_metrics(&configs, &mut out);
                    out
                }
            }),
        )
        .route(
            "/debug/bindings",
            get(move || {
                let caches = Arc::clone(&caches);
                async move {
                    match caches.get() {
                        Some(c) => axum::Json(serde_json::json!({ "bindings": c.binding_table() }))
                            .into_response(),
                        None => (
                            http::StatusCode::SERVICE_UNAVAILABLE,
                            "not the leader: the leader's caches hold the binding table\n",
                        )
                            .into_response(),
                    }
                }
            }),
        )
        .route(
            "/debug/config",
            get(move || {
                let (metrics, configs) = (debug_metrics.clone(), debug_configs.clone());
                async move {
                    axum::Json(config_server::http::debug_json(
                        &configs,
                        metrics.leader.load(Ordering::Relaxed),
                    ))
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "admin server stopped");
    }
}
