//! The first request's headers on a new connection, read before hyper takes the
//! connection over. A client that has not sent them within the listener's
//! `requestHeadersTimeout` is answered 408 and closed, as Envoy's
//! `request_headers_timeout` does; hyper alone would close without a word. HTTP/2
//! (its connection preface) and anything that is not going to be a header block
//! are handed to hyper at once, with the bytes already read.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Envoy's local reply for a request-headers timeout.
const TIMED_OUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 15\r\n\
content-type: text/plain\r\nconnection: close\r\n\r\nrequest timeout";

/// What hyper's parser refuses with 431 is beyond this anyway.
const MAX_HEAD: usize = 64 * 1024;

/// Reads until the first header block is complete, then returns the connection with
/// those bytes put back; `None` once a 408 went out instead.
pub async fn read<S>(mut io: S, timeout: Duration) -> Option<Rewind<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let deadline = tokio::time::Instant::now() + timeout;
    // On the heap, not in this future: the connection's task keeps its largest state
    // for as long as the connection lives.
    let mut head = Vec::new();
    while !handed_over(&head) {
        head.reserve(2048);
        match tokio::time::timeout_at(deadline, io.read_buf(&mut head)).await {
            Ok(Ok(0) | Err(_)) => break, // hyper sees the end and closes
            Ok(Ok(_)) => {}
            Err(_) => {
                let _ = io.write_all(TIMED_OUT).await;
                let _ = io.shutdown().await;
                return None;
            }
        }
    }
    Some(Rewind {
        prefix: Bytes::from(head),
        io,
    })
}

/// Whether hyper should take over: a complete HTTP/1 head, an HTTP/2 preface, or
/// bytes that will never end a head (too many, or not HTTP/1 at all).
fn handed_over(head: &[u8]) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0";
    let h2 = head.len() >= PREFACE.len() && head.starts_with(PREFACE);
    let request_line_is_http = head
        .iter()
        .take_while(|&&b| b != b' ')
        .all(u8::is_ascii_uppercase);
    h2 || !request_line_is_http
        || head.len() >= MAX_HEAD
        || head.windows(4).any(|w| w == b"\r\n\r\n")
}

/// A stream with bytes already read from it put back in front.
pub struct Rewind<S> {
    prefix: Bytes,
    io: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if !self.prefix.has_remaining() {
                // Free the head's buffer: a keep-alive connection lives long.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
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
    use super::handed_over;

    #[test]
    fn hyper_takes_over_at_the_end_of_the_head_or_at_once_when_it_is_not_one() {
        assert!(!handed_over(b""));
        assert!(!handed_over(b"GET / HTTP/1.1\r\nhost: a\r\n"));
        assert!(handed_over(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"));
        assert!(handed_over(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert!(
            !handed_over(b"PRI * HT"),
            "a preface not yet complete waits"
        );
        assert!(
            handed_over(b"\x16\x03\x01"),
            "TLS on a plain port is not a head"
        );
        assert!(handed_over(&vec![b'A'; 64 * 1024]));
    }
}
