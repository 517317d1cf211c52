//! Which client-sent headers never reach an upstream: [`Spoofable`], compiled once per snapshot.
//!
//! A header name is compared in its *dashed* spelling: lowercase (the `http` crate already
//! lowercases) with every `_` and `.` read as `-` ([`dashed`]), because many frameworks (CGI,
//! PHP, Rack, WSGI, Spring's `ForwardedHeaderFilter` behind some servers) fold `X_Real_IP` into
//! the same variable as `X-Real-IP`, and PHP also `X-Real.IP` (a `.` in a variable's name
//! becomes `_`: `HTTP_X_REAL_IP`). Families, and who may send them:
//!
//! | family | examples | from a trusted proxy | from anyone else |
//! |---|---|---|---|
//! | identity | configured identity headers, trusted-header names, the assertion | removed | removed |
//! | path or method override | `X-Original-URL`, `X-Original-URI`, `X-Forwarded-Uri`, `X-Forwarded-Path`, `X-Envoy-Original-Path`, `X-HTTP-Method-Override` | removed | removed |
//! | forwarding | `X-Forwarded-For/-Host/-Proto`, `X-Real-IP`, `Forwarded` | extended by the door (dashed); other spellings removed | replaced by the door; other spellings removed |
//! | request id | `server.request_id_header` ([`Spoofable::rewriting`]) | replaced by the door (dashed); other spellings removed | the same |
//! | address, scheme and host claims | `X-Forwarded-Port`, `True-Client-IP`, `X-Client-IP`, `Client-IP`, `X-Original-Host` | kept (dashed) | removed |
//! | infrastructure | `X-Forwarded-Client-Cert`, `Client-Cert` (RFC 9440), `X-Client-Cert-*`, `X-SSL-Client-*`, `SSL-Client-*`, `X-Forwarded-Tls-Client-Cert*`, `X-Amzn-Mtls-*`, `X-Envoy-*`, `X-Portcullis-*`; other auth proxies' identity headers (`X-Forwarded-User`, `Remote-User`, `X-Auth-Request-*`, `X-Amzn-Oidc-*`, `X-MS-Client-Principal*`) | kept only when `server.trusted_proxy_headers` names them (dashed) | removed |
//!
//! Invariant: after [`Spoofable::strip`], no header of a removed family is left in any
//! spelling, and nothing outside these families is touched.

use std::borrow::Cow;
use std::sync::Arc;

use http::{HeaderMap, HeaderName};

/// Whether `b` joins the words of a header name as some upstream reads it: `-`, `_` (CGI,
/// Rack, WSGI) or `.` (PHP, which turns a `.` in a variable's name into `_`).
pub fn is_separator(b: u8) -> bool {
    matches!(b, b'-' | b'_' | b'.')
}

/// `name` (lowercase already, as the `http` crate keeps names) in its dashed spelling: every
/// `_` and `.` as `-`; borrowed when it has neither.
///
/// Why `.`: PHP (FPM, CGI, its built-in server) names `X-User.Id` `HTTP_X_USER_ID`, as it does
/// `X-User-Id`; Caddy's `php_fastcgi` passes such a name on. A client's `X-User.Id: admin`
/// reached a PHP upstream as the identity header wherever the gateway set none (an anonymous
/// rule, a template variable the principal lacks). Regression:
/// tests::every_family_in_every_spelling
pub fn dashed(name: &str) -> Cow<'_, str> {
    if name.bytes().any(|b| b != b'-' && is_separator(b)) {
        Cow::Owned(name.replace(
            |c: char| c != '-' && c.is_ascii() && is_separator(c as u8),
            "-",
        ))
    } else {
        Cow::Borrowed(name)
    }
}

/// Whether two header names are one once read dashed ([`dashed`]).
pub fn same_dashed(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .all(|(x, y)| x == y || (is_separator(x) && is_separator(y)))
}

/// Header names removed from client requests, in every `-`/`_`/`.` spelling.
#[derive(Debug, Clone, Default)]
pub struct Spoofable {
    /// Identity and trusted-header names, dashed, sorted.
    dashed: Box<[Box<str>]>,
    /// The request-id header (`server.request_id_header`), dashed: the gateway writes that
    /// spelling, and removes the others ([`Self::rewriting`]).
    rewritten: Option<Box<str>>,
    /// The same names and the override family's, as header names: what a decision door asks
    /// its peer to remove whether or not the door saw them ([`Self::named_for_removal`]).
    always: Box<[HeaderName]>,
    /// Infrastructure headers a trusted proxy may pass on (`server.trusted_proxy_headers`).
    from_trusted: Box<[NamePattern]>,
    /// What a decision door names for removal from an untrusted peer's requests
    /// ([`Self::door_removal`]), built once here.
    door_untrusted: Arc<DoorList>,
    /// The same for a trusted peer.
    door_trusted: Arc<DoorList>,
}

/// How a door writes a list of header names ([`DoorList::rendered`]).
pub type Render = fn(&[HeaderName]) -> bytes::Bytes;

/// The names a decision door asks its peer to remove from every allowed request, each once,
/// shared by every answer of a snapshot (an answer holds the list, not copies of its names).
#[derive(Debug, Default)]
pub struct DoorList {
    /// The identity and trusted-header names first, then the rest.
    names: Box<[HeaderName]>,
    /// How many of `names` are identity names, which an answer may set instead.
    settable: usize,
    /// `names` as a set ([`Self::contains`]).
    set: std::collections::HashSet<HeaderName, foldhash::fast::RandomState>,
    /// The other names as one door renders them for every answer, and by what
    /// ([`Self::rendered`]).
    rendered: std::sync::OnceLock<(Render, bytes::Bytes)>,
    /// The other names comma-joined ([`Self::joined`]).
    joined: std::sync::OnceLock<Option<http::HeaderValue>>,
    /// The last names an answer listed before the others, and the whole list it wrote
    /// ([`Self::joined_after`]).
    last: arc_swap::ArcSwapOption<(Box<[HeaderName]>, http::HeaderValue)>,
}

impl PartialEq for DoorList {
    fn eq(&self, other: &Self) -> bool {
        self.names == other.names && self.settable == other.settable
    }
}

impl Eq for DoorList {}

// === impl DoorList ===

impl DoorList {
    /// Every name.
    pub fn iter(&self) -> std::slice::Iter<'_, HeaderName> {
        self.names.iter()
    }

    /// Whether `name` is on the list.
    ///
    /// Why a set: an answer's other removals were each compared with the ~40 names one by
    /// one, a percent of a decision door's instructions per request.
    pub fn contains(&self, name: &HeaderName) -> bool {
        self.set.contains(name)
    }

    /// The identity names (which an answer may set instead of removing them) and the rest.
    pub fn split(&self) -> (&[HeaderName], &[HeaderName]) {
        self.names.split_at(self.settable)
    }

    /// The rest (the names never set) as `render` writes them, rendered once per list: what
    /// a door that writes the list into every answer copies instead of writing it again.
    /// Kept for the first `render` asked; another one gets its own rendering, made each time.
    pub fn rendered(&self, render: Render) -> bytes::Bytes {
        let (by, bytes) = self
            .rendered
            .get_or_init(|| (render, render(self.split().1)));
        if std::ptr::fn_addr_eq(*by, render) {
            bytes.clone()
        } else {
            render(self.split().1)
        }
    }

    /// The rest comma-joined, as the HTTP doors list names to remove; `None` if there are
    /// none (or, should a name ever not make a header value, so that the caller writes them
    /// one by one). Joined once per list.
    pub fn joined(&self) -> Option<&http::HeaderValue> {
        self.joined
            .get_or_init(|| {
                let names: Vec<&str> = self.split().1.iter().map(HeaderName::as_str).collect();
                http::HeaderValue::from_str(&names.join(","))
                    .ok()
                    .filter(|v| !v.is_empty())
            })
            .as_ref()
    }

    /// `first`, then the rest, as `join` writes them: the last answer's list when its `first`
    /// were the same names (the usual case: the same credential header stripped from every
    /// request), else `join`'s, kept for the next answer.
    ///
    /// Why: writing and checking the ~500-byte list for every answer was a twentieth of the
    /// forward-auth door's instructions per request, for a list that seldom changes.
    pub fn joined_after<'n>(
        &self,
        first: impl Iterator<Item = &'n HeaderName> + Clone,
        join: impl FnOnce() -> Option<http::HeaderValue>,
    ) -> Option<http::HeaderValue> {
        if let Some(last) = &*self.last.load()
            && last.0.iter().eq(first.clone())
        {
            return Some(last.1.clone());
        }
        let value = join()?;
        self.last
            .store(Some(Arc::new((first.cloned().collect(), value.clone()))));
        Some(value)
    }
}

/// A header name, or a prefix (`x-envoy-*`), dashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamePattern {
    /// Exactly this name.
    Exact(Box<str>),
    /// Every name starting with this.
    Prefix(Box<str>),
}

/// The family of a (dashed) header name; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Makes some upstreams serve another path or method than the one decided on.
    Override,
    /// Written by the door: the forwarding chain.
    Forwarding,
    /// Client-address and scheme claims some frameworks believe.
    Claim,
    /// Set by infrastructure in front of the gateway (client certificates, Envoy, ours).
    Infrastructure,
    /// A message's framing and hop-by-hop fields (`Content-Length`, `Transfer-Encoding`,
    /// `Connection`, …): their dashed spelling is the HTTP stack's to read and write; any
    /// other is a second framing an upstream that reads `_` as `-` may follow.
    Framing,
}

// === impl Spoofable ===

impl Spoofable {
    /// The set of `names` (identity and trusted-header names) and the infrastructure headers
    /// trusted proxies may pass on.
    pub fn new<'a>(
        names: impl IntoIterator<Item = &'a HeaderName>,
        from_trusted: Vec<NamePattern>,
    ) -> Self {
        let mut dashed: Vec<Box<str>> = names
            .into_iter()
            .map(|n| dashed(n.as_str()).into())
            .collect();
        dashed.sort();
        dashed.dedup();
        let always = dashed
            .iter()
            .filter_map(|d| HeaderName::from_bytes(d.as_bytes()).ok())
            .chain(OVERRIDES.iter().cloned())
            .collect();
        let mut s = Self {
            dashed: dashed.into(),
            rewritten: None,
            always,
            from_trusted: from_trusted.into(),
            door_untrusted: Arc::default(),
            door_trusted: Arc::default(),
        };
        s.door_untrusted = s.door_list(false);
        s.door_trusted = s.door_list(true);
        s
    }

    /// Also removes every spelling of `name` but its dashed one, which the gateway writes
    /// itself (the request id).
    ///
    /// Why: the door sets `x-request-id`, but a client's `X_Request_Id: forged` went on beside
    /// it, and an upstream that reads `_` as `-` (CGI, PHP, Rack, WSGI) took the client's id
    /// for the gateway's: the forwarding family's flaw, for the header that ties the
    /// upstream's logs to the gateway's. Regression: tests::the_request_ids_other_spellings_go
    #[must_use]
    pub fn rewriting(mut self, name: &HeaderName) -> Self {
        self.rewritten = Some(dashed(name.as_str()).into());
        self
    }

    /// [`Self::named_for_removal`] and `forwarded`, each name once, in that order.
    fn door_list(&self, peer_trusted: bool) -> Arc<DoorList> {
        let mut list: Vec<HeaderName> = Vec::new();
        for name in self.named_for_removal(peer_trusted).chain([&FORWARDED]) {
            if !list.contains(name) {
                list.push(name.clone());
            }
        }
        // `always` starts with the identity names, the first of the list.
        let settable = self.always.len() - OVERRIDES.len();
        Arc::new(DoorList {
            set: list.iter().cloned().collect(),
            names: list.into(),
            settable,
            rendered: std::sync::OnceLock::new(),
            joined: std::sync::OnceLock::new(),
            last: arc_swap::ArcSwapOption::empty(),
        })
    }

    /// Removes every header a client must not hand the upstream (see the module docs);
    /// `peer_trusted` says whether the peer is in `server.trusted_proxies`.
    pub fn strip(&self, headers: &mut HeaderMap, peer_trusted: bool) {
        // Why: one walk over the names present; nothing is allocated unless a header goes (or
        // its name holds an `_`). Regression: tests::every_family_in_every_spelling
        let doomed: Vec<HeaderName> = headers
            .keys()
            .filter(|k| self.is_doomed(k, peer_trusted))
            .cloned()
            .collect();
        for name in doomed {
            headers.remove(name);
        }
    }

    /// The names a decision door asks its peer to remove from every allowed request, present
    /// or not (in their dashed spelling; the peers shipped refuse or drop the others): the
    /// identity names and the override family, and the address claims unless the hop is
    /// trusted.
    ///
    /// Why: a door only sees the headers its peer shows it (Envoy's `allowed_headers`, a
    /// gRPC `CheckRequest` with raw headers), so removing only what it saw let
    /// `X-Original-URL` or `True-Client-IP` through. Regression: decision::mutation::tests::
    /// decision_doors_name_every_family
    pub fn named_for_removal(&self, peer_trusted: bool) -> impl Iterator<Item = &HeaderName> {
        let claims: &[HeaderName] = if peer_trusted { &HOST_CLAIMS } else { &CLAIMS };
        self.always.iter().chain(claims)
    }

    /// What a decision door asks its peer to remove from every allowed request: the names of
    /// [`Self::named_for_removal`], then `forwarded` (which only the proxy door rewrites),
    /// each once.
    ///
    /// Why built at load: none of it depends on the request, and rebuilding and
    /// de-duplicating these ~40 names per request was a few percent of the gRPC door's CPU.
    pub fn door_removal(&self, peer_trusted: bool) -> &Arc<DoorList> {
        if peer_trusted {
            &self.door_trusted
        } else {
            &self.door_untrusted
        }
    }

    /// Whether `name` is removed from a request whose peer is (or is not) trusted.
    pub fn is_doomed(&self, name: &HeaderName, peer_trusted: bool) -> bool {
        let dashed = dashed(name.as_str());
        // Another spelling than the dashed one (`X_Real_IP`, `X-Real.IP`).
        let underscored = matches!(dashed, Cow::Owned(_));
        if self.dashed.iter().any(|s| **s == *dashed) {
            return true;
        }
        if underscored && self.rewritten.as_deref() == Some(&*dashed) {
            return true;
        }
        match family(&dashed) {
            None => false,
            Some(Family::Override) => true,
            // The door rewrites the dashed spelling; any other is a second, unchecked value.
            Some(Family::Forwarding) => underscored,
            // Why the host claims go whoever sent them: the rules matched the request's own
            // host, and a trusted proxy passing its client's `X-Original-Host: admin.example`
            // on had the upstream act on a host no rule decided (as `X-Forwarded-Host`, which
            // the door writes). Regression: tests::every_family_in_every_spelling
            Some(Family::Claim) => underscored || !peer_trusted || HOST_CLAIMS.contains(name),
            Some(Family::Infrastructure) => {
                underscored
                    || !peer_trusted
                    || !self.from_trusted.iter().any(|p| p.matches(&dashed))
            }
            // Why: `Transfer_Encoding: chunked` beside `Content-Length: 51` reached the
            // upstream; the gateway framed the body by its length, an upstream reading `_` as
            // `-` (Mongrel-style parsers) by chunks, and ran the request hidden in the body
            // (`GET /admin/secret`) with no decision, or answered the next client's request
            // with it. Regression: tests::every_family_in_every_spelling
            Some(Family::Framing) => underscored,
        }
    }
}

// === impl NamePattern ===

impl NamePattern {
    /// `name` or `prefix*`; lowercase, `_` read as `-`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let lower = crate::authz::identity::fold_name(s);
        let (text, prefix) = match lower.strip_suffix('*') {
            Some(p) => (p, true),
            None => (lower.as_str(), false),
        };
        if text.is_empty() || HeaderName::from_bytes(text.as_bytes()).is_err() {
            return Err(format!(
                "`{s}` is not a header name or a prefix ending in `*`"
            ));
        }
        if family(text) == Some(Family::Override) {
            return Err(format!(
                "`{s}` overrides the path or method that was decided on: never forwarded"
            ));
        }
        Ok(if prefix {
            Self::Prefix(text.into())
        } else {
            Self::Exact(text.into())
        })
    }

    fn matches(&self, dashed: &str) -> bool {
        match self {
            Self::Exact(n) => **n == *dashed,
            Self::Prefix(p) => dashed.starts_with(&**p),
        }
    }
}

/// Defines a family's static list of names and the `match` that tests a dashed name against
/// it, from one list: the doors name the static list to their peers, the hot path runs the
/// `match` (a length switch and one compare).
macro_rules! family_names {
    ($(#[$doc:meta])* static $list:ident; fn $is:ident; $($name:literal;)+) => {
        $(#[$doc])*
        static $list: [HeaderName; <[&str]>::len(&[$($name),+])] =
            [$(HeaderName::from_static($name)),+];

        fn $is(dashed: &str) -> bool {
            matches!(dashed, $($name)|+)
        }
    };
}

family_names! {
    /// The override family's names (see [`family`]). Static, as are the claims', so the copies
    /// every decision-door mutation takes cost no reference count.
    ///
    /// Why `proxy` is listed (its family was already Override): unlisted, the doors named it only
    /// when they saw it and the peers' example configs, checked against this list, never cleared
    /// it, so a client's `Proxy` reached a CGI or PHP app behind nginx or Caddy as `HTTP_PROXY`.
    /// Regression: tests (it) examples::clearing (every example clears every listed name)
    static OVERRIDES; fn is_override_name;
    "x-original-url";
    "x-original-uri";
    "x-rewrite-url";
    "x-forwarded-uri";
    "x-forwarded-path";
    "x-forwarded-prefix";
    "x-envoy-original-path";
    "x-envoy-original-url";
    "x-original-method";
    "x-forwarded-method";
    "x-http-method-override";
    "x-http-method";
    "x-method-override";
    // httpoxy: CGI, PHP and Go's net/http/cgi set `HTTP_PROXY` from it, the outgoing
    // proxy many HTTP clients then use.
    "proxy";
}

const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// The claims that name a host, removed from trusted proxies' requests too (see
/// [`Spoofable::is_doomed`]); also in [`CLAIMS`].
static HOST_CLAIMS: [HeaderName; 3] = [
    HeaderName::from_static("x-original-host"),
    HeaderName::from_static("x-host"),
    HeaderName::from_static("x-http-host-override"),
];

family_names! {
    /// The claim family's names (see [`family`]).
    static CLAIMS; fn is_claim_name;
    "x-forwarded-port";
    "x-forwarded-ssl";
    "x-forwarded-scheme";
    "x-url-scheme";
    "true-client-ip";
    "x-client-ip";
    "x-cluster-client-ip";
    "cf-connecting-ip";
    "fastly-client-ip";
    "x-forwarded-server";
    // Why: other names frameworks and CDNs read the client address, scheme or host from
    // (PHP's `HTTP_CLIENT_IP`, IIS ARR's `X-ARR-SSL`, Azure's `X-Original-Host`) reached
    // the upstream as the client wrote them. Regression: tests::every_family_in_every_spelling
    "client-ip";
    "x-remote-ip";
    "x-remote-addr";
    "x-originating-ip";
    "x-proxyuser-ip";
    "x-original-forwarded-for";
    "x-forwarded-protocol";
    "x-scheme";
    "front-end-https";
    "x-arr-ssl";
    "x-original-host";
    "x-host";
    "x-http-host-override";
    // Why: more names platforms write the client address under (Google App Engine,
    // Azure Front Door, Akamai, Cloudflare's IPv6, Fly.io, WebLogic, Apache's
    // `Remote-Addr` habit, the legacy `X-Forwarded`) reached the upstream as the client
    // wrote them, for an app moved from behind those platforms to read.
    // Regression: tests::every_family_in_every_spelling
    "x-forwarded";
    "forwarded-for";
    "x-appengine-user-ip";
    "proxy-client-ip";
    "wl-proxy-client-ip";
    "x-azure-clientip";
    "x-azure-socketip";
    "akamai-client-ip";
    "remote-addr";
    "cf-connecting-ipv6";
    "fly-client-ip";
}

/// Defines [`INFRASTRUCTURE_NAMES`] and the `match` that tests a name against them, from one
/// list: the peers' example configs and their tests read the constant, the hot path the
/// `match` (a length switch and one compare).
macro_rules! infrastructure_names {
    ($($(#[$why:meta])* $($name:literal)|+;)+) => {
        /// The infrastructure family's exact names (see the module docs), dashed: what the
        /// example configs of the peers in front of a decision door clear by name.
        pub const INFRASTRUCTURE_NAMES: &[&str] = &[$($($name),+),+];

        fn is_infrastructure_name(dashed: &str) -> bool {
            matches!(dashed, $($($name)|+)|+)
        }
    };
}

infrastructure_names! {
    "x-forwarded-client-cert" | "x-client-cert" | "ssl-client-cert" | "x-ssl-cert"
        | "x-client-verify" | "x-client-dn";
    // Why: more names TLS terminators pass a client certificate in (RFC 9440's `Client-Cert`,
    // HAProxy's and others' subject and issuer) reached the upstream from any client; an app
    // behind one of them believes them. Regression: tests::every_family_in_every_spelling
    "client-cert" | "client-cert-chain" | "x-client-certificate" | "x-client-subject"
        | "x-client-issuer" | "x-ssl-subject" | "x-ssl-issuer";
    // Why: the identity headers of the auth proxies Portcullis replaces (oauth2-proxy's
    // X-Forwarded-User, Apache's and Authelia's Remote-User, Grafana's X-WEBAUTH-USER, Google
    // IAP's, Azure App Service's X-MS-CLIENT-PRINCIPAL): an app moved from behind one of them
    // still believes them, and a client's copy reached it.
    // Regression: tests::every_family_in_every_spelling
    "remote-user" | "x-remote-user" | "x-forwarded-user" | "x-forwarded-email"
        | "x-forwarded-preferred-username" | "x-forwarded-groups" | "x-forwarded-access-token"
        | "x-webauth-user" | "x-goog-iap-jwt-assertion" | "x-arr-clientcert"
        | "x-ms-client-principal" | "remote-groups" | "remote-email" | "remote-name"
        | "x-auth-userid" | "x-auth-subject" | "x-auth-username" | "x-auth-roles"
        | "x-auth-groups" | "x-auth-audience";
}

/// The infrastructure family's prefixes that start with `x-` (tested only for such names).
/// Envoy's, ours, client certificates (Traefik's `X-Forwarded-Tls-Client-Cert*`, AWS ALB's
/// `X-Amzn-Mtls-*`), and the auth proxies' (oauth2-proxy's `X-Auth-Request-*`, AWS ALB's
/// `X-Amzn-Oidc-*`, Google IAP's, Azure's, Pomerium's, authentik's, Vouch's).
pub const INFRASTRUCTURE_X_PREFIXES: &[&str] = &[
    "x-envoy-",
    "x-portcullis-",
    "x-client-cert-",
    "x-ssl-client-",
    "x-forwarded-tls-client-cert",
    "x-amzn-mtls-",
    "x-auth-request-",
    "x-amzn-oidc-",
    "x-goog-authenticated-user-",
    "x-ms-client-principal-",
    "x-ms-token-",
    "x-pomerium-",
    "x-authentik-",
    "x-vouch-",
];

/// The infrastructure family's other prefixes: Cloudflare Access's identity (not its JWT or
/// service-token credentials, which an origin verifies), mod_auth_openidc's claims and tokens
/// (`OIDC_CLAIM_*`, `OIDC_access_token`…), nginx ingress's and Apache's client certificate
/// (`SSL-Client-Verify`, `SSL-Client-S-DN`…), and the CDNs' forwarded client certificates
/// (CloudFront's viewer mTLS `CloudFront-Viewer-Cert-*`, Cloudflare's `Cf-Client-Cert-*` and
/// its managed transform's `Cf-Cert-*`).
///
/// Why the CDNs': an app moved from behind CloudFront or Cloudflare mTLS believes them, and a
/// client's copy reached it (as AWS ALB's `X-Amzn-Mtls-*` never did). Regression:
/// tests::every_family_in_every_spelling
pub const INFRASTRUCTURE_OTHER_PREFIXES: &[&str] = &[
    "cf-access-authenticated-user-",
    "oidc-",
    "ssl-client-",
    "cloudfront-viewer-cert-",
    "cf-client-cert-",
    "cf-cert-",
];

/// Every prefix of the infrastructure family: what the example configs clear by prefix.
pub fn infrastructure_prefixes() -> impl Iterator<Item = &'static str> {
    INFRASTRUCTURE_X_PREFIXES
        .iter()
        .chain(INFRASTRUCTURE_OTHER_PREFIXES)
        .copied()
}

/// The family of a dashed, lowercase header name. (A `match` on the text compiles to a length
/// switch and one compare; the `x-` prefixes are tested only for names starting `x-`.)
pub fn family(dashed: &str) -> Option<Family> {
    match dashed {
        _ if is_override_name(dashed) => Some(Family::Override),
        "x-forwarded-for" | "x-forwarded-host" | "x-forwarded-proto" | "x-real-ip"
        | "forwarded" => Some(Family::Forwarding),
        _ if is_claim_name(dashed) => Some(Family::Claim),
        "content-length"
        | "transfer-encoding"
        | "connection"
        | "keep-alive"
        | "proxy-connection"
        | "te"
        | "trailer"
        | "upgrade"
        | "host"
        | "expect"
        | "proxy-authorization"
        | "proxy-authenticate"
        | "http2-settings" => Some(Family::Framing),
        _ if is_infrastructure_name(dashed) => Some(Family::Infrastructure),
        _ if (dashed.starts_with("x-")
            && INFRASTRUCTURE_X_PREFIXES
                .iter()
                .any(|p| dashed.starts_with(p)))
            || INFRASTRUCTURE_OTHER_PREFIXES
                .iter()
                .any(|p| dashed.starts_with(p)) =>
        {
            Some(Family::Infrastructure)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(names: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for n in names {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                "v".parse().unwrap(),
            );
        }
        h
    }

    fn left(h: &HeaderMap) -> Vec<&str> {
        let mut v: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Name, removed from an untrusted peer, removed from a trusted one (which may pass
    /// `x-forwarded-client-cert` and `x-envoy-*`).
    const CASES: &[(&str, bool, bool)] = &[
        // Framing in another spelling, from anyone; the dashed one is the HTTP stack's.
        ("Transfer_Encoding", true, true),
        ("content_length", true, true),
        ("content.length", true, true),
        ("keep_alive", true, true),
        ("Proxy_Connection", true, true),
        ("content-length", false, false),
        ("expect", false, false),
        ("Proxy_Authorization", true, true),
        ("HTTP2_Settings", true, true),
        // httpoxy: CGI and PHP read `Proxy` as `HTTP_PROXY`, an outgoing proxy.
        ("proxy", true, true),
        // Identity (configured).
        ("x-user-id", true, true),
        ("X_User_Id", true, true),
        ("x_user-id", true, true),
        // PHP reads `.` as `_`, as `-`: `X-User.Id` is `HTTP_X_USER_ID`.
        ("x-user.id", true, true),
        ("X.User.Id", true, true),
        // Overrides, every spelling, from anyone.
        ("x-original-url", true, true),
        ("X_Original_URL", true, true),
        ("x-original-uri", true, true),
        ("x_original_uri", true, true),
        ("x-original.url", true, true),
        ("x-forwarded-uri", true, true),
        ("x-forwarded-path", true, true),
        ("x-envoy-original-path", true, true),
        ("x_envoy_original_path", true, true),
        ("x-http-method-override", true, true),
        ("x-forwarded-prefix", true, true),
        // Forwarding: the dashed spelling is the door's to rewrite; others go.
        ("x-forwarded-for", false, false),
        ("x_forwarded_for", true, true),
        ("x-forwarded.for", true, true),
        ("x.real.ip", true, true),
        ("x-real-ip", false, false),
        ("X_Real_IP", true, true),
        ("x_real-ip", true, true),
        ("x_forwarded_host", true, true),
        ("x_forwarded_proto", true, true),
        ("forwarded", false, false),
        // Claims: from trusted proxies only, dashed only.
        ("true-client-ip", true, false),
        ("true_client_ip", true, true),
        ("true-client.ip", true, true),
        ("x-forwarded-port", true, false),
        ("client-ip", true, false),
        ("X_Client_IP", true, true),
        ("x-original-host", true, true),
        ("x-host", true, true),
        ("x-http-host-override", true, true),
        ("x-forwarded-server", true, false),
        ("x-forwarded-protocol", true, false),
        ("front-end-https", true, false),
        ("x-azure-clientip", true, false),
        ("X_Azure_ClientIP", true, true),
        ("x-forwarded", true, false),
        ("forwarded-for", true, false),
        ("remote-addr", true, false),
        ("Remote_Addr", true, true),
        ("x-appengine-user-ip", true, false),
        ("wl-proxy-client-ip", true, false),
        // Infrastructure: configured names from trusted proxies only.
        ("x-forwarded-client-cert", true, false),
        ("x_forwarded_client_cert", true, true),
        ("x-forwarded-client.cert", true, true),
        ("x-client-cert-chain", true, true),
        ("x-ssl-client-verify", true, true),
        ("x-envoy-expected-rq-timeout-ms", true, false),
        ("x-envoy-internal", true, false),
        ("x-portcullis-user", true, true),
        // Other auth proxies' identity headers: infrastructure (X-Forwarded-User is named
        // in the trusted proxy headers here).
        ("x-forwarded-user", true, false),
        ("x_forwarded_user", true, true),
        ("Remote_User", true, true),
        ("remote-user", true, true),
        ("x-webauth-user", true, true),
        ("x-auth-request-email", true, true),
        ("x-amzn-oidc-identity", true, true),
        ("x-ms-client-principal-name", true, true),
        ("x-ms-client-principal", true, true),
        ("x-goog-authenticated-user-email", true, true),
        ("x-pomerium-jwt-assertion", true, true),
        ("x-arr-clientcert", true, true),
        ("client-cert", true, true),
        ("Client_Cert_Chain", true, true),
        ("x-forwarded-tls-client-cert", true, true),
        ("x-forwarded-tls-client-cert-info", true, true),
        ("x-amzn-mtls-clientcert-subject", true, true),
        ("CloudFront-Viewer-Cert-Subject", true, true),
        ("cloudfront-viewer-cert-present", true, true),
        ("Cf-Client-Cert-Sha256", true, true),
        ("cf-cert-verified", true, true),
        ("Cf_Cert_Subject_DN", true, true),
        ("cf_client_cert_der_base64", true, true),
        ("ssl-client-verify", true, true),
        ("SSL_Client_S_DN", true, true),
        ("x-client-certificate", true, true),
        ("x-ssl-subject", true, true),
        ("Remote-Groups", true, true),
        ("x-auth-roles", true, true),
        ("x-authentik-groups", true, true),
        ("cf-access-authenticated-user-email", true, true),
        ("OIDC_CLAIM_email", true, true),
        ("x-auth-token", false, false),
        ("x-auth-email", false, false),
        ("cf-access-jwt-assertion", false, false),
        ("cf-access-client-secret", false, false),
        ("OIDC_id_token_payload", true, true),
        ("X_Portcullis_Decision", true, true),
        // Untouched.
        ("x-kept", false, false),
        ("x_kept", false, false),
        ("x.kept", false, false),
        ("authorization", false, false),
        ("x-forwardedx", false, false),
        ("x-envoyish", false, false),
    ];

    #[test]
    fn the_request_ids_other_spellings_go() {
        let s = Spoofable::new([], Vec::new()).rewriting(&HeaderName::from_static("x-request-id"));
        for (name, doomed) in [
            ("x_request_id", true),
            ("x_request-id", true),
            ("x-request.id", true),
            // The gateway's own spelling: replaced where it is written, not removed.
            ("x-request-id", false),
            ("x-request-ids", false),
            ("x_correlation_id", false),
        ] {
            let name = HeaderName::from_static(name);
            for trusted in [false, true] {
                assert_eq!(
                    s.is_doomed(&name, trusted),
                    doomed,
                    "{name} (trusted: {trusted})"
                );
            }
        }
        // Not configured: nothing of the name's is touched.
        let plain = Spoofable::new([], Vec::new());
        assert!(!plain.is_doomed(&HeaderName::from_static("x_request_id"), false));
    }

    #[test]
    fn named_lists_agree_with_the_families() {
        for n in &OVERRIDES {
            assert_eq!(family(n.as_str()), Some(Family::Override), "{n}");
        }
        for n in &CLAIMS {
            assert_eq!(family(n.as_str()), Some(Family::Claim), "{n}");
        }
        let s = Spoofable::new([&HeaderName::from_static("x-user-id")], Vec::new());
        let untrusted: Vec<&str> = s.named_for_removal(false).map(HeaderName::as_str).collect();
        assert!(untrusted.contains(&"x-user-id") && untrusted.contains(&"true-client-ip"));
        assert_eq!(untrusted.len(), 1 + OVERRIDES.len() + CLAIMS.len());
        let trusted: Vec<&str> = s.named_for_removal(true).map(HeaderName::as_str).collect();
        assert!(!trusted.contains(&"true-client-ip"));
        // The doors' lists: the same names, then `forwarded`, each once.
        for (peer_trusted, named) in [(false, &untrusted), (true, &trusted)] {
            let door: Vec<&str> = s
                .door_removal(peer_trusted)
                .iter()
                .map(HeaderName::as_str)
                .collect();
            assert_eq!(door[..door.len() - 1], named[..]);
            assert_eq!(door.last(), Some(&"forwarded"));
        }
        // An identity name that is also an override is named once.
        let s = Spoofable::new([&HeaderName::from_static("x-original-url")], Vec::new());
        let door: Vec<&str> = s
            .door_removal(false)
            .iter()
            .map(HeaderName::as_str)
            .collect();
        assert_eq!(door.len(), OVERRIDES.len() + CLAIMS.len() + 1, "{door:?}");
    }

    /// Why an answer filters only the list's identity names against what it sets: nothing
    /// that can be set is in the rest. Identity headers, the assertion's and a delegate's are
    /// all checked by `identity::check_name`, which refuses those names; the door itself sets
    /// only `x-real-ip`, `x-forwarded-host` and a cut `cookie`.
    #[test]
    fn nothing_settable_is_in_the_lists_fixed_part() {
        let identity = [
            HeaderName::from_static("x-user-id"),
            HeaderName::from_static("x-original-url"),
        ];
        let s = Spoofable::new(&identity, Vec::new());
        for trusted in [false, true] {
            let (settable, rest) = s.door_removal(trusted).split();
            assert_eq!(settable.len(), 2, "{settable:?}");
            assert!(!rest.is_empty());
            for n in rest {
                assert!(
                    crate::authz::identity::check_name(n.as_str()).is_err(),
                    "{n}"
                );
                assert!(!["x-real-ip", "x-forwarded-host", "cookie"].contains(&n.as_str()));
            }
        }
    }

    #[test]
    fn every_family_in_every_spelling() {
        let s = Spoofable::new(
            &[HeaderName::from_static("x-user-id")],
            vec![
                NamePattern::parse("X-Forwarded-Client-Cert").unwrap(),
                NamePattern::parse("x-envoy-*").unwrap(),
                NamePattern::parse("X-Forwarded-User").unwrap(),
            ],
        );
        for &(name, untrusted, trusted) in CASES {
            let n = HeaderName::from_bytes(name.as_bytes()).unwrap();
            assert_eq!(
                s.is_doomed(&n, false),
                untrusted,
                "{name} from an untrusted peer"
            );
            assert_eq!(
                s.is_doomed(&n, true),
                trusted,
                "{name} from a trusted proxy"
            );
        }
        let names: Vec<&str> = CASES.iter().map(|c| c.0).collect();
        let mut h = headers(&names);
        s.strip(&mut h, false);
        let mut want: Vec<String> = CASES
            .iter()
            .filter(|c| !c.1)
            .map(|c| c.0.to_ascii_lowercase())
            .collect();
        want.sort_unstable();
        assert_eq!(left(&h), want);
    }

    #[test]
    fn patterns_parse() {
        assert_eq!(
            NamePattern::parse("X_Envoy_*").unwrap(),
            NamePattern::Prefix("x-envoy-".into())
        );
        assert!(NamePattern::parse("*").is_err());
        assert!(NamePattern::parse("bad name").is_err());
        assert!(NamePattern::parse("x-original-url").is_err());
        assert!(NamePattern::parse("X-Envoy-Original-Path").is_err());
    }
}
