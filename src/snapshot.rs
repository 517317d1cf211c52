//! The compiled, immutable config. A request loads the current snapshot once and keeps it to
//! the end, so a reload never changes the rules under an in-flight request.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderName;
use ipnet::IpNet;

use crate::authn::Authn;
use crate::authz::route::RouteTable;
use crate::upstream::Upstream;

/// One version of the whole config.
#[derive(Debug)]
pub struct Snapshot {
    /// Short digest of every input file; changes whenever any of them does.
    pub version: Arc<str>,
    /// When it was compiled.
    pub loaded_at: SystemTime,
    /// Client listeners, in config order.
    pub listeners: Vec<ListenerSettings>,
    /// The admin listener's address.
    pub admin_address: SocketAddr,
    /// Names the admin listener answers to besides IP literals and `localhost`, lowercase.
    pub admin_hosts: Arc<[Box<str>]>,
    /// Connection and request limits.
    pub server: ServerSettings,
    /// Upstreams; rules refer to them by index.
    pub upstreams: Vec<Arc<Upstream>>,
    /// The rules.
    pub routes: RouteTable,
    /// The authenticators.
    pub authn: Authn,
    /// The named rate limits.
    pub rate_limits: crate::ratelimit::RateLimits,
    /// The Redis server shared limits use, if configured.
    pub redis: Option<Arc<crate::ratelimit::redis::RedisStore>>,
    /// The time decisions read (the system's, or a test's manual clock).
    pub clock: crate::clock::Clock,
    /// The delegates rules may ask, by name.
    pub delegates: std::collections::BTreeMap<String, Arc<crate::authz::delegate::Delegate>>,
    /// The signed identity assertion, if configured.
    pub assertion: Option<crate::authz::assertion::Assertion>,
    /// `WWW-Authenticate` challenges, built once.
    pub challenges: Challenges,
    /// Headers removed from every client request: identity and trusted-header names, and the
    /// override, forwarding, claim and infrastructure families.
    pub spoofable: crate::authz::spoofable::Spoofable,
    /// Emit access-log lines.
    pub access_log: bool,
    /// Propagate W3C trace context upstream (`tracing.propagate`).
    pub trace_propagate: bool,
    /// The OTLP span exporter, when `tracing.otlp` is set (and a runtime runs).
    pub otlp: Option<Arc<crate::telemetry::otlp::Otlp>>,
    /// Files and directories whose change triggers a reload.
    pub watched: Vec<PathBuf>,
    /// Whether a reload may leave no rule (`policies.allow_empty`).
    pub allow_empty: bool,
    /// The settings only a restart changes, to compare on reload.
    pub restart: crate::config::compile::RestartOnly,
}

/// `WWW-Authenticate` values (RFC 6750 §3) for the configured realm. The descriptions are
/// generic on purpose: nothing about why a token failed reaches the client.
#[derive(Debug, Clone)]
pub struct Challenges {
    /// No credential.
    pub missing: http::HeaderValue,
    /// A credential that does not verify.
    pub invalid_token: http::HeaderValue,
    /// An ambiguous request (two credentials).
    pub invalid_request: http::HeaderValue,
    /// A valid token without a scope the rule requires.
    pub insufficient_scope: http::HeaderValue,
    /// No credential, on a rule accepting only API keys (sent outside `Authorization`).
    pub api_key_missing: http::HeaderValue,
    /// An API key that does not verify.
    pub api_key_invalid: http::HeaderValue,
    /// Two API keys.
    pub api_key_invalid_request: http::HeaderValue,
    /// A valid API key without a scope the rule requires.
    pub api_key_insufficient_scope: http::HeaderValue,
    /// No credential, on a rule accepting API keys and bearer tokens: both challenges.
    pub missing_any: http::HeaderValue,
}

impl Challenges {
    /// The challenges of the default realm.
    pub fn fallback() -> Self {
        Self {
            missing: http::HeaderValue::from_static("Bearer realm=\"portcullis\""),
            invalid_token: http::HeaderValue::from_static(
                "Bearer realm=\"portcullis\", error=\"invalid_token\", error_description=\"The access token is invalid\"",
            ),
            invalid_request: http::HeaderValue::from_static(
                "Bearer realm=\"portcullis\", error=\"invalid_request\", error_description=\"The request carries more than one credential\"",
            ),
            insufficient_scope: http::HeaderValue::from_static(
                "Bearer realm=\"portcullis\", error=\"insufficient_scope\", error_description=\"The access token lacks a required scope\"",
            ),
            api_key_missing: http::HeaderValue::from_static("ApiKey realm=\"portcullis\""),
            // Why: the refusal's body says `invalid_token` for every invalid credential; a
            // challenge saying `invalid_key` gave one refusal two codes.
            api_key_invalid: http::HeaderValue::from_static(
                "ApiKey realm=\"portcullis\", error=\"invalid_token\"",
            ),
            api_key_invalid_request: http::HeaderValue::from_static(
                "ApiKey realm=\"portcullis\", error=\"invalid_request\"",
            ),
            api_key_insufficient_scope: http::HeaderValue::from_static(
                "ApiKey realm=\"portcullis\", error=\"insufficient_scope\"",
            ),
            missing_any: http::HeaderValue::from_static(
                "Bearer realm=\"portcullis\", ApiKey realm=\"portcullis\"",
            ),
        }
    }

    /// The challenges for `realm` (quotes and backslashes removed, non-visible characters
    /// refused at load).
    pub fn new(realm: &str) -> Option<Self> {
        let realm: String = realm.chars().filter(|c| *c != '"' && *c != '\\').collect();
        let v = |s: String| http::HeaderValue::from_str(&s).ok();
        Some(Self {
            missing: v(format!("Bearer realm=\"{realm}\""))?,
            invalid_token: v(format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"The access token is invalid\""
            ))?,
            invalid_request: v(format!(
                "Bearer realm=\"{realm}\", error=\"invalid_request\", error_description=\"The request carries more than one credential\""
            ))?,
            insufficient_scope: v(format!(
                "Bearer realm=\"{realm}\", error=\"insufficient_scope\", error_description=\"The access token lacks a required scope\""
            ))?,
            api_key_missing: v(format!("ApiKey realm=\"{realm}\""))?,
            api_key_invalid: v(format!("ApiKey realm=\"{realm}\", error=\"invalid_token\""))?,
            api_key_invalid_request: v(format!(
                "ApiKey realm=\"{realm}\", error=\"invalid_request\""
            ))?,
            api_key_insufficient_scope: v(format!(
                "ApiKey realm=\"{realm}\", error=\"insufficient_scope\""
            ))?,
            missing_any: v(format!(
                "Bearer realm=\"{realm}\", ApiKey realm=\"{realm}\""
            ))?,
        })
    }
}

/// A client listener.
#[derive(Debug)]
pub struct ListenerSettings {
    /// Name for logs and metrics.
    pub name: Arc<str>,
    /// Configured address.
    pub address: SocketAddr,
    /// TLS termination, if any.
    pub tls: Option<Arc<crate::tls::server::ListenerTls>>,
    /// Whether HTTP/2 is served.
    pub http2: bool,
    /// What it serves.
    pub door: DoorSettings,
}

/// What a listener serves, compiled.
#[derive(Debug, Clone)]
pub enum DoorSettings {
    /// The reverse proxy.
    Proxy,
    /// Envoy's gRPC `Check`.
    EnvoyGrpc(DecisionDoor),
    /// Envoy's HTTP mode.
    EnvoyHttp {
        /// Peers and deadline.
        common: DecisionDoor,
        /// What Envoy puts before the original path (no trailing `/`; may be empty).
        path_prefix: Arc<str>,
    },
    /// Forward auth (nginx, Traefik, Caddy, APISIX, Kong).
    ForwardAuth {
        /// Peers and deadline.
        common: DecisionDoor,
        /// Statuses the peer cannot pass through, and what to answer instead.
        status_map: Arc<[(http::StatusCode, http::StatusCode)]>,
        /// The headers that describe the original request.
        headers: Arc<crate::forward_auth::DescriptionHeaders>,
    },
}

/// What every decision door has.
#[derive(Debug, Clone)]
pub struct DecisionDoor {
    /// Who may ask.
    pub peers: Arc<[IpNet]>,
    /// Answer deadline.
    pub timeout: Duration,
    /// The gRPC door believes Envoy's `source.certificate` (never for the HTTP doors).
    pub client_certificates: bool,
}

impl DoorSettings {
    /// The door kind.
    pub fn door(&self) -> crate::request::facts::Door {
        use crate::request::facts::Door;
        match self {
            Self::Proxy => Door::Proxy,
            Self::EnvoyGrpc(_) => Door::EnvoyGrpc,
            Self::EnvoyHttp { .. } => Door::EnvoyHttp,
            Self::ForwardAuth { .. } => Door::ForwardAuth,
        }
    }
}

/// Limits, compiled.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Request head (and TLS handshake) deadline.
    pub header_read_timeout: Duration,
    /// Idle connection deadline.
    pub idle_timeout: Duration,
    /// Deadline for the client to take each response chunk.
    pub send_timeout: Duration,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// Longest request target (path and query).
    pub max_target_bytes: usize,
    /// Most header fields.
    pub max_headers: usize,
    /// Largest request body.
    pub max_body_bytes: u64,
    /// Requests with bodies still arriving, per client.
    pub max_uploads_per_client: usize,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Drain deadline.
    pub shutdown_grace: Duration,
    /// Not ready but serving, before the drain.
    pub shutdown_delay: Duration,
    /// Proxies whose forwarding headers are believed.
    pub trusted_proxies: Arc<[IpNet]>,
    /// Request id header.
    pub request_id_header: HeaderName,
    /// Per-connection HTTP/2 frame limits.
    pub http2: Http2Limits,
}

/// [`Http2Limits::max_pending_resets`] for a client that is no door's peer.
pub const PENDING_RESETS: u32 = 64;

/// Per-connection HTTP/2 frame limits, compiled from `server.http2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Limits {
    /// Client RST_STREAM frames per window.
    pub max_resets: u32,
    /// The same from a decision door's configured peers.
    pub max_peer_resets: u32,
    /// Streams the client may reset before the gateway has taken them from h2's queue (h2's
    /// own bound, `max_pending_accept_reset_streams`): 64, or `max_peer_resets` for a
    /// decision door's peers.
    pub max_pending_resets: u32,
    /// Client PING and SETTINGS frames (not acknowledgements) per window.
    pub max_control_frames: u32,
    /// The counting window.
    pub window: Duration,
}

impl Snapshot {
    /// The settings of the listener at `index`.
    pub fn listener(&self, index: usize) -> Option<&ListenerSettings> {
        self.listeners.get(index)
    }
}
