//! `hbone`: curl through a waypoint over HBONE.
//!
//!     hbone --ca-address https://waypoint-ca.waypoint-system.svc:15012 \
//!         --waypoint httpbin-waypoint.httpbin:15008 -n 12 http://in-ambient:8000/hostname
//!
//! Credentials come from the mesh CA (a CSR proven by the pod's projected
//! ServiceAccount token; the identity is the token's subject) or from `--cert-dir`.
//! The URL's host is resolved as a node tunnel sees it, to the Service VIP: the
//! CONNECT authority is `VIP:port`, and the Host header stays the URL's.

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
    #[arg(long, env = "HBONE_CERT_DIR", required_unless_present = "ca_address")]
    cert_dir: Option<PathBuf>,
    /// The mesh CA to get a certificate from instead (`https://host:port`).
    #[arg(long, env = "WAYPOINT_CA_ADDRESS", conflicts_with = "cert_dir")]
    ca_address: Option<Uri>,
    /// The projected ServiceAccount token (audience waypoint-ca) proving who we are.
    #[arg(
        long,
        env = "WAYPOINT_CA_TOKEN_FILE",
        default_value = "/var/run/secrets/tokens/waypoint-ca/token"
    )]
    token_file: PathBuf,
    /// PEM roots the CA's serving certificate chains to.
    #[arg(
        long,
        env = "WAYPOINT_CA_ROOT_FILE",
        default_value = "/var/run/secrets/waypoint/root/root-cert.pem"
    )]
    ca_root_file: PathBuf,
    #[arg(long, env = "WAYPOINT_TRUST_DOMAIN", default_value = waypoint_identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// The waypoint's HBONE address, host:port (pod or Service, port 15008).
    #[arg(long)]
    waypoint: String,
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
    /// Printed after each body, as curl's -w: `%{http_code}` and `\n` are replaced.
    #[arg(short = 'w', long)]
    write_out: Option<String>,
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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    let creds = credentials(&args).await?;
    let check = match &args.waypoint_identity {
        Some(id) => PeerCheck::Identities(vec![id.clone()]),
        None => PeerCheck::TrustDomain(creds.identity.trust_domain.clone()),
    };
    let client = Client::new(&creds, check)?;
    let Some(authority) = args.url.authority() else {
        bail!("{} has no host:port; it names the destination", args.url);
    };
    let waypoint = resolve(&args.waypoint).await?;
    // The original destination as a node tunnel would see it: the resolved VIP.
    let destination = resolve(&format!(
        "{}:{}",
        authority.host(),
        authority.port_u16().unwrap_or(80)
    ))
    .await?
    .to_string();
    let path = args
        .url
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let mut out = std::io::stdout().lock();
    let mut failures = 0;
    for _ in 0..args.count {
        let mut req = Request::new(Full::new(Bytes::from(
            args.data.clone().unwrap_or_default(),
        )));
        *req.method_mut() = args.request.clone();
        *req.uri_mut() = path.parse()?;
        let host = args.host.clone().unwrap_or_else(|| authority.to_string());
        req.headers_mut()
            .insert(http::header::HOST, HeaderValue::from_str(&host)?);
        req.headers_mut().insert(
            http::header::USER_AGENT,
            HeaderValue::from_static(concat!("hbone/", env!("CARGO_PKG_VERSION"))),
        );
        for h in &args.headers {
            let (name, value) = h
                .split_once(':')
                .with_context(|| format!("header {h:?} is not `Name: value`"))?;
            req.headers_mut().insert(
                HeaderName::from_bytes(name.trim().as_bytes())?,
                HeaderValue::from_str(value.trim())?,
            );
        }
        // Like a loop of curls: a failed request is reported and the next one sent.
        let answer = async {
            let (parts, body) = client
                .request(waypoint, &destination, req)
                .await?
                .into_parts();
            anyhow::Ok((parts, body.collect().await?.to_bytes()))
        };
        let (parts, body) = match answer.await {
            Ok(answer) => answer,
            Err(e) if args.count > 1 => {
                writeln!(out, "FAILED: {e:#}")?;
                failures += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
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
        match &args.write_out {
            Some(format) => write!(
                out,
                "{}",
                format
                    .replace("%{http_code}", parts.status.as_str())
                    .replace("\\n", "\n")
            )?,
            None if !body.ends_with(b"\n") => writeln!(out)?,
            None => {}
        }
    }
    if failures > 0 {
        bail!("{failures} of {} requests failed", args.count);
    }
    Ok(())
}

async fn resolve(host_port: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(host_port)
        .await
        .with_context(|| format!("resolving {host_port}"))?
        .next()
        .with_context(|| format!("{host_port} resolves to no address"))
}

async fn credentials(args: &Args) -> anyhow::Result<Credentials> {
    if let Some(dir) = &args.cert_dir {
        return Credentials::from_pem(
            &read(dir, "cert-chain.pem")?,
            &read(dir, "key.pem")?,
            &read(dir, "root-cert.pem")?,
        )
        .with_context(|| format!("loading credentials from {}", dir.display()));
    }
    let Some(url) = &args.ca_address else {
        bail!("pass --cert-dir or --ca-address");
    };
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("reading the token {}", args.token_file.display()))?;
    let subject = token_subject(&token).with_context(|| {
        format!(
            "{} is not a ServiceAccount token",
            args.token_file.display()
        )
    })?;
    let identity = Identity::from_service_account_username(&args.trust_domain, &subject)?;
    let endpoint = waypoint_identity::client::CaEndpoint {
        url: url.clone(),
        roots_pem: std::fs::read_to_string(&args.ca_root_file)
            .with_context(|| format!("reading {}", args.ca_root_file.display()))?,
    };
    Ok(waypoint_identity::client::request_certificate(&endpoint, &token, &identity, None).await?)
}

/// The `sub` claim of a JWT, read without verifying it: it only chooses which
/// identity to ask for, and the CA verifies the token with a TokenReview.
fn token_subject(token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = token.trim().split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&json).ok()?;
    claims.get("sub")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    #[test]
    fn reads_the_subject_of_a_service_account_token() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = format!(
            "{}.{}.sig\n",
            b64(r#"{"alg":"RS256"}"#),
            b64(r#"{"aud":["waypoint-ca"],"sub":"system:serviceaccount:httpbin:client"}"#)
        );
        assert_eq!(
            super::token_subject(&token).as_deref(),
            Some("system:serviceaccount:httpbin:client")
        );
        assert_eq!(super::token_subject("not-a-jwt"), None);
    }
}
