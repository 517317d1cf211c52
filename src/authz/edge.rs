//! What a rule says about the edge of the proxy door beyond allow or deny: the upgrades
//! (WebSockets) it relays and the bounds of their tunnels, how often a tunnel is re-decided,
//! and its CORS settings (which the Envoy doors apply too: [`preflight`],
//! [`Cors::response_headers`]). Compiled once per rule; an allowed or denied request carries the
//! rule's [`Edge`] (an `Arc`, `None` for the rules that say nothing) to the door.
//!
//! Invariants: an upgrade protocol is a lowercase token and never `h2c`; an allowed origin
//! is an exact `scheme://host[:port]`, never `*` or `null`, so the allowed origin the
//! gateway echoes is always one the config names.

use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, header};

use crate::config::FieldError;
use crate::config::raw::{RawCors, RawUpgrade};

/// A rule's edge settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Edge {
    /// The upgrades it relays.
    pub upgrade: Option<Upgrade>,
    /// How often its tunnels are re-decided.
    pub reauthorize_every: Option<Duration>,
    /// Its CORS settings.
    pub cors: Option<Cors>,
}

/// Upgrades a rule relays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// Lowercase protocol tokens (`websocket`).
    pub protocols: Box<[Box<str>]>,
    /// A tunnel with no byte either way for this long is closed.
    pub idle_timeout: Duration,
    /// A tunnel is closed this long after it opened.
    pub max_lifetime: Duration,
}

/// CORS settings, with their header values built once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    /// Allowed origins, exact and lowercase.
    origins: Box<[Box<str>]>,
    /// Methods a preflight may ask for.
    methods: Box<[Method]>,
    /// Request headers a preflight may ask for, lowercase.
    headers: Box<[HeaderName]>,
    /// `Access-Control-Allow-Methods`.
    pub allow_methods: HeaderValue,
    /// `Access-Control-Allow-Headers`, when any is allowed.
    pub allow_headers: Option<HeaderValue>,
    /// `Access-Control-Expose-Headers`, when any is.
    pub expose_headers: Option<HeaderValue>,
    /// `Access-Control-Allow-Credentials: true`.
    pub allow_credentials: bool,
    /// `Access-Control-Max-Age`, in seconds.
    pub max_age: Option<HeaderValue>,
}

/// Why a preflight is not answered with the CORS headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreflightRefusal {
    /// The origin is not allowed.
    Origin,
    /// The method asked for is not allowed.
    Method,
    /// A header asked for is not allowed.
    Header,
}

// === impl Edge ===

impl Edge {
    /// Whether it relays an upgrade to `protocols` (the request's `Upgrade` value).
    pub fn relays(&self, protocols: &[u8]) -> bool {
        self.upgrade.as_ref().is_some_and(|u| u.allows(protocols))
    }

    /// Whether it refuses an upgrade with these headers for its origin: its `cors` names
    /// origins and the request's `Origin` is not one of them.
    ///
    /// Why: browsers apply no CORS to a WebSocket: a page from any origin could open one with
    /// the user's cookies (cross-site WebSocket hijacking). An upgrade without `Origin` (not a
    /// browser's) is not refused. Regression: tests (it)
    /// edge::websocket_from_an_origin_the_rule_does_not_name_is_refused,
    /// edge::a_recheck_closes_a_websocket_the_current_rule_would_refuse
    ///
    /// Every `Origin` line is read: with two, only the first was checked, and an upstream
    /// reading the last saw one the rule does not name. Regression: tests::every_origin_line_is_checked
    pub fn refuses_upgrade_origin(&self, headers: &http::HeaderMap) -> bool {
        self.cors.as_ref().is_some_and(|cors| {
            headers
                .get_all(http::header::ORIGIN)
                .iter()
                .any(|o| !cors.allows_origin(o))
        })
    }

    /// Compiles a rule's settings; `None` when it has none. `rule_methods` are the rule's
    /// own (the default allowed methods of its CORS).
    pub fn compile(
        upgrade: Option<&RawUpgrade>,
        reauthorize_every: Option<Duration>,
        cors: Option<&RawCors>,
        rule_methods: &[String],
    ) -> Result<Option<Self>, Vec<FieldError>> {
        let mut errors = Vec::new();
        let upgrade = upgrade.and_then(|u| match Upgrade::compile(u) {
            Ok(u) => Some(u),
            Err(e) => {
                errors.push(e.under("upgrade"));
                None
            }
        });
        if reauthorize_every.is_some_and(|d| d < Duration::from_secs(1)) {
            errors.push(FieldError::new(
                "reauthorize_every",
                "must be at least 1s: each re-check verifies the credential afresh",
            ));
        }
        let cors = cors.and_then(|c| match Cors::compile(c, rule_methods) {
            Ok(c) => Some(c),
            Err(es) => {
                errors.extend(es.into_iter().map(|e| e.under("cors")));
                None
            }
        });
        if !errors.is_empty() {
            return Err(errors);
        }
        if upgrade.is_none() && reauthorize_every.is_none() && cors.is_none() {
            return Ok(None);
        }
        Ok(Some(Self {
            upgrade,
            reauthorize_every,
            cors,
        }))
    }
}

// === impl Upgrade ===

impl Upgrade {
    fn compile(raw: &RawUpgrade) -> Result<Self, FieldError> {
        if raw.protocols.is_empty() {
            return Err(FieldError::new("protocols", "name at least one protocol"));
        }
        let mut protocols = Vec::with_capacity(raw.protocols.len());
        for (i, p) in raw.protocols.iter().enumerate() {
            let p = p.trim().to_ascii_lowercase();
            if p == "h2c" {
                return Err(FieldError::new(
                    format!("protocols[{i}]"),
                    "`h2c` is never relayed: it would carry requests past the gateway's checks",
                ));
            }
            if p.is_empty() || !p.bytes().all(is_token_byte) {
                return Err(FieldError::new(
                    format!("protocols[{i}]"),
                    format!("`{p}` is not a protocol token"),
                ));
            }
            protocols.push(p.into_boxed_str());
        }
        // Why each its own field: a `max_lifetime: 0s` was blamed on `idle_timeout`, at that
        // key's line or at none. Regression: tests::a_zero_tunnel_timeout_names_its_field
        for (field, zero) in [
            ("idle_timeout", raw.idle_timeout.is_zero()),
            ("max_lifetime", raw.max_lifetime.is_zero()),
        ] {
            if zero {
                return Err(FieldError::new(
                    field,
                    "tunnel timeouts must be longer than zero",
                ));
            }
        }
        Ok(Self {
            protocols: protocols.into(),
            idle_timeout: raw.idle_timeout,
            max_lifetime: raw.max_lifetime,
        })
    }

    /// Whether every protocol the client asks for in `Upgrade` (comma-separated, maybe with
    /// versions such as `websocket/13`) is one this rule relays. Nothing asked is `false`.
    pub fn allows(&self, upgrade: &[u8]) -> bool {
        let Ok(text) = std::str::from_utf8(upgrade) else {
            return false;
        };
        let mut any = false;
        for token in text.split(',').map(str::trim) {
            let name = token.split('/').next().unwrap_or("");
            if name.is_empty() || !self.protocols.iter().any(|p| p.eq_ignore_ascii_case(name)) {
                return false;
            }
            any = true;
        }
        any
    }
}

/// `tchar` of RFC 9110 §5.6.2.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

// === impl Cors ===

impl Cors {
    fn compile(raw: &RawCors, rule_methods: &[String]) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        if raw.allowed_origins.is_empty() {
            errors.push(FieldError::new(
                "allowed_origins",
                "name at least one origin",
            ));
        }
        let mut origins = Vec::new();
        for (i, o) in raw.allowed_origins.iter().enumerate() {
            match check_origin(o) {
                Ok(o) => origins.push(o.into_boxed_str()),
                Err(m) => errors.push(FieldError::new(format!("allowed_origins[{i}]"), m)),
            }
        }
        let mut named: Vec<String> = if raw.allowed_methods.is_empty() {
            if rule_methods.is_empty() {
                vec!["GET".into(), "HEAD".into(), "POST".into()]
            } else {
                rule_methods.to_vec()
            }
        } else {
            raw.allowed_methods.clone()
        };
        // A `GET` the rule serves is a `HEAD` too (as `match.methods` reads it), whichever
        // list named it. Regression: tests::preflight_checks_origin_method_and_headers
        if named.iter().any(|m| m == "GET") && !named.iter().any(|m| m == "HEAD") {
            named.push("HEAD".into());
        }
        // Why: `*`, as other gateways take it, passed as a method and a header literally named
        // `*`: every preflight was refused, and with credentials a browser reads an
        // `Access-Control-Expose-Headers: *` as that name too. Named lists only.
        // Regression: tests::a_star_is_no_cors_wildcard
        for (field, list) in [
            ("allowed_methods", &raw.allowed_methods),
            ("allowed_headers", &raw.allowed_headers),
            ("expose_headers", &raw.expose_headers),
        ] {
            if let Some(i) = list.iter().position(|x| x.trim() == "*") {
                errors.push(FieldError::new(
                    format!("{field}[{i}]"),
                    "`*` is no wildcard here (browsers read it as a name when credentials are allowed): list the names".to_owned(),
                ));
            }
        }
        let mut methods = Vec::new();
        for (i, m) in named.iter().enumerate() {
            match Method::from_bytes(m.as_bytes()) {
                Ok(method) if m.bytes().all(|b| !b.is_ascii_lowercase()) => methods.push(method),
                _ => errors.push(FieldError::new(
                    format!("allowed_methods[{i}]"),
                    format!("`{m}` is not an upper-case method"),
                )),
            }
        }
        let mut headers = Vec::new();
        for (i, h) in raw.allowed_headers.iter().enumerate() {
            match HeaderName::from_bytes(h.trim().as_bytes()) {
                Ok(n) => headers.push(n),
                Err(_) => errors.push(FieldError::new(
                    format!("allowed_headers[{i}]"),
                    format!("`{h}` is not a header name"),
                )),
            }
        }
        let mut expose = Vec::new();
        for (i, h) in raw.expose_headers.iter().enumerate() {
            match HeaderName::from_bytes(h.trim().as_bytes()) {
                Ok(n) => expose.push(n),
                Err(_) => errors.push(FieldError::new(
                    format!("expose_headers[{i}]"),
                    format!("`{h}` is not a header name"),
                )),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let join = |names: &mut dyn Iterator<Item = &str>| {
            let text = names.collect::<Vec<_>>().join(", ");
            HeaderValue::from_str(&text).ok()
        };
        let allow_methods = join(&mut methods.iter().map(Method::as_str))
            .unwrap_or_else(|| HeaderValue::from_static("GET"));
        let allow_headers = (!headers.is_empty())
            .then(|| join(&mut headers.iter().map(HeaderName::as_str)))
            .flatten();
        let expose_headers = (!expose.is_empty())
            .then(|| join(&mut expose.iter().map(HeaderName::as_str)))
            .flatten();
        Ok(Self {
            origins: origins.into(),
            methods: methods.into(),
            headers: headers.into(),
            allow_methods,
            allow_headers,
            expose_headers,
            allow_credentials: raw.allow_credentials,
            max_age: raw.max_age.map(|d| HeaderValue::from(d.as_secs())),
        })
    }

    /// Whether `origin` (the request's `Origin`, as sent) is allowed: an exact match, ASCII
    /// case aside.
    pub fn allows_origin(&self, origin: &HeaderValue) -> bool {
        let o = origin.as_bytes();
        self.origins
            .iter()
            .any(|a| a.as_bytes().eq_ignore_ascii_case(o))
    }

    /// Checks a preflight: its origin, the method it asks for, and every header it names.
    pub fn check_preflight(
        &self,
        origin: &HeaderValue,
        method: &Method,
        headers: Option<&HeaderValue>,
    ) -> Result<(), PreflightRefusal> {
        if !self.allows_origin(origin) {
            return Err(PreflightRefusal::Origin);
        }
        if !self.methods.contains(method) {
            return Err(PreflightRefusal::Method);
        }
        if let Some(asked) = headers {
            let text = asked.to_str().map_err(|_| PreflightRefusal::Header)?;
            for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if !self
                    .headers
                    .iter()
                    .any(|h| h.as_str().eq_ignore_ascii_case(name))
                {
                    return Err(PreflightRefusal::Header);
                }
            }
        }
        Ok(())
    }
}

/// `Vary: Origin`, on every answer of a rule with CORS (and every preflight answer).
pub const VARY_ORIGIN: (HeaderName, HeaderValue) =
    (header::VARY, HeaderValue::from_static("origin"));
const TRUE: HeaderValue = HeaderValue::from_static("true");

impl Cors {
    /// The headers of the gateway's `204` to a preflight from `origin` that
    /// [`Self::check_preflight`] allowed, [`VARY_ORIGIN`] last.
    pub fn preflight_headers(&self, origin: &HeaderValue) -> Vec<(HeaderName, HeaderValue)> {
        let mut h = Vec::with_capacity(6);
        h.push((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()));
        h.push((
            header::ACCESS_CONTROL_ALLOW_METHODS,
            self.allow_methods.clone(),
        ));
        if let Some(v) = &self.allow_headers {
            h.push((header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone()));
        }
        if self.allow_credentials {
            h.push((header::ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE));
        }
        if let Some(v) = &self.max_age {
            h.push((header::ACCESS_CONTROL_MAX_AGE, v.clone()));
        }
        h.push(VARY_ORIGIN);
        h
    }

    /// The CORS headers of a real answer on the rule to a request from `origin`, for a
    /// decision door's peer to add to the client's response: `Vary: Origin` always (an
    /// answer without `Origin` is cached too), and for an allowed origin that origin echoed,
    /// `Access-Control-Allow-Credentials` and `-Expose-Headers` as configured.
    pub fn response_headers(&self, origin: Option<&HeaderValue>) -> Vec<(HeaderName, HeaderValue)> {
        let mut h = vec![VARY_ORIGIN];
        let Some(origin) = origin.filter(|o| self.allows_origin(o)) else {
            return h;
        };
        h.push((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()));
        if self.allow_credentials {
            h.push((header::ACCESS_CONTROL_ALLOW_CREDENTIALS, TRUE));
        }
        if let Some(v) = &self.expose_headers {
            h.push((header::ACCESS_CONTROL_EXPOSE_HEADERS, v.clone()));
        }
        h
    }
}

/// A checked preflight: the `204`'s headers, or why it is refused (`403`).
pub type Preflight = Result<Vec<(HeaderName, HeaderValue)>, PreflightRefusal>;

/// A CORS preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) for a rule
/// with CORS, checked for the rule the *real* request would match (its method is the one
/// asked for): the rule, and the `204`'s headers or why it is refused (`403`). `None` when
/// the request is no preflight, or that rule allows nothing or has no CORS: then it is
/// decided as any request. Every door that can answer a preflight itself asks this first.
pub fn preflight(
    snapshot: &crate::snapshot::Snapshot,
    facts: &crate::request::RequestFacts<'_>,
) -> Option<(crate::authz::route::RuleId, Preflight)> {
    if *facts.method != Method::OPTIONS {
        return None;
    }
    let mut origins = facts.headers.get_all(header::ORIGIN).iter();
    let origin = origins.next()?;
    // Why: with two `Origin` lines the first decided, an allowed one before another.
    // Regression: tests (it) edge::cors_preflight_from_another_origin_method_or_header_gets_no_allow_origin
    let repeated = origins.next().is_some();
    // Why: with two lines the first was asked for, while Envoy joins them (`GET,DELETE`, no
    // method at all): one preflight, two answers. Two are no preflight at any door.
    // Regression: tests (it) edge::cors_preflight_from_another_origin_method_or_header_gets_no_allow_origin
    let asked = at_most_one(facts.headers, header::ACCESS_CONTROL_REQUEST_METHOD)??;
    // Two `Access-Control-Request-Headers` lines alike: the first was checked, while Envoy
    // joins them (`content-type,x-evil`) and the second is refused there.
    // Regression: tests (it) edge::cors_preflight_from_another_origin_method_or_header_gets_no_allow_origin
    let asked_headers = at_most_one(facts.headers, header::ACCESS_CONTROL_REQUEST_HEADERS)?;
    let method = Method::from_bytes(asked.as_bytes()).ok()?;
    let probe = crate::request::RequestFacts {
        method: &method,
        host: facts.host.clone(),
        path: facts.path.clone(),
        path_as_sent: facts.path_as_sent.clone(),
        ..*facts
    };
    let rule = snapshot.routes.find(&probe)?;
    // (A path the rule matches only by a wide case fold is refused: no preflight for it.)
    if rule.effect != crate::config::raw::Effect::Allow || rule.matches_only_widely(&facts.path) {
        return None;
    }
    let cors = rule.edge.as_ref()?.cors.as_ref()?;
    let checked = if repeated {
        Err(PreflightRefusal::Origin)
    } else {
        cors.check_preflight(origin, &method, asked_headers)
    }
    .map(|()| cors.preflight_headers(origin));
    Some((rule.id.clone(), checked))
}

/// The request's `Origin` when it sends exactly one, for the CORS headers of an answer to a
/// real request: with two (no browser sends that), none is echoed.
///
/// Why: the first was echoed, whatever the second said, where an upstream may read the last.
/// Regression: tests (it) edge::cors_rule_answers_without_origin_vary_and_carry_no_upstream_acao
pub fn sole_origin(headers: &http::HeaderMap) -> Option<&HeaderValue> {
    at_most_one(headers, header::ORIGIN).flatten()
}

/// A header's one value (`Some(None)` when absent), or `None` when it is repeated: no browser
/// repeats the CORS headers, and which line a reader takes is a guess.
fn at_most_one(headers: &http::HeaderMap, name: HeaderName) -> Option<Option<&HeaderValue>> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (first, None) => Some(first),
        (Some(_), Some(_)) | (None, Some(_)) => None,
    }
}

impl PreflightRefusal {
    /// The reason code for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Origin => "cors_origin_not_allowed",
            Self::Method => "cors_method_not_allowed",
            Self::Header => "cors_header_not_allowed",
        }
    }
}

/// An origin as browsers serialize it: `scheme://host[:port]`, lowercased.
/// An allowed origin as browsers send it (RFC 6454 §6.1): `scheme://host[:port]`, lower
/// case, without the scheme's default port (browsers leave it out, so `https://a.com:443`
/// could never match).
///
/// Why the host and port are checked: `https://app.example.com:443`, `:abc`, `:99999` or a
/// `\` were accepted and never matched any browser's `Origin`, silently refusing the real app.
/// Regression: tests::wildcard_null_and_paths_are_not_origins
fn check_origin(o: &str) -> Result<String, String> {
    let lower = o.trim().to_ascii_lowercase();
    if lower == "*" || lower == "null" {
        return Err(format!(
            "`{o}` is refused: name each origin (the allowed one is echoed, never a wildcard)"
        ));
    }
    let not_origin = || format!("`{o}` is not an origin: expected `https://host[:port]`");
    let (scheme, rest, default_port) = if let Some(r) = lower.strip_prefix("https://") {
        ("https", r, "443")
    } else if let Some(r) = lower.strip_prefix("http://") {
        ("http", r, "80")
    } else {
        return Err(not_origin());
    };
    // `[v6]` or a name; then `:port`, if any.
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or_else(not_origin)?;
        // Browsers write the address compressed (`[::1]`), hence so is it here; one with an
        // IPv4 tail they write in hex, which this does not: refused, to be written as they do.
        let Ok(ip) = addr.parse::<std::net::Ipv6Addr>() else {
            return Err(not_origin());
        };
        if ip.to_string() != addr || addr.contains('.') {
            return Err(format!(
                "`{o}` is not written as browsers send it: write `[{ip}]`, compressed, the IPv4 part in hex"
            ));
        }
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(not_origin)?),
        };
        (&rest[..addr.len() + 2], port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    let name_ok = host.starts_with('[')
        || (!host.is_empty()
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            }));
    if !name_ok {
        return Err(format!(
            "`{o}` is not an origin: expected `https://host[:port]` without a path (a name in \
             letters, digits, `-` and `.`; an international name in its `xn--` form)"
        ));
    }
    let port = match port {
        None => None,
        Some(p) if p == default_port => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) && !p.starts_with('0') => {
                Some(p)
            }
            _ => return Err(format!("`{o}` has no valid port (1 to 65535)")),
        },
    };
    Ok(match port {
        Some(p) => format!("{scheme}://{host}:{p}"),
        None => format!("{scheme}://{host}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str]) -> Cors {
        Cors::compile(
            &RawCors {
                allowed_origins: origins.iter().map(|s| (*s).to_owned()).collect(),
                allowed_methods: vec!["GET".into(), "PUT".into()],
                allowed_headers: vec!["Authorization".into(), "content-type".into()],
                expose_headers: vec!["x-request-id".into()],
                allow_credentials: true,
                max_age: Some(Duration::from_secs(600)),
            },
            &[],
        )
        .unwrap()
    }

    #[test]
    fn a_zero_tunnel_timeout_names_its_field() {
        let upgrade = |idle: u64, life: u64| {
            Upgrade::compile(&RawUpgrade {
                protocols: vec!["websocket".into()],
                idle_timeout: Duration::from_secs(idle),
                max_lifetime: Duration::from_secs(life),
            })
            .err()
            .map(|e| e.field)
        };
        assert_eq!(upgrade(1, 0).as_deref(), Some("max_lifetime"));
        assert_eq!(upgrade(0, 1).as_deref(), Some("idle_timeout"));
        assert_eq!(upgrade(1, 1), None);
    }

    #[test]
    fn every_origin_line_is_checked() {
        let edge = Edge {
            upgrade: None,
            reauthorize_every: None,
            cors: Some(cors(&["https://app.example.com"])),
        };
        let headers = |origins: &[&'static str]| {
            let mut h = http::HeaderMap::new();
            for o in origins {
                h.append(http::header::ORIGIN, http::HeaderValue::from_static(o));
            }
            h
        };
        assert!(!edge.refuses_upgrade_origin(&headers(&[])));
        assert!(!edge.refuses_upgrade_origin(&headers(&["https://app.example.com"])));
        for two in [
            ["https://app.example.com", "https://evil.example"],
            ["https://evil.example", "https://app.example.com"],
        ] {
            assert!(edge.refuses_upgrade_origin(&headers(&two)), "{two:?}");
        }
    }

    #[test]
    fn preflight_checks_origin_method_and_headers() {
        let c = cors(&["https://app.example.com"]);
        let origin = HeaderValue::from_static("https://app.example.com");
        let hdrs = HeaderValue::from_static("authorization, Content-Type");
        assert_eq!(
            c.check_preflight(&origin, &Method::PUT, Some(&hdrs)),
            Ok(())
        );
        for (o, m, h, want) in [
            (
                "https://evil.example.com",
                Method::GET,
                None,
                PreflightRefusal::Origin,
            ),
            (
                "https://app.example.com.evil.com",
                Method::GET,
                None,
                PreflightRefusal::Origin,
            ),
            (
                "https://app.example.com",
                Method::DELETE,
                None,
                PreflightRefusal::Method,
            ),
            (
                "https://app.example.com",
                Method::GET,
                Some("x-secret"),
                PreflightRefusal::Header,
            ),
        ] {
            let h = h.map(HeaderValue::from_static);
            assert_eq!(
                c.check_preflight(&HeaderValue::from_static(o), &m, h.as_ref()),
                Err(want),
                "{o} {m}"
            );
        }
        assert_eq!(c.allow_methods, "GET, PUT, HEAD");
        assert_eq!(c.max_age.as_ref().unwrap(), "600");
        // Without `allowed_methods`, the rule's methods, `HEAD` with `GET` (as the rule
        // matches it).
        let raw = RawCors {
            allowed_origins: vec!["https://app.example.com".into()],
            allowed_methods: Vec::new(),
            allowed_headers: Vec::new(),
            expose_headers: Vec::new(),
            allow_credentials: false,
            max_age: None,
        };
        let c = Cors::compile(&raw, &["GET".into(), "POST".into()]).unwrap();
        assert_eq!(c.check_preflight(&origin, &Method::HEAD, None), Ok(()));
        assert_eq!(
            c.check_preflight(&origin, &Method::PUT, None),
            Err(PreflightRefusal::Method)
        );
        let c = Cors::compile(&raw, &["POST".into()]).unwrap();
        assert_eq!(
            c.check_preflight(&origin, &Method::HEAD, None),
            Err(PreflightRefusal::Method)
        );
    }

    #[test]
    fn a_star_is_no_cors_wildcard() {
        for (field, raw) in [
            (
                "allowed_methods[1]",
                RawCors {
                    allowed_origins: vec!["https://app.example.com".into()],
                    allowed_methods: vec!["GET".into(), "*".into()],
                    allowed_headers: Vec::new(),
                    expose_headers: Vec::new(),
                    allow_credentials: true,
                    max_age: None,
                },
            ),
            (
                "allowed_headers[0]",
                RawCors {
                    allowed_origins: vec!["https://app.example.com".into()],
                    allowed_methods: Vec::new(),
                    allowed_headers: vec!["*".into()],
                    expose_headers: Vec::new(),
                    allow_credentials: false,
                    max_age: None,
                },
            ),
            (
                "expose_headers[0]",
                RawCors {
                    allowed_origins: vec!["https://app.example.com".into()],
                    allowed_methods: Vec::new(),
                    allowed_headers: Vec::new(),
                    expose_headers: vec![" * ".into()],
                    allow_credentials: true,
                    max_age: None,
                },
            ),
        ] {
            let Err(errors) = Cors::compile(&raw, &[]) else {
                panic!("{field}: accepted");
            };
            assert_eq!(errors.len(), 1, "{field}: {errors:?}");
            assert_eq!(errors[0].field, field);
            assert!(errors[0].message.contains("no wildcard"), "{errors:?}");
        }
    }

    #[test]
    fn wildcard_null_and_paths_are_not_origins() {
        for bad in [
            "*",
            "null",
            "app.example.com",
            "https://a.com/x",
            "https://",
            "https://app.example.com:",
            "https://app.example.com:99999",
            "https://app.example.com:abc",
            "https://app.example.com:0",
            "https://app.example.com:+443",
            "https://app.example.com\\evil",
            "https://user@app.example.com",
            "https://app.example.com?x",
            "https://[::1",
            "https://[zz]",
            "https://[::1]x",
            "https://bücher.example",
            "https://.",
            "https://a..b",
            "https://a.",
            "https://[0:0:0:0:0:0:0:1]",
            "https://[::ffff:127.0.0.1]",
        ] {
            assert!(check_origin(bad).is_err(), "{bad}");
        }
        for (good, want) in [
            (
                "HTTPS://App.Example.com:8443",
                "https://app.example.com:8443",
            ),
            // Browsers leave the default port out.
            ("https://app.example.com:443", "https://app.example.com"),
            ("http://h.test:80", "http://h.test"),
            ("http://h.test:443", "http://h.test:443"),
            ("https://[::1]:8443", "https://[::1]:8443"),
            ("https://[::1]", "https://[::1]"),
            ("http://localhost:8080", "http://localhost:8080"),
        ] {
            assert_eq!(check_origin(good).unwrap(), want, "{good}");
        }
    }

    #[test]
    fn upgrade_allows_only_named_protocols() {
        let u = Upgrade::compile(&RawUpgrade {
            protocols: vec!["WebSocket".into()],
            idle_timeout: Duration::from_secs(1),
            max_lifetime: Duration::from_secs(1),
        })
        .unwrap();
        assert!(u.allows(b"websocket"));
        assert!(u.allows(b"WebSocket/13"));
        assert!(!u.allows(b"websocket, h2c"));
        assert!(!u.allows(b""));
        assert!(!u.allows(b"h2c"));
        assert!(
            Upgrade::compile(&RawUpgrade {
                protocols: vec!["h2c".into()],
                idle_timeout: Duration::from_secs(1),
                max_lifetime: Duration::from_secs(1),
            })
            .is_err()
        );
    }
}
