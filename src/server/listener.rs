//! Accepting connections: connection limit, TLS handshake deadline, then
//! [`super::connection`] serves HTTP/1 and HTTP/2 on them (deadlines, abuse limits, parking
//! idle connections) until they end or the gateway drains.
//!
//! Each accepted connection reads the *current* snapshot's listener settings, so a certificate
//! reload applies to the next handshake without touching established connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};

use super::connection;
use super::{Conn, Shared};
use crate::body::ResponseBody;
use crate::proxy::service;
use crate::request::facts::{ClientCert, ConnInfo, TlsInfo};
use crate::snapshot::ServerSettings;

/// What a listener's connections are served by: one per door. The loop around it (accept,
/// TLS, HTTP/1 and HTTP/2, deadlines, abuse limits, drain) is the same for every door.
pub trait Handler: Send + Sync + 'static {
    /// A decision door (Envoy's, forward auth): its requests hold a permit of their own
    /// pool ([`super::Shared::decisions_in_flight`]), not the proxy's.
    ///
    /// Why: one pool for every listener let requests the proxy holds (a slow upstream's,
    /// anyone's who can reach a proxy listener) fill it, and the decision doors then shed
    /// Envoy's Checks as `UNAVAILABLE`, which `failure_mode_allow: true` turns into allows
    /// (a deny rule's `/admin/x` let through).
    /// Regression: tests (it) abuse::the_proxy_cannot_take_the_decision_doors_permits
    const DECIDES_ONLY: bool = false;

    /// The door it serves, for the metrics of what no door saw (a head hyper could not
    /// read); `None` for the admin listener.
    const DOOR: Option<crate::request::facts::Door>;

    /// Answers one request arriving on `conn`; never fails (every failure is a response).
    fn call(&self, conn: Arc<Conn>, req: hyper::Request<Incoming>) -> Answering;

    /// The most header fields hyper parses in an HTTP/1 request, `server.max_headers` being
    /// `configured`; past it hyper answers a bare 431 itself. A decision door parses more and
    /// answers past its own count ([`crate::door::parse_fields`]).
    fn max_headers(&self, configured: usize) -> usize {
        configured
    }

    /// The answer to a request whose handling panicked (a bug): a denial in the door's
    /// protocol, never a failed call, which a peer may turn into an allow (Envoy's
    /// `failure_mode_allow`). By default 500 `internal_error`.
    fn panicked() -> Answering
    where
        Self: Sized,
    {
        Box::pin(async {
            let id = crate::server::request_id::take_panicked();
            crate::proxy::service::refusal_response(crate::decision::Refusal::error(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                &id,
            ))
        })
    }
}

/// A door's answer in the making, boxed where it is made.
///
/// Why: a request's future is large (the proxy's about 19 KB: the decision, the upstream
/// exchange); returned by value it was copied whole at every layer that wrapped it (the
/// handler, the tower service, the box at the end), which cost more instructions per plain
/// request than the gateway's own work. Boxed at the source, each layer moves a pointer.
/// Regression: bench/instructions.sh (instructions per plain request).
pub type Answering = std::pin::Pin<
    Box<dyn std::future::Future<Output = hyper::Response<ResponseBody>> + Send + 'static>,
>;

/// The reverse proxy's handler.
#[derive(Debug, Clone)]
pub struct ProxyHandler(pub Arc<Shared>);

impl Handler for ProxyHandler {
    const DOOR: Option<crate::request::facts::Door> = Some(crate::request::facts::Door::Proxy);

    fn call(&self, conn: Arc<Conn>, req: hyper::Request<Incoming>) -> Answering {
        let shared = Arc::clone(&self.0);
        Box::pin(async move { service::handle(&shared, &conn, req).await })
    }
}

/// What a listener is, for its loop: where its settings come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// A door's listener: the door (what its connections' [`ConnInfo`] say) and the
    /// listener's position in the config (and the snapshot, which holds its TLS and HTTP/2
    /// settings).
    Door {
        /// The door it serves.
        door: crate::request::facts::Door,
        /// Its position.
        index: usize,
    },
    /// An admin listener: plain HTTP/1.1 with the server's deadlines, each connection closed
    /// after `max_life` whatever it does. Its requests read no facts of the connection; its
    /// `Shared` counts its connections apart from the doors' metrics.
    Admin {
        /// How long a connection may live.
        max_life: Duration,
    },
}

/// Everything an accept loop needs.
pub struct AcceptLoop<H> {
    /// The listener's handler.
    pub handler: Arc<H>,
    /// What the listener is.
    pub place: Place,
    /// Its name.
    pub name: Arc<str>,
    /// The bound socket.
    pub listener: TcpListener,
    /// Shared request state.
    pub shared: Arc<Shared>,
    /// Permits for open connections, across all listeners.
    pub connections: Arc<Semaphore>,
    /// At most this many connections from one client address (the admin listeners).
    pub per_client: Option<Arc<PerClient>>,
    /// A decision door's permits for connections from addresses not among its `peers`, apart
    /// from `connections` ([`STRANGERS`] of them); `None` elsewhere.
    pub strangers: Option<Arc<Semaphore>>,
    /// Becomes `true` when the gateway shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Held by every connection; the drain completes when all are dropped.
    pub drain: mpsc::Sender<()>,
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
            let held = match &self.per_client {
                None => None,
                Some(p) => match p.enter(peer.ip()) {
                    Some(held) => Some(held),
                    // Closed at once: its share is taken, every connection busy.
                    None => continue,
                },
            };
            let _ = stream.set_nodelay(true);
            let snapshot = self.shared.current.load();
            let (door, tls, http2, door_peer) = match self.place {
                Place::Door { door, index } => {
                    let Some(settings) = snapshot.listener(index) else {
                        continue;
                    };
                    let door_peer = crate::door::common(&settings.door)
                        .is_some_and(|c| crate::door::admits(c, peer.ip()));
                    (door, settings.tls.clone(), settings.http2, door_peer)
                }
                // Its requests read nothing of the connection but the request itself.
                Place::Admin { .. } => (crate::request::facts::Door::Proxy, None, false, false),
            };
            let max_life = match self.place {
                Place::Door { .. } => None,
                Place::Admin { max_life } => Some(max_life),
            };
            let mut server = snapshot.server.clone();
            // Why: a decision door's peer (Envoy) carries every client's Checks over one
            // connection and resets a Check when its timeout fires or its client leaves; past
            // `max_resets` the GOAWAY dropped every other Check in flight on it (Envoy then
            // applies `status_on_error`, or allows with `failure_mode_allow`), and a client of
            // Envoy's could cause it by resetting its own requests. A peer has a limit of its
            // own, far higher (a process that is not Envoy but shares its address is still
            // bounded); everyone else keeps `max_resets`.
            // Regression: tests (it) abuse::a_door_peer_may_reset_many_checks
            //
            // Why the pending ones too: h2 counts the streams reset before the gateway took
            // them from its queue, and past 64 sent its own GOAWAY: a burst of 100 Checks
            // Envoy reset in one write dropped the Check in flight beside them, long before
            // `max_peer_resets`. Regression: tests (it) abuse::a_door_peer_may_reset_a_burst_of_checks
            if door_peer {
                server.http2.max_resets = server.http2.max_peer_resets.max(server.http2.max_resets);
                server.http2.max_pending_resets = server
                    .http2
                    .max_peer_resets
                    .max(server.http2.max_pending_resets);
            }
            drop(snapshot);
            // Why: a decision door's peers were checked per request, so any host that could
            // reach the port held its connection slots with silent connections (70 were
            // enough at `max_connections: 64`; they are answered only by the idle timeout)
            // and Envoy's Checks waited in the kernel's backlog: timed out, which
            // `failure_mode_allow: true` turns into allows. A connection from anyone else
            // gives its slot back and takes one of a small pool of its own, or is closed.
            // Regression: tests (it) abuse::strangers_cannot_take_a_decision_doors_connections
            let permit = match &self.strangers {
                Some(strangers) if !door_peer => {
                    drop(permit);
                    match Arc::clone(strangers).try_acquire_owned() {
                        Ok(p) => p,
                        Err(_) => {
                            self.shared.metrics.limit("door_strangers");
                            continue;
                        }
                    }
                }
                _ => permit,
            };
            let shared = Arc::clone(&self.shared);
            let name = Arc::clone(&self.name);
            let shutdown = self.shutdown.clone();
            let drain = self.drain.clone();
            let handler = Arc::clone(&self.handler);
            let connections = Arc::clone(&self.connections);
            tokio::spawn(async move {
                shared.metrics.connections_total.inc();
                shared.metrics.connections_open.inc();
                let slot = held.as_ref().map(|h| Arc::clone(h.slot()));
                let closed_for_newer = slot.clone();
                let endpoint = Endpoint {
                    door,
                    listener: name,
                    http2,
                    connections,
                    slot,
                };
                let served = serve_stream(
                    stream, peer, endpoint, tls, &server, &shared, handler, shutdown,
                );
                match max_life {
                    None => served.await,
                    // Why: the public admin listener faces other machines; a client keeping
                    // its connections busy (a health check every few seconds on each) holds
                    // them no longer than this. Regression: admin::MAX_CONNECTION_LIFE
                    Some(life) => {
                        let closed = async {
                            match &closed_for_newer {
                                Some(slot) => slot.closed().await,
                                None => std::future::pending().await,
                            }
                        };
                        tokio::select! {
                            _ = tokio::time::timeout(life, served) => {}
                            () = closed => {}
                        }
                    }
                }
                shared.metrics.connections_open.dec();
                drop(held);
                drop(permit);
                drop(drain);
            });
        }
    }
}

/// How many connections a decision door holds from addresses not among its `peers` (a probe
/// from elsewhere is answered, PERMISSION_DENIED or 403, within these).
pub const STRANGERS: usize = 64;

/// Connections held per client address, bounded. Past the bound a new connection closes the
/// client's oldest one with no request in flight (a connection that sent nothing, or one idle
/// between requests), or is itself closed when all are busy.
///
/// Why close the oldest rather than the newest: every local process shares the loopback
/// address, and 8 connections that sent nothing, reopened as they timed out, kept every
/// health check and scrape of the admin listener out. The newest connection is the one about
/// to ask something. Regression: tests (it)
/// assertion::silent_connections_cannot_keep_a_client_out_of_the_admin_listener
#[derive(Debug)]
pub struct PerClient {
    max: usize,
    held: std::sync::Mutex<std::collections::HashMap<u128, Vec<Arc<ClientSlot>>>>,
}

/// One connection of a client: whether it is answering, and how to close it.
#[derive(Debug, Default)]
pub struct ClientSlot {
    /// Requests in flight on it ([`ClientSlot::busy`]).
    busy: std::sync::atomic::AtomicUsize,
    /// Set when a newer connection of its client closes it.
    evicted: std::sync::atomic::AtomicBool,
    /// Wakes its task to close it.
    close: tokio::sync::Notify,
}

/// Marks a request in flight on a connection until dropped.
pub struct Busy(Arc<ClientSlot>);

impl ClientSlot {
    /// The connection answers a request until the guard is dropped: it is not closed for a
    /// newer one meanwhile.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.busy.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Busy(Arc::clone(self))
    }

    /// Completes when a newer connection of its client has closed this one.
    pub async fn closed(&self) {
        self.close.notified().await;
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0
            .busy
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// One connection counted for its client until dropped.
pub struct Held {
    of: Arc<PerClient>,
    site: u128,
    slot: Arc<ClientSlot>,
}

impl PerClient {
    /// At most `max` connections per address.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            held: std::sync::Mutex::default(),
        })
    }

    /// Counts a connection from `ip`: past `max`, closing its site's oldest idle one, or
    /// `None` when every one is busy.
    ///
    /// Why by site (IPv6 by /64): one host holds a whole /64, and 8 connections from each of
    /// a few addresses kept every health check out. Regression: tests::a_site_shares_its_cap
    fn enter(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<Held> {
        use std::sync::atomic::Ordering;
        // Why: every local process may use any 127.0.0.x address: 8 silent connections from
        // each of 8 of them filled the listener's 64 and kept a probe from 127.0.0.1 out.
        // Loopback is one client. Regression: tests (it)
        // assertion::silent_connections_cannot_keep_a_client_out_of_the_admin_listener
        let site = crate::request::facts::loopback_as_one_site(ip);
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let slots = held.entry(site).or_default();
        let open = slots
            .iter()
            .filter(|s| !s.evicted.load(Ordering::Acquire))
            .count();
        // Closed ones leave as their tasks see it: at most as many again wait to.
        if open >= self.max {
            if slots.len() >= 2 * self.max {
                return None;
            }
            let oldest_idle = slots.iter().find(|s| {
                !s.evicted.load(Ordering::Acquire) && s.busy.load(Ordering::Acquire) == 0
            })?;
            oldest_idle.evicted.store(true, Ordering::Release);
            oldest_idle.close.notify_one();
        }
        let slot = Arc::new(ClientSlot::default());
        slots.push(Arc::clone(&slot));
        Some(Held {
            of: Arc::clone(self),
            site,
            slot,
        })
    }
}

impl Held {
    /// This connection's slot.
    pub fn slot(&self) -> &Arc<ClientSlot> {
        &self.slot
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut held = self
            .of
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(slots) = held.get_mut(&self.site) {
            slots.retain(|s| !Arc::ptr_eq(s, &self.slot));
            if slots.is_empty() {
                held.remove(&self.site);
            }
        }
    }
}

/// Where a connection arrived: the listener, its door and whether it speaks HTTP/2.
struct Endpoint {
    door: crate::request::facts::Door,
    listener: Arc<str>,
    http2: bool,
    /// The `max_connections` permits (an HTTP/2 tunnel takes one).
    connections: Arc<Semaphore>,
    /// Its place among its client's connections, where they are bounded (admin listeners).
    slot: Option<Arc<ClientSlot>>,
}

#[expect(clippy::too_many_arguments, reason = "one call site, all distinct")]
async fn serve_stream<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    endpoint: Endpoint,
    tls: Option<Arc<crate::tls::server::ListenerTls>>,
    server: &ServerSettings,
    shared: &Arc<Shared>,
    handler: Arc<H>,
    shutdown: watch::Receiver<bool>,
) {
    let Endpoint {
        door,
        listener,
        http2,
        connections,
        slot,
    } = endpoint;
    let Some(tls) = tls else {
        let info = ConnInfo::for_door(door, peer, listener, None);
        let conn = Arc::new(Conn::counted(info, connections).in_slot(slot));
        connection::serve(stream, conn, http2, None, server, shared, handler, shutdown).await;
        return;
    };
    // Boxed: the handshake's state is freed once it is done, not kept in the connection's task
    // for as long as the connection lives. The TLS stream comes out of it boxed as well: it is
    // large (rustls' connection state is inline, about 1.1 KB), and each async fn it is passed
    // down through would keep a copy of its own in the connection's task, for as long as the
    // connection lives.
    // Regression: tests::connection_task_is_small
    let verified_by = tls.client_auth().copied();
    let accept = async move {
        let (stream, binding) = tls.accept(stream).await?;
        Ok::<_, std::io::Error>((Box::new(stream), binding))
    };
    let handshake = tokio::time::timeout(server.header_read_timeout, Box::pin(accept)).await;
    let (stream, binding) = match handshake {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let reason = handshake_failure(&e);
            shared.metrics.tls_handshake_error(reason);
            // Why: a partner's expired or wrongly issued client certificate left no trace at
            // the default level, and the counter said nothing of why. A refused client
            // certificate is logged at `info`, at most one line every 10 s.
            // Regression: tests (it) credentials::a_refused_client_certificate_is_counted_by_reason
            if reason.starts_with("client_cert") && log_refusal_now() {
                tracing::info!(%peer, %listener, reason, error = %e, "TLS handshake refused the client certificate");
            } else {
                tracing::debug!(%peer, reason, error = %e, "TLS handshake failed");
            }
            return;
        }
        Err(_) => {
            shared.metrics.tls_handshake_error("timeout");
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let (_, session) = stream.get_ref();
    let alpn = session.alpn_protocol().map(Arc::<[u8]>::from);
    let client_auth = session
        .peer_certificates()
        .is_some()
        .then_some(verified_by)
        .flatten();
    let info = TlsInfo {
        sni: session.server_name().map(Arc::from),
        alpn: alpn.clone(),
        // Parsed once per connection: every request on it sees the same names.
        client_cert: session
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| Arc::new(ClientCert::parse(c).unwrap_or_else(|| ClientCert::unreadable(c)))),
        binding,
        client_auth,
        client_chain: session
            .peer_certificates()
            .filter(|c| !c.is_empty())
            .map(|c| Arc::new(crate::tls::server::PresentedChain::new(c))),
    };
    let info = ConnInfo::for_door(door, peer, listener, Some(info));
    let conn = Arc::new(Conn::counted(info, connections).in_slot(slot));
    let alpn_h2 = Some(alpn.as_deref() == Some(b"h2"));
    connection::serve(
        stream, conn, http2, alpn_h2, server, shared, handler, shutdown,
    )
    .await;
}

/// Whether a refused client certificate is logged at `info` now: at most one line every 10 s
/// (the counter counts every one), so a client presenting bad certificates in a loop cannot
/// flood the log; the others go to `debug`.
fn log_refusal_now() -> bool {
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    static LAST: AtomicU64 = AtomicU64::new(0);
    let base = BASE.get_or_init(std::time::Instant::now);
    // Seconds since the first refusal, from 10: the first one is logged.
    let now = base.elapsed().as_secs().saturating_add(10);
    let last = LAST.load(Relaxed);
    now >= last.saturating_add(10) && LAST.compare_exchange(last, now, Relaxed, Relaxed).is_ok()
}

/// Why a TLS handshake failed, as the `reason` label of
/// `portcullis_tls_handshake_errors_total`: one of a fixed set.
fn handshake_failure(e: &std::io::Error) -> &'static str {
    use rustls::{CertificateError as C, Error as E};
    match e.get_ref().and_then(|e| e.downcast_ref::<E>()) {
        Some(E::NoCertificatesPresented) => "client_cert_missing",
        Some(E::InvalidCertificate(c)) => match c {
            C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. } => "client_cert_expired",
            C::UnknownIssuer | C::BadSignature => "client_cert_unknown_ca",
            C::Revoked => "client_cert_revoked",
            _ => "client_cert_invalid",
        },
        Some(E::AlertReceived(_)) => "peer_alert",
        Some(E::NoApplicationProtocol | E::PeerIncompatible(_)) => "no_common_protocol",
        Some(_) => "protocol",
        None => "io",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_site_shares_its_cap() {
        use std::sync::atomic::Ordering;
        let cap = PerClient::new(2);
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let a = cap.enter(ip("2001:db8:1:2::1")).expect("first");
        let b = cap
            .enter(ip("2001:db8:1:2:ffff::9"))
            .expect("second, same /64");
        // Both answering: the /64 is full.
        let (busy_a, busy_b) = (a.slot().busy(), b.slot().busy());
        assert!(
            cap.enter(ip("2001:db8:1:2::77")).is_none(),
            "the /64 is full"
        );
        assert!(cap.enter(ip("2001:db8:1:3::1")).is_some(), "another /64");
        let c = cap.enter(ip("192.0.2.1")).expect("IPv4");
        let _d = cap.enter(ip("192.0.2.1")).expect("IPv4");
        let _busy_c = c.slot().busy();
        assert!(
            cap.enter(ip("192.0.2.2")).is_some(),
            "each IPv4 address its own"
        );
        // Idle again: a newer connection closes the oldest idle one, not a busy one.
        drop(busy_a);
        drop(busy_b);
        let _b_busy_again = b.slot().busy();
        let e = cap.enter(ip("2001:db8:1:2::77")).expect("admitted");
        assert!(
            a.slot().evicted.load(Ordering::Acquire),
            "the oldest idle closed"
        );
        assert!(!b.slot().evicted.load(Ordering::Acquire));
        // Closed ones count until their tasks let go: at most as many again.
        let _e_busy = e.slot().busy();
        assert!(cap.enter(ip("2001:db8:1:2::78")).is_none(), "all busy");
        drop(a);
        let _f = cap
            .enter(ip("192.0.2.1"))
            .expect("the oldest IPv4 idle one closed");
        assert!(!c.slot().evicted.load(Ordering::Acquire), "busy, kept");
    }

    use crate::testing::ReturnSize;

    /// A connection's task lives as long as the connection, parked or not: what its future
    /// holds inline is paid by every idle connection. The TLS session is boxed where the
    /// handshake makes it, not copied at each async fn it is passed through (the task was
    /// 11.3 KB in the release build; the future is about 1.7 KB in this debug build).
    #[test]
    fn connection_task_is_small() {
        let size = ReturnSize::<(
            TcpStream,
            SocketAddr,
            Endpoint,
            Option<Arc<crate::tls::server::ListenerTls>>,
            &ServerSettings,
            &Arc<Shared>,
            Arc<ProxyHandler>,
            watch::Receiver<bool>,
        )>::return_size(&serve_stream::<ProxyHandler>);
        assert!(size <= 2048, "the connection's future is {size} bytes");
    }
}
