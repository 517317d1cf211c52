//! One request through the proxy door: facts → decision → forward or refuse.
//!
//! Order matters: hop-by-hop headers are removed *before* the facts are built, so the decision
//! sees exactly the headers the upstream will get (plus the ones the gateway adds). The
//! canonical path that was decided on is the path that is forwarded.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;

pub use super::forwarded::Origin;
use super::{cors, forwarded, upgrade};
use crate::authn::credential;
use crate::authz::edge::Edge;
use crate::body::{self, PrefetchError, RequestBody, ResponseBody};
use crate::decision::{self, Decision, HeaderMutation, NoTrace, Refusal};
use crate::request::RequestFacts;
use crate::request::facts::{ConnInfo, Door};
use crate::request::grpc::Grpc;
use crate::server::uploads::Held;
use crate::server::{Conn, Shared, hop_by_hop, request_id};
use crate::snapshot::Snapshot;
use crate::telemetry::access_log::{self, AccessRecord};
use crate::telemetry::metrics::Outcome;
use crate::telemetry::trace_context::TraceContext;
use crate::upstream::SendError;

/// Why a request does not get its upstream's answer. Every early exit of every phase is one
/// of these, turned into a response in one place ([`Ctx::rescue`]).
pub(super) enum Failure {
    /// Refused before any rule: the head or the body is malformed or over a limit. The
    /// connection is not reused.
    Malformed(StatusCode, &'static str),
    /// Denied by the decision (boxed: it is the large variant, and the rare path).
    Denied(Box<crate::decision::Deny>),
    /// Allowed, but it could not be forwarded or answered (the upstream, its timeout).
    Failed(StatusCode, &'static str),
    /// Allowed, but the rule refuses what the request asks beyond itself (an upgrade it does
    /// not relay, a WebSocket from an origin its CORS does not name): a 403 denial, counted
    /// as one at every door.
    Refused(&'static str),
    /// An answer whose head came after its credential expired or its upload's re-check
    /// denied: sent whole if short, else refused ([`late_answer`]). Read by [`handle`], so
    /// that the rare wait for it does not grow every request's future; the refusal, the
    /// reason, and whether it is still to be counted.
    Late(Box<(Response<ResponseBody>, &'static str, bool)>),
}

/// What the access log learns as a request goes through the phases; copied out of the
/// request only when a line will be written.
#[derive(Default)]
pub(super) struct Log {
    pub(super) host: Box<str>,
    pub(super) path: Box<str>,
    pub(super) rule: Option<crate::authz::route::RuleId>,
    pub(super) principal: Option<Arc<crate::authn::principal::Principal>>,
    pub(super) client_ip: Option<IpAddr>,
}

/// The target forwarded upstream: the canonical path that was decided on plus the raw query,
/// without the query parameters that carry credentials or override the method. `None` when
/// it is not a valid URI.
pub fn upstream_uri(
    upstream: &crate::upstream::Upstream,
    allow: &crate::decision::Allow,
    facts: &RequestFacts<'_>,
    original: &http::Uri,
) -> Option<http::Uri> {
    // Why: `POST /users/1?_method=DELETE` passed a rule denying DELETE, and Symfony, Laravel
    // and Express's method-override served a DELETE; the query form goes as the header forms
    // (`X-HTTP-Method-Override`) always did. Regression: tests (it)
    // proxy::query_method_override_never_reaches_the_upstream
    let overrides = facts.query.is_some_and(credential::may_override_method);
    let query = match (&allow.query_credentials, facts.query) {
        (names, Some(q)) if names.is_some() || overrides => {
            let readings = names
                .as_deref()
                .map(credential::readings_of)
                .unwrap_or_default();
            credential::strip_query_pairs(q, |pair| {
                credential::carries_named(pair, &readings)
                    || (overrides && credential::pair_overrides_method(pair))
            })
        }
        (_, q) => q.map(std::borrow::Cow::Borrowed),
    };
    // Usually the client's origin-form target is already exactly that: share it, no copy.
    if upstream.uri_is_path_and_query()
        && original.scheme().is_none()
        && original.path() == facts.forwarded_path()
        && original.query() == query.as_deref()
    {
        return Some(original.clone());
    }
    upstream.uri(facts.forwarded_path(), query.as_deref())
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
    // Room for what is added below (identity, five forwarding headers, request id) and the
    // door's `traceparent`, so the map grows once rather than once per insert past its
    // parsed size.
    headers.reserve(mutation.set.len() + 7);
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

/// Handles one request; never fails: every failure is a response. The phases, in order:
/// [`facts`] (the head checked, hop-by-hop headers gone, the door-neutral facts), the
/// decision, [`upstream_request`] (target, headers, body), [`send`] and [`respond`]; any of
/// them may end the request with a [`Failure`], which [`Ctx::rescue`] answers.
pub async fn handle(
    shared: &Arc<Shared>,
    conn: &Conn,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let start = Instant::now();
    // One snapshot for the whole request, even if a reload lands meanwhile.
    let snapshot = shared.current.load_full();
    let (parts, body) = req.into_parts();
    // Read only for a body (see the refusal below).
    let awaits_continue =
        !http_body::Body::is_end_stream(&body) && parts.headers.contains_key(header::EXPECT);
    let request_id =
        request_id::take_or_generate(&parts.headers, &snapshot.server.request_id_header);
    // A new span id for this hop; the client's trace kept when its `traceparent` is valid.
    let trace = trace_of(&snapshot, &parts.headers).map(|(cx, _)| cx);
    let mut ctx = Ctx {
        shared,
        snapshot: &snapshot,
        conn,
        request_id: &request_id,
        start,
        method: parts.method.clone(),
        version: parts.version,
        grpc: Grpc::of(&parts.headers),
        te_trailers: false,
        finished: false,
        allowed: false,
        log: Log::default(),
        outcome: Outcome::Allow,
        reason: None,
        failed_open: None,
        trace,
        upgrade: None,
        cors: None,
    };
    let resp = match forward(&mut ctx, parts, body).await {
        Ok(resp) => resp,
        Err(Failure::Late(late)) => {
            let (resp, reason, count) = *late;
            let metrics = count.then(|| Arc::clone(&ctx.shared.metrics));
            match late_answer(resp, reason, metrics).await {
                Ok(resp) => resp,
                Err(failure) => ctx.rescue(failure),
            }
        }
        Err(failure) => {
            let refused_early = !matches!(failure, Failure::Failed(..));
            let resp = ctx.rescue(failure);
            // Why: a refusal leaves the body unread. hyper drains a body that came with the
            // head and keeps the connection, and ends it otherwise, without saying so; a
            // client waiting to be asked for its body (`Expect: 100-continue`) sent none, so
            // its connection always ends: the refusal says so. Reading a body here instead
            // held the request's `max_in_flight` permit while a client trickled it (every
            // permit taken by stalled refused uploads, outside the upload caps).
            // Regression: tests (it) smuggling::a_refused_body_ends_the_connection_and_the_refusal_says_so
            if awaits_continue && refused_early {
                close(resp, ctx.version)
            } else {
                resp
            }
        }
    };
    ctx.finish(resp)
}

/// Every phase of a request the decision allows, up to the upstream's answer.
async fn forward(
    ctx: &mut Ctx<'_>,
    mut parts: http::request::Parts,
    body: Incoming,
) -> Result<Response<ResponseBody>, Failure> {
    let snapshot = ctx.snapshot;
    let conn = ctx.conn;
    check_head(ctx, &mut parts)?;
    let (mut allow, uri, origin, upstream) = {
        let mut facts = facts(ctx, &parts, &conn.info)?;
        if let Some(answer) = cors::preflight(ctx, &facts) {
            return Ok(answer);
        }
        facts.trace = ctx.trace.as_ref();
        let decision = decision::decide(snapshot, &facts, &mut NoTrace).await;
        let edge = match &decision {
            Decision::Allow(a) => a.edge.as_ref(),
            Decision::Deny(d) => d.edge.as_ref(),
        };
        // Why: an answer without `Origin` is cached too, and served to the next page that
        // asks: it must say that it varies with `Origin`, and carry no upstream's own
        // `Access-Control-Allow-Origin: *` past the rule's word.
        // Regression: tests (it) edge::cors_rule_answers_without_origin_vary_and_carry_no_upstream_acao
        if let Some(edge) = edge.filter(|e| e.cors.is_some()) {
            let origin = crate::authz::edge::sole_origin(&parts.headers).cloned();
            ctx.cors = Some((Arc::clone(edge), origin));
        }
        let allow = match decision {
            Decision::Deny(d) => return Err(Failure::Denied(Box::new(d))),
            Decision::Allow(a) => a,
        };
        ctx.allowed = true;
        ctx.failed_open = allow.failed_open.map(crate::decision::FailedOpen::as_str);
        ctx.log.rule = Some(allow.rule.clone());
        ctx.log.principal.clone_from(&allow.principal);
        // Compile guarantees allow rules have an upstream; answer safely if not.
        let upstream = allow
            .upstream
            .and_then(|i| snapshot.upstreams.get(i))
            .cloned()
            .ok_or(Failure::Failed(StatusCode::BAD_GATEWAY, "no_upstream"))?;
        // Query credentials never go further (URLs end up in logs).
        let uri = upstream_uri(&upstream, &allow, &facts, &parts.uri);
        let origin = Origin::of(&facts, &parts, &conn.peer_text);
        (allow, uri, origin, upstream)
    };
    // An upgrade the rule relays: a tunnel of its own (`proxy::tunnel`). Any other HTTP/1.1
    // upgrade was stripped with the hop-by-hop headers and goes upstream as a plain request;
    // an extended CONNECT has no plain request to become.
    let asked = ctx.upgrade.take();
    let edge = allow.edge.clone();
    let relayed = asked.as_ref().and_then(|a| {
        edge.as_ref()
            .filter(|e| e.relays(a.protocols.as_bytes()))
            .and_then(|e| e.upgrade.as_ref())
    });
    if asked.as_ref().is_some_and(|a| a.h2) && relayed.is_none() {
        return Err(Failure::Refused("upgrade_not_allowed"));
    }
    if let (Some(asked), Some(_)) = (asked, relayed)
        && let Some(on_client) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    {
        // Boxed: the upgrade's state (what a re-check needs, the upgrades, a connect and maybe
        // a TLS handshake) is large; inline, every request's future would carry it and be
        // copied with it.
        let upgrade = Upgrading {
            asked,
            on_client,
            edge: edge.clone(),
        };
        return Box::pin(tunnel(
            ctx, allow, parts, body, uri, origin, &upstream, upgrade,
        ))
        .await;
    }
    // A rule that re-checks: its long responses are watched too (`proxy::watched`).
    let mut watch = edge
        .as_ref()
        .and_then(|e| e.reauthorize_every)
        .map(|every| {
            // Boxed: it lives across the exchange, and most requests have none to carry.
            Box::new((
                every,
                live_expiry(&allow, &snapshot.clock),
                upgrade::Recheckable {
                    tunnel: None,
                    head: upgrade::head_copy(&parts),
                    conn: conn.info.clone(),
                    shared: Arc::clone(ctx.shared),
                },
            ))
        });
    // A rule without re-checks: its long responses are still cut at the credential's
    // expiry (`PooledBody::with_expiry`).
    let mut expires_at = match watch {
        None => live_expiry(&allow, &snapshot.clock),
        Some(_) => None,
    };
    let watched = expires_at.is_some() || watch.is_some();
    // What the decision adds to the client's response (a shadow-mode limit's header), as
    // the decision doors hand it to their peer.
    let to_client = std::mem::take(&mut allow.mutation.response);
    let timeouts = allow.timeouts.clone();
    // The hash key is the header as the upstream receives it (an identity header the
    // gateway set, never a client's copy of it), but for `host`: the host the client asked
    // for, which the rewritten head no longer says (every request went to one endpoint).
    // Regression: tests (it) upstreams::hashing_reads_the_header_the_client_sent
    let host_key = upstream.host_hash_key(|| client_host(&parts));
    let principal = match upstream.hash {
        Some(crate::upstream::HashOn::Principal) => allow.principal.clone(),
        _ => None,
    };
    upstream_head(ctx, allow, &mut parts, uri, origin, &upstream)?;
    let (share, mut body) = upstream_body(ctx, body).await?;
    // The client's body still coming (an upload, a client-streaming call): the exchange is
    // watched from now on, its upload as its answer (`watched::exchange`).
    let mut answer_cut = None;
    if watched && body.streams() {
        let (at, rechecks) = match watch.take() {
            Some(w) => {
                let (every, at, recheck) = *w;
                (at, Some((every, recheck)))
            }
            None => (expires_at.take(), None),
        };
        let (upload_cut, cut) = super::watched::exchange(
            at,
            rechecks,
            snapshot.clock.clone(),
            Arc::clone(&ctx.shared.metrics),
        );
        body.cut_by(upload_cut);
        answer_cut = Some(cut);
    }
    let client_fault = body.fault();
    let req = Request::from_parts(parts, body);
    let route = timeouts.as_deref().copied().unwrap_or_default();
    let opts = crate::upstream::SendOptions {
        connect_timeout: route.connect.unwrap_or(upstream.connect_timeout),
        response_timeout: route.response.unwrap_or(upstream.response_timeout),
        hash_key: host_key
            .or_else(|| upstream.hash_key(req.headers(), principal.as_deref().map(|p| &*p.id))),
    };
    // A `101` nobody asked for is refused by the pool (`upstream_invalid_response`): an
    // upgrade the rule relays went to `tunnel` above, on a connection of its own.
    // The client's body still streaming, as activity the response's idle timer counts.
    let upload = req.body().progress();
    let resp = send(ctx, &upstream, req, opts, &client_fault).await?;
    // Why: an answer whose head came after its watch fired (the credential expired, or a
    // re-check denied, while the upstream worked) was cut at its first frame, before anything
    // reached the client: HTTP/1.1 clients got no status line at all, HTTP/2 ones a 200 and a
    // reset, and the access log said 200. A short answer (read whole, up to `SHORT_ANSWER`
    // bytes, within `SHORT_READ`) is the upstream's answer to what was authorized, maybe
    // after it acted on it: it goes out whole. Anything longer or slower (a stream, a
    // download), or with trailers, has sent nothing yet: refused, as an upload cut before
    // its answer is (401 `stream_credential_expired`, 403 `stream_reauthorization_denied`).
    // Regression: tests (it)
    // edge::an_answer_that_comes_after_the_credential_expired_goes_out_whole_or_not_at_all
    let late = match &mut answer_cut {
        // The upload's watch (counted when it fired).
        Some(cut) => cut.try_recv().ok(),
        // When the credential ends (nothing has taken either yet without an upload's watch).
        None => expires_at
            .or_else(|| watch.as_ref().and_then(|w| w.1))
            .is_some_and(|at| snapshot.clock.unix_secs() >= at)
            .then_some(body::STREAM_EXPIRED),
    };
    let late = match late {
        Some(reason) => {
            // Counted here unless the upload's watch counted it when it fired.
            let counted = answer_cut.is_some();
            (watch, expires_at, answer_cut) = (None, None, None);
            Some((reason, counted))
        }
        None => None,
    };
    // The answer begins, and the request's `max_in_flight` permit goes: its share too, even
    // if the body still streams (a gRPC stream answered at once).
    if let Some(share) = share {
        share.release();
    }
    let cut_as_grpc = watched && ctx.grpc == Some(Grpc::Native) && ctx.version == Version::HTTP_2;
    let expiry = expires_at.map(|at| (at, snapshot.clock.clone(), Arc::clone(&ctx.shared.metrics)));
    let mut resp = respond(
        resp,
        (route.idle.unwrap_or(upstream.idle_timeout), upload),
        expiry,
        ctx.te_trailers,
        ctx.version == Version::HTTP_2,
        (&ctx.shared.metrics, &upstream.name),
    );
    // Replacing the upstream's own: two `RateLimit-Remaining` would leave the client to
    // guess which counts.
    for (name, value) in to_client {
        resp.headers_mut().insert(name, value);
    }
    let resp = match (watch, answer_cut) {
        (_, Some(cut)) => resp.map(|body| super::watched::cut_by(body, cut)),
        (None, None) => resp,
        (Some(w), None) => resp.map(|body| {
            let (every, expires_at, recheck) = *w;
            super::watched::watch(
                body,
                expires_at,
                every,
                recheck,
                snapshot.clock.clone(),
                Arc::clone(&ctx.shared.metrics),
            )
        }),
    };
    if let Some((reason, counted)) = late {
        return Err(Failure::Late(Box::new((resp, reason, !counted))));
    }
    Ok(match cut_as_grpc {
        true => resp.map(super::watched::grpc_ending),
        false => resp,
    })
}

/// A late answer ([`Failure::Late`]): whole if [`read_short`] reads it, else refused for
/// `reason`, counted in `metrics` when given (an upload's watch counted it already).
fn late_answer(
    resp: Response<ResponseBody>,
    reason: &'static str,
    metrics: Option<Arc<crate::telemetry::metrics::Metrics>>,
) -> std::pin::Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Failure>> + Send>> {
    Box::pin(async move {
        if let Some(whole) = read_short(resp).await {
            return Ok(whole);
        }
        if let Some(m) = metrics {
            m.limit(reason);
        }
        Err(Failure::Failed(cut_status(reason), reason))
    })
}

/// The status of a request whose credential's watch cut it (`reason`, a [`body`] cut
/// reason): 403 for a re-check's denial, else 401 (the credential expired).
fn cut_status(reason: &str) -> StatusCode {
    match reason {
        body::STREAM_DENIED => StatusCode::FORBIDDEN,
        _ => StatusCode::UNAUTHORIZED,
    }
}

/// The answer with its body read whole, when it is at most [`SHORT_ANSWER`] bytes, comes
/// within [`SHORT_READ`] and has no trailers (a whole body cannot carry them); else `None`.
async fn read_short(resp: Response<ResponseBody>) -> Option<Response<ResponseBody>> {
    use http_body_util::BodyExt as _;
    let (mut head, mut body) = resp.into_parts();
    let read = async {
        let mut data = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            match frame.ok()?.into_data() {
                Ok(d) if data.len() + d.len() <= SHORT_ANSWER => data.extend_from_slice(&d),
                // Over the budget, or trailers.
                _ => return None,
            }
        }
        Some(data.freeze())
    };
    let bytes = tokio::time::timeout(SHORT_READ, read).await.ok()??;
    // The length is the body's own now (the upstream may have chunked it).
    head.headers.remove(header::CONTENT_LENGTH);
    Some(Response::from_parts(
        head,
        http_body_util::Either::Left(http_body_util::Full::new(bytes)),
    ))
}

/// The most bytes of an answer that came after its credential expired that still go out
/// whole ([`forward`]).
const SHORT_ANSWER: usize = 64 * 1024;

/// How long such an answer may take to arrive whole once its head has.
const SHORT_READ: std::time::Duration = std::time::Duration::from_secs(1);

/// What an upgrade the rule relays brings to [`tunnel`].
struct Upgrading {
    asked: upgrade::Asked,
    on_client: hyper::upgrade::OnUpgrade,
    edge: Option<Arc<Edge>>,
}

/// An upgrade the rule relays: the upgrade request upstream, then the tunnel
/// (`proxy::upgrade`, `proxy::tunnel`).
/// When what the request is allowed to open (a long response, a tunnel) ends with its
/// credential ([`crate::authn::principal::Principal::ends_at`]).
pub(super) fn live_expiry(
    allow: &crate::decision::Allow,
    clock: &crate::clock::Clock,
) -> Option<u64> {
    allow
        .principal
        .as_ref()
        .and_then(|p| p.ends_at(clock.unix_secs()))
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site: the request's phases so far"
)]
async fn tunnel(
    ctx: &mut Ctx<'_>,
    allow: crate::decision::Allow,
    parts: http::request::Parts,
    body: Incoming,
    uri: Option<http::Uri>,
    origin: Origin,
    upstream: &crate::upstream::Upstream,
    upgrading: Upgrading,
) -> Result<Response<ResponseBody>, Failure> {
    let Upgrading {
        asked,
        on_client,
        edge,
    } = upgrading;
    let relayed = edge
        .as_ref()
        .and_then(|e| e.upgrade.as_ref())
        .ok_or(Failure::Refused("upgrade_not_allowed"))?;
    // Why: an upgrade request's body is refused (`upgrade::open`), but only once read ahead:
    // each such request from one client waited up to `header_read_timeout` for its first byte
    // with a `max_in_flight` permit, and 20 of them kept everyone else shed. A handshake has
    // no body: refused before anything waits for one.
    // Regression: tests (it) abuse::an_upgrade_with_a_body_is_refused_at_once
    if !http_body::Body::is_end_stream(&body) {
        return Err(Failure::Malformed(
            StatusCode::BAD_REQUEST,
            "upgrade_with_body",
        ));
    }
    // Browsers apply no CORS to a WebSocket (`Edge::refuses_upgrade_origin`).
    if edge
        .as_ref()
        .is_some_and(|e| e.refuses_upgrade_origin(&parts.headers))
    {
        // A denial, logged and counted as the refused preflight is (`proxy::cors`).
        return Err(Failure::Refused(
            crate::authz::edge::PreflightRefusal::Origin.as_str(),
        ));
    }
    let route = allow.timeouts.as_deref().copied().unwrap_or_default();
    let bounds = upgrade::Bounds {
        answer_idle: route.idle.unwrap_or(upstream.idle_timeout),
        idle: relayed.idle_timeout,
        lifetime: relayed.max_lifetime,
        expires_at: live_expiry(&allow, &ctx.snapshot.clock),
        recheck: edge
            .as_ref()
            .and_then(|e| e.reauthorize_every)
            .map(|every| {
                (
                    every,
                    upgrade::Recheckable {
                        tunnel: Some(asked.protocols.clone()),
                        head: upgrade::head_copy(&parts),
                        conn: ctx.conn.info.clone(),
                        shared: Arc::clone(ctx.shared),
                    },
                )
            }),
    };
    // As in `forward`: the upstream's header, but the client's host.
    let host_key = upstream.host_hash_key(|| client_host(&parts));
    let principal = match upstream.hash {
        Some(crate::upstream::HashOn::Principal) => allow.principal.clone(),
        _ => None,
    };
    // Why: the upgrade spent the budget, but its answer (a 101, an extended CONNECT's 200)
    // did not say what was left, as every other allowed answer does.
    // Regression: tests (it) edge::an_upgrade_is_told_what_its_limit_left
    let mut allow = allow;
    let to_client = std::mem::take(&mut allow.mutation.response);
    let (req, _) = upstream_request(ctx, allow, parts, body, uri, origin, upstream).await?;
    let response_timeout = route.response.unwrap_or(upstream.response_timeout);
    let opts = crate::upstream::SendOptions {
        connect_timeout: route.connect.unwrap_or(upstream.connect_timeout),
        response_timeout,
        hash_key: host_key
            .or_else(|| upstream.hash_key(req.headers(), principal.as_deref().map(|p| &*p.id))),
    };
    let mut resp = upgrade::open(ctx, upstream, req, asked, on_client, bounds, opts).await?;
    for (name, value) in to_client {
        resp.headers_mut().insert(name, value);
    }
    Ok(resp)
}

/// The host the client asked for: the target's authority (HTTP/2, absolute form), else
/// `Host`.
fn client_host(parts: &http::request::Parts) -> Option<&str> {
    match parts.uri.authority() {
        Some(a) => Some(a.as_str()),
        None => parts.headers.get(header::HOST)?.to_str().ok(),
    }
}

/// Phase 1: the head within its limits, no h2c upgrade, no transfer coding but `chunked`,
/// hop-by-hop headers removed.
fn check_head(ctx: &mut Ctx<'_>, parts: &mut http::request::Parts) -> Result<(), Failure> {
    // One walk over the names present. Every field read below (`Connection`, `Upgrade`,
    // `HTTP2-Settings`, `Transfer-Encoding`, `TE`) is in the fixed hop-by-hop set, so a head
    // without one (most heads) has nothing to refuse, relay or strip here, and skips a map
    // lookup per field (about 700 instructions of a plain request's 58 k, callgrind).
    let has_hop_by_hop = parts.headers.keys().any(hop_by_hop::is_fixed);
    if let Some((status, reason)) = head_refusal_of(parts, &ctx.snapshot.server, has_hop_by_hop) {
        return Err(ctx.malformed(parts, status, reason));
    }
    // Remembered before the hop-by-hop headers go: relayed only if the rule allows it. (An
    // extended CONNECT asks by its method and `:protocol`, not by a header.)
    if has_hop_by_hop || parts.method == http::Method::CONNECT {
        ctx.upgrade = upgrade::asked(parts);
    }
    if !has_hop_by_hop {
        return Ok(());
    }
    // `TE: trailers` is hop-by-hop but says the client takes trailers (gRPC needs it said):
    // the gateway relays trailers, so it says the same upstream, and keeps the upstream's
    // `Trailer` declaration, without which hyper sends an HTTP/1.1 client no trailer.
    ctx.te_trailers = takes_trailers(&parts.headers);
    hop_by_hop::strip(&mut parts.headers);
    Ok(())
}

/// Phase 2: the door-neutral facts (canonical path, host, client address).
fn facts<'p>(
    ctx: &mut Ctx<'_>,
    parts: &'p http::request::Parts,
    conn: &'p ConnInfo,
) -> Result<RequestFacts<'p>, Failure> {
    let snapshot = ctx.snapshot;
    let facts = match RequestFacts::from_parts(parts, conn, &snapshot.server.trusted_proxies) {
        Ok(facts) => facts,
        Err(e) => return Err(ctx.malformed(parts, e.status(), e.as_str())),
    };
    // Why: a client certificate is verified once, at the handshake. After a reload that drops
    // or replaces a client CA (a partner's, compromised), or that requires certificates,
    // kept-alive connections went on as the old config had admitted them. Such a
    // connection's request is misdirected (421) unless the current config admits it too
    // (`ListenerTls::still_admits`): the client retries on a new connection, verified anew.
    // Regression: tests (it) credentials::a_client_ca_change_ends_old_connections_authentication,
    // credentials::a_reload_requiring_certificates_binds_old_connections
    if let Some(tls) = &conn.tls
        && let Some(listener) = snapshot
            .listeners
            .iter()
            .find(|l| *l.name == *conn.listener)
        && !listener
            .tls
            .as_ref()
            .map_or(tls.client_cert.is_none(), |t| {
                t.still_admits(tls, &facts.host)
            })
    {
        return Err(ctx.malformed(
            parts,
            http::StatusCode::MISDIRECTED_REQUEST,
            "misdirected_request",
        ));
    }
    ctx.log.client_ip = Some(facts.client_ip);
    if snapshot.access_log {
        ctx.log.host = facts.host.as_ref().into();
        ctx.log.path = facts.path.as_ref().into();
    }
    Ok(facts)
}

/// Phase 3: the request for the upstream: the target decided on, the headers the core's
/// mutation and the forwarding headers make ([`upstream_head`]), the body within its limit,
/// what arrived with the head read first ([`upstream_body`]).
async fn upstream_request(
    ctx: &mut Ctx<'_>,
    allow: crate::decision::Allow,
    mut parts: http::request::Parts,
    body: Incoming,
    uri: Option<http::Uri>,
    origin: Origin,
    upstream: &crate::upstream::Upstream,
) -> Result<(Request<RequestBody>, Arc<crate::body::ClientFault>), Failure> {
    upstream_head(ctx, allow, &mut parts, uri, origin, upstream)?;
    // An upgrade's body is refused before this (`tunnel`): no share to give back.
    let (_, body) = upstream_body(ctx, body).await?;
    let client_fault = body.fault();
    Ok((Request::from_parts(parts, body), client_fault))
}

/// Phase 3, the head: target and headers for the upstream. Not `async`: on the plain path the
/// head and the body are made apart, so that no future holds both (a request's future is
/// copied whole at each layer that moves it).
fn upstream_head(
    ctx: &mut Ctx<'_>,
    mut allow: crate::decision::Allow,
    parts: &mut http::request::Parts,
    uri: Option<http::Uri>,
    origin: Origin,
    upstream: &crate::upstream::Upstream,
) -> Result<(), Failure> {
    let snapshot = ctx.snapshot;
    if allow.identity_refused > 0 {
        ctx.shared
            .metrics
            .identity_headers_refused(Door::Proxy, allow.identity_refused);
        tracing::warn!(rule = %allow.rule.0, refused = allow.identity_refused, "Identity header values with forbidden characters were left out");
    }
    let uri = uri.ok_or(Failure::Failed(StatusCode::BAD_REQUEST, "invalid_target"))?;
    // Size limit: refuse early when the client announces too much.
    let limit = snapshot.server.max_body_bytes;
    let announced = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > limit) {
        return Err(Failure::Failed(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ));
    }
    // Why: `Content-Length: 056` went upstream as sent; the gateway read 56, an upstream
    // reading a leading zero as octal (46) would frame the body elsewhere. The length the
    // gateway framed by is written in plain decimal.
    // Regression: tests (it) smuggling::framing_fields_in_another_spelling_never_reach_the_upstream
    // (Every value: an HTTP/2 client may send `56` and `056`, equal numbers h2 accepts.)
    if let Some(n) = announced
        && parts
            .headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .enumerate()
            .any(|(i, v)| i > 0 || (v.len() > 1 && v.as_bytes()[0] == b'0'))
    {
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    upstream_headers(
        &mut parts.headers,
        snapshot,
        std::mem::take(&mut allow.mutation),
        origin,
        ctx.request_id,
        upstream,
    );
    // Why: an HTTP/2 client splits `Cookie` into crumbs, one field each, which went to an
    // HTTP/1.1 upstream as several `Cookie` lines: servers that read the first lose the rest,
    // and those that join with a comma garble them. RFC 9113 §8.2.3 joins them with `; `
    // (one field suits an HTTP/2 upstream as well). An HTTP/1.1 client sends one.
    // Regression: tests (it) proxy::http2_cookie_crumbs_reach_the_upstream_as_one_field
    if ctx.version == http::Version::HTTP_2 {
        join_cookie_crumbs(&mut parts.headers);
    }
    if ctx.te_trailers {
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(trace) = &ctx.trace {
        trace.apply(&mut parts.headers);
    }
    parts.uri = uri;
    Ok(())
}

/// Whether the client's `TE` says it takes trailers (`TE: trailers`, maybe in a list).
pub(crate) fn takes_trailers(headers: &http::HeaderMap) -> bool {
    headers.get(header::TE).is_some_and(|v| {
        v.to_str().is_ok_and(|t| {
            t.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    })
}

/// The trace a request from a client with `headers` goes on with, when the gateway
/// propagates traces or exports spans: a new span of the client's valid trace, or a new
/// trace (sampled when spans are exported), and what the client sent.
pub(crate) fn trace_of(
    snapshot: &Snapshot,
    headers: &http::HeaderMap,
) -> Option<(TraceContext, crate::telemetry::trace_context::Received)> {
    (snapshot.trace_propagate || snapshot.otlp.is_some())
        .then(|| TraceContext::from_headers(headers, snapshot.otlp.is_some()))
}

/// Several `Cookie` fields as one, joined with `; `.
fn join_cookie_crumbs(headers: &mut http::HeaderMap) {
    let mut crumbs = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (crumbs.next(), crumbs.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for crumb in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(crumb.as_bytes());
    }
    // Joined valid values are a valid value.
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// Phase 3, the body: what arrived with the head read first, within the size limit. A body
/// still to come (to wait for, or to stream) takes its client's share of uploads first
/// (`server::uploads`), held until it has all arrived or its answer begins.
async fn upstream_body(
    ctx: &Ctx<'_>,
    body: Incoming,
) -> Result<(Option<Arc<Held>>, RequestBody), Failure> {
    let snapshot = ctx.snapshot;
    let share = || {
        let client = ctx.log.client_ip.unwrap_or(ctx.conn.info.peer.ip());
        // Uploads never hold more than half the permits: a /56 of /64s, each within its
        // share, leaves the rest to everyone else.
        let all = (snapshot.restart.max_in_flight / 2).max(1);
        ctx.shared
            .uploads
            .take(client, snapshot.server.max_uploads_per_client, all)
            .map(Some)
    };
    let limit = usize::try_from(snapshot.server.max_body_bytes).unwrap_or(usize::MAX);
    // Why: a body whose framing is already broken (bad chunk size, bare LF) is refused with
    // nothing sent upstream, rather than half-forwarded and reported as a 502.
    // Regression: tests (it) proxy::malformed_chunked_body_is_400_and_never_reaches_the_upstream
    let body = RequestBody::prefetch(
        body,
        &ctx.conn.bodies,
        limit,
        snapshot.server.header_read_timeout,
        share,
    )
    .await
    .map_err(|e| match e {
        PrefetchError::Malformed => Failure::Malformed(StatusCode::BAD_REQUEST, "invalid_body"),
        PrefetchError::TooLarge => {
            Failure::Malformed(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
        }
        PrefetchError::Timeout => Failure::Malformed(StatusCode::REQUEST_TIMEOUT, "body_timeout"),
        PrefetchError::Busy(over) => {
            ctx.shared.metrics.limit(over.label());
            Failure::Failed(StatusCode::SERVICE_UNAVAILABLE, "overloaded")
        }
    })?;
    Ok((body.share(), body))
}

/// Phase 4: the exchange with the upstream, within its response timeout. The one place
/// upstream failures become statuses for this door.
async fn send(
    ctx: &Ctx<'_>,
    upstream: &crate::upstream::Upstream,
    req: Request<RequestBody>,
    opts: crate::upstream::SendOptions,
    client_fault: &crate::body::ClientFault,
) -> Result<Response<crate::upstream::PooledBody>, Failure> {
    // Boxed: the exchange's state (the pool's send, a retry's, hyper's response future) is
    // the largest part of a request's future, which is copied whole at each layer that moves
    // it; behind one allocation it is not (54.8 k -> 54.5 k instructions per plain request).
    let sent = Box::pin(upstream.send(req, opts)).await;
    // An upload its credential's watch cut (`watched::exchange`): a refusal of the request,
    // as its decision would now be.
    if sent.is_err()
        && let Some(reason) = client_fault.cut()
    {
        return Err(Failure::Failed(cut_status(reason), reason));
    }
    let e = match sent {
        Ok(resp) => return Ok(resp),
        Err(SendError::Timeout) => {
            ctx.shared
                .metrics
                .upstream_error(&upstream.name, "upstream_timeout");
            return Err(Failure::Failed(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
            ));
        }
        // The client's own pause, mid-body: not the upstream's error.
        Err(SendError::BodyStalled) => {
            return Err(Failure::Malformed(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
            ));
        }
        Err(e) => e,
    };
    let (status, kind) = match &e {
        SendError::Http(h) if body::is_length_limit(h) || client_fault.too_large() => {
            (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
        }
        // The client's body broke mid-way (framing, abort): its fault, not the upstream's.
        SendError::Http(_) if client_fault.any() => (StatusCode::BAD_REQUEST, "invalid_body"),
        e => e.status_and_kind(),
    };
    ctx.shared.metrics.upstream_error(&upstream.name, kind);
    tracing::debug!(upstream = &*upstream.name, error = %e, reason = kind, "Upstream request failed");
    Err(Failure::Failed(status, kind))
}

/// Phase 5: the upstream's answer for the client: hop-by-hop headers removed, HTTP/1.1, the
/// body cut if it idles past `idle` (while the client's body, `upload`, moves, it does not). (The request id is added by [`Ctx::finish`], as to every
/// answer.) `trailers`: the client said `TE: trailers`, so the fields the upstream declares in
/// `Trailer` are announced to it (and, to an HTTP/1.1 client, a gRPC answer's status fields
/// when it declares none: `client_h2` clients read trailers undeclared).
fn respond(
    resp: Response<crate::upstream::PooledBody>,
    (idle, upload): (std::time::Duration, Option<Arc<crate::body::Progress>>),
    expiry: Option<(
        u64,
        crate::clock::Clock,
        Arc<crate::telemetry::metrics::Metrics>,
    )>,
    trailers: bool,
    client_h2: bool,
    (metrics, upstream): (&Arc<crate::telemetry::metrics::Metrics>, &Arc<str>),
) -> Response<ResponseBody> {
    let (mut parts, mut body) = resp.into_parts();
    // Why: `Trailer` is hop-by-hop to the stripping below, and hyper's HTTP/1.1 server sends
    // only the trailer fields the response declares: an HTTP/1.1 client that asked for
    // trailers lost every one (a gRPC-Web or chunked upstream's checksums, `grpc-status`).
    // Regression: tests (it) upstreams::http1_client_asking_for_trailers_gets_them
    // Every `Trailer` line: `remove` would return the first only.
    // Regression: tests (it) upstreams::every_trailer_line_is_declared_to_the_client
    let declared: Vec<HeaderValue> = match trailers {
        false => Vec::new(),
        true => {
            let mut declared: Vec<HeaderValue> = parts
                .headers
                .get_all(header::TRAILER)
                .iter()
                .cloned()
                .collect();
            // Why: sent to HTTP/2 clients too, the made-up declaration reached gRPC callers as
            // response metadata (grpcio shows a `trailer` entry), trailers-only answers
            // included. Regression: tests (it) upstreams::h2c_upstream_relays_trailers
            // Not for a trailers-only answer (a call failed at once): its status is in the
            // head and the stream ended with it, so no trailer follows. (A status in the head
            // of an answer that goes on keeps the declaration: its trailers still reach the
            // client.) Regression: tests (it)
            // upstreams::http1_client_asking_for_trailers_gets_them (`/Fail`)
            let trailers_only =
                http_body::Body::is_end_stream(&body) && parts.headers.contains_key("grpc-status");
            if !client_h2
                && declared.is_empty()
                && !trailers_only
                && Grpc::of(&parts.headers) == Some(Grpc::Native)
            {
                // What a gRPC server ends with (its status, message and rich details);
                // other trailing metadata is not known before it arrives.
                declared.push(HeaderValue::from_static(
                    "grpc-status, grpc-message, grpc-status-details-bin",
                ));
            }
            declared
        }
    };
    body = body.with_idle_timeout(idle, upload, (Arc::clone(metrics), Arc::clone(upstream)));
    if let Some((at, clock, metrics)) = expiry {
        body = body.with_expiry(at, clock, metrics);
    }
    hop_by_hop::strip(&mut parts.headers);
    for declared in declared {
        parts.headers.append(header::TRAILER, declared);
    }
    parts.version = Version::HTTP_11;
    Response::from_parts(parts, body::streamed(body))
}

/// What every answer of one request is counted, logged and tagged with.
pub(super) struct Ctx<'a> {
    pub(super) shared: &'a Arc<Shared>,
    pub(super) snapshot: &'a Snapshot,
    pub(super) conn: &'a Conn,
    pub(super) request_id: &'a HeaderValue,
    pub(super) start: Instant,
    pub(super) method: http::Method,
    pub(super) version: Version,
    pub(super) log: Log,
    pub(super) outcome: Outcome,
    pub(super) reason: Option<&'static str>,
    /// The refusal a fail-open setting turned into the allow: the logged reason unless
    /// another (a failure, the client gone) says why the request ended.
    pub(super) failed_open: Option<&'static str>,
    /// This hop's trace context, when propagated or exported.
    pub(super) trace: Option<TraceContext>,
    /// The upgrade the client asked for (HTTP/1.1 `Upgrade`, HTTP/2 extended CONNECT).
    pub(super) upgrade: Option<upgrade::Asked>,
    /// The deciding rule's CORS settings, when it has some, and the request's `Origin`.
    pub(super) cors: Option<(Arc<Edge>, Option<HeaderValue>)>,
    /// The client speaks gRPC (`content-type: application/grpc…`): its refusals are gRPC's.
    pub(super) grpc: Option<Grpc>,
    /// The client said `TE: trailers`.
    pub(super) te_trailers: bool,
    /// Counted and logged ([`Ctx::finish`]); if not when dropped, the connection went first.
    pub(super) finished: bool,
    /// The decision allowed the request (until then its outcome is undecided).
    pub(super) allowed: bool,
}

/// A request whose connection went before its answer (the client closed it or reset the
/// stream, or the gateway cut it: a stall, the end of the shutdown's grace) is still counted
/// and logged, as 499 `connection_closed` (`shutdown_grace` for the last,
/// [`Shared::closed_reason`]): `allow` if the decision had allowed it, `error` if it had not
/// decided yet.
///
/// Why: the upstream may have acted on it (a POST, sent before the client hung up), and it
/// left no access-log line and no count at the gateway.
/// Regression: tests (it) shutdown::a_request_whose_client_leaves_is_still_logged
impl Drop for Ctx<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Why: a panic (a bug) was answered 500 (`server::layers::Answer`) but left no
        // access-log line and no count; it is logged as that answer, under the request's id,
        // which the answer names too.
        // Regression: door::tests::a_panic_is_still_counted_and_logged (the doors' twin)
        if std::thread::panicking() {
            self.outcome = Outcome::Error;
            self.reason = Some("internal_error");
            crate::server::request_id::panicked(self.request_id);
            self.account(500, None);
            return;
        }
        {
            if !self.allowed {
                self.outcome = Outcome::Error;
            }
            self.reason.get_or_insert(self.shared.closed_reason());
            self.account(CONNECTION_CLOSED, None);
        }
    }
}

/// The status logged for a request whose connection went before its answer (nginx's
/// "client closed request").
const CONNECTION_CLOSED: u16 = 499;

impl Ctx<'_> {
    /// A request refused before any rule; its host and path are logged as sent.
    fn malformed(
        &mut self,
        parts: &http::request::Parts,
        status: StatusCode,
        reason: &'static str,
    ) -> Failure {
        if self.snapshot.access_log {
            self.log.host = loggable_host(parts).into();
            self.log.path = loggable(parts.uri.path()).into();
        }
        Failure::Malformed(status, reason)
    }

    /// The one place a [`Failure`] becomes this door's response, counted and remembered for
    /// the log.
    fn rescue(&mut self, failure: Failure) -> Response<ResponseBody> {
        let id = self.request_id;
        let (refusal, malformed) = match failure {
            Failure::Malformed(status, reason) => {
                self.shared.metrics.bad_request(Some(Door::Proxy), reason);
                (self.outcome, self.reason) = (Outcome::Error, Some(reason));
                (Refusal::error(status, reason, id), true)
            }
            Failure::Denied(d) => {
                // Counted and logged as every door does (`door::Record::decision`).
                if d.kind.undecided() {
                    self.outcome = Outcome::Error;
                } else {
                    self.shared.metrics.denial(Door::Proxy, d.kind.as_str());
                    self.outcome = Outcome::Deny;
                }
                self.reason = Some(d.kind.as_str());
                self.log.rule.clone_from(&d.rule);
                self.log.principal.clone_from(&d.principal);
                (d.refusal(&self.snapshot.challenges, id), false)
            }
            Failure::Failed(status, reason) => {
                (self.outcome, self.reason) = (Outcome::Error, Some(reason));
                (Refusal::error(status, reason, id), false)
            }
            Failure::Refused(reason) => {
                self.shared.metrics.denial(Door::Proxy, reason);
                (self.outcome, self.reason) = (Outcome::Deny, Some(reason));
                (Refusal::error(StatusCode::FORBIDDEN, reason, id), false)
            }
            // Read by `handle` first; here, refused unread.
            Failure::Late(late) => {
                let (_, reason, _) = *late;
                (self.outcome, self.reason) = (Outcome::Error, Some(reason));
                (Refusal::error(cut_status(reason), reason, id), false)
            }
        };
        let resp = if let Some(grpc) = self.grpc {
            grpc_response(&refusal, grpc)
        } else {
            refusal_response(refusal)
        };
        if malformed {
            close(resp, self.version)
        } else {
            resp
        }
    }

    /// Counts, logs and returns the response.
    fn finish(&mut self, mut resp: Response<ResponseBody>) -> Response<ResponseBody> {
        // Every answer, forwarded or generated, names the request id.
        resp.headers_mut().insert(
            self.snapshot.server.request_id_header.clone(),
            self.request_id.clone(),
        );
        if let Some((edge, origin)) = &self.cors
            && let Some(c) = &edge.cors
        {
            cors::decorate(c, origin.as_ref(), resp.headers_mut());
        }
        // Read only for an exported span: a string lookup per response otherwise.
        let grpc_status = self
            .snapshot
            .otlp
            .as_ref()
            .and_then(|_| resp.headers().get("grpc-status"))
            .and_then(|v| v.to_str().ok()?.parse().ok());
        self.account(resp.status().as_u16(), grpc_status);
        self.finished = true;
        resp
    }

    /// Counts the request, exports its span and writes its access-log line.
    fn account(&self, status: u16, grpc_status: Option<i32>) {
        let latency = self.start.elapsed();
        self.shared
            .metrics
            .request(Door::Proxy, self.outcome, status, latency);
        let decision = match self.outcome {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::Error => "error",
        };
        if let (Some(otlp), Some(trace)) = (&self.snapshot.otlp, &self.trace)
            && trace.is_sampled()
        {
            let mut span = crate::telemetry::otlp::Span::ending_now(trace, latency);
            span.door = Door::Proxy.as_str();
            span.method = Some(self.method.clone());
            span.status = status;
            span.grpc_status = grpc_status;
            span.decision = decision;
            span.reason = self.reason.or(self.failed_open);
            span.rule = self.log.rule.as_ref().map(|r| Arc::clone(&r.0));
            span.request_id = self.request_id.clone();
            otlp.record(span);
        }
        if self.snapshot.access_log {
            let trace_id = self.trace.as_ref().map(TraceContext::trace_id_hex);
            fn or_dash(s: &str) -> &str {
                if s.is_empty() { "-" } else { s }
            }
            access_log::log(&AccessRecord {
                door: Door::Proxy.as_str(),
                listener: &self.conn.info.listener,
                method: self.method.as_str(),
                host: or_dash(&self.log.host),
                path: or_dash(&self.log.path),
                status,
                decision,
                rule: self.log.rule.as_ref().map(|r| &*r.0),
                reason: self.reason.or(self.failed_open),
                request_id: self.request_id.to_str().unwrap_or("-"),
                trace_id: trace_id.as_ref().and_then(|t| std::str::from_utf8(t).ok()),
                principal: self.log.principal.as_deref().map(|p| &*p.id),
                client_ip: self.log.client_ip.unwrap_or(self.conn.info.peer.ip()),
                latency,
            });
        }
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

/// A refused request's raw host for the log: the authority, else a visible-ASCII `Host`;
/// never a userinfo (`alice:S3cret@`), which is a credential.
///
/// Why: `GET http://alice:S3cretPW@host/` was refused (400 `invalid_host`) and logged with the
/// password. Regression: tests (it) shutdown::a_request_whose_client_leaves_is_still_logged
fn loggable_host(parts: &http::request::Parts) -> &str {
    let raw = match parts.uri.authority() {
        Some(a) => a.as_str(),
        None => parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("-"),
    };
    loggable(raw.rsplit_once('@').map_or(raw, |(_, host)| host))
}

/// The proxy door's refusal of a head before anything else is read of it (an h2c upgrade, a
/// head over the limits, a transfer coding but `chunked`), as `explain` shows it too.
///
/// Why `explain` runs it: it said "forwarded" for requests the proxy refuses here (400
/// `h2c_upgrade`, 501, 431). Regression: tests (it) policy::explain_refuses_the_heads_the_proxy_refuses
pub fn head_refusal(
    parts: &http::request::Parts,
    server: &crate::snapshot::ServerSettings,
) -> Option<(StatusCode, &'static str)> {
    let has_hop_by_hop = parts.headers.keys().any(hop_by_hop::is_fixed);
    head_refusal_of(parts, server, has_hop_by_hop)
}

/// [`head_refusal`], told whether the head has a field of the fixed hop-by-hop set
/// ([`hop_by_hop::is_fixed`]): the `h2c` and transfer-coding refusals read only such fields.
fn head_refusal_of(
    parts: &http::request::Parts,
    server: &crate::snapshot::ServerSettings,
    has_hop_by_hop: bool,
) -> Option<(StatusCode, &'static str)> {
    if has_hop_by_hop && hop_by_hop::is_h2c_upgrade(&parts.headers) {
        return Some((StatusCode::BAD_REQUEST, "h2c_upgrade"));
    }
    // Why: hyper reads heads up to both limits together, so that these answers carry the
    // usual refusal body (RFC 9112 §3: 414 for a long target) instead of hyper's bare 431.
    // Regression: tests (it) proxy::long_target_is_414_and_long_head_431_with_a_body
    if let Some(refused) = over_head_limits(parts, server) {
        return Some(refused);
    }
    // Why: hyper de-chunks when the last coding is `chunked`, and stripping the header as
    // hop-by-hop below would drop the other codings on the way upstream: `gzip, chunked`
    // reached the upstream with gzip-coded bytes passed off as the body.
    // Regression: tests (it) smuggling::transfer_codings_other_than_chunked_refused
    if has_hop_by_hop && hop_by_hop::has_unsupported_transfer_coding(&parts.headers) {
        return Some((StatusCode::NOT_IMPLEMENTED, "unsupported_transfer_coding"));
    }
    // Why: an HTTP/2 field value may not start or end with a space or tab (RFC 9113 §8.2.1),
    // which an HTTP/1.1 parser trims and the h2 crate lets through: `x-role: " admin"` passed
    // a `when` of `request.headers['x-role'] != 'admin'` over HTTP/2, its HTTP/1.1 twin did
    // not, and the upstream's own parser read `admin`. Refused, as Envoy (nghttp2) refuses it.
    // Regression: tests (it) proxy::http2_padded_field_values_are_refused
    if parts.version == http::Version::HTTP_2
        && parts.headers.values().any(|v| {
            let b = v.as_bytes();
            matches!(b.first(), Some(b' ' | b'\t')) || matches!(b.last(), Some(b' ' | b'\t'))
        })
    {
        return Some((StatusCode::BAD_REQUEST, "invalid_header"));
    }
    None
}

/// A target over `max_target_bytes` (414), more fields than `max_headers` or a head over
/// `max_header_bytes` (431): the head's size counted as the request line and `name: value`
/// lines with their line ends.
fn over_head_limits(
    parts: &http::request::Parts,
    s: &crate::snapshot::ServerSettings,
) -> Option<(StatusCode, &'static str)> {
    // Why: hyper bounds an HTTP/1 head's fields (`max_headers`), h2 only its bytes: 500
    // fields over HTTP/2 reached the upstream past a `max_headers` of 100.
    // Regression: tests (it) proxy::http2_requests_get_the_header_count_limit
    // Cookie crumbs (RFC 9113 §8.2.3) are one field, as they reach the upstream.
    // Why the authority: an HTTP/1.1 head's `Host` is one of the fields hyper counts; over
    // HTTP/2 the host is `:authority`, not a header, and a request of 100 other fields passed
    // where over HTTP/1.1 it got 431. Regression: tests (it)
    // conformance::the_header_count_limit_is_the_same_at_every_door
    // (Looked at only near the limit: no lookup for the usual request.)
    let fields = |n: usize| {
        n + usize::from(
            parts.uri.authority().is_some() && !parts.headers.contains_key(header::HOST),
        )
    };
    if parts.headers.len() + 1 > s.max_headers
        && fields(parts.headers.len()) > s.max_headers
        && fields(parts.headers.len())
            - parts
                .headers
                .get_all(header::COOKIE)
                .iter()
                .count()
                .saturating_sub(1)
            > s.max_headers
    {
        return Some((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_many",
        ));
    }
    let target = parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len())
        + parts.uri.authority().map_or(0, |a| a.as_str().len());
    if target > s.max_target_bytes {
        return Some((StatusCode::URI_TOO_LONG, "uri_too_long"));
    }
    let head = crate::request::facts::head_bytes(&parts.method, target, &parts.headers);
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

/// A refusal for a gRPC client (gRPC over HTTP/2, "Trailers-Only"): HTTP 200 with
/// `grpc-status` from the refusal's status (16 unauthenticated, 7 permission denied, 8
/// resource exhausted, 14 unavailable, …) and its public reason code as `grpc-message`; the
/// challenge, redirect and throttle headers as for HTTP, no body.
// Regression: tests (it) upstreams::grpc_client_denied_gets_grpc_status
fn grpc_response(r: &Refusal, grpc: Grpc) -> Response<ResponseBody> {
    let mut resp = Response::new(body::full(bytes::Bytes::new()));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(grpc.content_type()),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("grpc-status", HeaderValue::from(r.grpc_code().as_i32()));
    // Reason codes are `[a-z_]`: nothing to percent-encode.
    h.insert("grpc-message", HeaderValue::from_static(r.code));
    for (name, value) in r.headers() {
        h.insert(name, value);
    }
    resp
}

/// The HTTP response for a refusal (see [`Refusal::into_response`]).
pub fn refusal_response(r: Refusal) -> Response<ResponseBody> {
    r.into_response().map(http_body_util::Either::Left)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testing::ReturnSize;

    /// `check_head` and `head_refusal` skip their field checks for a head without a field of
    /// the fixed hop-by-hop set: every field those checks read must be in it.
    #[test]
    fn the_fields_the_head_checks_read_are_fixed_hop_by_hop() {
        for name in [
            header::CONNECTION,
            header::UPGRADE,
            header::TE,
            header::TRANSFER_ENCODING,
            http::HeaderName::from_static("http2-settings"),
        ] {
            assert!(hop_by_hop::is_fixed(&name), "{name}");
        }
    }

    /// A request's future is moved into its box whole, whatever state it is in: every byte
    /// of a rarely taken branch (a Redis call, a delegated check, an introspection) held
    /// inline is copied on every request. Those branches are boxed where they are awaited.
    ///
    /// Regression: the decision's future was 9.3 KB (a Redis script call and a gRPC delegate
    /// call inline), and copying the request's future was 28% of the proxy's instructions.
    #[test]
    fn request_futures_stay_small() {
        let decide = ReturnSize::<(
            &crate::snapshot::Snapshot,
            &crate::request::RequestFacts<'_>,
            &mut NoTrace,
        )>::return_size(&decision::decide);
        let handle = ReturnSize::<(&Arc<Shared>, &Conn, Request<Incoming>)>::return_size(&handle);
        assert!(decide <= 1024, "the decision's future is {decide} bytes");
        assert!(handle <= 3584, "a request's future is {handle} bytes");
    }
}
