//! Listeners: addresses, TLS and the door each serves.

use super::*;

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
    EnvoyGrpc(RawEnvoyGrpc),
    /// Envoy's HTTP ext_authz mode (`http_service`): the original request arrives as the
    /// request, under `path_prefix`; 200 allows.
    EnvoyHttp(RawEnvoyHttp),
    /// nginx `auth_request`, Traefik ForwardAuth, Caddy `forward_auth`, APISIX `forward-auth`,
    /// Kong: the original request is described by headers (`X-Forwarded-Method`, `-Proto`,
    /// `-Host`, `-Uri`, or nginx's `X-Original-URI` / `X-Original-Method`); 2xx allows.
    ForwardAuth(RawForwardAuth),
}

/// Envoy's gRPC ext_authz door.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawEnvoyGrpc {
    /// Peers allowed to ask; default loopback.
    #[serde(default = "loopback_networks")]
    pub peers: Vec<Network>,
    /// Answer deadline; default 2s.
    #[schemars(with = "String")]
    #[serde(
        default = "default_decision_timeout",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
    pub timeout: Duration,
    /// Believe `attributes.source.certificate` (Envoy's `include_peer_certificate: true`) as
    /// a client certificate the `mtls` authenticators may verify. Only when Envoy itself
    /// requires and verifies client certificates (`require_client_certificate` with a
    /// `validation_context`, never `ACCEPT_UNTRUSTED`). Default false: the certificate is
    /// ignored, and no request through this door is authenticated by one.
    #[serde(default)]
    pub client_certificates: bool,
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
    #[serde(
        default = "default_decision_timeout",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
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
    #[serde(
        default = "default_decision_timeout",
        deserialize_with = "duration",
        serialize_with = "duration_text"
    )]
    pub timeout: Duration,
    /// Statuses the peer cannot pass through, and the status to answer instead; the real
    /// one goes in `x-portcullis-status`. nginx turns anything but 2xx, 401 and 403 into
    /// 500, so its example (`examples/nginx/nginx.conf` with the `nginx` listener of
    /// `examples/portcullis/portcullis.yaml`) maps 302, 400, 404, 405, 414, 429, 431 and 503
    /// to 403 and uses `error_page` to surface the real status. Default: none (Traefik,
    /// Caddy, APISIX and Kong pass any status through).
    #[serde(default)]
    pub status_map: BTreeMap<u16, u16>,
    /// The headers that describe the original request, when the peer is configured to send
    /// others than the usual ones (say an nginx with `proxy_set_header X-Auth-Uri
    /// $request_uri`). A name given here is the only one read for its part; a part not given
    /// keeps its usual headers.
    #[serde(default)]
    pub headers: RawDescriptionHeaders,
}

/// The headers a forward-auth peer describes the original request in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDescriptionHeaders {
    /// The method. Default `X-Forwarded-Method` or `X-Original-Method` (equal when both).
    #[serde(default)]
    pub method: Option<String>,
    /// The path and query, in origin form. Default `X-Forwarded-Uri` or `X-Original-URI`.
    #[serde(default)]
    pub uri: Option<String>,
    /// The host. Default `X-Forwarded-Host`.
    #[serde(default)]
    pub host: Option<String>,
    /// The scheme, `http` or `https` (`http` when absent). Default `X-Forwarded-Proto`.
    #[serde(default)]
    pub proto: Option<String>,
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
    /// Default: the certificate's subject alternative names. A name listed here wins over the
    /// same name taken from another entry's certificate.
    #[serde(default)]
    pub server_names: Vec<String>,
    /// Client certificates for these server names, verified against their own CAs instead of
    /// the listener's `client_auth`. A connection is then bound to the names its SNI chose: a
    /// request for a host of another certificate gets 421, so a client certificate from one
    /// host's CA never reaches a host that requires another.
    #[serde(default)]
    pub client_auth: Option<RawClientAuth>,
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
