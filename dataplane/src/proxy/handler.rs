//! One downstream connection and its requests.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use waypoint_config::{Fault, Filter, PathMatch, RetryConfig, Route, RouteRule};

use super::body::{self, Body, End, Expiry, Relayed};
use super::head_timeout;
use super::idle;
use super::replay::Replay;
use super::upgrade::{self, TunnelEnd, Upgraded};
use super::upstream::{ConnectFailure, Lease, NoResponse};
use super::{Cluster, InFlight, Runtime, Shared};
use crate::access_log::{Entry, Flags};
use crate::filters::{self, Target};
use crate::hash_policy::RequestParts;
use crate::outlier::Outcome;
use crate::retry::{Attempt, RetryOn, RetryPolicy};
use crate::rng::Rng;
use crate::text;
use crate::{host_match, route_match};

/// Who is on the other end of a downstream connection, and where they meant to go.
#[derive(Clone, Debug)]
pub struct Downstream {
    pub listener: Arc<str>,
    pub peer: SocketAddr,
    pub local: Option<SocketAddr>,
    /// Inside an HBONE tunnel: the CONNECT authority (the original destination),
    /// which routes every request instead of its `Host`.
    pub destination: Option<Arc<str>>,
    /// Inside an HBONE tunnel: the client's SPIFFE ID from its certificate.
    pub source_principal: Option<Arc<str>>,
    /// `https` on an `HTTPS` listener: what a redirect keeps when it sets no scheme.
    pub scheme: &'static str,
    /// On an `HTTPS` listener: the server name (SNI) the client asked for, logged
    /// as Envoy's `%REQUESTED_SERVER_NAME%`.
    pub server_name: Option<Arc<str>>,
    /// On a plain or `HTTPS` listener: told where the connection is between its
    /// requests, for the request-headers timeout.
    pub head_clock: Option<Arc<head_timeout::Clock>>,
}

/// Serves HTTP/1.1 or HTTP/2 (sniffed from the first bytes) on one connection: a TCP
/// stream of a plain listener, or a tunnelled CONNECT stream of an HBONE listener.
pub async fn serve_connection<I>(shared: Arc<Shared>, io: I, downstream: Downstream)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let peer = downstream.peer;
    let service = service(shared, downstream);
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder.serve_connection_with_upgrades(io, service).await {
        tracing::debug!(error = %e, %peer, "downstream connection ended with an error");
    }
}

/// The requests of one downstream connection.
fn service(
    shared: Arc<Shared>,
    downstream: Downstream,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
+ Unpin
+ Send
+ 'static {
    let downstream = Arc::new(downstream);
    hyper::service::service_fn(move |req| {
        let runtime = shared.current();
        let downstream = Arc::clone(&downstream);
        let shared = Arc::clone(&shared);
        let in_flight = shared.begin();
        // Boxed: hyper keeps room for the service's future in every connection for
        // its whole life, so an unboxed one made each idle keep-alive connection
        // carry a request's worth of future. Boxed, that memory is held only while
        // a request is served.
        Box::pin(async move {
            let mut resp = handle(runtime, &downstream, req, &shared, in_flight).await;
            if shared.is_draining() {
                // Tell keep-alive clients to reconnect elsewhere while we drain.
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(resp)
        })
    })
}

/// [`serve_connection`] for an accepted TCP connection of a plain listener. HTTP/1.1
/// goes to [`idle::serve_http1`], which frees the connection's HTTP state between
/// requests; a connection that may be HTTP/2 takes the general path.
pub async fn serve_tcp(
    shared: Arc<Shared>,
    listener: Arc<str>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let local = stream.local_addr().ok();
    // As Envoy does on every connection: small responses must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let mut downstream = Downstream {
        listener,
        peer,
        local,
        destination: None,
        source_principal: None,
        scheme: "http",
        server_name: None,
        head_clock: None,
    };
    let stream = timed_heads(&shared, stream, &mut downstream);
    match idle::sniff(stream.get_ref()).await {
        idle::Sniffed::Http1 => {
            let clock = downstream.head_clock.clone().unwrap_or_default();
            idle::serve_http1(stream, clock, service(shared, downstream)).await;
        }
        idle::Sniffed::Unsure => {
            // Boxed, as the task's own memory is what an idle HTTP/1 connection costs.
            Box::pin(serve_connection(shared, TokioIo::new(stream), downstream)).await;
        }
        idle::Sniffed::Closed => {}
    }
}

/// Times the request heads of an HTTP/1.1 connection (Envoy's
/// `request_headers_timeout`) and logs one that runs out as Envoy logs it.
pub(super) fn timed_heads<S>(
    shared: &Arc<Shared>,
    io: S,
    downstream: &mut Downstream,
) -> head_timeout::Timed<S> {
    let timeout = shared
        .current()
        .request_headers_timeout(&downstream.listener);
    let clock = Arc::new(head_timeout::Clock::default());
    downstream.head_clock = Some(Arc::clone(&clock));
    let shared = Arc::clone(shared);
    let d = downstream.clone();
    head_timeout::Timed::new(io, clock, timeout, move || {
        tracing::debug!(peer = %d.peer, listener = %d.listener, "no request headers in time: 408");
        let entry = Entry {
            start_time: SystemTime::now().checked_sub(timeout),
            method: "-".to_owned(),
            path: "-".to_owned(),
            protocol: "HTTP/1.1",
            response_code: 408,
            response_code_details: "request_header_timeout".into(),
            bytes_sent: head_timeout::TIMED_OUT_BODY_BYTES,
            duration_ms: timeout.as_millis(),
            downstream_local_address: d.local.map(|a| a.to_string()),
            downstream_remote_address: Some(d.peer.to_string()),
            requested_server_name: d.server_name.as_deref().map(str::to_owned),
            ..Entry::default()
        };
        (shared.access_log)(&entry.render(shared.log_format));
    })
}

fn policy(r: &RetryConfig) -> RetryPolicy {
    let retry_on = r
        .retry_on
        .iter()
        .filter_map(|s| match s.as_str() {
            "5xx" => Some(RetryOn::FiveXx),
            "gateway-error" => Some(RetryOn::GatewayError),
            "reset" => Some(RetryOn::Reset),
            "connect-failure" => Some(RetryOn::ConnectFailure),
            "retriable-4xx" => Some(RetryOn::Retriable4xx),
            "refused-stream" => Some(RetryOn::RefusedStream),
            "cancelled" => Some(RetryOn::Cancelled),
            "deadline-exceeded" => Some(RetryOn::DeadlineExceeded),
            "internal" => Some(RetryOn::Internal),
            "resource-exhausted" => Some(RetryOn::ResourceExhausted),
            "unavailable" => Some(RetryOn::Unavailable),
            _ => None,
        })
        .collect();
    RetryPolicy {
        num_retries: r.attempts,
        retry_on,
        retriable_status_codes: r.retriable_status_codes.clone(),
        avoid_previous_hosts: r.avoid_previous_hosts,
        ..RetryPolicy::istio_default()
    }
}

fn header_str(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn authority<B>(req: &Request<B>) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| header_str(req.headers(), &header::HOST))
}

fn protocol(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// A reply the proxy makes itself (no upstream response to pass on).
fn local_reply(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(body::full(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

/// Headers that describe one hop and are not forwarded (RFC 9110 §7.6.1), except
/// `te: trailers`, which gRPC needs end to end and HTTP/2 allows.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    const HOP_BY_HOP: [HeaderName; 7] = [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TRANSFER_ENCODING,
        header::TE,
        header::UPGRADE,
        header::TRAILER,
    ];
    // One pass over the few headers a request has, instead of seven lookups.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let trailers = headers.get(header::TE) == Some(&HeaderValue::from_static("trailers"));
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

fn request_id() -> String {
    let mut rng = Rng::from_entropy();
    let (a, b) = (rng.next_u64(), rng.next_u64());
    // UUIDv4 layout: version nibble 4, variant bits 10.
    let mut id = String::with_capacity(36);
    text::push_hex(&mut id, a >> 32, 8);
    id.push('-');
    text::push_hex(&mut id, a >> 16, 4);
    id.push_str("-4");
    text::push_hex(&mut id, a, 3);
    id.push('-');
    text::push_hex(&mut id, 0x8000 | ((b >> 48) & 0x3fff), 4);
    id.push('-');
    text::push_hex(&mut id, b, 12);
    id
}

/// One request: routed, forwarded, and logged when its response stream ends, as
/// Envoy logs it. `in_flight` holds off a graceful drain until then.
async fn handle(
    runtime: Arc<Runtime>,
    downstream: &Downstream,
    req: Request<Incoming>,
    shared: &Arc<Shared>,
    in_flight: InFlight,
) -> Response<Body> {
    let start_time = SystemTime::now();
    let started = Instant::now();
    let head_clock = downstream.head_clock.clone();
    if let Some(clock) = &head_clock {
        clock.serving();
    }
    let req = req.map(Replay::new);
    let request_body = req.body().clone();
    let (peer, local) = (downstream.peer, downstream.local);
    let routes = runtime
        .config
        .listeners
        .iter()
        .find(|l| *l.name == *downstream.listener)
        .map_or(&[][..], |l| &l.routes[..]);
    let authority = authority(&req);
    let destination = downstream
        .destination
        .as_deref()
        .map(str::to_owned)
        .or_else(|| authority.clone());
    let mut entry = Entry {
        start_time: Some(start_time),
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        protocol: protocol(req.version()),
        user_agent: header_str(req.headers(), &header::USER_AGENT),
        x_forwarded_for: header_str(req.headers(), &HeaderName::from_static("x-forwarded-for")),
        authority: authority.clone(),
        downstream_local_address: local.as_ref().map(text::socket_addr),
        downstream_remote_address: Some(text::socket_addr(&peer)),
        requested_server_name: downstream.server_name.as_deref().map(str::to_owned),
        ..Entry::default()
    };
    let (resp, flags, details) = forward(
        &runtime,
        (downstream, routes),
        destination.as_deref(),
        req,
        &mut entry,
    )
    .await;
    entry.response_code = resp.status().as_u16();
    entry.response_flags = flags;
    entry.response_code_details = details;
    let mut resp = resp;
    let tunnel = resp.extensions_mut().remove::<TunnelEnd>();
    let shared = Arc::clone(shared);
    let source_principal = downstream.source_principal.clone();
    resp.map(move |body| {
        body::Logged::new(body, move |end, sent| {
            let _in_flight = in_flight;
            ended(&mut entry, end);
            entry.bytes_sent = sent;
            entry.bytes_received = request_body.received();
            let log = move |mut entry: Entry| {
                entry.duration_ms = started.elapsed().as_millis();
                (shared.access_log)(&entry.render(shared.log_format));
                record_metrics(&runtime, &entry, source_principal.as_deref());
            };
            match tunnel {
                None => {
                    between_requests(head_clock, &request_body);
                    log(entry);
                }
                // An upgraded connection is logged when its tunnel closes, with the
                // bytes it carried.
                Some(end) => {
                    tokio::spawn(async move {
                        let closed = end.closed().await;
                        entry.bytes_received += closed.from_downstream;
                        entry.bytes_sent += closed.from_upstream;
                        let (flag, details) = if closed.downstream_first {
                            (Flags::DC, "downstream_remote_disconnect")
                        } else {
                            (
                                Flags::UC,
                                "upstream_reset_after_response_started{connection_termination}",
                            )
                        };
                        entry.response_flags = entry.response_flags.with(flag);
                        entry.response_code_details = details.into();
                        log(entry);
                    });
                }
            }
        })
        .boxed_unsync()
    })
}

/// Envoy's flags for a response stream cut after its headers went down: an upstream
/// that closed, or the route timeout, mid-response; or a client that went away.
fn ended(entry: &mut Entry, end: End) {
    match end {
        End::Complete => {}
        End::Failed { timeout: true } => {
            entry.response_flags = entry.response_flags.with(Flags::UT);
            entry.response_code_details = "response_timeout".into();
        }
        End::Failed { timeout: false } => {
            entry.response_flags = entry.response_flags.with(Flags::UC);
            entry.response_code_details =
                "upstream_reset_after_response_started{connection_termination}".into();
        }
        End::DownstreamGone => {
            entry.response_flags = entry.response_flags.with(Flags::DC);
        }
    }
}

/// Tells the connection's head clock that this exchange is over once the request
/// body has ended too: until then, bytes read are the body's, not a new head's. (An
/// upgraded connection never is: what it carries are not heads.)
fn between_requests(clock: Option<Arc<head_timeout::Clock>>, body: &Replay) {
    let Some(clock) = clock else {
        return;
    };
    if body.has_ended() {
        clock.between_requests();
    } else {
        let body = body.clone();
        tokio::spawn(async move {
            body.ended().await;
            clock.between_requests();
        });
    }
}

/// Istio's request metrics for one request, labelled from what the access log knows.
fn record_metrics(runtime: &Runtime, entry: &Entry, source_principal: Option<&str>) {
    let cluster = entry.upstream_cluster.as_deref();
    let workload = cluster
        .and_then(|c| runtime.cluster(c))
        .zip(entry.upstream_host.as_deref())
        .and_then(|(c, host)| {
            let host = host.parse::<SocketAddr>().ok()?;
            c.endpoints.iter().find(|e| e.address == host)
        })
        .and_then(|e| e.workload.as_deref())
        .map_or("unknown", crate::metrics::workload_of);
    let labels = crate::metrics::RequestLabels {
        // Waypoint cluster names end with the service FQDN: inbound-vip|<port>|http|<fqdn>.
        destination_service: cluster
            .and_then(|c| c.rsplit('|').next())
            .unwrap_or("unknown")
            .to_owned(),
        destination_workload: workload.to_owned(),
        response_code: entry.response_code,
        response_flags: entry.response_flags.to_string(),
        source_principal: source_principal.map(str::to_owned),
    };
    runtime.metrics.record(
        labels,
        entry.duration_ms,
        entry.bytes_received,
        entry.bytes_sent,
    );
}

type Verdict = (Response<Body>, Flags, Cow<'static, str>);

async fn forward(
    runtime: &Runtime,
    (downstream, routes): (&Downstream, &[Route]),
    authority: Option<&str>,
    req: Request<Replay>,
    entry: &mut Entry,
) -> Verdict {
    let (peer, local) = (downstream.peer, downstream.local);
    if let Some(verdict) = misdirected(runtime, downstream, authority) {
        return verdict;
    }
    let Some(index) = host_match::select_route(routes, authority) else {
        return (
            local_reply(StatusCode::NOT_FOUND, ""),
            Flags::NR,
            "route_not_found".into(),
        );
    };
    let route = &routes[index];
    entry.route_name = Some("default".to_owned());
    let Chosen {
        rule,
        cluster: cluster_name,
        backend_filters,
        matched_prefix,
    } = match choose_rule(runtime, downstream, index, route, &req) {
        Ok(chosen) => chosen,
        Err(verdict) => return *verdict,
    };
    entry.upstream_cluster = Some(cluster_name.to_owned());
    let fault = rule.and_then(|r| r.fault.as_ref()).or(route.fault.as_ref());
    let fault_flags = match inject_fault(fault).await {
        Ok(flags) => flags,
        Err(verdict) => return *verdict,
    };
    // As the router's: started once the fault filter lets the request through.
    let begun = tokio::time::Instant::now();
    let Some(cluster) = runtime.cluster(cluster_name) else {
        return (
            local_reply(StatusCode::SERVICE_UNAVAILABLE, ""),
            Flags::NC,
            "cluster_not_found".into(),
        );
    };
    let (mut parts, body) = req.into_parts();
    entry.request_id = Some(upstream_headers(
        &mut parts.headers,
        authority,
        downstream.scheme,
    ));
    let websocket = upgrade::is_websocket(&parts.headers);
    strip_hop_by_hop(&mut parts.headers);
    // The rule's filters, then the drawn backend's.
    let all_filters = || rule.iter().flat_map(|r| &r.filters).chain(backend_filters);
    let mirrors = request_filters(
        runtime,
        &all_filters().collect::<Vec<_>>(),
        &mut parts,
        matched_prefix,
    );
    // A matched HTTPRoute rule's retry and timeout replace the route's.
    let mut policy = policy(rule.and_then(|r| r.retry.as_ref()).unwrap_or(&route.retry));
    policy.per_try_timeout = rule.and_then(|r| r.backend_timeout);
    let timeout = rule.and_then(|r| r.timeout).or(route.timeout);
    // As Envoy's router: the body is kept only while a retry or a mirror may send it.
    if !body.is_empty() {
        let metrics = Arc::clone(&runtime.metrics);
        let abandoned_in = cluster_name.to_owned();
        body.keep_for_resending(policy.num_retries > 0 || !mirrors.is_empty(), move || {
            metrics.retry_or_shadow_abandoned(&abandoned_in);
        });
    }
    for mirror in mirrors {
        shadow(mirror, &parts, body.clone());
    }
    // Hashed once per request: Envoy hashes at every pick, but from inputs that do not
    // change between attempts.
    let hashed = cluster.hash(&RequestParts {
        headers: &parts.headers,
        path_and_query: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        remote: Some(peer),
        local,
    });
    if websocket {
        // Boxed: inline, the upgrade's connect and handshake futures made every
        // request's future 8 KiB larger.
        let (resp, flags, details) =
            Box::pin(upgraded(cluster, &policy, parts, hashed.hash, entry)).await;
        return (resp, fault_flags.with(flags), details);
    }
    let request = Attempted {
        parts: &parts,
        body: &body,
        hash: hashed.hash,
        timeout: timeout.map(|t| (t, begun)),
    };
    let attempts = attempts(cluster, &policy, &request, entry);
    let mut verdict = match request.expiry() {
        None => attempts.await,
        Some(expiry) => tokio::select! {
            verdict = attempts => verdict,
            () = expiry => (
                local_reply(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
                Flags::UT,
                "response_timeout".into(),
            ),
        },
    };
    verdict.1 = fault_flags.with(verdict.1);
    response_headers(verdict.0.headers_mut(), hashed.set_cookie, all_filters());
    verdict
}

/// Envoy's fault filter, which runs before the router: the delay (flag `DI`), then
/// the abort (`FI`), a local reply with Envoy's body. `Ok`: the flags to add to the
/// request's.
async fn inject_fault(fault: Option<&Fault>) -> Result<Flags, Box<Verdict>> {
    let Some(fault) = fault else {
        return Ok(Flags::NONE);
    };
    let mut rng = Rng::from_entropy();
    let injected = crate::fault::decide(fault, || rng.next_u64());
    let mut flags = Flags::NONE;
    if let Some(delay) = injected.delay {
        tokio::time::sleep(delay).await;
        flags = Flags::DI;
    }
    match injected.abort.and_then(|s| StatusCode::from_u16(s).ok()) {
        Some(status) => Err(Box::new((
            local_reply(status, "fault filter abort"),
            flags.with(Flags::FI),
            "fault_filter_abort".into(),
        ))),
        None => Ok(flags),
    }
}

/// Envoy adds a generated hash cookie to whatever response goes back, local replies
/// included (the router's `modify_headers_`); then the response header filters.
fn response_headers<'a>(
    headers: &mut HeaderMap,
    set_cookie: Option<String>,
    filters: impl Iterator<Item = &'a Filter>,
) {
    if let Some(cookie) = set_cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        headers.append(header::SET_COOKIE, cookie);
    }
    for f in filters {
        if let Filter::ResponseHeaderModifier { modifier } = f {
            filters::modify_headers(modifier, headers);
        }
    }
}

/// 421 for a request on an HTTPS listener whose host belongs to another Gateway
/// listener than its TLS server name (a reused HTTP/2 connection, say).
fn misdirected(
    runtime: &Runtime,
    downstream: &Downstream,
    authority: Option<&str>,
) -> Option<Verdict> {
    let (server_name, authority) = (downstream.server_name.as_deref()?, authority?);
    let tls = runtime
        .config
        .listeners
        .iter()
        .find(|l| *l.name == *downstream.listener)?
        .tls
        .as_ref()?;
    let hostnames: Vec<Option<&str>> = tls
        .certificates
        .iter()
        .map(|c| c.hostname.as_deref())
        .collect();
    host_match::misdirected(&hostnames, server_name, authority).then(|| {
        (
            local_reply(StatusCode::MISDIRECTED_REQUEST, "Misdirected Request"),
            Flags::NONE,
            "misdirected_request".into(),
        )
    })
}

/// Where a request goes: the rule it matched (none: the route has no rules) and the
/// `PathPrefix` it matched by, the cluster, and the filters of the backend drawn.
struct Chosen<'a> {
    rule: Option<&'a RouteRule>,
    cluster: &'a str,
    backend_filters: &'a [Filter],
    matched_prefix: Option<&'a str>,
}

/// The HTTPRoute rule a request takes on `route` (`None`: the route has no rules)
/// and the cluster it goes to. A request no rule matches gets 404 and a redirect is
/// answered here. Gateway API's 500, answered directly as Envoy's
/// `direct_response` (no response flag, no upstream cluster): a rule whose backends
/// all weigh 0, a draw that falls on an invalid backend, and no backend at all (no
/// backends on the rule and no cluster on the route).
fn choose_rule<'a, B>(
    runtime: &Runtime,
    downstream: &Downstream,
    index: usize,
    route: &'a Route,
    req: &Request<B>,
) -> Result<Chosen<'a>, Box<Verdict>> {
    let (rule, matched_prefix) = if route.rules.is_empty() {
        if route.cluster.is_empty() {
            // A virtual host with nothing attached (an ingress listener's hostname
            // without routes): nothing matches.
            return Err(Box::new((
                local_reply(StatusCode::NOT_FOUND, ""),
                Flags::NR,
                "route_not_found".into(),
            )));
        }
        (None, None)
    } else {
        let (rule, prefix) = matching_rule(runtime, downstream, index, route, req)?;
        (Some(rule), prefix)
    };
    let backends = rule.map_or(&[][..], |r| &r.backends[..]);
    let exists = |c: &str| runtime.cluster(c).is_some();
    let draw = |total: u64| Rng::from_entropy().next_u64() % total;
    match filters::target(&route.cluster, backends, exists, draw) {
        Target::Cluster(cluster, backend_filters) => Ok(Chosen {
            rule,
            cluster,
            backend_filters,
            matched_prefix,
        }),
        Target::NoValidBackend => Err(Box::new((
            local_reply(StatusCode::INTERNAL_SERVER_ERROR, ""),
            Flags::NONE,
            "direct_response".into(),
        ))),
    }
}

/// The rule of `route` a request matches and the `PathPrefix` it matched by, or
/// the 404 or redirect it is answered.
fn matching_rule<'a, B>(
    runtime: &Runtime,
    downstream: &Downstream,
    index: usize,
    route: &'a Route,
    req: &Request<B>,
) -> Result<(&'a RouteRule, Option<&'a str>), Box<Verdict>> {
    let uri = req.uri();
    let selected = runtime.matcher(&downstream.listener, index).and_then(|m| {
        m.select(&route_match::Request {
            method: req.method().as_str(),
            path: uri.path(),
            query: uri.query(),
            headers: req.headers(),
        })
    });
    let Some(selected) = selected else {
        return Err(Box::new((
            local_reply(StatusCode::NOT_FOUND, ""),
            Flags::NR,
            "route_not_found".into(),
        )));
    };
    let rule = &route.rules[selected.rule];
    let matched_prefix = selected.matched.and_then(|j| match &rule.matches[j].path {
        Some(PathMatch::PathPrefix(p) | PathMatch::Prefix(p)) => Some(p.as_str()),
        _ => None,
    });
    for f in &rule.filters {
        if let Filter::RequestRedirect { redirect } = f {
            let host = authority(req).unwrap_or_default();
            let location = filters::redirect_location(
                redirect,
                &filters::Origin {
                    scheme: uri.scheme_str().unwrap_or(downstream.scheme),
                    authority: &host,
                    path: uri.path(),
                    query: uri.query(),
                    matched_prefix,
                },
            );
            let mut resp = local_reply(StatusCode::FOUND, "");
            *resp.status_mut() =
                StatusCode::from_u16(redirect.status_code).unwrap_or(StatusCode::FOUND);
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            return Err(Box::new((resp, Flags::NONE, "direct_response".into())));
        }
    }
    if let Some(d) = &rule.direct_response {
        let mut resp = local_reply(StatusCode::OK, "");
        *resp.body_mut() = body::full(Bytes::from(d.body.clone()));
        *resp.status_mut() = StatusCode::from_u16(d.status).unwrap_or(StatusCode::OK);
        return Err(Box::new((resp, Flags::NONE, "direct_response".into())));
    }
    Ok((rule, matched_prefix))
}

/// Envoy's router loop: pick, send, report to outlier detection, maybe retry. A
/// circuit-breaker overflow is neither reported nor retried; a retry beyond
/// `maxRetries` is not made and the attempt's own result goes back, flagged `UO`.
/// The headers Envoy adds on the way up: `x-request-id` (kept, or a new UUID, which
/// is returned), `x-forwarded-proto` when the client sent none, and `host` from the
/// authority of an HTTP/2 request.
fn upstream_headers(
    headers: &mut HeaderMap,
    authority: Option<&str>,
    scheme: &'static str,
) -> String {
    const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
    let rid = header_str(headers, &X_REQUEST_ID).unwrap_or_else(request_id);
    if let Ok(v) = HeaderValue::from_str(&rid) {
        headers.insert(X_REQUEST_ID, v);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
    }
    if headers.get(header::HOST).is_none()
        && let Some(a) = authority.and_then(|a| HeaderValue::from_str(a).ok())
    {
        headers.insert(header::HOST, a);
    }
    rid
}

/// A WebSocket upgrade's answer: the upstream's (a 101 with its tunnel spliced), or
/// Envoy's replies when no endpoint answered.
async fn upgraded(
    cluster: &Arc<Cluster>,
    policy: &RetryPolicy,
    parts: http::request::Parts,
    hash: Option<u64>,
    entry: &mut Entry,
) -> Verdict {
    match upgrade::websocket(cluster, policy, parts, hash, entry).await {
        Upgraded::Response(resp) => (resp, Flags::NONE, "via_upstream".into()),
        Upgraded::Failed { failure, retries } => gave_up(policy, failure, retries, entry),
        Upgraded::NoHealthyUpstream => (
            local_reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
            Flags::UH,
            "no_healthy_upstream".into(),
        ),
    }
}

/// The request as every attempt sends it.
struct Attempted<'a> {
    parts: &'a http::request::Parts,
    body: &'a Replay,
    hash: Option<u64>,
    /// The route timeout and when the request began; the timeout bounds the streamed
    /// response body too.
    timeout: Option<(Duration, tokio::time::Instant)>,
}

impl Attempted<'_> {
    /// When the route timeout runs out.
    fn expiry(&self) -> Option<Expiry> {
        let (after, begun) = self.timeout?;
        Some(Box::pin(expiry(self.body.clone(), after, begun)))
    }

    /// Whether the retry policy may retry `attempt`. Envoy gives up its retry
    /// state when the body outgrows the retry buffer: the attempt's result stands.
    fn retried(&self, policy: &RetryPolicy, attempt: Attempt, retries: u32) -> bool {
        self.body.resendable() && policy.should_retry(attempt, retries)
    }

    /// `URX` if the policy would have retried `attempt` but its retries are used up.
    fn exhausted(&self, policy: &RetryPolicy, attempt: Attempt, retries: u32) -> Flags {
        if self.body.resendable() && policy.exhausted(attempt, retries) {
            Flags::URX
        } else {
            Flags::NONE
        }
    }
}

/// Envoy starts the route timeout, and each per-try timeout, once the downstream
/// request is complete (a retry's at the retry, if later): a slow upload or a client
/// stream does not count against them.
async fn expiry(body: Replay, after: Duration, not_before: tokio::time::Instant) {
    let from = body.ended().await.max(not_before);
    tokio::time::sleep_until(from + after).await;
}

async fn attempts(
    cluster: &Arc<Cluster>,
    policy: &RetryPolicy,
    request: &Attempted<'_>,
    entry: &mut Entry,
) -> Verdict {
    let (parts, body, hash) = (request.parts, request.body, request.hash);
    let mut tried = Vec::new();
    let mut retries = 0;
    let mut rng = Rng::from_entropy();
    // Held from a retry's scheduling until its outcome is known, as Envoy's
    // `retries()` resource.
    let mut _retry_slot = None;
    loop {
        let Some(i) = cluster.pick(&tried, policy.avoid_previous_hosts, hash) else {
            return (
                local_reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
                Flags::UH,
                "no_healthy_upstream".into(),
            );
        };
        tried.push(i);
        entry.upstream_host = Some(text::socket_addr(&cluster.endpoints[i].address));
        let sent = match policy.per_try_timeout {
            None => Some(send(cluster, i, parts, body).await),
            Some(limit) => tokio::select! {
                sent = send(cluster, i, parts, body) => Some(sent),
                () = expiry(body.clone(), limit, tokio::time::Instant::now()) => None,
            },
        };
        _retry_slot = None;
        let Some((result, service_started)) = sent else {
            // Envoy's per-try timeout: a 504 for outlier detection, retried if the
            // policy allows, else answered 504 `UT`.
            cluster.report(i, Outcome::Timeout);
            let slot = request
                .retried(policy, Attempt::PerTryTimeout, retries)
                .then(|| cluster.upstream.try_retry())
                .flatten();
            let Some(slot) = slot else {
                return (
                    local_reply(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
                    Flags::UT.with(request.exhausted(policy, Attempt::PerTryTimeout, retries)),
                    "upstream_per_try_timeout".into(),
                );
            };
            _retry_slot = Some(slot);
            retries += 1;
            tokio::time::sleep(policy.backoff(retries, &mut rng)).await;
            continue;
        };
        let attempt = match result {
            Ok((resp, lease)) => {
                let status = resp.status().as_u16();
                cluster.report(i, Outcome::Status(status));
                let grpc_status = resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                let attempt = Attempt::Response {
                    status,
                    grpc_status,
                };
                let slot = request
                    .retried(policy, attempt, retries)
                    .then(|| cluster.upstream.try_retry());
                let Some(Some(slot)) = slot else {
                    entry.upstream_service_time_ms = Some(service_started.elapsed().as_millis());
                    let flag = if slot.is_some() {
                        Flags::UO
                    } else {
                        request.exhausted(policy, attempt, retries)
                    };
                    return relay(cluster, i, resp, lease, request.expiry(), flag);
                };
                _retry_slot = Some(slot);
                attempt
            }
            Err(NoResponse::Overflow) => return overflow_reply(retries > 0),
            Err(failure) => {
                let (outcome, attempt) = failure.judged();
                cluster.report(i, outcome);
                if !request.retried(policy, attempt, retries) {
                    let extra = request.exhausted(policy, attempt, retries);
                    return reset_reply(failure, extra, retries > 0, entry);
                }
                let Some(slot) = cluster.upstream.try_retry() else {
                    return reset_reply(failure, Flags::UO, retries > 0, entry);
                };
                _retry_slot = Some(slot);
                attempt
            }
        };
        retries += 1;
        tracing::debug!(?attempt, retries, "retrying");
        tokio::time::sleep(policy.backoff(retries, &mut rng)).await;
    }
}

/// Passes the upstream response on as it streams; the connection goes back to the
/// pool when the body ends, and a failure mid-body is told to outlier detection.
fn relay(
    cluster: &Arc<Cluster>,
    i: usize,
    resp: Response<Incoming>,
    lease: Lease,
    expiry: Option<Expiry>,
    flag: Flags,
) -> Verdict {
    let (mut head, incoming) = resp.into_parts();
    strip_hop_by_hop(&mut head.headers);
    let cluster = Arc::clone(cluster);
    let report = move || cluster.report(i, Outcome::Reset);
    let relayed = Relayed::new(incoming, lease, expiry, report);
    (
        Response::from_parts(head, relayed.map_err(body::BoxError::from).boxed_unsync()),
        flag,
        "via_upstream".into(),
    )
}

/// The reply once the retry policy lets `failure` stand: `URX` if it would have
/// retried but the retries are used up.
fn gave_up(policy: &RetryPolicy, failure: NoResponse, retries: u32, entry: &mut Entry) -> Verdict {
    let exhausted = policy.exhausted(failure.judged().1, retries);
    let extra = if exhausted { Flags::URX } else { Flags::NONE };
    reset_reply(failure, extra, retries > 0, entry)
}

/// Envoy's reply when no attempt got response headers (its `onPoolFailure` and
/// `onUpstreamReset`), worded as Envoy 1.40 words it (checked by
/// `tests/envoy_differential.rs`): a refused connect is a `remote connection failure`
/// with the OS error as the transport failure reason; an HTTP/1.1 upstream that
/// closes or resets is a `connection termination` (`UC`). `extra` adds `URX`
/// (retries exhausted) or `UO` (a retry refused by `maxRetries`).
fn reset_reply(failure: NoResponse, extra: Flags, was_retried: bool, entry: &mut Entry) -> Verdict {
    let (reason, flag, detail, transport) = match failure {
        NoResponse::ConnectFailure(ConnectFailure::Os(errno)) => {
            let text = std::io::Error::from_raw_os_error(errno).to_string();
            let text = text.split(" (os error").next().unwrap_or(&text);
            let transport = format!("delayed_connect_error:_{}", text.replace(' ', "_"));
            let reason = "remote connection failure";
            (
                reason,
                Flags::UF,
                "remote_connection_failure",
                Some(transport),
            )
        }
        NoResponse::ConnectFailure(ConnectFailure::Timeout) => {
            ("connection timeout", Flags::UF, "connection_timeout", None)
        }
        NoResponse::ConnectFailure(ConnectFailure::Other) => (
            "remote connection failure",
            Flags::UF,
            "remote_connection_failure",
            None,
        ),
        NoResponse::Reset => (
            "connection termination",
            Flags::UC,
            "connection_termination",
            None,
        ),
        NoResponse::Overflow => return overflow_reply(was_retried),
    };
    let details = match &transport {
        Some(t) => format!("upstream_reset_before_response_started{{{detail}|{t}}}"),
        None => format!("upstream_reset_before_response_started{{{detail}}}"),
    };
    entry.upstream_transport_failure_reason = transport;
    (
        reset_body(reason, was_retried),
        flag.with(extra),
        details.into(),
    )
}

/// Envoy's reply to a circuit-breaker overflow: 503 `UO`, `x-envoy-overloaded: true`.
fn overflow_reply(was_retried: bool) -> Verdict {
    let mut resp = reset_body("overflow", was_retried);
    resp.headers_mut()
        .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
    (
        resp,
        Flags::UO,
        "upstream_reset_before_response_started{overflow}".into(),
    )
}

fn reset_body(reason: &str, was_retried: bool) -> Response<Body> {
    let latest = if was_retried {
        "retried and the latest "
    } else {
        ""
    };
    let text = format!(
        "upstream connect error or disconnect/reset before headers. {latest}reset reason: {reason}"
    );
    let mut resp = local_reply(StatusCode::SERVICE_UNAVAILABLE, "");
    *resp.body_mut() = body::full(text);
    resp
}

/// A rule's and its drawn backend's request filters, in order: header modifiers
/// and URL rewrites change the request; the clusters returned are to be sent a copy
/// of it as it then is (mirrors drawn by their fraction).
fn request_filters(
    runtime: &Runtime,
    filters: &[&Filter],
    parts: &mut http::request::Parts,
    matched_prefix: Option<&str>,
) -> Vec<Arc<Cluster>> {
    let all_filters = || filters.iter().copied();
    for f in all_filters() {
        match f {
            Filter::RequestHeaderModifier { modifier } => {
                filters::modify_headers(modifier, &mut parts.headers);
            }
            Filter::UrlRewrite { rewrite } => {
                let (host, target) = filters::rewrite_url(
                    rewrite,
                    parts.uri.path(),
                    parts.uri.query(),
                    matched_prefix,
                );
                if let Some(h) = host.and_then(|h| HeaderValue::from_str(h).ok()) {
                    parts.headers.insert(header::HOST, h);
                }
                if let Some(t) = target.and_then(|t| t.parse::<Uri>().ok()) {
                    parts.uri = t;
                }
            }
            _ => {}
        }
    }
    all_filters()
        .filter_map(|f| match f {
            Filter::RequestMirror { cluster, fraction }
                if filters::mirrored(*fraction, |n| Rng::from_entropy().next_u64() % n) =>
            {
                runtime.cluster(cluster).map(Arc::clone)
            }
            _ => None,
        })
        .collect()
}

/// Sends a copy of the request to one endpoint of `cluster` and forgets the answer,
/// as Envoy's request mirror does (host suffixed `-shadow`, no retries).
fn shadow(cluster: Arc<Cluster>, parts: &http::request::Parts, body: Replay) {
    let Ok(mut copy) = Request::builder()
        .method(parts.method.clone())
        .uri(parts.uri.clone())
        .body(())
    else {
        return;
    };
    *copy.headers_mut() = parts.headers.clone();
    if let Some(host) = copy
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| match h.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => {
                format!("{name}-shadow:{port}")
            }
            _ => format!("{h}-shadow"),
        })
        .and_then(|h| HeaderValue::from_str(&h).ok())
    {
        copy.headers_mut().insert(header::HOST, host);
    }
    let (copy, ()) = copy.into_parts();
    tokio::spawn(async move {
        if let Some(i) = cluster.pick(&[], false, None) {
            let (result, _) = send(&cluster, i, &copy, &body).await;
            if let Ok((resp, _lease)) = result {
                // Read to the end so the connection can be reused.
                let _ = resp.into_body().collect().await;
            }
        }
    });
}

/// An endpoint's active-request count, for least-request balancing: up while an
/// attempt runs, down when it ends or is dropped.
struct Active<'a>(&'a super::cluster::Endpoint);

impl<'a> Active<'a> {
    fn begin(endpoint: &'a super::cluster::Endpoint) -> Self {
        endpoint.begin();
        Self(endpoint)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// One attempt to one endpoint, through the cluster's pool. The request target is
/// sent in origin form (`/path?query`) with the downstream `host` header.
async fn send(
    cluster: &Cluster,
    i: usize,
    parts: &http::request::Parts,
    body: &Replay,
) -> (Result<(Response<Incoming>, Lease), NoResponse>, Instant) {
    let endpoint = &cluster.endpoints[i];
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let Ok(uri) = path.parse::<Uri>() else {
        return (Err(NoResponse::Reset), Instant::now());
    };
    // Called once the attempt has a connection, as Envoy's `onPoolReady`.
    let make = || {
        cluster.connected(i);
        let mut req = Request::new(body.reader());
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = uri.clone();
        *req.headers_mut() = parts.headers.clone();
        req
    };
    let started = Instant::now();
    // Counted until this attempt ends, even when a timeout drops it mid-way.
    let _active = Active::begin(endpoint);
    let result = cluster.upstream.send(i, parts.version, make).await;
    (result, started)
}
