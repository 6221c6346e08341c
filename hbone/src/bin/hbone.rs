//! `hbone`: curl through a waypoint over HBONE.
//!
//!     hbone --cert-dir /var/run/secrets/mesh --waypoint 10.96.0.30:15008 \
//!         -n 12 http://10.96.0.10:8000/hostname
//!
//! The URL's host:port is the original destination (the CONNECT authority);
//! `--host` sets the Host header when the URL uses the Service VIP.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Parser;
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use waypoint_hbone::Client;
use waypoint_identity::Identity;
use waypoint_identity::tls::PeerCheck;
use waypoint_identity::workload::Credentials;

#[derive(Parser, Debug)]
#[command(version, about = "curl through a waypoint over HBONE")]
struct Args {
    /// Mesh credentials: cert-chain.pem, key.pem, root-cert.pem.
    #[arg(long, env = "HBONE_CERT_DIR")]
    cert_dir: PathBuf,
    /// The waypoint's HBONE address (pod or Service IP, port 15008).
    #[arg(long)]
    waypoint: SocketAddr,
    /// The waypoint's SPIFFE ID; without it, any identity in our trust domain.
    #[arg(long)]
    waypoint_identity: Option<Identity>,
    /// Request method.
    #[arg(short = 'X', long, default_value = "GET")]
    request: Method,
    /// Extra request headers, `Name: value`.
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// The Host header (default: the URL's authority).
    #[arg(long)]
    host: Option<String>,
    /// Request body.
    #[arg(short = 'd', long)]
    data: Option<String>,
    /// Print the status line and response headers before the body.
    #[arg(short = 'i', long)]
    include: bool,
    /// Print only the status code of each response, one per line.
    #[arg(long)]
    status_only: bool,
    /// Send the request this many times, each in a new tunnel on one connection.
    #[arg(short = 'n', long, default_value = "1")]
    count: u32,
    /// http://<destination host:port>/<path>
    url: Uri,
}

fn read(dir: &std::path::Path, name: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    let creds = Credentials::from_pem(
        &read(&args.cert_dir, "cert-chain.pem")?,
        &read(&args.cert_dir, "key.pem")?,
        &read(&args.cert_dir, "root-cert.pem")?,
    )
    .with_context(|| format!("loading credentials from {}", args.cert_dir.display()))?;
    let check = match &args.waypoint_identity {
        Some(id) => PeerCheck::Identities(vec![id.clone()]),
        None => PeerCheck::TrustDomain(creds.identity.trust_domain.clone()),
    };
    let client = Client::new(&creds, check)?;
    let Some(authority) = args.url.authority() else {
        bail!("{} has no host:port; it names the destination", args.url);
    };
    let destination = match authority.port_u16() {
        Some(_) => authority.to_string(),
        None => format!("{}:80", authority.host()),
    };
    let path = args
        .url
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut out = std::io::stdout().lock();
    for _ in 0..args.count {
        let mut req = Request::new(Full::new(Bytes::from(
            args.data.clone().unwrap_or_default(),
        )));
        *req.method_mut() = args.request.clone();
        *req.uri_mut() = path.parse()?;
        let host = args.host.clone().unwrap_or_else(|| authority.to_string());
        req.headers_mut()
            .insert(http::header::HOST, HeaderValue::from_str(&host)?);
        for h in &args.headers {
            let (name, value) = h
                .split_once(':')
                .with_context(|| format!("header {h:?} is not `Name: value`"))?;
            req.headers_mut().append(
                HeaderName::from_bytes(name.trim().as_bytes())?,
                HeaderValue::from_str(value.trim())?,
            );
        }
        let resp = client.request(args.waypoint, &destination, req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        if args.status_only {
            writeln!(out, "{}", parts.status.as_u16())?;
            continue;
        }
        if args.include {
            writeln!(out, "{:?} {}", parts.version, parts.status)?;
            for (k, v) in &parts.headers {
                writeln!(out, "{k}: {}", String::from_utf8_lossy(v.as_bytes()))?;
            }
            writeln!(out)?;
        }
        out.write_all(&body)?;
        if !body.ends_with(b"\n") {
            writeln!(out)?;
        }
    }
    Ok(())
}
