//! `GET /v1/config` on the mesh port: who asks is the SPIFFE identity of the client
//! certificate, and its ServiceAccount names the Gateway (the operator creates the
//! ServiceAccount after the Gateway), so a replica only ever gets its own Gateway's
//! config. Also the debug view and the metrics of the store.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use waypoint_config::delivery::{POLL_WAIT_SECONDS, Poll, VERSION_HEADER};
use waypoint_identity::Identity;

use super::{Answer, Key, Store, decide_applied};
use crate::ca::server::text;

/// Answers one poll. `peer` is the client certificate's identity, if it sent one
/// that chains to the mesh roots.
pub async fn handle<B>(
    store: &Store,
    leader: &AtomicBool,
    trust_domain: &str,
    peer: Option<&Identity>,
    req: &Request<B>,
) -> Response<Full<Bytes>> {
    handle_with_wait(
        store,
        leader,
        trust_domain,
        peer,
        req,
        Duration::from_secs(POLL_WAIT_SECONDS),
    )
    .await
}

/// [`handle`] with the poll wait as a parameter (tests use a short one).
pub async fn handle_with_wait<B>(
    store: &Store,
    leader: &AtomicBool,
    trust_domain: &str,
    peer: Option<&Identity>,
    req: &Request<B>,
    wait: Duration,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        let mut resp = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "the config endpoint takes GET\n".to_owned(),
        );
        resp.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        return resp;
    }
    if !leader.load(Ordering::Relaxed) {
        let mut resp = text(
            StatusCode::SERVICE_UNAVAILABLE,
            "this operator replica is not the leader; the waypoint-config Service selects the leader, retry\n"
                .to_owned(),
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return resp;
    }
    let Some(peer) = peer else {
        return text(
            StatusCode::UNAUTHORIZED,
            "present the waypoint's mesh certificate (mutual TLS) to get its config\n".to_owned(),
        );
    };
    if peer.trust_domain != trust_domain {
        return text(
            StatusCode::FORBIDDEN,
            format!(
                "{peer} is not in this mesh's trust domain {trust_domain:?}; no config is served to it\n"
            ),
        );
    }
    let key: Key = (peer.namespace.clone(), peer.service_account.clone());
    let poll = Poll::parse(req.uri().query());
    store.report(&key, &poll, Instant::now());
    let deadline = tokio::time::Instant::now() + wait;
    let mut changed = store.subscribe();
    loop {
        changed.borrow_and_update();
        if let Answer::Send { version, yaml } = store.answer(&key, &poll) {
            tracing::debug!(namespace = %key.0, gateway = %key.1, pod = ?poll.pod, %version, "sending config");
            let mut resp = Response::new(Full::new(Bytes::copy_from_slice(yaml.as_bytes())));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/yaml"),
            );
            if let Ok(v) = header::HeaderValue::from_str(&version) {
                resp.headers_mut().insert(VERSION_HEADER, v);
            }
            return resp;
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { break },
            () = tokio::time::sleep_until(deadline) => break,
        }
    }
    if store.snapshot().contains_key(&key) {
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        resp
    } else {
        text(
            StatusCode::NOT_FOUND,
            format!(
                "no waypoint Gateway {}/{} has a config here (yet); poll again\n",
                key.0, key.1
            ),
        )
    }
}

/// `/debug/config`: per waypoint, the current version, its age, each replica's
/// version and how long it has run it, and the compiled config. The config model
/// carries no secrets (certificates come from the CA), so nothing is redacted.
pub fn debug_json(store: &Store, leader: bool) -> serde_json::Value {
    let now = Instant::now();
    let waypoints: Vec<_> = store
        .snapshot()
        .into_iter()
        .map(|((ns, gw), e)| {
            let applied = decide_applied(&e, now, false);
            // Private keys never leave through a debug endpoint.
            let config = serde_yaml::from_str::<waypoint_config::Config>(&e.yaml)
                .ok()
                .and_then(|c| serde_json::to_value(c.redacted()).ok())
                .unwrap_or(serde_json::Value::Null);
            serde_json::json!({
                "namespace": ns,
                "gateway": gw,
                "version": e.version,
                "ageSeconds": now.saturating_duration_since(e.published).as_secs_f64(),
                "applied": format!("{applied:?}"),
                "replicas": e.replicas.iter().map(|(pod, r)| serde_json::json!({
                    "pod": pod,
                    "version": r.version,
                    "rejected": r.rejected,
                    "current": r.version.as_deref() == Some(e.version.as_str()),
                    "versionAgeSeconds": now.saturating_duration_since(r.since).as_secs_f64(),
                    "lastPollSecondsAgo": now.saturating_duration_since(r.seen).as_secs_f64(),
                })).collect::<Vec<_>>(),
                "config": config,
            })
        })
        .collect();
    serde_json::json!({ "leader": leader, "waypoints": waypoints })
}

/// Per waypoint, the current version (as a label of an info gauge) and per replica
/// the age of the version it runs and whether that is the current one.
pub fn render_metrics(store: &Store, out: &mut String) {
    let now = Instant::now();
    let snapshot = store.snapshot();
    out.push_str("# HELP waypoint_operator_config_version_info The config version each waypoint should run.\n# TYPE waypoint_operator_config_version_info gauge\n");
    for ((ns, gw), e) in &snapshot {
        let _ = writeln!(
            out,
            "waypoint_operator_config_version_info{{namespace=\"{ns}\",gateway=\"{gw}\",version=\"{}\"}} 1",
            e.version
        );
    }
    out.push_str("# HELP waypoint_operator_config_replica_version_age_seconds How long each replica has run the version it reports.\n# TYPE waypoint_operator_config_replica_version_age_seconds gauge\n");
    for ((ns, gw), e) in &snapshot {
        for (pod, r) in &e.replicas {
            let _ = writeln!(
                out,
                "waypoint_operator_config_replica_version_age_seconds{{namespace=\"{ns}\",gateway=\"{gw}\",pod=\"{pod}\",current=\"{}\"}} {:.3}",
                r.version.as_deref() == Some(e.version.as_str()),
                now.saturating_duration_since(r.since).as_secs_f64()
            );
        }
    }
}
