//! Accepting connections: connection limit, TLS handshake deadline, HTTP/1 and HTTP/2 with a
//! header-read deadline, idle deadline, and graceful drain on shutdown.
//!
//! Each accepted connection reads the *current* snapshot's listener settings, so a certificate
//! reload applies to the next handshake without touching established connections.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, mpsc, watch};

use super::frames::{Abuse, FrameMeter};
use super::progress::{Guarded, Progress, StreamExec};
use super::service::{self, Shared};
use super::tracked::Tracked;
use crate::request::facts::{ClientCert, ConnInfo, TlsInfo};
use crate::snapshot::ServerSettings;

/// Everything an accept loop needs.
pub struct AcceptLoop {
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

/// Activity of one connection, for the idle and stall deadlines. Events only bump counters
/// (no clock read per I/O); the connection's tick notices when each last moved.
#[derive(Debug, Default)]
pub(super) struct Activity {
    /// Requests whose response is not yet fully sent.
    in_flight: AtomicUsize,
    /// Reads and writes of at least one byte (stall deadline).
    moves: AtomicU64,
    /// Requests starting and ending (idle deadline). Not bytes: HTTP/2 PINGs, from either
    /// side, move bytes on a connection with nothing to do.
    requests: AtomicU64,
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

/// The tick's view of an [`Activity`]: when its counter was last seen to change.
struct Quiet {
    seen: u64,
    since: Instant,
}

// === impl AcceptLoop ===

impl AcceptLoop {
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
            tokio::spawn(async move {
                shared.metrics.connections_total.inc();
                shared.metrics.connections_open.inc();
                serve_stream(stream, peer, name, tls, http2, server, &shared, shutdown).await;
                shared.metrics.connections_open.dec();
                drop(permit);
                drop(drain);
            });
        }
    }
}

#[expect(clippy::too_many_arguments, reason = "one call site, all distinct")]
async fn serve_stream(
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<str>,
    tls: Option<Arc<crate::tls::server::ListenerTls>>,
    http2: bool,
    server: ServerSettings,
    shared: &Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let Some(tls) = tls else {
        let conn = ConnInfo::new(peer, listener, None);
        serve_http(stream, conn, http2, None, &server, shared, shutdown).await;
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
    let conn = ConnInfo::new(peer, listener, Some(info));
    let alpn_h2 = Some(alpn.as_deref() == Some(b"h2"));
    serve_http(stream, conn, http2, alpn_h2, &server, shared, shutdown).await;
}

/// Serves HTTP on an established (possibly TLS) stream until the client leaves, the idle
/// deadline passes or the gateway drains.
async fn serve_http<I>(
    io: I,
    conn: ConnInfo,
    http2: bool,
    alpn_h2: Option<bool>,
    s: &ServerSettings,
    shared: &Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let exec = StreamExec {
        next: Arc::clone(&activity.next),
        send_timeout: s.send_timeout,
        metrics: Arc::clone(&shared.metrics),
    };
    let mut builder = auto::Builder::new(exec);
    builder
        .http1()
        .timer(TokioTimer::new())
        // Why: without a timer hyper silently disables the header-read deadline.
        .header_read_timeout(s.header_read_timeout)
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
        let shared = Arc::clone(shared);
        service_fn(move |req: hyper::Request<Incoming>| {
            let progress = Arc::new(Progress::new());
            if let Ok(mut next) = activity.next.lock() {
                *next = Some(Arc::clone(&progress));
            }
            let activity = Arc::clone(&activity);
            let shared = Arc::clone(&shared);
            let conn = Arc::clone(&conn);
            async move {
                // Dropped when the response's last byte is handed to hyper, or when the client
                // goes away first.
                let in_flight = InFlight::new(activity);
                let resp = service::handle(&shared, &conn, req).await;
                Ok::<_, Infallible>(resp.map(|body| Guarded::new(body, progress, in_flight)))
            }
        })
    };
    let connection = builder.serve_connection(io, svc);
    tokio::pin!(connection);
    let idle = s.idle_timeout;
    let mut tick =
        tokio::time::interval((idle.min(s.send_timeout) / 4).max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut bytes_seen = Quiet {
        seen: 0,
        since: Instant::now(),
    };
    let mut requests_seen = Quiet {
        seen: 0,
        since: Instant::now(),
    };
    let mut draining = *shutdown.borrow();
    let mut drain_started = Instant::now();
    if draining {
        connection.as_mut().graceful_shutdown();
    }
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
                    tracing::debug!(peer = %peer_conn.peer, limit, "HTTP/2 limit passed: GOAWAY ENHANCE_YOUR_CALM");
                    abuse_deadline = Some(tokio::time::Instant::now() + ABUSE_LINGER);
                }
            }
            () = sleep_until_opt(abuse_deadline) => break,
            _ = shutdown.changed(), if !draining => {
                draining = true;
                drain_started = Instant::now();
                connection.as_mut().graceful_shutdown();
            }
            _ = tick.tick() => {
                let io_quiet = bytes_seen.update(activity.moves.load(Ordering::Relaxed));
                let idle_for = requests_seen.update(activity.requests.load(Ordering::Relaxed));
                if draining {
                    // Why: a graceful close waits for responses to be written; a client that
                    // stops reading would hold the connection (and its upstream) forever.
                    // Regression: tests (it) proxy::stalled_reader_is_disconnected
                    if drain_started.elapsed() >= idle && io_quiet >= idle {
                        break;
                    }
                } else if activity.in_flight.load(Ordering::Relaxed) > 0 {
                    if h1_owed_for(&activity) >= s.send_timeout {
                        // An HTTP/1.1 response the client stopped taking.
                        // Regression: tests (it) proxy::stalled_reader_is_disconnected
                        shared.metrics.limit("send_timeout");
                        break;
                    }
                    if io_quiet >= idle {
                        // A response under way but no byte moved either way for the whole
                        // idle period (the upstream's response_timeout is shorter by default).
                        break;
                    }
                } else if idle_for >= idle {
                    // Regression: tests (it) proxy::h2_pings_do_not_keep_a_connection_open
                    draining = true;
                    drain_started = Instant::now();
                    connection.as_mut().graceful_shutdown();
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

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
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
        activity.requests.fetch_add(1, Ordering::Relaxed);
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.requests.fetch_add(1, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl Activity ===

impl Activity {
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
    /// Time since the counter last moved, as seen at ticks: exact to one tick (a quarter of
    /// the idle timeout).
    fn update(&mut self, count: u64) -> Duration {
        if count != self.seen {
            self.seen = count;
            self.since = Instant::now();
        }
        self.since.elapsed()
    }
}
