//! Shared by the integration tests: HTTP and echo backends, credentials from a test
//! CA, proxies on loopback.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each test uses a part

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::net::TcpListener;
use waypoint_dataplane::proxy::{self, Shared};
use waypoint_identity::Identity;
use waypoint_identity::ca::Ca;
use waypoint_identity::workload::{Credentials, Request};

/// Credentials for `id` signed by `ca`, trusting `roots`, valid for `ttl`.
pub fn issue(ca: &Ca, id: &Identity, roots: &[&Ca], ttl: Duration) -> Credentials {
    let req = Request::new(id).unwrap();
    let cert = ca
        .sign(req.csr_pem(), id, OffsetDateTime::now_utc(), ttl)
        .unwrap();
    let roots: Vec<String> = roots.iter().map(|r| r.cert_pem().to_owned()).collect();
    req.complete(&[cert], &roots).unwrap()
}

/// An opaque TCP backend on `ip` that echoes what it reads.
pub async fn echo(ip: &str) -> SocketAddr {
    let socket = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = socket.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// An HTTP backend (HTTP/1.1 and h2c) on a fresh port: every request is answered by
/// `answer`. The tests' backends differ only in their answer.
pub struct Served {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    /// The accept loop; aborting it stops new connections.
    pub task: tokio::task::JoinHandle<()>,
}

pub async fn serve_http<F, Fut, B>(ip: &str, answer: F) -> Served
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = http::Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let socket = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = socket.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let task = tokio::spawn(async move {
        loop {
            let (stream, _) = socket.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let reply = answer(req);
                    async move { Ok::<_, Infallible>(reply.await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
            });
        }
    });
    Served {
        addr,
        accepted,
        task,
    }
}

/// The value of `req`'s header `name`, or `-`.
pub fn header<B>(req: &http::Request<B>, name: &str) -> String {
    req.headers()
        .get(name)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

/// A response with `body` and status 200.
pub fn text(body: impl Into<bytes::Bytes>) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    http::Response::new(http_body_util::Full::new(body.into()))
}

/// A backend answering every request with its pod name, like httpbin's /hostname.
/// `kill` makes it die as a process does; `revive` brings it back on the same port.
pub struct Pod {
    pub addr: SocketAddr,
    pub name: &'static str,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Pod {
    pub async fn start(addr: SocketAddr, name: &'static str) -> Self {
        use bytes::Bytes;
        use http_body_util::Full;
        use hyper_util::rt::{TokioExecutor, TokioIo};

        let socket = TcpListener::bind(addr).await.unwrap();
        let addr = socket.local_addr().unwrap();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut stopped => {
                        // Close the listener and every connection, and wait until they are gone.
                        drop(socket);
                        conns.shutdown().await;
                        return;
                    }
                    accepted = socket.accept() => {
                        let (stream, _) = accepted.unwrap();
                        conns.spawn(async move {
                            let svc = hyper::service::service_fn(move |_req| async move {
                                Ok::<_, Infallible>(http::Response::new(Full::new(
                                    Bytes::from(name),
                                )))
                            });
                            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                }
            }
        });
        Self {
            addr,
            name,
            stop: Some(stop),
            task,
        }
    }

    /// Its port refuses connections and every connection it had is closed, as when a
    /// process dies. Waiting for the task makes the closes happen before the next
    /// request, not racing it.
    pub async fn kill(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }

    pub async fn revive(&mut self) {
        *self = Self::start(self.addr, self.name).await;
    }
}

/// Seed 001's waypoint cluster, named as Istio names it.
pub const SEED_CLUSTER: &str = "inbound-vip|8000|http|in-ambient.httpbin.svc.cluster.local";

/// The seed's three pods.
pub const SEED_PODS: [&str; 3] = ["in-ambient-abc12", "in-ambient-def34", "in-ambient-ghi56"];

/// Seed 001's waypoint in the config model: the Service's route with `attempts`
/// retries on Istio's default conditions (0: none), and the guide's DestinationRule
/// (ROUND_ROBIN; consecutive5xxErrors 3, maxEjectionPercent 50) with its `interval`
/// and `baseEjectionTime` as given (some tests scale them down).
pub fn seed_waypoint(
    endpoints: &[(SocketAddr, &str)],
    attempts: u32,
    (interval, base_ejection): (&str, &str),
    connect_timeout: Duration,
) -> String {
    use std::fmt::Write as _;
    let mut list = String::new();
    for (addr, name) in endpoints {
        let _ = writeln!(list, "  - {{address: \"{addr}\", workload: {name}}}");
    }
    format!(
        "listeners:
- name: mesh
  address: 127.0.0.1:0
  routes:
  - hosts: [in-ambient.httpbin.svc.cluster.local, in-ambient]
    cluster: \"{SEED_CLUSTER}\"
    retry: {{attempts: {attempts}, retryOn: [connect-failure, refused-stream, unavailable, cancelled]}}
clusters:
- name: \"{SEED_CLUSTER}\"
  loadBalancer: ROUND_ROBIN
  connectTimeout: {}ms
  outlierDetection: {{consecutive5xxErrors: 3, interval: {interval}, baseEjectionTime: {base_ejection}, maxEjectionPercent: 50}}
  endpoints:
{list}",
        connect_timeout.as_millis()
    )
}

/// A proxy for `yaml` whose access-log lines are kept, in order, in the vector.
pub fn logged(yaml: &str) -> (Arc<Shared>, Arc<Mutex<Vec<String>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let lines = Arc::clone(&log);
    let shared = Shared::with_access_log(
        waypoint_config::Config::from_yaml(yaml).unwrap(),
        Box::new(move |line: &str| lines.lock().unwrap().push(line.to_owned())),
    );
    (shared, log)
}

/// Serves the first listener of `shared`'s config (a loopback address, port 0) and
/// returns where it listens.
pub async fn serve_first_listener(shared: &Arc<Shared>) -> SocketAddr {
    // Every idle HTTP/1.1 connection put away, as the proxy does under many
    // connections: these tests run that path, the others the default one.
    proxy::put_away_idle_http1_above(0);
    let (socket, name) = proxy::bind(&shared.current()).await.unwrap().remove(0);
    let addr = socket.local_addr().unwrap();
    tokio::spawn(proxy::serve(Arc::clone(shared), socket, name));
    addr
}

/// An endpoint whose accept queue is full, so that a connect to it hangs (the kernel
/// drops the SYNs) until the connect timeout; and what keeps it so.
pub async fn unanswering_endpoint() -> (SocketAddr, Vec<Box<dyn std::any::Any + Send>>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    // Fill the accept queue; from then on the kernel drops new SYNs.
    let mut held: Vec<Box<dyn std::any::Any + Send>> = vec![Box::new(listener)];
    for _ in 0..3 {
        let connect = tokio::net::TcpStream::connect(addr);
        if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_millis(200), connect).await {
            held.push(Box::new(stream));
        }
    }
    let probe = tokio::net::TcpStream::connect(addr);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), probe)
            .await
            .is_err(),
        "the endpoint's accept queue did not fill: connects still complete"
    );
    (addr, held)
}

/// A body the test feeds frame by frame; it ends when the sender is dropped.
pub struct Fed(pub tokio::sync::mpsc::Receiver<hyper::body::Frame<bytes::Bytes>>);

impl hyper::body::Body for Fed {
    type Data = bytes::Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

/// xorshift64*: deterministic, so a failing fuzz seed reproduces.
pub struct Rng(u64);

impl Rng {
    /// The sequence for `seed` (`WAYPOINT_FUZZ_SEED`, else 1).
    pub fn from_env() -> Self {
        let seed: u64 = std::env::var("WAYPOINT_FUZZ_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n as u64)).unwrap()
    }
}

/// Byte-level damage for the fuzzers: a byte flipped, the rest cut off, a newline
/// inserted, or the next 16 bytes doubled.
pub fn damage(bytes: &mut Vec<u8>, rng: &mut Rng) {
    if bytes.is_empty() {
        return;
    }
    let i = rng.below(bytes.len());
    match rng.below(4) {
        0 => bytes[i] = (rng.next() & 0xff) as u8,
        1 => bytes.truncate(i),
        2 => bytes.insert(i, b'\n'),
        _ => {
            let slice: Vec<u8> = bytes[i..].iter().take(16).copied().collect();
            bytes.splice(i..i, slice);
        }
    }
}

/// `WAYPOINT_FUZZ_CASES`, else `default`.
pub fn fuzz_cases(default: usize) -> usize {
    std::env::var("WAYPOINT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
