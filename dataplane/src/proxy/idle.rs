//! Idle keep-alive HTTP/1.1 connections hold no HTTP state.
//!
//! hyper keeps a connection's read buffer (8 KiB), write buffer and dispatcher for the
//! connection's whole life, so every idle keep-alive connection cost about 18 KiB.
//! Envoy and HAProxy give a connection's buffers back while it idles; so does this.
//! When an HTTP/1.1 connection of a plain listener has nothing left to send, its
//! exchange is over (the head clock says so) and hyper finds nothing to read, the
//! hyper connection is shut down gracefully without closing the socket ([`Idle`]
//! swallows the shutdown). The socket then waits for readability alone, and a fresh
//! hyper connection takes the next request, starting with any bytes the old one had
//! read but not parsed (a part of a pipelined head).
//!
//! Putting a connection away is only ever an optimisation: whenever one of those
//! signals is missing, hyper keeps the connection as before.
//!
//! It costs about 5,400 instructions per request that finds its connection idle (a
//! fresh hyper connection and its buffers; callgrind, one client at a time), 10% of a
//! request. So it is done only while more than [`put_away_above`] such connections
//! are open (256 by default): where their memory adds up. Under full load a
//! connection rarely idles (its next request is waiting), so throughput is the same.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::body::Body;
use super::head_timeout::{Clock, PREFACE, Timed};

/// HTTP/1.1 connections of plain listeners open now, in this process.
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// Above how many open connections idle ones are put away.
static PUT_AWAY_ABOVE: AtomicUsize = AtomicUsize::new(256);

/// Idle HTTP/1.1 connections give their buffers back while more than `open` are open
/// (tests set 0 to put every idle connection away).
pub fn put_away_above(open: usize) {
    PUT_AWAY_ABOVE.store(open, Ordering::Relaxed);
}

/// Counts a connection open for as long as it is served.
struct Open;

impl Open {
    fn new() -> Self {
        OPEN.fetch_add(1, Ordering::Relaxed);
        Self
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What the driver needs to know about the socket, seen from inside hyper's polls.
#[derive(Debug, Default)]
struct Signals {
    /// hyper's last read found nothing to read.
    read_blocked: AtomicBool,
    /// Bytes were written since the last completed flush.
    unflushed: AtomicBool,
    /// hyper's connection is being put away: its shutdown leaves the socket open.
    parking: AtomicBool,
    /// How many times it was.
    parked: AtomicU64,
}

impl Signals {
    /// hyper waits for a request with everything sent and the exchange over.
    fn idle(&self, clock: &Clock) -> bool {
        self.read_blocked.load(Ordering::Relaxed)
            && !self.unflushed.load(Ordering::Relaxed)
            && clock.is_between_requests()
            && OPEN.load(Ordering::Relaxed) > PUT_AWAY_ABOVE.load(Ordering::Relaxed)
    }
}

/// A connection's stream as hyper sees it: reads start with what an earlier hyper
/// connection left unparsed, and the stream reports when it idles.
pub struct Idle<S> {
    io: S,
    prefix: Bytes,
    signals: Arc<Signals>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Idle<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            this.signals.read_blocked.store(false, Ordering::Relaxed);
            return Poll::Ready(Ok(()));
        }
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        this.signals
            .read_blocked
            .store(polled.is_pending(), Ordering::Relaxed);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Idle<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.signals.unflushed.store(true, Ordering::Relaxed);
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.signals.unflushed.store(true, Ordering::Relaxed);
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = flushed {
            self.signals.unflushed.store(false, Ordering::Relaxed);
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.signals.parking.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Serves HTTP/1.1 on a plain listener's TCP connection, hyper's state held only
/// while a request is under way or its response is being written.
pub async fn serve_http1<S>(stream: Timed<TcpStream>, clock: Arc<Clock>, service: S)
where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Unpin
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    serve_http1_signalled(stream, clock, service, Arc::default()).await;
}

async fn serve_http1_signalled<S>(
    stream: Timed<TcpStream>,
    clock: Arc<Clock>,
    service: S,
    signals: Arc<Signals>,
) where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Unpin
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let _open = Open::new();
    let mut io = Idle {
        io: stream,
        prefix: Bytes::new(),
        signals: Arc::clone(&signals),
    };
    let mut service = service;
    loop {
        // Boxed: while the connection idles, its task holds only the socket.
        let mut conn = Box::new(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades(),
        );
        let served = std::future::poll_fn(|cx| {
            loop {
                let polled = Pin::new(&mut *conn).poll(cx);
                if polled.is_ready()
                    || signals.parking.load(Ordering::Relaxed)
                    || !signals.idle(&clock)
                {
                    return polled;
                }
                // Idle: an idle hyper connection closes at once on a graceful
                // shutdown, which `Idle` keeps from reaching the socket.
                signals.parking.store(true, Ordering::Relaxed);
                Pin::new(&mut *conn).graceful_shutdown();
            }
        })
        .await;
        let put_away = signals.parking.swap(false, Ordering::Relaxed);
        let parts = match served {
            Ok(()) if put_away => conn.into_parts(),
            Ok(()) => None,
            Err(e) => {
                tracing::debug!(error = %e, "downstream connection ended with an error");
                None
            }
        };
        let Some(parts) = parts else {
            return;
        };
        signals.parked.fetch_add(1, Ordering::Relaxed);
        let hyper::server::conn::http1::Parts {
            io: parked,
            read_buf,
            service: kept,
            ..
        } = parts;
        io = parked.into_inner();
        // A copy, and `read_buf` dropped before waiting: it shares hyper's whole
        // read buffer, even when empty.
        io.prefix = Bytes::copy_from_slice(&read_buf);
        drop(read_buf);
        service = kept;
        signals.read_blocked.store(false, Ordering::Relaxed);
        // hyper read until it found nothing more, so what it left (if anything) is
        // not a whole head: wait for the client either way.
        if io.io.get_ref().readable().await.is_err() {
            return;
        }
    }
}

/// What a connection's first bytes say it speaks.
#[derive(Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// Not an HTTP/2 preface: HTTP/1.
    Http1,
    /// An HTTP/2 preface, or too few bytes yet to tell.
    Unsure,
    /// The client closed without a byte.
    Closed,
}

/// Looks at a connection's first bytes without taking them.
pub async fn sniff(stream: &TcpStream) -> Sniffed {
    let mut first = [0u8; 4];
    match stream.peek(&mut first).await {
        Ok(0) | Err(_) => Sniffed::Closed,
        // Four bytes rule most HTTP/1.1 out; a prefix of the preface is left to the
        // general path, which reads the whole preface.
        Ok(n) if PREFACE.starts_with(&first[..n]) => Sniffed::Unsure,
        Ok(_) => Sniffed::Http1,
    }
}

#[cfg(test)]
mod tests;
