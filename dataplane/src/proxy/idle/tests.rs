//! [`serve_http1`] on real loopback sockets, with a raw client that controls exactly
//! what it sends when: keep-alive pauses, a pipelined head cut in two, a response
//! larger than the socket buffers read late, `connection: close` and an HTTP/2
//! preface.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::proxy::body::{self, Logged};

/// A server as the proxy runs one: the head clock told when a request starts and
/// when its response has gone down. The body is the request path, or `big` bytes
/// for `/big`.
async fn server(big: usize) -> (std::net::SocketAddr, Arc<Signals>) {
    put_away_above(0);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let signals = Arc::new(Signals::default());
    let shared = Arc::clone(&signals);
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let clock = Arc::new(Clock::default());
        let timed = Timed::new(stream, Arc::clone(&clock), Duration::from_secs(10), || {});
        let service_clock = Arc::clone(&clock);
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let clock = Arc::clone(&service_clock);
            clock.serving();
            let path = req.uri().path().to_owned();
            let bytes = if path == "/big" {
                Bytes::from(vec![b'x'; big])
            } else {
                Bytes::from(path)
            };
            let body = Logged::new(body::full(bytes), move |_, _| clock.between_requests());
            std::future::ready(Ok::<_, Infallible>(Response::new(
                http_body_util::BodyExt::boxed_unsync(body),
            )))
        });
        serve_http1_signalled(timed, clock, service, shared).await;
    });
    (addr, signals)
}

/// Reads one response with a `content-length`; returns its head and body.
async fn response(client: &mut TcpStream, pending: &mut Vec<u8>) -> (String, Vec<u8>) {
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(pending[..end].to_vec()).unwrap();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .expect("a content-length")
                .parse()
                .unwrap();
            while pending.len() < end + 4 + length {
                read_more(client, pending).await;
            }
            let body = pending[end + 4..end + 4 + length].to_vec();
            pending.drain(..end + 4 + length);
            return (head, body);
        }
        read_more(client, pending).await;
    }
}

async fn read_more(client: &mut TcpStream, pending: &mut Vec<u8>) {
    pending.reserve(65536);
    let n = tokio::time::timeout(Duration::from_secs(5), client.read_buf(pending))
        .await
        .expect("the server answers")
        .unwrap();
    assert!(n > 0, "the server closed mid-response");
}

fn parked(signals: &Signals) -> u64 {
    signals.parked.load(Ordering::Relaxed)
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_put_away_and_serves_on() {
    let (addr, signals) = server(0).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    let mut pending = Vec::new();
    for (i, path) in ["/one", "/two", "/three"].into_iter().enumerate() {
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
        client.write_all(request.as_bytes()).await.unwrap();
        let (head, body) = response(&mut client, &mut pending).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, path.as_bytes());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(parked(&signals), i as u64 + 1, "after {path}");
    }
}

#[tokio::test]
async fn a_pipelined_head_cut_in_two_survives_being_put_away() {
    let (addr, signals) = server(0).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET /first HTTP/1.1\r\nhost: x\r\n\r\nGET /second HTTP/1.1\r\nho")
        .await
        .unwrap();
    let mut pending = Vec::new();
    let (_, body) = response(&mut client, &mut pending).await;
    assert_eq!(body, b"/first");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(parked(&signals), 1, "put away with half a head read");
    client.write_all(b"st: x\r\n\r\n").await.unwrap();
    let (head, body) = response(&mut client, &mut pending).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"/second");
}

#[tokio::test]
async fn a_response_larger_than_the_socket_buffers_goes_down_whole() {
    const BIG: usize = 32 << 20;
    let (addr, signals) = server(BIG).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // Not reading yet: the server's writes block with most of the body unsent.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(parked(&signals), 0, "nothing put away with bytes unsent");
    let mut pending = Vec::new();
    let (_, body) = response(&mut client, &mut pending).await;
    assert_eq!(body.len(), BIG);
    client
        .write_all(b"GET /after HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (_, body) = response(&mut client, &mut pending).await;
    assert_eq!(body, b"/after");
}

#[tokio::test]
async fn connection_close_still_closes() {
    let (addr, signals) = server(0).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET /bye HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut all))
        .await
        .expect("the server closes")
        .unwrap();
    let text = String::from_utf8(all).unwrap();
    assert!(text.ends_with("\r\n\r\n/bye"), "{text}");
    assert_eq!(parked(&signals), 0);
}

#[tokio::test]
async fn sniffing_takes_no_bytes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    for (sent, want) in [
        (&b"GET / HTTP/1.1\r\n"[..], Sniffed::Http1),
        (b"PRI * HTTP/2.0\r\n", Sniffed::Unsure),
        (b"PR", Sniffed::Unsure),
        (b"PUT", Sniffed::Http1),
        (b"", Sniffed::Closed),
    ] {
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        client.write_all(sent).await.unwrap();
        if sent.is_empty() {
            drop(client);
        }
        assert_eq!(sniff(&server).await, want, "{sent:?}");
        if !sent.is_empty() {
            let mut back = vec![0u8; sent.len()];
            server.read_exact(&mut back).await.unwrap();
            assert_eq!(back, sent, "the bytes are still there to read");
        }
    }
}
