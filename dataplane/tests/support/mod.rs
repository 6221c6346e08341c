//! Shared by the HBONE integration tests: credentials from a test CA, and an echo
//! server.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // each test uses a part

use std::net::SocketAddr;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::net::TcpListener;
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
