//! Envoy's gRPC ext_authz door: `envoy.service.auth.v3.Authorization/Check`, and the gRPC
//! health service (`grpc.health.v1.Health`), on a listener of its own (TLS and mTLS like any
//! other), served by the same connection loop as every door.
//!
//! What a `CheckRequest` means here (Envoy's `attributes`):
//!
//! | fact | from |
//! |---|---|
//! | method, host, target | `request.http.method`, `.host` (or `:authority`), `.path` (raw, with the query; canonicalised exactly as the proxy does, ambiguous paths refused the same way) |
//! | scheme | `request.http.scheme` (`http` or `https`) |
//! | headers | `request.http.headers`, or `request.http.header_map` (raw values) when Envoy's `encode_raw_headers` is on; pseudo-headers left out |
//! | client | `source.address` (Envoy's downstream peer), believed because only the door's `peers` are served |
//! | client certificate | `source.certificate` (URL-encoded PEM; `include_peer_certificate: true`), only with the door's `client_certificates: true`; `tls_session.sni` |
//! | request id | the request's `x-request-id` (`server.request_id_header`), else `request.http.id` (Envoy's stream id), else a fresh one |
//!
//! `context_extensions` (Envoy's per-route `check_settings`) narrow rules: a rule with
//! `match.context_extensions` matches only Checks carrying each of those names with that
//! value. No other door has them, so such a rule decides nothing elsewhere, and a request
//! matched by no such rule is decided by the same rules as at every other door.
//!
//! A CORS preflight for a rule with CORS is answered by the door, as by the proxy
//! ([`crate::authz::edge::preflight`]): a `DeniedHttpResponse` of 204 with the CORS headers
//! (or 403), which Envoy sends the client without reaching the upstream.
//!
//! Answers: allow is `OK` with an `OkHttpResponse` (identity headers set, overwriting;
//! `headers_to_remove` for every spoofed header and a stripped credential; response headers
//! to add) and `dynamic_metadata` (`principal_id`, `principal_kind`, `rule`; a denial's has
//! `reason`, and `rule` and the principal when known). A denial is the
//! matching gRPC code (UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED, …) with a
//! `DeniedHttpResponse` carrying the proxy's status, `WWW-Authenticate` and JSON body. When the
//! answer cannot be known (keys never fetched, introspection down, the deadline passed) the
//! call fails with `UNAVAILABLE`, so Envoy's `failure_mode_allow` and `status_on_error` apply.
//! The deadline is the door's `timeout` or the caller's `grpc-timeout`, the earlier (past the
//! caller's, the call fails with `DEADLINE_EXCEEDED`).
//! A delegate configured to fail closed is a decision, not a failure: its 503
//! `delegate_unavailable` is a denied response, which no failure mode of Envoy's turns into an
//! allow. Bad input (a message that does not decode, invalid UTF-8 in a string field the door
//! reads among them ([`wire`]); no attributes; a header that is not text; an absolute or
//! empty path) is `INVALID_ARGUMENT` with a 400 for the client, never a failed call; nothing
//! panics. A head over `server.max_header_bytes` or a target over `max_target_bytes`, counted
//! as the proxy counts them, gets the proxy's 431 `headers_too_large` or 414 `uri_too_long`;
//! a header map of more entries than `max_headers` allows, 431 `headers_too_many` before the
//! message is decoded ([`max_entries`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use envoy_types::ext_authz::v3::pb::{
    CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue as PbHeaderValue,
    HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use hyper::body::Incoming;
use tonic::codegen::Service as _;

use crate::decision::{self, Allow, Decision, DenyKind, NoTrace, Refusal};
use crate::door::{self, Record};
use crate::request::RequestFacts;
use crate::request::facts::{ClientCert, ConnInfo, Door, Head, Scheme, TlsInfo};
use crate::server::{Conn, Shared};
use crate::snapshot::{DoorSettings, Snapshot};

mod answer;
pub(crate) mod wire;

use wire::{AddressKind, CheckRequest, HttpRequest, text};

pub use self::answer::Answer;

/// The one method of Envoy's `Authorization` service.
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// The `Check` service of one listener.
#[derive(Debug, Clone)]
pub struct CheckService {
    shared: Arc<Shared>,
    index: usize,
}

/// Largest Check (or health) message decoded from a refused peer (whose message is skipped)
/// or for the health service.
const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// What a Check message may hold besides the described request's head and body: addresses,
/// certificates, context extensions, metadata.
const CHECK_OVERHEAD_BYTES: usize = 256 << 10;

/// The most a Check message may take whatever the limits: gRPC's usual receive limit.
/// Envoy's `with_request_body` (`max_request_bytes`) sends a part of the body, usually KiB.
///
/// Why a bound of its own: the door holds the whole message until it is decided, where the
/// proxy streams a body; derived from `server.max_body_bytes` alone (10 MiB, or whatever an
/// operator raised it to for uploads), one stream could hold that much.
const CHECK_MAX_BYTES: usize = 4 << 20;

/// Bytes of a Check message read before it counts against its listener's
/// [`CHECK_BUFFER_BYTES`]: more than any usual Check (a request's head and a little body),
/// so those never wait on the budget.
const CHECK_FREE_BYTES: usize = 64 << 10;

/// The most a listener holds at once of its Check messages past their first
/// [`CHECK_FREE_BYTES`].
///
/// Why: [`CHECK_MAX_BYTES`] bounds one message; a peer with many streams held that much on
/// each (128 streams a connection, any number of connections) for up to the door's
/// deadline: 828 MB under a tester's load. A message that would pass this budget is denied
/// (503 `overloaded`), as a shed request is. Regression: tests (it)
/// grpc::large_check_messages_share_a_budget
const CHECK_BUFFER_BYTES: usize = 64 << 20;

/// The largest Check message taken: the largest request the proxy door takes (head, target
/// and body, which Envoy's `with_request_body` may send), plus [`CHECK_OVERHEAD_BYTES`],
/// within [`CHECK_MAX_BYTES`].
fn check_limit(snapshot: &Snapshot) -> usize {
    let s = &snapshot.server;
    usize::try_from(s.max_body_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(s.max_header_bytes)
        .saturating_add(s.max_target_bytes)
        .saturating_add(CHECK_OVERHEAD_BYTES)
        .min(CHECK_MAX_BYTES)
}

/// The most entries a header map of a Check message may have: past the server's
/// `max_headers` and the fields a peer adds to describe a request, [`header_map`] refuses the
/// request anyway (`headers_too_many`), so the message is refused unread ([`wire`]). Nor
/// past a quarter of the head's byte limit, whatever `max_headers` says: each entry counts at
/// least 4 bytes there (`headers_too_large`).
///
/// Why the bytes too: `max_headers` has no upper bound, and raised far enough it let a 4 MB
/// message decode into 2 million entries again (165 MB).
pub(crate) fn max_entries(snapshot: &Snapshot) -> usize {
    let s = &snapshot.server;
    s.max_headers
        .saturating_add(door::DESCRIBING_ALLOWANCE)
        .min(s.max_header_bytes.saturating_add(s.max_target_bytes) / 4 + 1)
}

/// The deadline of a call to the listener at `index` that started at `start`: its door's
/// `timeout`.
fn call_deadline(shared: &Shared, index: usize, start: Instant) -> tokio::time::Instant {
    let snapshot = shared.current.load();
    let settings = snapshot
        .listener(index)
        .map_or(&DoorSettings::Proxy, |l| &l.door);
    door::deadline(start, settings)
}

/// When the Check's call started (its deadline counts from there, the message's reading
/// included), and the deadline its caller set (`grpc-timeout`), if any.
#[derive(Debug, Clone, Copy)]
struct Started(Instant, Option<tokio::time::Instant>);

/// The deadline a caller set with `grpc-timeout` (gRPC over HTTP/2: up to eight digits and a
/// unit, `H`, `M`, `S`, `m`, `u` or `n`), counted from `start`, less the answer's way back
/// ([`transit_margin`]); `None` when absent or not in that form (the door's own `timeout`
/// still bounds the call).
///
/// Why: Envoy sends its ext_authz `timeout` (200 ms by default) as `grpc-timeout` and stops
/// waiting then, applying `failure_mode_allow` or `status_on_error`. A Check it gave up on
/// went on to the door's longer deadline, holding an in-flight permit and an introspection
/// or delegate call for an answer nobody reads.
/// Regression: tests::grpc_timeout_parses_as_grpc_says
fn peer_deadline(headers: &HeaderMap, start: Instant) -> Option<tokio::time::Instant> {
    let v = headers.get("grpc-timeout")?.as_bytes();
    let (digits, unit) = v.split_last().map(|(u, d)| (d, *u))?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    let timeout = match unit {
        b'H' => std::time::Duration::from_secs(n.saturating_mul(3600)),
        b'M' => std::time::Duration::from_secs(n.saturating_mul(60)),
        b'S' => std::time::Duration::from_secs(n),
        b'm' => std::time::Duration::from_millis(n),
        b'u' => std::time::Duration::from_micros(n),
        b'n' => std::time::Duration::from_nanos(n),
        _ => return None,
    };
    Some(crate::clock::deadline_after(
        tokio::time::Instant::from_std(start),
        timeout.saturating_sub(transit_margin(timeout)),
    ))
}

/// What is kept of a caller's `timeout` for the answer's way back and the caller's clock,
/// which started a hop before the door's: a tenth, at least 20 ms, at most half.
///
/// Why: a fail-closed delegate cut to the caller's whole deadline answered its denial a few
/// milliseconds before Envoy gave up, and Envoy's `failure_mode_allow: true` turns a late
/// answer into an allow. Regression: tests::grpc_timeout_parses_as_grpc_says
fn transit_margin(timeout: std::time::Duration) -> std::time::Duration {
    (timeout / 10)
        .max(std::time::Duration::from_millis(20))
        .min(timeout / 2)
}

/// Why a Check's message was not handed to the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unread {
    /// Longer than [`check_limit`]: 413 `check_too_large`.
    TooLarge,
    /// Not one whole uncompressed gRPC message (none, truncated, two, compressed, a broken
    /// stream): 400 `invalid_check_request`.
    Malformed,
    /// Not all there by the door's deadline: 408 `check_timeout`.
    Late,
    /// Past the listener's budget of large messages ([`CHECK_BUFFER_BYTES`]): 503 `overloaded`.
    Busy,
}

impl Unread {
    fn refusal(self, request_id: &HeaderValue) -> Refusal {
        let (status, reason) = match self {
            Self::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "check_too_large"),
            Self::Malformed => (StatusCode::BAD_REQUEST, "invalid_check_request"),
            Self::Late => (StatusCode::REQUEST_TIMEOUT, "check_timeout"),
            Self::Busy => (StatusCode::SERVICE_UNAVAILABLE, "overloaded"),
        };
        Refusal::error(status, reason, request_id)
    }
}

/// A Check's one message, framed (the 5-byte prefix and the message), read whole before the
/// decoder sees it: at most `limit` bytes of message, by `due`.
///
/// Why read here rather than by tonic: tonic fails the call (`OUT_OF_RANGE`, `INTERNAL`,
/// `UNIMPLEMENTED`) on a message over its limit, a truncated or missing one, or a compressed
/// one, and waits for a stalled one without end; Envoy's `failure_mode_allow: true` turns a
/// failed call into an allow, so a client whose body pushed the message past 1 MiB was let
/// through. Each of these is now a denial. Regression: tests (it)
/// grpc::an_unreadable_check_message_is_denied_not_failed
async fn read_check(
    mut body: Incoming,
    limit: usize,
    due: tokio::time::Instant,
    budget: &Arc<tokio::sync::Semaphore>,
) -> Result<(bytes::Bytes, Option<tokio::sync::OwnedSemaphorePermit>), Unread> {
    use http_body_util::BodyExt as _;
    let mut held: Option<tokio::sync::OwnedSemaphorePermit> = None;
    let read = async {
        // The usual message comes in one DATA frame, kept as it is; more are joined.
        let mut first: Option<bytes::Bytes> = None;
        let mut joined = bytes::BytesMut::new();
        let mut len = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| Unread::Malformed)?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            len = len.saturating_add(data.len());
            if len > limit.saturating_add(5) {
                return Err(Unread::TooLarge);
            }
            // Past the free bytes, each KiB held counts against the listener's budget.
            let kib = len.saturating_sub(CHECK_FREE_BYTES).div_ceil(1024);
            let more = kib.saturating_sub(held.as_ref().map_or(0, |h| h.num_permits()));
            if more > 0 {
                let got = u32::try_from(more)
                    .ok()
                    .and_then(|n| Arc::clone(budget).try_acquire_many_owned(n).ok())
                    .ok_or(Unread::Busy)?;
                match &mut held {
                    Some(h) => h.merge(got),
                    None => held = Some(got),
                }
            }
            match first.take() {
                None if joined.is_empty() => first = Some(data),
                None => joined.extend_from_slice(&data),
                Some(f) => {
                    joined.extend_from_slice(&f);
                    joined.extend_from_slice(&data);
                }
            }
            // An announced length past the limit is refused before the rest arrives.
            let head = first.as_deref().unwrap_or(&joined[..]);
            if let [_, a, b, c, d, ..] = *head
                && u32::from_be_bytes([a, b, c, d]) as usize > limit
            {
                return Err(Unread::TooLarge);
            }
        }
        Ok(first.unwrap_or_else(|| joined.freeze()))
    };
    let framed = tokio::time::timeout_at(due, read)
        .await
        .map_err(|_| Unread::Late)??;
    // One uncompressed message, exactly as long as its prefix says.
    match framed[..] {
        [0, a, b, c, d, ..] if u32::from_be_bytes([a, b, c, d]) as usize == framed.len() - 5 => {
            Ok((framed, held))
        }
        _ => Err(Unread::Malformed),
    }
}

/// The gRPC door's [`crate::server::listener::Handler`]: `Check` and the health service,
/// routed by path.
#[derive(Clone)]
pub struct GrpcHandler {
    shared: Arc<Shared>,
    index: usize,
    check: CheckService,
    health: tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>,
    readiness: Arc<Readiness>,
    /// KiB of large Check messages held ([`CHECK_BUFFER_BYTES`]).
    buffered: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for GrpcHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcHandler").finish_non_exhaustive()
    }
}

/// What the health service reports: `/readyz`'s answer, kept current.
///
/// Why: the service said SERVING from start to end, so Envoy's `grpc_health_check` (or a
/// Kubernetes gRPC probe) kept sending Checks to a gateway whose `/readyz` said not ready
/// (key sets never fetched, shutting down), which could only answer UNAVAILABLE.
/// Regression: tests (it) grpc::health_follows_readiness
struct Readiness {
    reporter: tonic_health::server::HealthReporter,
    shared: Arc<Shared>,
    /// `/readyz`'s memo ([`crate::admin::AdminState::was_ready`]), shared.
    was_ready: Arc<std::sync::atomic::AtomicBool>,
    /// What was last reported: 0 nothing yet, 1 serving, 2 not serving. Held across the
    /// report, and written after it, so that updates never interleave and a report cut short
    /// (a health call dropped) is made again by the next update.
    reported: tokio::sync::Mutex<u8>,
}

/// The names the health service answers for.
const HEALTH_NAMES: [&str; 2] = ["", "envoy.service.auth.v3.Authorization"];

impl Readiness {
    /// `/readyz`'s rule: not shutting down, and every remote key set not marked optional
    /// fetched once (or the gateway was ready once before).
    fn ready(&self) -> bool {
        use std::sync::atomic::Ordering;
        if *self.shared.shutdown.borrow() || self.shared.stopping.load(Ordering::Relaxed) {
            return false;
        }
        if self.was_ready.load(Ordering::Relaxed) || self.shared.current.load().authn.is_ready() {
            self.was_ready.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Reports the current state, when it changed.
    async fn update(&self) {
        let mut reported = self.reported.lock().await;
        let (now, status) = if self.ready() {
            (1, tonic_health::ServingStatus::Serving)
        } else {
            (2, tonic_health::ServingStatus::NotServing)
        };
        if *reported != now {
            for name in HEALTH_NAMES {
                self.reporter.set_service_status(name, status).await;
            }
            *reported = now;
        }
    }
}

// === impl GrpcHandler ===

impl GrpcHandler {
    /// The door of the listener at `index`; its health service says what `/readyz` says
    /// (`was_ready` is `/readyz`'s memo), checked on every health call and every second for
    /// `Watch` streams.
    pub async fn new(
        shared: Arc<Shared>,
        index: usize,
        was_ready: Arc<std::sync::atomic::AtomicBool>,
    ) -> Self {
        let reporter = tonic_health::server::HealthReporter::new();
        let health = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
        let readiness = Arc::new(Readiness {
            reporter,
            shared: Arc::clone(&shared),
            was_ready,
            reported: tokio::sync::Mutex::new(0),
        });
        readiness.update().await;
        let watcher = Arc::downgrade(&readiness);
        let mut shutdown = shared.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut watching = true;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    // (A dropped sender is not watched again: `changed` would return at once.)
                    changed = shutdown.changed(), if watching => watching = changed.is_ok(),
                }
                // Ends with the door (its handler dropped).
                let Some(readiness) = watcher.upgrade() else {
                    return;
                };
                readiness.update().await;
            }
        });
        Self {
            shared: Arc::clone(&shared),
            index,
            check: CheckService { shared, index },
            health: tonic_health::pb::health_server::HealthServer::new(health)
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            readiness,
            buffered: Arc::new(tokio::sync::Semaphore::new(CHECK_BUFFER_BYTES / 1024)),
        }
    }
}

impl crate::server::listener::Handler for GrpcHandler {
    const DECIDES_ONLY: bool = true;
    const DOOR: Option<Door> = Some(Door::EnvoyGrpc);

    /// A Check answered with a denial (500 `internal_error`, the CheckResponse's status not
    /// OK), which Envoy applies whatever its `failure_mode_allow`.
    fn panicked() -> crate::server::listener::Answering {
        Box::pin(async {
            let id = crate::server::request_id::take_panicked();
            let refusal = Refusal::error(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", &id);
            tonic::server::Grpc::new(SkipCodec)
                .unary(
                    Refused(Some(denied(refusal))),
                    http::Request::new(empty_message()),
                )
                .await
                .map(crate::body::grpc)
        })
    }

    fn call(
        &self,
        conn: Arc<Conn>,
        mut req: http::Request<Incoming>,
    ) -> crate::server::listener::Answering {
        // Why: a Check request describes a request and is believed; only Envoy may send one,
        // and nobody else gets a message decoded (up to MAX_MESSAGE_BYTES) before that is
        // known. Regression: tests (it) grpc::peer_not_allowed
        let refused = {
            let snapshot = self.shared.current.load();
            let admitted = snapshot
                .listener(self.index)
                .and_then(|l| door::common(&l.door))
                .is_some_and(|c| door::admits(c, conn.info.peer.ip()));
            (!admitted).then(|| {
                let mut record = Record::new(conn.info.peer.ip());
                record.failed(&self.shared, Door::EnvoyGrpc, "peer_not_allowed");
                let id = crate::server::request_id::take_or_generate(
                    req.headers(),
                    &snapshot.server.request_id_header,
                );
                let at = (Door::EnvoyGrpc, &*conn.info.listener);
                record.account(&snapshot, &self.shared, at, Instant::now(), &id, 403);
                let refusal = Refusal::error(StatusCode::FORBIDDEN, "peer_not_allowed", &id);
                denied_with_id(refusal, &snapshot.server.request_id_header, &id)
            })
        };
        req.extensions_mut().insert(conn);
        let path = req.uri().path();
        let (check, health) = if path == CHECK_PATH {
            (Some(self.check.clone()), None)
        } else if path.starts_with("/grpc.health.v1.Health/") {
            (None, Some(self.health.clone()))
        } else {
            (None, None)
        };
        let readiness = Arc::clone(&self.readiness);
        let buffered = Arc::clone(&self.buffered);
        let (shared, index) = (Arc::clone(&self.shared), self.index);
        Box::pin(async move {
            if let Some(refusal) = refused {
                // Why: a failed call is what Envoy's `failure_mode_allow: true` turns into an
                // allow, so a Check from a peer left out of `peers` (Envoy's own address
                // missing from the list after a change) would have let every request through.
                // A Check is answered with a denial (403, PERMISSION_DENIED), its message
                // skipped unread; anything else fails the call.
                // Regression: tests (it) grpc::peer_not_allowed
                let resp = if check.is_some() {
                    // Why: tonic reads a whole message before the service runs, so a refused
                    // peer announcing a 1 MiB message and sending it slowly held a megabyte
                    // and an in-flight permit per stream until it chose to finish: 60 such
                    // streams made every door answer 503. The refusal depends on nothing the
                    // message says: its body is dropped unread, and the codec is handed one
                    // empty message in its place.
                    // Regression: tests (it) grpc::a_refused_peers_message_is_never_read
                    let (mut parts, _unread) = req.into_parts();
                    // (An encoding named for the unread message would make tonic refuse the
                    // call: a failed call.)
                    parts.headers.remove("grpc-encoding");
                    tonic::server::Grpc::new(SkipCodec)
                        .max_decoding_message_size(MAX_MESSAGE_BYTES)
                        .unary(
                            Refused(Some(refusal)),
                            http::Request::from_parts(parts, empty_message()),
                        )
                        .await
                } else {
                    tonic::Status::permission_denied("peer_not_allowed").into_http()
                };
                return resp.map(crate::body::grpc);
            }
            let resp = match (check, health) {
                (Some(check), _) => {
                    let start = Instant::now();
                    let (mut parts, body) = req.into_parts();
                    // The message was checked to be uncompressed: an encoding named for it
                    // would make tonic refuse the call unread.
                    parts.headers.remove("grpc-encoding");
                    let limit = check_limit(&shared.current.load());
                    let asked = peer_deadline(&parts.headers, start);
                    let due = call_deadline(&shared, index, start);
                    let due = asked.map_or(due, |a| a.min(due));
                    let answered = match read_check(body, limit, due, &buffered).await {
                        Ok((framed, _held_until_answered)) => {
                            parts.extensions.insert(Started(start, asked));
                            tonic::server::Grpc::new(CheckCodec {
                                max_entries: max_entries(&shared.current.load()),
                            })
                            .max_decoding_message_size(limit)
                            .unary(
                                check,
                                http::Request::from_parts(parts, http_body_util::Full::new(framed)),
                            )
                            .await
                        }
                        Err(unread) => {
                            let refusal = check.unread(&parts, unread, start);
                            tonic::server::Grpc::new(SkipCodec)
                                .unary(
                                    Refused(Some(refusal)),
                                    http::Request::from_parts(parts, empty_message()),
                                )
                                .await
                        }
                    };
                    // Its answer in frames that h2 gathers with the other streams' answers.
                    answered.map(|b| crate::body::GrpcBody::new(crate::body::SmallFrames::new(b)))
                }
                (None, Some(mut health)) => {
                    // Why a deadline: a health call whose message stalled held its in-flight
                    // permit for as long as the peer kept the stream open (enough of them:
                    // every door 503). It ends at the door's `timeout` as a failed call,
                    // which for a health check is what it is.
                    // Regression: tests (it) grpc::a_stalled_health_call_ends_at_the_deadline
                    let due = call_deadline(&shared, index, Instant::now());
                    let answered = tokio::time::timeout_at(due, async {
                        readiness.update().await;
                        health.call(req).await
                    })
                    .await;
                    match answered {
                        Ok(Ok(resp)) => resp,
                        Ok(Err(never)) => match never {},
                        Err(_) => tonic::Status::deadline_exceeded("health_timeout").into_http(),
                    }
                }
                (None, None) => tonic::Status::unimplemented("").into_http(),
            };
            resp.map(crate::body::grpc)
        })
    }
}

/// One empty gRPC message: what the codec of a Check whose message is not read is handed.
fn empty_message() -> http_body_util::Full<bytes::Bytes> {
    http_body_util::Full::new(bytes::Bytes::from_static(&[0; 5]))
}

/// A Check's message as decoded: the request, or bytes that are not one.
#[derive(Debug)]
pub enum Decoded {
    /// Boxed: a `CheckRequest` is hundreds of bytes, moved through tonic.
    Check(Box<CheckRequest>),
    /// Not read: not a `CheckRequest` (invalid UTF-8 in a string field read, a truncated or
    /// malformed message), or a map of more entries than any request taken has headers.
    Unreadable(wire::Unreadable),
}

/// prost's encoding for the answer; a decoding that never fails the call.
#[derive(Debug, Clone, Copy, Default)]
struct CheckCodec {
    max_entries: usize,
}

/// Decodes a `CheckRequest`, or says why the bytes are not read.
#[derive(Debug, Clone, Copy, Default)]
struct CheckDecoder {
    /// The most entries a map of the message may have ([`wire::CheckRequest::read`]).
    max_entries: usize,
}

impl tonic::codec::Codec for CheckCodec {
    type Encode = Answer;
    type Decode = Decoded;
    type Encoder = tonic_prost::ProstEncoder<Answer>;
    type Decoder = CheckDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckDecoder {
            max_entries: self.max_entries,
        }
    }
}

impl tonic::codec::Decoder for CheckDecoder {
    type Item = Decoded;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Decoded>, tonic::Status> {
        use bytes::Buf as _;
        // Why: a message prost refuses (a header value or path with bytes that are not UTF-8,
        // which Envoy may pass on from the client) failed the call with INTERNAL, and Envoy's
        // `failure_mode_allow: true` turns a failed call into an allow: a client could choose
        // to be let through. It is bad input, denied like any other.
        // Regression: tests (it) grpc::undecodable_check_is_denied_not_failed
        // (A message's bytes are one chunk of tonic's buffer: taken without a copy, and its
        // fields share them.)
        let bytes = buf.copy_to_bytes(buf.remaining());
        Ok(Some(match CheckRequest::read(bytes, self.max_entries) {
            Ok(check) => Decoded::Check(Box::new(check)),
            Err(why) => Decoded::Unreadable(why),
        }))
    }
}

/// The codec of a Check from a refused peer: its message is skipped, not decoded.
#[derive(Debug, Clone, Copy, Default)]
struct SkipCodec;

impl tonic::codec::Codec for SkipCodec {
    type Encode = Answer;
    type Decode = ();
    type Encoder = tonic_prost::ProstEncoder<Answer>;
    type Decoder = Self;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        Self
    }
}

impl tonic::codec::Decoder for SkipCodec {
    type Item = ();
    type Error = tonic::Status;

    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<()>, tonic::Status> {
        use bytes::Buf as _;
        buf.advance(buf.remaining());
        Ok(Some(()))
    }
}

/// The answer to a Check from a peer the door does not serve: its refusal, whatever it asked.
struct Refused(Option<CheckResponse>);

impl tonic::server::UnaryService<()> for Refused {
    type Response = Answer;
    type Future = std::future::Ready<Result<tonic::Response<Answer>, tonic::Status>>;

    fn call(&mut self, _: tonic::Request<()>) -> Self::Future {
        std::future::ready(match self.0.take() {
            Some(denial) => Ok(tonic::Response::new(Answer::Message(denial))),
            None => Err(tonic::Status::permission_denied("peer_not_allowed")),
        })
    }
}

// === impl CheckService ===

impl tonic::server::UnaryService<Decoded> for CheckService {
    type Response = Answer;
    type Future = std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<tonic::Response<Answer>, tonic::Status>> + Send,
        >,
    >;

    fn call(&mut self, request: tonic::Request<Decoded>) -> Self::Future {
        let service = self.clone();
        Box::pin(async move { service.check(request).await })
    }
}

impl CheckService {
    /// One Check, accounted.
    async fn check(
        &self,
        request: tonic::Request<Decoded>,
    ) -> Result<tonic::Response<Answer>, tonic::Status> {
        let (start, asked) = request
            .extensions()
            .get::<Started>()
            .map_or_else(|| (Instant::now(), None), |s| (s.0, s.1));
        let snapshot = self.shared.current.load_full();
        let Some(conn) = request.extensions().get::<Arc<Conn>>().cloned() else {
            return Err(tonic::Status::internal("no connection"));
        };
        let check = match request.into_inner() {
            Decoded::Check(check) => check,
            Decoded::Unreadable(why) => {
                return Ok(self.unreadable(&snapshot, &conn, start, why.code()));
            }
        };
        // Why: taken as sent, a megabyte of a peer's id went into the log line and the
        // answer, and an id with a non-ASCII letter reached the client but not the log.
        // Regression: tests (it) grpc::a_peers_request_id_is_checked_as_a_headers
        //
        // Why the request's own header first: Envoy fills `http.id` with its stream id (a
        // number of its own), not the `x-request-id` it gives the upstream and its access
        // log, so the door's log lines, denial bodies and the id it sent the client matched
        // nothing else (the Envoy HTTP door read the header). `http.id` only when the
        // request has no well-formed id of its own.
        // Regression: tests (it) grpc::the_request_id_is_the_requests_header_not_envoys_stream_id
        let http = check.http();
        let name = snapshot.server.request_id_header.as_str();
        let own = http
            .and_then(|h| RawHeaders::of(h).find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes())))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
            .filter(|v| crate::server::request_id::well_formed(v.as_bytes()));
        let request_id = crate::server::request_id::take_or_generate_text(
            own.or_else(|| http.map(|h| text(&h.id))),
        );
        // Accounted when answered, or as 499 if Envoy resets the call first.
        let mut pending = door::Pending::new(
            conn.info.peer.ip(),
            (&snapshot, &self.shared),
            (Door::EnvoyGrpc, &conn.info.listener),
            start,
            &request_id,
        );
        let answer = self
            .answer(
                &snapshot,
                &conn,
                &check,
                &request_id,
                &mut pending.record,
                (start, asked),
            )
            .await;
        let status = match &answer {
            Ok(a) => a.http_status(),
            Err(_) => 503,
        };
        pending.account(status);
        let mut answer = answer;
        // A denial carries the request id, as every other door's refusal.
        if let Ok(Answer::Message(m)) = &mut answer {
            add_request_id(m, &snapshot.server.request_id_header, &request_id);
            if speaks_grpc(&check) {
                add_grpc_status(m);
            }
        }
        answer.map(tonic::Response::new)
    }

    /// The denial of a Check whose message was not read whole ([`read_check`]), accounted.
    fn unread(
        &self,
        parts: &http::request::Parts,
        unread: Unread,
        start: Instant,
    ) -> CheckResponse {
        let snapshot = self.shared.current.load_full();
        let request_id = crate::server::request_id::take_or_generate(
            &HeaderMap::new(),
            &snapshot.server.request_id_header,
        );
        let refusal = unread.refusal(&request_id);
        // (The connection is always there: the handler puts it in before the door runs.)
        if let Some(conn) = parts.extensions.get::<Arc<Conn>>() {
            let mut record = Record::new(conn.info.peer.ip());
            record.failed(&self.shared, Door::EnvoyGrpc, refusal.code);
            let at = (Door::EnvoyGrpc, &*conn.info.listener);
            let status = refusal.status.as_u16();
            record.account(&snapshot, &self.shared, at, start, &request_id, status);
        }
        denied_with_id(refusal, &snapshot.server.request_id_header, &request_id)
    }

    /// The answer to a message not read ([`Decoded::Unreadable`]) from an admitted peer: 400
    /// `invalid_check_request` (or 431 `headers_too_many`), accounted.
    fn unreadable(
        &self,
        snapshot: &Snapshot,
        conn: &Conn,
        start: Instant,
        code: &'static str,
    ) -> tonic::Response<Answer> {
        let request_id = crate::server::request_id::take_or_generate(
            &HeaderMap::new(),
            &snapshot.server.request_id_header,
        );
        let mut record = Record::new(conn.info.peer.ip());
        record.failed(&self.shared, Door::EnvoyGrpc, code);
        let status = door::undescribed_status(code);
        let refusal = Refusal::error(status, code, &request_id);
        let at = (Door::EnvoyGrpc, &*conn.info.listener);
        record.account(
            snapshot,
            &self.shared,
            at,
            start,
            &request_id,
            status.as_u16(),
        );
        let name = &snapshot.server.request_id_header;
        tonic::Response::new(Answer::Message(denied_with_id(refusal, name, &request_id)))
    }

    /// Admission, the facts, the decision and its rendering.
    async fn answer(
        &self,
        snapshot: &Snapshot,
        conn: &Conn,
        check: &CheckRequest,
        request_id: &HeaderValue,
        record: &mut Record,
        (start, asked): (Instant, Option<tokio::time::Instant>),
    ) -> Result<Answer, tonic::Status> {
        let settings = snapshot
            .listener(self.index)
            .map_or(&DoorSettings::Proxy, |l| &l.door);
        let common =
            door::common(settings).ok_or_else(|| tonic::Status::unavailable("no listener"))?;
        let due = door::deadline(start, settings);
        // The caller's deadline, when earlier, ends the call (`DEADLINE_EXCEEDED`, as gRPC
        // servers answer a deadline the caller set).
        let callers = asked.is_some_and(|a| a < due);
        let due = asked.map_or(due, |a| a.min(due));
        // Why: a Check request describes a request and is believed; only Envoy may send one.
        // Regression: tests (it) grpc::peer_not_allowed
        if !door::admits(common, conn.info.peer.ip()) {
            record.failed(&self.shared, Door::EnvoyGrpc, "peer_not_allowed");
            let refusal = Refusal::error(StatusCode::FORBIDDEN, "peer_not_allowed", request_id);
            return Ok(Answer::Message(denied(refusal)));
        }
        if check.http().is_some_and(joined) {
            joined_headers_noticed(&conn.info.listener);
        }
        let mut described = match describe(
            check,
            snapshot,
            &conn.info.listener,
            common.client_certificates,
        ) {
            Ok(d) => d,
            Err(reason) => {
                record.failed(&self.shared, Door::EnvoyGrpc, reason);
                let status = door::undescribed_status(reason);
                let refusal = Refusal::error(status, reason, request_id);
                return Ok(Answer::Message(denied(refusal)));
            }
        };
        record.trace(snapshot, &described.headers);
        // As at the HTTP doors (`door::asked_upgrade`): Envoy relays the upgrade it allows.
        let upgrade = match door::asked_upgrade(&described.headers) {
            Ok(u) => u,
            Err(reason) => {
                record.failed(&self.shared, Door::EnvoyGrpc, reason);
                let refusal = Refusal::error(StatusCode::BAD_REQUEST, reason, request_id);
                return Ok(Answer::Message(denied(refusal)));
            }
        };
        // Why: the proxy and the HTTP doors read a request without its hop-by-hop headers,
        // those its `Connection` names included; a credential named there was honoured by
        // this door only (200 here, 401 at the others). Regression: tests (it)
        // conformance::every_door_gives_the_same_decision (`credential named in Connection`)
        // The head limits count them, as the HTTP doors do.
        let (stripped, unseen) = door::strip_counted(&mut described.headers);
        // Each name once, with the value that counts (no allocation when there are none).
        let context: Vec<(&str, &str)> = check.attributes.as_ref().map_or_else(Vec::new, |a| {
            a.context_extensions
                .iter()
                .map(|e| (text(&e.key), text(&e.value)))
                .collect()
        });
        let head = Head {
            method: &described.method,
            scheme: described.scheme,
            authority: Some(described.authority),
            target: described.target,
            headers: &described.headers,
        };
        let facts = match head
            .within(
                snapshot.server.max_target_bytes,
                // Why Envoy's `x-forwarded-proto` is not counted: Envoy's HTTP mode leaves it
                // out (the scheme it describes), and a head within 26 bytes of the limit was
                // allowed there and 431 here. Regression: tests (it)
                // grpc::the_grpc_door_counts_a_head_as_envoys_http_mode
                snapshot
                    .server
                    .max_header_bytes
                    .saturating_sub(stripped)
                    .saturating_add(door::scheme_field_bytes(&described.headers)),
            )
            .and_then(|()| {
                RequestFacts::new(head, &described.conn, &snapshot.server.trusted_proxies)
            }) {
            // Why: Envoy's per-route `context_extensions` may narrow rules
            // (`match.context_extensions`). Regression: tests (it) grpc::context_extensions_select_rules
            Ok(f) => RequestFacts {
                deadline: Some(due),
                context: (!context.is_empty()).then_some(&context[..]),
                ..f
            },
            Err(e) => {
                record.client_ip = described.conn.peer.ip();
                record.failed(&self.shared, Door::EnvoyGrpc, e.as_str());
                let refusal = Refusal::error(e.status(), e.as_str(), request_id);
                return Ok(Answer::Message(denied(refusal)));
            }
        };
        record.facts(snapshot, &facts);
        // Why: a browser sends its preflight without a credential, so a rule with CORS refused
        // it with 401 behind Envoy while the proxy door answered it. A denied response is what
        // Envoy sends the client as it is, without the upstream: the gateway's 204.
        // Regression: tests (it) grpc::cors_preflight_and_answers_at_the_grpc_door
        if let Some((rule, checked)) = crate::authz::edge::preflight(snapshot, &facts) {
            record.preflight(&self.shared, Door::EnvoyGrpc, rule, &checked);
            return Ok(Answer::Message(match checked {
                Ok(headers) => preflight_answered(&headers),
                Err(refused) => {
                    let mut r = Refusal::error(StatusCode::FORBIDDEN, refused.as_str(), request_id);
                    r.cors = vec![crate::authz::edge::VARY_ORIGIN];
                    denied(r)
                }
            }));
        }
        let decided =
            tokio::time::timeout_at(due, decision::decide(snapshot, &facts, &mut NoTrace)).await;
        let Ok(mut decision) = decided else {
            record.failed(&self.shared, Door::EnvoyGrpc, "decision_timeout");
            return Err(if callers {
                tonic::Status::deadline_exceeded("decision_timeout")
            } else {
                tonic::Status::unavailable("decision_timeout")
            });
        };
        if let Decision::Allow(a) = &mut decision {
            a.mutation.remove_unseen(unseen);
        }
        if let Decision::Allow(a) = &decision
            && let Some(reason) = door::upgrade_refusal(upgrade.as_ref(), a, &described.headers)
        {
            record.rule = Some(a.rule.clone());
            record.refused(&self.shared, Door::EnvoyGrpc, reason);
            let refusal = Refusal::error(StatusCode::FORBIDDEN, reason, request_id);
            return Ok(Answer::Message(denied(refusal)));
        }
        record.decision(&self.shared, Door::EnvoyGrpc, &decision);
        match decision {
            Decision::Allow(a) => Ok(Answer::allowed(a)),
            // The gateway cannot know the answer (keys never fetched, introspection down): an
            // error, so Envoy's `failure_mode_allow` and `status_on_error` apply, as operators
            // of Envoy expect of an authorization service that cannot decide.
            Decision::Deny(d) if d.kind == DenyKind::AuthnUnavailable => {
                Err(tonic::Status::unavailable(d.kind.public_code()))
            }
            // Why: every other refusal is one the gateway made, a delegate configured to fail
            // closed among them (503 `delegate_unavailable`): a failed call would let Envoy's
            // `failure_mode_allow: true` turn it into an allow, so it goes back as a denied
            // response, which Envoy passes on whatever its failure mode.
            // Regression: tests (it) delegate::fail_closed_delegate_is_a_denial_at_the_grpc_door
            Decision::Deny(d) => {
                let refusal = door::refusal(
                    &d,
                    snapshot,
                    request_id,
                    crate::authz::edge::sole_origin(facts.headers),
                );
                Ok(Answer::Message(denial(&d, refusal)))
            }
        }
    }
}

/// The client's address in a `source` socket address: an IP, maybe bracketed (`[2001:db8::1]`)
/// or with a zone (`fe80::1%eth0`, which no rule can name: the zone is dropped); anything
/// else is `invalid_source_address`.
fn source_ip(address: &str) -> Result<IpAddr, &'static str> {
    let bare = address
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(address);
    let bare = bare.split_once('%').map_or(bare, |(ip, _zone)| ip);
    bare.parse::<IpAddr>()
        .map(|ip| ip.to_canonical())
        .map_err(|_| "invalid_source_address")
}

/// The original request, from a `CheckRequest` (whose text it borrows).
pub(crate) struct Described<'a> {
    pub(crate) method: Method,
    pub(crate) scheme: Scheme,
    pub(crate) authority: &'a str,
    pub(crate) target: &'a str,
    pub(crate) headers: HeaderMap,
    pub(crate) conn: ConnInfo,
}

/// Reads the attributes of a Check arriving on `listener`; each refusal names its reason code
/// (400 for the client). `explain --door envoy-grpc` runs it too.
pub(crate) fn describe<'a>(
    check: &'a CheckRequest,
    snapshot: &Snapshot,
    listener: &Arc<str>,
    client_certificates: bool,
) -> Result<Described<'a>, &'static str> {
    let attributes = check.attributes.as_ref().ok_or("missing_attributes")?;
    let http = check.http().ok_or("missing_http_attributes")?;
    let method = Method::from_bytes(&http.method).map_err(|_| "invalid_method")?;
    // Schemes are case-insensitive (RFC 3986 3.1), as the HTTP doors read `X-Forwarded-Proto`.
    let scheme = match text(&http.scheme) {
        "" => Scheme::Http,
        s if s.eq_ignore_ascii_case("http") => Scheme::Http,
        s if s.eq_ignore_ascii_case("https") => Scheme::Https,
        _ => return Err("invalid_scheme"),
    };
    // Why: an absolute or empty target would be read differently upstream than by the rules.
    // Regression: tests (it) grpc::bad_check_requests
    // A `CONNECT` (whatever it names) and `OPTIONS *` go on, for the facts to refuse as the
    // proxy does (405, 400 `unsupported_target`) once the head's limits are checked; they
    // were refused here as `invalid_path`. Regression: tests (it) conformance ("connect
    // authority form", "asterisk target")
    let path = text(&http.path);
    if !crate::request::facts::door_takes_target(&method, path) {
        return Err("invalid_path");
    }
    let raw = RawHeaders::of(http);
    let mut headers = header_map(raw.clone(), &snapshot.server)?;
    let authority = if http.host.is_empty() {
        let named = |name: &[u8]| {
            raw.clone()
                .find(|(k, _)| *k == name)
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
        };
        named(b":authority")
            .or_else(|| named(b"host"))
            .ok_or("missing_host")?
    } else {
        text(&http.host)
    };
    // Why: a socket address that did not parse fell through to the forwarded-for chain, whose
    // last entry Envoy had not written for it: the client chose its own address.
    // Regression: tests (it) grpc::source_addresses
    let client = match attributes
        .source
        .as_ref()
        .and_then(|s| s.address.as_ref())
        .and_then(|a| a.address.as_ref())
    {
        Some(AddressKind::SocketAddress(s)) => Some(source_ip(text(&s.address))?),
        _ => None,
    };
    // Without an IP source (none, a pipe, an internal listener), the hop the forwarded-for
    // chain vouches for, as at the HTTP doors: the proxy in front of Envoy appended it.
    let client = match client {
        Some(ip) => ip,
        None => door::vouched_hop(&mut headers).map_err(|u| u.0)?,
    };
    // Why: Envoy may pass on a certificate it did not verify (`ACCEPT_UNTRUSTED`, or no
    // client validation at all); the mtls authenticators promise only verified ones, so the
    // door believes it only when its config says Envoy verifies them.
    // Regression: tests (it) grpc::source_certificate_only_when_configured
    let certificate = attributes
        .source
        .as_ref()
        .filter(|_| client_certificates)
        .map(|s| text(&s.certificate))
        .filter(|c| !c.is_empty())
        .map(client_certificate)
        .transpose()?;
    let sni = attributes
        .tls_session
        .as_ref()
        .map(|t| text(&t.sni))
        .filter(|s| !s.is_empty());
    let tls =
        (certificate.is_some() || sni.is_some() || scheme == Scheme::Https).then(|| TlsInfo {
            sni: sni.map(Arc::from),
            alpn: None,
            client_cert: certificate.map(Arc::new),
            binding: None,
            client_auth: None,
            client_chain: None,
        });
    Ok(Described {
        method,
        scheme,
        authority,
        target: path,
        headers,
        conn: ConnInfo::for_door(
            Door::EnvoyGrpc,
            SocketAddr::new(client, 0),
            Arc::clone(listener),
            tls,
        ),
    })
}

/// Whether Envoy sent the request's headers joined, one value per name (its
/// `encode_raw_headers` off): see [`joined_headers_noticed`].
fn joined(http: &HttpRequest) -> bool {
    matches!(RawHeaders::of(http), RawHeaders::Map(_)) && !http.headers.is_empty()
}

/// Says once per process, at warning level, that Envoy sends the request's headers joined
/// (its `encode_raw_headers` off), naming the listener.
///
/// Why: a client's two `X-Tenant` fields (`acme`, `evil`) then arrive as one `acme,evil`,
/// which no door can tell from one field; a `when` reading the header allowed at this door
/// what the proxy and HTTP doors refuse as a repeated field the expression reads, and nothing
/// told the operator that Envoy's setting decides it. (Credentials joined so are refused
/// still: [`crate::authn`] reads a comma in them as two.) Regression: tests::joined_headers
/// (the form told apart; the warning itself is read by an operator)
fn joined_headers_noticed(listener: &str) {
    static NOTICED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    // (Read first: a swap on every Check would write the shared line each time.)
    if !NOTICED.load(std::sync::atomic::Ordering::Relaxed)
        && !NOTICED.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        tracing::warn!(
            listener,
            "Envoy sends this door the request's headers joined (encode_raw_headers is off): \
             a repeated field reads as one comma-joined value, in rules as in `when` \
             expressions; set encode_raw_headers: true in Envoy's ext_authz filter"
        );
    }
}

/// The request's headers as Envoy sent them: `headers` (one value per name, text), or, with
/// Envoy's `encode_raw_headers`, `header_map` (a name may repeat; `raw_value`, the bytes the
/// client sent).
#[derive(Clone)]
enum RawHeaders<'a> {
    /// Each name once ([`wire::CheckRequest::read`]).
    Map(std::slice::Iter<'a, wire::Entry>),
    List(std::slice::Iter<'a, wire::HeaderValue>),
}

impl<'a> RawHeaders<'a> {
    fn of(http: &'a HttpRequest) -> Self {
        match &http.header_map {
            Some(m) if http.headers.is_empty() => Self::List(m.headers.iter()),
            _ => Self::Map(http.headers.iter()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Map(i) => i.len(),
            Self::List(i) => i.len(),
        }
    }
}

impl<'a> Iterator for RawHeaders<'a> {
    /// The name and the value (the name UTF-8: see [`wire::text`]).
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Self::Map(i) => i.next().map(|e| (&e.key[..], &e.value[..])),
            Self::List(i) => i.next().map(|h| {
                let value = if h.raw_value.is_empty() {
                    &h.value[..]
                } else {
                    &h.raw_value[..]
                };
                (&h.key[..], value)
            }),
        }
    }
}

/// The request headers as a map, pseudo-headers left out, within the server's limits.
fn header_map(
    headers: RawHeaders<'_>,
    limits: &crate::snapshot::ServerSettings,
) -> Result<HeaderMap, &'static str> {
    // As the HTTP doors count (`door::peer_may_add`): Envoy's pseudo-headers and the fields
    // it adds to describe the request are not the client's. Regression: tests (it)
    // grpc::envoys_own_fields_do_not_count_against_max_headers
    let count = headers.len();
    if door::too_many_fields(
        count,
        headers.clone().map(|(k, _)| text(k)),
        limits.max_headers,
    ) {
        return Err("headers_too_many");
    }
    let size: usize = headers.clone().map(|(k, v)| k.len() + v.len() + 4).sum();
    if size > limits.max_header_bytes + limits.max_target_bytes {
        return Err("headers_too_large");
    }
    let mut map = HeaderMap::with_capacity(count);
    for (k, v) in headers {
        if k.starts_with(b":") {
            continue;
        }
        let name = HeaderName::from_bytes(k).map_err(|_| "invalid_header")?;
        let value = HeaderValue::from_bytes(trim_ows(v)).map_err(|_| "invalid_header")?;
        map.append(name, value);
    }
    Ok(map)
}

/// A field value without its leading and trailing spaces and tabs, as an HTTP/1 parser reads
/// it (RFC 9110 §5.5).
///
/// Why: a value Envoy passed on as sent (`raw_value`) kept them, so `Authorization: ␠Bearer
/// …` was 401 `missing_credential` here and allowed at every other door.
/// Regression: tests (it) grpc::header_values_lose_surrounding_whitespace
fn trim_ows(v: &[u8]) -> &[u8] {
    let ows = |b: &u8| matches!(b, b' ' | b'\t');
    let start = v.iter().position(|b| !ows(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !ows(b)).map_or(start, |i| i + 1);
    &v[start..end]
}

/// The client certificate Envoy verified: URL-encoded PEM, leaf first.
fn client_certificate(encoded: &str) -> Result<ClientCert, &'static str> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let pem = percent_decode(encoded).ok_or("invalid_certificate")?;
    let der = CertificateDer::pem_slice_iter(&pem)
        .next()
        .and_then(Result::ok)
        .ok_or("invalid_certificate")?;
    // Why: PEM around bytes that are no certificate (`MAMCAQA=`) was taken as a client
    // certificate present, met `require: {mtls: true}`, and reached the mtls authenticator
    // as one expired in 1970. Envoy verified what it sends: what does not parse is refused.
    // Regression: tests (it) grpc::source_certificate_only_when_configured
    ClientCert::parse(&der).ok_or("invalid_certificate")
}

/// `%XX` decoding (Envoy URL-encodes the PEM); `None` for a malformed escape.
fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Some(out)
}

/// `OK` with the mutation and the principal as dynamic metadata: the message the door writes
/// straight from the allow ([`Answer`]), for `explain` and the door's tests.
pub fn allowed(a: &Allow) -> CheckResponse {
    let option = |(name, value): &(HeaderName, HeaderValue)| HeaderValueOption {
        header: Some(PbHeaderValue {
            key: name.as_str().to_owned(),
            value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
            ..PbHeaderValue::default()
        }),
        append_action: append_action(name) as i32,
        ..HeaderValueOption::default()
    };
    let m = &a.mutation;
    // Straight into the message's map (its order on the wire is unspecified anyway).
    let mut fields = HashMap::with_capacity(3);
    fields.insert("rule".to_owned(), text_value(&a.rule.0));
    if let Some(p) = &a.principal {
        principal_metadata(&mut fields, p);
    }
    let metadata = Struct { fields };
    CheckResponse {
        status: Some(rpc::Status {
            code: decision::GrpcCode::Ok.as_i32(),
            ..rpc::Status::default()
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: m.set.iter().map(option).collect(),
            headers_to_remove: m.removed().map(|n| n.as_str().to_owned()).collect(),
            response_headers_to_add: m.response.iter().map(option).collect(),
            query_parameters_to_remove: m.query_remove.iter().map(|q| q.to_string()).collect(),
            ..OkHttpResponse::default()
        })),
        dynamic_metadata: Some(metadata),
    }
}

/// A string as a protobuf `Value`.
fn text_value(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    }
}

/// `principal_id` and `principal_kind` in an answer's dynamic metadata.
fn principal_metadata(fields: &mut HashMap<String, Value>, p: &crate::authn::principal::Principal) {
    fields.insert("principal_id".to_owned(), text_value(&p.id));
    let kind = match p.kind {
        crate::authn::PrincipalKind::User => "user",
        crate::authn::PrincipalKind::Machine => "machine",
    };
    fields.insert("principal_kind".to_owned(), text_value(kind));
}

/// How a header of an answer is applied: set over what was there, but `Vary`, which adds to
/// the upstream's own (`Vary: Origin` must not erase its `Accept-Encoding`).
pub fn append_action(name: &HeaderName) -> HeaderAppendAction {
    if name == http::header::VARY {
        HeaderAppendAction::AppendIfExistsOrAdd
    } else {
        HeaderAppendAction::OverwriteIfExistsOrAdd
    }
}

/// A preflight the gateway answers: a denied response (Envoy sends it to the client as it is,
/// without the upstream) of `204` with the CORS headers (`Vary` among them).
fn preflight_answered(headers: &[(HeaderName, HeaderValue)]) -> CheckResponse {
    let headers = headers
        .iter()
        .map(|(n, v)| overwrite(n.as_str(), v.as_bytes()))
        .collect();
    CheckResponse {
        status: Some(rpc::Status {
            code: decision::GrpcCode::PermissionDenied.as_i32(),
            message: door::CORS_PREFLIGHT.to_owned(),
            ..rpc::Status::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(StatusCode::NO_CONTENT.as_u16()),
            }),
            headers,
            body: String::new(),
        })),
        dynamic_metadata: None,
    }
}

/// A header a denied response sets, overwriting any of that name.
fn overwrite(key: &str, value: &[u8]) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(PbHeaderValue {
            key: key.to_owned(),
            value: String::from_utf8_lossy(value).into_owned(),
            ..PbHeaderValue::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..HeaderValueOption::default()
    }
}

/// [`denied`] with the request id header the other doors' refusals carry
/// (`server.request_id_header`).
fn denied_with_id(refusal: Refusal, name: &HeaderName, request_id: &HeaderValue) -> CheckResponse {
    let mut resp = denied(refusal);
    add_request_id(&mut resp, name, request_id);
    resp
}

/// Adds the request id header to a denied response.
fn add_request_id(resp: &mut CheckResponse, name: &HeaderName, request_id: &HeaderValue) {
    if let Some(HttpResponse::DeniedResponse(d)) = &mut resp.http_response {
        d.headers
            .push(overwrite(name.as_str(), request_id.as_bytes()));
    }
}

/// Whether the described request is a gRPC call (`content-type: application/grpc[+codec]`),
/// as Envoy tells one when it makes a local reply.
fn speaks_grpc(check: &CheckRequest) -> bool {
    let Some(http) = check.http() else {
        return false;
    };
    RawHeaders::of(http)
        .find(|(name, _)| name.eq_ignore_ascii_case(b"content-type"))
        .is_some_and(|(_, ct)| {
            crate::request::grpc::Grpc::of_content_type(ct)
                == Some(crate::request::grpc::Grpc::Native)
        })
}

/// Names the denial's gRPC code in its headers, for a gRPC client behind Envoy.
///
/// Why: Envoy answers a gRPC client's denial as gRPC, with the `grpc-status` the denied
/// headers carry, or else one it derives from the HTTP status: 429 became 14 UNAVAILABLE
/// (which clients retry at once) and 400 became 13 INTERNAL, where the proxy door answers 8
/// RESOURCE_EXHAUSTED and 3 INVALID_ARGUMENT. Regression: tests (it)
/// grpc::a_grpc_client_is_denied_with_the_grpc_status_the_proxy_gives
fn add_grpc_status(resp: &mut CheckResponse) {
    let code = resp.status.as_ref().map_or(0, |s| s.code);
    if let Some(HttpResponse::DeniedResponse(d)) = &mut resp.http_response {
        d.headers
            .push(overwrite("grpc-status", code.to_string().as_bytes()));
    }
}

/// The answer to a request the decision denied: [`denied`], its metadata naming the rule and
/// the principal when known. (`explain --door envoy-grpc` shows the same.)
pub fn denial(d: &crate::decision::Deny, refusal: Refusal) -> CheckResponse {
    let mut answer = denied(refusal);
    if let Some(fields) = answer.dynamic_metadata.as_mut().map(|m| &mut m.fields) {
        if let Some(rule) = &d.rule {
            fields.insert("rule".to_owned(), text_value(&rule.0));
        }
        if let Some(p) = &d.principal {
            principal_metadata(fields, p);
        }
    }
    answer
}

/// The denial's gRPC code with the HTTP answer Envoy gives the client.
pub fn denied(refusal: Refusal) -> CheckResponse {
    let code = refusal.grpc_code().as_i32();
    let message = refusal.code.to_owned();
    let status = refusal.status.as_u16();
    let headers = refusal
        .headers()
        .map(|(name, value)| overwrite(name.as_str(), value.as_bytes()))
        .chain(
            refusal
                .body
                .is_some()
                .then(|| overwrite("content-type", b"application/json")),
        )
        // As every other door's refusal: never cached (a 401 or 403 for one caller, in a
        // shared cache, would be served to the next).
        .chain(std::iter::once(overwrite("cache-control", b"no-store")))
        .collect();
    CheckResponse {
        status: Some(rpc::Status {
            code,
            message,
            ..rpc::Status::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(status),
            }),
            headers,
            body: refusal.body.unwrap_or_default(),
        })),
        // Why: Envoy emits a denial's metadata too (for its access log and later filters);
        // without it a log could not tell an expired token from a missing scope.
        // Regression: tests (it) grpc::denials_carry_their_reason_as_dynamic_metadata
        dynamic_metadata: Some(Struct {
            fields: HashMap::from([("reason".to_owned(), text_value(refusal.code))]),
        }),
    }
}

/// The HTTP status an answer stands for, for metrics and the log.
fn http_status_of(r: &CheckResponse) -> u16 {
    match &r.http_response {
        Some(HttpResponse::DeniedResponse(d)) => d
            .status
            .as_ref()
            .and_then(|s| u16::try_from(s.code).ok())
            .unwrap_or(403),
        _ => 200,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The header maps of a Check are bounded by `max_headers` and the allowance, and by the
    /// head's bytes when `max_headers` is raised past what they can hold.
    #[test]
    fn map_entries_are_bounded_by_the_header_count_and_bytes() {
        let at = |server: &str| {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("policies")).unwrap();
            std::fs::write(
                dir.path().join("c.yaml"),
                format!(
                    "listeners: [{{name: l, address: \"127.0.0.1:0\"}}]\npolicies: {{dir: policies}}\nserver: {server}\n"
                ),
            )
            .unwrap();
            let (snapshot, _) = crate::config::build(&dir.path().join("c.yaml"), None).unwrap();
            let s = &snapshot.server;
            (
                max_entries(&snapshot),
                s.max_header_bytes + s.max_target_bytes,
            )
        };
        assert_eq!(at("{}").0, 100 + door::DESCRIBING_ALLOWANCE);
        let (entries, bytes) = at("{max_headers: 10000000}");
        assert_eq!(entries, bytes / 4 + 1);
        assert!(entries < 100_000, "{entries}");
    }

    /// Envoy's two forms of the request's headers: joined (`headers`, `encode_raw_headers`
    /// off) is told apart from raw (`header_map`), and a Check with no header is neither.
    #[test]
    fn joined_headers() {
        let entry = |k: &'static str, v: &'static str| wire::Entry {
            key: bytes::Bytes::from_static(k.as_bytes()),
            value: bytes::Bytes::from_static(v.as_bytes()),
        };
        let raw = |k: &'static str, v: &'static str| wire::HeaderValue {
            key: bytes::Bytes::from_static(k.as_bytes()),
            raw_value: bytes::Bytes::from_static(v.as_bytes()),
            ..wire::HeaderValue::default()
        };
        let map = HttpRequest {
            headers: vec![entry("x-tenant", "acme-1,evil")],
            ..HttpRequest::default()
        };
        assert!(joined(&map));
        let list = HttpRequest {
            header_map: Some(wire::HeaderMap {
                headers: vec![raw("x-tenant", "acme-1"), raw("x-tenant", "evil")],
            }),
            ..HttpRequest::default()
        };
        assert!(!joined(&list));
        assert!(!joined(&HttpRequest::default()));
    }

    #[test]
    fn grpc_timeout_parses_as_grpc_says() {
        let start = Instant::now();
        let at = |d: Duration| Some(tokio::time::Instant::from_std(start) + d);
        // Less the way back: a tenth, at least 20 ms, at most half.
        let cases: &[(&str, Option<tokio::time::Instant>)] = &[
            ("200m", at(Duration::from_millis(180))),
            ("1S", at(Duration::from_millis(900))),
            ("2M", at(Duration::from_secs(108))),
            ("1H", at(Duration::from_secs(3240))),
            ("5000u", at(Duration::from_micros(2500))),
            ("99999999n", at(Duration::from_nanos(79_999_999))),
            ("100m", at(Duration::from_millis(80))),
            ("0m", at(Duration::ZERO)),
            (
                "99999999H",
                at(Duration::from_secs(99_999_999 * 3600 / 10 * 9)),
            ),
            // Not the specification's form: the door's own deadline alone.
            ("", None),
            ("m", None),
            ("200", None),
            ("123456789m", None),
            ("-1S", None),
            ("+1S", None),
            ("1.5S", None),
            ("1s", None),
            ("1 S", None),
            ("1SS", None),
        ];
        for (value, want) in cases {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", HeaderValue::from_str(value).unwrap());
            assert_eq!(peer_deadline(&h, start), *want, "{value:?}");
        }
        assert_eq!(peer_deadline(&HeaderMap::new(), start), None);
    }
}
