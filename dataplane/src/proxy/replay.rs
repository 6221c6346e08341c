//! Request bodies on their way up, handled as Envoy's router handles them: streamed to
//! the endpoint as they arrive (gRPC client and bidirectional streams, large uploads),
//! and kept so that a retry or a mirror can send them again. Kept only up to a limit:
//! past it nothing can be sent again, so retries and mirrors are given up (Envoy's
//! `retry_or_shadow_abandoned`) while the attempt under way streams on.
//!
//! Several [`Reader`]s may read one [`Replay`] at once (an attempt whose connection
//! still writes, its retry, a mirror). Whichever is at the end pulls the next frame
//! from the downstream body and keeps it for the others, so none of them waits on
//! another.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::body::BoxError;

/// How much of a request body is kept for retries and mirrors: Envoy's default
/// `per_connection_buffer_limit_bytes` (1 MiB), which bounds its router's retry
/// buffer (checked against Envoy 1.40 in `tests/envoy_differential.rs`). Whether
/// Istio sets another value on a waypoint's listener has not been checked.
pub const RETRY_BUFFER_LIMIT: usize = 1 << 20;

/// Why a [`Reader`] could not give its body.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("the downstream request body failed: {0}")]
    Downstream(String),
    #[error(
        "the request body went past the {RETRY_BUFFER_LIMIT}-byte retry buffer and cannot be sent again"
    )]
    NotKept,
}

/// One downstream request body, readable from the start by any number of readers.
#[derive(Clone)]
pub struct Replay {
    /// `None`: the body was empty from the start (most requests), so there is
    /// nothing to share.
    shared: Option<Arc<Shared>>,
    created: Instant,
}

struct Shared {
    state: Mutex<State>,
    /// Told when the downstream body ends.
    ended: Notify,
    /// The downstream body's size hint, which a reader starting at the beginning has.
    hint: SizeHint,
}

type Abandoned = Box<dyn FnOnce() + Send>;

struct State {
    source: UnsyncBoxBody<Bytes, BoxError>,
    /// Data frames kept, the first of them being frame number `first`.
    kept: Vec<Bytes>,
    first: usize,
    kept_bytes: usize,
    /// `None`: keep nothing (nothing would be sent again).
    limit: Option<usize>,
    /// Told once when the limit is passed.
    on_abandon: Option<Abandoned>,
    /// Body bytes read from downstream.
    received: u64,
    trailers: Option<HeaderMap>,
    end: Option<Ending>,
    /// When the downstream body ended (or failed): the route and per-try timeouts
    /// start there, as Envoy starts them once the request is complete.
    ended_at: Option<Instant>,
    /// Readers waiting for the next frame, woken when one of them gets it.
    waiting: Vec<Waker>,
}

#[derive(Clone)]
enum Ending {
    Complete,
    Failed(String),
}

impl State {
    fn keep(&mut self, data: &Bytes) {
        let fits = self
            .limit
            .is_some_and(|limit| self.first == 0 && self.kept_bytes + data.len() <= limit);
        if fits {
            self.kept.push(data.clone());
            self.kept_bytes += data.len();
            return;
        }
        // Past the limit (or not keeping): what was kept can no longer start a body.
        self.first += self.kept.len() + 1;
        self.kept = Vec::new();
        self.kept_bytes = 0;
        if let Some(abandoned) = self.on_abandon.take() {
            abandoned();
        }
    }

    fn next(&self) -> usize {
        self.first + self.kept.len()
    }

    fn wake_others(&mut self, cx: &Context<'_>) -> Vec<Waker> {
        let mut woken = std::mem::take(&mut self.waiting);
        woken.retain(|w| !w.will_wake(cx.waker()));
        woken
    }
}

impl Replay {
    pub fn new<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let created = Instant::now();
        if body.is_end_stream() {
            return Self {
                shared: None,
                created,
            };
        }
        let hint = body.size_hint();
        let state = State {
            source: body.map_err(Into::into).boxed_unsync(),
            kept: Vec::new(),
            first: 0,
            kept_bytes: 0,
            limit: Some(RETRY_BUFFER_LIMIT),
            on_abandon: None,
            received: 0,
            trailers: None,
            end: None,
            ended_at: None,
            waiting: Vec::new(),
        };
        Self {
            shared: Some(Arc::new(Shared {
                state: Mutex::new(state),
                ended: Notify::new(),
                hint,
            })),
            created,
        }
    }

    /// Whether to keep the body for sending again (no retry and no mirror: don't),
    /// and what to do when it outgrows the buffer.
    pub fn keep_for_resending(&self, keep: bool, on_abandon: impl FnOnce() + Send + 'static) {
        let Some(shared) = &self.shared else {
            return;
        };
        let mut state = shared.lock();
        if keep {
            state.on_abandon = Some(Box::new(on_abandon));
        } else {
            state.limit = None;
        }
    }

    /// A body that sends the request body from its start.
    pub fn reader(&self) -> Reader {
        Reader {
            replay: self.clone(),
            next: 0,
            trailers_sent: false,
        }
    }

    /// Whether the body was empty from the start (nothing to keep or wait for).
    pub fn is_empty(&self) -> bool {
        self.shared.is_none()
    }

    /// Whether the downstream body has ended (or failed).
    pub fn has_ended(&self) -> bool {
        self.shared
            .as_ref()
            .is_none_or(|s| s.lock().ended_at.is_some())
    }

    /// Whether a new reader would get the whole body.
    pub fn resendable(&self) -> bool {
        self.shared.as_ref().is_none_or(|s| s.lock().first == 0)
    }

    /// Body bytes read from downstream so far.
    pub fn received(&self) -> u64 {
        self.shared.as_ref().map_or(0, |s| s.lock().received)
    }

    /// When the downstream body ended or failed; waits for it.
    pub async fn ended(&self) -> Instant {
        let Some(shared) = &self.shared else {
            return self.created;
        };
        loop {
            // Made before looking, so that an end in between is not missed.
            let told = shared.ended.notified();
            if let Some(at) = shared.lock().ended_at {
                return at;
            }
            told.await;
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn finish(&self, state: &mut State, how: Ending) {
        state.end = Some(how);
        state.ended_at = Some(Instant::now());
        self.ended.notify_waiters();
    }
}

/// One reading of a [`Replay`]'s body: an attempt's, or a mirror's.
pub struct Reader {
    replay: Replay,
    /// The number of the next data frame to give.
    next: usize,
    trailers_sent: bool,
}

impl Body for Reader {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Reader {
            replay,
            next,
            trailers_sent,
        } = self.get_mut();
        let Some(shared) = replay.shared.as_deref() else {
            return Poll::Ready(None);
        };
        let mut state = shared.lock();
        if *next < state.first {
            return Poll::Ready(Some(Err(ReplayError::NotKept.into())));
        }
        if let Some(data) = state.kept.get(*next - state.first) {
            *next += 1;
            return Poll::Ready(Some(Ok(Frame::data(data.clone()))));
        }
        match state.end.clone() {
            Some(Ending::Complete) => {
                if !*trailers_sent && let Some(trailers) = state.trailers.clone() {
                    *trailers_sent = true;
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                return Poll::Ready(None);
            }
            Some(Ending::Failed(why)) => {
                return Poll::Ready(Some(Err(ReplayError::Downstream(why).into())));
            }
            None => {}
        }
        let polled = Pin::new(&mut state.source).poll_frame(cx);
        let result = match polled {
            Poll::Pending => {
                if !state.waiting.iter().any(|w| w.will_wake(cx.waker())) {
                    state.waiting.push(cx.waker().clone());
                }
                return Poll::Pending;
            }
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    state.received += data.len() as u64;
                    state.keep(&data);
                    *next = state.next();
                    Some(Ok(Frame::data(data)))
                }
                Err(frame) => {
                    let Ok(trailers) = frame.into_trailers() else {
                        // A frame kind this hyper does not know: nothing to pass on.
                        // Poll again at once.
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    };
                    state.trailers = Some(trailers.clone());
                    *trailers_sent = true;
                    shared.finish(&mut state, Ending::Complete);
                    Some(Ok(Frame::trailers(trailers)))
                }
            },
            Poll::Ready(None) => {
                shared.finish(&mut state, Ending::Complete);
                None
            }
            Poll::Ready(Some(Err(e))) => {
                shared.finish(&mut state, Ending::Failed(e.to_string()));
                Some(Err(e))
            }
        };
        let woken = state.wake_others(cx);
        drop(state);
        woken.into_iter().for_each(Waker::wake);
        Poll::Ready(result)
    }

    fn is_end_stream(&self) -> bool {
        let Some(shared) = &self.replay.shared else {
            return true;
        };
        let state = shared.lock();
        matches!(state.end, Some(Ending::Complete))
            && self.next == state.next()
            && (self.trailers_sent || state.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        if let Some(shared) = &self.replay.shared {
            if self.next == 0 && !self.trailers_sent {
                shared.hint
            } else {
                SizeHint::default()
            }
        } else {
            SizeHint::with_exact(0)
        }
    }
}

impl Drop for Reader {
    /// The downstream body may hold only this reader's waker: wake the others so one
    /// of them takes over reading.
    fn drop(&mut self) {
        if let Some(shared) = &self.replay.shared {
            let woken = std::mem::take(&mut shared.lock().waiting);
            woken.into_iter().for_each(Waker::wake);
        }
    }
}

#[cfg(test)]
mod tests;
