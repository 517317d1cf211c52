//! Server limits and timeouts, and upstreams.

use super::*;

/// Connection and request limits.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    /// Time a client has to finish the TLS handshake, and to complete an HTTP/1 request head
    /// from its first byte. Bounds slowloris clients.
    #[schemars(with = "String")]
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed: a kept-alive
    /// connection waiting for its next request, a new one (plain or after its TLS handshake)
    /// waiting for its first, an HTTP/2 connection however many PINGs it sends.
    #[schemars(with = "String")]
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub idle_timeout: Duration,
    /// A response chunk (16 KiB at most) the client has not taken within this time ends the
    /// response: its HTTP/2 stream is reset, an HTTP/1.1 connection is closed. A client must
    /// read about 16 KiB per `send_timeout`; control frames and tiny flow-control windows
    /// are no progress. Time spent waiting for the upstream does not count.
    #[schemars(with = "String")]
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub send_timeout: Duration,
    /// Largest request head accepted, in bytes (431 beyond it). At least 8192.
    pub max_header_bytes: usize,
    /// Longest request target (path and query) accepted, in bytes (414 beyond it). At least
    /// 1024, at most 65535.
    pub max_target_bytes: usize,
    /// Most header fields in one request, its host (`Host`, HTTP/2's `:authority`, a decision
    /// door's description of it) counted as one at every door (431 beyond it).
    pub max_headers: usize,
    /// Most client connections open at once over the proxy's listeners, and as many over the
    /// decision doors'; further clients wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Most requests being forwarded at once over the proxy's listeners, and, apart, most
    /// decisions at once over the decision doors' (so the proxy's never shed Envoy's Checks);
    /// one more is refused at once with 503 `overloaded` and `Retry-After: 1` (load shedding)
    /// rather than queued behind them. Restart-only.
    pub max_in_flight: usize,
    /// Most requests from one client whose bodies are still arriving (a stalled upload holds
    /// one of `max_in_flight`): one more is refused with 503 `overloaded` and `Retry-After: 1`,
    /// as is one more past half of `max_in_flight` held by uploads in all. A client is the
    /// address `trusted_proxies` resolve, an IPv6 one by its /64. Without it, one client's
    /// stalled HTTP/2 uploads (128 per connection) could take every `max_in_flight` permit.
    /// Requests whose body arrives with their head (any GET, most small POSTs) never count.
    pub max_uploads_per_client: usize,
    /// Largest request body forwarded, in bytes (413 beyond it).
    pub max_body_bytes: u64,
    /// Most concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// On SIGTERM/SIGINT, in-flight requests get this long to finish.
    #[schemars(with = "String")]
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub shutdown_grace: Duration,
    /// On SIGTERM/SIGINT, how long the gateway goes on accepting and serving, not ready
    /// (`/readyz` 503), before it drains: the time a load balancer or Kubernetes takes to
    /// stop sending it traffic. Default 0s.
    #[schemars(with = "String")]
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub shutdown_delay: Duration,
    /// Networks of proxies in front of the gateway whose `X-Forwarded-*` and `Forwarded`
    /// headers are believed. Empty (the default) trusts nobody.
    pub trusted_proxies: Vec<Network>,
    /// Infrastructure headers a trusted proxy (`trusted_proxies`) may pass on to upstreams:
    /// names or prefixes ending in `*`, such as `x-forwarded-client-cert` or `x-envoy-*`.
    /// From anyone else, and when not listed, `X-Forwarded-Client-Cert`, `X-Client-Cert-*`,
    /// `X-SSL-Client-*`, `X-Envoy-*` and `X-Portcullis-*` are always removed. Path and method
    /// overrides (`X-Original-URL`, `X-Forwarded-Uri`, …) can never be listed.
    pub trusted_proxy_headers: Vec<String>,
    /// Header carrying the request id, propagated when a client sends a well-formed one and
    /// generated otherwise.
    pub request_id_header: String,
    /// Worker threads of the runtime (0 = one per core). Restart-only.
    pub worker_threads: usize,
    /// What one HTTP/2 client connection may send before it is ended with GOAWAY
    /// `ENHANCE_YOUR_CALM`.
    pub http2: RawHttp2,
}

/// Per-connection HTTP/2 limits against frames that cost the gateway work but carry no
/// request (CVE-2023-44487 rapid reset, control-frame floods).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawHttp2 {
    /// Stream resets (RST_STREAM) a client may send per `window`; one more ends the
    /// connection with GOAWAY `ENHANCE_YOUR_CALM`. Each reset stream may have started a
    /// decision and an upstream exchange. A decision door's own `peers` have
    /// `max_peer_resets` instead.
    pub max_resets: u32,
    /// Stream resets per `window` from a decision door's configured `peers`: Envoy resets a
    /// Check when its timeout fires or its client leaves, over the one connection every
    /// client's Checks share, so `max_resets` would drop them all with the GOAWAY.
    pub max_peer_resets: u32,
    /// PING and SETTINGS frames (not acknowledgements) and frames of unknown types a client
    /// may send per `window`; one more ends the connection with GOAWAY `ENHANCE_YOUR_CALM`.
    /// h2 answers each PING and SETTINGS.
    pub max_control_frames: u32,
    /// The window over which frames are counted.
    #[schemars(with = "String")]
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    pub window: Duration,
}

impl Default for RawHttp2 {
    fn default() -> Self {
        Self {
            max_resets: 200,
            max_peer_resets: 20_000,
            max_control_frames: 1000,
            window: Duration::from_secs(10),
        }
    }
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(30),
            max_header_bytes: 16 * 1024,
            max_target_bytes: 8 * 1024,
            max_headers: 100,
            max_connections: 10_000,
            max_in_flight: 10_000,
            max_uploads_per_client: 256,
            max_body_bytes: 10 * 1024 * 1024,
            max_concurrent_streams: 128,
            shutdown_grace: Duration::from_secs(30),
            shutdown_delay: Duration::ZERO,
            trusted_proxies: Vec::new(),
            trusted_proxy_headers: Vec::new(),
            request_id_header: "x-request-id".to_owned(),
            worker_threads: 0,
            http2: RawHttp2::default(),
        }
    }
}

/// An upstream service: one URL, or one URL naming scheme, host and base path and several
/// `endpoints` to connect to.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// `http://host:port` or `https://host:port`, optionally with a base path prepended to
    /// every forwarded path. Its host is the `Host` sent (unless `preserve_host`) and the TLS
    /// server name (unless `server_name`); without `endpoints` it is also where the gateway
    /// connects. `http` only makes sense on a trusted network.
    pub url: String,
    /// Where to connect instead of the URL's host: `ip:port` or `name:port`, each a balancing
    /// endpoint (a name resolving to several addresses gives one endpoint per address,
    /// re-resolved every `dns_refresh`). Empty: the URL's host and port.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// How requests are spread over the endpoints: `round_robin` (the default) or
    /// `least_request` (the less busy of two endpoints picked at random).
    #[serde(default)]
    pub balance: RawBalance,
    /// Consistent hashing: requests with the same key go to the same endpoint while it is
    /// available (rendezvous hashing, so an endpoint leaving moves only its own keys).
    /// Requests without the key are balanced by `balance`.
    #[serde(default)]
    pub hash: Option<RawHash>,
    /// Passive ejection: an endpoint failing this many requests in a row (connect failures,
    /// TLS failures, broken exchanges, 5xx answers) gets no traffic for a back-off time.
    #[serde(default)]
    pub ejection: RawEjection,
    /// Active health checks: each endpoint is asked `GET path` every `interval`; only 2xx
    /// counts as healthy. Off by default.
    #[serde(default)]
    pub health_check: Option<RawHealthCheck>,
    /// How often endpoint names are resolved again (at least 100 ms).
    #[serde(
        default = "default_dns_refresh",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
    #[schemars(with = "String")]
    pub dns_refresh: Duration,
    /// Retries of requests that never reached an upstream, or that found a pooled connection
    /// closed and are safe to repeat, are bounded per upstream.
    #[serde(default)]
    pub retry_budget: RawRetryBudget,
    /// Time to establish a TCP (and TLS) connection; 504 beyond it. A rule's
    /// `timeouts.connect` overrides it.
    #[serde(
        default = "default_connect_timeout",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
    #[schemars(with = "String")]
    pub connect_timeout: Duration,
    /// Time from the end of the request body to the response head; 504 beyond it. While the
    /// body streams, no pause in it may be longer, nor its average fall below 500 bytes a
    /// second after the first timeout: the client's lateness gets 408 `body_timeout`, the
    /// upstream's 504. A rule's `timeouts.response` overrides it.
    #[serde(
        default = "default_response_timeout",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
    #[schemars(with = "String")]
    pub response_timeout: Duration,
    /// Longest wait for the next piece of a response body while the client's body does not
    /// move either; the response is cut beyond it. Default 5m. A watch stream that may stay
    /// silent longer sets a longer one (and a longer `server.idle_timeout`, which closes a
    /// connection on which nothing moves). A rule's `timeouts.idle` overrides it.
    #[serde(default, deserialize_with = "opt_duration")]
    #[schemars(with = "Option<String>")]
    pub idle_timeout: Option<Duration>,
    /// Forward the client's `Host` instead of the upstream's authority.
    #[serde(default)]
    pub preserve_host: bool,
    /// The `aud` of the identity assertions sent to this upstream, instead of
    /// `identity_assertion.audience`: an upstream that checks it cannot be handed an
    /// assertion minted for another (which it could replay within the assertion's life).
    #[serde(default)]
    pub assertion_audience: Option<String>,
    /// PEM file of CA certificates trusted for an https upstream (instead of the public
    /// roots): a private CA. Watched: a change reconnects with the new trust.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain presented to an https upstream that asks for a client
    /// certificate (mTLS to the service), with `client_key`. Watched.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`. Watched.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// TLS server name sent (SNI) and verified, instead of the URL's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Speak HTTP/2 to an https upstream (negotiated by ALPN); the same as `protocol: h2`.
    #[serde(default)]
    pub http2: bool,
    /// `http1` (the default), `h2` (https, HTTP/2 offered by ALPN) or `h2c` (http, HTTP/2
    /// with prior knowledge, as gRPC services without TLS speak).
    #[serde(default)]
    pub protocol: Option<RawProtocol>,
    /// HTTP/2 keep-alive PINGs to an `h2` or `h2c` upstream: a connection whose PING goes
    /// unanswered is closed, its requests fail (502) and the next ones open a new connection,
    /// instead of waiting on a peer that vanished (a dropped NAT entry, a host gone without a
    /// FIN). Off by default: gRPC servers limit PINGs (grpc-go's default allows one per five
    /// minutes, and none without a request in flight, and answers more with GOAWAY
    /// `too_many_pings`), so set `interval` to what the upstream permits.
    #[serde(default)]
    pub http2_keepalive: Option<RawHttp2Keepalive>,
    /// The most connections open to each endpoint at once (busy, pooled and WebSocket
    /// tunnels), from 1 to 1,000,000. A request finding them all busy waits up to
    /// `connect_timeout` (and never up to its response timeout) for one to come back or
    /// close, then another endpoint is tried, then it gets 503 `upstream_busy`. Unlimited by
    /// default.
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Idle keep-alive connections kept per endpoint.
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle: usize,
    /// An idle pooled connection is closed after this long.
    #[serde(
        default = "default_pool_idle_timeout",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
    #[schemars(with = "String")]
    pub pool_idle_timeout: Duration,
    /// The upstream serves paths in any case (IIS, ASP.NET, Express by default, Caddy's `path`
    /// matcher and `handle` blocks): every allow
    /// rule forwarding here matches path literals in any ASCII case, so `/ADMIN/x` meets the
    /// requirements of the rule for `/admin/**` instead of passing to a catch-all rule.
    #[serde(default)]
    pub case_insensitive_paths: bool,
}

/// How requests are spread over an upstream's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawBalance {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// The endpoint with fewer requests in flight of two picked at random (power of two
    /// choices).
    LeastRequest,
}

/// The key of consistent hashing: one of the two.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHash {
    /// A request header's value (as received, after identity headers are set).
    #[serde(default)]
    pub header: Option<String>,
    /// The authenticated principal's id.
    #[serde(default)]
    pub principal: bool,
}

/// Passive ejection of failing endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawEjection {
    /// Failures in a row that eject an endpoint; `0` never ejects.
    pub consecutive_failures: u32,
    /// Time out of rotation after the first ejection; doubled by each further one in a row,
    /// up to `max_time`. An endpoint comes back on its own when it is over; if every endpoint
    /// is ejected, all of them are tried rather than none.
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    #[schemars(with = "String")]
    pub base_time: Duration,
    /// Longest time out of rotation.
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    #[schemars(with = "String")]
    pub max_time: Duration,
}

impl Default for RawEjection {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_time: Duration::from_secs(10),
            max_time: Duration::from_secs(300),
        }
    }
}

/// Active HTTP health checks of every endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// Path asked with `GET`, starting with `/`.
    pub path: String,
    /// Time between two checks of an endpoint.
    #[serde(
        default = "default_health_interval",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
    #[schemars(with = "String")]
    pub interval: Duration,
    /// A check not answered within this time failed.
    #[serde(
        default = "default_health_timeout",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Passed checks in a row that return an unhealthy endpoint to rotation.
    #[serde(default = "default_two")]
    pub healthy_threshold: u32,
    /// Failed checks in a row that take an endpoint out of rotation.
    #[serde(default = "default_three")]
    pub unhealthy_threshold: u32,
}

/// HTTP/2 keep-alive PINGs to an upstream.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHttp2Keepalive {
    /// Time between PINGs on a connection (at least one second).
    #[serde(deserialize_with = "duration", serialize_with = "duration_text")]
    #[schemars(with = "String")]
    pub interval: Duration,
    /// A PING not acknowledged within this time closes the connection.
    #[serde(
        default = "default_keepalive_timeout",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// PING a connection with no request in flight too (off: only while requests are in
    /// flight, as most gRPC servers require).
    #[serde(default)]
    pub while_idle: bool,
}

fn default_keepalive_timeout() -> Duration {
    Duration::from_secs(20)
}

/// How many retries an upstream allows: at most `percent` of its requests plus `minimum`,
/// per ten seconds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawRetryBudget {
    /// Retries allowed as a percentage of requests.
    pub percent: u32,
    /// Retries always allowed per ten seconds, however few the requests.
    pub minimum: u32,
}

impl Default for RawRetryBudget {
    fn default() -> Self {
        Self {
            percent: 20,
            minimum: 10,
        }
    }
}

/// The HTTP version spoken to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawProtocol {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 over TLS, offered by ALPN (HTTP/1.1 if the upstream declines).
    H2,
    /// HTTP/2 over cleartext TCP with prior knowledge.
    H2c,
}

fn default_dns_refresh() -> Duration {
    Duration::from_secs(30)
}

fn default_health_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_health_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_two() -> u32 {
    2
}

fn default_three() -> u32 {
    3
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_response_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_pool_max_idle() -> usize {
    64
}

fn default_pool_idle_timeout() -> Duration {
    Duration::from_secs(90)
}
