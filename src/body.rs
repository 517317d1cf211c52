//! Body types shared by the doors: streamed bodies with a size limit, and short static bodies.

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};

/// A streamed body that fails once more than its limit has passed through.
pub type LimitedBody<B> = http_body_util::Limited<B>;

/// A response body: a short generated one, the upstream's, streamed, or a gRPC door's.
pub type ResponseBody = Either<Full<Bytes>, Either<crate::upstream::PooledBody, GrpcBody>>;

/// A gRPC service's response body (the ext_authz door).
pub type GrpcBody = tonic::body::Body;

/// Boxed error as used by body combinators.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// A generated body.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Either::Left(Full::new(bytes.into()))
}

/// An upstream's body, streamed.
pub fn streamed(body: crate::upstream::PooledBody) -> ResponseBody {
    Either::Right(Either::Left(body))
}

/// A gRPC service's body.
pub fn grpc(body: GrpcBody) -> ResponseBody {
    Either::Right(Either::Right(body))
}

/// Any other body, boxed (tonic's body type is a boxed body): a watched stream.
pub fn boxed<B>(body: B) -> ResponseBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    Either::Right(Either::Right(GrpcBody::new(body)))
}

/// The largest data frame [`SmallFrames`] passes on: under the 1,024 bytes from which h2
/// writes a DATA frame out on its own (a stream without vectored writes, as
/// `server::tracked` makes every HTTP/2 connection's).
pub const SMALL_FRAME_BYTES: usize = 1023;

/// A body whose data comes in pieces of at most [`SMALL_FRAME_BYTES`] (cut without a copy).
///
/// Why: h2 copies a DATA frame below 1 KiB into its write buffer, where the answers to other
/// streams join it, but writes a larger one out before it buffers anything else (flushing
/// the socket). An allowed Check's answer (the `headers_to_remove` list) grew to 1,045
/// bytes, and each cost a write to the socket of its own: one `sendto` per Check where the
/// answers to a batch of Checks could share one. Cut in two, it joins the batch.
/// Regression: tests::small_frames_cut_data_and_keep_the_rest; the writes per Check, with
/// `strace -c` during bench/doors.sh
pub struct SmallFrames<B> {
    inner: B,
    /// What is left of the last data frame.
    rest: Bytes,
}

impl<B> SmallFrames<B> {
    pub fn new(inner: B) -> Self {
        Self {
            inner,
            rest: Bytes::new(),
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for SmallFrames<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let mut data = if this.rest.is_empty() {
            match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                other => return Poll::Ready(other),
            }
        } else {
            std::mem::take(&mut this.rest)
        };
        if data.len() > SMALL_FRAME_BYTES {
            this.rest = data.split_off(SMALL_FRAME_BYTES);
        }
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(rest));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint
    }
}

/// The reason of the [`Cut`] `err` is or wraps (a boxed body wraps its inner body's error).
pub fn cut_reason(err: &(dyn StdError + 'static)) -> Option<&'static str> {
    crate::errors::sources(err).find_map(|e| e.downcast_ref::<Cut>().map(|c| c.reason))
}

/// Whether `err` (or anything it wraps) is a body that went over its size limit.
pub fn is_length_limit(err: &(dyn StdError + 'static)) -> bool {
    crate::errors::sources(err)
        .any(|e| e.is::<http_body_util::LengthLimitError>() || e.is::<TooLarge>())
}

/// A response the gateway cut on purpose (its credential expired, a re-check denied it):
/// hyper resets an HTTP/2 stream with the reason it finds in a body error's sources, so this
/// one carries `CANCEL` (RFC 9113 §8.1's "the stream is no longer needed", the code the
/// slow-reader cut uses too), where any other error would be `INTERNAL_ERROR`, which says the
/// gateway failed. HTTP/1.1 closes the connection either way.
///
/// Regression: tests (it) edge::an_h2_stream_cut_by_its_credential_is_reset_with_cancel
#[derive(Debug, thiserror::Error)]
#[error("response cut: {reason}")]
pub struct Cut {
    /// Why (the limit it is counted in).
    pub reason: &'static str,
    #[source]
    code: h2::Error,
}

impl Cut {
    /// A cut for `reason`, boxed as a body error.
    pub fn boxed(reason: &'static str) -> BoxError {
        Box::new(Self {
            reason,
            code: h2::Error::from(h2::Reason::CANCEL),
        })
    }
}

/// How the client's side of a request body failed once forwarding began, recorded where the
/// proxy's rescue path and the upstream's verdict read it, since the exchange's error may not
/// say: an HTTP/2 upstream's stream is reset with `INTERNAL_ERROR` whatever the body's error
/// was, and hyper reports that reset, not the error.
///
/// Why: a streamed body over `server.max_body_bytes` to an HTTP/2 upstream was answered 502
/// `upstream_error` (gRPC 14) and counted against a healthy endpoint, which five such
/// requests ejected. Regression: tests (it) upstreams::an_h2_upstream_is_not_blamed_for_a_body_over_the_limit
#[derive(Debug, Default)]
pub struct ClientFault(AtomicU8);

impl ClientFault {
    /// Malformed framing or an aborted upload.
    const MALFORMED: u8 = 1;
    /// Over the size limit.
    const TOO_LARGE: u8 = 2;
    /// Cut: its credential expired while it streamed.
    const EXPIRED: u8 = 3;
    /// Cut: a re-check of its request denied it while it streamed.
    const DENIED: u8 = 4;

    fn set(&self, fault: u8) {
        self.0.store(fault, Ordering::Relaxed);
    }

    /// Whether the client's side failed, in any way.
    pub fn any(&self) -> bool {
        self.0.load(Ordering::Relaxed) != 0
    }

    /// Whether it went over the size limit.
    pub fn too_large(&self) -> bool {
        self.0.load(Ordering::Relaxed) == Self::TOO_LARGE
    }

    /// Why its credential's watch cut it (the reason it is counted under), if it did.
    pub fn cut(&self) -> Option<&'static str> {
        match self.0.load(Ordering::Relaxed) {
            Self::EXPIRED => Some(STREAM_EXPIRED),
            Self::DENIED => Some(STREAM_DENIED),
            _ => None,
        }
    }
}

/// Why a stream was cut when its credential expired (the limit it is counted in).
pub const STREAM_EXPIRED: &str = "stream_credential_expired";
/// Why a stream was cut when a re-check of its request denied it.
pub const STREAM_DENIED: &str = "stream_reauthorization_denied";

/// A request body over `server.max_body_bytes`.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("request body over the size limit")]
pub struct TooLarge;

/// The client's request body on its way upstream: the size limit applied, the frames already
/// read before the upstream request was sent ([`RequestBody::prefetch`]) replayed first, and a
/// failure of the client's side (malformed chunked framing, an abort) recorded where the door's
/// rescue path sees it, so it answers 400 rather than blaming the upstream with a 502.
///
/// Invariant: the size hint is exact only when the client's framing says so (a
/// `Content-Length`, or a body read to its end): the limit is never reported as a length, or
/// the upstream would get a body cut at the limit as if it were complete.
pub struct RequestBody {
    ready: VecDeque<Frame<Bytes>>,
    /// Bytes in `ready`.
    buffered: u64,
    inner: Option<hyper::body::Incoming>,
    /// Bytes the limit still allows from `inner`.
    remaining: usize,
    fault: Arc<ClientFault>,
    /// How the client's side is getting on, while it has more to send.
    progress: Option<Arc<Progress>>,
    /// Says why the body must end now (its credential's watch, `proxy::watched`).
    cut: Option<tokio::sync::oneshot::Receiver<&'static str>>,
    /// Its client's share of uploads ([`crate::server::uploads`]), held while the body is
    /// still arriving.
    share: Option<Arc<crate::server::uploads::Held>>,
    /// Marks the body as still arriving on its connection, until it ends or is dropped
    /// ([`crate::server::BodiesOpen`]).
    open: Option<crate::server::BodyOpen>,
}

/// How a streamed request body is moving, for the upstream exchange's clock (see
/// `Upstream::send`): when the client last gave a piece of it, whether it has given all of
/// it, and whether the body is waiting on the client (rather than the upstream on it).
///
/// Why: the response timeout ran from the request's start, upload included: a 30-second
/// upload through a healthy upstream got 504 `upstream_timeout`, and counted as a failure of
/// its endpoint, so a few slow uploads (or one client trickling bodies) ejected healthy
/// endpoints. The response timeout now starts when the body has all gone (as Envoy's route
/// timeout does), and a pause of the client's is its own fault (408), never the endpoint's.
/// Regression: tests (it) upstreams::a_slow_upload_is_not_an_upstream_timeout
#[derive(Debug)]
pub struct Progress {
    /// Since the request's start, the client's last piece (or the body's end).
    moved: crate::clock::Activity,
    /// The body has ended (or failed): nothing more is awaited from the client.
    done: AtomicBool,
    /// The body's last read found nothing yet from the client.
    waiting: AtomicBool,
    /// Bytes the client has given.
    bytes: std::sync::atomic::AtomicU64,
}

/// The slowest average a streaming request body may keep once its first `timeout` has
/// passed: each byte buys 2 ms (500 bytes a second, Apache `mod_reqtimeout`'s default
/// `MinRate`).
///
/// Why: with only a bound on each pause, a client sending a byte every 29 s held its
/// upstream exchange (a connection, a `max_connections` slot, an upstream worker) for as long
/// as it liked; before the timeout moved with the body, the whole exchange was capped at the
/// timeout, which failed every long upload.
/// Regression: tests (it) upstreams::a_slow_upload_is_not_an_upstream_timeout
const MICROS_PER_BYTE: u64 = 2_000;

/// Where a streamed request body stands (see [`Progress`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stand {
    /// All of it read, at this instant.
    Done(tokio::time::Instant),
    /// Waiting on the client since its last piece, at this instant.
    Client(tokio::time::Instant),
    /// Its last piece, at this instant, not yet taken by the upstream's side.
    Upstream(tokio::time::Instant),
}

impl Progress {
    fn new() -> Self {
        Self {
            moved: crate::clock::Activity::since(tokio::time::Instant::now()),
            done: AtomicBool::new(false),
            waiting: AtomicBool::new(false),
            bytes: Default::default(),
        }
    }

    /// When the body must have ended at the slowest rate allowed ([`MICROS_PER_BYTE`]), for
    /// a first allowance of `timeout`.
    pub fn rate_floor(&self, timeout: std::time::Duration) -> tokio::time::Instant {
        let earned = self
            .bytes
            .load(Ordering::Relaxed)
            .saturating_mul(MICROS_PER_BYTE);
        crate::clock::deadline_after(
            crate::clock::deadline_after(self.moved.start(), timeout),
            std::time::Duration::from_micros(earned),
        )
    }

    /// Whether the body has all arrived (or failed): nothing more is awaited from the client.
    pub fn ended(&self) -> bool {
        self.done.load(Ordering::Relaxed)
    }

    /// Where the body stands now.
    pub fn stand(&self) -> Stand {
        // The flags first: a body ending meanwhile leaves a later `last`, never an earlier.
        let done = self.done.load(Ordering::Relaxed);
        let waiting = self.waiting.load(Ordering::Relaxed);
        let last = self.moved.last();
        if done {
            Stand::Done(last)
        } else if waiting {
            Stand::Client(last)
        } else {
            Stand::Upstream(last)
        }
    }
}

/// Why a request body could not be read before forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefetchError {
    /// Malformed framing or an aborted upload (400).
    Malformed,
    /// More than the size limit (413).
    TooLarge,
    /// No byte of the body within the deadline (408).
    Timeout,
    /// The body must be waited for, and its client's share of uploads is taken, or all
    /// uploads' (503, [`crate::server::uploads`]).
    Busy(crate::server::uploads::Over),
}

/// Most bytes read ahead of forwarding: what is already there, never waiting for more.
const PREFETCH_MAX: u64 = 64 * 1024;

impl RequestBody {
    /// Reads the first frame of `body` (waiting at most `deadline`) and every further frame
    /// already received, up to 64 KiB, before anything is sent upstream: a body whose framing
    /// is broken in what arrived with the head (bad or negative chunk size, overflow, bare LF)
    /// is refused with nothing sent upstream.
    ///
    /// A body still to come once what is here is read (one to wait for, or to stream) first
    /// takes a share of its client's uploads from `share` ([`Self::share`]); one that came
    /// whole takes none.
    pub async fn prefetch(
        body: hyper::body::Incoming,
        open: &crate::server::BodiesOpen,
        limit: usize,
        deadline: std::time::Duration,
        share: impl FnOnce() -> Result<
            Option<crate::server::uploads::Upload>,
            crate::server::uploads::Over,
        >,
    ) -> Result<Self, PrefetchError> {
        let mut this = Self {
            ready: VecDeque::new(),
            buffered: 0,
            inner: (!body.is_end_stream()).then_some(body),
            remaining: limit,
            fault: Arc::default(),
            progress: None,
            cut: None,
            share: None,
            open: None,
        };
        if this.inner.is_some() {
            this.progress = Some(Arc::new(Progress::new()));
            this.open = Some(open.mark());
        }
        let mut share = Some(share);
        let mut first = true;
        while this.inner.is_some() && this.buffered < PREFETCH_MAX {
            // What is already here, never waiting.
            let here = poll_fn(|cx| {
                Poll::Ready(match this.poll_inner(cx) {
                    Poll::Pending => None,
                    Poll::Ready(f) => Some(f),
                })
            })
            .await;
            let step = match here {
                Some(f) => Some(f),
                // Only the first frame is waited for; after it, only what is already here.
                None if !first => None,
                None => {
                    // Why first: a wait holds the request's `max_in_flight` permit.
                    if let Some(take) = share.take() {
                        this.hold(take().map_err(PrefetchError::Busy)?);
                    }
                    let wait = poll_fn(|cx| this.poll_inner(cx));
                    Some(
                        tokio::time::timeout(deadline, wait)
                            .await
                            .map_err(|_| PrefetchError::Timeout)?,
                    )
                }
            };
            first = false;
            match step {
                None => break,
                Some(None) => this.inner = None,
                Some(Some(Err(e))) if is_length_limit(&*e) => return Err(PrefetchError::TooLarge),
                Some(Some(Err(_))) => return Err(PrefetchError::Malformed),
                Some(Some(Ok(f))) => {
                    this.buffered += f.data_ref().map_or(0, |d| d.len() as u64);
                    this.ready.push_back(f);
                }
            }
        }
        // Still to come: it streams, and holds a share while it does.
        if this.inner.is_some()
            && let Some(take) = share.take()
        {
            this.hold(take().map_err(PrefetchError::Busy)?);
        }
        // Why: a prefetch ending on the client's pause left `waiting` set while the upstream's
        // side took the frames read ahead, so a stuck upstream's lateness was blamed on the
        // client (408, the endpoint's failure unrecorded). `waiting` is what the consumer's
        // own polls find.
        if let Some(p) = &this.progress {
            p.waiting.store(false, Ordering::Relaxed);
        }
        Ok(this)
    }

    /// No body: a request the gateway makes itself (a health check), or the repeat of a
    /// bodiless request.
    pub fn empty() -> Self {
        Self {
            ready: VecDeque::new(),
            buffered: 0,
            inner: None,
            remaining: 0,
            fault: Arc::default(),
            progress: None,
            cut: None,
            share: None,
            open: None,
        }
    }

    /// Holds `share` while the client has more to send: given back when the body ends (or is
    /// dropped).
    fn hold(&mut self, share: Option<crate::server::uploads::Upload>) {
        self.share = share.map(crate::server::uploads::Held::new);
    }

    /// The share of its client's uploads the body holds, if it took one: for the request to
    /// give back when its answer begins ([`crate::server::uploads::Held::release`]).
    pub fn share(&self) -> Option<Arc<crate::server::uploads::Held>> {
        self.share.clone()
    }

    /// Whether the client has more to send than was read ahead ([`Self::prefetch`]).
    pub fn streams(&self) -> bool {
        self.inner.is_some()
    }

    /// Ends the body with an error ([`Cut`]) when `cut` says why: the upstream sees an
    /// aborted upload, and the fault says why ([`ClientFault::cut`]).
    pub fn cut_by(&mut self, cut: tokio::sync::oneshot::Receiver<&'static str>) {
        self.cut = Some(cut);
    }

    /// How the client's side of the body failed after forwarding began, if it did.
    pub fn fault(&self) -> Arc<ClientFault> {
        Arc::clone(&self.fault)
    }

    /// How the client's side is moving, if it has more to send (`None`: all of it is here).
    pub fn progress(&self) -> Option<Arc<Progress>> {
        self.progress.as_ref().filter(|p| !p.ended()).cloned()
    }

    /// The client's side has ended (`clean`: read to its end), or failed: nothing more is
    /// awaited from it.
    fn ended(&mut self, clean: bool) {
        self.inner = None;
        if let Some(open) = self.open.take()
            && clean
        {
            open.ended();
        }
        if let Some(share) = self.share.take() {
            share.release();
        }
        if let Some(p) = &self.progress {
            p.moved.touch();
            p.done.store(true, Ordering::Relaxed);
        }
    }

    /// The next frame of the client's body, with the size limit applied.
    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if let Some(p) = &self.progress {
            p.waiting.store(polled.is_pending(), Ordering::Relaxed);
        }
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                self.ended(true);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.fault.set(ClientFault::MALFORMED);
                self.ended(false);
                Poll::Ready(Some(Err(Box::new(e))))
            }
            // Why: the decision never saw the client's trailer fields, and an upstream that
            // merges them into the header section (as many frameworks do) took a client's
            // `x-user-id` or second `Authorization` there for the gateway's: request trailers
            // end the body here and are not forwarded.
            // Regression: tests (it) upstreams::request_trailers_are_not_forwarded
            Poll::Ready(Some(Ok(f))) if f.is_trailers() => {
                self.ended(true);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(f))) => {
                let len = f.data_ref().map_or(0, Bytes::len);
                match self.remaining.checked_sub(len) {
                    Some(r) => {
                        self.remaining = r;
                        if let Some(p) = &self.progress {
                            p.moved.touch();
                            p.bytes.fetch_add(len as u64, Ordering::Relaxed);
                        }
                        // Why: the last frame of a body with a length (HTTP/1.1
                        // `Content-Length`, HTTP/2 `END_STREAM`) leaves the body at its end,
                        // and a consumer that trusts `is_end_stream` (hyper's client) never
                        // polls it again: it must end here, or it was taken for abandoned
                        // (its connection never parked again, its exchange not finished
                        // after a reset: one upstream connection per reset POST).
                        // Regression: tests (it)
                        // abuse::paced_rapid_reset_of_whole_posts_reuses_upstream_connections,
                        // abuse::a_connection_after_a_streamed_body_is_parked_when_idle
                        if self.inner.as_ref().is_some_and(Body::is_end_stream) {
                            self.ended(true);
                        }
                        Poll::Ready(Some(Ok(f)))
                    }
                    None => {
                        self.fault.set(ClientFault::TOO_LARGE);
                        self.ended(false);
                        Poll::Ready(Some(Err(Box::new(TooLarge))))
                    }
                }
            }
        }
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(cut) = this.cut.as_mut()
            && let Poll::Ready(said) = Pin::new(cut).poll(cx)
        {
            this.cut = None;
            if let Ok(reason) = said {
                this.fault.set(match reason {
                    STREAM_DENIED => ClientFault::DENIED,
                    _ => ClientFault::EXPIRED,
                });
                this.ready.clear();
                this.buffered = 0;
                this.ended(false);
                return Poll::Ready(Some(Err(Cut::boxed(reason))));
            }
        }
        if let Some(f) = this.ready.pop_front() {
            this.buffered -= f.data_ref().map_or(0, |d| d.len() as u64);
            if let Some(p) = &this.progress {
                p.waiting.store(false, Ordering::Relaxed);
                p.moved.touch();
            }
            return Poll::Ready(Some(Ok(f)));
        }
        this.poll_inner(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_empty() && self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        // The client's own framing, never the limit (see the type's invariant).
        // Regression: tests (it) proxy::body_over_limit_is_413
        let Some(inner) = &self.inner else {
            return SizeHint::with_exact(self.buffered);
        };
        let h = inner.size_hint();
        let mut out = SizeHint::new();
        out.set_lower(h.lower().saturating_add(self.buffered));
        if let Some(u) = h.upper() {
            out.set_upper(u.saturating_add(self.buffered));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    /// Data frames over [`SMALL_FRAME_BYTES`] come in pieces, in order, none lost; smaller
    /// ones and trailers pass as they are; the size hint counts what is held back.
    #[tokio::test]
    async fn small_frames_cut_data_and_keep_the_rest() {
        let long: Vec<u8> = (0..2500u32).map(|i| (i % 251) as u8).collect();
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from(long.clone()))),
            Ok(Frame::data(Bytes::from_static(b"short"))),
            Ok(Frame::trailers(trailers.clone())),
        ];
        let inner = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let mut body = SmallFrames::new(inner);
        let mut sizes = Vec::new();
        let mut data = Vec::new();
        let mut got_trailers = None;
        while let Some(frame) = body.frame().await {
            match frame.unwrap().into_data() {
                Ok(d) => {
                    sizes.push(d.len());
                    data.extend_from_slice(&d);
                    if d.len() == SMALL_FRAME_BYTES {
                        assert!(!body.is_end_stream(), "the rest is still to come");
                        assert!(body.size_hint().lower() >= (long.len() - data.len()) as u64);
                    }
                }
                Err(f) => got_trailers = f.into_trailers().ok(),
            }
        }
        assert_eq!(sizes, [1023, 1023, 454, 5]);
        assert_eq!(data, [&long[..], b"short"].concat());
        assert_eq!(got_trailers, Some(trailers));

        // A body that fits is one frame, untouched.
        let mut whole = SmallFrames::new(Full::new(Bytes::from_static(b"ok")));
        assert_eq!(whole.size_hint().exact(), Some(2));
        let f = whole.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "ok");
        assert!(whole.is_end_stream());
    }
}
