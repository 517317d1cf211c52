//! One request through the proxy door: facts → decision → forward or refuse.
//!
//! Order matters: hop-by-hop headers are removed *before* the facts are built, so the decision
//! sees exactly the headers the upstream will get (plus the ones the gateway adds). The
//! canonical path that was decided on is the path that is forwarded.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;

pub use super::forwarded::Origin;
use super::{forwarded, hop_by_hop, request_id};
use crate::authn::credential;
use crate::body::{self, PrefetchError, RequestBody, ResponseBody};
use crate::decision::outcome;
use crate::decision::{self, Decision, HeaderMutation, NoTrace, Refusal};
use crate::request::RequestFacts;
use crate::request::facts::ConnInfo;
use crate::snapshot::Snapshot;
use crate::telemetry::access_log::{self, AccessRecord};
use crate::telemetry::metrics::{Metrics, Outcome};
use crate::upstream::SendError;

/// State shared by every connection of the proxy door.
#[derive(Debug)]
pub struct Shared {
    /// The active snapshot.
    pub current: Arc<ArcSwap<Snapshot>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// A proxy-door connection: the door-neutral facts the core reads, and what only this door
/// needs, computed once per connection rather than per request.
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

/// What the access log and metrics need once the response head is known.
struct Done<'a> {
    method: &'a str,
    host: &'a str,
    path: &'a str,
    decision: Outcome,
    rule: Option<&'a str>,
    reason: Option<&'static str>,
    client_ip: IpAddr,
    principal: Option<&'a str>,
}

/// The target forwarded upstream: the canonical path that was decided on plus the raw query,
/// without the query parameters that carry credentials. `None` when it is not a valid URI.
pub fn upstream_uri(
    upstream: &crate::upstream::Upstream,
    allow: &crate::decision::Allow,
    facts: &RequestFacts<'_>,
    original: &http::Uri,
) -> Option<http::Uri> {
    let query = match (&allow.query_credentials, facts.query) {
        (Some(names), Some(q)) => credential::strip_query(q, names),
        (_, q) => q.map(std::borrow::Cow::Borrowed),
    };
    // Usually the client's origin-form target is already exactly that: share it, no copy.
    if upstream.uri_is_path_and_query()
        && original.scheme().is_none()
        && original.path() == facts.path
        && original.query() == query.as_deref()
    {
        return Some(original.clone());
    }
    upstream.uri(&facts.path, query.as_deref())
}

/// Rewrites the (hop-by-hop-stripped) headers of an allowed request for its upstream: the
/// core's [`HeaderMutation`] (spoofed and credential headers removed, identity headers set),
/// then the forwarding headers, the request id and `Host`. The one place this happens: the
/// proxy door and `portcullis explain` both call it.
pub fn upstream_headers(
    headers: &mut http::HeaderMap,
    snapshot: &Snapshot,
    mutation: HeaderMutation,
    origin: Origin,
    request_id: &HeaderValue,
    upstream: &crate::upstream::Upstream,
) {
    // Room for what is added below (identity, five forwarding headers, request id), so the
    // map grows once rather than once per insert past its parsed size.
    headers.reserve(mutation.set.len() + 6);
    mutation.apply(headers);
    forwarded::apply(headers, &origin);
    headers.insert(
        snapshot.server.request_id_header.clone(),
        request_id.clone(),
    );
    if upstream.preserve_host {
        headers.insert(header::HOST, origin.authority);
    } else {
        headers.insert(header::HOST, upstream.host_header.clone());
    }
}

/// Handles one request; never fails: every failure is a response.
pub async fn handle(
    shared: &Shared,
    conn: &Conn,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let start = Instant::now();
    // One snapshot for the whole request, even if a reload lands meanwhile.
    let snapshot = shared.current.load_full();
    let (mut parts, body) = req.into_parts();
    let request_id =
        request_id::take_or_generate(&parts.headers, &snapshot.server.request_id_header);
    let ctx = Ctx {
        shared,
        snapshot: &snapshot,
        conn,
        request_id: &request_id,
        start,
    };

    if hop_by_hop::is_h2c_upgrade(&parts.headers) {
        shared.metrics.bad_request("h2c_upgrade");
        let resp = close(
            error_response(StatusCode::BAD_REQUEST, "h2c_upgrade", &request_id),
            parts.version,
        );
        return ctx.finish(
            resp,
            &Done {
                method: parts.method.as_str(),
                host: loggable_host(&parts),
                path: loggable(parts.uri.path()),
                decision: Outcome::Error,
                rule: None,
                reason: Some("h2c_upgrade"),
                client_ip: conn.info.peer.ip(),
                principal: None,
            },
        );
    }
    // Why: hyper reads heads up to both limits together, so that these answers carry the
    // usual refusal body (RFC 9112 §3: 414 for a long target) instead of hyper's bare 431.
    // Regression: tests (it) proxy::long_target_is_414_and_long_head_431_with_a_body
    if let Some((status, reason)) = over_head_limits(&parts, &snapshot.server) {
        shared.metrics.bad_request(reason);
        let resp = close(error_response(status, reason, &request_id), parts.version);
        return ctx.finish(
            resp,
            &Done {
                method: parts.method.as_str(),
                host: loggable_host(&parts),
                path: loggable(parts.uri.path()),
                decision: Outcome::Error,
                rule: None,
                reason: Some(reason),
                client_ip: conn.info.peer.ip(),
                principal: None,
            },
        );
    }
    hop_by_hop::strip(&mut parts.headers);

    let facts = match RequestFacts::from_parts(&parts, &conn.info, &snapshot.server.trusted_proxies)
    {
        Ok(f) => f,
        Err(e) => {
            shared.metrics.bad_request(e.as_str());
            let resp = close(
                error_response(e.status(), e.as_str(), &request_id),
                parts.version,
            );
            return ctx.finish(
                resp,
                &Done {
                    method: parts.method.as_str(),
                    host: loggable_host(&parts),
                    path: loggable(parts.uri.path()),
                    decision: Outcome::Error,
                    rule: None,
                    reason: Some(e.as_str()),
                    client_ip: conn.info.peer.ip(),
                    principal: None,
                },
            );
        }
    };

    let decision = decision::decide(&snapshot, &facts, &mut NoTrace).await;
    let mut allow = match decision {
        Decision::Deny(d) => {
            shared.metrics.denial(d.kind.as_str());
            let resp = refusal_response(d.refusal(&snapshot.challenges, &request_id));
            return ctx.finish(
                resp,
                &Done {
                    method: facts.method.as_str(),
                    host: &facts.host,
                    path: &facts.path,
                    decision: Outcome::Deny,
                    rule: d.rule.as_ref().map(|r| &*r.0),
                    reason: Some(d.kind.as_str()),
                    client_ip: facts.client_ip,
                    principal: d.principal.as_deref().map(|p| &*p.id),
                },
            );
        }
        Decision::Allow(a) => a,
    };
    let Some(upstream) = allow
        .upstream
        .and_then(|i| snapshot.upstreams.get(i))
        .cloned()
    else {
        // Compile guarantees allow rules have an upstream; answer safely if not.
        let resp = error_response(StatusCode::BAD_GATEWAY, "no_upstream", &request_id);
        return ctx.finish(
            resp,
            &Done {
                method: facts.method.as_str(),
                host: &facts.host,
                path: &facts.path,
                decision: Outcome::Error,
                rule: Some(&allow.rule.0),
                reason: Some("no_upstream"),
                client_ip: facts.client_ip,
                principal: None,
            },
        );
    };

    // Everything the forwarded request and the log need from the facts, before the head is
    // taken apart.
    // Query credentials never go further (URLs end up in logs); other credentials only when
    // the authenticator says so: what was verified here is not replayed upstream.
    let uri = upstream_uri(&upstream, &allow, &facts, &parts.uri);
    let client_ip = facts.client_ip;
    // Copied only when an access-log line will be written (an empty Box does not allocate).
    let (log_host, log_path): (Box<str>, Box<str>) = if snapshot.access_log {
        (facts.host.as_ref().into(), facts.path.as_ref().into())
    } else {
        (Box::default(), Box::default())
    };
    let origin = Origin::of(&facts, &parts, &conn.peer_text);
    drop(facts);
    if allow.identity_refused > 0 {
        shared
            .metrics
            .identity_headers_refused
            .inc_by(allow.identity_refused as u64);
        tracing::warn!(rule = %allow.rule.0, refused = allow.identity_refused, "Identity header values with forbidden characters were left out");
    }
    let mutation = std::mem::take(&mut allow.mutation);
    let method = parts.method.clone();
    let principal = allow.principal.as_deref().map(|p| &*p.id);
    let rule: &str = &allow.rule.0;
    let done = |decision, reason| Done {
        method: method.as_str(),
        host: &log_host,
        path: &log_path,
        decision,
        rule: Some(rule),
        reason,
        client_ip,
        principal,
    };

    let Some(uri) = uri else {
        let resp = error_response(StatusCode::BAD_REQUEST, "invalid_target", &request_id);
        return ctx.finish(resp, &done(Outcome::Error, Some("invalid_target")));
    };

    // Size limit: refuse early when the client announces too much.
    let limit = snapshot.server.max_body_bytes;
    let announced = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit) {
        let resp = error_response(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", &request_id);
        return ctx.finish(resp, &done(Outcome::Error, Some("body_too_large")));
    }

    upstream_headers(
        &mut parts.headers,
        &snapshot,
        mutation,
        origin,
        &request_id,
        &upstream,
    );
    parts.uri = uri;
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    // Why: a body whose framing is already broken (bad chunk size, bare LF) is refused with
    // nothing sent upstream, rather than half-forwarded and reported as a 502.
    // Regression: tests (it) proxy::malformed_chunked_body_is_400_and_never_reaches_the_upstream
    let body = match RequestBody::prefetch(body, limit, snapshot.server.header_read_timeout).await {
        Ok(b) => b,
        Err(e) => {
            let (status, reason) = match e {
                PrefetchError::Malformed => (StatusCode::BAD_REQUEST, "invalid_body"),
                PrefetchError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
                PrefetchError::Timeout => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            };
            shared.metrics.bad_request(reason);
            let resp = close(error_response(status, reason, &request_id), parts.version);
            return ctx.finish(resp, &done(Outcome::Error, Some(reason)));
        }
    };
    let client_fault = body.fault();
    let upstream_req = Request::from_parts(parts, body);

    let result = tokio::time::timeout(upstream.response_timeout, upstream.send(upstream_req)).await;
    let (resp, outcome, reason) = match result {
        Err(_) => {
            shared.metrics.upstream_error("timeout");
            (
                error_response(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout", &request_id),
                Outcome::Error,
                Some("upstream_timeout"),
            )
        }
        Ok(Err(e)) => {
            // The one place upstream failures become statuses for this door.
            let (status, kind) = match &e {
                SendError::Http(h) if body::is_length_limit(h) => {
                    (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
                }
                // The client's body broke mid-way (framing, abort): its fault, not the
                // upstream's.
                SendError::Http(_) if client_fault.load(std::sync::atomic::Ordering::Relaxed) => {
                    (StatusCode::BAD_REQUEST, "invalid_body")
                }
                SendError::ConnectTimeout => {
                    (StatusCode::GATEWAY_TIMEOUT, "upstream_connect_timeout")
                }
                SendError::Connect(_) => (StatusCode::BAD_GATEWAY, "upstream_unavailable"),
                SendError::Tls(_) => (StatusCode::BAD_GATEWAY, "upstream_tls"),
                SendError::Http(_) => (StatusCode::BAD_GATEWAY, "upstream_error"),
            };
            shared.metrics.upstream_error(kind);
            tracing::debug!(upstream = &*upstream.name, error = %e, reason = kind, "Upstream request failed");
            (
                error_response(status, kind, &request_id),
                Outcome::Error,
                Some(kind),
            )
        }
        Ok(Ok(resp)) => {
            let (mut parts, body) = resp.into_parts();
            hop_by_hop::strip(&mut parts.headers);
            // (The request id is added by `finish`, as to every answer.)
            parts.version = Version::HTTP_11;
            (
                Response::from_parts(parts, body::streamed(body)),
                Outcome::Allow,
                None,
            )
        }
    };
    ctx.finish(resp, &done(outcome, reason))
}

/// What every answer of one request is counted, logged and tagged with.
struct Ctx<'a> {
    shared: &'a Shared,
    snapshot: &'a Snapshot,
    conn: &'a Conn,
    request_id: &'a HeaderValue,
    start: Instant,
}

impl Ctx<'_> {
    /// Counts, logs and returns the response.
    fn finish(&self, mut resp: Response<ResponseBody>, done: &Done<'_>) -> Response<ResponseBody> {
        // Every answer, forwarded or generated, names the request id.
        resp.headers_mut().insert(
            self.snapshot.server.request_id_header.clone(),
            self.request_id.clone(),
        );
        let latency = self.start.elapsed();
        let status = resp.status().as_u16();
        self.shared.metrics.request(done.decision, status, latency);
        if self.snapshot.access_log {
            access_log::log(&AccessRecord {
                listener: &self.conn.info.listener,
                method: done.method,
                host: done.host,
                path: done.path,
                status,
                decision: match done.decision {
                    Outcome::Allow => "allow",
                    Outcome::Deny => "deny",
                    Outcome::Error => "error",
                },
                rule: done.rule,
                reason: done.reason,
                request_id: self.request_id.to_str().unwrap_or("-"),
                principal: done.principal,
                client_ip: done.client_ip,
                latency,
            });
        }
        resp
    }
}

/// At most this much of a refused request's host or path is logged.
const LOGGED_MAX: usize = 256;

/// A refused request's raw path for the log, cut at [`LOGGED_MAX`] bytes (the URI grammar
/// already excludes control characters and spaces).
fn loggable(s: &str) -> &str {
    if s.is_empty() {
        return "-";
    }
    let mut end = s.len().min(LOGGED_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A refused request's raw host for the log: the authority, else a visible-ASCII `Host`.
fn loggable_host(parts: &http::request::Parts) -> &str {
    match parts.uri.authority() {
        Some(a) => loggable(a.as_str()),
        None => parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map_or("-", loggable),
    }
}

/// A target over `max_target_bytes` (414) or a head over `max_header_bytes` (431): the head's
/// size counted as the request line and `name: value` lines with their line ends.
fn over_head_limits(
    parts: &http::request::Parts,
    s: &crate::snapshot::ServerSettings,
) -> Option<(StatusCode, &'static str)> {
    let target = parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len())
        + parts.uri.authority().map_or(0, |a| a.as_str().len());
    if target > s.max_target_bytes {
        return Some((StatusCode::URI_TOO_LONG, "uri_too_long"));
    }
    let mut head = target + parts.method.as_str().len() + 12;
    for (name, value) in &parts.headers {
        head += name.as_str().len() + value.len() + 4;
    }
    (head > s.max_header_bytes).then_some((
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
    ))
}

/// After a malformed request the connection is not reused (HTTP/1: `Connection: close`; the
/// header is illegal in HTTP/2, where streams are independent).
fn close(mut resp: Response<ResponseBody>, version: Version) -> Response<ResponseBody> {
    if version <= Version::HTTP_11 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// A short JSON error naming the reason code and the request id; never any internals.
pub fn error_response(
    status: StatusCode,
    reason: &'static str,
    request_id: &HeaderValue,
) -> Response<ResponseBody> {
    refusal_response(Refusal {
        status,
        challenge: None,
        location: None,
        body: Some(outcome::error_body(reason, request_id, None)),
        throttle: None,
    })
}

/// The HTTP response for a refusal; never cached.
pub fn refusal_response(mut r: Refusal) -> Response<ResponseBody> {
    let mut resp = match r.body.take() {
        Some(b) => {
            let mut resp = Response::new(body::full(b));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        None => Response::new(body::full(bytes::Bytes::new())),
    };
    *resp.status_mut() = r.status;
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for (name, value) in r.headers() {
        h.insert(name, value);
    }
    resp
}
