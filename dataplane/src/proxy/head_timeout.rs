//! Envoy's `request_headers_timeout` on an HTTP/1.1 connection, as Envoy 1.40 behaves
//! (checked against the binary): the timer starts at the first byte of each request
//! head, the first on the connection and each later one on a keep-alive connection,
//! and stops when the head is complete. When it runs out the client gets 408
//! `request header timeout` with `connection: close`, one access-log line says
//! `request_header_timeout`, and the connection closes. A connection that sends
//! nothing, or idles between requests, is not timed. HTTP/2 is not timed here.
//!
//! hyper's own `header_read_timeout` does not fit: it also runs on idle keep-alive
//! connections, and closes without a word. So the connection's reads are watched
//! here, and the request handler says when a head has been read ([`Clock::serving`])
//! and when the exchange is over ([`Clock::between_requests`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Envoy's local reply, word for word.
pub const TIMED_OUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 22\r\n\
content-type: text/plain\r\nconnection: close\r\n\r\nrequest header timeout";

/// The body of [`TIMED_OUT`], counted as Envoy counts `%BYTES_SENT%`.
pub const TIMED_OUT_BODY_BYTES: u64 = 22;

const BETWEEN: u8 = 0;
const READING_HEAD: u8 = 1;
const SERVING: u8 = 2;
const UNTIMED: u8 = 3;

/// Where a connection is: between requests, reading a head, or serving a request.
#[derive(Debug, Default)]
pub struct Clock(AtomicU8);

impl Clock {
    /// A request's head has been read.
    pub fn serving(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s != UNTIMED).then_some(SERVING)
            });
    }

    /// The request and its response are both over: the next byte begins a head.
    pub fn between_requests(&self) {
        let _ = self
            .0
            .compare_exchange(SERVING, BETWEEN, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Between requests: the last exchange is over and no new head has begun.
    pub fn is_between_requests(&self) -> bool {
        self.0.load(Ordering::Acquire) == BETWEEN
    }

    fn begin_head(&self) -> bool {
        self.0
            .compare_exchange(BETWEEN, READING_HEAD, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn reading_head(&self) -> bool {
        self.0.load(Ordering::Acquire) == READING_HEAD
    }

    fn untimed(&self) {
        self.0.store(UNTIMED, Ordering::Release);
    }
}

/// A connection's stream, its reads watched for request heads.
pub struct Timed<S> {
    io: S,
    clock: Arc<Clock>,
    timeout: Duration,
    /// Running while a head is being read.
    timer: Option<Pin<Box<Sleep>>>,
    /// The first bytes of the connection until it is known whether they are an
    /// HTTP/2 preface; `None` once it is.
    sniffed: Option<Vec<u8>>,
    on_timeout: Option<Box<dyn FnOnce() + Send>>,
    expired: bool,
}

/// What an HTTP/2 connection starts with: the whole preface, as hyper_util's
/// sniffing compares it. (A request line beginning `PRI ` is still HTTP/1.1 to it.)
pub(super) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl<S> Timed<S> {
    /// `on_timeout` is called once if a head times out (to log it).
    pub fn new(
        io: S,
        clock: Arc<Clock>,
        timeout: Duration,
        on_timeout: impl FnOnce() + Send + 'static,
    ) -> Self {
        Self {
            io,
            clock,
            timeout,
            timer: None,
            sniffed: Some(Vec::new()),
            on_timeout: Some(Box::new(on_timeout)),
            expired: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Looks at the connection's first bytes: an HTTP/2 preface is not timed.
    fn sniff(&mut self, read: &[u8]) {
        let Some(sniffed) = &mut self.sniffed else {
            return;
        };
        let take = (PREFACE.len() - sniffed.len()).min(read.len());
        sniffed.extend_from_slice(&read[..take]);
        if !PREFACE.starts_with(sniffed) {
            self.sniffed = None; // HTTP/1.1
        } else if sniffed.len() == PREFACE.len() {
            self.clock.untimed();
            self.timer = None;
            self.sniffed = None;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Timed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.expired {
            return Poll::Ready(Ok(())); // the end: hyper closes
        }
        if this.timer.is_some() && !this.clock.reading_head() {
            this.timer = None;
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                if !read.is_empty() {
                    this.sniff(read);
                    if this.clock.begin_head() {
                        this.timer = Some(Box::pin(tokio::time::sleep(this.timeout)));
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let Some(timer) = this.timer.as_mut() else {
                    return Poll::Pending;
                };
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.timer = None;
                this.expired = true;
                // Best effort, as the connection closes anyway: a fresh socket takes
                // these few bytes at once.
                let _ = Pin::new(&mut this.io).poll_write(cx, TIMED_OUT);
                let _ = Pin::new(&mut this.io).poll_flush(cx);
                if let Some(log) = this.on_timeout.take() {
                    log();
                }
                Poll::Ready(Ok(()))
            }
            failed @ Poll::Ready(Err(_)) => failed,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Timed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_connection_between_requests_starts_a_head() {
        let clock = Clock::default();
        assert!(clock.begin_head(), "a new connection is between requests");
        assert!(!clock.begin_head(), "already reading one");
        clock.serving();
        assert!(!clock.begin_head(), "a request body is not a head");
        clock.between_requests();
        assert!(clock.begin_head());
        clock.untimed();
        clock.serving();
        clock.between_requests();
        assert!(!clock.begin_head(), "HTTP/2 is never timed");
    }
}
