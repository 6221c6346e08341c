use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::{BodyExt, Empty, Full};
use tokio::sync::mpsc;

use super::*;

/// A downstream body fed frame by frame by the test.
struct Feed(mpsc::UnboundedReceiver<Result<Frame<Bytes>, BoxError>>);

impl Body for Feed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx)
    }
}

type Tx = mpsc::UnboundedSender<Result<Frame<Bytes>, BoxError>>;

fn feed() -> (Tx, Replay) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, Replay::new(Feed(rx)))
}

fn data(tx: &Tx, s: &'static str) {
    tx.send(Ok(Frame::data(Bytes::from_static(s.as_bytes()))))
        .unwrap();
}

async fn frame(r: &mut Reader) -> Option<Result<Frame<Bytes>, BoxError>> {
    r.frame().await
}

async fn next_data(r: &mut Reader) -> Bytes {
    frame(r).await.unwrap().unwrap().into_data().unwrap()
}

#[tokio::test]
async fn a_second_reader_gets_the_whole_body_and_its_trailers() {
    let (tx, replay) = feed();
    data(&tx, "hello ");
    data(&tx, "world");
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    tx.send(Ok(Frame::trailers(trailers.clone()))).unwrap();
    let first = replay.reader().collect().await.unwrap();
    assert_eq!(first.trailers(), Some(&trailers));
    assert_eq!(first.to_bytes(), "hello world");
    let second = replay.reader();
    assert!(!second.is_end_stream());
    let second = second.collect().await.unwrap();
    assert_eq!(second.trailers(), Some(&trailers));
    assert_eq!(second.to_bytes(), "hello world");
    assert!(replay.resendable());
    assert_eq!(replay.received(), 11);
}

#[tokio::test]
async fn readers_at_different_points_share_what_was_read() {
    let (tx, replay) = feed();
    let (mut a, mut b) = (replay.reader(), replay.reader());
    data(&tx, "1");
    assert_eq!(next_data(&mut a).await, "1");
    data(&tx, "2");
    // `b` is behind: it is given the kept frame, then pulls the next one itself.
    assert_eq!(next_data(&mut b).await, "1");
    assert_eq!(next_data(&mut b).await, "2");
    assert_eq!(next_data(&mut a).await, "2");
    drop(tx);
    assert!(frame(&mut a).await.is_none());
    assert!(frame(&mut b).await.is_none());
    assert!(a.is_end_stream() && b.is_end_stream());
    assert_eq!(replay.received(), 2);
}

#[tokio::test]
async fn past_the_limit_nothing_is_resent_and_the_reader_streams_on() {
    let (tx, replay) = feed();
    let abandoned = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&abandoned);
    replay.keep_for_resending(true, move || {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    let mut a = replay.reader();
    let half = Bytes::from(vec![b'x'; RETRY_BUFFER_LIMIT / 2 + 1]);
    tx.send(Ok(Frame::data(half.clone()))).unwrap();
    assert_eq!(next_data(&mut a).await.len(), half.len());
    assert!(replay.resendable(), "half the limit is kept");
    let mut late = replay.reader();
    assert_eq!(next_data(&mut late).await.len(), half.len());
    tx.send(Ok(Frame::data(half.clone()))).unwrap();
    assert_eq!(next_data(&mut a).await.len(), half.len());
    assert!(!replay.resendable());
    assert_eq!(abandoned.load(Ordering::Relaxed), 1);
    // A reader that missed the frame past the limit cannot go on; a new one cannot start.
    let err = frame(&mut late).await.unwrap().unwrap_err();
    assert!(err.to_string().contains("retry buffer"), "{err}");
    assert!(frame(&mut replay.reader()).await.unwrap().is_err());
    // The reader that went past it reads the rest.
    data(&tx, "tail");
    assert_eq!(next_data(&mut a).await, "tail");
    drop(tx);
    assert!(frame(&mut a).await.is_none());
    assert_eq!(abandoned.load(Ordering::Relaxed), 1, "told once");
    assert_eq!(replay.received(), 2 * half.len() as u64 + 4);
}

#[tokio::test]
async fn nothing_is_kept_when_nothing_would_resend_it() {
    let (tx, replay) = feed();
    replay.keep_for_resending(false, || panic!("not keeping is not abandoning"));
    let mut a = replay.reader();
    data(&tx, "once");
    assert_eq!(next_data(&mut a).await, "once");
    assert!(!replay.resendable());
    drop(tx);
    assert!(frame(&mut a).await.is_none());
}

#[tokio::test]
async fn an_empty_body_has_ended_before_anyone_reads_it() {
    let replay = Replay::new(Empty::<Bytes>::new());
    assert!(replay.is_empty() && replay.resendable());
    let reader = replay.reader();
    assert!(reader.is_end_stream());
    let ended = replay.ended().await;
    assert!(ended <= Instant::now());
    let full = Replay::new(Full::new(Bytes::from_static(b"abc")));
    assert_eq!(full.reader().size_hint().exact(), Some(3));
}

#[tokio::test]
async fn ended_waits_for_the_end_of_the_downstream_body() {
    let (tx, replay) = feed();
    let waiting = tokio::spawn({
        let replay = replay.clone();
        async move { replay.ended().await }
    });
    let mut a = replay.reader();
    data(&tx, "x");
    next_data(&mut a).await;
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    drop(tx);
    assert!(frame(&mut a).await.is_none());
    waiting.await.unwrap();
}

#[tokio::test]
async fn a_downstream_failure_reaches_every_reader() {
    let (tx, replay) = feed();
    let (mut a, mut b) = (replay.reader(), replay.reader());
    tx.send(Err("client reset".into())).unwrap();
    assert!(frame(&mut a).await.unwrap().is_err());
    let err = frame(&mut b).await.unwrap().unwrap_err();
    assert!(err.to_string().contains("client reset"), "{err}");
    replay.ended().await;
}

#[tokio::test]
async fn a_reader_dropped_while_waiting_hands_the_wait_to_the_others() {
    let (tx, replay) = feed();
    let a = tokio::spawn({
        let replay = replay.clone();
        async move {
            replay
                .reader()
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes)
        }
    });
    tokio::task::yield_now().await;
    // `b` polls last, so the downstream body holds only its waker; then it goes away.
    let mut b = replay.reader();
    assert!(futures_poll_once(&mut b).is_pending());
    drop(b);
    data(&tx, "for a");
    drop(tx);
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), a)
        .await
        .expect("the remaining reader was woken")
        .unwrap()
        .unwrap();
    assert_eq!(got, "for a");
}

fn futures_poll_once(r: &mut Reader) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
    let waker = Waker::noop();
    Pin::new(r).poll_frame(&mut Context::from_waker(waker))
}
