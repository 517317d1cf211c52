//! Keep-alive connections to one upstream, without a global lock per request beyond one short
//! uncontended mutex, and without the generic client's per-request bookkeeping.
//!
//! One pool per endpoint (one address of an upstream).
//!
//! HTTP/1: idle connections wait in a queue; a request takes a ready one or opens a new one,
//! and the connection goes back when the response body ends. HTTP/2 (by ALPN, or with prior
//! knowledge for `h2c`): shared connections, multiplexed, each carrying at most the streams its
//! upstream allows (`SETTINGS_MAX_CONCURRENT_STREAMS`); another is opened when all are full.
//!
//! A failed exchange says what may be sent again: a request that never left (connect failure,
//! a connection closed before it was written) comes back in [`Failed::unsent`]; a bodiless
//! idempotent request that went out on a reused connection, which the upstream may have
//! closed as the request arrived, comes back rebuilt in [`Failed::repeat`]. The caller
//! decides whether to retry.
//!
//! A client that gives up (an HTTP/2 stream reset, a closed connection) drops its request at
//! any point; that must not cost an upstream connection. A connect under way finishes in the
//! background and its connection joins the pool; an HTTP/1 exchange under way is finished in
//! the background, its response body read and discarded up to [`DRAIN_BYTES`] within
//! [`DRAIN_TIME`], and the connection goes back to the pool (closed only past those bounds).

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::{TrySendError, http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

use super::UpstreamBody;

mod upgrade;

/// Largest read buffer of an HTTP/1 upstream connection (hyper's default grows to 400 KiB);
/// also the largest response head an upstream may send.
const UPSTREAM_READ_BUF: usize = 32 * 1024;
/// Response body bytes read and discarded to keep the connection of an abandoned exchange.
///
/// Why 1 MiB: at 64 KiB, each reset stream of a 1 MB answer closed its upstream connection
/// (an outside run: 301 new connections for 302 requests under a paced rapid reset). Reading
/// and discarding a MiB on the same machine costs less than a new connection, a TLS one
/// above all, and no more of the upstream than the same request read whole. (Envoy's
/// per-connection buffer limit is a MiB too.) Regression: tests (it)
/// abuse::paced_rapid_reset_of_large_answers_reuses_upstream_connections
const DRAIN_BYTES: usize = 1024 * 1024;
/// Time an abandoned exchange gets (response head and drained body) to keep its connection.
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Why an exchange with the upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// TCP connect refused or failed.
    #[error("connect failed: {0}")]
    Connect(#[source] std::io::Error),
    /// TCP (and TLS) connect did not finish in time.
    #[error("connect timed out")]
    ConnectTimeout,
    /// TLS handshake failed (untrusted certificate, wrong name, protocol).
    #[error("tls handshake failed: {0}")]
    Tls(#[source] std::io::Error),
    /// The HTTP exchange failed.
    #[error("http exchange failed: {0}")]
    Http(#[source] hyper::Error),
    /// The upstream answered with a status outside 100–599, or switched protocols unasked.
    #[error("invalid response status {0}")]
    InvalidStatus(u16),
    /// The upstream's answer is framed with a transfer coding other than `chunked` alone,
    /// which the gateway cannot pass on.
    #[error("unsupported transfer coding in the response")]
    InvalidFraming,
    /// No endpoint to send to (every name unresolved).
    #[error("no endpoint")]
    NoEndpoint,
    /// No response head within the response timeout.
    #[error("no response in time")]
    Timeout,
    /// The endpoint has its `max_connections` open, and none came free in time (the connect
    /// timeout, or before the response deadline).
    #[error("every connection the endpoint may have is busy")]
    Busy,
    /// The client paused its request body longer than the response timeout: its own
    /// lateness, not the endpoint's.
    #[error("the client's request body stalled")]
    BodyStalled,
    /// An upgrade for an upstream that speaks HTTP/2 (an upgrade needs HTTP/1.1): the
    /// endpoint is healthy, the route cannot be served.
    #[error("the upstream speaks HTTP/2; an upgrade needs HTTP/1.1")]
    UpgradeOverH2,
}

impl SendError {
    /// The client's status and the reason code (`upstream_errors_total{kind}`).
    pub fn status_and_kind(&self) -> (http::StatusCode, &'static str) {
        use http::StatusCode;
        match self {
            Self::ConnectTimeout => (StatusCode::GATEWAY_TIMEOUT, "upstream_connect_timeout"),
            Self::Connect(_) => (StatusCode::BAD_GATEWAY, "upstream_unavailable"),
            Self::Tls(_) => (StatusCode::BAD_GATEWAY, "upstream_tls"),
            // A status below 100: hyper refuses it before `check_status` sees it.
            Self::Http(h) if h.is_parse_status() => {
                (StatusCode::BAD_GATEWAY, "upstream_invalid_response")
            }
            Self::Http(h) if is_tls_alert(h) => (StatusCode::BAD_GATEWAY, "upstream_tls"),
            // Why: h2 refuses a malformed answer itself (a `:status` of 101 or below 100), as
            // a protocol error it found; the client was told `upstream_error` where the same
            // answer over HTTP/1.1 is `upstream_invalid_response`.
            // Regression: tests (it) upstreams::invalid_upstream_status_over_h2_is_502_invalid_response
            Self::Http(h) if is_h2_malformed(h) => {
                (StatusCode::BAD_GATEWAY, "upstream_invalid_response")
            }
            Self::Http(_) => (StatusCode::BAD_GATEWAY, "upstream_error"),
            Self::InvalidStatus(_) | Self::InvalidFraming => {
                (StatusCode::BAD_GATEWAY, "upstream_invalid_response")
            }
            Self::NoEndpoint => (StatusCode::SERVICE_UNAVAILABLE, "upstream_no_endpoint"),
            Self::Timeout => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            Self::Busy => (StatusCode::SERVICE_UNAVAILABLE, "upstream_busy"),
            Self::BodyStalled => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            Self::UpgradeOverH2 => (StatusCode::BAD_GATEWAY, "upstream_upgrade_unsupported"),
        }
    }
}

/// How long a request may wait for a connection slot at an endpoint's `max_connections`:
/// `connect_timeout`, and never up to the response deadline.
///
/// Why: a wait reaching the deadline answered 504 `upstream_timeout` and ejected the busy
/// endpoint. Regression: tests (it) upstreams::max_connections_wait_ends_before_the_response_deadline
pub(super) fn slot_wait_until(
    connect_timeout: Duration,
    deadline: tokio::time::Instant,
) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    let before_deadline = deadline
        .checked_sub(Duration::from_millis(20))
        .unwrap_or(now)
        .max(now);
    (now + connect_timeout).min(before_deadline)
}

/// Whether an exchange failed on a TLS alert from the upstream.
///
/// Why: in TLS 1.3 the client's handshake is over before the server checks its certificate,
/// so an upstream refusing the gateway's (none sent, an untrusted one) says so at the first
/// read, as an exchange error: it was reported `upstream_error`, not the `upstream_tls` a
/// wrong CA or name gets. Regression: tests (it) upstreams::upstream_mtls_with_a_private_ca
/// Whether h2 found the upstream's HTTP/2 malformed (a protocol error it detected, not one the
/// upstream sent).
fn is_h2_malformed(e: &hyper::Error) -> bool {
    crate::errors::sources(e)
        .find_map(|s| s.downcast_ref::<h2::Error>())
        .is_some_and(|e| e.is_library() && e.reason() == Some(h2::Reason::PROTOCOL_ERROR))
}

fn is_tls_alert(e: &hyper::Error) -> bool {
    crate::errors::sources(e).skip(1).any(|s| {
        s.is::<rustls::Error>()
            || s.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.is::<rustls::Error>())
    })
}

/// A failed exchange, and what the caller needs to decide on a retry.
pub(super) struct Failed {
    /// What went wrong.
    pub(super) error: SendError,
    /// The request, when it certainly never reached the upstream.
    pub(super) unsent: Option<Box<Request<UpstreamBody>>>,
    /// The request rebuilt, when it may have reached the upstream but is safe to repeat: a
    /// bodiless `GET`, `HEAD`, `OPTIONS`, `PUT` or `DELETE` whose pooled connection broke.
    pub(super) repeat: Option<Box<Request<UpstreamBody>>>,
}

impl std::fmt::Debug for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Failed")
            .field("error", &self.error)
            .field("unsent", &self.unsent.is_some())
            .field("repeat", &self.repeat.is_some())
            .finish()
    }
}

impl Failed {
    fn unsent(error: SendError, req: Request<UpstreamBody>) -> Self {
        Self {
            error,
            unsent: Some(Box::new(req)),
            repeat: None,
        }
    }
}

/// Where an endpoint is: an address, or a name resolved at each connect (until the
/// upstream's resolver has its addresses).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Addr {
    /// An address.
    Ip(SocketAddr),
    /// `name:port`.
    Name(Arc<str>),
}

/// The HTTP version spoken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    /// HTTP/1.1, or HTTP/2 when TLS's ALPN picks it.
    Negotiated,
    /// HTTP/2 with prior knowledge over cleartext.
    H2c,
}

/// TLS to the upstream: the client config and the name sent and verified.
pub(super) struct TlsTarget {
    /// The client config (trust, client certificate, ALPN).
    pub(super) connector: tokio_rustls::TlsConnector,
    /// SNI and the name the certificate must hold.
    pub(super) name: ServerName<'static>,
}

/// How to reach the upstream.
pub(super) struct Target {
    /// Where to connect.
    pub(super) addr: Addr,
    /// TLS settings for https upstreams, with the name to verify.
    pub(super) tls: Option<Arc<TlsTarget>>,
    /// HTTP/1.1 (or ALPN's choice), or h2c.
    pub(super) protocol: Protocol,
    /// Scheme and authority, for HTTP/2 requests' pseudo-headers.
    pub(super) scheme: http::uri::Scheme,
    pub(super) authority: http::uri::Authority,
    pub(super) idle_timeout: Duration,
    pub(super) max_idle: usize,
    /// Bounds the background completion of an abandoned exchange (with [`DRAIN_TIME`]).
    pub(super) response_timeout: Duration,
    /// HTTP/2 keep-alive PINGs, when configured.
    pub(super) h2_keepalive: Option<H2Keepalive>,
    /// The most connections open to this address at once (pooled, busy and tunnels).
    pub(super) max_connections: Option<usize>,
}

/// HTTP/2 keep-alive PINGs on an upstream connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct H2Keepalive {
    pub(super) interval: Duration,
    pub(super) timeout: Duration,
    pub(super) while_idle: bool,
}

/// What every endpoint's pool of an upstream shares; only the address differs.
#[derive(Clone)]
pub(super) struct Template {
    pub(super) tls: Option<Arc<TlsTarget>>,
    pub(super) protocol: Protocol,
    pub(super) scheme: http::uri::Scheme,
    pub(super) authority: http::uri::Authority,
    pub(super) idle_timeout: Duration,
    pub(super) max_idle: usize,
    pub(super) response_timeout: Duration,
    pub(super) h2_keepalive: Option<H2Keepalive>,
    pub(super) max_connections: Option<usize>,
}

impl Template {
    /// The pool of one address.
    pub(super) fn pool(&self, addr: Addr) -> Arc<Pool> {
        Arc::new(Pool::new(Target {
            addr,
            tls: self.tls.clone(),
            protocol: self.protocol,
            scheme: self.scheme.clone(),
            authority: self.authority.clone(),
            idle_timeout: self.idle_timeout,
            max_idle: self.max_idle,
            response_timeout: self.response_timeout,
            h2_keepalive: self.h2_keepalive,
            max_connections: self.max_connections,
        }))
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// A pooled HTTP/1 connection: since when, and the request body it may still be sending
/// (its answer came before the body had all gone).
type Idle = (
    http1::SendRequest<UpstreamBody>,
    Instant,
    Option<Arc<crate::body::Progress>>,
);

/// Where an HTTP/1 connection goes back when its answer ends, with the request body it may
/// still be sending.
type Back = (
    Arc<Pool>,
    http1::SendRequest<UpstreamBody>,
    Option<Arc<crate::body::Progress>>,
);

/// Whether a pooled connection's last request body has all gone (or it had none to send).
fn upload_done(upload: Option<&Arc<crate::body::Progress>>) -> bool {
    upload.is_none_or(|p| p.ended())
}

/// The pool of one upstream.
#[derive(Debug)]
pub(super) struct Pool {
    target: Target,
    idle: Mutex<VecDeque<Idle>>,
    h2: Mutex<Vec<H2Conn>>,
    /// The upstream speaks HTTP/2 (h2c, or ALPN chose it once): shared connections serve all.
    speaks_h2: std::sync::atomic::AtomicBool,
    /// Held while a shared connection is being made.
    h2_connecting: tokio::sync::Mutex<()>,
    /// The stream limit the upstream last gave (`usize::MAX` until one is known).
    h2_limit: std::sync::atomic::AtomicUsize,
    /// Connection slots, when `max_connections` caps them.
    slots: Option<Slots>,
}

/// The connections an address may have open at once: a permit per connection, held by its
/// task, and a signal when one is freed or a connection returns to the pool.
#[derive(Debug)]
struct Slots {
    permits: Arc<tokio::sync::Semaphore>,
    freed: Arc<tokio::sync::Notify>,
}

/// One connection's slot; gives it back, and says so, when the connection ends.
#[derive(Debug)]
pub(in crate::upstream) struct Slot {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    freed: Arc<tokio::sync::Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.freed.notify_one();
    }
}

/// What waiting for a connection slot gives: a slot for a new connection, or a pooled one
/// that came back meanwhile.
enum Waited {
    Slot(Option<Slot>),
    Pooled(Sender),
}

/// What a request waiting for a connection slot may take instead of a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Seek {
    /// Any pooled connection: an idle HTTP/1 one, or the shared HTTP/2 one.
    Pooled,
    /// A new connection, or the shared HTTP/2 one (a retry on a fresh connection, the HTTP/2
    /// connect): idle HTTP/1 connections are closed to make room.
    Fresh,
    /// A connection of its own (a tunnel): idle HTTP/1 connections are closed to make room.
    Own,
}

enum Sender {
    H1(http1::SendRequest<UpstreamBody>),
    /// A shared connection, and the stream this request counts on it.
    H2(http2::SendRequest<UpstreamBody>, H2Stream),
}

/// One shared HTTP/2 connection of the pool.
#[derive(Debug)]
struct H2Conn {
    sender: http2::SendRequest<UpstreamBody>,
    streams: Arc<H2Streams>,
    /// When a request last took it.
    taken: Instant,
}

/// The streams of an HTTP/2 connection: how many requests of ours it carries, and how many
/// the upstream allows at once (its `SETTINGS_MAX_CONCURRENT_STREAMS`).
struct H2Streams {
    open: std::sync::atomic::AtomicUsize,
    /// The limit as last read.
    max: std::sync::atomic::AtomicUsize,
    /// A response came back on it, so the upstream's SETTINGS (its first frame) were read:
    /// its limit is the upstream's own, no longer hyper's default.
    settled: std::sync::atomic::AtomicBool,
    /// The upstream sent a GOAWAY: no new stream goes on it ([`H2Conn::serves`]).
    going_away: std::sync::atomic::AtomicBool,
    /// The connection's dispatch task, polled by its own task and shared to read the limit
    /// now: the frames themselves are handled by hyper's task for the connection, so a limit
    /// kept only when the dispatch task ran was read stale (hyper's default of 100 for a
    /// burst right after the connect, while the upstream had said 1). `None` once it ended:
    /// dropped then, as its requests still waiting fail only when it goes.
    driver: Mutex<Option<Pin<Box<H2Driver>>>>,
}

type H2Driver = http2::Connection<TokioIo<Io>, UpstreamBody, TokioExecutor>;

impl std::fmt::Debug for H2Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Streams")
            .field("open", &self.open)
            .field("max", &self.max)
            .finish_non_exhaustive()
    }
}

/// A request counted on its HTTP/2 connection until its response body goes (or the request
/// fails).
#[derive(Debug)]
pub(super) struct H2Stream(Arc<H2Streams>);

impl Drop for H2Stream {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl H2Conn {
    /// Whether another stream fits under the upstream's limit; `learnt` is the limit the
    /// upstream last gave a settled connection of this pool.
    fn has_room(&self, learnt: &std::sync::atomic::AtomicUsize) -> bool {
        use std::sync::TryLockError;
        use std::sync::atomic::Ordering::Relaxed;
        // The limit now, unless the connection's task is polling (then as it last read it).
        let max = match self.streams.driver.try_lock() {
            Ok(driver) => match &*driver {
                Some(d) => {
                    let max = d.current_max_send_streams();
                    self.streams.max.store(max, Relaxed);
                    max
                }
                // The connection has ended.
                None => return false,
            },
            // A poll panicked: the connection is of no use.
            Err(TryLockError::Poisoned(_)) => return false,
            Err(TryLockError::WouldBlock) => self.streams.max.load(Relaxed),
        };
        // Why: until the upstream's SETTINGS are read, hyper assumes 100 streams, and the
        // requests that waited for a new connection all took it: 7 streams at once on an
        // upstream allowing 1, run one after another (or refused, by a strict server). A new
        // connection is held to what the upstream said before. Regression: tests (it)
        // upstreams::a_new_h2_connection_is_held_to_the_limit_already_learnt
        let max = if self.streams.settled.load(Relaxed) {
            learnt.store(max, Relaxed);
            max
        } else {
            max.min(learnt.load(Relaxed))
        };
        // Why: 0 is "no new streams for now", and every connection would hear it: opening one
        // per request made 19 connections for 20 requests. They wait on this one instead.
        // Regression: tests (it) upstreams::an_h2_upstream_allowing_no_streams_gets_one_connection
        max == 0 || self.streams.open.load(Relaxed) < max
    }

    /// The connection, with one more stream counted on it.
    fn take(&mut self, now: Instant) -> Sender {
        self.taken = now;
        self.streams
            .open
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Sender::H2(self.sender.clone(), H2Stream(Arc::clone(&self.streams)))
    }

    /// Whether it still serves: open, not going away, and (but for the pool's first one)
    /// taken within `idle` or carrying a stream.
    fn serves(&self, first: bool, idle: Duration, now: Instant) -> bool {
        !self.sender.is_closed()
            && !self
                .streams
                .going_away
                .load(std::sync::atomic::Ordering::Relaxed)
            && !self.streams.driver.is_poisoned()
            && (first
                || self.streams.open.load(std::sync::atomic::Ordering::Relaxed) > 0
                || now.duration_since(self.taken) <= idle)
    }
}

/// Drops the idle HTTP/1 connections at the old end that are closed or idle past `idle` (a
/// request's checkout: cheap, what it meets first).
fn prune_idle(conns: &mut VecDeque<Idle>, idle: Duration, now: Instant) {
    while conns
        .front()
        .is_some_and(|(s, since, _)| s.is_closed() || now.duration_since(*since) > idle)
    {
        conns.pop_front();
    }
}

/// Drops the connections that no longer serve ([`H2Conn::serves`]): the ones a burst opened
/// close once idle for `idle` (hyper closes a connection when its last handle goes).
fn prune_h2(conns: &mut Vec<H2Conn>, idle: Duration, now: Instant) {
    let mut first = true;
    conns.retain(|c| {
        let keep = c.serves(first, idle, now);
        first &= !keep;
        keep
    });
}

type Connect = Pin<Box<dyn Future<Output = Result<Sender, SendError>> + Send>>;
/// An HTTP/1 exchange: hyper's plain send, or the one that hands the request back when it was
/// never written (no wrapper future around either: every request polls this).
enum Exchange {
    Recoverable(Pin<Box<dyn Future<Output = TrySendResult> + Send>>),
}

type TrySendResult = Result<Response<Incoming>, TrySendError<Request<UpstreamBody>>>;
type ExchangeError = (hyper::Error, Option<Box<Request<UpstreamBody>>>);

impl Exchange {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Response<Incoming>, ExchangeError>> {
        match self {
            Self::Recoverable(f) => f.as_mut().poll(cx).map_err(|mut e| {
                let unsent = e.take_message().map(Box::new);
                (e.into_error(), unsent)
            }),
        }
    }

    async fn finish(mut self) -> Result<Response<Incoming>, ExchangeError> {
        std::future::poll_fn(|cx| self.poll(cx)).await
    }
}

/// A connect that, when its request is dropped first, completes in the background and leaves
/// its connection in the pool.
struct Connecting {
    fut: Option<Connect>,
    pool: Arc<Pool>,
}

/// What a response body needs besides the upstream's body.
struct BodyIdle {
    /// Longest wait for the next frame.
    limit: Duration,
    /// The response's head timer, handed on (already in the timer wheel: no second timer for
    /// the body), or one made the first time the body waits.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When the body began to wait for its next frame: its first wait, then its first wait
    /// after each frame (`None` once a frame came). Not the frame's own arrival: a client
    /// slow to take a frame delays the next ask, and that pause is not the upstream's
    /// (`server.send_timeout` bounds it). The timer is moved on only when it fires, never at
    /// each frame (a timer reset per frame cost a stream more than its frames).
    /// Regression: tests (it) upstreams::a_streaming_body_lives_while_pieces_come_and_is_cut_when_they_stop
    from: Option<tokio::time::Instant>,
    /// The client's body, while it streams: a piece of it is activity too.
    ///
    /// Why: only response frames counted, so a long upload (or a client-streaming gRPC call)
    /// whose response stays silent until the end was cut, as Envoy's `stream_idle_timeout`,
    /// which counts either direction, does not. Regression: tests (it)
    /// upstreams::an_upload_keeps_a_silent_response_alive
    upload: Option<Arc<crate::body::Progress>>,
    /// Counts the cut (`upstream_errors_total{kind="idle_timeout"}`) and a body that broke
    /// (`kind="response_body"`), against the upstream named here.
    metrics: (Arc<crate::telemetry::metrics::Metrics>, Arc<str>),
}

impl BodyIdle {
    /// The body waits: whether no frame has come for `limit`.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let limit = self.limit;
        let from = *self.from.get_or_insert_with(tokio::time::Instant::now);
        let due = crate::clock::deadline_after(from, limit);
        let sleep = match &mut self.sleep {
            // A timer due later than this wait's end is brought forward; one due earlier is
            // moved on when it fires.
            Some(sleep) => {
                if sleep.deadline() > due {
                    sleep.as_mut().reset(due);
                }
                sleep
            }
            None => self.sleep.insert(Box::pin(tokio::time::sleep_until(due))),
        };
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            let now = tokio::time::Instant::now();
            let moved = self.upload.as_ref().map(|up| match up.stand() {
                crate::body::Stand::Done(t)
                | crate::body::Stand::Client(t)
                | crate::body::Stand::Upstream(t) => t,
            });
            let due = match moved {
                Some(t) if t > from => crate::clock::deadline_after(t, limit),
                _ => due,
            };
            if due <= now {
                return true;
            }
            sleep.as_mut().reset(due);
        }
    }
}

/// An HTTP/1 exchange that, when its request is dropped first, is finished in the background
/// so its connection can go back to the pool.
struct InFlight {
    fut: Option<Exchange>,
    sender: Option<http1::SendRequest<UpstreamBody>>,
    pool: Arc<Pool>,
    /// The request body's progress while the client still sends it.
    body: Option<Arc<crate::body::Progress>>,
}

/// A response body that returns its HTTP/1 connection to the pool when it ends.
#[derive(Debug)]
pub struct PooledBody {
    /// Always `Some` until dropped (taken to drain it in the background) or cut.
    body: Option<Incoming>,
    /// Where the HTTP/1 connection goes back ([`Back`]).
    back: Option<Back>,
    /// An HTTP/2 response's stream, counted on its connection until the body goes.
    stream: Option<H2Stream>,
    /// The idle deadline between frames (boxed: every response body is moved several times,
    /// and its state is needed only when the body waits).
    idle: Option<Box<BodyIdle>>,
    /// The credential's expiry, past which no frame goes to the client (boxed, as `idle`).
    expiry: Option<Box<BodyExpiry>>,
    /// The request counted in flight on its endpoint (least request), until the body goes.
    in_flight: Option<super::balance::InFlight>,
    /// The response's head timer, for `idle` to take on ([`PooledBody::with_timer`]).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// An HTTP/2 response, whose `Content-Length`, if it declares one, its body must meet
    /// ([`ShortBody`]). (A `HEAD`'s answer or a 304 declares the length of a body it has not:
    /// neither body is ever read. Regression: tests (it)
    /// upstreams::an_h2_response_reset_short_of_its_length_is_cut)
    h2_length: bool,
}

/// An HTTP/2 upstream's response body that ended short of its `Content-Length`.
///
/// Why: hyper ends a response body cleanly on the upstream's `RST_STREAM(NO_ERROR)` (RFC 9113
/// §8.1's early response, meant for a request body), so a response reset after 7 of its 100
/// declared bytes went to the client as complete: an HTTP/2 client got `END_STREAM`, an
/// HTTP/1.1 client a last chunk. The client's response is now aborted, as for any upstream
/// failure mid-body. Regression: tests (it) upstreams::an_h2_response_reset_short_of_its_length_is_cut
#[derive(Debug, thiserror::Error)]
#[error("upstream response ended {0} bytes short of its content-length")]
struct ShortBody(u64);

/// When a response's credential expires, and how to see it.
struct BodyExpiry {
    /// Unix second.
    at: u64,
    clock: crate::clock::Clock,
    /// A frame went out: waiting now makes the response a stream, worth a timer.
    streaming: bool,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    metrics: Arc<crate::telemetry::metrics::Metrics>,
}

impl std::fmt::Debug for BodyExpiry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyExpiry")
            .field("at", &self.at)
            .field("streaming", &self.streaming)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for BodyIdle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyIdle")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

/// A response body that went quiet for longer than its idle timeout.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("upstream response body idle timeout")]
pub struct BodyIdleTimeout;

// === impl Pool ===

impl Pool {
    pub(super) fn new(target: Target) -> Self {
        let h2c = matches!(target.protocol, Protocol::H2c);
        Self {
            speaks_h2: std::sync::atomic::AtomicBool::new(h2c),
            idle: Mutex::new(VecDeque::new()),
            h2: Mutex::new(Vec::new()),
            h2_limit: std::sync::atomic::AtomicUsize::new(usize::MAX),
            h2_connecting: tokio::sync::Mutex::new(()),
            slots: target.max_connections.map(|n| Slots {
                permits: Arc::new(tokio::sync::Semaphore::new(n)),
                freed: Arc::new(tokio::sync::Notify::new()),
            }),
            target,
        }
    }

    /// A slot for a new connection when the address has fewer than `max_connections` open;
    /// else, until `until`, whichever comes first: a slot freed (slots go to waiters in the
    /// order they asked), or what `seek` may take instead. `Busy` when `until` passes.
    ///
    /// Why in order (tokio's semaphore serves its waiters first come, first served): a tunnel
    /// closed an idle connection to make room, and the slot went to whichever request asked
    /// next; under steady load tunnels waited out their timeout (found by review; no test
    /// drives that load).
    async fn slot(&self, until: tokio::time::Instant, seek: Seek) -> Result<Waited, SendError> {
        let Some(slots) = &self.slots else {
            return Ok(Waited::Slot(None));
        };
        let slot = |permit| {
            Waited::Slot(Some(Slot {
                permit: Some(permit),
                freed: Arc::clone(&slots.freed),
            }))
        };
        if let Ok(permit) = Arc::clone(&slots.permits).try_acquire_owned() {
            return Ok(slot(permit));
        }
        // One place in the queue for the whole wait.
        let acquire = Arc::clone(&slots.permits).acquire_owned();
        tokio::pin!(acquire);
        let expired = tokio::time::sleep_until(until);
        tokio::pin!(expired);
        loop {
            // Registered before looking, so a connection coming back meanwhile wakes it.
            let freed = slots.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match seek {
                Seek::Pooled => {
                    if let Some(sender) = self.checkout() {
                        return Ok(Waited::Pooled(sender));
                    }
                }
                Seek::Fresh | Seek::Own => {
                    // At the cap, a full HTTP/2 connection is still shared: its request waits
                    // for a stream there rather than for a connection slot.
                    if seek == Seek::Fresh
                        && let Some(s) = self.checkout_h2().or_else(|| self.least_loaded_h2())
                    {
                        return Ok(Waited::Pooled(s));
                    }
                    // Closing an idle connection frees its slot (when its task ends).
                    if let Ok(mut idle) = self.idle.lock() {
                        drop(idle.pop_front());
                    }
                }
            }
            tokio::select! {
                biased;
                permit = &mut acquire => {
                    return permit.map(slot).map_err(|_| SendError::Busy);
                }
                () = freed.as_mut() => {}
                () = &mut expired => return Err(SendError::Busy),
            }
        }
    }

    /// Sends a request (origin-form URI) and returns the response head with its body. With
    /// `fresh`, a new connection is opened rather than a pooled one taken.
    ///
    /// At the address's `max_connections`, the wait for a slot ends before `deadline` (the
    /// response's) and within `connect_timeout` ([`slot_wait_until`]), then `Busy`; the connect
    /// has `connect_timeout` of its own.
    pub(super) async fn send(
        self: &Arc<Self>,
        req: Request<UpstreamBody>,
        connect_timeout: Duration,
        deadline: tokio::time::Instant,
        fresh: bool,
    ) -> Result<Response<PooledBody>, Failed> {
        // Read only at the cap: no clock read per request otherwise.
        let until = || slot_wait_until(connect_timeout, deadline);
        // Why an HTTP/2 retry takes a stream like any request: a stream refused unprocessed
        // (or cut by a closed connection, which the pool drops) needs another stream, not a
        // connection of its own; each opened one, and an upstream refusing the streams sent
        // before its SETTINGS arrived (a limit of 0, or 1) got a connection per request.
        // Regression: tests (it) upstreams::an_h2_upstream_allowing_no_streams_gets_one_connection
        let fresh = fresh && !self.speaks_h2.load(std::sync::atomic::Ordering::Relaxed);
        let mut checked_out = match fresh {
            true => None,
            false => self.checkout(),
        };
        // At the cap, a pooled connection coming back is taken as one found in the pool
        // (the stale-connection retry below applies to it), else a slot freed.
        // Why: one handed over without its head's copy went out with no retry, at the moment
        // a connection most often turns out closed: 86 of 180 GETs failed (502) under a cap
        // of 2 where none did without it.
        // Regression: tests (it) upstreams::max_connections_keeps_the_stale_connection_retry
        let mut slot = None;
        if checked_out.is_none()
            && self.slots.is_some()
            && !self.speaks_h2.load(std::sync::atomic::Ordering::Relaxed)
        {
            let seek = if fresh { Seek::Fresh } else { Seek::Pooled };
            // Boxed: only at the cap; inline, every request's future would carry the wait.
            match Box::pin(self.slot(until(), seek)).await {
                Ok(Waited::Pooled(s)) => checked_out = Some(s),
                Ok(Waited::Slot(s)) => slot = s,
                Err(e) => return Err(Failed::unsent(e, req)),
            }
        }
        // Why: a pooled connection the upstream closed just as the request went out fails
        // after the request was written, and hyper cannot hand it back; a bodiless
        // idempotent request is rebuilt from this copy of its head to go once more. Any
        // reused connection, however briefly idle: an upstream that closes its connections
        // soon after an answer (a short keep-alive timer, a graceful restart closing idle
        // ones) failed GETs sent within 100 ms of the last answer with 502.
        // Regression: tests (it) upstreams::stale_pooled_connection_retried_for_get_never_for_post,
        // upstreams::connection_closed_right_after_an_answer_is_retried_for_get
        let mut head = match &checked_out {
            Some(Sender::H1(_)) => Head::of(&req),
            _ => None,
        };
        let sender = match checked_out {
            Some(Sender::H1(mut s)) if !s.is_ready() => match s.ready().await {
                Ok(()) => Sender::H1(s),
                Err(_) => match self.connect_or_finish(connect_timeout, until(), None).await {
                    Ok(s) => s,
                    Err(e) => return Err(Failed::unsent(e, req)),
                },
            },
            Some(s) => s,
            // Why: the shared HTTP/2 connection is stored once its handshake is done, and
            // every request arriving meanwhile opened its own: 50 at once to a fresh h2c
            // upstream opened 27 connections, again each time the connection is replaced
            // (an upstream's restart, GOAWAY). They now wait for the one being made.
            // Regression: tests (it) upstreams::h2c_upstream_gets_one_connection_under_a_burst
            None if !fresh && self.speaks_h2.load(std::sync::atomic::Ordering::Relaxed) => {
                match Box::pin(self.h2_connect_once(connect_timeout, until())).await {
                    Ok(s) => s,
                    Err(e) => return Err(Failed::unsent(e, req)),
                }
            }
            // Boxed: a new connection is rare, and its TLS and HTTP/2 handshake futures are
            // large; inline, every request's future would carry and move them.
            None => match self.connect_or_finish(connect_timeout, until(), slot).await {
                Ok(s) => s,
                Err(e) => return Err(Failed::unsent(e, req)),
            },
        };
        let mut req = req;
        match sender {
            Sender::H1(mut s) => {
                *req.version_mut() = http::Version::HTTP_11;
                // RFC 9110 §10.1.4: a `TE` is for this connection only, and says so in
                // `Connection` (over HTTP/2, where `Connection` is illegal, hyper would strip
                // `TE` with it: only here).
                if req.headers().contains_key(http::header::TE) {
                    req.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("te"),
                    );
                }
                // Why: dropping hyper's response future closes the connection; a client that
                // resets its streams would then cost one upstream connection each.
                // Regression: tests (it) abuse::paced_rapid_reset_reuses_upstream_connections
                // Why always the send that hands an unwritten request back: a connection idle
                // for a moment only can be closed too (an upstream recycling a worker right
                // after its answer), and the plain send dropped the request unwritten: 18 of
                // 300 POSTs got 502 without reaching the upstream. Handed back, it goes to a
                // fresh connection whatever its method. (A race of the upstream's close with
                // the write: no deterministic test; the outside tester's loop showed it.)
                let body = req.body().progress();
                let upload = body.clone();
                let fut = Exchange::Recoverable(Box::pin(s.try_send_request(req)));
                let (resp, s) = InFlight {
                    fut: Some(fut),
                    sender: Some(s),
                    pool: Arc::clone(self),
                    body,
                }
                .await
                .map_err(|(error, unsent)| Failed {
                    repeat: match (&error, &unsent) {
                        (SendError::Http(e), None) if closed_before_an_answer(e) => {
                            head.take().and_then(Head::into_request)
                        }
                        _ => None,
                    },
                    error,
                    unsent,
                })?;
                // Why: a 101 nobody asked for hands the connection to an unknown protocol,
                // and a status past 599 is no HTTP answer; neither reaches the client, and
                // the connection is not reused.
                // Regression: tests (it) upstreams::invalid_upstream_status_is_502
                check_status(resp.status())?;
                let mut resp = resp;
                check_framing(resp.headers_mut())?;
                let pool = Arc::clone(self);
                Ok(resp.map(|body| PooledBody {
                    body: Some(body),
                    back: Some((pool, s, upload)),
                    stream: None,
                    idle: None,
                    expiry: None,
                    in_flight: None,
                    timer: None,
                    // HTTP/1: hyper fails a body that ends before its length itself.
                    h2_length: false,
                }))
            }
            Sender::H2(mut s, stream) => {
                // Taken before the head becomes HTTP/2's (`Host` into `:authority`).
                let head = Head::of(&req);
                *req.version_mut() = http::Version::HTTP_2;
                let mut parts = req.uri().clone().into_parts();
                parts.scheme = Some(self.target.scheme.clone());
                // `:authority` carries the Host chosen by the proxy (the upstream's, or the
                // client's with preserve_host), so the two never disagree.
                let authority = req
                    .headers_mut()
                    .remove(http::header::HOST)
                    .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok());
                parts.authority = Some(authority.unwrap_or_else(|| self.target.authority.clone()));
                if let Ok(uri) = http::Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
                // Why: a stream the upstream refused unprocessed (`REFUSED_STREAM`, or one past
                // a graceful GOAWAY's last stream: RFC 9113 §8.7), or whose connection closed
                // before an answer, failed with 502 even for a GET, where the same GET over
                // HTTP/1 went once more: a bodiless idempotent request is rebuilt to go again.
                // Regression: tests (it) upstreams::an_h2_stream_the_upstream_refused_is_retried
                let resp = s.try_send_request(req).await.map_err(|mut e| {
                    let unsent = e.take_message().map(Box::new);
                    let error = e.into_error();
                    // Why: hyper's side of the connection notices a GOAWAY only when the next
                    // request comes, so the connection stayed in the pool while the upstream
                    // let it linger, and the retry below (and any request meanwhile) went on
                    // it to fail at once: about half the GETs past a graceful GOAWAY got 502.
                    // Regression: tests (it)
                    // upstreams::a_get_past_a_graceful_goaway_is_retried_on_a_new_connection
                    if went_away(&error) {
                        stream
                            .0
                            .going_away
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    Failed {
                        repeat: match unsent {
                            None if unprocessed(&error) || closed_before_an_answer(&error) => {
                                head.and_then(Head::into_request)
                            }
                            _ => None,
                        },
                        unsent,
                        error: SendError::Http(error),
                    }
                })?;
                // An answer: the upstream's SETTINGS, its first frame, were read before it.
                stream
                    .0
                    .settled
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                check_status(resp.status())?;
                Ok(resp.map(|body| PooledBody {
                    body: Some(body),
                    back: None,
                    stream: Some(stream),
                    idle: None,
                    expiry: None,
                    in_flight: None,
                    timer: None,
                    h2_length: true,
                }))
            }
        }
    }

    /// The shared HTTP/2 connection: the one another request made while this one waited its
    /// turn, or a new one.
    async fn h2_connect_once(
        self: &Arc<Self>,
        connect_timeout: Duration,
        until: tokio::time::Instant,
    ) -> Result<Sender, SendError> {
        // Why within `connect_timeout` in all, the wait for the one connecting included:
        // each waiter made its own attempt once the one before it had failed, so with an
        // endpoint black-holed the k-th request waited k connect timeouts before moving on
        // (ten requests: 1 s to 10 s). Regression: tests (it)
        // upstreams::a_dead_h2_endpoint_costs_each_request_one_connect_timeout
        let started = tokio::time::Instant::now();
        let Ok(_one_at_a_time) =
            tokio::time::timeout(connect_timeout, self.h2_connecting.lock()).await
        else {
            return Err(SendError::ConnectTimeout);
        };
        if let Some(s @ Sender::H2(..)) = self.checkout() {
            return Ok(s);
        }
        let left = connect_timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(SendError::ConnectTimeout);
        }
        self.connect_or_finish(left, until, None).await
    }

    /// Opens a new connection (with `slot`, or one waited for until `until` at the cap);
    /// when the request is dropped once the connect began, it still joins the pool.
    async fn connect_or_finish(
        self: &Arc<Self>,
        connect_timeout: Duration,
        until: tokio::time::Instant,
        slot: Option<Slot>,
    ) -> Result<Sender, SendError> {
        // Why here, not in the background part: a request dropped while it waited for a slot
        // went on waiting, then opened a connection nobody had asked for.
        let slot = match slot {
            Some(slot) => Some(slot),
            None => match Box::pin(self.slot(until, Seek::Fresh)).await? {
                Waited::Slot(slot) => slot,
                Waited::Pooled(sender) => return Ok(sender),
            },
        };
        Connecting {
            fut: Some(Box::pin(Arc::clone(self).connect(connect_timeout, slot))),
            pool: Arc::clone(self),
        }
        .await
    }

    /// A shared HTTP/2 connection with room for another stream, when one is open.
    ///
    /// Why: one connection carried every request, and an upstream allowing 100 streams at
    /// once (Apache, h2o; nginx 128) made the 101st wait, inside hyper, for one of the
    /// others to end: behind 100 long streams (gRPC streaming, downloads) every other
    /// request waited out its response timeout (504) while the upstream sat idle. A full
    /// connection now has another opened beside it, as Envoy's pool does.
    /// Regression: tests (it) upstreams::an_h2_upstream_at_its_stream_limit_gets_another_connection
    fn checkout_h2(&self) -> Option<Sender> {
        let mut conns = self.h2.lock().ok()?;
        if conns.is_empty() {
            return None;
        }
        let now = Instant::now();
        prune_h2(&mut conns, self.target.idle_timeout, now);
        conns
            .iter_mut()
            .find(|c| c.has_room(&self.h2_limit))
            .map(|c| c.take(now))
    }

    /// The open HTTP/2 connection carrying the fewest streams, full or not: the one to wait on
    /// when no other connection may be opened.
    fn least_loaded_h2(&self) -> Option<Sender> {
        let mut conns = self.h2.lock().ok()?;
        let now = Instant::now();
        prune_h2(&mut conns, self.target.idle_timeout, now);
        conns
            .iter_mut()
            .min_by_key(|c| c.streams.open.load(std::sync::atomic::Ordering::Relaxed))
            .map(|c| c.take(now))
    }

    /// A pooled connection.
    fn checkout(&self) -> Option<Sender> {
        if let Some(h2) = self.checkout_h2() {
            return Some(h2);
        }
        let mut idle = self.idle.lock().ok()?;
        prune_idle(&mut idle, self.target.idle_timeout, Instant::now());
        // Why the newest first: taking the oldest and putting it back last cycled through every
        // idle connection, so a trickle (a health check every 3 s) kept all that a burst had
        // opened (42, for good) past `pool_idle_timeout`. The newest is reused; the oldest age
        // out. Regression: tests (it) upstreams::idle_connections_age_out_under_a_trickle
        //
        // Connections are pushed back as their responses end; one whose connection task has
        // not yet noticed is briefly not ready. Take a ready one if there is one, else the
        // newest one still settling, whose readiness the caller awaits: opening a new
        // connection instead would grow the pool under concurrent bursts.
        if let Some(i) = idle.iter().rposition(|(s, _, _)| s.is_ready()) {
            return idle.remove(i).map(|(s, _, _)| Sender::H1(s));
        }
        // Why not one still sending its request body: that body can take as long as its client
        // likes (an upstream that answered early, a client trickling the rest), and a request
        // handed that connection waited behind it, to 504 `upstream_timeout` with its endpoint
        // blamed. Regression: tests (it) abuse::an_upload_after_an_early_answer_holds_no_other_request
        idle.retain(|(s, _, _)| !s.is_closed());
        let i = idle
            .iter()
            .rposition(|(_, _, upload)| upload_done(upload.as_ref()))?;
        idle.remove(i).map(|(s, _, _)| Sender::H1(s))
    }

    /// Closes pooled connections idle past the idle timeout, without a request needing to
    /// come to notice them (`upstream::upkeep` calls it every tick).
    ///
    /// Why: idle connections were only looked at by the next request, so those a burst opened
    /// stayed open as long as no request came. Regression: tests (it)
    /// upstreams::idle_connections_age_out_under_a_trickle
    pub(super) fn prune(&self) {
        let now = Instant::now();
        // All of them, not only the old end: one the upstream closed may sit behind a live one.
        if let Ok(mut idle) = self.idle.lock() {
            let timeout = self.target.idle_timeout;
            idle.retain(|(s, since, _)| !s.is_closed() && now.duration_since(*since) <= timeout);
        }
        if let Ok(mut conns) = self.h2.lock() {
            prune_h2(&mut conns, self.target.idle_timeout, now);
        }
    }

    fn checkin(&self, s: http1::SendRequest<UpstreamBody>) {
        self.checkin_after(s, None);
    }

    /// [`Self::checkin`] of a connection whose answer came before its request body
    /// (`upload`) had all gone: it is not handed to another request until the body has.
    fn checkin_after(
        &self,
        s: http1::SendRequest<UpstreamBody>,
        upload: Option<Arc<crate::body::Progress>>,
    ) {
        if s.is_closed() {
            return;
        }
        // Full, the oldest gives way: the newest is the one to reuse (`checkout`).
        if let Ok(mut idle) = self.idle.lock()
            && self.target.max_idle > 0
        {
            if idle.len() >= self.target.max_idle {
                idle.pop_front();
            }
            idle.push_back((s, Instant::now(), upload));
        }
        if let Some(slots) = &self.slots {
            slots.freed.notify_one();
        }
    }

    /// A new connection to the target, TCP and TLS, within `connect_timeout`; `true` when it
    /// speaks HTTP/2 (h2c by configuration, h2 by ALPN).
    async fn open(&self, connect_timeout: Duration) -> Result<(Io, bool), SendError> {
        let t = &self.target;
        let connect = async {
            let tcp = match &t.addr {
                Addr::Ip(a) => TcpStream::connect(a).await,
                Addr::Name(n) => TcpStream::connect(&**n).await,
            }
            .map_err(SendError::Connect)?;
            let _ = tcp.set_nodelay(true);
            match &t.tls {
                None => Ok((Io::Plain(tcp), t.protocol == Protocol::H2c)),
                Some(tls) => {
                    let stream = tls
                        .connector
                        .connect(tls.name.clone(), tcp)
                        .await
                        .map_err(SendError::Tls)?;
                    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    Ok((Io::Tls(Box::new(stream)), h2))
                }
            }
        };
        tokio::time::timeout(connect_timeout, connect)
            .await
            .map_err(|_| SendError::ConnectTimeout)?
    }

    /// A new connection, holding `slot` (at the cap) while it lives.
    async fn connect(
        self: Arc<Self>,
        connect_timeout: Duration,
        slot: Option<Slot>,
    ) -> Result<Sender, SendError> {
        let (io, h2) = self.open(connect_timeout).await?;
        if h2 {
            let mut builder = http2::Builder::new(TokioExecutor::new());
            builder.timer(TokioTimer::new());
            if let Some(k) = self.target.h2_keepalive {
                builder
                    .keep_alive_interval(k.interval)
                    .keep_alive_timeout(k.timeout)
                    .keep_alive_while_idle(k.while_idle);
            }
            let (sender, conn) = builder
                .handshake(TokioIo::new(io))
                .await
                .map_err(SendError::Http)?;
            // Until the upstream's SETTINGS arrive, hyper's default (100 streams).
            let streams = Arc::new(H2Streams {
                open: std::sync::atomic::AtomicUsize::new(0),
                max: std::sync::atomic::AtomicUsize::new(conn.current_max_send_streams()),
                settled: std::sync::atomic::AtomicBool::new(false),
                going_away: std::sync::atomic::AtomicBool::new(false),
                driver: Mutex::new(Some(Box::pin(conn))),
            });
            let task = Arc::clone(&streams);
            tokio::spawn(async move {
                let _slot = slot;
                std::future::poll_fn(|cx| {
                    // A poisoned lock: a poll panicked; the connection goes (dropped, hyper
                    // closes it) and the pool no longer offers it.
                    let mut driver = match task.driver.lock() {
                        Ok(d) => d,
                        Err(poisoned) => {
                            *poisoned.into_inner() = None;
                            return Poll::Ready(());
                        }
                    };
                    let Some(d) = driver.as_mut() else {
                        return Poll::Ready(());
                    };
                    if d.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    *driver = None;
                    Poll::Ready(())
                })
                .await;
            });
            self.speaks_h2
                .store(true, std::sync::atomic::Ordering::Relaxed);
            let now = Instant::now();
            let mut shared = H2Conn {
                sender,
                streams,
                taken: now,
            };
            let this = shared.take(now);
            if let Ok(mut conns) = self.h2.lock() {
                conns.push(shared);
            }
            // Requests waiting for a slot can all take it.
            if let Some(slots) = &self.slots {
                slots.freed.notify_waiters();
            }
            Ok(this)
        } else {
            let (sender, conn) = http1::Builder::new()
                // Why: hyper's read buffer grows to 400 KiB on a fast upstream, and every
                // body chunk handed on is a slice of it: a client that stops reading would
                // pin the whole buffer.
                // Regression: tests (it) memory::h1_slow_readers_hold_a_bounded_buffer_each
                .max_buf_size(UPSTREAM_READ_BUF)
                .handshake(TokioIo::new(io))
                .await
                .map_err(SendError::Http)?;
            tokio::spawn(async move {
                let _slot = slot;
                let _ = conn.await;
            });
            Ok(Sender::H1(sender))
        }
    }
}

/// The head of a bodiless idempotent request, kept to send it again: the method, and the
/// target and header lines as bytes in one buffer (`target\n`, then `name\nvalue\n` each).
///
/// Why bytes: every GET on a reused connection keeps one, and a `HeaderMap` clone (an entry
/// and a reference count per header, then as much again to drop it) cost 1.9 k instructions
/// per request, callgrind; the buffer is one allocation and a copy. A header value never
/// holds a line feed, so the lines read back as they were written.
struct Head {
    method: http::Method,
    lines: Vec<u8>,
}

impl Head {
    /// A copy of the head, when the request may be repeated: idempotent (RFC 9110 §9.2.2) and
    /// without a body.
    fn of(req: &Request<UpstreamBody>) -> Option<Self> {
        use http::Method;
        let idempotent = matches!(
            *req.method(),
            Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
        );
        if !idempotent || !req.body().is_end_stream() {
            return None;
        }
        let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let mut lines = Vec::with_capacity(512);
        lines.extend_from_slice(target.as_bytes());
        lines.push(b'\n');
        for (name, value) in req.headers() {
            lines.extend_from_slice(name.as_str().as_bytes());
            lines.push(b'\n');
            lines.extend_from_slice(value.as_bytes());
            lines.push(b'\n');
        }
        Some(Self {
            method: req.method().clone(),
            lines,
        })
    }

    /// The request again; `None` if its lines do not read back (they always do).
    fn into_request(self) -> Option<Box<Request<UpstreamBody>>> {
        let mut lines = self.lines.split(|b| *b == b'\n');
        let target = http::Uri::try_from(lines.next()?).ok()?;
        let mut req = Request::new(UpstreamBody::empty());
        *req.method_mut() = self.method;
        *req.uri_mut() = target;
        let headers = req.headers_mut();
        while let (Some(name), Some(value)) = (lines.next(), lines.next()) {
            headers.append(
                http::HeaderName::from_bytes(name).ok()?,
                http::HeaderValue::from_bytes(value).ok()?,
            );
        }
        Some(Box::new(req))
    }
}

/// An answer that is no HTTP answer to this request.
fn check_status(status: http::StatusCode) -> Result<(), Failed> {
    let code = status.as_u16();
    if code == 101 || code > 599 {
        return Err(Failed {
            error: SendError::InvalidStatus(code),
            unsent: None,
            repeat: None,
        });
    }
    Ok(())
}

/// An HTTP/1.1 answer's framing, made fit to pass on: with `Transfer-Encoding: chunked` (which
/// hyper has decoded, and the gateway re-frames), any `Content-Length` goes (RFC 9112 §6.3:
/// the coding overrides it, and a forwarder must remove it); any other coding is refused, as
/// nginx does: hyper decodes only `chunked`, so the client would get the coded bytes as the
/// body once the hop-by-hop header is gone.
///
/// Why: an answer with both headers reached the client with the upstream's `Content-Length`
/// and the decoded, shorter body (every client saw a truncated answer), and a `gzip, chunked`
/// one as gzip bytes with nothing saying so.
/// Regression: tests (it) upstreams::upstream_transfer_codings_are_framed_or_refused
fn check_framing(headers: &mut http::HeaderMap) -> Result<(), Failed> {
    let invalid = || Failed {
        error: SendError::InvalidFraming,
        unsent: None,
        repeat: None,
    };
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        if crate::server::hop_by_hop::has_unsupported_transfer_coding(headers) {
            return Err(invalid());
        }
        headers.remove(http::header::CONTENT_LENGTH);
        return Ok(());
    }
    // Why: hyper reads a `Content-Length` repeated with one value (two lines, or `2, 2`) as
    // that length (RFC 9110 §8.6) but keeps every line, and an HTTP/2 client must refuse a
    // response carrying them (RFC 9113 §8.1.1): every HTTP/2 client got a stream error. One
    // value goes on.
    // Regression: tests (it) upstreams::upstream_transfer_codings_are_framed_or_refused
    let mut lengths = headers.get_all(http::header::CONTENT_LENGTH).iter();
    let one = match (lengths.next(), lengths.next()) {
        (None, _) => return Ok(()),
        (Some(v), None) if !v.as_bytes().contains(&b',') => return Ok(()),
        (Some(first), _) => {
            let mut all = headers
                .get_all(http::header::CONTENT_LENGTH)
                .iter()
                .flat_map(|v| v.as_bytes().split(|&b| b == b','))
                .map(<[u8]>::trim_ascii);
            let first = first
                .as_bytes()
                .split(|&b| b == b',')
                .next()
                .map(<[u8]>::trim_ascii);
            match first {
                Some(n) if !n.is_empty() && all.all(|v| v == n) => {
                    http::HeaderValue::from_bytes(n).map_err(|_| invalid())?
                }
                _ => return Err(invalid()),
            }
        }
    };
    headers.insert(http::header::CONTENT_LENGTH, one);
    Ok(())
}

/// Runs `fut` to its end on the runtime, if there still is one (not while it shuts down).
fn finish_in_background(fut: impl Future<Output = ()> + Send + 'static) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(fut);
    }
}

/// Reads and discards what is left of an abandoned response, within [`DRAIN_BYTES`] and
/// `deadline`; the connection goes back to the pool only if the body ended.
async fn drain(
    pool: Arc<Pool>,
    mut body: Incoming,
    (sender, upload): (
        http1::SendRequest<UpstreamBody>,
        Option<Arc<crate::body::Progress>>,
    ),
) {
    use http_body_util::BodyExt;
    let mut left = DRAIN_BYTES;
    // More than that declared: closed at once rather than after a MiB read for nothing.
    if body.size_hint().lower() > left as u64 {
        return;
    }
    while !body.is_end_stream() {
        match body.frame().await {
            Some(Ok(f)) => match f.data_ref() {
                Some(d) if d.len() > left => return,
                Some(d) => left -= d.len(),
                None => {}
            },
            Some(Err(_)) => return,
            None => break,
        }
    }
    pool.checkin_after(sender, upload);
}

// === impl Connecting ===

impl Future for Connecting {
    type Output = Result<Sender, SendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(fut) = self.fut.as_mut() else {
            return Poll::Ready(Err(SendError::ConnectTimeout));
        };
        let out = std::task::ready!(fut.as_mut().poll(cx));
        self.fut = None;
        Poll::Ready(out)
    }
}

impl Drop for Connecting {
    fn drop(&mut self) {
        if let Some(fut) = self.fut.take() {
            let pool = Arc::clone(&self.pool);
            finish_in_background(async move {
                // An HTTP/2 connection is already the pool's shared one.
                if let Ok(Sender::H1(s)) = fut.await {
                    pool.checkin(s);
                }
            });
        }
    }
}

// === impl InFlight ===

/// Why an HTTP/1 exchange failed, and the request when it was never written.
type InFlightError = (SendError, Option<Box<Request<UpstreamBody>>>);

impl Future for InFlight {
    type Output = Result<(Response<Incoming>, http1::SendRequest<UpstreamBody>), InFlightError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(fut) = self.fut.as_mut() else {
            return Poll::Ready(Err((SendError::ConnectTimeout, None)));
        };
        let out = std::task::ready!(fut.poll(cx));
        self.fut = None;
        let out = match (out, self.sender.take()) {
            (Ok(resp), Some(s)) => Ok((resp, s)),
            (Ok(_), None) => Err((SendError::ConnectTimeout, None)),
            (Err((e, unsent)), _) => Err((SendError::Http(e), unsent)),
        };
        Poll::Ready(out)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // Why: an exchange whose request body the client is still sending was finished in
        // the background too, the body with it: after the client's 408 `body_timeout` (its
        // connection told to close) the rest of its body still reached the upstream, which
        // acted on a request the client was told had failed. Such an exchange is abandoned:
        // the upstream sees an aborted upload. Regression: tests (it)
        // abuse::the_rest_of_a_body_is_never_read_as_a_request
        if !upload_done(self.body.as_ref()) {
            return;
        }
        if let (Some(fut), Some(sender)) = (self.fut.take(), self.sender.take()) {
            let pool = Arc::clone(&self.pool);
            let deadline = pool.target.response_timeout.min(DRAIN_TIME);
            finish_in_background(async move {
                let _ = tokio::time::timeout(deadline, async move {
                    if let Ok(resp) = fut.finish().await {
                        drain(pool, resp.into_body(), (sender, None)).await;
                    }
                })
                .await;
            });
        }
    }
}

/// Whether an HTTP/2 upstream said it did not process the stream: reset with
/// `REFUSED_STREAM`, or past the last stream of a graceful GOAWAY (RFC 9113 §8.7).
fn unprocessed(e: &hyper::Error) -> bool {
    crate::errors::sources(e)
        .find_map(|s| s.downcast_ref::<h2::Error>())
        .is_some_and(|e| {
            e.is_remote()
                && ((e.is_reset() && e.reason() == Some(h2::Reason::REFUSED_STREAM))
                    // A graceful GOAWAY fails only the streams past its last one; the others
                    // go on, and a later close fails them otherwise.
                    || (e.is_go_away() && e.reason() == Some(h2::Reason::NO_ERROR)))
        })
}

/// Whether an HTTP/2 upstream sent a GOAWAY (graceful or not) that failed this stream: the
/// connection takes no new stream.
fn went_away(e: &hyper::Error) -> bool {
    crate::errors::sources(e)
        .find_map(|s| s.downcast_ref::<h2::Error>())
        .is_some_and(|e| e.is_remote() && e.is_go_away())
}

/// Whether a failed exchange on a reused connection ended as a connection the upstream
/// closed ends: closed or reset before any answer came.
///
/// Why: any HTTP error was taken for that, so a bodiless `DELETE` met by a garbled or
/// over-large answer was processed twice by the upstream, and the client got the second
/// answer, the bad one hidden. An answer that does not parse is the upstream's answer.
/// Regression: tests (it) upstreams::a_garbled_answer_is_not_sent_again
fn closed_before_an_answer(e: &hyper::Error) -> bool {
    if e.is_parse() || e.is_parse_too_large() || e.is_parse_status() || e.is_timeout() {
        return false;
    }
    if e.is_incomplete_message() || e.is_canceled() || e.is_closed() {
        return true;
    }
    // The first I/O error in the chain decides.
    crate::errors::sources(e)
        .skip(1)
        .find_map(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            )
        })
}

// === impl PooledBody ===

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body hyper never polled because it was empty (HEAD, 204, Content-Length: 0) still
        // leaves a reusable connection; a half-read one is drained in the background first.
        if let (Some((pool, sender, upload)), Some(body)) = (self.back.take(), self.body.take()) {
            if body.is_end_stream() {
                pool.checkin_after(sender, upload);
            } else {
                let deadline = pool.target.response_timeout.min(DRAIN_TIME);
                finish_in_background(async move {
                    let _ =
                        tokio::time::timeout(deadline, drain(pool, body, (sender, upload))).await;
                });
            }
        }
    }
}

impl PooledBody {
    /// Cuts the body once its credential has expired (Unix second `at`, by `clock`): no
    /// frame goes out past it, and a stream waiting for its next frame is cut at it.
    ///
    /// Why: a long response (server-sent events, a gRPC stream, a long download) went on past
    /// its credential's expiry on a rule without re-checks; a long-lived stream is closed
    /// when its credential expires (issue 14). Cheap for a short response: the clock is read
    /// on each frame, and a timer is armed only when the body waits after its first frame.
    /// Regression: tests (it)
    /// edge::a_long_response_is_cut_when_its_token_expires_with_or_without_rechecks
    pub fn with_expiry(
        mut self,
        at: u64,
        clock: crate::clock::Clock,
        metrics: Arc<crate::telemetry::metrics::Metrics>,
    ) -> Self {
        self.expiry = Some(Box::new(BodyExpiry {
            at,
            clock,
            streaming: false,
            timer: None,
            metrics,
        }));
        self
    }

    /// Counts the request in flight on its endpoint until the body goes.
    pub(super) fn with_in_flight(mut self, counted: super::balance::InFlight) -> Self {
        self.in_flight = Some(counted);
        self
    }

    /// Hands on the response's head timer, for the idle timeout to use rather than making
    /// a timer of its own.
    pub(crate) fn with_timer(mut self, timer: Pin<Box<tokio::time::Sleep>>) -> Self {
        self.timer = Some(timer);
        self
    }

    /// Cuts the body when no frame arrives for `limit` (a route's or upstream's idle
    /// timeout); a cut or a broken body is counted against the upstream `metrics` names.
    pub fn with_idle_timeout(
        mut self,
        limit: Duration,
        upload: Option<Arc<crate::body::Progress>>,
        metrics: (Arc<crate::telemetry::metrics::Metrics>, Arc<str>),
    ) -> Self {
        self.idle = Some(Box::new(BodyIdle {
            limit,
            sleep: self.timer.take(),
            from: None,
            upload,
            metrics,
        }));
        self
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(expiry) = this.expiry.as_mut()
            && expiry.clock.unix_secs() >= expiry.at
        {
            expiry.metrics.limit(crate::body::STREAM_EXPIRED);
            // The response was not read to its end: the connection is closed, never pooled.
            this.expiry = None;
            this.back = None;
            this.body = None;
            return Poll::Ready(Some(Err(crate::body::Cut::boxed(
                crate::body::STREAM_EXPIRED,
            ))));
        }
        let polled = Pin::new(body).poll_frame(cx);
        if let Some(expiry) = this.expiry.as_mut() {
            match &polled {
                Poll::Ready(Some(_)) => expiry.streaming = true,
                Poll::Pending if expiry.streaming => {
                    let mut wait = expiry.clock.time_until(expiry.at);
                    if expiry.clock.is_manual() {
                        wait = wait.min(Duration::from_millis(100));
                    }
                    let timer = expiry
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(wait)));
                    if timer.as_mut().poll(cx).is_ready() {
                        // Polled again at once: the clock decides (a manual clock's time may
                        // not have come yet; the timer is then armed again).
                        expiry.timer = None;
                        cx.waker().wake_by_ref();
                    }
                }
                _ => {}
            }
        }
        if let Some(idle) = this.idle.as_mut() {
            match &polled {
                Poll::Pending if idle.expired(cx) => {
                    // The connection is in an unknown state: closed, never pooled.
                    this.back = None;
                    this.body = None;
                    // Why: the answer's head (and its access-log line, status 200) went out
                    // before the cut; uncounted, a response cut short was seen as a success.
                    // Regression: tests (it) upstreams::stalled_response_body_cut_at_the_idle_timeout
                    idle.metrics
                        .0
                        .upstream_error(&idle.metrics.1, "idle_timeout");
                    tracing::info!(idle = ?idle.limit, "Upstream response idle past its timeout: cut");
                    return Poll::Ready(Some(Err(Box::new(BodyIdleTimeout))));
                }
                Poll::Ready(Some(_)) => idle.from = None,
                _ => {}
            }
        }
        match polled {
            Poll::Ready(None) => {
                // The length hyper counts down as data comes: left over only if it ended short.
                let short = this
                    .body
                    .as_ref()
                    .and_then(|b| b.size_hint().exact())
                    .filter(|left| this.h2_length && *left > 0);
                if let Some(left) = short {
                    this.body = None;
                    this.broke(&ShortBody(left));
                    return Poll::Ready(Some(Err(Box::new(ShortBody(left)))));
                }
                if let Some((pool, sender, upload)) = this.back.take() {
                    pool.checkin_after(sender, upload);
                }
                // The stream has ended: its room on the connection is free now, not when the
                // client's side lets the body go.
                drop(this.stream.take());
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(mut frame))) => {
                if let Some(trailers) = frame.trailers_mut() {
                    crate::server::hop_by_hop::strip_trailers(trailers);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                // The connection is in an unknown state: closed, never pooled.
                this.back = None;
                this.body = None;
                this.broke(&e);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl PooledBody {
    /// The upstream's response failed mid-body (reset, closed, malformed, short): logged and
    /// counted (`portcullis_upstream_errors_total{kind="response_body"}`).
    ///
    /// Why: the head, and the access log's status 200, had gone out; a response the upstream
    /// broke off was seen nowhere but by the client. (The idle cut is counted as
    /// `idle_timeout` where it is made.)
    /// Regression: tests (it) upstreams::an_h2_response_reset_short_of_its_length_is_cut
    fn broke(&self, e: &(dyn std::error::Error + 'static)) {
        // The gateway's own reset of the stream: the client's request body failed (over the
        // limit, aborted), which its own answer and log say; not the upstream's doing.
        // Regression: tests (it) upstreams::a_body_over_the_limit_mid_response_is_not_the_upstreams
        if super::reset_by_us(e) {
            return;
        }
        if let Some(idle) = &self.idle {
            idle.metrics
                .0
                .upstream_error(&idle.metrics.1, "response_body");
        }
        tracing::warn!(error = %crate::errors::text(e), "Upstream response failed mid-body: cut");
    }
}

/// Plain or TLS stream to the upstream.
enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl tokio::io::AsyncRead for Io {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Io {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
