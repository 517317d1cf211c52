//! What the HTTP decision doors share (Envoy's HTTP mode, forward auth): admitting only the
//! configured peers, describing the original request from the peer's words, deciding within
//! the door's deadline, and answering, counting and logging the way the proxy door does.
//!
//! Each door only translates (Envoy's `ext_authz_http_impl.cc` beside its gRPC twin): how the
//! original request is described ([`HttpDoor::describe`]) and how the decision is handed back
//! ([`HttpDoor::allow`], [`HttpDoor::deny`]). The decision itself is [`decision::decide`]
//! on the same [`RequestFacts`] the proxy builds, so a request gets the same answer whichever
//! door it takes.
//!
//! Invariants:
//! - A request from a peer outside the door's `peers` is refused (403 `peer_not_allowed`)
//!   before anything it says is read: its headers describe the request and are believed.
//! - The original client comes from the door peer's `X-Forwarded-For`: its last entry is the
//!   hop the peer received the request from (believed: the peer is admitted), and the entries
//!   before it are read like a proxy-door request's, through `server.trusted_proxies` only.
//!   A request whose peer says nothing about its client is refused (400
//!   `missing_client_address`); the peer itself never passes for the client.
//! - Every answer comes within the door's `timeout`; past it, 503 `decision_timeout`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::authz::edge::Preflight;
use crate::authz::spoofable::DoorList;
use crate::decision::{
    self, Allow, Decision, DenyKind, FailedOpen, HeaderMutation, NoTrace, Refusal,
};
use crate::request::RequestFacts;
use crate::request::facts::{ConnInfo, Door, FactsError, Head, Scheme};
use crate::server::{Conn, Shared};
use crate::server::{hop_by_hop, request_id};
use crate::snapshot::{DecisionDoor, DoorSettings, Snapshot};
use crate::telemetry::access_log::{self, AccessRecord};
use crate::telemetry::metrics::Outcome;
use crate::telemetry::trace_context::TraceContext;

/// The original request as a door's peer describes it.
#[derive(Debug)]
pub struct Described {
    /// Its method.
    pub method: Method,
    /// How the client reached the peer.
    pub scheme: Scheme,
    /// Its authority, as sent.
    pub authority: Option<String>,
    /// Its target in origin form, `/path?query`, raw.
    pub target: String,
    /// Its headers, without the ones that only described it to the door.
    pub headers: HeaderMap,
    /// The bytes of the fields left in `headers` that the door read as the request's host or
    /// scheme (a forward-auth peer's `X-Forwarded-Host` and `X-Forwarded-Proto`, Envoy's
    /// `X-Forwarded-Proto`), as [`crate::request::facts::head_bytes`] counts them: the peer's
    /// description, which the proxy door reads from the request line and the connection, so
    /// not held against `server.max_header_bytes`. Each is one field with a checked value (a
    /// scheme; a host the described `Host` repeats): no other byte of the client's is excused.
    pub describing: usize,
}

/// Why a door cannot describe the original request: a 400 (or mapped status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Undescribed(pub &'static str);

/// One HTTP decision door's translation.
pub trait HttpDoor: Send + Sync + 'static {
    /// Which door.
    const DOOR: Door;

    /// Whether the door answers a CORS preflight for a rule with CORS itself (a `204` with
    /// the CORS headers, or a `403`), as the proxy door does. Only a door whose peer sends
    /// such an answer to the client as it is, without reaching the upstream, can: Envoy passes
    /// any status but 200 on. A forward-auth peer forwards on any 2xx (and a preflight needs
    /// one), so there a preflight is decided as any request.
    const ANSWERS_PREFLIGHTS: bool = false;

    /// The original request, from the door's request (its head and headers). Once described,
    /// the door's request is not read again: its headers are taken, not copied.
    fn describe(
        &self,
        settings: &DoorSettings,
        parts: &mut http::request::Parts,
    ) -> Result<Described, Undescribed>;

    /// The answer for an allowed request: the mutation as response headers.
    fn allow(&self, allow: &Allow) -> Response<Full<Bytes>>;

    /// The answer for a refusal (a denial or a failure): status, headers, body, mapped as the
    /// door's peer needs.
    fn deny(&self, settings: &DoorSettings, refusal: Refusal) -> Response<Full<Bytes>>;
}

/// An HTTP decision door's [`crate::server::listener::Handler`].
#[derive(Debug)]
pub struct DoorHandler<D> {
    /// The door's translation.
    pub door: Arc<D>,
    /// Snapshot and metrics.
    pub shared: Arc<Shared>,
    /// Position of the listener in the snapshot.
    pub index: usize,
}

/// Header fields a decision door's HTTP listener takes beyond `server.max_headers`: those its
/// peer adds to describe the request (nginx's `X-Original-*`, `Host`, `X-Forwarded-*`,
/// `Connection`; Envoy's `x-envoy-*`, `x-forwarded-*`). The door counts the client's own.
///
/// Why: hyper counted them with the client's, so a request carrying close to the limit got
/// a bare 431 from the door, which nginx's `auth_request` turns into a 500, where the proxy
/// door accepted it. Regression: tests (it)
/// peers::nginx_auth_request_in_front_of_the_forward_auth_door (97 client fields)
pub const DESCRIBING_ALLOWANCE: usize = 24;

/// Whether a decision door's peer may add a field of this (lowercase) name to describe the
/// request: pseudo-headers, `host`, and the forwarding, override and infrastructure families
/// ([`crate::authz::spoofable::family`]). Not counted against `server.max_headers`.
pub fn peer_may_add(name: &str) -> bool {
    name.starts_with(':') || name == "host" || crate::authz::spoofable::family(name).is_some()
}

/// Whether a described request of `total` fields carries more than `max` of the client's
/// own, its host counted as one: `names` yields one name per field, walked only from `max`
/// on; past `max` and the [`DESCRIBING_ALLOWANCE`], refused outright. Every decision door
/// counts with this.
///
/// Why the host: the client's `Host` (or `:authority`) is one of the fields the proxy door
/// counts, and a door gets it as the description (`X-Forwarded-Host`, Envoy's `host`), which
/// is not counted; a request of `Host` and 100 other fields got 431 at the proxy door and was
/// allowed at every decision door. Regression: tests (it)
/// conformance::the_header_count_limit_is_the_same_at_every_door
pub fn too_many_fields<'n>(total: usize, names: impl Iterator<Item = &'n str>, max: usize) -> bool {
    // The client's fields other than its host.
    let others = max.saturating_sub(1);
    total > others
        && (total > max.saturating_add(DESCRIBING_ALLOWANCE)
            || names.filter(|n| !peer_may_add(n)).count() > others)
}

/// The header fields a decision door's HTTP/1 listener parses, `server.max_headers` being
/// `configured`: the peer's describing fields ([`DESCRIBING_ALLOWANCE`]) and room past them,
/// so that the door itself answers a request over the limit (431 `headers_too_many`, mapped
/// by the door's `status_map`): up to 4 times `configured`, within 448 (hyper's buffers for
/// them then stay in the allocator's small sizes).
///
/// Why: past the allowance hyper answered a bare 431, which nginx's `auth_request` turns into
/// a 500 (nginx passes only 2xx, 401 and 403), where the proxy door answers 431; the shipped
/// nginx config surfaces the door's mapped 431. Regression: tests (it)
/// peers::nginx_auth_request_in_front_of_the_forward_auth_door (130 client fields)
pub fn parse_fields(configured: usize) -> usize {
    configured
        .saturating_add(DESCRIBING_ALLOWANCE)
        .max(configured.saturating_mul(4).min(448))
}

impl<D: HttpDoor> crate::server::listener::Handler for DoorHandler<D> {
    const DECIDES_ONLY: bool = true;
    const DOOR: Option<Door> = Some(D::DOOR);

    fn max_headers(&self, configured: usize) -> usize {
        parse_fields(configured)
    }

    /// 403 `internal_error`: Envoy's HTTP mode takes a 5xx from its authorization service for
    /// a failed call, which `failure_mode_allow` turns into an allow; a 403 is a denial at
    /// every HTTP door's peer.
    /// Regression: server::layers::tests::a_panic_is_answered_as_a_denial
    fn panicked() -> crate::server::listener::Answering {
        Box::pin(async {
            let id = crate::server::request_id::take_panicked();
            crate::proxy::service::refusal_response(Refusal::error(
                StatusCode::FORBIDDEN,
                "internal_error",
                &id,
            ))
        })
    }

    fn call(&self, conn: Arc<Conn>, req: Request<Incoming>) -> crate::server::listener::Answering {
        let door = Arc::clone(&self.door);
        let shared = Arc::clone(&self.shared);
        let index = self.index;
        Box::pin(async move {
            answer(&*door, &shared, index, &conn, req)
                .await
                .map(http_body_util::Either::Left)
        })
    }
}

/// What one answer of a decision door is counted and logged with.
#[derive(Debug)]
pub struct Record {
    /// The original request's method, once known.
    pub method: Option<Method>,
    /// Allowed, denied, or neither (malformed, failed).
    pub outcome: Outcome,
    /// The reason code of a refusal.
    pub reason: Option<&'static str>,
    /// The refusal a fail-open setting turned into the allow: the logged reason unless
    /// another (the peer gone) says why the request ended.
    pub failed_open: Option<&'static str>,
    /// The host decided on (only when an access log is written).
    pub host: Box<str>,
    /// The path decided on (likewise).
    pub path: Box<str>,
    /// The deciding rule.
    pub rule: Option<crate::authz::route::RuleId>,
    /// Who, when a credential verified.
    pub principal: Option<Arc<crate::authn::principal::Principal>>,
    /// The original client.
    pub client_ip: IpAddr,
    /// The trace id for the log: the peer's (a valid `traceparent` it sent), or the door
    /// span's own when OTLP is configured.
    pub trace_id: Option<[u8; 32]>,
    /// The door's span (OTLP configured): a child of the peer's span when it sent a valid
    /// `traceparent`, or a new trace.
    pub trace: Option<TraceContext>,
}

impl Record {
    /// Nothing known yet about a request from `peer`.
    pub fn new(peer: IpAddr) -> Self {
        Self {
            method: None,
            outcome: Outcome::Error,
            reason: None,
            failed_open: None,
            host: Box::default(),
            path: Box::default(),
            rule: None,
            principal: None,
            client_ip: peer,
            trace_id: None,
            trace: None,
        }
    }

    /// The trace of the request described by `headers`. The peer owns the trace and the
    /// request it forwards: the door changes neither, and only records its own span in it
    /// (OTLP configured), sampled as the peer says.
    pub fn trace(&mut self, snapshot: &Snapshot, headers: &HeaderMap) {
        if snapshot.otlp.is_some() {
            let (cx, _) = TraceContext::from_headers(headers, true);
            self.trace_id = Some(cx.trace_id_hex());
            self.trace = Some(cx);
        } else if snapshot.access_log {
            self.trace_id = crate::telemetry::trace_context::trace_id_of(headers);
        }
    }

    /// The facts decided on, for the log.
    pub fn facts(&mut self, snapshot: &Snapshot, facts: &RequestFacts<'_>) {
        self.method = Some(facts.method.clone());
        self.client_ip = facts.client_ip;
        if snapshot.access_log {
            self.host = facts.host.as_ref().into();
            self.path = facts.path.as_ref().into();
        }
    }

    /// What a decision says, for the log and the denial counter.
    pub fn decision(&mut self, shared: &Shared, door: Door, decision: &Decision) {
        match decision {
            Decision::Allow(a) => {
                self.outcome = Outcome::Allow;
                self.failed_open = a.failed_open.map(FailedOpen::as_str);
                self.rule = Some(a.rule.clone());
                self.principal.clone_from(&a.principal);
                if a.identity_refused > 0 {
                    shared
                        .metrics
                        .identity_headers_refused(door, a.identity_refused);
                }
            }
            Decision::Deny(d) => {
                self.reason = Some(d.kind.as_str());
                self.rule.clone_from(&d.rule);
                self.principal.clone_from(&d.principal);
                // Why: the Envoy doors answer a decision that could not be made with a failed
                // call; logged and counted as a denial, it said the gateway refused what
                // Envoy's `failure_mode_allow` may have let through.
                // Regression: tests (it) grpc::keys_never_fetched_is_unavailable_for_envoys_failure_mode
                if d.kind.undecided() {
                    self.outcome = Outcome::Error;
                } else {
                    self.outcome = Outcome::Deny;
                    shared.metrics.denial(door, d.kind.as_str());
                }
            }
        }
    }

    /// A preflight the door answers itself: the rule, and allowed (`cors_preflight`) or
    /// refused (a denial, counted).
    pub fn preflight(
        &mut self,
        shared: &Shared,
        door: Door,
        rule: crate::authz::route::RuleId,
        checked: &Preflight,
    ) {
        self.rule = Some(rule);
        match checked {
            Ok(_) => {
                self.outcome = Outcome::Allow;
                self.reason = Some(CORS_PREFLIGHT);
            }
            Err(refused) => {
                self.outcome = Outcome::Deny;
                self.reason = Some(refused.as_str());
                shared.metrics.denial(door, refused.as_str());
            }
        }
    }

    /// A request its rule allows, refused for what it asks beyond itself (an upgrade the rule
    /// does not relay, a WebSocket from a foreign origin): a denial, as the proxy door counts
    /// it.
    pub fn refused(&mut self, shared: &Shared, door: Door, reason: &'static str) {
        self.outcome = Outcome::Deny;
        self.reason = Some(reason);
        shared.metrics.denial(door, reason);
    }

    /// A refusal that is not a decision (malformed, not admitted, too slow).
    pub fn failed(&mut self, shared: &Shared, door: Door, reason: &'static str) {
        self.outcome = Outcome::Error;
        self.reason = Some(reason);
        shared.metrics.bad_request(Some(door), reason);
    }

    /// Counts the answer and writes its access-log line.
    pub fn account(
        &self,
        snapshot: &Snapshot,
        shared: &Shared,
        (door, listener): (Door, &str),
        start: Instant,
        request_id: &HeaderValue,
        status: u16,
    ) {
        let latency = start.elapsed();
        shared.metrics.request(door, self.outcome, status, latency);
        let decision = match self.outcome {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::Error => "error",
        };
        if let Some(otlp) = &snapshot.otlp {
            // A refusal before the description was read has no trace of the peer's: its own.
            let cx = self
                .trace
                .clone()
                .unwrap_or_else(|| TraceContext::new(true));
            if cx.is_sampled() {
                let mut span = crate::telemetry::otlp::Span::ending_now(&cx, latency);
                span.door = door.as_str();
                span.method.clone_from(&self.method);
                span.status = status;
                span.decision = decision;
                span.reason = self.reason.or(self.failed_open);
                span.rule = self.rule.as_ref().map(|r| Arc::clone(&r.0));
                span.request_id = request_id.clone();
                otlp.record(span);
            }
        }
        if snapshot.access_log {
            fn or_dash(s: &str) -> &str {
                if s.is_empty() { "-" } else { s }
            }
            access_log::log(&AccessRecord {
                door: door.as_str(),
                listener,
                method: self.method.as_ref().map_or("-", Method::as_str),
                host: or_dash(&self.host),
                path: or_dash(&self.path),
                status,
                decision,
                rule: self.rule.as_ref().map(|r| &*r.0),
                reason: self.reason.or(self.failed_open),
                request_id: request_id.to_str().unwrap_or("-"),
                trace_id: self
                    .trace_id
                    .as_ref()
                    .and_then(|t| std::str::from_utf8(t).ok()),
                principal: self.principal.as_deref().map(|p| &*p.id),
                client_ip: self.client_ip,
                latency,
            });
        }
    }
}

/// The status logged for a request whose peer went before its answer (nginx's "client closed
/// request"), as the proxy door logs it.
const CONNECTION_CLOSED: u16 = 499;

/// A decision door's [`Record`] of one request, accounted exactly once: with its answer
/// ([`Pending::account`]), or, when the peer goes first (nginx or Envoy gave up, the
/// subrequest's client left), when the request is dropped, as 499 `connection_closed`.
///
/// Why: a request the peer abandoned while the decision waited (on introspection, on a
/// delegate) left no access-log line and no count at the decision doors, where the proxy door
/// logs one; a scanner that times its requests out was invisible.
/// Regression: tests (it) doors::a_request_the_peer_abandons_is_still_logged
pub struct Pending<'a> {
    /// What is known so far.
    pub record: Record,
    snapshot: &'a Snapshot,
    shared: &'a Shared,
    at: (Door, &'a str),
    start: Instant,
    request_id: &'a HeaderValue,
    done: bool,
}

impl<'a> Pending<'a> {
    /// A request from `peer` at `at` (door, listener) that began at `start`.
    pub fn new(
        peer: IpAddr,
        (snapshot, shared): (&'a Snapshot, &'a Shared),
        at: (Door, &'a str),
        start: Instant,
        request_id: &'a HeaderValue,
    ) -> Self {
        Self {
            record: Record::new(peer),
            snapshot,
            shared,
            at,
            start,
            request_id,
            done: false,
        }
    }

    /// Counts the answer and writes its access-log line.
    pub fn account(mut self, status: u16) {
        self.done = true;
        let s = &self;
        s.record
            .account(s.snapshot, s.shared, s.at, s.start, s.request_id, status);
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Why: a panic (a bug) was answered (`server::layers::Answer`) but left no access-log
        // line and no count; it is logged as the answer the door gives it, under its id.
        // Regression: tests::a_panic_is_still_counted_and_logged
        if std::thread::panicking() {
            self.record.outcome = Outcome::Error;
            self.record.reason = Some("internal_error");
            crate::server::request_id::panicked(self.request_id);
            let status = match self.at.0 {
                Door::EnvoyGrpc => 500,
                _ => 403,
            };
            let s = &*self;
            s.record
                .account(s.snapshot, s.shared, s.at, s.start, s.request_id, status);
            return;
        }
        {
            self.record
                .reason
                .get_or_insert(self.shared.closed_reason());
            let s = &*self;
            s.record.account(
                s.snapshot,
                s.shared,
                s.at,
                s.start,
                s.request_id,
                CONNECTION_CLOSED,
            );
        }
    }
}

/// One request through an HTTP decision door.
async fn answer<D: HttpDoor>(
    door: &D,
    shared: &Shared,
    index: usize,
    conn: &Conn,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let start = Instant::now();
    let snapshot = shared.current.load_full();
    let (mut parts, _body) = req.into_parts();
    let request_id =
        request_id::take_or_generate(&parts.headers, &snapshot.server.request_id_header);
    let at = (D::DOOR, &*conn.info.listener);
    let mut pending = Pending::new(
        conn.info.peer.ip(),
        (&snapshot, shared),
        at,
        start,
        &request_id,
    );
    let record = &mut pending.record;
    record.trace(&snapshot, &parts.headers);
    let settings = snapshot
        .listener(index)
        .map_or(&DoorSettings::Proxy, |l| &l.door);
    let due = deadline(start, settings);
    let decided = decide_for(door, settings, &snapshot, conn, &mut parts, record, due).await;
    let mut resp = match decided {
        Ok(Decided::Decision(decision, origin)) => {
            record.decision(shared, D::DOOR, &decision);
            match decision {
                Decision::Allow(a) => door.allow(&a),
                Decision::Deny(d) => door.deny(
                    settings,
                    refusal(&d, &snapshot, &request_id, origin.as_ref()),
                ),
            }
        }
        Ok(Decided::Preflight(rule, checked)) => {
            record.preflight(shared, D::DOOR, rule, &checked);
            preflight_answer(door, settings, checked, &request_id)
        }
        Ok(Decided::Refused(rule, reason)) => {
            record.rule = Some(rule);
            record.refused(shared, D::DOOR, reason);
            let refusal = Refusal::error(StatusCode::FORBIDDEN, reason, &request_id);
            door.deny(settings, refusal)
        }
        Err((status, reason)) => {
            record.failed(shared, D::DOOR, reason);
            door.deny(settings, Refusal::error(status, reason, &request_id))
        }
    };
    resp.headers_mut().insert(
        snapshot.server.request_id_header.clone(),
        request_id.clone(),
    );
    pending.account(resp.status().as_u16());
    resp
}

/// What a decision door has to answer.
enum Decided {
    /// The decision, and the request's `Origin` (for a denial on a rule with CORS).
    Decision(Decision, Option<HeaderValue>),
    /// A CORS preflight the door answers itself ([`HttpDoor::ANSWERS_PREFLIGHTS`]).
    Preflight(crate::authz::route::RuleId, Preflight),
    /// Allowed by this rule, which refuses the upgrade it asks for ([`upgrade_refusal`]).
    Refused(crate::authz::route::RuleId, &'static str),
}

/// A denial's refusal at a decision door: on a rule with CORS, with the CORS headers for the
/// client's origin, so that a script from an allowed origin can read its 401 or 403 (the
/// proxy door adds them to every answer as it sends it).
// Regression: tests (it) doors::envoy_doors_answer_cors_preflights_and_label_denials
pub fn refusal(
    d: &crate::decision::Deny,
    snapshot: &Snapshot,
    request_id: &HeaderValue,
    origin: Option<&HeaderValue>,
) -> Refusal {
    let mut r = d.refusal(&snapshot.challenges, request_id);
    if let Some(cors) = d.edge.as_ref().and_then(|e| e.cors.as_ref()) {
        r.cors = cors.response_headers(origin);
    }
    r
}

/// The door's answer to a preflight it answers itself: `204` with the rule's CORS headers, or
/// `403` (the door's refusal) with none but `Vary: Origin`.
fn preflight_answer<D: HttpDoor>(
    door: &D,
    settings: &DoorSettings,
    checked: Preflight,
    request_id: &HeaderValue,
) -> Response<Full<Bytes>> {
    match checked {
        Ok(headers) => {
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::NO_CONTENT;
            resp.headers_mut().extend(headers);
            resp
        }
        Err(refused) => {
            let mut r = Refusal::error(StatusCode::FORBIDDEN, refused.as_str(), request_id);
            r.cors = vec![crate::authz::edge::VARY_ORIGIN];
            door.deny(settings, r)
        }
    }
}

/// The reason code of a request refused at an HTTP decision door for a method override in
/// its query (`?_method=DELETE`), which that door's peer cannot remove.
pub const METHOD_OVERRIDE: &str = "method_override_in_query";

/// What an HTTP decision door refuses once it has the facts, before any rule (a preflight
/// it answers aside). `explain --door` calls it too, so the tool cannot say otherwise.
pub fn refused_before_rules(facts: &RequestFacts<'_>) -> Option<(StatusCode, &'static str)> {
    // Why: the proxy door cuts a method override from the query, and the gRPC door names it
    // in `query_parameters_to_remove`; an HTTP door's peer (nginx, Traefik, Caddy, APISIX,
    // Kong, Envoy's HTTP mode) has no way to be told to remove a query parameter, so it
    // forwarded `POST /forms/1?_method=DELETE`, which Symfony, Laravel and Express's
    // method-override serve as the DELETE a rule denied. Refused here, as the peer cannot
    // carry it safely. Regression: tests (it) doors::query_method_override_refused_at_http_doors
    facts
        .query
        .is_some_and(crate::authn::credential::query_overrides_method)
        .then_some((StatusCode::BAD_REQUEST, METHOD_OVERRIDE))
}

/// The reason code of a preflight the gateway answered (`204`), in logs and spans.
pub const CORS_PREFLIGHT: &str = "cors_preflight";

/// Admission, the original request's facts and the decision, within the door's deadline.
async fn decide_for<D: HttpDoor>(
    door: &D,
    settings: &DoorSettings,
    snapshot: &Snapshot,
    conn: &Conn,
    parts: &mut http::request::Parts,
    record: &mut Record,
    due: tokio::time::Instant,
) -> Result<Decided, (StatusCode, &'static str)> {
    let common = common(settings).ok_or((StatusCode::SERVICE_UNAVAILABLE, NO_LISTENER))?;
    // Why: the peer's headers describe the request and are believed; anyone else could
    // describe any request they like. Regression: tests (it) doors::*_peer_not_allowed
    if !admits(common, conn.info.peer.ip()) {
        return Err((StatusCode::FORBIDDEN, "peer_not_allowed"));
    }
    let (upgrade, stripped, unseen) =
        hop_by_hop_pass(&mut parts.headers).map_err(|r| (StatusCode::BAD_REQUEST, r))?;
    let described = door
        .describe(settings, parts)
        .map_err(|Undescribed(reason)| (undescribed_status(reason), reason))?;
    let mut described = described;
    let hop = vouched_hop(&mut described.headers)
        .map_err(|Undescribed(reason)| (StatusCode::BAD_REQUEST, reason))?;
    record.client_ip = hop;
    record.method = Some(described.method.clone());
    // The fields against `server.max_headers`, less those a peer may add to describe the
    // request ([`peer_may_add`]), which the client may then send too: up to
    // [`DESCRIBING_ALLOWANCE`] more than the proxy door takes. Counted only past the limit.
    if too_many_fields(
        described.headers.len(),
        described.headers.iter().map(|(n, _)| n.as_str()),
        snapshot.server.max_headers,
    ) {
        return Err((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_many",
        ));
    }
    let info = ConnInfo::for_door(
        D::DOOR,
        SocketAddr::new(hop, 0),
        Arc::clone(&conn.info.listener),
        None,
    );
    let head = Head {
        method: &described.method,
        scheme: described.scheme,
        authority: described.authority.as_deref(),
        target: &described.target,
        headers: &described.headers,
    };
    // Why the description's fields are not counted: a head within the limit at the proxy
    // door got 431 through nginx, Caddy or Envoy's HTTP mode, whose `X-Forwarded-Host` and
    // `-Proto` were held against the client's room. Regression: tests (it)
    // doors::a_door_holds_the_client_to_the_proxy_doors_head_limit
    head.within(
        snapshot.server.max_target_bytes,
        snapshot
            .server
            .max_header_bytes
            .saturating_sub(stripped)
            .saturating_add(described.describing),
    )
    .map_err(|e: FactsError| (e.status(), e.as_str()))?;
    // The door's own span (OTLP configured) is the delegate's parent; a clone, as the record
    // is written while the facts are alive.
    let trace = record.trace.clone();
    let facts = RequestFacts {
        trace: trace.as_ref(),
        deadline: Some(due),
        ..RequestFacts::new(head, &info, &snapshot.server.trusted_proxies)
            .map_err(|e: FactsError| (e.status(), e.as_str()))?
    };
    record.client_ip = facts.client_ip;
    record.facts(snapshot, &facts);
    // Why: a browser sends its preflight without a credential, so a rule with CORS refused it
    // with 401 behind Envoy while the proxy door answered it. Regression: tests (it)
    // doors::envoy_doors_answer_cors_preflights_and_label_denials
    if D::ANSWERS_PREFLIGHTS
        && let Some((rule, checked)) = crate::authz::edge::preflight(snapshot, &facts)
    {
        return Ok(Decided::Preflight(rule, checked));
    }
    if let Some(refused) = refused_before_rules(&facts) {
        return Err(refused);
    }
    let mut decision =
        tokio::time::timeout_at(due, decision::decide(snapshot, &facts, &mut NoTrace))
            .await
            .map_err(|_| (StatusCode::SERVICE_UNAVAILABLE, DECISION_TIMEOUT))?;
    if let Decision::Allow(a) = &mut decision {
        a.mutation.remove_unseen(unseen);
    }
    if let Decision::Allow(a) = &decision
        && let Some(reason) = upgrade_refusal(upgrade.as_ref(), a, &described.headers)
    {
        return Ok(Decided::Refused(a.rule.clone(), reason));
    }
    let origin = match &decision {
        Decision::Deny(d) if d.edge.as_ref().is_some_and(|e| e.cors.is_some()) => {
            crate::authz::edge::sole_origin(&described.headers).cloned()
        }
        _ => None,
    };
    Ok(Decided::Decision(decision, origin))
}

/// The upgrade a described request asks for, as its peer would relay it: the values of its
/// `Upgrade` headers (joined), whether or not `Connection` still names it, since a peer may
/// drop `Connection` from what it describes and still relay the upgrade. `Err` with
/// `h2c_upgrade` (400) for cleartext HTTP/2, which the proxy door refuses too.
///
/// Why: the proxy door relays an upgrade only for a rule that opts in, refuses a WebSocket
/// from an origin the rule's CORS does not name, and refuses h2c; the decision doors answered
/// all of these 200 and their peer (Caddy, Envoy) opened the tunnel.
/// Regression: tests (it) doors::upgrades_at_the_decision_doors_as_at_the_proxy
pub fn asked_upgrade(headers: &HeaderMap) -> Result<Option<HeaderValue>, &'static str> {
    const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");
    let mut values = headers.get_all(header::UPGRADE).iter();
    let Some(first) = values.next() else {
        // The usual request: two lookups.
        return match headers.contains_key(HTTP2_SETTINGS) {
            true => Err("h2c_upgrade"),
            false => Ok(None),
        };
    };
    if hop_by_hop::is_h2c_upgrade(headers) {
        return Err("h2c_upgrade");
    }
    Ok(match (first, values.next()) {
        (one, None) => Some(one.clone()),
        (first, Some(second)) => {
            let mut joined = first.as_bytes().to_vec();
            for v in std::iter::once(second).chain(values) {
                joined.extend_from_slice(b", ");
                joined.extend_from_slice(v.as_bytes());
            }
            // Joined header values are a valid value.
            HeaderValue::from_bytes(&joined).ok()
        }
    })
}

/// Why an allowed request that asks for `upgrade` is refused at a decision door (403): its
/// rule does not relay that protocol (`upgrade_not_allowed`; the proxy door would send it on
/// as a plain request, which a door cannot make its peer do), or the rule's CORS does not name
/// the page's origin (`cors_origin_not_allowed`, as at the proxy door).
pub fn upgrade_refusal(
    upgrade: Option<&HeaderValue>,
    allow: &Allow,
    headers: &HeaderMap,
) -> Option<&'static str> {
    let upgrade = upgrade?;
    let edge = allow.edge.as_deref();
    if !edge.is_some_and(|e| e.relays(upgrade.as_bytes())) {
        return Some("upgrade_not_allowed");
    }
    edge.filter(|e| e.refuses_upgrade_origin(headers))
        .map(|_| crate::authz::edge::PreflightRefusal::Origin.as_str())
}

/// A decision door's first pass over its peer's request, before the description is read
/// (`explain` runs it too): the upgrade asked for (refused: a 400 reason code), then every
/// hop-by-hop field gone, with the bytes they took ([`strip_counted`]) and the names
/// `Connection` listed.
pub(crate) fn hop_by_hop_pass(
    headers: &mut HeaderMap,
) -> Result<(Option<HeaderValue>, usize, Vec<HeaderName>), &'static str> {
    // Only a fixed hop-by-hop name (`Upgrade`, `HTTP2-Settings`, `Connection`, which alone
    // can name others) asks for an upgrade or has anything to remove: one walk over the names
    // finds none in the usual request.
    if !headers.keys().any(hop_by_hop::is_fixed) {
        return Ok((None, 0, Vec::new()));
    }
    let upgrade = asked_upgrade(headers)?;
    // Why: the proxy door counts the head as the client sent it, hop-by-hop headers
    // included; a 20 KB `Keep-Alive` passed the doors. Regression: tests (it)
    // conformance::every_door_gives_the_same_decision (`hop-by-hop header over the limit`)
    let (stripped, unseen) = strip_counted(headers);
    Ok((upgrade, stripped, unseen))
}

/// Removes the door request's hop-by-hop headers ([`hop_by_hop::strip_named`]) and answers
/// how many bytes of head they took (the head limits count them, as the proxy door counts the
/// head as it arrived) and the headers `Connection` named (for the peer to remove as well).
pub(crate) fn strip_counted(headers: &mut HeaderMap) -> (usize, Vec<HeaderName>) {
    use crate::request::facts::header_lines_bytes;
    // Only a fixed hop-by-hop name (`Connection` among them) has anything to remove: one walk
    // over the names finds none in the usual request.
    if !headers.keys().any(hop_by_hop::is_fixed) {
        return (0, Vec::new());
    }
    let before = header_lines_bytes(headers);
    let named = hop_by_hop::strip_named(headers);
    (before - header_lines_bytes(headers), named)
}

/// The status of a description a door cannot read: 431 for one over the header limits, as the
/// proxy answers such a head, 414 for a target over its limit, otherwise 400.
pub fn undescribed_status(reason: &str) -> StatusCode {
    match reason {
        "headers_too_large" | "headers_too_many" => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "uri_too_long" => StatusCode::URI_TOO_LONG,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// When a decision door's answer is due: its `timeout` after the request arrived. The
/// deadline counts from `start`, which the door has read already: a clock read fewer per
/// request than a timeout counted from the decision's own start.
pub fn deadline(start: Instant, settings: &DoorSettings) -> tokio::time::Instant {
    let timeout = common(settings).map_or(std::time::Duration::ZERO, |c| c.timeout);
    crate::clock::deadline_after(tokio::time::Instant::from_std(start), timeout)
}

/// Whether the door's peers include `peer`.
pub fn admits(common: &DecisionDoor, peer: IpAddr) -> bool {
    common.peers.iter().any(|n| n.contains(&peer))
}

/// The settings every decision door has.
pub fn common(settings: &DoorSettings) -> Option<&DecisionDoor> {
    match settings {
        DoorSettings::Proxy => None,
        DoorSettings::EnvoyGrpc(c)
        | DoorSettings::EnvoyHttp { common: c, .. }
        | DoorSettings::ForwardAuth { common: c, .. } => Some(c),
    }
}

/// The hop a door peer vouches for: the last `X-Forwarded-For` entry, the address the peer
/// itself received the request from. It is taken out of `headers`, so the entries before it
/// are read like a proxy-door request's from that hop ([`RequestFacts::new`]), through
/// `server.trusted_proxies` only.
///
/// Why: the door's peers used to be believed anywhere in the chain, so a client inside the
/// peers' network (a pod beside Envoy) chose its own address with `X-Forwarded-For`; and a
/// peer that sent no chain passed for the client, so every request shared its address (one
/// rate-limit bucket, networks and trusted-header rules met by all).
/// Regression: tests (it) doors::client_address_at_the_http_doors, tests::vouched_hops
pub fn vouched_hop(headers: &mut HeaderMap) -> Result<IpAddr, Undescribed> {
    // One hash and probe for the read and the rewrite.
    // (`try_entry` fails only for a map past http's size limit, which hyper never builds.)
    let Ok(http::header::Entry::Occupied(mut entry)) = headers.try_entry(XFF) else {
        return Err(Undescribed("missing_client_address"));
    };
    let (hop, kept) = {
        // One value (what a peer sends) is read in place; several are joined first.
        // Why bytes: the client's own entries before the hop are read as the proxy door
        // reads them ([`crate::request::facts::client_ip`]); one that was not text (`\xff`,
        // to which nginx's `$proxy_add_x_forwarded_for` appends the real address) refused
        // the request here (400) while the proxy door decided it.
        // Regression: tests::vouched_hops (`\xff, 10.0.0.2`)
        let mut values = entry.iter();
        let chain: std::borrow::Cow<'_, [u8]> = match (values.next(), values.next()) {
            (None, _) => (&b""[..]).into(),
            (Some(v), None) => v.as_bytes().into(),
            (Some(first), Some(second)) => {
                let mut chain = Vec::new();
                for v in [first, second].into_iter().chain(values) {
                    if !chain.is_empty() {
                        chain.push(b',');
                    }
                    chain.extend_from_slice(v.as_bytes());
                }
                chain.into()
            }
        };
        let (rest, last) = match chain.iter().rposition(|b| *b == b',') {
            Some(i) => (chain[..i].trim_ascii(), chain[i + 1..].trim_ascii()),
            None => (&b""[..], chain.trim_ascii()),
        };
        if last.is_empty() {
            return Err(Undescribed("missing_client_address"));
        }
        // As the proxy door reads an entry (`203.0.113.7:51234` too).
        let hop = crate::request::facts::forwarded_addr(last)
            .ok_or(Undescribed("invalid_forwarded_for"))?
            .to_canonical();
        let kept = HeaderValue::from_bytes(rest)
            .ok()
            .filter(|_| !rest.is_empty());
        (hop, kept)
    };
    match kept {
        Some(v) => {
            entry.insert(v);
        }
        None => {
            entry.remove();
        }
    }
    Ok(hop)
}

const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");

/// A refusal rendered as the door's peer passes it to the client: the refusal's own status,
/// or, when the peer cannot pass that status (nginx), the mapped one with the real one in
/// `x-portcullis-status`. The reason code is in `x-portcullis-error` too, for peers that
/// rebuild the body (nginx's `error_page`).
pub fn render_refusal(
    refusal: Refusal,
    status_map: &[(StatusCode, StatusCode)],
) -> Response<Full<Bytes>> {
    let code = refusal.code;
    let mut resp = refusal.into_response();
    as_the_peer_passes_it(&mut resp, code, status_map);
    resp
}

/// Makes a refusal's response `resp` (the reason code `code`) what the door's peer passes to
/// the client: `code` in `x-portcullis-error`, and a status the peer cannot pass mapped by
/// `status_map`, the real one in `x-portcullis-status`. The door's own refusals and the 503
/// of a request it sheds (`server::layers`) alike.
pub fn as_the_peer_passes_it<B>(
    resp: &mut Response<B>,
    code: &'static str,
    status_map: &[(StatusCode, StatusCode)],
) {
    let real = resp.status();
    resp.headers_mut()
        .insert(ERROR_HEADER, HeaderValue::from_static(code));
    if let Some(&(_, to)) = status_map.iter().find(|(from, _)| *from == real) {
        *resp.status_mut() = to;
        resp.headers_mut()
            .insert(STATUS_HEADER, HeaderValue::from(real.as_u16()));
    }
}

/// Whether a refusal says the answer could not be known (keys never fetched, introspection
/// down, the door's deadline passed, the listener gone in a reload) rather than a decision:
/// Envoy's doors leave those to Envoy's failure mode.
pub fn undecided(refusal: &Refusal) -> bool {
    refusal.code == DenyKind::AuthnUnavailable.public_code()
        || refusal.code == DECISION_TIMEOUT
        || refusal.code == NO_LISTENER
}

/// The door's deadline passed before the decision.
const DECISION_TIMEOUT: &str = "decision_timeout";
/// The listener left the config while the request was in flight.
const NO_LISTENER: &str = "no_listener";

/// Names the headers the peer must remove before forwarding (forward-auth door).
pub const REMOVE_HEADER: HeaderName = HeaderName::from_static("x-portcullis-remove");

/// The names an allow removes ([`HeaderMutation::removed`]) as one comma-separated value, in
/// that order; `None` for none.
pub fn removal_list(m: &HeaderMutation) -> Option<HeaderValue> {
    // Why: the door list's fixed part is most of it and the same for every answer: joined
    // once per snapshot, and handed over whole when nothing else goes (a clone of its bytes).
    let fixed = m.removed_fixed().and_then(DoorList::joined);
    // Fail closed: were the fixed part ever not joined, its names are written one by one.
    let unjoined = match (m.removed_fixed(), fixed) {
        (Some(d), None) => d.split().1,
        _ => &[],
    };
    let variable = m.removed_variable().chain(unjoined);
    if variable.clone().next().is_none() {
        return fixed.cloned();
    }
    let join = || {
        // Sized once and handed over, not copied.
        let len = variable
            .clone()
            .map(|n| n.as_str().len() + 1)
            .sum::<usize>()
            + fixed.map_or(0, HeaderValue::len);
        let mut text = Vec::with_capacity(len);
        for n in variable.clone() {
            if !text.is_empty() {
                text.push(b',');
            }
            text.extend_from_slice(n.as_str().as_bytes());
        }
        if let Some(f) = fixed {
            text.push(b',');
            text.extend_from_slice(f.as_bytes());
        }
        HeaderValue::from_maybe_shared(Bytes::from(text)).ok()
    };
    match (m.removed_fixed(), fixed) {
        (Some(list), Some(_)) => list.joined_after(variable.clone(), join),
        _ => join(),
    }
}

/// Carries the real status when a door maps it for its peer.
pub const STATUS_HEADER: HeaderName = HeaderName::from_static("x-portcullis-status");

/// Carries the reason code of a refusal from a decision door.
pub const ERROR_HEADER: HeaderName = HeaderName::from_static("x-portcullis-error");

/// An allowed request's answer: 200, empty, the identity headers to set.
pub fn allow_response(allow: &Allow) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    let h = resp.headers_mut();
    // The identity headers, the response's, `cache-control`, and the door's own two (the
    // request id, the names to remove): room for all at once rather than regrowing. (Past
    // the map's limit the inserts below grow it as before.)
    let _ = h.try_reserve(allow.mutation.set.len() + allow.mutation.response.len() + 3);
    for (name, value) in &allow.mutation.set {
        h.insert(name.clone(), value.clone());
    }
    for (name, value) in &allow.mutation.response {
        h.insert(name.clone(), value.clone());
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// A header's only value as text, or `None`; repeated or non-text values are refused.
pub fn single<'h>(h: &'h HeaderMap, name: &HeaderName) -> Result<Option<&'h str>, Undescribed> {
    Ok(single_value(h, name)?.and_then(|v| v.to_str().ok()))
}

/// [`single`]'s value itself (visible text, checked), for a door that passes it on.
pub fn single_value<'h>(
    h: &'h HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'h HeaderValue>, Undescribed> {
    let mut values = h.get_all(name).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Undescribed("repeated_description_header"));
    }
    v.to_str()
        .map(|_| Some(v))
        .map_err(|_| Undescribed("invalid_description_header"))
}

/// The scheme a peer names (Envoy, and forward auth by default).
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The `name: value` lines of the fields named `names` in `h`, with their line ends, as
/// [`crate::request::facts::head_bytes`] counts them.
pub fn lines_of<'n>(h: &HeaderMap, names: impl IntoIterator<Item = &'n HeaderName>) -> usize {
    names
        .into_iter()
        .flat_map(|n| h.get_all(n).iter().map(|v| n.as_str().len() + v.len() + 4))
        .sum()
}

/// The bytes of the scheme field a peer adds (`X-Forwarded-Proto`, one field naming `http` or
/// `https`), not held against `server.max_header_bytes` at the doors that may see it, as the
/// proxy door reads the scheme from its connection ([`Described::describing`]). Repeated, or
/// naming another scheme, it counts.
pub fn scheme_field_bytes(h: &HeaderMap) -> usize {
    match scheme(h) {
        Ok(_) => lines_of(h, [&X_FORWARDED_PROTO]),
        Err(_) => 0,
    }
}

/// `X-Forwarded-Proto`: `http` (also when absent) or `https`.
pub fn scheme(h: &HeaderMap) -> Result<Scheme, Undescribed> {
    scheme_in(h, &X_FORWARDED_PROTO)
}

/// The scheme in header `name`: `http` (also when absent) or `https`.
pub fn scheme_in(h: &HeaderMap, name: &HeaderName) -> Result<Scheme, Undescribed> {
    match single(h, name)? {
        None => Ok(Scheme::Http),
        Some(p) if p.eq_ignore_ascii_case("http") => Ok(Scheme::Http),
        Some(p) if p.eq_ignore_ascii_case("https") => Ok(Scheme::Https),
        Some(_) => Err(Undescribed("invalid_forwarded_proto")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrades_asked_and_hop_by_hop_bytes() {
        // (headers, what is asked)
        type Case<'a> = (&'a [(&'a str, &'a str)], Result<Option<&'a str>, &'a str>);
        let cases: [Case<'_>; 7] = [
            (&[], Ok(None)),
            (&[("upgrade", "websocket")], Ok(Some("websocket"))),
            // A peer may have dropped `Connection`: the upgrade is still asked.
            (
                &[("connection", "upgrade"), ("upgrade", "websocket")],
                Ok(Some("websocket")),
            ),
            (
                &[("upgrade", "websocket"), ("upgrade", "foo")],
                Ok(Some("websocket, foo")),
            ),
            (&[("upgrade", "websocket, h2c")], Err("h2c_upgrade")),
            (&[("upgrade", "H2C")], Err("h2c_upgrade")),
            (
                &[("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA")],
                Err("h2c_upgrade"),
            ),
        ];
        for (headers, want) in cases {
            let mut h = HeaderMap::new();
            for (k, v) in headers {
                h.append(*k, HeaderValue::from_static(v));
            }
            let got = asked_upgrade(&h);
            let got = got
                .as_ref()
                .map(|u| u.as_ref().map(|v| v.to_str().unwrap()))
                .map_err(|e| *e);
            assert_eq!(got, want, "{headers:?}");
        }
        // The bytes the head limits still count: every removed line, `name: value` and its end.
        let mut h = HeaderMap::new();
        h.insert("x-kept", HeaderValue::from_static("1"));
        assert_eq!(strip_counted(&mut h).0, 0);
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("connection", HeaderValue::from_static("x-named"));
        h.insert("x-named", HeaderValue::from_static("abc"));
        let removed = ("keep-alive".len() + 9 + 4) + ("connection".len() + 7 + 4) + (7 + 3 + 4);
        assert_eq!(strip_counted(&mut h).0, removed);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn vouched_hops() {
        // (X-Forwarded-For values, the hop, what stays of the chain)
        type Case<'a> = (&'a [&'a [u8]], Result<&'a str, &'a str>, Option<&'a [u8]>);
        let cases: [Case<'_>; 11] = [
            (&[b"203.0.113.9"], Ok("203.0.113.9"), None),
            (&[b"1.1.1.1, 10.0.0.2"], Ok("10.0.0.2"), Some(b"1.1.1.1")),
            (&[b"1.1.1.1", b"10.0.0.2"], Ok("10.0.0.2"), Some(b"1.1.1.1")),
            (&[b"::ffff:192.0.2.1"], Ok("192.0.2.1"), None),
            (&[b"2001:db8::1"], Ok("2001:db8::1"), None),
            (&[], Err("missing_client_address"), None),
            (&[b"1.1.1.1, "], Err("missing_client_address"), None),
            (&[b"1.1.1.1, evil"], Err("invalid_forwarded_for"), None),
            // The client's entries are its own: kept as they are, read by `client_ip`.
            (&[b"\xff, 10.0.0.2"], Ok("10.0.0.2"), Some(b"\xff")),
            (&[b"\xe9", b"10.0.0.2"], Ok("10.0.0.2"), Some(b"\xe9")),
            // The hop itself must read as an address.
            (
                &[b"1.1.1.1, 10.0.0.\xff"],
                Err("invalid_forwarded_for"),
                None,
            ),
        ];
        for (values, want, rest) in cases {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(XFF, HeaderValue::from_bytes(v).unwrap());
            }
            let got = vouched_hop(&mut h).map(|ip| ip.to_string());
            assert_eq!(got.as_deref().map_err(|u| u.0), want, "{values:?}");
            if want.is_ok() {
                assert_eq!(h.get(XFF).map(HeaderValue::as_bytes), rest, "{values:?}");
            }
        }
    }

    /// A request whose handling panics is still counted and logged: at each decision door as
    /// the answer the door gives a panic, under the request's id, which that answer names.
    #[tokio::test]
    async fn a_panic_is_still_counted_and_logged() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        let config = dir.path().join("portcullis.yaml");
        std::fs::write(
            &config,
            "listeners:\n  - {name: fa, address: \"127.0.0.1:0\", door: {forward_auth: {}}}\npolicies: {dir: policies}\n",
        )
        .unwrap();
        let (snapshot, _) =
            crate::config::build_with_clock(&config, None, crate::clock::Clock::system()).unwrap();
        let shared = Shared {
            current: Arc::new(arc_swap::ArcSwap::from_pointee(snapshot)),
            metrics: Arc::new(crate::telemetry::metrics::Metrics::new()),
            in_flight: Arc::new(tokio::sync::Semaphore::new(1)),
            decisions_in_flight: Arc::new(tokio::sync::Semaphore::new(1)),
            decision_listener: None,
            shutdown: tokio::sync::watch::channel(false).1,
            grace_over: Arc::default(),
            stopping: Arc::default(),
            uploads: Arc::default(),
        };
        let snapshot = shared.current.load_full();
        for (door, status) in [(Door::ForwardAuth, "403"), (Door::EnvoyGrpc, "500")] {
            let id = HeaderValue::from_static("req-panicked-1");
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _pending = Pending::new(
                    "127.0.0.1".parse().unwrap(),
                    (&snapshot, &shared),
                    (door, "fa"),
                    Instant::now(),
                    &id,
                );
                panic!("a bug");
            }));
            assert!(caught.is_err());
            // The answer to the panic names the same id, once.
            assert_eq!(crate::server::request_id::take_panicked(), id);
            assert_ne!(crate::server::request_id::take_panicked(), id);
            let metrics = shared.metrics.encode();
            let counted = metrics.lines().any(|l| {
                l.starts_with("portcullis_requests_total{")
                    && l.contains(&format!("door=\"{}\"", door.as_str()))
                    && l.contains("decision=\"error\"")
                    && l.contains(&format!("status=\"{status}\""))
                    && l.ends_with(" 1")
            });
            assert!(counted, "{door:?} not counted:\n{metrics}");
        }
    }
}
