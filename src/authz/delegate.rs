//! Delegation: a rule may ask an external authorization service the Envoy ext_authz gRPC way
//! (`envoy.service.auth.v3.Authorization/Check`) before it allows: OPA-Envoy, another
//! Portcullis, a home-grown policy service. A rule names one of the config's `delegates`
//! (`delegate: opa`); the step runs after the rule's requirements, `when` and rate limit (a
//! throttled request is never asked about).
//!
//! Invariants:
//! - The delegate judges the request the upstream will get: its headers are the client's
//!   minus every one a client must not hand an upstream ([`Spoofable`]; forwarding headers
//!   from a peer that is not a trusted proxy too, its address being `source.address`), each
//!   name once with its values joined in order, plus the identity headers the gateway sets;
//!   never the request's own identifiers (`traceparent`, `tracestate`, the request id).
//!   The call is a hop of the request's trace: its metadata carries this hop's
//!   `traceparent` (the one the upstream gets) when the door keeps a trace.
//!   The credential stays (policies read the JWT); the signed assertion, minted after the
//!   answer, is not sent.
//! - Every call is bounded by the delegate's `timeout`.
//! - An answer is cached under a SHA-256 of the rule and everything the `CheckRequest` told
//!   the delegate: source address, method, host, path and query, scheme, every header sent
//!   (the credential among them), the context extensions (principal id and kind,
//!   authenticator). So an answer is reused only for a request the delegate could not tell
//!   apart from the one it judged: another token of the same user, another client address, a
//!   header it reads are asked about again. Anonymous requests are cached the same way. The
//!   key digests the credential and is never logged; entries are bounded in number and never
//!   kept past the delegate's `cache_ttl` nor the credential's expiry (on an anonymous rule,
//!   the `exp` a bearer JWT says, unverified: it only ever shortens the caching).
//! - When the service fails, times out or answers nonsense, `failure_mode` decides: `deny`
//!   (the default: 503 `delegate_unavailable`) or `allow`, and the failure is counted.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::{CheckRequest, HttpResponse};
use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address};
use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use http::{HeaderName, HeaderValue, header};

use crate::authn::principal::Principal;
use crate::authz::spoofable::{Family, Spoofable, family};
use crate::config::FieldError;
use crate::config::raw::{RawDelegate, RawFailureMode};
use crate::request::RequestFacts;
use crate::telemetry::trace_context::{TRACEPARENT, TRACESTATE, TraceContext};

mod connect;

/// A compiled delegate.
pub struct Delegate {
    /// Its name in the config.
    pub name: Arc<str>,
    endpoint: tonic::transport::Endpoint,
    /// TCP, and TLS for an `https://` delegate ([`connect`]).
    connector: connect::Connector,
    /// Made on first use: a channel needs the runtime, and `check` has none.
    client: std::sync::OnceLock<AuthorizationClient<tonic::transport::Channel>>,
    timeout: Duration,
    cache_ttl: Duration,
    fail_open: bool,
    cache: moka::sync::Cache<[u8; 32], Verdict>,
    /// The headers its answers may set.
    headers: Arc<[HeaderName]>,
    /// The definition as written: a reload that leaves it alone keeps the cached verdicts.
    fingerprint: crate::config::Fingerprint,
    /// Its answers and failures so far, carried across reloads under its name.
    pub counts: Arc<Counts>,
}

/// What a delegate's checks came to (`portcullis_delegate_checks_total`).
#[derive(Debug, Default)]
pub struct Counts {
    /// Allowed, asked.
    pub allowed: AtomicU64,
    /// Denied, asked.
    pub denied: AtomicU64,
    /// Answered from the cache.
    pub cached: AtomicU64,
    /// No answer within the timeout.
    pub timeouts: AtomicU64,
    /// The call failed (unreachable, TLS, an error status).
    pub errors: AtomicU64,
    /// An answer that is neither OK nor a denial.
    pub invalid: AtomicU64,
}

/// What a delegate said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed, with headers it asks to set upstream.
    Allow(Arc<[(HeaderName, HeaderValue)]>),
    /// Denied.
    Deny,
}

/// What the upstream's headers become, for the delegate to see them as it will.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamHeaders<'a> {
    /// Which client headers never reach an upstream (the snapshot's).
    pub spoofable: &'a Spoofable,
    /// The identity headers the gateway sets for this request.
    pub identity: &'a [(HeaderName, HeaderValue)],
    /// The request-id header (`server.request_id_header`), never sent ([`headers_sent`]).
    pub request_id: &'a HeaderName,
}

/// Why a delegate gave no verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DelegateError {
    /// No answer within the timeout.
    #[error("timed out")]
    Timeout,
    /// The call failed (unreachable, an error status): its gRPC code, which tells a
    /// delegate down (`Unavailable`) from one that does not serve Check (`Unimplemented`).
    #[error("call failed: {0:?}")]
    Call(tonic::Code),
    /// An answer that is neither OK nor a denial.
    #[error("unusable answer")]
    Garbage,
}

/// A SHA-256 being fed length-prefixed parts (see [`cache_key`]).
struct KeyDigest(aws_lc_rs::digest::Context);

/// The longest a delegate's answer is reused.
const MAX_CACHE_TTL: Duration = Duration::from_secs(24 * 60 * 60);

impl std::fmt::Debug for Delegate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delegate")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

// === impl Delegate ===

impl Delegate {
    /// Compiles a delegate; `previous` lends its cache when the definition is unchanged.
    /// Errors are (field, message).
    pub fn compile(
        name: &str,
        raw: &RawDelegate,
        base_dir: &std::path::Path,
        previous: Option<&Self>,
    ) -> Result<Self, FieldError> {
        // Why: `http://u:pass@host` was accepted and sent the credentials as the HTTP/2
        // `:authority`, in clear text (and RFC 9113 forbids user information there).
        // Regression: authz::delegate::tests::credentials_in_the_url_are_refused
        if crate::secret::may_hold_credentials_anywhere(&raw.grpc) {
            return Err(FieldError::new(
                "grpc",
                "credentials in the URL are refused: the delegate is called without them",
            ));
        }
        let endpoint = tonic::transport::Endpoint::from_shared(raw.grpc.clone()).map_err(|_| {
            FieldError::new(
                "grpc",
                format!(
                    "`{}` is not an http:// or https:// URL",
                    crate::secret::redacted_url(&raw.grpc)
                ),
            )
        })?;
        if !(raw.grpc.starts_with("http://") || raw.grpc.starts_with("https://")) {
            return Err(FieldError::new("grpc", "an http:// or https:// URL"));
        }
        if !endpoint
            .uri()
            .authority()
            .is_some_and(|a| crate::config::port_fits(a.as_str()))
        {
            return Err(FieldError::new(
                "grpc",
                "a host, and a port (if written) from 0 to 65535",
            ));
        }
        if raw.timeout.is_zero() {
            return Err(FieldError::new("timeout", "must be more than zero"));
        }
        // Why: `cache_ttl: 1001y` reached the cache's builder, which panics past 1000 years:
        // `check` exited 101 and a reload failed as "task panicked".
        // Regression: authz::delegate::tests::a_cache_ttl_past_a_day_is_refused
        if raw.cache_ttl > MAX_CACHE_TTL {
            return Err(FieldError::new("cache_ttl", "at most 1d"));
        }
        let tls = if raw.grpc.starts_with("https://") {
            let ca = raw.ca_file.as_ref().map(|p| base_dir.join(p));
            let config = crate::tls::server::client_config(ca.as_deref(), true)
                .map_err(|e| FieldError::new("ca_file", e.to_string()))?;
            let mut config = (*config).clone();
            // gRPC is HTTP/2: offered alone.
            config.alpn_protocols = vec![b"h2".to_vec()];
            let host = endpoint.uri().host().unwrap_or_default();
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let name = rustls_pki_types::ServerName::try_from(bare.to_owned()).map_err(|_| {
                FieldError::new("grpc", format!("`{host}` is not a valid TLS server name"))
            })?;
            Some((Arc::new(config), name))
        } else if raw.ca_file.is_some() {
            return Err(FieldError::new(
                "ca_file",
                "only an https:// delegate uses TLS settings",
            ));
        } else {
            None
        };
        let mut headers = Vec::with_capacity(raw.headers.len());
        for h in &raw.headers {
            let name =
                crate::authz::identity::check_name(h).map_err(|m| FieldError::new("headers", m))?;
            // Why: `headers: [x-portcullis-assertion]` passed `check` without a word, and a
            // delegate's `x-portcullis-assertion: forged` reached the upstream, which reads
            // that header as the gateway's signed word; Envoy's and the doors' own headers
            // likewise. Regression: tests (it) delegate::check_warns_about_delegate_headers_the_gateway_owns
            let dashed = crate::authz::identity::fold_name(name.as_str());
            if dashed.starts_with("x-portcullis-") || dashed.starts_with("x-envoy-") {
                return Err(FieldError::new(
                    "headers",
                    format!(
                        "`{h}` is the gateway's or Envoy's own (x-portcullis-*, x-envoy-*): a delegate never sets it"
                    ),
                ));
            }
            headers.push(name);
        }
        // The whole call's deadline is `check`'s own, so a timeout is told from a failure.
        //
        // Why the pings: the client keeps one HTTP/2 connection; one that stopped answering
        // without closing (a load balancer pinned to a hung instance, a dropped NAT entry)
        // timed out every call, 503 (or an allow, failing open) for as long as it lasted: 80 s
        // and more under a tester's relay, until a reload built a new client. A ping not
        // answered within the interval now closes it, and the next call connects afresh.
        // Regression: tests (it) delegate::a_delegate_connection_that_stops_answering_is_replaced
        //
        // Why not while idle: gRPC servers in Go (OPA's Envoy plugin among them) answer pings
        // on a connection without calls, more often than every 2 hours, with GOAWAY
        // `too_many_pings`. With a call open, a ping goes when nothing was read for the
        // interval (once after a quiet spell, then only if the delegate is silent), and each
        // answer the server sends clears its count.
        let ping = (raw.timeout * 5).clamp(Duration::from_secs(1), Duration::from_secs(10));
        let endpoint = endpoint
            .connect_timeout(raw.timeout)
            .http2_keep_alive_interval(ping)
            .keep_alive_timeout(ping)
            .keep_alive_while_idle(false);
        let fingerprint = crate::config::Fingerprint::of(&[raw]);
        let cache = match previous.filter(|p| p.fingerprint == fingerprint) {
            Some(p) => p.cache.clone(),
            None => moka::sync::Cache::builder()
                .max_capacity(raw.cache_max_entries)
                .time_to_live(raw.cache_ttl.max(Duration::from_millis(1)))
                .build(),
        };
        Ok(Self {
            name: name.into(),
            endpoint,
            connector: connect::Connector::new(tls),
            client: std::sync::OnceLock::new(),
            timeout: raw.timeout,
            cache_ttl: raw.cache_ttl,
            fail_open: raw.failure_mode == RawFailureMode::Allow,
            cache,
            headers: headers.into(),
            fingerprint,
            counts: previous.map_or_else(Arc::default, |p| Arc::clone(&p.counts)),
        })
    }

    /// The headers its answers may set (removed from client requests).
    pub fn header_names(&self) -> &[HeaderName] {
        &self.headers
    }

    /// Whether a failure lets the request through.
    pub fn fails_open(&self) -> bool {
        self.fail_open
    }

    /// Asks the delegate about a request the rule `rule` would allow, through the cache
    /// (keyed by `cache_key`): the request with its headers as the upstream will get them
    /// (`upstream`: which client headers go, which the gateway sets; see `headers_sent`),
    /// unless `fresh` (a live tunnel's re-check asks again, and caches the new answer).
    ///
    /// Asked about the path as the upstream receives it; when that is another path than the
    /// canonical one the rules read, about both at once, and an allow needs both (the answer
    /// for the path as received is the one kept, with its headers).
    pub async fn check(
        &self,
        facts: &RequestFacts<'_>,
        principal: Option<&Principal>,
        rule: &str,
        upstream: UpstreamHeaders<'_>,
        now: u64,
        fresh: bool,
    ) -> Result<Verdict, DelegateError> {
        let forwarded = facts.forwarded_path();
        let ask = |path| self.check_path(facts, path, principal, rule, upstream, now, fresh);
        if forwarded == facts.path {
            return ask(forwarded).await;
        }
        // Why both readings: a decision door's peer forwards the path as the client sent it,
        // and the upstream decodes it: asked only about `/deleg/z/%65vil`, a delegate refusing
        // paths with `evil` allowed what the upstream served as `/deleg/z/evil`, which the
        // proxy door (forwarding the canonical path) refused. The engine reads a rule's own
        // `when` both ways for the same reason.
        // Regression: tests (it) delegate::the_delegate_is_asked_about_both_readings_of_a_path
        //
        // Why at once: one after the other, the second call got what the first left of a
        // door's deadline and ran out where it would have answered, and a delegate failing
        // open let through the reading it would have refused (at the proxy, a request waited
        // twice the timeout). Together, each has the whole timeout and the request one.
        // Regression: tests (it) delegate::both_readings_are_asked_at_once
        let (as_sent, canonical) = tokio::join!(ask(forwarded), ask(&facts.path));
        match (as_sent, canonical) {
            // A refusal of either reading is the answer, whatever the other call did.
            (Ok(Verdict::Deny), _) | (_, Ok(Verdict::Deny)) => Ok(Verdict::Deny),
            (Err(e), _) | (_, Err(e)) => Err(e),
            // The answer about the path as received, with its headers.
            (Ok(allow), Ok(_)) => Ok(allow),
        }
    }

    /// [`Self::check`] for one reading of the path.
    #[expect(
        clippy::too_many_arguments,
        reason = "check's own, and the path it is about"
    )]
    async fn check_path(
        &self,
        facts: &RequestFacts<'_>,
        path: &str,
        principal: Option<&Principal>,
        rule: &str,
        upstream: UpstreamHeaders<'_>,
        now: u64,
        fresh: bool,
    ) -> Result<Verdict, DelegateError> {
        let request = check_request(facts, path, principal, upstream);
        // Why: the answer is cached for exactly what the delegate was told. Keyed by who the
        // principal is, alice's low-scope token (same `sub` and `iss`) got the allow her
        // full-scope token earned, and a header, address or scheme the delegate read was
        // outside the key. With the whole request in the key, anonymous requests are cached
        // too: two share an answer only when the delegate could not tell them apart.
        // Regression: tests (it) delegate::low_scope_token_does_not_get_a_cached_allow,
        // delegate::cached_allow_is_not_reused_for_other_headers,
        // delegate::anonymous_answers_are_cached_under_the_full_request
        let key = if self.cache_ttl.is_zero() {
            None
        } else {
            cache_key(rule, &request)
        };
        if let Some(k) = key.as_ref().filter(|_| !fresh)
            && let Some(v) = self.cache.get(k)
        {
            self.counts.cached.fetch_add(1, Ordering::Relaxed);
            return Ok(v);
        }
        let verdict = self.ask(request, facts.trace, facts.deadline).await;
        let counter = match &verdict {
            Ok(Verdict::Allow(_)) => &self.counts.allowed,
            Ok(Verdict::Deny) => &self.counts.denied,
            Err(DelegateError::Timeout) => &self.counts.timeouts,
            Err(DelegateError::Call(_)) => &self.counts.errors,
            Err(DelegateError::Garbage) => &self.counts.invalid,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let verdict = verdict?;
        // Never past the credential's expiry: the principal's, or, on a rule that verified
        // none (the delegate checks the token itself), the `exp` a bearer JWT says.
        let expires_at = match principal {
            Some(p) => p.expires_at,
            None => unverified_exp(facts.headers),
        };
        let fresh = expires_at.is_none_or(|exp| exp > now + self.cache_ttl.as_secs());
        if let Some(k) = key
            && fresh
        {
            self.cache.insert(k, verdict.clone());
        }
        Ok(verdict)
    }

    /// One Check call, within the timeout, in the request's trace (`trace`, this hop's).
    async fn ask(
        &self,
        request: CheckRequest,
        trace: Option<&TraceContext>,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Verdict, DelegateError> {
        // Lazy: the first call connects, so a delegate that is down does not fail a reload.
        let mut client = self
            .client
            .get_or_init(|| {
                AuthorizationClient::new(
                    self.endpoint
                        .connect_with_connector_lazy(self.connector.clone()),
                )
            })
            .clone();
        let mut request = tonic::Request::new(request);
        // Why: the delegate is a hop of the request: its spans join the trace as children of
        // the gateway's span, with the `traceparent` the upstream gets, never the client's own
        // (kept out of the CheckRequest's headers). Regression: tests (it)
        // delegate::trace_context_and_request_id_do_not_defeat_the_cache
        if let Some(trace) = trace {
            let mut headers = http::HeaderMap::new();
            trace.apply(&mut headers);
            *request.metadata_mut() = tonic::metadata::MetadataMap::from_headers(headers);
        }
        let budget = crate::request::facts::call_budget(self.timeout, deadline);
        let answer = tokio::time::timeout(budget, client.check(request))
            .await
            .map_err(|_| DelegateError::Timeout)?
            .map_err(|status| DelegateError::Call(status.code()))?
            .into_inner();
        verdict(&answer, &self.headers)
    }
}

/// The `exp` a bearer JWT in `Authorization` says, read without verifying it: only ever used
/// to keep a cached answer shorter.
///
/// Why: on an anonymous rule whose delegate verifies the token itself (OPA's usual setup), an
/// answer was cached for `cache_ttl` whatever the token said: a token with 3 s to live was
/// still allowed from the cache 5 s later, past its expiry.
/// Regression: tests::an_unverified_bearer_tokens_exp_is_read
fn unverified_exp(headers: &http::HeaderMap) -> Option<u64> {
    use base64::Engine as _;
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut parts = token.trim().split('.');
    let (_, payload) = (parts.next()?, parts.next()?);
    // Bounded: a claims set this large is no token a delegate accepts either.
    if payload.len() > 16 * 1024 {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = &claims["exp"];
    exp.as_u64()
        .or_else(|| exp.as_f64().filter(|e| *e >= 0.0).map(|e| e as u64))
}

/// The key an answer is cached under: SHA-256 over the rule and everything `request` tells
/// the delegate (source address, method, host, path and query, scheme, every header, the
/// context extensions), each part length-prefixed and the maps sorted by name, so equal
/// requests give equal keys and no two different ones share an encoding. `None` (not cached)
/// when `request` holds a field the key does not read. It digests the credential: never
/// logged.
fn cache_key(rule: &str, request: &CheckRequest) -> Option<[u8; 32]> {
    // Why: exhaustive patterns (no `..`), so a field a newer envoy-types adds fails to compile
    // here rather than fall outside the key; the fields `check_request` never sets must be
    // empty, or the answer is not cached at all.
    // Regression: tests::key_covers_every_part_sent, tests::key_skips_unread_fields
    let CheckRequest { attributes } = request;
    let AttributeContext {
        source,
        destination,
        request,
        context_extensions,
        metadata_context,
        route_metadata_context,
        tls_session,
    } = attributes.as_ref()?;
    let Peer {
        address,
        service,
        labels,
        principal,
        certificate,
    } = source.as_ref()?;
    let Some(address::Address::SocketAddress(SocketAddress {
        protocol,
        address,
        resolver_name,
        ipv4_compat,
        network_namespace_filepath,
        port_specifier,
    })) = address.as_ref()?.address.as_ref()
    else {
        return None;
    };
    let Request { time, http } = request.as_ref()?;
    let HttpRequest {
        id,
        method,
        headers,
        header_map,
        path,
        host,
        scheme,
        query,
        fragment,
        size,
        protocol: http_protocol,
        body,
        raw_body,
    } = http.as_ref()?;
    let unread = destination.is_some()
        || metadata_context.is_some()
        || route_metadata_context.is_some()
        || tls_session.is_some()
        || !(service.is_empty() && labels.is_empty())
        || !(principal.is_empty() && certificate.is_empty())
        || *protocol != 0
        || !(resolver_name.is_empty() && network_namespace_filepath.is_empty())
        || *ipv4_compat
        || port_specifier.is_some()
        || time.is_some()
        || header_map.is_some()
        || !(id.is_empty() && query.is_empty() && fragment.is_empty())
        || *size != 0
        || !(http_protocol.is_empty() && body.is_empty() && raw_body.is_empty());
    if unread {
        return None;
    }
    let mut d = KeyDigest(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256));
    for part in [rule, address, method, host, path, scheme] {
        d.part(part.as_bytes());
    }
    d.map(headers);
    d.map(context_extensions);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.0.finish().as_ref());
    Some(out)
}

/// The `CheckRequest` for a request about `path` (the path as the upstream receives it,
/// [`RequestFacts::forwarded_path`], or the canonical one): what the gateway decided on, its
/// headers as the
/// upstream will get them ([`headers_sent`]), the principal in `context_extensions`
/// (`principal_id`, `principal_kind`, `authenticator`, `principal_issuer` when it has one).
fn check_request(
    facts: &RequestFacts<'_>,
    path: &str,
    principal: Option<&Principal>,
    upstream: UpstreamHeaders<'_>,
) -> CheckRequest {
    let headers = headers_sent(facts, upstream);
    // Why the path as the upstream receives it: asked about `/@team/docs/x` decoded, a
    // delegate allowing `/@team/` allowed `/%40team/docs/x`, which an upstream routing on the
    // raw path serves from another handler (the engine checks a rule's own `when` both ways).
    // An Envoy in front of an ext_authz service sends it the path as received, too.
    // Regression: tests (it) delegate::the_delegate_is_asked_about_the_path_as_forwarded
    let path = match facts.query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut context = HashMap::new();
    if let Some(p) = principal {
        context.insert("principal_id".to_owned(), p.id.to_string());
        let kind = match p.kind {
            crate::authn::PrincipalKind::User => "user",
            crate::authn::PrincipalKind::Machine => "machine",
        };
        context.insert("principal_kind".to_owned(), kind.to_owned());
        context.insert("authenticator".to_owned(), p.authenticator.to_string());
        // An id is unique only within its issuer too (one authenticator may trust several).
        if let Some(issuer) = &p.issuer {
            context.insert("principal_issuer".to_owned(), issuer.to_string());
        }
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: facts.client_ip.to_string(),
                        ..SocketAddress::default()
                    })),
                }),
                ..Peer::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: facts.method.as_str().to_owned(),
                    host: facts.host.to_string(),
                    path,
                    scheme: match facts.scheme {
                        crate::request::facts::Scheme::Http => "http".to_owned(),
                        crate::request::facts::Scheme::Https => "https".to_owned(),
                    },
                    headers,
                    ..HttpRequest::default()
                }),
                ..Request::default()
            }),
            context_extensions: context,
            ..AttributeContext::default()
        }),
    }
}

/// The request's headers as the upstream will get them, one entry per name: every header a
/// client must not hand an upstream removed, repeated values joined in order, the gateway's
/// identity headers set. The credential stays: delegates such as OPA read the JWT.
fn headers_sent(
    facts: &RequestFacts<'_>,
    upstream: UpstreamHeaders<'_>,
) -> HashMap<String, String> {
    let mut out = HashMap::with_capacity(facts.headers.keys_len() + upstream.identity.len());
    for name in facts.headers.keys() {
        // Why: the delegate must judge the request the upstream acts on. Told the client's
        // `x-user-id`, `X_User_Roles` or `x-original-url`, it allows on claims the gateway
        // removes (HeaderMutation drops the same names); told a forged `X-Forwarded-For` or
        // `X-Real-IP` from a peer that is not a trusted proxy, it believes an address the door
        // replaces (the real one is `source.address`).
        // Regression: tests (it) delegate::spoofed_identity_headers_never_reach_the_delegate
        if upstream.spoofable.is_doomed(name, facts.peer_trusted)
            || (!facts.peer_trusted && family(name.as_str()) == Some(Family::Forwarding))
        {
            continue;
        }
        // Why: a request's own identifiers (its trace context, its request id) are not what
        // a policy judges, and in the cache key they made every request from an instrumented
        // client a miss (a fresh `traceparent` each time); the client's `traceparent` is not
        // even what the upstream gets (the gateway sends its own).
        // Regression: tests (it) delegate::trace_context_and_request_id_do_not_defeat_the_cache
        if *name == TRACEPARENT || *name == TRACESTATE || name == upstream.request_id {
            continue;
        }
        // Why: collecting pairs into a map kept the last of a repeated header, so with
        // `X-Tenant: evil` then `X-Tenant: mine` the delegate judged `mine` while an upstream
        // reading the first acts on `evil`. Every value, in order, joined as Envoy joins them
        // (`,`; `Cookie` with `; `, as HTTP/2 joins cookie fields, RFC 9113 §8.2.3). A value
        // that is not UTF-8 is passed lossily, never dropped.
        // Regression: tests (it) delegate::repeated_header_reaches_the_delegate_joined
        let separator = if name == header::COOKIE { "; " } else { "," };
        let mut joined = String::new();
        for (i, value) in facts.headers.get_all(name).iter().enumerate() {
            if i > 0 {
                joined.push_str(separator);
            }
            joined.push_str(&String::from_utf8_lossy(value.as_bytes()));
        }
        out.insert(name.as_str().to_owned(), joined);
    }
    // Why: an HTTP/2 request names its host in `:authority`, with no `Host` field, so the
    // delegate was told a `host` header for HTTP/1.1 requests only (policies read it).
    // Regression: tests::host_is_sent_whatever_the_http_version
    // And always the host the rules were matched on, which the upstream gets: for an
    // absolute-form target (`GET http://evil.example/`) or HTTP/2 with both `:authority` and
    // `host`, the client's `Host` line named another, and the delegate judged that one.
    // Regression: tests::host_is_the_decided_one
    out.insert("host".to_owned(), facts.authority());
    // Set, replacing, as `HeaderMutation::apply` does (their names were removed above).
    for (name, value) in upstream.identity {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        out.insert(name.as_str().to_owned(), value);
    }
    out
}

// === impl KeyDigest ===

impl KeyDigest {
    /// One part, after its length: `ab`,`c` and `a`,`bc` never feed the same bytes.
    fn part(&mut self, bytes: &[u8]) {
        self.0.update(&(bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
    }

    /// A map: its size, then each name and value, sorted by name (a `HashMap` iterates in
    /// no fixed order).
    fn map(&mut self, map: &HashMap<String, String>) {
        let mut entries: Vec<(&String, &String)> = map.iter().collect();
        entries.sort_unstable();
        self.0.update(&(entries.len() as u64).to_le_bytes());
        for (name, value) in entries {
            self.part(name.as_bytes());
            self.part(value.as_bytes());
        }
    }
}

/// OK allows (with the headers it asks to set); a denial denies; anything else is garbage.
fn verdict(
    r: &envoy_types::ext_authz::v3::pb::CheckResponse,
    allowed: &[HeaderName],
) -> Result<Verdict, DelegateError> {
    // Why: proto3 reads an absent `status` as OK (Envoy allows on it), so an empty answer,
    // what a delegate that fails to fill its response sends, would open every delegated
    // route. An answer must say something: a status, or an OK or denied response.
    // Regression: tests::an_empty_answer_is_no_verdict
    if r.status.is_none() && r.http_response.is_none() {
        return Err(DelegateError::Garbage);
    }
    match (r.status.as_ref().map_or(0, |s| s.code), &r.http_response) {
        (0, Some(HttpResponse::DeniedResponse(_))) => Err(DelegateError::Garbage),
        (0, ok) => {
            let headers = match ok {
                Some(HttpResponse::OkResponse(ok)) => ok
                    .headers
                    .iter()
                    .filter_map(|o| o.header.as_ref())
                    .filter_map(|h| {
                        let name = HeaderName::from_bytes(h.key.as_bytes()).ok()?;
                        // Only the configured names: the rest could be spoofed or reserved.
                        if !allowed.contains(&name) {
                            return None;
                        }
                        let value = HeaderValue::from_str(&h.value).ok()?;
                        // Only visible text reaches the upstream, as for identity headers.
                        h.value
                            .bytes()
                            .all(|b| b == b' ' || b.is_ascii_graphic())
                            .then_some((name, value))
                    })
                    .collect(),
                _ => Arc::default(),
            };
            Ok(Verdict::Allow(headers))
        }
        (_, _) => Ok(Verdict::Deny),
    }
}

#[cfg(test)]
mod tests;
