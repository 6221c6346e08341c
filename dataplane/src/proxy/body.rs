//! Response bodies on their way down, streamed rather than buffered, so that large
//! downloads, server-streaming gRPC and trailers pass through as they arrive. Envoy
//! writes the access-log line when the stream ends; [`Logged`] does the same.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use std::future::Future;

use super::upstream::Lease;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every response the proxy gives.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body the proxy wrote itself.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Why an upstream body stopped early.
#[derive(Debug, thiserror::Error)]
pub enum Cut {
    #[error("the route timeout passed while the upstream response was streaming")]
    Timeout,
    #[error("the upstream connection failed mid-response: {0}")]
    Upstream(#[from] hyper::Error),
}

/// When a timeout runs out: a future, because Envoy's route timeout starts only once
/// the downstream request is complete.
pub type Expiry = Pin<Box<dyn Future<Output = ()> + Send>>;

/// An upstream response body: gives its pooled connection back when it ends, and
/// closes it when it fails, times out or is dropped unfinished.
pub struct Relayed {
    inner: Incoming,
    lease: Option<Lease>,
    /// The route timeout, which also bounds the body, as in Envoy.
    expiry: Option<Expiry>,
    /// Told once, if the upstream fails mid-body (outlier detection hears of it).
    on_failure: Option<Box<dyn FnOnce() + Send>>,
}

impl Relayed {
    pub fn new(
        inner: Incoming,
        lease: Lease,
        expiry: Option<Expiry>,
        on_failure: impl FnOnce() + Send + 'static,
    ) -> Self {
        Self {
            inner,
            lease: Some(lease),
            expiry,
            on_failure: Some(Box::new(on_failure)),
        }
    }
}

impl hyper::body::Body for Relayed {
    type Data = Bytes;
    type Error = Cut;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Cut>>> {
        let this = self.get_mut();
        if let Some(expiry) = this.expiry.as_mut()
            && expiry.as_mut().poll(cx).is_ready()
        {
            this.expiry = None;
            this.lease = None;
            return Poll::Ready(Some(Err(Cut::Timeout)));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                if let Some(lease) = this.lease.take() {
                    lease.finish(true);
                }
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.lease = None;
                if let Some(report) = this.on_failure.take() {
                    report();
                }
                Poll::Ready(Some(Err(Cut::Upstream(e))))
            }
            other => other.map(|f| f.map(|f| f.map_err(Cut::Upstream))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Relayed {
    fn drop(&mut self) {
        // A body hyper never polled because it was empty (a HEAD, a 204) ended well.
        if let Some(lease) = self.lease.take() {
            lease.finish(self.inner.is_end_stream());
        }
    }
}

/// How a response stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    Complete,
    /// The body failed: the upstream closed (`timeout: false`), or the route timeout
    /// passed.
    Failed {
        timeout: bool,
    },
    /// The downstream went away before the end.
    DownstreamGone,
}

type Done = Box<dyn FnOnce(End, u64) + Send>;

/// Calls `done` once, when the stream ends, with how it ended and how many body
/// bytes went down.
pub struct Logged {
    inner: Body,
    sent: u64,
    /// The body's length, when known from the start.
    length: Option<u64>,
    done: Option<Done>,
}

impl Logged {
    pub fn new(inner: Body, done: impl FnOnce(End, u64) + Send + 'static) -> Self {
        Self {
            length: inner.size_hint().exact(),
            inner,
            sent: 0,
            done: Some(Box::new(done)),
        }
    }

    fn end(&mut self, how: End) {
        if let Some(done) = self.done.take() {
            done(how, self.sent);
        }
    }
}

impl hyper::body::Body for Logged {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.end(End::Complete),
            Poll::Ready(Some(Err(e))) => {
                let timeout = matches!(e.downcast_ref::<Cut>(), Some(Cut::Timeout));
                this.end(End::Failed { timeout });
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.sent += data.len() as u64;
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if self.done.is_some() {
            // hyper does not poll a body it knows is empty, nor one of a HEAD reply,
            // nor, on HTTP/1.1, the trailers after a body of known length (which it
            // cannot send): the response went down whole.
            let how = if self.inner.is_end_stream() || self.length == Some(self.sent) {
                End::Complete
            } else {
                End::DownstreamGone
            };
            self.end(how);
        }
    }
}
