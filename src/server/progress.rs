//! Whether a response makes progress toward its client: the send deadline.
//!
//! A response body hands hyper one chunk of at most [`CHUNK`] bytes at a time and remembers
//! when it did; hyper comes back for the next chunk only once the client has taken (HTTP/2:
//! granted flow-control window for) the previous one. A chunk not taken within
//! `send_timeout` ends the response: an HTTP/2 stream is reset (`CANCEL`) by the watchdog
//! each stream runs under ([`StreamExec`]), an HTTP/1.1 connection is closed by its loop.
//!
//! Only what the client takes counts: PING, SETTINGS and WINDOW_UPDATE frames, and a
//! one-byte window now and then, do not keep a response alive. Time spent waiting for the
//! upstream is not the client's and does not count (`response_timeout` bounds it).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::body::ResponseBody;
use crate::telemetry::metrics::Metrics;

/// Largest chunk handed to hyper at once: the unit of progress. A client must take this much
/// per `send_timeout`.
pub(super) const CHUNK: usize = 16 * 1024;

/// When one response last handed a chunk to hyper that hyper has not come back for.
#[derive(Debug)]
pub(super) struct Progress {
    epoch: Instant,
    /// Milliseconds since `epoch`, plus one; 0 when nothing is owed.
    owed_since: AtomicU64,
}

/// A response body that hands out chunks of at most [`CHUNK`] bytes and records when the
/// client owes progress.
pub(super) struct Guarded<G> {
    body: ResponseBody,
    /// The rest of a data frame larger than [`CHUNK`].
    rest: Bytes,
    progress: Arc<Progress>,
    /// Kept for as long as the body lives (the request counts as in flight).
    _guard: G,
}

/// The runtime executor of one connection's HTTP/2 streams: each stream runs under a
/// watchdog that resets it when its response stops making progress.
#[derive(Clone)]
pub(super) struct StreamExec {
    /// The progress of the stream the service was just called for: hyper calls the service
    /// and then, at once and on the same task, spawns the stream.
    pub(super) next: Arc<Mutex<Option<Arc<Progress>>>>,
    pub(super) send_timeout: Duration,
    pub(super) metrics: Arc<Metrics>,
}

/// Resolves when the response under watch has owed progress for `timeout`.
struct Stalled {
    progress: Arc<Progress>,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

// === impl Progress ===

impl Progress {
    pub(super) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            owed_since: AtomicU64::new(0),
        }
    }

    fn owe(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.owed_since.store(ms + 1, Ordering::Relaxed);
    }

    fn settle(&self) {
        self.owed_since.store(0, Ordering::Relaxed);
    }

    /// Since when the client owes progress, if it does.
    pub(super) fn owed_since(&self) -> Option<Instant> {
        match self.owed_since.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.epoch + Duration::from_millis(ms - 1)),
        }
    }
}

// === impl Guarded ===

impl<G> Guarded<G> {
    pub(super) fn new(body: ResponseBody, progress: Arc<Progress>, guard: G) -> Self {
        Self {
            body,
            rest: Bytes::new(),
            progress,
            _guard: guard,
        }
    }

    fn hand_out(&mut self, mut data: Bytes) -> Bytes {
        if data.len() > CHUNK {
            self.rest = data.split_off(CHUNK);
        }
        self.progress.owe();
        data
    }
}

impl<G: Unpin> Body for Guarded<G> {
    type Data = Bytes;
    type Error = <ResponseBody as Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        // Hyper is back for more: the previous chunk was taken.
        this.progress.settle();
        if !this.rest.is_empty() {
            let rest = std::mem::take(&mut this.rest);
            return Poll::Ready(Some(Ok(Frame::data(this.hand_out(rest)))));
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => Poll::Ready(Some(Ok(Frame::data(this.hand_out(data))))),
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.body.size_hint();
        let rest = self.rest.remaining() as u64;
        if rest > 0 {
            hint.set_lower(hint.lower().saturating_add(rest));
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper.saturating_add(rest));
            }
        }
        hint
    }
}

// === impl StreamExec ===

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let progress = self.next.lock().ok().and_then(|mut next| next.take());
        let Some(progress) = progress else {
            tokio::spawn(fut);
            return;
        };
        let stalled = Stalled {
            progress,
            timeout: self.send_timeout,
            sleep: None,
        };
        let metrics = Arc::clone(&self.metrics);
        tokio::spawn(async move {
            tokio::select! {
                biased;
                _ = fut => {}
                () = stalled => {
                    // Dropping the stream resets it (CANCEL); the connection goes on.
                    // Regression: tests (it) abuse::h2_slow_reader_stream_is_reset
                    metrics.limit("send_timeout");
                    tracing::debug!("Response made no progress within send_timeout: stream reset");
                }
            }
        });
    }
}

// === impl Stalled ===

impl Future for Stalled {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Polled after the stream on every wake of the task, so it sees each change.
        let Some(since) = self.progress.owed_since() else {
            self.sleep = None;
            return Poll::Pending;
        };
        let deadline = since + self.timeout;
        let timeout = self.timeout;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        sleep.as_mut().poll(cx)
    }
}
