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

/// State shared by every connection of every door.
#[derive(Debug)]
pub struct Shared {
    /// The active snapshot.
    pub current: Arc<ArcSwap<Snapshot>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Permits for requests in flight, over every door (`server.max_in_flight`).
    pub in_flight: Arc<tokio::sync::Semaphore>,
}

/// A connection: the door-neutral facts the core reads, and the peer's address as header text,
/// computed once per connection rather than per request.
#[derive(Debug)]
pub struct Conn {
    /// What the core sees.
    pub info: ConnInfo,
    /// The peer's address as header text (`X-Forwarded-For`, `Forwarded`, `x-real-ip`).
    pub peer_text: HeaderValue,
}

impl Conn {
    /// A connection described by `info`.
    pub fn new(info: ConnInfo) -> Self {
        let peer_text = crate::request::facts::ip_header_value(info.peer.ip());
        Self { info, peer_text }
    }
}
