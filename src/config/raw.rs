//! The config files as written: serde types with the YAML's names.
//!
//! Every struct denies unknown fields, so a typo is an error with a line number rather than a
//! silently ignored setting. Values that can be parsed are parsed here (addresses, durations,
//! networks), so their errors carry the position serde_yaml reports. Cross-references
//! (upstream names, files) are checked in [`super::compile`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
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
}

/// TLS settings of a listener.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    /// Certificates; the first is served when the client's SNI matches no other.
    pub certificates: Vec<RawCertificate>,
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
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            address: default_admin_address(),
        }
    }
}

/// Connection and request limits.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    /// Time a client has to send a complete request head (HTTP/1) or finish the TLS handshake.
    /// Bounds slowloris clients.
    #[schemars(with = "String")]
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    #[schemars(with = "String")]
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// Largest request head accepted, in bytes (431 beyond it). At least 8192.
    pub max_header_bytes: usize,
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
    /// Header carrying the request id, propagated when a client sends a well-formed one and
    /// generated otherwise.
    pub request_id_header: String,
    /// Worker threads of the runtime (0 = one per core). Restart-only.
    pub worker_threads: usize,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_connections: 10_000,
            max_body_bytes: 10 * 1024 * 1024,
            max_concurrent_streams: 128,
            shutdown_grace: Duration::from_secs(30),
            trusted_proxies: Vec::new(),
            request_id_header: "x-request-id".to_owned(),
            worker_threads: 0,
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
}

/// Where the policy files are.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawPolicies {
    /// Directory of `*.yaml` policy files, relative to the config file. Files are read in name
    /// order; rules are evaluated in that order, first match wins.
    #[serde(default = "default_policy_dir")]
    pub dir: PathBuf,
}

impl Default for RawPolicies {
    fn default() -> Self {
        Self {
            dir: default_policy_dir(),
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
