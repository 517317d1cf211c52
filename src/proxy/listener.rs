//! Accepting connections: connection limit, TLS handshake deadline, HTTP/1 and HTTP/2 with a
//! header-read deadline, idle deadline, and graceful drain on shutdown.
//!
//! Each accepted connection reads the *current* snapshot's listener settings, so a certificate
//! reload applies to the next handshake without touching established connections.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::time::Instant;

use super::frames::{Abuse, FrameMeter};
use super::progress::{Guarded, Progress, StreamExec};
use super::service::{self, Conn, Shared};
use super::tracked::Tracked;
use crate::body::ResponseBody;
use crate::request::facts::{ClientCert, ConnInfo, TlsInfo};
use crate::snapshot::ServerSettings;

/// What a listener's connections are served by: one per door. The loop around it (accept,
/// TLS, HTTP/1 and HTTP/2, deadlines, abuse limits, drain) is the same for every door.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request arriving on `conn`; never fails (every failure is a response).
    fn call(
        &self,
        conn: Arc<Conn>,
        req: hyper::Request<Incoming>,
    ) -> impl std::future::Future<Output = hyper::Response<ResponseBody>> + Send + use<Self>;
}

/// The reverse proxy's handler.
#[derive(Debug, Clone)]
pub struct ProxyHandler(pub Arc<Shared>);

impl Handler for ProxyHandler {
    fn call(
        &self,
        conn: Arc<Conn>,
        req: hyper::Request<Incoming>,
    ) -> impl std::future::Future<Output = hyper::Response<ResponseBody>> + Send + use<> {
        let shared = Arc::clone(&self.0);
        async move { service::handle(&shared, &conn, req).await }
    }
}

/// Everything an accept loop needs.
pub struct AcceptLoop<H> {
    /// The door's handler.
    pub handler: Arc<H>,
    /// The door this listener serves (what its connections' [`ConnInfo`] say).
    pub door: crate::request::facts::Door,
    /// Position of the listener in the config (and the snapshot).
    pub index: usize,
    /// Its name.
    pub name: Arc<str>,
    /// The bound socket.
    pub listener: TcpListener,
    /// Shared request state.
    pub shared: Arc<Shared>,
    /// Permits for open connections, across all listeners.
    pub connections: Arc<Semaphore>,
    /// Becomes `true` when the gateway shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Held by every connection; the drain completes when all are dropped.
    pub drain: mpsc::Sender<()>,
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
    /// When the last request in flight ended (ms since `epoch`): the idle deadline counts
    /// from it. Not bytes: HTTP/2 PINGs, from either side, move bytes on a connection with
    /// nothing to do.
    idle_since: AtomicU64,
    /// When the first byte of an HTTP/1 request head arrived with no request in flight (ms
    /// since `epoch`, plus one; 0: none): the header deadline counts from it.
    head_started: AtomicU64,
    /// An HTTP/2 limit the client went past (0 until then); `abused` wakes the
    /// connection's loop when it is.
    abuse: AtomicU8,
    abused: Notify,
    /// The progress of the newest response: an HTTP/2 stream's is taken by [`StreamExec`]
    /// as hyper spawns it; an HTTP/1.1 connection's loop watches it.
    next: Arc<std::sync::Mutex<Option<Arc<Progress>>>>,
}

const ABUSE_RESETS: u8 = 1;
const ABUSE_CONTROL: u8 = 2;

/// How long a connection past an HTTP/2 limit may take to get its GOAWAY out and close.
const ABUSE_LINGER: Duration = Duration::from_secs(1);

/// The check's view of [`Activity::moves`]: when it was last seen to change.
struct Quiet {
    seen: u64,
    since: Instant,
}

/// What the connection's check decided.
enum Step {
    /// Check again then.
    At(Instant),
    /// No request for the idle timeout: close gracefully.
    Idle,
    /// Close now, for this limit.
    Cut(&'static str),
}

// === impl AcceptLoop ===

impl<H: Handler> AcceptLoop<H> {
    /// Accepts until shutdown, then drops the socket so the kernel refuses new clients.
    pub async fn run(mut self) {
        loop {
            let permit = tokio::select! {
                p = Arc::clone(&self.connections).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = self.shutdown.changed() => break,
            };
            let accepted = tokio::select! {
                r = self.listener.accept() => r,
                _ = self.shutdown.changed() => break,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = &*self.name, error = %e, "Accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            // Why: on a dual-stack socket an IPv4 client arrives as `::ffff:a.b.c.d`; every
            // network check (trusted proxies, trusted headers, `require.networks`) and the
            // logs see the IPv4 address it really is.
            let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
            let _ = stream.set_nodelay(true);
            let snapshot = self.shared.current.load();
            let Some(settings) = snapshot.listener(self.index) else {
                continue;
            };
            let tls = settings.tls.clone();
            let http2 = settings.http2;
            let server = snapshot.server.clone();
            drop(snapshot);
            let shared = Arc::clone(&self.shared);
            let name = Arc::clone(&self.name);
            let shutdown = self.shutdown.clone();
            let drain = self.drain.clone();
            let handler = Arc::clone(&self.handler);
            let door = self.door;
            tokio::spawn(async move {
                shared.metrics.connections_total.inc();
                shared.metrics.connections_open.inc();
                let endpoint = Endpoint {
                    door,
                    listener: name,
                    http2,
                };
                serve_stream(
                    stream, peer, endpoint, tls, server, &shared, handler, shutdown,
                )
                .await;
                shared.metrics.connections_open.dec();
                drop(permit);
                drop(drain);
            });
        }
    }
}

/// Where a connection arrived: the listener, its door and whether it speaks HTTP/2.
struct Endpoint {
    door: crate::request::facts::Door,
    listener: Arc<str>,
    http2: bool,
}

#[expect(clippy::too_many_arguments, reason = "one call site, all distinct")]
async fn serve_stream<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    endpoint: Endpoint,
    tls: Option<Arc<crate::tls::server::ListenerTls>>,
    server: ServerSettings,
    shared: &Arc<Shared>,
    handler: Arc<H>,
    shutdown: watch::Receiver<bool>,
) {
    let Endpoint {
        door,
        listener,
        http2,
    } = endpoint;
    let Some(tls) = tls else {
        let conn = Conn::new(ConnInfo::for_door(door, peer, listener, None));
        serve_http(
            stream, conn, http2, None, &server, shared, handler, shutdown,
        )
        .await;
        return;
    };
    let handshake = tokio::time::timeout(server.header_read_timeout, tls.accept(stream)).await;
    let (stream, binding) = match handshake {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            shared.metrics.tls_handshake_errors.inc();
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            shared.metrics.tls_handshake_errors.inc();
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let (_, session) = stream.get_ref();
    let alpn = session.alpn_protocol().map(Arc::<[u8]>::from);
    let info = TlsInfo {
        sni: session.server_name().map(Arc::from),
        alpn: alpn.clone(),
        // Parsed once per connection: every request on it sees the same names.
        client_cert: session
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| Arc::new(ClientCert::parse(c).unwrap_or_else(|| ClientCert::unreadable(c)))),
        binding,
    };
    let conn = Conn::new(ConnInfo::for_door(door, peer, listener, Some(info)));
    let alpn_h2 = Some(alpn.as_deref() == Some(b"h2"));
    serve_http(
        stream, conn, http2, alpn_h2, &server, shared, handler, shutdown,
    )
    .await;
}

/// Serves HTTP on an established (possibly TLS) stream until the client leaves, the idle
/// deadline passes or the gateway drains.
#[expect(clippy::too_many_arguments, reason = "two call sites, all distinct")]
async fn serve_http<I, H: Handler>(
    io: I,
    conn: Conn,
    http2: bool,
    alpn_h2: Option<bool>,
    s: &ServerSettings,
    shared: &Arc<Shared>,
    handler: Arc<H>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let exec = StreamExec {
        next: Arc::clone(&activity.next),
        send_timeout: s.send_timeout,
        metrics: Arc::clone(&shared.metrics),
    };
    let mut builder = auto::Builder::new(exec);
    builder
        .http1()
        .timer(TokioTimer::new())
        // Why: hyper's deadline runs from the moment it waits for a head, so a kept-alive
        // connection would be closed at the header timeout rather than the idle timeout;
        // the connection's loop keeps both (the header one from the head's first byte).
        // Regression: tests (it) abuse::h1_keep_alive_waits_for_the_idle_timeout
        .header_read_timeout(None)
        // Room for a head over the limits to be read whole, so the service answers it with
        // its own 414 or 431 and a body; beyond this hyper answers a bare 431.
        .max_buf_size(s.max_header_bytes + s.max_target_bytes)
        .max_headers(s.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(s.max_concurrent_streams)
        .max_header_list_size(
            u32::try_from(s.max_header_bytes + s.max_target_bytes).unwrap_or(u32::MAX),
        )
        .max_pending_accept_reset_streams(Some(64))
        .max_local_error_reset_streams(Some(256))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    // Over TLS, ALPN decides the protocol; in plain text, HTTP/2 only by prior knowledge.
    let builder = match alpn_h2 {
        Some(true) if http2 => builder.http2_only(),
        Some(_) => builder.http1_only(),
        None if http2 => builder,
        None => builder.http1_only(),
    };

    let io = TokioIo::new(Tracked::new(
        io,
        Arc::clone(&activity),
        FrameMeter::new(s.http2),
    ));
    let conn = Arc::new(conn);
    let peer_conn = Arc::clone(&conn);
    let svc = {
        let activity = Arc::clone(&activity);
        service_fn(move |req: hyper::Request<Incoming>| {
            let progress = Arc::new(Progress::new());
            if let Ok(mut next) = activity.next.lock() {
                *next = Some(Arc::clone(&progress));
            }
            // Dropped when the response's last byte is handed to hyper, or when the client
            // goes away first.
            let in_flight = InFlight::new(Arc::clone(&activity));
            let answer = handler.call(Arc::clone(&conn), req);
            async move {
                let resp = answer.await;
                Ok::<_, Infallible>(resp.map(|body| Guarded::new(body, progress, in_flight)))
            }
        })
    };
    let connection = builder.serve_connection(io, svc);
    tokio::pin!(connection);
    let limits = Deadlines::of(s);
    let mut bytes_seen = Quiet {
        seen: 0,
        since: Instant::now(),
    };
    let mut draining = *shutdown.borrow();
    let mut drain_started = Instant::now();
    if draining {
        connection.as_mut().graceful_shutdown();
    }
    let check = tokio::time::sleep(limits.period);
    tokio::pin!(check);
    let mut abuse_deadline = None;
    loop {
        tokio::select! {
            res = connection.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "Connection ended with an error");
                }
                break;
            }
            () = activity.abused.notified() => {
                // Not closed at once when the GOAWAY is written: with the client's bytes
                // unread, a close would reset the connection and could lose the GOAWAY. The
                // client closes on reading it, or the linger ends it.
                if abuse_deadline.is_none() {
                    let limit = activity.abuse_name();
                    shared.metrics.limit(limit);
                    tracing::debug!(peer = %peer_conn.info.peer, limit, "HTTP/2 limit passed: GOAWAY ENHANCE_YOUR_CALM");
                    abuse_deadline = Some(Instant::now() + ABUSE_LINGER);
                }
            }
            () = sleep_until_opt(abuse_deadline) => break,
            _ = shutdown.changed(), if !draining => {
                draining = true;
                drain_started = Instant::now();
                connection.as_mut().graceful_shutdown();
            }
            () = &mut check => {
                let now = Instant::now();
                let io_quiet = bytes_seen.update(activity.moves.load(Ordering::Relaxed), now);
                let step = if draining {
                    // Why: a graceful close waits for responses to be written; a client that
                    // stops reading would hold the connection (and its upstream) forever.
                    if now - drain_started >= limits.idle && io_quiet >= limits.idle {
                        Step::Cut("drain")
                    } else {
                        Step::At(now + limits.period)
                    }
                } else {
                    activity.check(&limits, io_quiet, now)
                };
                match step {
                    Step::At(next) => check.as_mut().reset(next),
                    Step::Idle => {
                        // Regression: tests (it) proxy::h2_pings_do_not_keep_a_connection_open,
                        // abuse::h1_keep_alive_waits_for_the_idle_timeout
                        shared.metrics.limit("idle_timeout");
                        draining = true;
                        drain_started = now;
                        connection.as_mut().graceful_shutdown();
                        check.as_mut().reset(now + limits.period);
                    }
                    Step::Cut(limit) => {
                        shared.metrics.limit(limit);
                        tracing::debug!(peer = %peer_conn.info.peer, limit, "Connection closed at its deadline");
                        break;
                    }
                }
            }
        }
    }
}

/// A connection's deadlines, from the settings.
struct Deadlines {
    header: Duration,
    idle: Duration,
    send: Duration,
    /// How often a connection with a request in flight (or draining) is looked at.
    period: Duration,
}

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

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Marks a request in flight for as long as it lives.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.head_started.store(0, Ordering::Relaxed);
        Self(activity)
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

// === impl Activity ===

impl Activity {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            moves: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            abuse: AtomicU8::new(0),
            abused: Notify::new(),
            next: Arc::default(),
        }
    }

    fn ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }

    /// Called by the I/O for bytes read on an HTTP/1 connection: with no request in flight
    /// they start a request head, and the header deadline runs from the first of them.
    pub(super) fn h1_read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == 0
        {
            self.head_started.store(self.ms() + 1, Ordering::Relaxed);
        }
    }

    /// The deadlines of a connection that is not draining. Exact without waking often:
    /// whatever happens before the next check (a head starts, a request starts or ends) has
    /// a deadline at least the shortest timeout away, so the next check comes no later.
    fn check(&self, d: &Deadlines, io_quiet: Duration, now: Instant) -> Step {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            let owed = h1_owed_for(self);
            if owed >= d.send {
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
        match self.head_started.load(Ordering::Relaxed) {
            0 => {
                let deadline = self.at(self.idle_since.load(Ordering::Relaxed)) + d.idle;
                if now >= deadline {
                    Step::Idle
                } else {
                    Step::At(deadline.min(soon))
                }
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

    pub(super) fn touch(&self) {
        self.moves.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn abused(&self, abuse: Abuse) {
        let code = match abuse {
            Abuse::Resets => ABUSE_RESETS,
            Abuse::ControlFrames => ABUSE_CONTROL,
        };
        self.abuse.store(code, Ordering::Relaxed);
        self.abused.notify_one();
    }

    /// The metric name of the limit passed.
    fn abuse_name(&self) -> &'static str {
        match self.abuse.load(Ordering::Relaxed) {
            ABUSE_RESETS => "http2_resets",
            ABUSE_CONTROL => "http2_control_frames",
            _ => "http2_other",
        }
    }
}

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
