//! The serving layer every door shares: accepting connections (TLS or plain) within the
//! connection limit, HTTP/1 and HTTP/2 with their deadlines and abuse limits, parking idle
//! connections, and the drain on shutdown; a door only supplies its [`listener::Handler`].
//! Also the HTTP details every door needs: hop-by-hop headers and request ids.

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderValue;

use crate::request::facts::ConnInfo;
use crate::snapshot::Snapshot;
use crate::telemetry::metrics::Metrics;

mod connection;
mod frames;
pub mod hop_by_hop;
pub mod layers;
pub mod listener;
mod progress;
pub mod request_id;
mod tracked;
pub mod uploads;

/// State shared by every connection of every door.
#[derive(Debug)]
pub struct Shared {
    /// The active snapshot.
    pub current: Arc<ArcSwap<Snapshot>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Permits for requests in flight at the proxy's listeners (`server.max_in_flight`).
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// Permits for decisions in flight at one decision door's listener (as many again, for
    /// each such listener): see [`listener::Handler::DECIDES_ONLY`].
    pub decisions_in_flight: Arc<tokio::sync::Semaphore>,
    /// The decision door's listener (its index in the snapshot) these are shared by, if one:
    /// its `status_map` also maps the 503 of a request it sheds.
    pub decision_listener: Option<usize>,
    /// Becomes `true` when the gateway shuts down: what outlives a request (a tunnel in an
    /// HTTP/2 stream) watches it.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Becomes `true` when the shutdown's grace is over: a request still open then is cut by
    /// the gateway, and logged so ([`Shared::closed_reason`]).
    pub grace_over: Arc<std::sync::atomic::AtomicBool>,
    /// Becomes `true` at the stop signal, before the drain (`server.shutdown_delay`): the
    /// gRPC door's health service says NOT_SERVING from then on, as `/readyz` does.
    pub stopping: Arc<std::sync::atomic::AtomicBool>,
    /// The proxy's requests whose bodies are still arriving, per client
    /// (`server.max_uploads_per_client`).
    pub uploads: Arc<uploads::Uploads>,
}

impl Shared {
    /// The reason logged for a request whose connection went before its answer: the client
    /// left (`connection_closed`), or the gateway cut it once the shutdown's grace was over
    /// (`shutdown_grace`).
    ///
    /// Why: both read `connection_closed`, which the README gives as the client's leaving;
    /// after a deploy, requests the gateway cut looked like clients giving up.
    /// Regression: tests (it) shutdown::requests_cut_at_the_end_of_the_grace_say_so
    pub fn closed_reason(&self) -> &'static str {
        if self.grace_over.load(std::sync::atomic::Ordering::Relaxed) {
            "shutdown_grace"
        } else {
            "connection_closed"
        }
    }
}

/// A connection: the door-neutral facts the core reads, and the peer's address as header text,
/// computed once per connection rather than per request.
#[derive(Debug)]
pub struct Conn {
    /// What the core sees.
    pub info: ConnInfo,
    /// The peer's address as header text (`X-Forwarded-For`, `Forwarded`, `x-real-ip`).
    pub peer_text: HeaderValue,
    /// A tunnel a door opened by answering `101`: run by the connection's own task once hyper
    /// hands the connection over, so that it counts against `max_connections`, holds the
    /// drain open and is closed when the gateway shuts down.
    pub tunnel: TunnelSlot,
    /// Its place among its client's connections, where they are bounded (admin listeners):
    /// marked busy while answering, so a newer connection does not close it then.
    pub client_slot: Option<Arc<listener::ClientSlot>>,
    /// Request bodies of the connection still arriving ([`BodiesOpen`]).
    pub bodies: BodiesOpen,
}

/// The request bodies of a connection still arriving, marked by whoever reads them
/// ([`BodyOpen`]), and whether one was dropped before its end. While one is arriving, the
/// HTTP/1.1 connection is mid-request whatever its answer did: never parked, and its bytes
/// start no request head. Once one was dropped unfinished, hyper is left to drain or close
/// what remains, unseen: the connection is never parked again.
///
/// Why: a connection was parked (taken apart from hyper, then served afresh from its socket)
/// once its answer was written and it had been quiet a while, as if at a request boundary.
/// An answer written before its request's body had all arrived (408 `body_timeout`, an
/// upstream answering early) left the rest of the body to be read, on the parked
/// connection's wake, as a new request: decided, forwarded and logged as the client's own
/// (request smuggling, behind a peer that shares its connections). A body dropped by another
/// task (the pool's background finish) is seen by hyper only at its next poll, which a park
/// could come before. Regression: tests (it) abuse::the_rest_of_a_body_is_never_read_as_a_request,
/// tests::a_body_dropped_unfinished_unsettles_its_connection_for_good
#[derive(Debug, Default, Clone)]
pub struct BodiesOpen(Arc<BodiesState>);

#[derive(Debug, Default)]
struct BodiesState {
    open: std::sync::atomic::AtomicUsize,
    abandoned: std::sync::atomic::AtomicBool,
}

/// Marks one request body as arriving until it ends ([`Self::ended`]) or is dropped (then
/// abandoned).
#[derive(Debug)]
pub struct BodyOpen {
    of: Arc<BodiesState>,
    ended: bool,
}

impl BodiesOpen {
    /// Counts a body as arriving until the mark ends or is dropped.
    pub fn mark(&self) -> BodyOpen {
        self.0
            .open
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        BodyOpen {
            of: Arc::clone(&self.0),
            ended: false,
        }
    }

    /// Whether a body of the connection is still arriving.
    pub(crate) fn arriving(&self) -> bool {
        // Acquire: a mark that ended unfinished set `abandoned` before it let `open` go.
        self.0.open.load(std::sync::atomic::Ordering::Acquire) > 0
    }

    /// Whether the connection stands between requests as far as bodies go: none arriving,
    /// none ever dropped unfinished.
    pub(crate) fn settled(&self) -> bool {
        !self.arriving() && !self.0.abandoned.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl BodyOpen {
    /// The body was read to its end.
    pub fn ended(mut self) {
        self.ended = true;
    }
}

impl Drop for BodyOpen {
    fn drop(&mut self) {
        if !self.ended {
            self.of
                .abandoned
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.of
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::Release);
    }
}

/// What a tunnel runs: relaying both ways until it ends or is closed.
pub type Tunnel = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// A connection's pending HTTP/1.1 tunnel (at most one: the upgrade ends HTTP on the
/// connection), and how many HTTP/2 streams of it carry a tunnel (RFC 8441): while one does,
/// the connection is not idle.
#[derive(Default)]
pub struct TunnelSlot {
    pending: std::sync::Mutex<Option<Tunnel>>,
    open: Arc<std::sync::atomic::AtomicUsize>,
    /// The listeners' `max_connections` permits: an HTTP/2 stream's tunnel holds one.
    connections: Option<Arc<tokio::sync::Semaphore>>,
}

/// Marks an HTTP/2 stream's tunnel open for as long as it lives, holding its permit.
#[derive(Debug)]
pub struct TunnelOpen(
    Arc<std::sync::atomic::AtomicUsize>,
    #[expect(dead_code, reason = "held, given back when dropped")]
    Option<tokio::sync::OwnedSemaphorePermit>,
);

impl Drop for TunnelOpen {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Conn {
    /// A connection described by `info`.
    pub fn new(info: ConnInfo) -> Self {
        let peer_text = crate::request::facts::ip_header_value(info.peer.ip());
        Self {
            info,
            peer_text,
            tunnel: TunnelSlot::default(),
            client_slot: None,
            bodies: BodiesOpen::default(),
        }
    }

    /// This connection, in its client's `slot`.
    #[must_use]
    pub fn in_slot(mut self, slot: Option<Arc<listener::ClientSlot>>) -> Self {
        self.client_slot = slot;
        self
    }

    /// A connection accepted under `connections` (`server.max_connections`): each HTTP/2
    /// tunnel it opens holds one more permit.
    pub fn counted(info: ConnInfo, connections: Arc<tokio::sync::Semaphore>) -> Self {
        let mut conn = Self::new(info);
        conn.tunnel.connections = Some(connections);
        conn
    }
}

// === impl TunnelSlot ===

impl TunnelSlot {
    /// Hands the connection's task a tunnel to run after the upgrade.
    pub fn set(&self, tunnel: Tunnel) {
        if let Ok(mut slot) = self.pending.lock() {
            *slot = Some(tunnel);
        }
    }

    /// The tunnel, if a door opened one.
    pub(crate) fn take(&self) -> Option<Tunnel> {
        self.pending.lock().ok().and_then(|mut s| s.take())
    }

    /// Counts an HTTP/2 stream's tunnel as open until the mark is dropped, with a
    /// `max_connections` permit of its own; `None` when none is free.
    ///
    /// Why: a tunnel counts as a connection while it lives, and one HTTP/2 connection
    /// carried a hundred tunnels (each an upstream socket and a task) past a
    /// `max_connections` of 5. Regression: tests (it) edge::http2_tunnels_count_against_max_connections
    pub fn mark_open(&self) -> Option<TunnelOpen> {
        let permit = match &self.connections {
            Some(c) => Some(Arc::clone(c).try_acquire_owned().ok()?),
            None => None,
        };
        self.open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(TunnelOpen(Arc::clone(&self.open), permit))
    }

    /// Whether an HTTP/2 stream of the connection carries a tunnel.
    pub(crate) fn is_open(&self) -> bool {
        self.open.load(std::sync::atomic::Ordering::Relaxed) > 0
    }
}

impl std::fmt::Debug for TunnelSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TunnelSlot")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_dropped_unfinished_unsettles_its_connection_for_good() {
        let bodies = BodiesOpen::default();
        assert!(bodies.settled());
        let open = bodies.mark();
        assert!(bodies.arriving() && !bodies.settled());
        open.ended();
        assert!(!bodies.arriving() && bodies.settled());
        let open = bodies.mark();
        drop(open);
        assert!(!bodies.arriving(), "no longer arriving");
        assert!(!bodies.settled(), "but never parked again");
    }
}
