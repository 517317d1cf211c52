//! One client connection after accept (and TLS): which HTTP it speaks, its deadlines, and
//! what it holds while idle.
//!
//! - The protocol: ALPN over TLS; in plain text HTTP/2 by prior knowledge, told from HTTP/1
//!   by the first bytes (which hyper then reads again).
//! - Deadlines, kept by one timer per connection ([`Activity::check`]): a started HTTP/1 head
//!   has `header_read_timeout` from its first byte; a connection with no request in flight
//!   has `idle_timeout`; a response its client stops taking has `send_timeout`
//!   ([`super::progress`]).
//! - Memory: an HTTP/1.1 connection with no request for [`PARK_AFTER`] is *parked*: hyper's
//!   connection (its 8 KiB read and 8 KiB write buffers, its state) is taken apart and only
//!   the socket (and TLS session) is kept until the client sends again.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::frames::{Abuse, FrameMeter};
use super::listener::Handler;
use super::progress::{Guarded, Progress, StreamExec};
use super::tracked::Tracked;
use super::{Conn, Shared};
use crate::snapshot::ServerSettings;

/// An HTTP/1.1 connection with no byte moved for this long gives its hyper buffers back.
/// Short, so that a burst of new connections does not hold a burst of buffers; a client
/// sending request after request never waits this long, and pays nothing.
const PARK_AFTER: Duration = Duration::from_millis(100);

/// How long a connection past an HTTP/2 limit may take to get its GOAWAY out and close.
const ABUSE_LINGER: Duration = Duration::from_secs(1);
/// How long a draining connection with nothing left to answer is given to close itself (an
/// HTTP/2 client acknowledging the GOAWAY's PING) before the gateway closes it.
const DRAINED_LINGER: Duration = Duration::from_secs(2);

const ABUSE_RESETS: u8 = 1;
const ABUSE_CONTROL: u8 = 2;

/// A client stream the gateway can wait on without reading: a parked connection holds no
/// read buffer.
pub(super) trait ReadReady:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static
{
    /// Ready when the client has sent something (or closed).
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>>;
}

/// Activity of one connection, for its deadlines. I/O only bumps a counter (no clock read per
/// read or write); the clock is read once when a request ends and once when an HTTP/1 head
/// starts.
#[derive(Debug)]
pub(super) struct Activity {
    /// What the millisecond fields count from.
    epoch: Instant,
    /// Requests whose response is not yet fully sent.
    in_flight: AtomicUsize,
    /// Reads and writes of at least one byte (stall deadline while draining or in flight).
    moves: AtomicU64,
    /// Whether the last write or flush could not complete (the client is not reading).
    write_blocked: AtomicBool,
    /// When the last request in flight ended (ms since `epoch`): the idle deadline counts
    /// from it. Not bytes: HTTP/2 PINGs, from either side, move bytes on a connection with
    /// nothing to do.
    idle_since: AtomicU64,
    /// When the first byte of an HTTP/1 request head arrived with no request in flight (ms
    /// since `epoch`, plus one; 0: none): the header deadline counts from it.
    head_started: AtomicU64,
    /// An HTTP/2 limit the client went past (0 until then). The connection's stream sets it
    /// while the connection's own task reads, and wakes that task ([`Tracked`]).
    abuse: AtomicU8,
    /// h2 wrote a GOAWAY `ENHANCE_YOUR_CALM` of its own (one of its bounds: streams reset
    /// before they were accepted, a CONTINUATION flood), counted when the connection ends.
    library_goaway: AtomicBool,
    /// The progress of the newest response: an HTTP/2 stream's is taken by [`StreamExec`]
    /// as hyper spawns it; an HTTP/1.1 connection's loop watches it.
    next: Arc<std::sync::Mutex<Option<Arc<Progress>>>>,
    /// The connection's request bodies still arriving (`Conn::bodies`).
    bodies: crate::server::BodiesOpen,
}

/// A connection's deadlines, from the settings.
struct Deadlines {
    header: Duration,
    idle: Duration,
    send: Duration,
    /// How often a connection with a request in flight (or draining) is looked at.
    period: Duration,
}

/// What the connection's check decided.
enum Step {
    /// Check again then.
    At(Instant),
    /// No request for the idle timeout: close gracefully.
    Idle,
    /// HTTP/1.1 with nothing to do: give hyper's buffers back.
    Park,
    /// Close now, for this limit.
    Cut(&'static str),
}

/// How [`drive`] ended.
enum Ended {
    Closed,
    Park,
}

/// The check's view of [`Activity::moves`]: when it was last seen to change.
struct Quiet {
    seen: u64,
    since: Instant,
}

/// What a connection's loops share.
struct Ctx<'a, H> {
    limits: Deadlines,
    shared: &'a Arc<Shared>,
    handler: Arc<H>,
    activity: Arc<Activity>,
    conn: Arc<Conn>,
    shutdown: watch::Receiver<bool>,
}

/// Marks a request in flight for as long as it lives (and, on an admin listener, its
/// connection busy: not closed for a newer one of its client).
struct InFlight(
    Arc<Activity>,
    #[expect(dead_code, reason = "held")] Option<super::listener::Busy>,
);

// === impl ReadReady ===

impl ReadReady for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Self::poll_read_ready(self, cx)
    }
}

/// Boxed once the handshake is done (`super::listener`).
impl ReadReady for Box<tokio_rustls::server::TlsStream<TcpStream>> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // A parked connection's last read ended with the socket empty and rustls holding no
        // plaintext (hyper reads until it gets `Pending`), so the socket tells.
        self.get_ref().0.poll_read_ready(cx)
    }
}

/// Serves HTTP on an established (possibly TLS) stream until the client leaves, the idle
/// deadline passes or the gateway drains. `alpn_h2` is what TLS negotiated, `None` in plain
/// text.
#[expect(clippy::too_many_arguments, reason = "two call sites, all distinct")]
pub(super) async fn serve<I: ReadReady, H: Handler>(
    io: I,
    conn: Arc<Conn>,
    http2: bool,
    alpn_h2: Option<bool>,
    s: &ServerSettings,
    shared: &Arc<Shared>,
    handler: Arc<H>,
    shutdown: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new(conn.bodies.clone()));
    let mut io = Tracked::new(io, Arc::clone(&activity), FrameMeter::new(s.http2));
    let mut ctx = Ctx {
        limits: Deadlines::of(s),
        shared,
        handler,
        activity,
        conn,
        shutdown,
    };
    let h2 = match alpn_h2 {
        Some(h2) => h2 && http2,
        None if http2 => {
            let idle = ctx.activity.at(0) + s.idle_timeout;
            tokio::select! {
                sniffed = io.sniff_h2() => match sniffed {
                    Ok(Some(h2)) => h2,
                    _ => return,
                },
                () = tokio::time::sleep_until(idle) => {
                    shared.metrics.limit("idle_timeout");
                    return;
                }
                _ = ctx.shutdown.changed() => return,
            }
        }
        None => false,
    };
    // Boxed: hyper's HTTP/2 connection is large, and a future is as large as its largest
    // state; every HTTP/1.1 connection's task would carry it.
    if h2 {
        Box::pin(serve_h2(io, s, &mut ctx)).await;
        if ctx.activity.library_goaway.load(Ordering::Relaxed) {
            shared.metrics.limit("http2_library");
        }
    } else {
        serve_h1(io, s, &mut ctx).await;
    }
}

/// The service hyper calls for each request of a connection.
fn service<H: Handler>(
    ctx: &Ctx<'_, H>,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = hyper::Response<Guarded<InFlight>>,
    Error = Infallible,
    Future: Send,
> + Clone
+ use<H> {
    let activity = Arc::clone(&ctx.activity);
    let slot = ctx.conn.client_slot.clone();
    // The layers every door shares (`super::layers`), around this door's handler.
    let stack = super::layers::stack(
        Arc::clone(&ctx.handler),
        Arc::clone(&ctx.conn),
        ctx.shared,
        match H::DECIDES_ONLY {
            true => &ctx.shared.decisions_in_flight,
            false => &ctx.shared.in_flight,
        },
    );
    service_fn(move |req: hyper::Request<Incoming>| {
        // Called by hyper right before it spawns an HTTP/2 stream, which takes this.
        let progress = Arc::new(Progress::new());
        if let Ok(mut next) = activity.next.lock() {
            *next = Some(Arc::clone(&progress));
        }
        // Dropped when the response's last byte is handed to hyper, or when the client goes
        // away first.
        // Why the slot too: a newer connection of an admin client closed this one while it
        // still wrote a response (the busy mark ended with the handler, before the body).
        let in_flight = InFlight::new(
            Arc::clone(&activity),
            slot.as_ref().map(super::listener::ClientSlot::busy),
        );
        let answer = tower::ServiceExt::oneshot(stack.clone(), req);
        async move {
            let Ok(resp) = answer.await;
            Ok::<_, Infallible>(resp.map(|body| Guarded::new(body, progress, in_flight)))
        }
    })
}

async fn serve_h2<I: ReadReady, H: Handler>(
    mut io: Tracked<I>,
    s: &ServerSettings,
    ctx: &mut Ctx<'_, H>,
) {
    let exec = StreamExec {
        next: Arc::clone(&ctx.activity.next),
        send_timeout: s.send_timeout,
        metrics: Arc::clone(&ctx.shared.metrics),
    };
    io.gather_writes();
    let mut builder = http2::Builder::new(exec);
    builder
        .timer(TokioTimer::new())
        // WebSockets over HTTP/2 (RFC 8441): an extended CONNECT is decided, and relayed, only
        // on a rule whose `upgrade` names `websocket` (`proxy::upgrade`).
        .enable_connect_protocol()
        .max_concurrent_streams(s.max_concurrent_streams)
        .max_header_list_size(
            u32::try_from(s.max_header_bytes + s.max_target_bytes).unwrap_or(u32::MAX),
        )
        .max_pending_accept_reset_streams(Some(
            usize::try_from(s.http2.max_pending_resets).unwrap_or(usize::MAX),
        ))
        .max_local_error_reset_streams(Some(256))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let connection = builder.serve_connection(TokioIo::new(io), service(ctx));
    tokio::pin!(connection);
    drive(connection, |c| c.graceful_shutdown(), ctx, false).await;
}

async fn serve_h1<I: ReadReady, H: Handler>(
    mut io: Tracked<I>,
    s: &ServerSettings,
    ctx: &mut Ctx<'_, H>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // Why: hyper's deadline runs from the moment it waits for a head, so a kept-alive
        // connection would be closed at the header timeout rather than the idle timeout;
        // the connection's loop keeps both (the header one from the head's first byte).
        // Regression: tests (it) abuse::h1_keep_alive_waits_for_the_idle_timeout
        .header_read_timeout(None)
        // Room for a head over the limits to be read whole, so the service answers it with
        // its own 414 or 431 and a body; beyond this hyper answers a bare 431.
        .max_buf_size(s.max_header_bytes + s.max_target_bytes)
        .max_headers(ctx.handler.max_headers(s.max_headers))
        .keep_alive(true);
    let mut svc = service(ctx);
    loop {
        // Boxed: parked, the connection's state and buffers are freed, not kept in this task.
        // With upgrades: a door that answers `101` gets the connection (a WebSocket tunnel).
        let mut connection = Box::pin(
            builder
                .serve_connection(TokioIo::new(io), svc)
                .with_upgrades(),
        );
        // Boxed, as the connection is: the task keeps only what a parked connection needs.
        let ended = Box::pin(drive(
            connection.as_mut(),
            |c| c.graceful_shutdown(),
            ctx,
            true,
        ))
        .await;
        if let Ended::Closed = ended {
            drop(connection);
            run_tunnel(ctx).await;
            return;
        }
        // Taken apart outside the async fn: hyper's parts (the I/O, the service, the read
        // buffer) get no slot of their own in the connection's task.
        let Some((taken_io, taken_svc, read_buf)) = take_apart(connection) else {
            run_tunnel(ctx).await;
            return;
        };
        (io, svc) = (taken_io, taken_svc);
        if !read_buf.is_empty() {
            // Bytes of a next request hyper had already read: serve them at once.
            ctx.shared.metrics.connections_parked.dec();
            io.replay(read_buf);
            continue;
        }
        // Empty, but still hyper's whole read buffer: not kept while parked.
        drop(read_buf);
        // Regression: tests (it) memory::idle_tls_connections_are_parked_and_cost_little
        let woken = park(&mut io, ctx).await;
        ctx.shared.metrics.connections_parked.dec();
        if !woken {
            return;
        }
    }
}

/// A parked HTTP/1.1 connection's I/O, service and unread bytes (`None`: upgraded).
fn take_apart<I: ReadReady, S, B>(
    connection: Pin<Box<http1::UpgradeableConnection<TokioIo<Tracked<I>>, S>>>,
) -> Option<(Tracked<I>, S, bytes::Bytes)>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let parts = Pin::into_inner(connection).into_parts()?;
    Some((parts.io.into_inner(), parts.service, parts.read_buf))
}

/// Runs the tunnel a door opened on this connection, if any, until it ends. A tunnel has no
/// request boundary to finish at: it watches the drain itself and ends at once then (a
/// WebSocket's with its close frames, `proxy::tunnel`), as it keeps its own deadlines (idle,
/// lifetime, credential expiry). Regression: tests (it) edge::tunnel_is_closed_on_shutdown
async fn run_tunnel<H>(ctx: &mut Ctx<'_, H>) {
    if let Some(tunnel) = ctx.conn.tunnel.take() {
        tunnel.await;
    }
}

/// Waits, holding only the socket, until the client sends again (`true`), or the idle
/// deadline passes or the gateway drains (`false`).
async fn park<I: ReadReady, H>(io: &mut Tracked<I>, ctx: &mut Ctx<'_, H>) -> bool {
    use tokio::io::AsyncWriteExt;
    // Whatever TLS still holds (a session ticket, a key update) goes out first.
    if io.flush().await.is_err() || *ctx.shutdown.borrow() {
        return false;
    }
    let idle = ctx.activity.idle_deadline(&ctx.limits);
    tokio::select! {
        ready = std::future::poll_fn(|cx| io.poll_inner_read_ready(cx)) => ready.is_ok(),
        () = tokio::time::sleep_until(idle) => {
            ctx.shared.metrics.limit("idle_timeout");
            false
        }
        _ = ctx.shutdown.changed() => false,
    }
}

/// Runs a hyper connection until it ends, a deadline ends it, or (`parkable`) it is idle long
/// enough to be parked.
/// `graceful` starts hyper's graceful shutdown (HTTP/2: GOAWAY).
async fn drive<C: Future<Output = hyper::Result<()>>, H: Handler>(
    mut connection: Pin<&mut C>,
    graceful: fn(Pin<&mut C>),
    ctx: &mut Ctx<'_, H>,
    parkable: bool,
) -> Ended {
    let activity = Arc::clone(&ctx.activity);
    let limits = &ctx.limits;
    let mut bytes_seen = Quiet {
        seen: activity.moves.load(Ordering::Relaxed),
        since: Instant::now(),
    };
    let mut draining = *ctx.shutdown.borrow();
    let mut drain_started = Instant::now();
    if draining {
        graceful(connection.as_mut());
    }
    let first = if parkable {
        limits.period.min(PARK_AFTER)
    } else {
        limits.period
    };
    let check = tokio::time::sleep(first);
    tokio::pin!(check);
    let mut abuse_deadline = None;
    loop {
        tokio::select! {
            res = connection.as_mut() => {
                if let Err(e) = res {
                    // Why: hyper answers a head it cannot read (400, 431) itself, before any
                    // door sees a request: a scanner's flood left no count at all.
                    // Regression: tests (it) abuse::an_unreadable_head_is_counted
                    if let Some(kind) = unreadable_head(&e) {
                        ctx.shared.metrics.bad_request(H::DOOR, kind);
                    }
                    tracing::debug!(error = %e, "Connection ended with an error");
                }
                return Ended::Closed;
            }
            // Why: a flag read on each wake, not a `Notify`, whose waiting future takes a lock
            // on every poll: this loop is polled a few times per request.
            // Regression: tests (it) abuse::paced_rapid_reset_gets_goaway,
            // abuse::ping_and_settings_floods_get_goaway
            () = activity.abuse_flagged(), if abuse_deadline.is_none() => {
                // Not closed at once when the GOAWAY is written: with the client's bytes
                // unread, a close would reset the connection and could lose the GOAWAY. The
                // client closes on reading it, or the linger ends it.
                let limit = activity.abuse_name();
                ctx.shared.metrics.limit(limit);
                tracing::debug!(peer = %ctx.conn.info.peer, limit, "HTTP/2 limit passed: GOAWAY ENHANCE_YOUR_CALM");
                abuse_deadline = Some(Instant::now() + ABUSE_LINGER);
            }
            () = sleep_until_opt(abuse_deadline) => return Ended::Closed,
            _ = ctx.shutdown.changed(), if !draining => {
                draining = true;
                drain_started = Instant::now();
                graceful(connection.as_mut());
                check.as_mut().reset(drain_started + DRAINED_LINGER);
            }
            () = &mut check => {
                let now = Instant::now();
                let io_quiet = bytes_seen.update(activity.moves.load(Ordering::Relaxed), now);
                let step = if draining {
                    // Why: a graceful close waits for responses to be written; a client that
                    // stops reading would hold the connection (and its upstream) forever.
                    // And HTTP/2's waits for the client to acknowledge the GOAWAY's PING: one
                    // that never did, with nothing in flight, kept the gateway from exiting
                    // for the whole `shutdown_grace`. With nothing left to answer, it ends.
                    // Regression: tests (it) shutdown::a_silent_http2_client_does_not_hold_the_drain
                    let answered = activity.in_flight.load(Ordering::Relaxed) == 0
                        && !ctx.conn.tunnel.is_open();
                    let since = now - drain_started;
                    if (answered && since >= DRAINED_LINGER)
                        || (since >= limits.idle && io_quiet >= limits.idle)
                    {
                        Step::Cut("drain")
                    } else {
                        Step::At(now + limits.period.min(DRAINED_LINGER))
                    }
                } else if ctx.conn.tunnel.is_open() {
                    // An HTTP/2 stream carries a tunnel: not idle; the tunnel keeps its own
                    // deadlines (`proxy::tunnel`).
                    Step::At(now + limits.period)
                } else {
                    activity.check(limits, io_quiet, now, parkable)
                };
                match step {
                    Step::At(next) => check.as_mut().reset(next),
                    Step::Park => {
                        ctx.shared.metrics.connections_parked.inc();
                        return Ended::Park;
                    }
                    Step::Idle => {
                        // Regression: tests (it) proxy::h2_pings_do_not_keep_a_connection_open,
                        // abuse::h1_keep_alive_waits_for_the_idle_timeout
                        ctx.shared.metrics.limit("idle_timeout");
                        draining = true;
                        drain_started = now;
                        graceful(connection.as_mut());
                        check.as_mut().reset(now + limits.period);
                    }
                    Step::Cut(limit) => {
                        ctx.shared.metrics.limit(limit);
                        tracing::debug!(peer = %ctx.conn.info.peer, limit, "Connection closed at its deadline");
                        return Ended::Closed;
                    }
                }
            }
        }
    }
}

/// How long the client of an HTTP/1.1 connection has owed progress on its response (zero for
/// HTTP/2, whose streams each have their own watchdog and take their progress from the slot).
fn h1_owed_for(activity: &Activity) -> Duration {
    activity
        .next
        .lock()
        .ok()
        .and_then(|p| p.as_ref().and_then(|p| p.owed_since()))
        .map_or(Duration::ZERO, |since| since.elapsed())
}

/// The `bad_requests_total` kind of a request head hyper refused and answered itself: one
/// over the size limits (`headers_too_large`, 431 or 414, as the gateway names its own 431) or one that does not parse
/// (`unparsable_head`, 400 or 505).
fn unreadable_head(e: &hyper::Error) -> Option<&'static str> {
    if e.is_parse_too_large() {
        Some("headers_too_large")
    } else if e.is_parse() {
        Some("unparsable_head")
    } else {
        None
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

// === impl Activity ===

impl Activity {
    pub(super) fn new(bodies: crate::server::BodiesOpen) -> Self {
        Self {
            bodies,
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            moves: AtomicU64::new(0),
            write_blocked: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            abuse: AtomicU8::new(0),
            library_goaway: AtomicBool::new(false),
            next: Arc::default(),
        }
    }

    fn ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    fn idle_deadline(&self, d: &Deadlines) -> Instant {
        self.at(self.idle_since.load(Ordering::Relaxed)) + d.idle
    }

    pub(super) fn touch(&self) {
        self.moves.fetch_add(1, Ordering::Relaxed);
    }

    /// Records whether the last write or flush completed.
    pub(super) fn write_blocked(&self, blocked: bool) {
        self.write_blocked.store(blocked, Ordering::Relaxed);
    }

    /// Called by the I/O for bytes read on an HTTP/1 connection: with no request in flight
    /// and no body arriving they start a request head, and the header deadline runs from the
    /// first of them.
    ///
    /// Why the body: an upload going on after an early answer (an upstream that answers
    /// before reading it) was cut at the header deadline, counted as `header_read_timeout`.
    /// Regression: tests (it) abuse::an_upload_after_an_early_answer_is_no_request_head
    pub(super) fn h1_read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == 0
            && !self.bodies.arriving()
        {
            self.head_started.store(self.ms() + 1, Ordering::Relaxed);
        }
    }

    pub(super) fn abused(&self, abuse: Abuse) {
        let code = match abuse {
            Abuse::Resets => ABUSE_RESETS,
            Abuse::ControlFrames => ABUSE_CONTROL,
        };
        self.abuse.store(code, Ordering::Relaxed);
    }

    /// Records that h2 ended the connection on one of its own bounds.
    pub(super) fn library_goaway(&self) {
        self.library_goaway.store(true, Ordering::Relaxed);
    }

    /// Ready once an HTTP/2 limit is passed.
    fn abuse_flagged(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(|_| {
            if self.abuse.load(Ordering::Relaxed) == 0 {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
    }

    /// The metric name of the limit passed.
    fn abuse_name(&self) -> &'static str {
        match self.abuse.load(Ordering::Relaxed) {
            ABUSE_RESETS => "http2_resets",
            ABUSE_CONTROL => "http2_control_frames",
            _ => "http2_other",
        }
    }

    /// The deadlines of a connection that is not draining. Exact without waking often:
    /// whatever happens before the next check (a head starts, a request starts or ends) has
    /// a deadline at least the shortest timeout away, so the next check comes no later.
    /// `h1`: HTTP/1.1, whose hyper connection may be taken apart when idle (parked), unless a
    /// request body is arriving or was dropped unfinished: then hyper is mid-request, and the
    /// rest of the body must be read as that body.
    fn check(&self, d: &Deadlines, io_quiet: Duration, now: Instant, h1: bool) -> Step {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            if h1_owed_for(self) >= d.send {
                // An HTTP/1.1 response the client stopped taking.
                // Regression: tests (it) proxy::stalled_reader_is_disconnected
                return Step::Cut("send_timeout");
            }
            if io_quiet >= d.idle {
                // A response under way but no byte moved either way for the whole idle
                // period (the upstream's response_timeout is shorter by default).
                return Step::Cut("stalled");
            }
            return Step::At(now + d.period);
        }
        let soon = now + d.header.min(d.send);
        // Why: an HTTP/1.1 body still arriving once its answer was written (an upstream that
        // answered early) was bounded by nothing but the idle deadline (a minute by default)
        // once its bytes stopped counting as a late request head; it gets the header
        // deadline from the answer's end, as it had, under its own name.
        // Regression: tests (it) abuse::an_upload_after_an_early_answer_is_no_request_head
        if h1 && self.bodies.arriving() {
            let due = self.at(self.idle_since.load(Ordering::Relaxed)) + d.header;
            if now >= due {
                return Step::Cut("body_timeout");
            }
            return Step::At(due.min(soon));
        }
        let parkable = h1 && self.bodies.settled();
        match self.head_started.load(Ordering::Relaxed) {
            0 => {
                let idle_since = self.at(self.idle_since.load(Ordering::Relaxed));
                let deadline = idle_since + d.idle;
                if now >= deadline {
                    return Step::Idle;
                }
                if !parkable {
                    return Step::At(deadline.min(soon));
                }
                // No byte moved either way for a while and nothing left to write: hyper's
                // buffers are empty.
                if io_quiet >= PARK_AFTER && !self.write_blocked.load(Ordering::Relaxed) {
                    return Step::Park;
                }
                let park_at = now
                    + PARK_AFTER
                        .saturating_sub(io_quiet)
                        .max(d.period.min(PARK_AFTER));
                Step::At(deadline.min(soon).min(park_at))
            }
            started => {
                // Regression: tests (it) abuse::h1_started_head_gets_the_header_timeout
                let deadline = self.at(started - 1) + d.header;
                if now >= deadline {
                    Step::Cut("header_read_timeout")
                } else {
                    Step::At(deadline.min(soon))
                }
            }
        }
    }
}

// === impl Deadlines ===

impl Deadlines {
    fn of(s: &ServerSettings) -> Self {
        let shortest = s
            .header_read_timeout
            .min(s.idle_timeout)
            .min(s.send_timeout);
        Self {
            header: s.header_read_timeout,
            idle: s.idle_timeout,
            send: s.send_timeout,
            period: (shortest / 4).max(Duration::from_millis(50)),
        }
    }
}

// === impl Quiet ===

impl Quiet {
    /// Time since the counter last moved, as seen at checks: exact to one check period.
    fn update(&mut self, count: u64, now: Instant) -> Duration {
        if count != self.seen {
            self.seen = count;
            self.since = now;
        }
        now - self.since
    }
}

// === impl InFlight ===

impl InFlight {
    fn new(activity: Arc<Activity>, busy: Option<super::listener::Busy>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.head_started.store(0, Ordering::Relaxed);
        Self(activity, busy)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        if self.0.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.idle_since.store(self.0.ms(), Ordering::Relaxed);
        }
    }
}
