//! The config files as written: serde types with the YAML's names.
//!
//! Every struct denies unknown fields, so a typo is an error with a line number rather than a
//! silently ignored setting. Values that can be parsed are parsed here (addresses, durations,
//! networks), so their errors carry the position serde_yaml reports. Cross-references
//! (upstream names, files) are checked in [`super::compile`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer};

/// The gateway config file (`config/portcullis.yaml`).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Where client traffic is accepted. Restart-only: a reload that changes a listener's
    /// address fails.
    pub listeners: Vec<RawListener>,
    /// The admin listener: health, readiness, metrics, config status and reload.
    #[serde(default)]
    pub admin: RawAdmin,
    /// Connection and request limits shared by all listeners.
    #[serde(default)]
    pub server: RawServer,
    /// Named upstreams that rules forward to.
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    /// Where the route policies live.
    #[serde(default)]
    pub policies: RawPolicies,
    /// Logs and access logs.
    #[serde(default)]
    pub logging: RawLogging,
    /// Named authenticators; a rule lists, in order, the ones it accepts.
    #[serde(default)]
    pub authenticators: BTreeMap<String, RawAuthenticator>,
    /// Headers set on every allowed request, rendered from templates: `{principal.id}`,
    /// `{principal.kind}`, `{principal.authenticator}`, `{principal.issuer}`,
    /// `{principal.tenant}`, `{principal.scopes}` (space-separated), `{principal.roles}`
    /// (comma-separated), `{apikey.id}`, `{claims.<path>}` (arrays comma-joined),
    /// `{client.ip}`, `{rule.name}`. A header whose variable is absent is not set. Every name
    /// listed here or in any rule is removed from every client request first.
    #[serde(default)]
    pub identity_headers: BTreeMap<String, String>,
    /// Settings shared by every authenticator.
    #[serde(default)]
    pub authn: RawAuthn,
    /// Named rate limits; a rule applies one with `rate_limit: NAME`.
    #[serde(default)]
    pub rate_limits: BTreeMap<String, RawRateLimit>,
    /// External authorization services a rule may ask (`delegate: NAME`), over Envoy's
    /// ext_authz gRPC protocol: OPA-Envoy, another Portcullis, a policy service of your own.
    #[serde(default)]
    pub delegates: BTreeMap<String, RawDelegate>,
    /// A short-lived JWT the gateway signs for each allowed, authenticated request and sends
    /// upstream, so upstreams verify (against `/.well-known/jwks.json` on the admin
    /// listener, or on the read-only `admin.public_address`) instead of trusting headers. A
    /// request whose assertion cannot be signed gets 503 rather than going upstream without
    /// it.
    #[serde(default)]
    pub identity_assertion: Option<RawAssertion>,
}

/// The signed identity assertion.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAssertion {
    /// The header it is sent in (stripped from client requests). Default
    /// `x-portcullis-assertion`.
    #[serde(default)]
    pub header: Option<String>,
    /// The signing key: a PKCS#8 PEM private key file (`portcullis keys new` writes one),
    /// watched.
    pub key_file: PathBuf,
    /// ES256, ES384, EdDSA, RS256/384/512 or PS256/384/512.
    pub algorithm: String,
    /// The key id in the token header and the JWKS.
    pub kid: String,
    /// Keys no longer signing but still published, so assertions signed before a rotation
    /// verify until they expire.
    #[serde(default)]
    pub retired_keys: Vec<RawRetiredKey>,
    /// `iss` of every assertion.
    pub issuer: String,
    /// `aud` of every assertion, if set.
    #[serde(default)]
    pub audience: Option<String>,
    /// Lifetime (`exp - iat`), whole seconds. Default 60s; at most 1h. An assertion is
    /// reused for the same identity during the first half of its life.
    #[serde(default = "default_assertion_ttl", deserialize_with = "duration")]
    #[schemars(with = "String")]
    pub ttl: Duration,
    /// Claims from templates (the identity header variables). A template that is a single
    /// variable keeps its JSON shape (arrays stay arrays). `sub` defaults to
    /// `{principal.id}` and `authenticator` to `{principal.authenticator}` (an id is unique
    /// only within its authenticator); `iss`, `aud`, `iat` and `exp` are the gateway's, and
    /// `exp` is never later than the credential's own expiry.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
}

/// A retired assertion key: published, never used to sign.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRetiredKey {
    /// Its PKCS#8 PEM private key file.
    pub key_file: PathBuf,
    /// Its algorithm.
    pub algorithm: String,
    /// Its key id.
    pub kid: String,
}

fn default_assertion_ttl() -> Duration {
    Duration::from_secs(60)
}

/// A rate limit (GCRA): `requests` per `per` on average, with bursts of up to `burst`,
/// counted separately for each value of `key`. Requests over it get 429 with `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    /// What is counted separately: `principal` (anonymous requests by client address),
    /// `api_key` (the key's id; other requests by principal), `client_ip` (IPv6 by /64),
    /// `route` (one budget for everyone on the rule), `header:NAME` (believed only from
    /// `server.trusted_proxies`: a client could pick a new value per request) or
    /// `claim:PATH`; when absent or not believed, by client address.
    pub key: String,
    /// Requests allowed per `per`, on average.
    pub requests: u32,
    /// The period `requests` are counted over: `1s`, `1m`, `1h`.
    #[serde(deserialize_with = "duration")]
    #[schemars(with = "String")]
    pub per: Duration,
    /// How many requests may come at once. Default: `requests`.
    #[serde(default)]
    pub burst: Option<u32>,
}

/// An external authorization service a rule can ask.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDelegate {
    /// Its ext_authz gRPC endpoint: `http://host:port` (h2c) or `https://host:port`.
    pub grpc: String,
    /// Each call's deadline, connection included. Default 200ms.
    #[schemars(with = "String")]
    #[serde(default = "default_delegate_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// How long an answer is reused for the same rule, request line and credential (never
    /// past the credential's expiry; anonymous requests are never cached). 0 disables.
    /// Default 30s.
    #[schemars(with = "String")]
    #[serde(default = "default_delegate_cache_ttl", deserialize_with = "duration")]
    pub cache_ttl: Duration,
    /// Most answers cached. Default 10000.
    #[serde(default = "default_delegate_cache_entries")]
    pub cache_max_entries: u64,
    /// When it fails, times out or answers nonsense: `deny` (503 `delegate_unavailable`, the
    /// default) or `allow`.
    #[serde(default)]
    pub failure_mode: RawFailureMode,
    /// Headers its OK answer may set upstream; others are ignored. These names are removed
    /// from every client request, like identity headers.
    #[serde(default)]
    pub headers: Vec<String>,
}

/// What a failed external call means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawFailureMode {
    /// Refuse (503).
    #[default]
    Deny,
    /// Let the request through, counted and logged.
    Allow,
}

fn default_delegate_timeout() -> Duration {
    Duration::from_millis(200)
}

fn default_delegate_cache_ttl() -> Duration {
    Duration::from_secs(30)
}

fn default_delegate_cache_entries() -> u64 {
    10_000
}

/// One client-facing listener.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// A name for logs and metrics.
    pub name: String,
    /// `ip:port` to bind; port 0 picks a free port.
    #[schemars(with = "String")]
    #[serde(deserialize_with = "socket_addr")]
    pub address: SocketAddr,
    /// TLS termination; without it the listener speaks plain HTTP (for use behind a load
    /// balancer).
    #[serde(default)]
    pub tls: Option<RawListenerTls>,
    /// Accept HTTP/2 (ALPN `h2` over TLS, prior knowledge over plain HTTP). Default true.
    #[serde(default = "yes")]
    pub http2: bool,
    /// What the listener serves: `proxy` (the default: authorize and forward to upstreams), or
    /// a decision door for a gateway in front (`envoy_grpc`, `envoy_http`, `forward_auth`),
    /// which answers allow or deny and forwards nothing. Restart-only.
    #[serde(default)]
    pub door: RawDoor,
}

/// What a listener serves.
#[derive(Debug, Clone, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawDoor {
    /// The reverse proxy.
    #[default]
    Proxy,
    /// Envoy's gRPC ext_authz (`envoy.service.auth.v3.Authorization/Check`) and the gRPC
    /// health service.
    EnvoyGrpc(RawDecisionDoor),
    /// Envoy's HTTP ext_authz mode (`http_service`): the original request arrives as the
    /// request, under `path_prefix`; 200 allows.
    EnvoyHttp(RawEnvoyHttp),
    /// nginx `auth_request`, Traefik ForwardAuth, Caddy `forward_auth`, APISIX `forward-auth`,
    /// Kong: the original request is described by headers (`X-Forwarded-Method`, `-Proto`,
    /// `-Host`, `-Uri`, or nginx's `X-Original-URI` / `X-Original-Method`); 2xx allows.
    ForwardAuth(RawForwardAuth),
}

/// A decision door's common settings.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDecisionDoor {
    /// Peers allowed to ask (the gateways in front); anyone else is refused. Their word about
    /// the original request is believed, so keep this to them. Default: loopback.
    #[serde(default = "loopback_networks")]
    pub peers: Vec<Network>,
    /// Every answer within this long, or an error the peer's failure mode handles (the
    /// gRPC door: UNAVAILABLE; the HTTP doors: 503). Default 2s.
    #[schemars(with = "String")]
    #[serde(default = "default_decision_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
}

/// Envoy's HTTP ext_authz mode.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEnvoyHttp {
    /// Peers allowed to ask; default loopback.
    #[serde(default = "loopback_networks")]
    pub peers: Vec<Network>,
    /// Answer deadline; default 2s.
    #[schemars(with = "String")]
    #[serde(default = "default_decision_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// The `http_service.path_prefix` Envoy puts before the original path (`/authz`); empty
    /// by default.
    #[serde(default)]
    pub path_prefix: String,
}

/// A forward-auth door.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawForwardAuth {
    /// Peers allowed to ask (nginx, Traefik, Caddy, APISIX, Kong); their forwarding headers
    /// describe the request and are believed only from them. Default loopback.
    #[serde(default = "loopback_networks")]
    pub peers: Vec<Network>,
    /// Answer deadline; default 2s.
    #[schemars(with = "String")]
    #[serde(default = "default_decision_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// Statuses the peer cannot pass through, and the status to answer instead; the real
    /// one goes in `x-portcullis-status`. nginx turns anything but 2xx, 401 and 403 into
    /// 500, so its example (`examples/nginx/nginx.conf` with the `nginx` listener of
    /// `examples/portcullis/portcullis.yaml`) maps 302, 400, 404, 405, 429 and 503 to 403 and
    /// uses `error_page` to surface the real status. Default: none (Traefik, Caddy, APISIX and
    /// Kong pass any status through).
    #[serde(default)]
    pub status_map: BTreeMap<u16, u16>,
}

/// TLS settings of a listener.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    /// Certificates; the first is served when the client's SNI matches no other.
    pub certificates: Vec<RawCertificate>,
    /// Ask clients for a certificate (mTLS), verified against these CAs.
    #[serde(default)]
    pub client_auth: Option<RawClientAuth>,
}

/// Client certificates on a listener.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawClientAuth {
    /// PEM file of the CA certificates client certificates must chain to (watched).
    pub ca_file: PathBuf,
    /// Refuse the handshake without a valid client certificate. Default false: a client may
    /// connect without one, and rules decide (an `mtls` authenticator finds no credential).
    #[serde(default)]
    pub required: bool,
}

/// A certificate chain and its key, both PEM files (relative paths are relative to the config
/// file). Files are watched and reloaded on change.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    /// PEM file holding the leaf certificate first, then its intermediates.
    pub cert: PathBuf,
    /// PEM file holding the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Server names (SNI) this certificate answers for; `*.example.com` wildcards allowed.
    /// Default: the certificate's subject alternative names.
    #[serde(default)]
    pub server_names: Vec<String>,
    /// Client certificates for these server names, verified against their own CAs instead of
    /// the listener's `client_auth`. A connection is then bound to the names its SNI chose: a
    /// request for a host of another certificate gets 421, so a client certificate from one
    /// host's CA never reaches a host that requires another.
    #[serde(default)]
    pub client_auth: Option<RawClientAuth>,
}

/// The admin listener.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// `ip:port` to bind. Loopback by default: the admin listener has no authentication.
    /// Restart-only.
    #[serde(default = "default_admin_address", deserialize_with = "socket_addr")]
    #[schemars(with = "String")]
    pub address: SocketAddr,
    /// `ip:port` of an optional second, read-only listener that serves only `GET`/`HEAD`
    /// `/healthz`, `/readyz` and `/.well-known/jwks.json`: for upstreams fetching the identity
    /// assertion's keys and for load balancers, which then never reach `POST /reload`,
    /// `/config` or `/metrics`. Off by default. Restart-only.
    #[serde(default, deserialize_with = "opt_socket_addr")]
    #[schemars(with = "Option<String>")]
    pub public_address: Option<SocketAddr>,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            address: default_admin_address(),
            public_address: None,
        }
    }
}

/// Connection and request limits.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    /// Time a client has to finish the TLS handshake, and to complete an HTTP/1 request head
    /// from its first byte. Bounds slowloris clients.
    #[schemars(with = "String")]
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed: a kept-alive
    /// connection waiting for its next request, a new one (plain or after its TLS handshake)
    /// waiting for its first, an HTTP/2 connection however many PINGs it sends.
    #[schemars(with = "String")]
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// A response chunk (16 KiB at most) the client has not taken within this time ends the
    /// response: its HTTP/2 stream is reset, an HTTP/1.1 connection is closed. A client must
    /// read about 16 KiB per `send_timeout`; control frames and tiny flow-control windows
    /// are no progress. Time spent waiting for the upstream does not count.
    #[schemars(with = "String")]
    #[serde(deserialize_with = "duration")]
    pub send_timeout: Duration,
    /// Largest request head accepted, in bytes (431 beyond it). At least 8192.
    pub max_header_bytes: usize,
    /// Longest request target (path and query) accepted, in bytes (414 beyond it). At least
    /// 1024, at most 65535.
    pub max_target_bytes: usize,
    /// Most header fields in one request.
    pub max_headers: usize,
    /// Most client connections open at once, over all listeners; further clients wait in the
    /// kernel's accept queue.
    pub max_connections: usize,
    /// Largest request body forwarded, in bytes (413 beyond it).
    pub max_body_bytes: u64,
    /// Most concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// On SIGTERM/SIGINT, in-flight requests get this long to finish.
    #[schemars(with = "String")]
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
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
    /// decision and an upstream exchange.
    pub max_resets: u32,
    /// PING and SETTINGS frames (not acknowledgements) a client may send per `window`; one
    /// more ends the connection with GOAWAY `ENHANCE_YOUR_CALM`. h2 answers each one.
    pub max_control_frames: u32,
    /// The window over which frames are counted.
    #[schemars(with = "String")]
    #[serde(deserialize_with = "duration")]
    pub window: Duration,
}

impl Default for RawHttp2 {
    fn default() -> Self {
        Self {
            max_resets: 200,
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
            max_body_bytes: 10 * 1024 * 1024,
            max_concurrent_streams: 128,
            shutdown_grace: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
            trusted_proxy_headers: Vec::new(),
            request_id_header: "x-request-id".to_owned(),
            worker_threads: 0,
            http2: RawHttp2::default(),
        }
    }
}

/// An upstream service.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// `http://host:port` or `https://host:port`, optionally with a base path prepended to
    /// every forwarded path. `http` only makes sense on a trusted network.
    pub url: String,
    /// Time to establish a TCP (and TLS) connection; 502 beyond it.
    #[serde(default = "default_connect_timeout", deserialize_with = "duration")]
    #[schemars(with = "String")]
    pub connect_timeout: Duration,
    /// Time from sending the request to receiving the response head; 504 beyond it.
    #[serde(default = "default_response_timeout", deserialize_with = "duration")]
    #[schemars(with = "String")]
    pub response_timeout: Duration,
    /// Forward the client's `Host` instead of the upstream's authority.
    #[serde(default)]
    pub preserve_host: bool,
    /// PEM file of CA certificates trusted for an https upstream (instead of the public roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Speak HTTP/2 to an https upstream (negotiated by ALPN).
    #[serde(default)]
    pub http2: bool,
    /// Idle keep-alive connections kept per upstream.
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle: usize,
    /// An idle pooled connection is closed after this long.
    #[serde(default = "default_pool_idle_timeout", deserialize_with = "duration")]
    #[schemars(with = "String")]
    pub pool_idle_timeout: Duration,
    /// The upstream serves paths in any case (IIS, ASP.NET, Express by default): every allow
    /// rule forwarding here matches path literals in any ASCII case, so `/ADMIN/x` meets the
    /// requirements of the rule for `/admin/**` instead of passing to a catch-all rule.
    #[serde(default)]
    pub case_insensitive_paths: bool,
}

/// Where the policy files are.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPolicies {
    /// Directory of `*.yaml` policy files, relative to the config file. Files are read in name
    /// order; rules are evaluated in that order, first match wins.
    #[serde(default = "default_policy_dir")]
    pub dir: PathBuf,
    /// Whether a reload may leave no rule at all (every request then denied). Off by default:
    /// an empty or truncated policy file, or a ConfigMap caught mid-update, is refused and the
    /// running rules stay.
    #[serde(default)]
    pub allow_empty: bool,
    /// What a rule's `when` expression may cost per request.
    #[serde(default)]
    pub conditions: RawConditionLimits,
}

impl Default for RawPolicies {
    fn default() -> Self {
        Self {
            dir: default_policy_dir(),
            allow_empty: false,
            conditions: RawConditionLimits::default(),
        }
    }
}

/// Run-time limits of `when` expressions with comprehensions (`all`, `exists`, `exists_one`,
/// `map`, `filter`); at compile, those nest at most two deep and an expression has at most
/// 1000 nodes. Over a limit, the evaluation stops and the rule denies with
/// `condition_budget_exceeded` (403).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawConditionLimits {
    /// Longest list or map a comprehension may range over (a token's roles, say).
    pub max_list_size: NonZeroU64,
    /// Steps one evaluation may take: a comprehension costs the length of its range times
    /// the size of its body (charged before it runs, as if it visited every element), and
    /// each list or map a comprehension body reads from the variables costs its length.
    /// Default 20000: at most about a millisecond of evaluation (`bench/policy.rs`,
    /// `cel_budget_spent`); an `exists` over 1000 roles costs about 12000.
    pub max_steps: NonZeroU64,
}

impl Default for RawConditionLimits {
    fn default() -> Self {
        Self {
            max_list_size: NonZeroU64::MIN.saturating_add(999),
            max_steps: NonZeroU64::MIN.saturating_add(19_999),
        }
    }
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawLogging {
    /// `human` or `json`. Restart-only.
    pub format: LogFormat,
    /// Filter in `RUST_LOG` syntax, e.g. `info` or `portcullis=debug`. Restart-only.
    pub level: String,
    /// One line per request at target `access`.
    pub access_log: bool,
}

impl Default for RawLogging {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: "info".to_owned(),
            access_log: true,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Readable text.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// A policy file under `policies/`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPolicyFile {
    /// Rules, evaluated in order; the first whose `match` fits the request decides.
    #[serde(default)]
    pub rules: Vec<RawRule>,
    /// The allow rules of this file match path literals in any ASCII case (`/ADMIN/x` meets
    /// the rule for `/admin/**`), for upstreams that serve `/ADMIN` as `/admin` (IIS,
    /// ASP.NET, Express by default). Deny rules always do.
    #[serde(default)]
    pub case_insensitive_paths: bool,
}

/// One route rule.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Unique name, shown in logs, metrics and `explain`.
    pub name: String,
    /// Which requests the rule applies to; every listed criterion must hold.
    #[serde(rename = "match")]
    pub matches: RawMatch,
    /// `allow` or `deny`.
    pub effect: Effect,
    /// The upstream an allowed request is forwarded to (proxy door).
    #[serde(default)]
    pub upstream: Option<String>,
    /// Authenticators this rule accepts, tried in order: the first that finds its credential
    /// decides, and an invalid credential is refused (401) rather than tried elsewhere.
    #[serde(default)]
    pub authenticators: Vec<String>,
    /// Let requests without any credential through as anonymous. With `authenticators`, a
    /// credential is optional but must be valid when present. An allow rule needs one of the
    /// two: there is no implicit anonymous access.
    #[serde(default)]
    pub anonymous: bool,
    /// What an allowed request must also satisfy; each failure is a 403 with its reason.
    #[serde(default)]
    pub require: RawRequire,
    /// A CEL expression the request must satisfy (allow rules): over `claims`, `principal`,
    /// `request`, `params` (named path parameters) and `action`; only `true` allows.
    #[serde(default)]
    pub when: Option<String>,
    /// Identity headers for this rule: added to, or replacing, the global ones; `null`
    /// removes a global one.
    #[serde(default)]
    pub identity_headers: BTreeMap<String, Option<String>>,
    /// A rate limit (from `rate_limits`) on the requests this rule allows.
    #[serde(default)]
    pub rate_limit: Option<String>,
    /// A delegate (from `delegates`) asked after the rule's requirements and `when`, before
    /// its rate limit: only its OK allows.
    #[serde(default)]
    pub delegate: Option<String>,
    /// What this rule's denials look like: status, a login redirect for browsers, extra JSON.
    #[serde(default)]
    pub denial: Option<RawDenial>,
}

/// The shape of a rule's denials. Without it: 401 with a challenge when a credential is
/// missing or invalid, 403 for policy denials, each with a short JSON body.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDenial {
    /// Replaces 403 for the rule's policy denials (a deny rule, an unmet requirement, a false
    /// `when`): a 4xx other than 401 and 407, e.g. 404 for a route that should look absent.
    /// The body then names the status (`not_found`), not the reason, and no
    /// `insufficient_scope` challenge is sent. A request without a valid credential still
    /// gets its 401 (or the login redirect).
    #[serde(default)]
    pub status: Option<u16>,
    /// Where a browser without a valid credential is sent instead of a 401: a `GET` or `HEAD`
    /// whose `Accept` names `text/html` gets a 302 to this URL, with the address it asked
    /// for in `return_param`. Absolute `http(s)` URL or a path starting with `/`. The return
    /// address carries the request's host: on a rule without `hosts`, the login service must
    /// check it against its allowed domains before sending anyone back.
    #[serde(default)]
    pub login_url: Option<String>,
    /// The query parameter of `login_url` that carries the return address. Default `rd`.
    #[serde(default)]
    pub return_param: Option<String>,
    /// Extra members of the JSON body every denial of this rule carries, after `error` and
    /// `request_id` (which it cannot replace): e.g. a help message or a documentation link.
    #[serde(default)]
    pub body: BTreeMap<String, serde_json::Value>,
}

/// Requirements of an allow rule beyond a valid credential.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRequire {
    /// Scopes the principal must hold (403 `insufficient_scope` otherwise).
    #[serde(default)]
    pub scopes: Option<RawStringSet>,
    /// Roles the principal must hold.
    #[serde(default)]
    pub roles: Option<RawStringSet>,
    /// Claims (dotted paths) and what they must be.
    #[serde(default)]
    pub claims: BTreeMap<String, RawClaimCheck>,
    /// `user` or `machine`.
    #[serde(default)]
    pub kind: Option<RawPrincipalKind>,
    /// Client addresses allowed (the client address as derived through `trusted_proxies`).
    #[serde(default)]
    pub networks: Vec<Network>,
    /// A verified client certificate is required (the listener asks for one).
    #[serde(default)]
    pub mtls: bool,
}

/// Strings that must all, or at least one of which must, be held.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawStringSet {
    /// Every one of these.
    #[serde(default)]
    pub all_of: Vec<String>,
    /// At least one of these.
    #[serde(default)]
    pub any_of: Vec<String>,
}

/// A check of one claim.
#[derive(Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawClaimCheck {
    /// Equal to this JSON value (`"acme"`, `2`, `true`).
    Equals(serde_json::Value),
    /// Equal to one of these.
    OneOf(Vec<serde_json::Value>),
    /// An array claim holding this value, or a space-separated string holding this word.
    Contains(serde_json::Value),
}

/// Request criteria of a rule. An empty list matches everything.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// Host names, case-insensitive; `*.example.com` matches one label; `host:port` also
    /// checks the port.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Canonical paths: exact `/a/b`, prefix `/api/**`, one segment `*`.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Methods, upper case.
    #[serde(default)]
    pub methods: Vec<String>,
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// Let the request through.
    Allow,
    /// Refuse it with 403.
    Deny,
}

// === single-key enums ===

/// Deserialises an enum written as one of its unit variants (`bearer`) or as a map with exactly
/// one key naming the variant (`cookie: session`), the form ops expect. serde_yaml only reads
/// YAML tags (`!cookie session`) for enums, which nobody writes by hand.
macro_rules! single_key_enum {
    ($ty:ident, $expecting:literal,
     units { $($uname:literal => $uvar:ident),* $(,)? },
     maps { $($name:literal => $var:ident($inner:ty)),* $(,)? }) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                const VARIANTS: &[&str] = &[$($uname,)* $($name,)*];
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    #[allow(clippy::allow_attributes, unreachable_code, reason = "enums without unit variants")]
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$ty, E> {
                        $(if v == $uname { return Ok($ty::$uvar); })*
                        Err(E::unknown_variant(v, VARIANTS))
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<$ty, A::Error> {
                        use serde::de::Error as _;
                        let Some(key) = m.next_key::<String>()? else {
                            return Err(A::Error::custom(concat!("expected ", $expecting)));
                        };
                        let out = match key.as_str() {
                            $($name => $ty::$var(m.next_value::<$inner>()?),)*
                            other => return Err(A::Error::unknown_variant(other, VARIANTS)),
                        };
                        if m.next_key::<String>()?.is_some() {
                            return Err(A::Error::custom(concat!("exactly one key expected: ", $expecting)));
                        }
                        Ok(out)
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

single_key_enum!(RawAuthenticator, "an authenticator: `jwt`, `api_key`, `introspection`, `trusted_headers` or `mtls`",
units {},
maps {
    "jwt" => Jwt(RawJwt),
    "api_key" => ApiKey(RawApiKeyAuth),
    "introspection" => Introspection(Box<RawIntrospection>),
    "trusted_headers" => TrustedHeaders(RawTrustedHeaders),
    "mtls" => Mtls(RawMtls),
});
single_key_enum!(RawDoor, "a door: `proxy`, `envoy_grpc`, `envoy_http` or `forward_auth`",
units { "proxy" => Proxy },
maps {
    "envoy_grpc" => EnvoyGrpc(RawDecisionDoor),
    "envoy_http" => EnvoyHttp(RawEnvoyHttp),
    "forward_auth" => ForwardAuth(RawForwardAuth),
});
single_key_enum!(RawCredentialSource, "`bearer`, `header: NAME`, `cookie: NAME` or `query: NAME`",
    units { "bearer" => Bearer },
    maps { "header" => Header(String), "cookie" => Cookie(String), "query" => Query(String) });
single_key_enum!(RawKey, "a key source: `pem`, `pem_file`, `jwk`, `jwks_file`, `jwks_url`, `oidc_discovery` or `hmac`",
units {},
maps {
    "pem" => Pem(RawPemText),
    "pem_file" => PemFile(RawPemFile),
    "jwk" => Jwk(RawJwkText),
    "jwks_file" => JwksFile(RawJwksFile),
    "jwks_url" => JwksUrl(RawJwksUrl),
    "oidc_discovery" => OidcDiscovery(RawJwksUrl),
    "hmac" => Hmac(RawHmacKey),
});
single_key_enum!(RawClaimCheck, "`equals: VALUE`, `one_of: [VALUES]` or `contains: VALUE`",
units {},
maps {
    "equals" => Equals(serde_json::Value),
    "one_of" => OneOf(Vec<serde_json::Value>),
    "contains" => Contains(serde_json::Value),
});
single_key_enum!(RawSecret, "`env: VARIABLE` or `file: PATH`",
    units {},
    maps { "env" => Env(String), "file" => File(PathBuf) });
single_key_enum!(RawMachineRule, "`client_id_without_sub`, `claim_present: CLAIM` or `claim_equals: {claim, value}`",
    units { "client_id_without_sub" => ClientIdWithoutSub },
    maps { "claim_present" => ClaimPresent(String), "claim_equals" => ClaimEquals(RawClaimEquals) });

// === defaults and field parsers ===

fn yes() -> bool {
    true
}

fn default_admin_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}

fn default_policy_dir() -> PathBuf {
    PathBuf::from("policies")
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

/// Durations are written `500ms`, `10s`, `1m`.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as `500ms`, `10s` or `1m`")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            humantime::parse_duration(v)
                .map_err(|e| E::custom(format_args!("invalid duration `{v}`: {e}")))
        }
    }
    d.deserialize_str(Visitor)
}

/// `ip:port`.
fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = SocketAddr;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an address `ip:port` such as `127.0.0.1:8080` or `[::1]:8443`")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SocketAddr, E> {
            v.parse().map_err(|_| {
                E::custom(format_args!(
                    "invalid address `{v}`: expected `ip:port` such as `127.0.0.1:8080` or `[::1]:8443`"
                ))
            })
        }
    }
    d.deserialize_str(Visitor)
}

/// A network in CIDR notation (`10.0.0.0/8`, `fd00::/8`); a bare address is a single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[schemars(with = "String")]
pub struct Network(pub IpNet);

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor, so the error is raised while the parser is at the value and carries its
        // position and index.
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Network;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a network such as `10.0.0.0/8` or `fd00::/8`")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Network, E> {
                if let Ok(n) = s.parse::<IpNet>() {
                    return Ok(Network(n));
                }
                if let Ok(ip) = s.parse::<std::net::IpAddr>() {
                    return Ok(Network(IpNet::from(ip)));
                }
                Err(E::custom(format_args!(
                    "invalid network `{s}`: expected CIDR notation such as `10.0.0.0/8` or `fd00::/8`"
                )))
            }
        }
        d.deserialize_str(Visitor)
    }
}

// === authentication ===

/// Settings shared by every authenticator.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuthn {
    /// Realm named in `WWW-Authenticate` challenges.
    pub realm: String,
    /// The verified-token cache.
    pub cache: RawTokenCache,
}

impl Default for RawAuthn {
    fn default() -> Self {
        Self {
            realm: "portcullis".to_owned(),
            cache: RawTokenCache::default(),
        }
    }
}

/// The verified-token cache: verified tokens are remembered by a digest (never the token), for
/// at most the token's lifetime and `revalidate_after`.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawTokenCache {
    /// Most entries kept; 0 turns the cache off.
    pub max_entries: u64,
    /// Most memory the entries may take, in bytes: estimated per entry (the token, the
    /// principal and its claims, the cache's bookkeeping), within 20% of what they really take.
    pub max_bytes: u64,
    /// A cached verification is redone after this long, even if the token is still valid.
    #[schemars(with = "String")]
    #[serde(deserialize_with = "duration")]
    pub revalidate_after: Duration,
}

impl Default for RawTokenCache {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_bytes: 64 * 1024 * 1024,
            revalidate_after: Duration::from_secs(300),
        }
    }
}

/// One authenticator: how a credential is found and verified.
#[derive(Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawAuthenticator {
    /// JSON Web Tokens from one or more issuers.
    Jwt(RawJwt),
    /// API keys, stored as hashes.
    ApiKey(RawApiKeyAuth),
    /// Opaque tokens checked by OAuth 2.0 token introspection (RFC 7662).
    Introspection(Box<RawIntrospection>),
    /// Identity headers set by an inner proxy that already authenticated the caller.
    TrustedHeaders(RawTrustedHeaders),
    /// A client certificate verified during the TLS handshake.
    Mtls(RawMtls),
}

/// Where a credential is looked for.
#[derive(Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawCredentialSource {
    /// `Authorization: Bearer <token>` (scheme case-insensitive).
    Bearer,
    /// A named request header holding the bare token.
    Header(String),
    /// A named cookie.
    Cookie(String),
    /// A named query parameter (removed before forwarding). Tokens in URLs end up in logs and
    /// browser history: use only where nothing else works.
    Query(String),
}

/// A JWT authenticator.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    /// Where the token is looked for; default `[bearer]`. Tokens found in several places must be
    /// identical.
    #[serde(default = "default_sources")]
    pub from: Vec<RawCredentialSource>,
    /// Remove the verified credential from the request before it goes upstream (the
    /// default: what was verified here is not replayed to services that need not see it).
    /// `false` forwards it, for upstreams that read the token themselves.
    #[serde(default = "default_true")]
    pub strip: bool,
    /// Longest token accepted, in bytes; longer ones are refused unparsed.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Trusted issuers; a token is checked only against the provider named by its `iss`.
    pub providers: Vec<RawProvider>,
}

/// One trusted token issuer.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    /// The exact `iss` of its tokens.
    pub issuer: String,
    /// Accepted audiences; a token's `aud` (string or array) must name at least one. Required.
    pub audiences: Vec<String>,
    /// Algorithms accepted from this issuer (default: whatever each key allows).
    #[serde(default)]
    pub algorithms: Vec<RawAlgorithm>,
    /// Where the verification keys come from.
    pub keys: Vec<RawKey>,
    /// Clock skew tolerated for `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway", deserialize_with = "duration")]
    #[schemars(with = "String")]
    pub leeway: Duration,
    /// Refuse tokens without `exp`. Default true.
    #[serde(default = "yes")]
    pub require_exp: bool,
    /// Refuse tokens whose lifetime (`exp - iat`, and `exp - now`) exceeds this. Whatever it
    /// says, `exp`, `nbf` and `iat` after the year 9999 are refused.
    #[serde(default, deserialize_with = "opt_duration")]
    #[schemars(with = "Option<String>")]
    pub max_lifetime: Option<Duration>,
    /// Accepted token types (the header's `typ`), say `[at+jwt]` for RFC 9068 access tokens,
    /// so that ID tokens (`JWT`) of the same issuer and audience are refused. Compared
    /// case-insensitively, `application/at+jwt` being `at+jwt`; a token without `typ` is
    /// refused. Default: any type, or none.
    #[serde(default)]
    pub token_types: Vec<String>,
    /// Claims that must be present, with their JSON type.
    #[serde(default)]
    pub required_claims: BTreeMap<String, ClaimType>,
    /// How the principal is read from the claims.
    #[serde(default)]
    pub principal: RawPrincipalMapping,
    /// Fetching remote keys (JWKS URL, OIDC discovery).
    #[serde(default)]
    pub fetch: RawFetch,
}

/// A JWS algorithm. `none` does not exist here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
pub enum RawAlgorithm {
    /// HMAC SHA-256.
    HS256,
    /// HMAC SHA-384.
    HS384,
    /// HMAC SHA-512.
    HS512,
    /// RSASSA-PKCS1-v1_5 SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 SHA-512.
    RS512,
    /// RSASSA-PSS SHA-256.
    PS256,
    /// RSASSA-PSS SHA-384.
    PS384,
    /// RSASSA-PSS SHA-512.
    PS512,
    /// ECDSA P-256 SHA-256.
    ES256,
    /// ECDSA P-384 SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

/// JSON type of a required claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClaimType {
    /// Any JSON value.
    Any,
    /// A string.
    String,
    /// A number.
    Number,
    /// `true` or `false`.
    Boolean,
    /// An array.
    Array,
    /// An object.
    Object,
    /// A string or an array of strings.
    StringOrArray,
}

/// A verification key source.
#[derive(Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawKey {
    /// A public key (or certificate) written in the config.
    Pem(RawPemText),
    /// A PEM file: public key (SPKI or PKCS#1) or certificate.
    PemFile(RawPemFile),
    /// One JWK written in the config, as JSON text.
    Jwk(RawJwkText),
    /// A JWKS file, watched and reloaded on change.
    JwksFile(RawJwksFile),
    /// A JWKS URL, fetched at startup and refreshed in the background.
    JwksUrl(RawJwksUrl),
    /// OIDC discovery: `<url>/.well-known/openid-configuration` names the `jwks_uri`; its
    /// `issuer` must equal the provider's.
    OidcDiscovery(RawJwksUrl),
    /// A shared HMAC secret, from the environment or a file (never inline).
    Hmac(RawHmacKey),
}

/// An inline PEM key.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPemText {
    /// The PEM text.
    pub text: String,
    /// Key id matched against the token's `kid`; a key without one is tried for tokens
    /// without `kid` (and those whose `kid` names no key), a key with one only for tokens
    /// naming it.
    #[serde(default)]
    pub kid: Option<String>,
    /// Algorithms this key verifies; they must fit the key type.
    pub algorithms: Vec<RawAlgorithm>,
}

/// A PEM key file.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPemFile {
    /// The file (relative to the config file).
    pub path: PathBuf,
    /// Key id matched against the token's `kid`.
    #[serde(default)]
    pub kid: Option<String>,
    /// Algorithms this key verifies; they must fit the key type.
    pub algorithms: Vec<RawAlgorithm>,
}

/// An inline JWK.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawJwkText {
    /// The JWK as JSON.
    pub text: String,
}

/// A JWKS file.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawJwksFile {
    /// The file (relative to the config file).
    pub path: PathBuf,
}

/// A remote key source.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawJwksUrl {
    /// `https://…`; `http://` only for loopback addresses.
    pub url: String,
    /// PEM file of CA certificates trusted for this server (instead of the public roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// `/readyz` does not wait for this source beyond `fetch.startup_timeout`. Without it the
    /// gateway is not ready until the first successful fetch. Either way, until then a token
    /// that only this source's keys could verify gets 503 (`authentication_unavailable`),
    /// never 401: a static key of the same provider does not stand in for keys never seen.
    #[serde(default)]
    pub optional: bool,
}

/// An HMAC key.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHmacKey {
    /// Where the secret is read from. At least as many bytes as the hash output (32 for HS256).
    pub secret: RawSecret,
    /// Key id matched against the token's `kid`.
    #[serde(default)]
    pub kid: Option<String>,
    /// HS256, HS384 and/or HS512.
    pub algorithms: Vec<RawAlgorithm>,
}

/// Where a secret comes from; secrets are never written in the config itself.
#[derive(Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawSecret {
    /// An environment variable.
    Env(String),
    /// A file (relative to the config file); one trailing newline is dropped.
    File(PathBuf),
}

impl fmt::Debug for RawSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only names a place, never a value; still, keep Debug boring.
        match self {
            Self::Env(n) => write!(f, "Env({n})"),
            Self::File(p) => write!(f, "File({})", p.display()),
        }
    }
}

/// How a principal is read from verified claims.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawPrincipalMapping {
    /// Claim holding the principal id (default `sub`); machine tokens without it fall back to
    /// `client_id`, then `azp`.
    pub id_claim: String,
    /// Claim (dotted path, e.g. `realm_access.roles`) holding roles: a string or an array.
    pub roles_claim: Option<String>,
    /// Claim (dotted path) holding the tenant.
    pub tenant_claim: Option<String>,
    /// Claims holding scopes, a space-separated string or an array; the first present wins.
    pub scope_claims: Vec<String>,
    /// When a token is a machine (service client) rather than a user; any rule that holds
    /// decides. Default: `[client_id_without_sub]`.
    pub machine_when: Vec<RawMachineRule>,
}

impl Default for RawPrincipalMapping {
    fn default() -> Self {
        Self {
            id_claim: "sub".to_owned(),
            roles_claim: None,
            tenant_claim: None,
            scope_claims: vec!["scope".to_owned(), "scp".to_owned()],
            machine_when: vec![RawMachineRule::ClientIdWithoutSub],
        }
    }
}

/// A rule classifying a token as a machine principal.
#[derive(Debug, Clone, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawMachineRule {
    /// The token has `client_id` (or `azp`) but no `sub`.
    ClientIdWithoutSub,
    /// A claim (dotted path) is present.
    ClaimPresent(String),
    /// A claim (dotted path) equals a string, e.g. `gty: client-credentials`.
    ClaimEquals(RawClaimEquals),
}

/// A claim compared with a string.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawClaimEquals {
    /// Dotted claim path.
    pub claim: String,
    /// The value.
    pub value: String,
}

/// Fetching remote keys.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawFetch {
    /// Time for one fetch, connection included.
    #[schemars(with = "String")]
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Largest response accepted, in bytes.
    pub max_bytes: usize,
    /// Refresh interval when the server sends no `Cache-Control: max-age`.
    #[schemars(with = "String")]
    #[serde(deserialize_with = "duration")]
    pub refresh: Duration,
    /// Lower bound on the refresh interval, whatever `Cache-Control` says.
    #[schemars(with = "String")]
    #[serde(deserialize_with = "duration")]
    pub min_refresh: Duration,
    /// Upper bound on the refresh interval.
    #[schemars(with = "String")]
    #[serde(deserialize_with = "duration")]
    pub max_refresh: Duration,
    /// Retry interval after a failed fetch.
    #[schemars(with = "String")]
    #[serde(deserialize_with = "duration")]
    pub retry: Duration,
    /// A token with an unknown `kid` triggers at most one refetch per this interval.
    #[schemars(with = "String")]
    #[serde(deserialize_with = "duration")]
    pub unknown_kid_cooldown: Duration,
    /// How long `/readyz` waits for the keys of an `optional` remote source; a source not
    /// marked optional keeps the gateway not ready until its first successful fetch.
    #[schemars(with = "String")]
    #[serde(deserialize_with = "duration")]
    pub startup_timeout: Duration,
}

impl Default for RawFetch {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            max_bytes: 512 * 1024,
            refresh: Duration::from_secs(600),
            min_refresh: Duration::from_secs(60),
            max_refresh: Duration::from_secs(86_400),
            retry: Duration::from_secs(10),
            unknown_kid_cooldown: Duration::from_secs(30),
            startup_timeout: Duration::from_secs(10),
        }
    }
}

fn default_sources() -> Vec<RawCredentialSource> {
    vec![RawCredentialSource::Bearer]
}

fn default_max_token_bytes() -> usize {
    8 * 1024
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

fn opt_socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    socket_addr(d).map(Some)
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// An API key authenticator.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawApiKeyAuth {
    /// Where the key is looked for; default `[header: x-api-key]`.
    #[serde(default = "default_api_key_sources")]
    pub from: Vec<RawCredentialSource>,
    /// Remove the verified credential from the request before it goes upstream (the
    /// default: what was verified here is not replayed to services that need not see it).
    /// `false` forwards it, for upstreams that read the token themselves.
    #[serde(default = "default_true")]
    pub strip: bool,
    /// A YAML file of hashed keys (`keys: [...]`, as `portcullis apikey new` prints them),
    /// watched and reloaded on change.
    #[serde(default)]
    pub keys_file: Option<PathBuf>,
    /// Keys written in the config: with a `hash`, or a shared `secret` read from the
    /// environment or a file (a fixed user id and key id for one shared secret).
    #[serde(default)]
    pub keys: Vec<RawApiKey>,
}

/// The contents of an API key file: `keys:` and a list of entries, or the list alone, so that
/// `portcullis apikey new … >> apikeys.yaml` makes a valid file whether it existed or not.
#[derive(Debug, Clone, PartialEq, Default, JsonSchema)]
pub struct RawApiKeyFile {
    /// The keys.
    pub keys: Vec<RawApiKey>,
}

impl<'de> Deserialize<'de> for RawApiKeyFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error as _, MapAccess, SeqAccess, Visitor};
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = RawApiKeyFile;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of keys, or a mapping with `keys:`")
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(RawApiKeyFile::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut keys = Vec::new();
                while let Some(k) = seq.next_element()? {
                    keys.push(k);
                }
                Ok(RawApiKeyFile { keys })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut keys: Option<Vec<RawApiKey>> = None;
                while let Some(name) = map.next_key::<String>()? {
                    match name.as_str() {
                        "keys" if keys.is_some() => return Err(A::Error::duplicate_field("keys")),
                        "keys" => {
                            keys = Some(
                                map.next_value::<Option<Vec<RawApiKey>>>()?
                                    .unwrap_or_default(),
                            )
                        }
                        other => return Err(A::Error::unknown_field(other, &["keys"])),
                    }
                }
                Ok(RawApiKeyFile {
                    keys: keys.unwrap_or_default(),
                })
            }
        }
        d.deserialize_any(Keys)
    }
}

/// One API key and what it grants.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawApiKey {
    /// The key's id (public; shown in logs and identity headers).
    pub id: String,
    /// `sha256:<64 hex digits>` of the whole key. Exactly one of `hash` and `secret`.
    #[serde(default)]
    pub hash: Option<String>,
    /// The key itself, from the environment or a file (config only, never in a key file).
    #[serde(default)]
    pub secret: Option<RawSecret>,
    /// The principal id the key speaks for.
    pub owner: String,
    /// `user` (default) or `machine`.
    #[serde(default)]
    pub kind: RawPrincipalKind,
    /// Scopes granted.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Roles granted.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Plan or tier (for rate limits and identity headers).
    #[serde(default)]
    pub plan: Option<String>,
    /// Tenant.
    #[serde(default)]
    pub tenant: Option<String>,
    /// RFC 3339 time after which the key is refused, e.g. `2027-06-30T00:00:00Z`.
    #[serde(default)]
    pub expires: Option<String>,
    /// A disabled key is refused. Default true.
    #[serde(default = "yes")]
    pub enabled: bool,
}

/// The kind of a principal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawPrincipalKind {
    /// A person.
    #[default]
    User,
    /// A service client.
    Machine,
}

/// An OAuth 2.0 token introspection authenticator (RFC 7662).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawIntrospection {
    /// Where the token is looked for; default `[bearer]`.
    #[serde(default = "default_sources")]
    pub from: Vec<RawCredentialSource>,
    /// Remove the verified credential from the request before it goes upstream (the
    /// default: what was verified here is not replayed to services that need not see it).
    /// `false` forwards it, for upstreams that read the token themselves.
    #[serde(default = "default_true")]
    pub strip: bool,
    /// Longest token accepted, in bytes; longer ones are refused without a call.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// The introspection endpoint: `https://…` (`http://` only to loopback).
    pub endpoint: String,
    /// The gateway's client id at the authorization server.
    pub client_id: String,
    /// Its client secret, from the environment or a file.
    pub client_secret: RawSecret,
    /// How the client authenticates: `client_secret_basic` (default) or `client_secret_post`.
    #[serde(default)]
    pub client_auth: RawClientAuthMethod,
    /// Sent as `token_type_hint` when set (e.g. `access_token`).
    #[serde(default)]
    pub token_type_hint: Option<String>,
    /// When set, the response's `iss` must equal it.
    #[serde(default)]
    pub issuer: Option<String>,
    /// When set, the response's `aud` (string or array) must name one of them.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Accepted `token_type` (and `token_use`) values when the server sends one; default
    /// `[access_token, Bearer]`, so a refresh token some servers call active is refused.
    #[serde(default = "default_token_types")]
    pub token_types: Vec<String>,
    /// Most introspection calls in flight at once; beyond it requests get 503 at once rather
    /// than piling up on the authorization server.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// How the principal is read from the response.
    #[serde(default)]
    pub principal: RawPrincipalMapping,
    /// Time for one introspection call, connection included.
    #[serde(
        default = "default_introspection_timeout",
        deserialize_with = "duration"
    )]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Largest response accepted, in bytes.
    #[serde(default = "default_introspection_max_bytes")]
    pub max_bytes: usize,
    /// An active result is reused for at most this long (and never past the token's `exp`).
    #[serde(
        default = "default_introspection_cache_ttl",
        deserialize_with = "duration"
    )]
    #[schemars(with = "String")]
    pub cache_ttl: Duration,
    /// An inactive result is reused for this long (at most `cache_ttl`), sparing the server
    /// repeated bad tokens.
    #[serde(
        default = "default_introspection_inactive_ttl",
        deserialize_with = "duration"
    )]
    #[schemars(with = "String")]
    pub inactive_ttl: Duration,
    /// PEM file of CA certificates trusted for the server (instead of the public roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// How the gateway authenticates to the introspection endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawClientAuthMethod {
    /// HTTP Basic with the form-encoded id and secret (RFC 6749 §2.3.1).
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

/// Identity headers from an inner proxy that already authenticated the caller.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTrustedHeaders {
    /// Peers (TCP source addresses, never `X-Forwarded-For`) whose headers are believed.
    pub networks: Vec<Network>,
    /// Header carrying the principal id; its presence is the credential.
    pub id: String,
    /// Header with the kind (`user` or `machine`); default: every principal is `kind`.
    #[serde(default)]
    pub kind_header: Option<String>,
    /// The kind when there is no `kind_header`.
    #[serde(default)]
    pub kind: RawPrincipalKind,
    /// Header with scopes, separated by spaces or commas.
    #[serde(default)]
    pub scopes: Option<String>,
    /// Header with roles, separated by spaces or commas.
    #[serde(default)]
    pub roles: Option<String>,
    /// Header with the tenant.
    #[serde(default)]
    pub tenant: Option<String>,
    /// More headers read into claims: claim name → header name.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
}

/// A client certificate authenticator (the listener must ask for client certificates).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMtls {
    /// Which name in the certificate is the principal id, first present wins; default
    /// `[san_uri, san_dns, subject_cn]`.
    #[serde(default = "default_cert_ids")]
    pub id: Vec<RawCertName>,
    /// The kind of principal; default `machine`.
    #[serde(default = "machine")]
    pub kind: RawPrincipalKind,
    /// Listeners whose client certificates count (each needs `tls.client_auth`); default: every
    /// listener that asks for one. Name them when listeners trust different CAs, so a
    /// partner CA's certificate never passes for an internal one.
    #[serde(default)]
    pub listeners: Vec<String>,
}

/// A name in a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RawCertName {
    /// The first URI subject alternative name (SPIFFE ids).
    SanUri,
    /// The first DNS subject alternative name.
    SanDns,
    /// The first email subject alternative name.
    SanEmail,
    /// The subject's common name.
    SubjectCn,
}

fn default_api_key_sources() -> Vec<RawCredentialSource> {
    vec![RawCredentialSource::Header("x-api-key".to_owned())]
}

fn default_introspection_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_introspection_max_bytes() -> usize {
    64 * 1024
}

fn default_introspection_cache_ttl() -> Duration {
    Duration::from_secs(60)
}

fn default_introspection_inactive_ttl() -> Duration {
    Duration::from_secs(10)
}

fn default_token_types() -> Vec<String> {
    vec!["access_token".to_owned(), "Bearer".to_owned()]
}

fn default_max_in_flight() -> usize {
    64
}

fn default_cert_ids() -> Vec<RawCertName> {
    vec![
        RawCertName::SanUri,
        RawCertName::SanDns,
        RawCertName::SubjectCn,
    ]
}

fn machine() -> RawPrincipalKind {
    RawPrincipalKind::Machine
}

fn default_true() -> bool {
    true
}

fn loopback_networks() -> Vec<Network> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .filter_map(|n| n.parse().ok())
        .map(Network)
        .collect()
}

fn default_decision_timeout() -> Duration {
    Duration::from_secs(2)
}
