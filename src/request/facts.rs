//! [`RequestFacts`]: what the decision core knows about a request, whichever door it came
//! through.
//!
//! Invariants: `path` is canonical ([`super::path::canonicalize`]); `host` is lowercase with no
//! trailing dot and no port; `client_ip` is the TCP peer unless the peer is a trusted proxy, in
//! which case it is the first untrusted address of `X-Forwarded-For` read from the right.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, header};
use ipnet::IpNet;

use super::path::{self, PathError};

/// The scheme the client used to reach the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

/// The door a request came through. The decision does not depend on it; logs, metrics and
/// the shape of the answer do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Door {
    /// The reverse proxy.
    Proxy,
    /// Envoy's gRPC `Authorization/Check`.
    EnvoyGrpc,
    /// Envoy's HTTP ext_authz mode.
    EnvoyHttp,
    /// nginx `auth_request`, Traefik ForwardAuth, Caddy `forward_auth`, APISIX, Kong.
    ForwardAuth,
}

/// What the door vouches for about where a request came from. Each door defines the fields:
///
/// | door | `peer` | `listener` | `tls` (SNI, client certificate) |
/// |---|---|---|---|
/// | proxy | the TCP peer | the listener it arrived on | the connection's TLS session |
/// | envoy-grpc | `attributes.source.address` (believed: the door only serves configured peers) | the ext_authz listener | `attributes.source.certificate` and the TLS session Envoy saw |
/// | envoy-http, forward-auth | the original client: the forwarded-for chain from the trusted peer, read through `server.trusted_proxies` | the door's listener | none (the client's TLS ended at the peer) |
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Which door.
    pub door: Door,
    /// Who sent the request, as the door defines it (see the table).
    pub peer: SocketAddr,
    /// The listener's name.
    pub listener: Arc<str>,
    /// The client's TLS session, where the door knows it.
    pub tls: Option<TlsInfo>,
}

impl ConnInfo {
    /// A proxy-door connection from `peer` on `listener`.
    pub fn new(peer: SocketAddr, listener: Arc<str>, tls: Option<TlsInfo>) -> Self {
        Self::for_door(Door::Proxy, peer, listener, tls)
    }

    /// A request from `peer` (as `door` defines it) on `listener`.
    pub fn for_door(
        door: Door,
        peer: SocketAddr,
        listener: Arc<str>,
        tls: Option<TlsInfo>,
    ) -> Self {
        Self {
            door,
            // Why: a dual-stack listener sees an IPv4 client as `::ffff:a.b.c.d`, which no
            // IPv4 network (`trusted_proxies`, `require.networks`) contains, and which a
            // limit counting IPv6 by /64 put in one budget with every other IPv4 client.
            // Regression: tests::mapped_addresses_are_ipv4
            peer: SocketAddr::new(peer.ip().to_canonical(), peer.port()),
            listener,
            tls,
        }
    }
}

/// What every door refuses before reading a target, in this order: a lowercase method, a
/// `CONNECT` (405) and `OPTIONS *` (400 `unsupported_target`).
///
/// Why: methods are case-sensitive, so a `methods: [DELETE]` deny rule does not match
/// `delete`, which a rule allowing any method then let through to an upstream that reads it
/// as DELETE (Jetty's legacy mode, some frameworks). The proxy refused CONNECT as a target it
/// cannot serve (400) while the doors decided it by the rules: the gateway tunnels nothing,
/// 405 at every door. `*` asks about the server, not a resource: no rule decides it.
/// Regression: tests (it) paths::lowercase_methods_refused,
/// paths::connect_and_asterisk_targets_rejected, conformance ("connect authority form",
/// "asterisk target"), tests::asterisk_refused_before_the_host
fn refuse_before_the_target(method: &Method, target: &str) -> Result<(), FactsError> {
    if method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(FactsError::LowercaseMethod);
    }
    if *method == Method::CONNECT {
        return Err(FactsError::Connect);
    }
    if target == "*" {
        return Err(FactsError::UnsupportedTarget);
    }
    Ok(())
}

/// Whether a decision door passes a described target on to the facts: an origin-form one,
/// or one [`RequestFacts::new`] refuses as the proxy does (`*`, any target of a `CONNECT`);
/// every other shape (absolute, empty) is the door's own refusal.
pub fn door_takes_target(method: &Method, target: &str) -> bool {
    target.starts_with('/') || target == "*" || *method == Method::CONNECT
}

/// An address's text as a header value (`X-Forwarded-For`, `Forwarded`, `x-real-ip`).
pub fn ip_header_value(ip: IpAddr) -> HeaderValue {
    let mut text = String::with_capacity(15);
    push_ip(&mut text, ip);
    // An address's text is always a valid header value.
    HeaderValue::from_maybe_shared(bytes::Bytes::from(text))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

// === impl Door ===

impl Door {
    /// Every door, in [`Self::index`] order.
    pub const ALL: [Self; 4] = [
        Self::Proxy,
        Self::EnvoyGrpc,
        Self::EnvoyHttp,
        Self::ForwardAuth,
    ];

    /// Its position in [`Self::ALL`].
    pub fn index(self) -> usize {
        match self {
            Self::Proxy => 0,
            Self::EnvoyGrpc => 1,
            Self::EnvoyHttp => 2,
            Self::ForwardAuth => 3,
        }
    }

    /// Its label in metrics, logs and `explain --door`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Proxy => "proxy",
            Self::EnvoyGrpc => "envoy-grpc",
            Self::EnvoyHttp => "envoy-http",
            Self::ForwardAuth => "forward-auth",
        }
    }
}

/// Appends an address's text, as `Display` writes it; IPv4 (nearly every request) without the
/// formatting machinery, which costs more than the rest of the forwarding headers together.
pub fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            out.reserve(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

/// The TLS session of a connection.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    /// Server name the client asked for.
    pub sni: Option<Arc<str>>,
    /// Negotiated ALPN protocol.
    pub alpn: Option<Arc<[u8]>>,
    /// The client certificate, verified by the listener's `client_auth` during the handshake.
    pub client_cert: Option<Arc<ClientCert>>,
    /// On a listener whose certificates have their own client CAs: the certificate entry the
    /// SNI chose, which every request's host must also choose (else 421).
    pub binding: Option<crate::tls::server::HostBinding>,
    /// What verified `client_cert` ([`crate::tls::server::ListenerTls::client_auth`]).
    pub client_auth: Option<[u8; 32]>,
    /// The chain `client_cert` came with, to verify again after a client-CA change.
    pub client_chain: Option<Arc<crate::tls::server::PresentedChain>>,
}

/// A verified client certificate's names, read once per connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCert {
    /// The subject, RFC 4514 style in certificate order (`C=DE, O=Example, CN=alice`), values
    /// escaped (see [`crate::tls::x509`]).
    pub subject: Box<str>,
    /// The subject's (first) common name, unescaped.
    pub subject_cn: Option<Box<str>>,
    /// DNS subject alternative names.
    pub san_dns: Box<[Box<str>]>,
    /// URI subject alternative names (SPIFFE ids).
    pub san_uri: Box<[Box<str>]>,
    /// Email subject alternative names.
    pub san_email: Box<[Box<str>]>,
    /// SHA-256 of the DER certificate, lowercase hex.
    pub fingerprint: Box<str>,
    /// Unix time the certificate becomes valid (0 for any time before 1970).
    pub not_before: u64,
    /// Unix time the certificate expires.
    pub not_after: u64,
}

impl ClientCert {
    /// A verified certificate whose names cannot be read: present (so it is never mistaken
    /// for no certificate), with no name to authenticate as.
    pub fn unreadable(der: &[u8]) -> Self {
        Self {
            fingerprint: crate::secret::hex(&crate::secret::sha256(der)).into(),
            ..Self::default()
        }
    }

    /// Reads the names of a DER certificate (already verified by rustls); `None` when it is
    /// malformed, or its subject alternative names are (see [`crate::tls::x509`]).
    pub fn parse(der: &[u8]) -> Option<Self> {
        use crate::tls::x509::{Certificate, GeneralName};
        let cert = Certificate::from_der(der)?;
        let (mut dns, mut uri, mut email) = (Vec::new(), Vec::new(), Vec::new());
        for n in cert.subject_alt_names() {
            match n {
                GeneralName::Dns(d) => dns.push(d.into()),
                GeneralName::Uri(u) => uri.push(u.into()),
                GeneralName::Email(e) => email.push(e.into()),
                GeneralName::Ip(_) | GeneralName::Other => {}
            }
        }
        let fingerprint = crate::secret::hex(&crate::secret::sha256(der));
        Some(Self {
            subject: cert.subject().to_string().into(),
            subject_cn: cert.subject().common_name().map(Into::into),
            san_dns: dns.into(),
            san_uri: uri.into(),
            san_email: email.into(),
            fingerprint: fingerprint.into(),
            not_before: u64::try_from(cert.not_before()).unwrap_or(0),
            not_after: u64::try_from(cert.not_after()).unwrap_or(0),
        })
    }
}

/// A client address as the unit a per-client bound counts: an IPv4 address (as its mapped
/// IPv6 form), an IPv6 address by its /64. One site holds a /64; counting each address of it
/// would hand one client endless shares.
pub fn client_site(ip: std::net::IpAddr) -> u128 {
    match ip {
        std::net::IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        std::net::IpAddr::V6(v6) => u128::from(v6) >> 64 << 64,
    }
}

/// [`client_site`], but every loopback address (any 127.x, `::1`, mapped or not) one client:
/// every local process may use any of them. What the admin listener's connections and the
/// proxy's uploads are counted by.
pub fn loopback_as_one_site(ip: std::net::IpAddr) -> u128 {
    let ip = ip.to_canonical();
    if ip.is_loopback() {
        u128::from(std::net::Ipv6Addr::LOCALHOST)
    } else {
        client_site(ip)
    }
}

/// The time a call out may take: `own` (its configured timeout), cut to end a tenth of the
/// remaining time before `deadline`, so what it decides on failure still reaches the client.
///
/// Why: at the Envoy doors a passed deadline answers UNAVAILABLE (gRPC) or 503
/// `decision_timeout`, which Envoy's `failure_mode_allow: true` turns into an allow; a
/// delegate or Redis limit configured to fail closed, with a timeout at least the door's, let
/// everyone through when it hung. Regression: tests (it)
/// delegate::a_hung_fail_closed_delegate_is_a_denial_within_the_door_deadline,
/// redis::a_hung_redis_failing_closed_is_a_denial_within_the_door_deadline
pub fn call_budget(
    own: std::time::Duration,
    deadline: Option<tokio::time::Instant>,
) -> std::time::Duration {
    match deadline {
        None => own,
        Some(d) => {
            let left = d.saturating_duration_since(tokio::time::Instant::now());
            own.min(left - left / 10)
        }
    }
}

/// The door-independent facts about one request.
#[derive(Debug)]
pub struct RequestFacts<'a> {
    /// Request method.
    pub method: &'a Method,
    /// How the client reached the gateway.
    pub scheme: Scheme,
    /// Lowercase host without port or trailing dot.
    pub host: Cow<'a, str>,
    /// Port given in the authority or `Host`, if any.
    pub port: Option<u16>,
    /// The canonical path: what the rules read.
    pub path: Cow<'a, str>,
    /// The path as the upstream receives it, when that is another path than [`Self::path`]
    /// (`/%40x` against `/@x`): how an upstream routing on the raw path (Envoy's route table,
    /// Express) reads it. An allow must hold under this reading too (the decision engine).
    /// At the proxy door, the canonical path with its escaped sub-delimiters, `:` and `@` as
    /// the client wrote them ([`crate::request::path::canonicalize_as_sent`]): what the proxy
    /// forwards. At a decision door, the raw path exactly as sent, which its peer forwards.
    pub path_as_sent: Option<Cow<'a, str>>,
    /// The raw query (without `?`), forwarded unchanged.
    pub query: Option<&'a str>,
    /// Request headers as received.
    pub headers: &'a HeaderMap,
    /// The client address (see module docs).
    pub client_ip: IpAddr,
    /// Whether the TCP peer is a trusted proxy (its forwarding headers are believed).
    pub peer_trusted: bool,
    /// The connection it arrived on.
    pub conn: &'a ConnInfo,
    /// Envoy's `context_extensions` of a Check at the gRPC door, each name once (with the
    /// value that counts); `None` at every other door.
    pub context: Option<&'a [(&'a str, &'a str)]>,
    /// The door's peer forwards the path as sent, and canonicalisation changed its segments
    /// (a `.`, `..` or empty one): the request is decided on its canonical path like at the
    /// proxy, but an allow would be for another path than the upstream gets, so it is refused
    /// instead (400 `non_canonical_path`; [`crate::request::path::check_forwarded_as_is`]).
    /// Never set at the proxy, which forwards the canonical path.
    pub forwarded_as_sent: bool,
    /// This hop's trace context, when the door keeps one: what the calls the decision makes
    /// on the request's behalf (a delegate's Check) carry, as the upstream does.
    pub trace: Option<&'a crate::telemetry::trace_context::TraceContext>,
    /// When a decision door must have answered; `None` at the proxy. Calls the decision makes
    /// on the request's behalf (a delegate's Check, a Redis limit) end before it
    /// ([`call_budget`]), so their rule's failure mode decides rather than the door's
    /// deadline.
    pub deadline: Option<tokio::time::Instant>,
}

/// Why a request cannot be turned into facts; each is a 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FactsError {
    /// The path is ambiguous or malformed.
    #[error("invalid path: {0}")]
    Path(#[from] PathError),
    /// No `Host` header and no authority.
    #[error("missing host")]
    MissingHost,
    /// More than one `Host` header.
    #[error("multiple host headers")]
    MultipleHosts,
    /// `Host` is not a valid host name or address.
    #[error("invalid host")]
    InvalidHost,
    /// `*` targets are not proxied.
    #[error("unsupported request target")]
    UnsupportedTarget,
    /// `CONNECT` (but an HTTP/2 WebSocket's extended CONNECT, decided as its `GET`): the
    /// gateway opens no tunnels, at any door (405).
    #[error("CONNECT is not served")]
    Connect,
    /// A method with a lowercase letter (`delete`): rules name methods in uppercase, and some
    /// upstreams read methods without regard to case.
    #[error("invalid method")]
    LowercaseMethod,
    /// The host belongs to another certificate (and client CA) than the connection's SNI
    /// chose: 421, the client retries on a connection of its own.
    #[error("misdirected request")]
    Misdirected,
    /// A target over `server.max_target_bytes` (414).
    #[error("request target too long")]
    UriTooLong,
    /// A head over `server.max_header_bytes` (431).
    #[error("request head too large")]
    HeadersTooLarge,
}

// === impl RequestFacts ===

/// A request's head in the door's own terms: what [`RequestFacts::new`] takes.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    /// The method.
    pub method: &'a Method,
    /// How the client reached the gateway (or the door's peer, as it reports).
    pub scheme: Scheme,
    /// The authority as sent: the target's (absolute form, `:authority`) or else `Host`.
    /// `None`: the request named none.
    pub authority: Option<&'a str>,
    /// The request target in origin form, `/path?query`, raw.
    pub target: &'a str,
    /// The request headers as received (hop-by-hop ones already removed).
    pub headers: &'a HeaderMap,
}

impl Head<'_> {
    /// Refuses a head over the server's limits, counted as the proxy door counts the heads it
    /// reads ([`head_bytes`]): a target over `max_target_bytes` (414 `uri_too_long`), a head
    /// over `max_header_bytes` (431 `headers_too_large`). The authority counts as a `Host`
    /// line when the headers have none (a Check's `:authority`, a forwarded host).
    ///
    /// Why: the decision doors read what their peer describes, within looser limits of their
    /// own (a door's request carries the description besides the original head), so a 20 KB
    /// header the proxy refused with 431 was decided, and allowed, behind Envoy and nginx.
    /// Regression: tests (it) conformance::every_door_gives_the_same_decision (`header over the limit`)
    pub fn within(
        &self,
        max_target_bytes: usize,
        max_header_bytes: usize,
    ) -> Result<(), FactsError> {
        if self.target.len() > max_target_bytes {
            return Err(FactsError::UriTooLong);
        }
        let mut size = head_bytes(self.method, self.target.len(), self.headers);
        if !self.headers.contains_key(header::HOST) {
            size += self.authority.map_or(0, |a| "host".len() + a.len() + 4);
        }
        if size > max_header_bytes {
            return Err(FactsError::HeadersTooLarge);
        }
        Ok(())
    }
}

/// A head's size against `server.max_header_bytes`, the same at every door: the request line
/// (`target_len` bytes of target) and the `name: value` lines, with their line ends.
pub fn head_bytes(method: &Method, target_len: usize, headers: &HeaderMap) -> usize {
    target_len + method.as_str().len() + 12 + header_lines_bytes(headers)
}

/// The `name: value` lines of `headers`, with their line ends, as [`head_bytes`] counts them.
pub fn header_lines_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

impl<'a> RequestFacts<'a> {
    /// The path the proxy forwards: [`Self::path_as_sent`] when there is one, else the
    /// canonical path.
    pub fn forwarded_path(&self) -> &str {
        self.path_as_sent.as_deref().unwrap_or(&self.path)
    }

    /// The decided authority as text: the normalised host, and the port when one was given.
    pub fn authority(&self) -> String {
        match self.port {
            Some(port) => format!("{}:{port}", self.host),
            None => self.host.clone().into_owned(),
        }
    }

    /// Builds the facts from door-neutral inputs: every door ends here, so one request gets one
    /// canonical path, host and client address whichever door it took.
    pub fn new(
        head: Head<'a>,
        conn: &'a ConnInfo,
        trusted_proxies: &[IpNet],
    ) -> Result<Self, FactsError> {
        refuse_before_the_target(head.method, head.target)?;
        // Why: two `host` fields in a gRPC Check's header map were decided on the Check's
        // `host`, while the proxy door refuses the request (400 `multiple_hosts`) and an
        // upstream may read either. Regression: tests::multiple_hosts_refused_at_every_door
        if head.headers.get_all(header::HOST).iter().nth(1).is_some() {
            return Err(FactsError::MultipleHosts);
        }
        let (host, port) = parse_host(head.authority.ok_or(FactsError::MissingHost)?)?;
        // Why: with per-host client CAs, a connection made for a.example (certificate from
        // CA-A) must not carry requests for b.example, which requires CA-B.
        // Regression: tests (it) credentials::client_ca_per_host
        if let Some(b) = conn.tls.as_ref().and_then(|t| t.binding.as_ref())
            && !b.allows(&host)
        {
            return Err(FactsError::Misdirected);
        }
        let (raw_path, query) = match head.target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (head.target, None),
        };
        let path = path::canonicalize(raw_path)?;
        // Only a path with an escape can read two ways.
        let path_as_sent = match raw_path.contains('%') {
            false => None,
            // Why: a decision door's peer (Envoy, nginx, Caddy) forwards the path as the
            // client wrote it, so an upstream routing on the raw path read `/%70ub/profile/x`
            // as `/:user/profile/*` (denied) while the rules, and the proxy door, which
            // forwards `/pub/profile/x`, read `/pub/**` (allowed). Regression: tests (it)
            // conformance::every_door_gives_the_same_decision (`escaped unreserved read two
            // ways`)
            // (Its hex digits in uppercase, as the canonical path has them: `%c3%a9` and
            // `%C3%A9` are one path to every upstream.)
            true if conn.door != Door::Proxy => {
                Some(path::upper_hex(raw_path)).filter(|sent| *sent != path)
            }
            true => Some(path::canonicalize_as_sent(raw_path)?).filter(|sent| *sent != path),
        };
        // Why: the gRPC and forward-auth doors' peers send the target as the client wrote it.
        // `?x=1#&owner=alice` was decided on `owner=alice` (and a token after `#`
        // authenticated), while the proxy door, and an upstream that cuts at `#`, read
        // `x=1`. What hyper refuses in a query (controls, space, `"`, `<`, `>`, DEL) is
        // refused at every door; a `#` too: a request target never carries a fragment.
        // Regression: tests::query_characters_refused_at_every_door
        if let Some(q) = query
            && q.bytes()
                .any(|b| matches!(b, 0..=0x20 | b'"' | b'#' | b'<' | b'>' | 0x7F))
        {
            return Err(FactsError::Path(path::PathError::InvalidCharacter));
        }
        let forwarded_as_sent =
            conn.door != Door::Proxy && path::check_forwarded_as_is(raw_path).is_err();
        Ok(Self {
            method: head.method,
            scheme: head.scheme,
            host,
            port,
            path,
            path_as_sent,
            query,
            headers: head.headers,
            client_ip: client_ip(conn.peer.ip(), head.headers, trusted_proxies),
            peer_trusted: trusted_proxies.iter().any(|n| n.contains(&conn.peer.ip())),
            conn,
            context: None,
            forwarded_as_sent,
            trace: None,
            deadline: None,
        })
    }

    /// The proxy door's adapter: the facts of a request from its parsed head.
    pub fn from_parts(
        parts: &'a Parts,
        conn: &'a ConnInfo,
        trusted_proxies: &[IpNet],
    ) -> Result<Self, FactsError> {
        // Before the host is read, as `new` does: a `*` with an unreadable `Host` is
        // `unsupported_target` here as at the other doors.
        refuse_before_the_target(&parts.method, parts.uri.path())?;
        // Why: hyper takes any scheme in an absolute-form target: `GET ftp://a.example/x` was
        // decided for that host as if it were HTTP. Regression: tests::absolute_form_targets
        if !matches!(parts.uri.scheme_str(), None | Some("http" | "https")) {
            return Err(FactsError::UnsupportedTarget);
        }
        // An absolute-form target with an empty path and a query (`http://a.example?x=1`)
        // asks for `/` (RFC 9112 §3.2.2, RFC 3986 §6.2.3), as the other doors read it; it was
        // refused as `not_absolute`. Regression: tests::absolute_form_targets
        let (target, empty_path_query) = match parts.uri.path_and_query() {
            Some(pq) if pq.as_str().starts_with('?') => ("/", pq.query()),
            Some(pq) => (pq.as_str(), None),
            None => (parts.uri.path(), None),
        };
        let mut facts = Self::new(
            Head {
                method: &parts.method,
                scheme: if conn.tls.is_some() {
                    Scheme::Https
                } else {
                    Scheme::Http
                },
                authority: authority_of(parts)?,
                target,
                headers: &parts.headers,
            },
            conn,
            trusted_proxies,
        )?;
        if empty_path_query.is_some() {
            facts.query = empty_path_query;
        }
        Ok(facts)
    }
}

// === impl FactsError ===

impl FactsError {
    /// Reason code for logs and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Path(e) => e.as_str(),
            Self::MissingHost => "missing_host",
            Self::MultipleHosts => "multiple_hosts",
            Self::InvalidHost => "invalid_host",
            Self::UnsupportedTarget => "unsupported_target",
            Self::Connect => "method_not_allowed",
            Self::LowercaseMethod => "invalid_method",
            Self::Misdirected => "misdirected_request",
            Self::UriTooLong => "uri_too_long",
            Self::HeadersTooLarge => "headers_too_large",
        }
    }

    /// The status the client gets: 400, 405 for CONNECT, 414 for a path over the limit, 421
    /// for a misdirected request.
    pub fn status(&self) -> http::StatusCode {
        match self {
            Self::Misdirected => http::StatusCode::MISDIRECTED_REQUEST,
            Self::Path(PathError::TooLong) | Self::UriTooLong => http::StatusCode::URI_TOO_LONG,
            Self::HeadersTooLarge => http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Connect => http::StatusCode::METHOD_NOT_ALLOWED,
            _ => http::StatusCode::BAD_REQUEST,
        }
    }
}

/// The authority as sent: the URI's when the request has one (absolute-form, HTTP/2
/// `:authority`), which RFC 9112 §3.2.2 says wins over `Host`; otherwise `Host` (a second one
/// is refused by [`RequestFacts::new`], for every door).
fn authority_of(parts: &Parts) -> Result<Option<&str>, FactsError> {
    match parts.uri.authority() {
        Some(a) => Ok(Some(a.as_str())),
        None => parts
            .headers
            .get(header::HOST)
            .map(|h| h.to_str().map_err(|_| FactsError::InvalidHost))
            .transpose(),
    }
}

/// Splits and normalises `host[:port]` / `[v6]:port`.
pub fn parse_host(raw: &str) -> Result<(Cow<'_, str>, Option<u16>), FactsError> {
    // Byte searches: `str`'s char patterns cost a tenth of a door's facts per request.
    if raw.is_empty() || raw.as_bytes().contains(&b'@') {
        return Err(FactsError::InvalidHost);
    }
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or(FactsError::InvalidHost)?;
        v6.parse::<std::net::Ipv6Addr>()
            .map_err(|_| FactsError::InvalidHost)?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(FactsError::InvalidHost)?),
        };
        (&raw[..v6.len() + 2], port)
    } else {
        // `:` is ASCII: the slices split at it are on char boundaries.
        match raw.bytes().rposition(|b| b == b':') {
            Some(i) => (&raw[..i], Some(&raw[i + 1..])),
            None => (raw, None),
        }
    };
    let port = match port {
        // Why: `u16::from_str` takes a sign, so `Host: a.example:+443` was port 443 here while
        // the authority forwarded upstream still said `+443`. RFC 3986 §3.2.3: digits only.
        // Found by fuzzing (fuzz/ `host`). Regression: tests::port_is_digits_only
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().map_err(|_| FactsError::InvalidHost)?)
        }
        Some(_) => return Err(FactsError::InvalidHost),
        None => None,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    // Why: a `:` or bracket outside an IPv6 literal, or an empty label, is read differently by
    // different servers (`admin.example.com:1:443`); refuse rather than guess.
    // Regression: tests::host_forms
    let mut upper = false;
    if host.starts_with('[') {
        // An IPv6 literal (already parsed above): lowercase like any other host.
        upper = host.bytes().any(|b| b.is_ascii_uppercase());
    } else {
        // One pass: letters, digits, `-`, `_` and dots between non-empty labels.
        let mut label_empty = true;
        for b in host.bytes() {
            match b {
                b'.' if label_empty => return Err(FactsError::InvalidHost),
                b'.' => label_empty = true,
                b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => label_empty = false,
                b'A'..=b'Z' => {
                    label_empty = false;
                    upper = true;
                }
                _ => return Err(FactsError::InvalidHost),
            }
        }
        if label_empty {
            return Err(FactsError::InvalidHost);
        }
    }
    let host = if upper {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    };
    Ok((host, port))
}

/// The client address: the peer, or when the peer is a trusted proxy, the rightmost
/// `X-Forwarded-For` entry that is not itself a trusted proxy ([`forwarded_addr`]'s forms).
/// Empty entries (nginx appending to an empty header) are passed over. An entry that is no
/// address (`unknown`, `unix:`, junk), reached while the walk is still at a trusted proxy,
/// makes the client unknown: [`UNKNOWN_CLIENT`], which no network rule meant for a proxy's
/// own network holds.
///
/// Why not the last address known good: that is a trusted proxy, so a proxy writing
/// `203.0.113.7:51234` (Azure Application Gateway) or `unknown` (Squid) made every client the
/// proxy, passing `require.networks` meant for internal callers and sharing one rate-limit
/// bucket. Why not a refusal: an internal client's own junk, or an empty header nginx appends
/// to, are everyday traffic.
/// Regression: tests::client_ip_trusts_only_configured_proxies, tests::forwarded_addresses
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    // Why every line, as bytes: a line that was not visible ASCII (one `\xff` from the
    // client, to which nginx and Envoy append the real address) was skipped whole, and the
    // walk ended at the trusted proxy itself: any client passed `require.networks` naming
    // the proxy's network, and counted as the proxy in limits. An entry that does not read
    // as an address stops the walk, as garbage always has.
    // Regression: tests::unreadable_forwarded_for_lines_are_walked
    let values: Vec<&[u8]> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    for entry in values.iter().rev().flat_map(|v| v.rsplit(|&b| b == b',')) {
        if entry.trim_ascii().is_empty() {
            continue;
        }
        let Some(ip) = forwarded_addr(entry) else {
            return UNKNOWN_CLIENT;
        };
        // As the peer's (`ConnInfo::for_door`): a proxy may write `::ffff:a.b.c.d`.
        let ip = ip.to_canonical();
        client = ip;
        if !is_trusted(&ip) {
            return ip;
        }
    }
    client
}

/// The client address when a trusted proxy names a client in a form that is no address:
/// `0.0.0.0`, which only a rule for every address (`0.0.0.0/0`) holds, and one rate-limit
/// bucket for every such client.
pub const UNKNOWN_CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

/// An `X-Forwarded-For` entry as proxies write it: an address (`203.0.113.7`, `2001:db8::7`),
/// with a port (`203.0.113.7:51234`, `[2001:db8::7]:443`, as Azure Application Gateway writes
/// it) or bracketed (`[2001:db8::7]`), spaces around it ignored. `None` for anything else
/// (a name, `unknown`, a zone, leading zeros).
pub fn forwarded_addr(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    let is_port = |p: &str| {
        !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok()
    };
    if let Some(rest) = text.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return ip.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let (ip, port) = text.rsplit_once(':')?;
    if !is_port(port) {
        return None;
    }
    ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, host: Option<&str>) -> Parts {
        let mut b = http::Request::builder().uri(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn conn() -> ConnInfo {
        ConnInfo::new("192.0.2.7:5000".parse().unwrap(), "l".into(), None)
    }

    #[test]
    fn push_ip_writes_what_display_writes() {
        let mut v4: Vec<IpAddr> = [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.9.10",
            "100.99.101.1",
            "192.0.2.7",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        // Every octet value in every position.
        v4.extend((0..=255u8).map(|o| IpAddr::from([o, 255 - o, o / 2, o.wrapping_mul(7)])));
        let v6 = [
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.1",
            "fe80::1:2",
        ];
        for ip in v4.into_iter().chain(v6.iter().map(|s| s.parse().unwrap())) {
            let mut s = String::new();
            push_ip(&mut s, ip);
            assert_eq!(s, ip.to_string());
        }
        assert_eq!(ip_header_value("192.0.2.7".parse().unwrap()), "192.0.2.7");
    }

    #[test]
    fn host_forms() {
        let c = conn();
        type Case<'a> = (
            &'a str,
            Option<&'a str>,
            Result<(&'a str, Option<u16>), FactsError>,
        );
        let cases: &[Case<'_>] = &[
            ("/", Some("Example.COM"), Ok(("example.com", None))),
            ("/", Some("example.com."), Ok(("example.com", None))),
            (
                "/",
                Some("example.com:8443"),
                Ok(("example.com", Some(8443))),
            ),
            ("/", Some("[::1]:8080"), Ok(("[::1]", Some(8080)))),
            ("/", Some("[FE80::A:1]"), Ok(("[fe80::a:1]", None))),
            ("/", None, Err(FactsError::MissingHost)),
            ("/", Some("user@example.com"), Err(FactsError::InvalidHost)),
            ("/", Some("exa mple"), Err(FactsError::InvalidHost)),
            ("/", Some("example.com:99999"), Err(FactsError::InvalidHost)),
            (
                "/",
                Some("admin.example.com:1:443"),
                Err(FactsError::InvalidHost),
            ),
            ("/", Some("a..b"), Err(FactsError::InvalidHost)),
            ("/", Some(".a"), Err(FactsError::InvalidHost)),
            ("/", Some("a.."), Err(FactsError::InvalidHost)),
            ("/", Some("."), Err(FactsError::InvalidHost)),
            ("/", Some(":80"), Err(FactsError::InvalidHost)),
            ("/", Some("a%62"), Err(FactsError::InvalidHost)),
            ("/", Some("A_b-9.Z:80"), Ok(("a_b-9.z", Some(80)))),
            ("/", Some("a]b:80"), Err(FactsError::InvalidHost)),
            // Absolute-form: the URI's authority wins over Host.
            (
                "http://Admin.Example:81/x",
                Some("other"),
                Ok(("admin.example", Some(81))),
            ),
        ];
        for (uri, host, want) in cases {
            let p = parts(uri, *host);
            let got = RequestFacts::from_parts(&p, &c, &[]).map(|f| (f.host.into_owned(), f.port));
            let want = (*want).map(|(h, p)| (h.to_owned(), p));
            assert_eq!(got, want, "{uri} {host:?}");
        }
    }

    #[test]
    fn port_is_digits_only() {
        for raw in [
            "A.1.:+7",
            "example.com:+443",
            "[::1]:+80",
            "example.com:-0",
            "example.com:",
            "[::1]:",
            "example.com:4_43",
        ] {
            assert_eq!(parse_host(raw), Err(FactsError::InvalidHost), "{raw:?}");
        }
        assert_eq!(
            parse_host("example.com:0443"),
            Ok((Cow::Borrowed("example.com"), Some(443)))
        );
    }

    #[test]
    fn duplicate_host_rejected() {
        let mut p = parts("/", Some("a"));
        p.headers.append("host", "b".parse().unwrap());
        assert_eq!(
            RequestFacts::from_parts(&p, &conn(), &[]).unwrap_err(),
            FactsError::MultipleHosts
        );
    }

    /// Every door's facts refuse two `host` fields: a gRPC Check's header map takes its
    /// authority from `host` apart from its headers, and was decided on with two.
    #[test]
    fn multiple_hosts_refused_at_every_door() {
        let mut headers = HeaderMap::new();
        headers.append(header::HOST, HeaderValue::from_static("a.example"));
        headers.append(header::HOST, HeaderValue::from_static("b.example"));
        let head = Head {
            method: &Method::GET,
            scheme: Scheme::Https,
            authority: Some("a.example"),
            target: "/",
            headers: &headers,
        };
        assert_eq!(
            RequestFacts::new(head, &conn(), &[]).unwrap_err(),
            FactsError::MultipleHosts
        );
    }

    #[test]
    fn absolute_form_targets() {
        let facts = |uri: &str| {
            let (p, _) = http::Request::get(uri).body(()).unwrap().into_parts();
            RequestFacts::from_parts(&p, &conn(), &[]).map(|f| {
                (
                    f.host.into_owned(),
                    f.path.into_owned(),
                    f.query.map(str::to_owned),
                )
            })
        };
        let ok = |host: &str, path: &str, query: Option<&str>| {
            Ok((host.to_owned(), path.to_owned(), query.map(str::to_owned)))
        };
        assert_eq!(
            facts("http://a.example?x=1"),
            ok("a.example", "/", Some("x=1"))
        );
        assert_eq!(
            facts("https://a.example/p?x=1"),
            ok("a.example", "/p", Some("x=1"))
        );
        assert_eq!(facts("HTTP://a.example/p"), ok("a.example", "/p", None));
        assert_eq!(facts("http://a.example"), ok("a.example", "/", None));
        for uri in [
            "ftp://a.example/x",
            "ws://a.example/x",
            "file://a.example/x",
        ] {
            assert_eq!(facts(uri), Err(FactsError::UnsupportedTarget), "{uri}");
        }
    }

    /// `OPTIONS *` is `unsupported_target` at the proxy whatever its `Host`, as at the other
    /// doors (checked before the host is read); a lowercase method is `invalid_method` first.
    #[test]
    fn asterisk_refused_before_the_host() {
        let facts = |method: &str, host: &[u8]| {
            let (p, _) = http::Request::builder()
                .method(method)
                .uri("*")
                .header(http::header::HOST, HeaderValue::from_bytes(host).unwrap())
                .body(())
                .unwrap()
                .into_parts();
            RequestFacts::from_parts(&p, &conn(), &[]).map(|_| ())
        };
        assert_eq!(
            facts("OPTIONS", b"a.example"),
            Err(FactsError::UnsupportedTarget)
        );
        assert_eq!(
            facts("OPTIONS", b"\xff"),
            Err(FactsError::UnsupportedTarget)
        );
        assert_eq!(
            facts("options", b"a.example"),
            Err(FactsError::LowercaseMethod)
        );
    }

    /// What hyper refuses in a query, and a `#`, are refused whichever door the target came
    /// through (the gRPC and forward-auth doors get it as the client wrote it).
    #[test]
    fn query_characters_refused_at_every_door() {
        let headers = HeaderMap::new();
        let facts = |target: &str| {
            let head = Head {
                method: &Method::GET,
                scheme: Scheme::Https,
                authority: Some("a.example"),
                target,
                headers: &headers,
            };
            RequestFacts::new(head, &conn(), &[]).map(|f| f.query.map(str::to_owned))
        };
        let refused = Err(FactsError::Path(path::PathError::InvalidCharacter));
        for target in [
            "/docs/x?x=1#&owner=alice",
            "/docs/x?owner=alice#",
            "/x?q=\"",
            "/x?q=<script>",
            "/x?q=a>b",
            "/x?q=a b",
            "/x?q=\x7f",
            "/x?q=\t",
            "/x?q=\0",
        ] {
            assert_eq!(facts(target), refused, "{target:?}");
        }
        for (target, query) in [
            ("/x?a=1&b=%23&c", "a=1&b=%23&c"),
            ("/x?q=caf\u{e9}", "q=caf\u{e9}"),
            ("/x?q={}|^`[]\\!$'()*+,;:@/?", "q={}|^`[]\\!$'()*+,;:@/?"),
            ("/x?", ""),
        ] {
            assert_eq!(facts(target), Ok(Some(query.to_owned())), "{target:?}");
        }
    }

    #[test]
    fn unreadable_forwarded_for_lines_are_walked() {
        let trusted: Vec<IpNet> = vec!["127.0.0.3/32".parse().unwrap()];
        let proxy: IpAddr = "127.0.0.3".parse().unwrap();
        let client: IpAddr = "203.0.113.5".parse().unwrap();
        for line in [
            &b"\xff, 203.0.113.5"[..],
            b"a\x80b, 203.0.113.5",
            b"203.0.113.5",
        ] {
            let mut h = HeaderMap::new();
            h.append("x-forwarded-for", HeaderValue::from_bytes(line).unwrap());
            assert_eq!(client_ip(proxy, &h, &trusted), client, "{line:?}");
        }
        // The client's own unreadable line, the proxy's appended on its own line.
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_bytes(b"\xff").unwrap());
        h.append("x-forwarded-for", HeaderValue::from_static("203.0.113.5"));
        assert_eq!(client_ip(proxy, &h, &trusted), client);
    }

    #[test]
    fn mapped_addresses_are_ipv4() {
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        let conn = ConnInfo::new(
            "[::ffff:203.0.113.7]:5000".parse().unwrap(),
            "l".into(),
            None,
        );
        assert_eq!(conn.peer.ip(), v4);
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "::ffff:203.0.113.7".parse().unwrap());
        let proxy: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_ip(proxy.to_canonical(), &h, &trusted), v4);
        // A mapped trusted hop is trusted, and skipped.
        h.append("x-forwarded-for", "::ffff:10.0.0.2".parse().unwrap());
        assert_eq!(client_ip(proxy.to_canonical(), &h, &trusted), v4);
    }

    #[test]
    fn client_ip_trusts_only_configured_proxies() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "1.1.1.1, 10.0.0.5".parse().unwrap());
        h.append("x-forwarded-for", "10.0.0.6".parse().unwrap());
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        // Nobody trusted: the peer.
        assert_eq!(client_ip(peer, &h, &[]), peer);
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(
            client_ip(peer, &h, &trusted),
            "1.1.1.1".parse::<IpAddr>().unwrap()
        );
        // A spoofed entry left of an untrusted one is never used.
        let mut h2 = HeaderMap::new();
        h2.append("x-forwarded-for", "6.6.6.6, 2.2.2.2".parse().unwrap());
        assert_eq!(
            client_ip(peer, &h2, &trusted),
            "2.2.2.2".parse::<IpAddr>().unwrap()
        );
        // Garbage where a trusted proxy names the client: an unknown client, never the
        // proxy itself.
        for garbage in [
            "evil, 10.0.0.4",
            "10.0.0.4, evil",
            "unknown",
            "203.0.113.9:x",
            "unix:",
        ] {
            let mut h3 = HeaderMap::new();
            h3.append("x-forwarded-for", garbage.parse().unwrap());
            assert_eq!(client_ip(peer, &h3, &trusted), UNKNOWN_CLIENT, "{garbage}");
        }
        // Empty entries (nginx appending to an empty header) are passed over.
        for empty in [", 10.0.0.4", "10.0.0.4,", " , 10.0.0.4"] {
            let mut h3 = HeaderMap::new();
            h3.append("x-forwarded-for", empty.parse().unwrap());
            assert_eq!(
                client_ip(peer, &h3, &trusted),
                "10.0.0.4".parse::<IpAddr>().unwrap(),
                "{empty:?}"
            );
        }
        // Garbage left of the client is the client's own: never read.
        let mut h4 = HeaderMap::new();
        h4.append("x-forwarded-for", "evil, 203.0.113.9".parse().unwrap());
        assert_eq!(
            client_ip(peer, &h4, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // With a port, as Azure Application Gateway writes it: the address.
        let mut h5 = HeaderMap::new();
        h5.append("x-forwarded-for", "203.0.113.7:51234".parse().unwrap());
        assert_eq!(
            client_ip(peer, &h5, &trusted),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn forwarded_addresses() {
        for (entry, want) in [
            ("203.0.113.7", Some("203.0.113.7")),
            (" 203.0.113.7 ", Some("203.0.113.7")),
            ("203.0.113.7:51234", Some("203.0.113.7")),
            ("203.0.113.7:0", Some("203.0.113.7")),
            ("2001:db8::7", Some("2001:db8::7")),
            ("[2001:db8::7]", Some("2001:db8::7")),
            ("[2001:db8::7]:443", Some("2001:db8::7")),
            ("::ffff:192.0.2.1", Some("::ffff:192.0.2.1")),
            ("203.0.113.7:65536", None),
            ("203.0.113.7:", None),
            ("203.0.113.7:+1", None),
            ("203.0.113.7:123456", None),
            ("2001:db8::7:443x", None),
            ("[203.0.113.7]:443", None),
            ("[2001:db8::7]443", None),
            ("[2001:db8::7", None),
            ("fe80::1%eth0", None),
            ("010.0.0.1", None),
            ("unknown", None),
            ("_hidden", None),
            ("", None),
            ("host.example:80", None),
        ] {
            assert_eq!(
                forwarded_addr(entry.as_bytes()),
                want.map(|w| w.parse::<IpAddr>().unwrap()),
                "{entry:?}"
            );
        }
    }
}
