//! HBONE's cost, reported and never asserted (`hack/bench-hbone`): the same dataplane
//! serves one plain HTTP listener and one HBONE listener with the same route, on one
//! thread pinned to CPU 0; the load generator and the backend share CPU 1.
//!
//! 1. At a fixed rate (open loop, latency measured from each request's scheduled
//!    time): dataplane CPU per request and p50/p99 for plain HTTP keep-alive, HBONE
//!    with a long-lived tunnel per client connection (ztunnel's shape), and HBONE
//!    with a new CONNECT stream per request on the pooled TLS connection.
//! 2. Closed loop, 16 connections: requests/s for plain and HBONE tunnels.
//! 3. Bulk TCP: 256 MiB through an HBONE tunnel to a TCP sink, next to the same
//!    bytes sent straight to the sink.
//!
//! CPU time is the dataplane thread's own run time (`/proc/self/task/<tid>/schedstat`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)] // bench harness

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use waypoint_dataplane::hbone;
use waypoint_dataplane::identity::MeshTls;
use waypoint_dataplane::proxy::{self, Shared};
use waypoint_hbone::Client;
use waypoint_identity::Identity;
use waypoint_identity::ca::Ca;
use waypoint_identity::tls::PeerCheck;
use waypoint_identity::workload::{Credentials, Request as Csr};

const VIP: &str = "10.96.0.10:8000";
const TCP_VIP: &str = "10.96.0.30:5001";
const DAY: Duration = Duration::from_hours(24);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pin_this_thread(cpu: usize) -> u32 {
    let link = std::fs::read_link("/proc/thread-self").unwrap();
    let tid: u32 = link.file_name().unwrap().to_str().unwrap().parse().unwrap();
    let ok = std::process::Command::new("taskset")
        .args(["-pc", &cpu.to_string(), &tid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("bench: taskset failed; running unpinned");
    }
    tid
}

/// Nanoseconds the thread has run on a CPU.
fn cpu_ns(tid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).unwrap();
    s.split_whitespace().next().unwrap().parse().unwrap()
}

fn issue(ca: &Ca, id: &Identity) -> Credentials {
    let req = Csr::new(id).unwrap();
    let cert = ca
        .sign(req.csr_pem(), id, OffsetDateTime::now_utc(), DAY)
        .unwrap();
    req.complete(&[cert], &[ca.cert_pem().to_owned()]).unwrap()
}

struct Dataplane {
    tid: u32,
    plain: SocketAddr,
    mesh: SocketAddr,
}

/// Starts the dataplane on its own pinned thread.
fn start_dataplane(ca: &Ca, backend: SocketAddr, sink: SocketAddr) -> Dataplane {
    let yaml = format!(
        "listeners:
- name: plain
  address: 127.0.0.1:0
  routes: [{{hosts: [\"{VIP}\"], cluster: c}}]
- name: mesh
  address: 127.0.0.2:0
  protocol: HBONE
  routes:
  - {{hosts: [\"{VIP}\"], cluster: c}}
  - {{hosts: [\"{TCP_VIP}\"], cluster: sink, protocol: TCP}}
clusters:
- {{name: c, endpoints: [{{address: \"{backend}\"}}]}}
- {{name: sink, endpoints: [{{address: \"{sink}\"}}]}}
"
    );
    let creds = issue(ca, &Identity::new("cluster.local", "bench", "waypoint"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let tid = pin_this_thread(0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let shared = Shared::with_access_log(
                waypoint_config::Config::from_yaml(&yaml).unwrap(),
                Box::new(|_| {}),
            );
            let tls = MeshTls::new(creds).unwrap();
            let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mesh = TcpListener::bind("127.0.0.2:0").await.unwrap();
            tx.send(Dataplane {
                tid,
                plain: plain.local_addr().unwrap(),
                mesh: mesh.local_addr().unwrap(),
            })
            .unwrap();
            tokio::spawn(proxy::serve(Arc::clone(&shared), plain, "plain".into()));
            hbone::serve(shared, tls, mesh, "mesh".into()).await;
        });
    });
    rx.recv().unwrap()
}

async fn backend() -> SocketAddr {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = socket.accept().await.unwrap();
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(
                        b"in-ambient-abc12\n",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A TCP server that reads and discards.
async fn sink() -> SocketAddr {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = socket.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 << 10];
                while stream.read(&mut buf).await.is_ok_and(|n| n > 0) {}
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Plain,
    Tunnel,
    StreamPerRequest,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain-http",
            Self::Tunnel => "hbone-tunnel",
            Self::StreamPerRequest => "hbone-stream-per-request",
        }
    }
}

struct Load {
    dp: Dataplane,
    client: Arc<Client>,
}

impl Load {
    async fn connection(&self, mode: Mode) -> Sender {
        match mode {
            Mode::Plain => {
                let tcp = TcpStream::connect(self.dp.plain).await.unwrap();
                let _ = tcp.set_nodelay(true);
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .unwrap();
                tokio::spawn(conn);
                sender
            }
            Mode::Tunnel | Mode::StreamPerRequest => {
                let tunnel = self.client.connect(self.dp.mesh, VIP).await.unwrap();
                waypoint_hbone::http1(tunnel).await.unwrap()
            }
        }
    }

    async fn one(&self, mode: Mode, sender: &mut Option<Sender>) -> bool {
        if mode == Mode::StreamPerRequest || sender.is_none() {
            *sender = Some(self.connection(mode).await);
        }
        let s = sender.as_mut().unwrap();
        let req = Request::get("/hostname")
            .header("host", VIP)
            .body(Empty::new())
            .unwrap();
        match s.send_request(req).await {
            Ok(resp) => resp.status() == 200 && resp.into_body().collect().await.is_ok(),
            Err(_) => false,
        }
    }

    /// Open loop at `rate` for `secs` over `conns` workers; latencies from the
    /// scheduled send time.
    async fn fixed_rate(
        self: &Arc<Self>,
        mode: Mode,
        rate: u32,
        secs: u64,
        conns: usize,
    ) -> (Vec<Duration>, u64, usize) {
        let (tx, rx) = async_channel();
        let mut workers = Vec::new();
        for _ in 0..conns {
            let (me, rx) = (Arc::clone(self), rx.clone());
            workers.push(tokio::spawn(async move {
                let mut sender = None;
                let (mut lat, mut failed) = (Vec::new(), 0);
                while let Some(at) = recv(&rx).await {
                    if me.one(mode, &mut sender).await {
                        lat.push(at.elapsed());
                    } else {
                        failed += 1;
                        sender = None;
                    }
                }
                (lat, failed)
            }));
        }
        let cpu0 = cpu_ns(self.dp.tid);
        let start = tokio::time::Instant::now();
        let total = u64::from(rate) * secs;
        let period = Duration::from_secs(1) / rate;
        for i in 0..total {
            let due = start + period * u32::try_from(i).unwrap();
            tokio::time::sleep_until(due).await;
            tx.lock().await.push_back(due.into_std());
            NOTIFY.notify_one();
        }
        CLOSED.store(true, std::sync::atomic::Ordering::SeqCst);
        NOTIFY.notify_waiters();
        let mut all = Vec::new();
        let mut failed = 0;
        for w in workers {
            let (lat, f) = w.await.unwrap();
            all.extend(lat);
            failed += f;
        }
        CLOSED.store(false, std::sync::atomic::Ordering::SeqCst);
        let cpu = cpu_ns(self.dp.tid) - cpu0;
        all.sort();
        (all, cpu, failed)
    }

    /// Closed loop for `secs`: requests/s and dataplane CPU per request.
    async fn max_rate(self: &Arc<Self>, mode: Mode, secs: u64, conns: usize) -> (f64, u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let cpu0 = cpu_ns(self.dp.tid);
        let started = Instant::now();
        let mut workers = Vec::new();
        for _ in 0..conns {
            let me = Arc::clone(self);
            workers.push(tokio::spawn(async move {
                let mut sender = None;
                let mut n = 0u64;
                while Instant::now() < deadline {
                    if me.one(mode, &mut sender).await {
                        n += 1;
                    } else {
                        sender = None;
                    }
                }
                n
            }));
        }
        let mut n = 0;
        for w in workers {
            n += w.await.unwrap();
        }
        let cpu = cpu_ns(self.dp.tid) - cpu0;
        (n as f64 / started.elapsed().as_secs_f64(), cpu / n.max(1))
    }
}

// A tiny MPMC queue of scheduled times for the open-loop workers (one runtime thread).
static NOTIFY: tokio::sync::Notify = tokio::sync::Notify::const_new();
static CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
type Queue = Arc<tokio::sync::Mutex<std::collections::VecDeque<Instant>>>;

fn async_channel() -> (Queue, Queue) {
    let q = Queue::default();
    (Arc::clone(&q), q)
}

async fn recv(q: &Queue) -> Option<Instant> {
    loop {
        let notified = NOTIFY.notified();
        if let Some(at) = q.lock().await.pop_front() {
            return Some(at);
        }
        if CLOSED.load(std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        notified.await;
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

async fn bulk(dp: &Dataplane, client: &Client, sink: SocketAddr, bytes: usize) -> (f64, f64, u64) {
    let chunk = vec![0x5au8; 256 << 10];
    // Direct to the sink.
    let mut direct = TcpStream::connect(sink).await.unwrap();
    let t = Instant::now();
    for _ in 0..bytes / chunk.len() {
        direct.write_all(&chunk).await.unwrap();
    }
    direct.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = direct.read_to_end(&mut rest).await;
    let direct_gbps = (bytes * 8) as f64 / t.elapsed().as_secs_f64() / 1e9;
    // Through an HBONE tunnel.
    let tunnel = client.connect(dp.mesh, TCP_VIP).await.unwrap();
    let mut tunnel = TokioIo::new(tunnel);
    let cpu0 = cpu_ns(dp.tid);
    let t = Instant::now();
    for _ in 0..bytes / chunk.len() {
        tunnel.write_all(&chunk).await.unwrap();
    }
    tunnel.shutdown().await.unwrap();
    let _ = tunnel.read_to_end(&mut rest).await;
    let hbone_gbps = (bytes * 8) as f64 / t.elapsed().as_secs_f64() / 1e9;
    let cpu_per_gib = (cpu_ns(dp.tid) - cpu0) * (1 << 30) / bytes as u64;
    (direct_gbps, hbone_gbps, cpu_per_gib)
}

fn main() {
    let rate: u32 = env_or("BENCH_RATE", 2000);
    let secs: u64 = env_or("BENCH_SECONDS", 5);
    let conns: usize = env_or("BENCH_CONNECTIONS", 16);
    let bulk_mib: usize = env_or("BENCH_BULK_MIB", 256);
    let ca = Ca::generate("cluster.local", OffsetDateTime::now_utc(), 365 * DAY).unwrap();
    let client_creds = issue(&ca, &Identity::new("cluster.local", "bench", "client"));
    pin_this_thread(1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (backend, sink) = (backend().await, sink().await);
        let dp = start_dataplane(&ca, backend, sink);
        let client = Arc::new(Client::new(&client_creds, PeerCheck::TrustDomain("cluster.local".into())).unwrap());
        let load = Arc::new(Load { dp, client });
        // Warm up every path.
        for mode in [Mode::Plain, Mode::Tunnel, Mode::StreamPerRequest] {
            let _ = load.max_rate(mode, 1, conns).await;
        }
        println!("bench hbone: dataplane on CPU 0 (one thread), load and backend on CPU 1; {rate} req/s for {secs} s over {conns} connections");
        let mut plain_cpu = 0.0;
        for mode in [Mode::Plain, Mode::Tunnel, Mode::StreamPerRequest] {
            let (lat, cpu, failed) = load.fixed_rate(mode, rate, secs, conns).await;
            let per_req = cpu as f64 / lat.len().max(1) as f64 / 1e3;
            if mode == Mode::Plain {
                plain_cpu = per_req;
            }
            println!(
                "bench {:<26} {:>6} ok {:>3} failed  p50 {:>7.0} us  p99 {:>7.0} us  dataplane CPU {:>5.1} us/req ({:.2}x plain)",
                mode.name(),
                lat.len(),
                failed,
                pct(&lat, 0.50),
                pct(&lat, 0.99),
                per_req,
                per_req / plain_cpu,
            );
        }
        let mut plain_rps = 0.0;
        for mode in [Mode::Plain, Mode::Tunnel, Mode::StreamPerRequest] {
            let (rps, cpu) = load.max_rate(mode, 3, conns).await;
            if mode == Mode::Plain {
                plain_rps = rps;
            }
            println!(
                "bench {:<26} closed loop {:>8.0} req/s ({:.2}x plain)  dataplane CPU {:>5.1} us/req",
                mode.name(),
                rps,
                rps / plain_rps,
                cpu as f64 / 1e3
            );
        }
        let (direct, tunnelled, cpu_per_gib) = bulk(&load.dp, &load.client, sink, bulk_mib << 20).await;
        println!(
            "bench bulk-tcp {bulk_mib} MiB: direct {direct:.2} Gbit/s, through HBONE {tunnelled:.2} Gbit/s ({:.2}x direct), dataplane CPU {:.2} s/GiB",
            tunnelled / direct,
            cpu_per_gib as f64 / 1e9
        );
    });
}
