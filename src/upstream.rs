//! Named upstreams: where allowed requests go, over pooled keep-alive connections to one or
//! several endpoints.
//!
//! An upstream is a URL (scheme, `Host`, TLS name, base path) and its endpoints (addresses
//! to connect to; the URL's own host by default). [`Upstream::send`] picks an endpoint
//! ([`balance`]), sends over its pool ([`pool`]), records the outcome for passive ejection,
//! and retries what is safe to retry, within the upstream's retry budget:
//! - a request that never left the gateway (connect refused, a pooled connection found
//!   closed before the request was written): any method, on another endpoint if the
//!   endpoint was unreachable, else on a fresh connection;
//! - a bodiless `GET`, `HEAD`, `OPTIONS`, `PUT` or `DELETE` whose pooled connection, idle
//!   long enough for the upstream's keep-alive timer to close it, broke as the request went
//!   out (the stale keep-alive race): on a fresh connection.
//!
//! A retry on a fresh connection that the endpoint refuses (it is shutting down) goes once
//! more, to another endpoint: the request never left the gateway that time. Each retry is
//! drawn from the budget.
//!
//! Nothing else is retried: a request whose body may have reached the upstream never goes
//! twice.
//!
//! The balancing state (endpoints, pools, ejections, health) is shared by every snapshot in
//! which the upstream's settings and TLS files are unchanged, so a reload keeps connections.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderName, HeaderValue, Request, Response, Uri};
use rustls_pki_types::ServerName;

use crate::config::raw::{RawProtocol, RawUpstream};
use crate::tls;

mod balance;
mod pool;
mod upkeep;

pub use pool::{BodyIdleTimeout, PooledBody, SendError};

use balance::{Balancer, Endpoint, Verdict};
use pool::{Addr, Failed, Protocol, Template, TlsTarget};
use upkeep::{HealthCheck, Spec, Upkeep};

/// Request body sent upstream: the client's body, streamed, with the size limit applied.
pub type UpstreamBody = crate::body::RequestBody;

/// The longest pause inside a response body when neither the upstream nor the rule sets one:
/// Envoy's `stream_idle_timeout` default (nginx's `proxy_read_timeout` is 60 s).
///
/// Why: with no bound unless configured, an upstream stream that stalled on an HTTP/2
/// connection its other streams kept busy (where `server.idle_timeout` never fires) held its
/// upstream connection and stream for ever.
/// Regression: tests::a_stalled_body_is_cut_by_default
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// A compiled upstream.
#[derive(Debug)]
pub struct Upstream {
    /// Its name in the config.
    pub name: Arc<str>,
    /// Prepended to every forwarded path; empty or `/base` without trailing slash.
    base_path: Box<str>,
    /// `Host` sent when `preserve_host` is off.
    pub host_header: HeaderValue,
    /// Forward the client's `Host`.
    pub preserve_host: bool,
    /// The `aud` of the identity assertions sent to it, when not the global one.
    pub assertion_audience: Option<Arc<str>>,
    /// Time from the end of the request body to the response head, and longest pause in
    /// the body (see [`crate::body::Progress`]).
    pub response_timeout: Duration,
    /// Time to connect, when a new connection is needed.
    pub connect_timeout: Duration,
    /// Longest wait between two pieces of a response body ([`BODY_IDLE_TIMEOUT`] unless set).
    pub idle_timeout: Duration,
    /// The consistent-hashing key, if any.
    pub hash: Option<HashOn>,
    balancer: Arc<Balancer>,
    /// The settings as written, to tell on reload whether they changed.
    fingerprint: crate::config::Fingerprint,
    /// Digest of the TLS files (CA, client certificate and key): a change rebuilds the pools.
    files: [u8; 32],
}

/// One endpoint as the metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStatus {
    /// `ip:port`, or `name:port` until the name resolves.
    pub address: String,
    /// Passing its active health checks (always, without checks).
    pub healthy: bool,
    /// Out of rotation after failing requests, for now.
    pub ejected: bool,
    /// Times ejected since it was added.
    pub ejections: u64,
    /// Requests in flight (counted under `least_request` only).
    pub in_flight: u32,
}

/// What consistent hashing hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// A request header's value.
    Header(HeaderName),
    /// The principal's id.
    Principal,
}

/// Per-request settings of [`Upstream::send`].
#[derive(Debug, Clone, Copy)]
pub struct SendOptions {
    /// Time to connect, when a new connection is needed.
    pub connect_timeout: Duration,
    /// Time to the response head, for the whole exchange (a retry included).
    pub response_timeout: Duration,
    /// The consistent-hashing key (see [`Upstream::hash_key`]).
    pub hash_key: Option<u64>,
}

/// Why an upstream's settings are invalid: the field of the upstream's entry and what is
/// wrong, placed in the file by the config compiler.
pub type UpstreamError = crate::config::FieldError;

// === impl Upstream ===

impl Upstream {
    /// Every endpoint's state now, in config order, for the metrics.
    pub fn endpoint_status(&self) -> Vec<EndpointStatus> {
        let b = &*self.balancer;
        let now = b.now_ms();
        b.endpoints
            .load()
            .iter()
            .map(|ep| EndpointStatus {
                address: ep.addr.to_string(),
                healthy: ep.healthy.load(Ordering::Relaxed),
                ejected: ep.is_ejected(now),
                ejections: ep.ejected_total.load(Ordering::Relaxed),
                in_flight: ep.in_flight(),
            })
            .collect()
    }

    /// Retries sent, and retries the retry budget refused, since the upstream was built
    /// (a reload that leaves it unchanged keeps the counts).
    pub fn retries(&self) -> (u64, u64) {
        let b = &*self.balancer;
        (
            b.retried.load(Ordering::Relaxed),
            b.retries_refused.load(Ordering::Relaxed),
        )
    }

    /// Compiles an upstream, reusing `previous`'s endpoints and pools when nothing changed.
    pub fn build(
        name: &str,
        raw: &RawUpstream,
        base_dir: &Path,
        previous: Option<&Self>,
    ) -> Result<Self, Vec<UpstreamError>> {
        // Why every part is checked before any error is returned: `check` promises every
        // problem, and an upstream's were shown one per run (a bad health-check path hid a
        // retry budget over 100, which hid a `dns_refresh` too short).
        // Regression: tests::every_problem_of_an_upstream_is_named
        let mut errors = Vec::new();
        let url = url_parts(raw).map_err(|e| errors.push(e)).ok();
        let hash = hash_on(raw).map_err(|e| errors.push(e)).ok();
        let specs = match &url {
            Some(u) => specs(raw, &u.scheme, &u.authority)
                .map_err(|e| errors.extend(e))
                .ok(),
            // Listed endpoints are checked still (only the URL's default port needs it).
            None if !raw.endpoints.is_empty() => {
                let _ = listed(raw).map_err(|e| errors.extend(e));
                None
            }
            None => None,
        };
        let health = health_check(raw).map_err(|e| errors.extend(e)).ok();
        // Why: `0s` (or `1ms`) was taken, and the upkeep's 10 ms tick then looked every name
        // up a hundred times a second, against the operator's DNS server.
        // Regression: tests (it) upstreams::bad_upstream_settings_name_file_line_and_field
        if raw.dns_refresh < MIN_DNS_REFRESH {
            errors.push(UpstreamError {
                field: "dns_refresh".into(),
                message: format!("must be at least {} ms", MIN_DNS_REFRESH.as_millis()),
            });
        }
        let https = url.as_ref().map(|u| u.scheme == Scheme::HTTPS);
        let settings = settings(raw, https).map_err(|e| errors.extend(e)).ok();
        let files = files_digest(raw, base_dir)
            .map_err(|e| errors.extend(e))
            .ok();
        let (Some(url), Some(hash), Some(specs), Some(health), Some(settings), Some(files), true) =
            (url, hash, specs, health, settings, files, errors.is_empty())
        else {
            return Err(errors);
        };
        let UrlParts {
            scheme,
            authority,
            base_path,
            host_header,
        } = url;
        let fingerprint = crate::config::Fingerprint::of(&[raw]);

        let balancer = match previous {
            Some(p) if p.fingerprint == fingerprint && p.files == files => Arc::clone(&p.balancer),
            _ => {
                let template = template(raw, base_dir, (&scheme, &authority), &settings)
                    .map_err(|e| vec![e])?;
                let mut endpoints = Vec::with_capacity(specs.len());
                for (i, spec) in specs.iter().enumerate() {
                    let addr = match spec {
                        Spec::Ip(a) => Addr::Ip(*a),
                        Spec::Name(n) => {
                            // Why: a rebuilt upstream's names started unresolved, and their
                            // first resolution made new endpoints of every address, so what
                            // the previous one learnt of them (a health check's verdict, an
                            // ejection) was lost and a dead address got traffic again. The
                            // addresses the name last resolved to start as its endpoints
                            // (with this config's connections) and inherit that below.
                            // Regression: tests (it) upstreams::a_reload_keeps_what_was_learnt_of_a_names_addresses
                            let resolved = previous.into_iter().flat_map(|p| {
                                p.balancer
                                    .endpoints
                                    .load()
                                    .iter()
                                    .filter(|e| e.resolved_from.as_ref() == Some(n))
                                    .map(|e| e.addr.clone())
                                    .collect::<Vec<_>>()
                            });
                            let before = endpoints.len();
                            for a in resolved {
                                let pool = template.pool(a.clone());
                                endpoints
                                    .push(Arc::new(Endpoint::new(a, i, pool).resolved_from(n)));
                            }
                            if endpoints.len() > before {
                                continue;
                            }
                            Addr::Name(Arc::clone(n))
                        }
                    };
                    endpoints.push(Arc::new(Endpoint::new(
                        addr.clone(),
                        i,
                        template.pool(addr),
                    )));
                }
                let balancer = Arc::new(Balancer::new(
                    endpoints,
                    raw.balance,
                    balance::Ejection {
                        consecutive: raw.ejection.consecutive_failures,
                        base: raw.ejection.base_time,
                        max: raw.ejection.max_time,
                    },
                    balance::RetryBudget::new(raw.retry_budget.percent, raw.retry_budget.minimum),
                    template,
                ));
                if let Some(p) = previous {
                    balancer.inherit(&p.balancer, health.is_some());
                }
                // The URL's own host is resolved at each connect, as it always was; only
                // names listed as endpoints are resolved into one endpoint per address.
                let specs = if raw.endpoints.is_empty() {
                    Vec::new()
                } else {
                    specs
                };
                upkeep::spawn(
                    &balancer,
                    Upkeep {
                        name: name.into(),
                        specs,
                        dns_refresh: raw.dns_refresh,
                        health,
                        host: host_header.clone(),
                        connect_timeout: raw.connect_timeout,
                    },
                );
                balancer
            }
        };
        Ok(Self {
            name: name.into(),
            base_path,
            host_header,
            preserve_host: raw.preserve_host,
            assertion_audience: raw.assertion_audience.as_deref().map(Arc::from),
            response_timeout: raw.response_timeout,
            connect_timeout: raw.connect_timeout,
            idle_timeout: raw.idle_timeout.unwrap_or(BODY_IDLE_TIMEOUT),
            hash,
            balancer,
            fingerprint,
            files,
        })
    }

    /// Whether [`Upstream::uri`] is the path and query unchanged (no base path to prepend).
    pub fn uri_is_path_and_query(&self) -> bool {
        self.base_path.is_empty()
    }

    /// The upstream request target (origin-form) for a canonical path and raw query.
    pub fn uri(&self, path: &str, query: Option<&str>) -> Option<Uri> {
        let mut pq = String::with_capacity(
            self.base_path.len() + path.len() + query.map_or(0, |q| q.len() + 1),
        );
        pq.push_str(&self.base_path);
        pq.push_str(path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        let pq = PathAndQuery::from_maybe_shared(pq).ok()?;
        Some(Uri::from(pq))
    }

    /// The consistent-hashing key of a request: its header's value or the principal's id;
    /// `None` without hashing or without the key (the request is then balanced as usual).
    /// The key of `hash: {header: host}`: the host the client asked for, which the upstream
    /// request's `Host` (the upstream's own, unless `preserve_host`) no longer says.
    /// `host` is asked only then: most upstreams do not hash, and finding the host is a
    /// header lookup on every request.
    pub fn host_hash_key<'a>(&self, host: impl FnOnce() -> Option<&'a str>) -> Option<u64> {
        match self.hash.as_ref()? {
            HashOn::Header(name) if name == http::header::HOST => {
                host().map(|h| balance::stable_hash(h.as_bytes()))
            }
            _ => None,
        }
    }

    pub fn hash_key(&self, headers: &http::HeaderMap, principal: Option<&str>) -> Option<u64> {
        match self.hash.as_ref()? {
            // Why not an empty value: a proxy in front that always sets the header, empty when
            // it knows nothing, sent every such client to one endpoint. As if absent: spread.
            // Regression: tests (it) upstreams::hashing_on_a_header_sticks_a_key_to_an_endpoint
            HashOn::Header(name) => headers
                .get(name)
                .filter(|v| !v.as_bytes().trim_ascii().is_empty())
                .map(|v| balance::stable_hash(v.as_bytes())),
            HashOn::Principal => principal.map(|p| balance::stable_hash(p.as_bytes())),
        }
    }

    /// Sends an upgrade request (a WebSocket handshake) to one of the endpoints, on a
    /// connection of its own, which the upstream's `101` turns into the tunnel's upstream
    /// side. Never retried: the handshake may have reached the upstream. Within
    /// `opts.response_timeout`: a handshake unanswered by then is a failure of its endpoint
    /// (as in [`Self::send`]: applied by the caller, it was never recorded, and an endpoint
    /// that accepted and never answered was never ejected; regression: tests (it)
    /// edge::an_endpoint_that_never_answers_upgrades_is_ejected). The exchange counts in flight on its
    /// endpoint (least request) for as long as the [`Counted`] returned lives: the caller
    /// keeps it with the tunnel, or with the body of a declined upgrade's answer.
    pub async fn send_upgrade(
        &self,
        req: Request<UpstreamBody>,
        opts: SendOptions,
    ) -> Result<(Response<hyper::body::Incoming>, Counted), SendError> {
        let b = &*self.balancer;
        let Some(ep) = b.pick(opts.hash_key, None) else {
            return Err(SendError::NoEndpoint);
        };
        // Why: counted until the `101` only, a WebSocket was never in flight to least
        // request, which then piled long-lived tunnels onto one endpoint by chance.
        // Regression: tests (it) edge::least_request_counts_a_websocket_until_it_closes
        let in_flight = balance::in_flight(&ep, b.counts_in_flight());
        let deadline =
            crate::clock::deadline_after(tokio::time::Instant::now(), opts.response_timeout);
        let result = tokio::time::timeout_at(
            deadline,
            ep.pool.send_upgrade(req, opts.connect_timeout, deadline),
        )
        .await
        .unwrap_or(Err(SendError::Timeout));
        let verdict = match &result {
            Ok((resp, _)) if resp.status().is_server_error() => Verdict::Failure,
            Ok(_) => Verdict::Success,
            Err(e) => error_verdict(e),
        };
        self.record(&ep, verdict, || match &result {
            Ok((resp, _)) => format!("answered {}", resp.status()),
            Err(e) => crate::errors::text(e),
        });
        // The tunnel keeps its connection's slot (`max_connections`) with its count.
        result.map(|(resp, slot)| (resp, Counted(in_flight, slot)))
    }

    /// Sends a request to one of the endpoints, retrying what is safe to retry (see the
    /// module docs), within `opts.response_timeout` in all.
    ///
    /// Why the timeout is here: applied by the caller around the whole, it dropped the
    /// exchange before its outcome was recorded, so an endpoint that accepted and never
    /// answered was never ejected: a share of every request waited the full timeout for a
    /// 504, for good. A timed-out exchange is now a failure of its endpoint.
    /// Regression: tests (it) upstreams::an_endpoint_that_never_answers_is_ejected
    pub async fn send(
        &self,
        req: Request<UpstreamBody>,
        opts: SendOptions,
    ) -> Result<Response<PooledBody>, SendError> {
        let b = &*self.balancer;
        b.budget.deposit();
        let Some(ep) = b.pick(opts.hash_key, None) else {
            return Err(SendError::NoEndpoint);
        };
        let deadline =
            crate::clock::deadline_after(tokio::time::Instant::now(), opts.response_timeout);
        // The first attempt inline (not through `send_to`): one async layer less for the
        // response to be moved through on every request.
        // Why: counted until the response head only, a stream (server-sent events, a gRPC
        // stream) was never in flight to least request, which then piled streams onto one
        // endpoint by chance. The count goes with the response's body.
        // Regression: tests (it) upstreams::least_request_counts_a_stream_until_it_ends
        let counted = balance::in_flight(&ep, b.counts_in_flight());
        let body = req.body().progress();
        // A body still streaming moves the deadline (`within`, boxed: rare, and the plain
        // path's future stays as small as it was).
        let mut timer = None;
        let result = match &body {
            None => {
                // The head's timer goes on with the response, as its body's idle timer: one
                // timer in the wheel per request, not two.
                let t = timer.insert(Box::pin(tokio::time::sleep_until(deadline)));
                let mut exchange =
                    std::pin::pin!(ep.pool.send(req, opts.connect_timeout, deadline, false));
                std::future::poll_fn(|cx| {
                    if let std::task::Poll::Ready(out) = exchange.as_mut().poll(cx) {
                        return std::task::Poll::Ready(Ok(out));
                    }
                    t.as_mut().poll(cx).map(|()| Err(Late::Upstream))
                })
                .await
            }
            Some(p) => {
                Box::pin(within(
                    ep.pool.send(req, opts.connect_timeout, deadline, false),
                    deadline,
                    opts.response_timeout,
                    p,
                ))
                .await
            }
        };
        let result = match result {
            Ok(result) => result,
            Err(late) => return Err(self.late(&ep, late)),
        };
        // Why: a pooled connection the endpoint had closed (its keep-alive timeout racing
        // ours) failed the request, which then went again on a fresh connection and was
        // answered, yet counted as the endpoint's failure: under load every endpoint of a
        // healthy upstream was ejected while every client got 200, each retry logged at
        // `warn`. Such a failure is the retry's to judge: recorded only if no retry is made.
        // Regression: tests (it) upstreams::a_stale_connection_retried_fails_no_endpoint
        let stale = matches!(&result, Err(f) if (f.unsent.is_some() || f.repeat.is_some())
            && !unreachable_error(&f.error));
        if !stale {
            self.record(&ep, verdict(&result), || failure_text(&result));
        }
        let failed = match result {
            Ok(resp) => {
                let resp = with_in_flight(resp, counted);
                return Ok(match timer {
                    Some(t) => resp.map(|body| body.with_timer(t)),
                    None => resp,
                });
            }
            Err(f) => f,
        };
        drop(counted);
        // A busy endpoint is tried no more than an unreachable one: another may have room.
        let unreachable = unreachable_error(&failed.error);
        let again = match (failed.unsent, failed.repeat) {
            (Some(req), _) | (None, Some(req)) => *req,
            (None, None) => return Err(failed.error),
        };
        // An unreachable endpoint is not tried again at once; a stale connection's endpoint is,
        // on a fresh connection.
        let next = if unreachable {
            match self.other_than(&ep, opts.hash_key) {
                Some(other) => other,
                None => return Err(failed.error),
            }
        } else {
            ep
        };
        if !self.withdraw(&failed.error) {
            if stale {
                self.record(&next, Verdict::Failure, || {
                    crate::errors::text(&failed.error)
                });
            }
            return Err(failed.error);
        }
        // Boxed: the rare retry does not grow every request's future.
        let retried = Box::pin(self.send_to(&next, again, opts, deadline, body.as_deref())).await;
        match retried {
            Ok(resp) => Ok(resp),
            // Why: a stale connection's request goes again to its endpoint on a fresh
            // connection; an endpoint shutting down gracefully (it closes its listener, then
            // its idle connections) refuses that connect, and the request, which never left
            // the gateway the second time, got a 502 while other endpoints were healthy.
            // Unsent, it moves on once more, as nginx's `proxy_next_upstream error` does.
            // Regression: tests (it) upstreams::a_retry_its_endpoint_refuses_moves_on
            Err(Failed {
                error,
                unsent: Some(req),
                ..
            }) if !unreachable => {
                let Some(other) = self.other_than(&next, opts.hash_key) else {
                    return Err(error);
                };
                if !self.withdraw(&error) {
                    return Err(error);
                }
                Box::pin(self.send_to(&other, *req, opts, deadline, body.as_deref()))
                    .await
                    .map_err(|f| f.error)
            }
            Err(f) => Err(f.error),
        }
    }

    /// An endpoint in rotation other than `ep`, if there is one.
    fn other_than(&self, ep: &Arc<Endpoint>, key: Option<u64>) -> Option<Arc<Endpoint>> {
        self.balancer
            .pick(key, Some(ep))
            .filter(|other| !Arc::ptr_eq(other, ep))
    }

    /// Takes a retry from the budget (counted either way); whether one was left.
    fn withdraw(&self, error: &SendError) -> bool {
        let b = &*self.balancer;
        if !b.budget.withdraw() {
            b.retries_refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(upstream = &*self.name, "Retry budget spent");
            return false;
        }
        b.retried.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(upstream = &*self.name, error = %error, "Retrying upstream request");
        true
    }

    /// Records an exchange's outcome for its endpoint. The first failure of a streak is logged
    /// with its cause (`cause`, made only then); the next ones are counted, and an ejection
    /// logged, but not each failure: a failing upstream under load would flood the log.
    ///
    /// Why: the cause (an unknown issuer, a name mismatch, HTTP/1 to an h2-only server) was
    /// logged at debug only; at the default level an operator saw `upstream_tls` or
    /// `upstream_error` in the access log and nothing that said why.
    fn record(&self, ep: &Endpoint, verdict: Verdict, cause: impl FnOnce() -> String) {
        if self.balancer.record(ep, verdict, &self.name) == 1 {
            tracing::warn!(upstream = &*self.name, endpoint = %ep.addr, cause = %cause(), "Upstream endpoint failing");
        }
    }

    /// A timed-out exchange: the endpoint's failure when it is the upstream's side that is
    /// late, the client's error (`BodyStalled`) when its body is.
    fn late(&self, ep: &Endpoint, late: Late) -> SendError {
        match late {
            Late::Upstream => {
                self.record(ep, Verdict::Failure, || SendError::Timeout.to_string());
                SendError::Timeout
            }
            Late::Client => SendError::BodyStalled,
        }
    }

    /// One exchange with one endpoint on a fresh connection, by `deadline`, its outcome
    /// recorded for ejection.
    async fn send_to(
        &self,
        ep: &Arc<Endpoint>,
        req: Request<UpstreamBody>,
        opts: SendOptions,
        deadline: tokio::time::Instant,
        body: Option<&crate::body::Progress>,
    ) -> Result<Response<PooledBody>, Failed> {
        let b = &*self.balancer;
        let counted = balance::in_flight(ep, b.counts_in_flight());
        let exchange = ep.pool.send(req, opts.connect_timeout, deadline, true);
        let result = match body {
            None => tokio::time::timeout_at(deadline, exchange)
                .await
                .map_err(|_| Late::Upstream),
            Some(p) => within(exchange, deadline, opts.response_timeout, p).await,
        };
        let result = match result {
            Ok(result) => result,
            Err(late) => {
                return Err(Failed {
                    error: self.late(ep, late),
                    unsent: None,
                    repeat: None,
                });
            }
        };
        self.record(ep, verdict(&result), || failure_text(&result));
        result.map(|resp| with_in_flight(resp, counted))
    }
}

/// Which side an exchange that timed out was waiting on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Late {
    /// The upstream (its answer, or its taking the body).
    Upstream,
    /// The client, for more of its body.
    Client,
}

/// `exchange` by `deadline`, its request's body still streaming (`body`): the deadline moves
/// with it: `timeout` after the client's last piece while the body streams (a longer pause of the
/// client's is its own lateness, one of the upstream's side the upstream's), but never past
/// the slowest average rate allowed (`Progress::rate_floor`), and `timeout` after the body's
/// end for the response head (see [`crate::body::Progress`]).
async fn within<F: std::future::Future>(
    exchange: F,
    deadline: tokio::time::Instant,
    timeout: Duration,
    body: &crate::body::Progress,
) -> Result<F::Output, Late> {
    use crate::body::Stand;
    let mut exchange = std::pin::pin!(exchange);
    let mut deadline = deadline;
    loop {
        if let Ok(out) = tokio::time::timeout_at(deadline, exchange.as_mut()).await {
            return Ok(out);
        }
        let stand = body.stand();
        let (since, late) = match stand {
            Stand::Done(t) | Stand::Upstream(t) => (t, Late::Upstream),
            Stand::Client(t) => (t, Late::Client),
        };
        let mut next = crate::clock::deadline_after(since, timeout);
        if !matches!(stand, Stand::Done(_)) {
            next = next.min(body.rate_floor(timeout));
        }
        if next <= tokio::time::Instant::now() {
            return Err(late);
        }
        deadline = next;
    }
}

/// An upgrade's exchange in flight on its endpoint (least request) until dropped.
#[derive(Debug)]
pub struct Counted(
    Option<balance::InFlight>,
    #[expect(
        dead_code,
        reason = "held for its drop, which frees the connection's slot"
    )]
    Option<pool::Slot>,
);

impl Counted {
    /// A declined upgrade's answer, counted until its body ends, as any response is (its
    /// connection's task holds its slot).
    pub fn follow(self, body: PooledBody) -> PooledBody {
        match self.0 {
            None => body,
            Some(c) => body.with_in_flight(c),
        }
    }
}

/// The response, its body counted in flight on its endpoint while it lasts.
fn with_in_flight(
    resp: Response<PooledBody>,
    counted: Option<balance::InFlight>,
) -> Response<PooledBody> {
    match counted {
        None => resp,
        Some(c) => resp.map(|body| body.with_in_flight(c)),
    }
}

/// What an exchange says about its endpoint.
fn verdict(result: &Result<Response<PooledBody>, Failed>) -> Verdict {
    match result {
        Ok(resp) if resp.status().is_server_error() => Verdict::Failure,
        Ok(_) => Verdict::Success,
        Err(f) => error_verdict(&f.error),
    }
}

/// What went wrong with an exchange its endpoint failed, for the log.
fn failure_text(result: &Result<Response<PooledBody>, Failed>) -> String {
    match result {
        Ok(resp) => format!("answered {}", resp.status()),
        Err(f) => crate::errors::text(&f.error),
    }
}

/// Whether a failure means the endpoint could not be reached (or had no room): tried on
/// another endpoint rather than again on a fresh connection.
fn unreachable_error(e: &SendError) -> bool {
    matches!(
        e,
        SendError::Connect(_) | SendError::ConnectTimeout | SendError::Tls(_) | SendError::Busy
    )
}

/// What a failed exchange says about its endpoint.
fn error_verdict(e: &SendError) -> Verdict {
    match e {
        // The client's body failing says nothing about the endpoint. Over HTTP/2, hyper resets
        // the stream itself (`INTERNAL_ERROR`, initiated by its user) and reports that.
        // Regression: tests (it) upstreams::an_h2_upstream_is_not_blamed_for_a_body_over_the_limit
        SendError::Http(e) if e.is_user() || reset_by_us(e) => Verdict::Neutral,
        // Its own connection cap: the endpoint is busy, not failing.
        SendError::Busy => Verdict::Neutral,
        // The client's pause, not the endpoint's.
        SendError::BodyStalled => Verdict::Neutral,
        // Why: an upgrade for an HTTP/2 upstream failed as a connect failure, so clients
        // asking for WebSockets ejected every healthy endpoint of a gRPC upstream.
        // Regression: tests::an_upgrade_over_h2_fails_no_endpoint
        SendError::UpgradeOverH2 => Verdict::Neutral,
        _ => Verdict::Failure,
    }
}

/// Whether `e` is an HTTP/2 stream reset the gateway's side made (not the upstream, not h2
/// noticing a protocol error in the upstream's frames): hyper resets a stream whose request
/// body failed, the client's failure.
pub(crate) fn reset_by_us(e: &(dyn std::error::Error + 'static)) -> bool {
    crate::errors::sources(e)
        .find_map(|e| e.downcast_ref::<h2::Error>())
        .is_some_and(|h| h.is_reset() && !h.is_remote() && !h.is_library())
}

/// What an upstream's `url` says.
struct UrlParts {
    scheme: Scheme,
    authority: Authority,
    /// Its path, prepended to each request's, without a trailing `/`.
    base_path: Box<str>,
    /// Its authority as the `Host` the upstream gets (unless `preserve_host`).
    host_header: HeaderValue,
}

/// The `url` read and checked: its first problem (each follows from the one before).
fn url_parts(raw: &RawUpstream) -> Result<UrlParts, UpstreamError> {
    let url_error = |message: &str| UpstreamError {
        field: "url".into(),
        message: message.to_owned(),
    };
    if crate::secret::may_hold_credentials_anywhere(&raw.url) {
        return Err(url_error("credentials in the URL are not allowed"));
    }
    let uri: Uri = raw.url.parse().map_err(|_| UpstreamError {
        field: "url".into(),
        message: format!(
            "`{}` is not a valid URL: expected `http://host:port` or `https://host:port/base`",
            crate::secret::redacted_url(&raw.url)
        ),
    })?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| url_error("URL needs a scheme (http:// or https://)"))?;
    if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
        return Err(url_error("scheme must be http or https"));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| url_error("URL needs a host"))?;
    if !crate::config::port_fits(authority.as_str()) {
        return Err(url_error("the port must be a number from 0 to 65535"));
    }
    if uri.query().is_some() {
        return Err(url_error("URL must not have a query"));
    }
    // The base path is prepended to canonical paths, so it must be canonical itself.
    let path = uri.path();
    // (Escaped sub-delimiters may stay, as they are forwarded: `canonicalize_as_sent`.)
    if crate::request::path::canonicalize_as_sent(path)
        .ok()
        .as_deref()
        != Some(path)
    {
        return Err(url_error(
            "URL path must be canonical (no `//`, `.`, `..`, `;` or needless escapes)",
        ));
    }
    let base_path = path.trim_end_matches('/').into();
    let host_header = HeaderValue::from_str(authority.as_str())
        .map_err(|_| url_error("URL host is not a valid header value"))?;
    Ok(UrlParts {
        scheme,
        authority,
        base_path,
        host_header,
    })
}

/// The shortest `dns_refresh`.
const MIN_DNS_REFRESH: Duration = Duration::from_millis(100);

/// The consistent-hashing key.
fn hash_on(raw: &RawUpstream) -> Result<Option<HashOn>, UpstreamError> {
    let Some(h) = &raw.hash else {
        return Ok(None);
    };
    let err = |message: &str| UpstreamError {
        field: "hash".into(),
        message: message.to_owned(),
    };
    match (&h.header, h.principal) {
        (Some(name), false) => HeaderName::from_bytes(name.as_bytes())
            .map(|n| Some(HashOn::Header(n)))
            .map_err(|_| UpstreamError {
                field: "hash.header".into(),
                message: format!("`{name}` is not a valid header name"),
            }),
        (None, true) => Ok(Some(HashOn::Principal)),
        (Some(_), true) => Err(err("hash on `header` or on `principal`, not both")),
        (None, false) => Err(err("name a `header` to hash on, or set `principal: true`")),
    }
}

/// The configured endpoints: `endpoints`, or the URL's host and port.
fn specs(
    raw: &RawUpstream,
    scheme: &Scheme,
    authority: &Authority,
) -> Result<Vec<Spec>, Vec<UpstreamError>> {
    if raw.endpoints.is_empty() {
        let default_port = if *scheme == Scheme::HTTPS { 443 } else { 80 };
        let host = authority.host();
        let port = authority.port_u16().unwrap_or(default_port);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        return Ok(vec![match bare.parse::<std::net::IpAddr>() {
            Ok(ip) => Spec::Ip(std::net::SocketAddr::new(ip, port)),
            Err(_) => Spec::Name(format!("{host}:{port}").into()),
        }]);
    }
    listed(raw)
}

/// The endpoints `endpoints` lists (they need nothing of the URL), each checked.
fn listed(raw: &RawUpstream) -> Result<Vec<Spec>, Vec<UpstreamError>> {
    // Why: an address listed twice had twice the traffic and two copies of each of its
    // `portcullis_upstream_endpoint_*` series under the same labels (one ejected, one not).
    // It is one endpoint (`check` warns). Regression: tests::an_endpoint_listed_twice_is_one
    let again: Vec<usize> = listed_twice(&raw.endpoints)
        .into_iter()
        .map(|(i, _)| i)
        .collect();
    let mut out = Vec::with_capacity(raw.endpoints.len());
    let mut errors = Vec::new();
    for (i, e) in raw.endpoints.iter().enumerate() {
        if again.contains(&i) {
            continue;
        }
        if let Ok(a) = e.parse::<std::net::SocketAddr>() {
            out.push(Spec::Ip(std::net::SocketAddr::new(
                a.ip().to_canonical(),
                a.port(),
            )));
            continue;
        }
        // `name:port`: a valid authority with a port and nothing else.
        let ok = Authority::try_from(e.as_str()).is_ok_and(|a| {
            a.port_u16().is_some() && !a.as_str().contains('@') && !a.host().is_empty()
        });
        if !ok {
            // Why: `svc:S3cret@10.0.0.5:8080` was echoed whole.
            // Regression: tests::endpoints_with_credentials_are_refused_unshown
            let shown = crate::secret::redacted_url(e);
            errors.push(UpstreamError {
                field: format!("endpoints[{i}]"),
                message: format!(
                    "`{shown}` is not `ip:port` or `name:port` (such as `10.0.0.5:8080` or `api-1.internal:8080`; credentials are refused)"
                ),
            });
            continue;
        }
        out.push(Spec::Name(e.as_str().into()));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The entries of `endpoints` that repeat an earlier one, as (index, the earlier's index):
/// the same address (an IPv4-mapped IPv6 one is its IPv4 address) or the same name.
pub fn listed_twice(endpoints: &[String]) -> Vec<(usize, usize)> {
    let key = |e: &str| match e.parse::<std::net::SocketAddr>() {
        Ok(a) => std::net::SocketAddr::new(a.ip().to_canonical(), a.port()).to_string(),
        Err(_) => e.to_ascii_lowercase(),
    };
    let keys: Vec<String> = endpoints.iter().map(|e| key(e)).collect();
    keys.iter()
        .enumerate()
        .filter_map(|(i, k)| Some((i, keys[..i].iter().position(|x| x == k)?)))
        .collect()
}

fn health_check(raw: &RawUpstream) -> Result<Option<HealthCheck>, Vec<UpstreamError>> {
    let Some(h) = &raw.health_check else {
        return Ok(None);
    };
    let mut errors = Vec::new();
    let path = match h.path.parse::<Uri>() {
        Ok(u) if h.path.starts_with('/') && u.authority().is_none() => Some(u),
        _ => {
            errors.push(UpstreamError {
                field: "health_check.path".into(),
                message: format!("`{}` is not a path starting with `/`", h.path),
            });
            None
        }
    };
    for (field, zero) in [
        ("interval", h.interval.is_zero()),
        ("timeout", h.timeout.is_zero()),
    ] {
        if zero {
            errors.push(UpstreamError {
                field: format!("health_check.{field}"),
                message: "must be longer than zero".into(),
            });
        }
    }
    for (field, zero) in [
        ("healthy_threshold", h.healthy_threshold == 0),
        ("unhealthy_threshold", h.unhealthy_threshold == 0),
    ] {
        if zero {
            errors.push(UpstreamError {
                field: format!("health_check.{field}"),
                message: "must be at least 1".into(),
            });
        }
    }
    let Some(path) = path.filter(|_| errors.is_empty()) else {
        return Err(errors);
    };
    Ok(Some(HealthCheck {
        path,
        interval: h.interval,
        timeout: h.timeout,
        healthy_threshold: h.healthy_threshold,
        unhealthy_threshold: h.unhealthy_threshold,
    }))
}

/// SHA-256 over the TLS files' contents, so a renewed certificate or CA rebuilds the pools
/// (as a listener's certificates are reloaded) even though the config text is unchanged.
fn files_digest(raw: &RawUpstream, base_dir: &Path) -> Result<[u8; 32], Vec<UpstreamError>> {
    let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut errors = Vec::new();
    for (field, path) in [
        ("ca_file", &raw.ca_file),
        ("client_cert", &raw.client_cert),
        ("client_key", &raw.client_key),
    ] {
        digest.update(field.as_bytes());
        if let Some(p) = path {
            let p = base_dir.join(p);
            match crate::config::files::read(&p) {
                Ok(bytes) => {
                    digest.update(&(bytes.len() as u64).to_le_bytes());
                    digest.update(&bytes);
                }
                Err(e) => errors.push(UpstreamError {
                    field: field.into(),
                    message: format!("cannot read {}: {e}", crate::secret::shown_path(&p)),
                }),
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.finish().as_ref());
    Ok(out)
}

/// An upstream's settings that need no file: its protocol, timeouts, retry budget, HTTP/2
/// keep-alive and connection limit, each checked (`https`: whether its URL is, when it
/// could be read).
struct Settings {
    protocol: Protocol,
    h2: bool,
    h2_keepalive: Option<pool::H2Keepalive>,
    max_connections: Option<usize>,
}

fn settings(raw: &RawUpstream, https: Option<bool>) -> Result<Settings, Vec<UpstreamError>> {
    let mut errors = Vec::new();
    let mut error = |field: &str, message: &str| {
        errors.push(UpstreamError {
            field: field.into(),
            message: message.into(),
        });
    };
    let protocol = match (raw.protocol, raw.http2, https) {
        (Some(RawProtocol::H2c), _, Some(true)) => {
            error(
                "protocol",
                "`h2c` is cleartext HTTP/2: use an http:// URL, or `h2` for https",
            );
            Protocol::Negotiated
        }
        (Some(RawProtocol::H2c), _, _) => Protocol::H2c,
        (Some(RawProtocol::H2), _, Some(false)) | (None, true, Some(false)) => {
            error(
                "protocol",
                "HTTP/2 is negotiated over TLS: use an https:// URL, or `protocol: h2c` for cleartext",
            );
            Protocol::Negotiated
        }
        _ => Protocol::Negotiated,
    };
    let h2 = raw.http2 || raw.protocol == Some(RawProtocol::H2);
    // Why: a zero timeout passed `check` and failed every request (504), or cut every
    // streamed body at once. Regression: tests (it) check golden case zero-timeouts
    for (field, zero) in [
        ("connect_timeout", raw.connect_timeout.is_zero()),
        ("response_timeout", raw.response_timeout.is_zero()),
        (
            "idle_timeout",
            raw.idle_timeout.is_some_and(|d| d.is_zero()),
        ),
    ] {
        if zero {
            error(field, "must be more than 0");
        }
    }
    if raw.retry_budget.percent > 100 {
        error(
            "retry_budget.percent",
            "at most 100: a request is retried at most once, or twice when the second try never left the gateway",
        );
    }
    let h2_keepalive = match &raw.http2_keepalive {
        None => None,
        Some(_) if !h2 && protocol != Protocol::H2c && raw.protocol != Some(RawProtocol::H2c) => {
            error(
                "http2_keepalive",
                "PINGs are HTTP/2's: set `protocol: h2` (https) or `protocol: h2c`",
            );
            None
        }
        Some(k) if k.interval < Duration::from_secs(1) || k.timeout.is_zero() => {
            error(
                "http2_keepalive",
                "`interval` must be at least 1s and `timeout` more than 0s",
            );
            None
        }
        Some(k) => Some(pool::H2Keepalive {
            interval: k.interval,
            timeout: k.timeout,
            while_idle: k.while_idle,
        }),
    };
    let max_connections = match raw.max_connections {
        Some(n) if !(1..=1_000_000).contains(&n) => {
            error(
                "max_connections",
                "from 1 to 1000000 connections per endpoint",
            );
            None
        }
        n => n,
    };
    if https != Some(false) {
        match (&raw.client_cert, &raw.client_key) {
            (Some(_), None) => error("client_key", "a client certificate needs its `client_key`"),
            (None, Some(_)) => error("client_cert", "a client key needs its `client_cert`"),
            _ => {}
        }
        // A server name needs no file: checked here, with the rest.
        if let Some(n) = &raw.server_name {
            let bare = n.trim_start_matches('[').trim_end_matches(']');
            if ServerName::try_from(bare.to_owned()).is_err() {
                error(
                    "server_name",
                    &format!("`{n}` is not a valid TLS server name"),
                );
            }
        }
    }
    if https == Some(false) {
        for (field, set) in [
            ("ca_file", raw.ca_file.is_some()),
            ("client_cert", raw.client_cert.is_some()),
            ("client_key", raw.client_key.is_some()),
            ("server_name", raw.server_name.is_some()),
        ] {
            if set {
                error(field, "only an https upstream uses TLS settings");
            }
        }
    }
    if errors.is_empty() {
        Ok(Settings {
            protocol,
            h2,
            h2_keepalive,
            max_connections,
        })
    } else {
        Err(errors)
    }
}

/// What every endpoint's pool shares: TLS (trust, client certificate, server name, ALPN),
/// protocol and pool limits.
fn template(
    raw: &RawUpstream,
    base_dir: &Path,
    (scheme, authority): (&Scheme, &Authority),
    settings: &Settings,
) -> Result<Template, UpstreamError> {
    let tls = if *scheme == Scheme::HTTPS {
        let ca = raw.ca_file.as_ref().map(|p| base_dir.join(p));
        let client = match (&raw.client_cert, &raw.client_key) {
            (Some(c), Some(k)) => Some(
                tls::certs::load_cert_for(
                    &base_dir.join(c),
                    &base_dir.join(k),
                    tls::certs::Purpose::Client,
                )
                .map_err(|e| UpstreamError {
                    field: if e.field() == "key" {
                        "client_key"
                    } else {
                        "client_cert"
                    }
                    .into(),
                    message: e.to_string(),
                })?
                .key,
            ),
            // ([`settings`] refused one without the other.)
            _ => None,
        };
        let config = tls::server::client_config_with_cert(ca.as_deref(), settings.h2, client)
            .map_err(|e| UpstreamError {
                field: "ca_file".into(),
                message: e.to_string(),
            })?;
        let (name, field) = match &raw.server_name {
            Some(n) => (n.as_str(), "server_name"),
            None => (authority.host(), "url"),
        };
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(bare.to_owned()).map_err(|_| UpstreamError {
            field: field.into(),
            message: format!("`{name}` is not a valid TLS server name"),
        })?;
        Some(Arc::new(TlsTarget {
            connector: tokio_rustls::TlsConnector::from(config),
            name,
        }))
    } else {
        None
    };
    Ok(Template {
        tls,
        protocol: settings.protocol,
        scheme: scheme.clone(),
        authority: authority.clone(),
        idle_timeout: raw.pool_idle_timeout,
        max_idle: raw.pool_max_idle,
        response_timeout: raw.response_timeout,
        h2_keepalive: settings.h2_keepalive,
        max_connections: settings.max_connections,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upgrade_over_h2_fails_no_endpoint() {
        assert!(matches!(
            error_verdict(&SendError::UpgradeOverH2),
            Verdict::Neutral
        ));
        assert!(matches!(
            error_verdict(&SendError::Timeout),
            Verdict::Failure
        ));
    }

    #[test]
    fn endpoints_with_credentials_are_refused_unshown() {
        let raw: RawUpstream = serde_yaml::from_str(
            "{url: \"http://app.internal:8080\", endpoints: [\"10.0.0.5:8080\", \"svc:S3cretPw@10.0.0.6:8080\"]}",
        )
        .unwrap();
        let authority = Authority::from_static("app.internal:8080");
        let e = specs(&raw, &Scheme::HTTP, &authority).err().unwrap();
        let [e] = &e[..] else { panic!("{e:?}") };
        assert_eq!(e.field, "endpoints[1]");
        assert!(!e.message.contains("S3cretPw"), "{}", e.message);
        assert!(
            e.message.contains("credentials are refused"),
            "{}",
            e.message
        );
    }

    /// Every problem of an upstream that does not follow from another is named at once (as
    /// `check` promises), not one per run.
    #[test]
    fn every_problem_of_an_upstream_is_named() {
        let raw: RawUpstream = serde_yaml::from_str(
            "{url: \"http://app.internal:8080\", endpoints: [\"not a host\", \"127.0.0.1:99999\", \"10.0.0.5:80\", \"[::1]\"], health_check: {path: healthz, interval: 0s, unhealthy_threshold: 0}, retry_budget: {percent: 500}, dns_refresh: 10ms, connect_timeout: 0s, max_connections: 0, protocol: h2, ca_file: ca.pem, client_key: k.pem}",
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let errors = Upstream::build("a", &raw, dir.path(), None).err().unwrap();
        let mut fields: Vec<&str> = errors.iter().map(|e| &*e.field).collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "ca_file",
                "ca_file",
                "client_key",
                "client_key",
                "connect_timeout",
                "dns_refresh",
                "endpoints[0]",
                "endpoints[1]",
                "endpoints[3]",
                "health_check.interval",
                "health_check.path",
                "health_check.unhealthy_threshold",
                "max_connections",
                "protocol",
                "retry_budget.percent",
            ],
            "{errors:?}"
        );
        // A URL that cannot be read hides only what follows from it (the endpoints' default
        // port, TLS): the rest is still named.
        let raw: RawUpstream = serde_yaml::from_str(
            "{url: \"ftp://x\", endpoints: [\"not a host\"], dns_refresh: 10ms, retry_budget: {percent: 500}}",
        )
        .unwrap();
        let errors = Upstream::build("a", &raw, dir.path(), None).err().unwrap();
        let fields: Vec<&str> = errors.iter().map(|e| &*e.field).collect();
        assert_eq!(
            fields,
            ["url", "endpoints[0]", "dns_refresh", "retry_budget.percent"],
            "{errors:?}"
        );
        // An https upstream: a bad server name beside other problems; the pairing of a
        // certificate and its key, not on http, where neither belongs.
        let https: RawUpstream = serde_yaml::from_str(
            "{url: \"https://[::1]:8443\", server_name: \"bad name!\", max_connections: 0}",
        )
        .unwrap();
        let errors = Upstream::build("a", &https, dir.path(), None)
            .err()
            .unwrap();
        let fields: Vec<&str> = errors.iter().map(|e| &*e.field).collect();
        assert_eq!(fields, ["max_connections", "server_name"], "{errors:?}");
        let http: RawUpstream =
            serde_yaml::from_str("{url: \"http://a.internal\", client_cert: c.pem}").unwrap();
        let errors = Upstream::build("a", &http, dir.path(), None).err().unwrap();
        let fields: Vec<&str> = errors.iter().map(|e| &*e.field).collect();
        assert_eq!(fields, ["client_cert", "client_cert"], "{errors:?}");
    }

    #[test]
    fn an_endpoint_listed_twice_is_one() {
        let authority = Authority::from_static("app.internal:8080");
        for list in [
            "[\"10.0.0.5:8080\", \"10.0.0.6:8080\", \"10.0.0.5:8080\"]",
            "[\"10.0.0.5:8080\", \"10.0.0.6:8080\", \"[::ffff:10.0.0.5]:8080\"]",
            "[\"api.internal:80\", \"10.0.0.6:8080\", \"API.internal:80\"]",
        ] {
            let raw: RawUpstream = serde_yaml::from_str(&format!(
                "{{url: \"http://app.internal\", endpoints: {list}}}"
            ))
            .unwrap();
            assert_eq!(
                specs(&raw, &Scheme::HTTP, &authority).unwrap().len(),
                2,
                "{list}"
            );
            assert_eq!(listed_twice(&raw.endpoints), [(2, 0)], "{list}");
        }
        assert_eq!(
            listed_twice(&["[::1]:80".into(), "[0:0::1]:80".into(), "[::1]:81".into()]),
            [(1, 0)]
        );
    }

    /// An upstream without `idle_timeout` still bounds a pause inside a response body; one
    /// with it keeps its own.
    #[test]
    fn a_stalled_body_is_cut_by_default() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("policies")).unwrap();
        std::fs::write(
            dir.path().join("c.yaml"),
            "listeners: [{name: l, address: \"127.0.0.1:0\"}]\nupstreams:\n  plain: {url: \"http://127.0.0.1:9\"}\n  set: {url: \"http://127.0.0.1:9\", idle_timeout: 2s}\npolicies: {dir: policies}\n",
        )
        .unwrap();
        let (snap, _) = crate::config::build(&dir.path().join("c.yaml"), None).unwrap();
        let idle = |name: &str| {
            snap.upstreams
                .iter()
                .find(|u| &*u.name == name)
                .map(|u| u.idle_timeout)
        };
        assert_eq!(idle("plain"), Some(BODY_IDLE_TIMEOUT));
        assert_eq!(idle("set"), Some(Duration::from_secs(2)));
    }
}
