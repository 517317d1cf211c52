//! `decide`: authenticate → authorize → rate limit → delegate. The same code serves every door
//! and `portcullis explain`, which passes a recording [`Trace`] instead of [`NoTrace`].

use std::sync::Arc;

use crate::authn::principal::Principal;
use crate::authn::{self, Failure};
use crate::authz::expr::ConditionError;
use crate::authz::identity::Context;
use crate::authz::require::Unmet;
use crate::authz::route::{Rule, RuleId};
use crate::config::raw::Effect;
use crate::ratelimit::Checked;
use crate::ratelimit::gcra::Mode;
use crate::request::RequestFacts;
use crate::snapshot::Snapshot;

use super::outcome::{Allow, Decision, Deny, DenyKind, FailedOpen};

/// One step of a decision, for `explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceEvent {
    /// The rule that matched.
    RuleMatched(RuleId),
    /// No rule matched.
    NoRuleMatched,
    /// The authenticator (by name) that found a credential and verified it.
    Authenticated(std::sync::Arc<str>),
    /// No credential, anonymous allowed.
    Anonymous,
    /// Authentication refused the request.
    AuthnFailed(DenyKind),
    /// A requirement of the rule failed.
    RequirementFailed(crate::authz::require::Unmet),
    /// The rule has requirements and every one holds.
    RequirementsMet,
    /// The `when` expression held.
    ConditionHeld,
    /// The `when` expression did not hold: `false`, or why evaluation failed.
    ConditionFailed(String),
    /// The request is over the rule's rate limit (named).
    RateLimited(std::sync::Arc<str>),
    /// The rule's rate limit (named) applies; not counted (a recorded decision).
    RateLimitApplies(std::sync::Arc<str>),
    /// The rule's delegate (named) allowed.
    DelegateAllowed(std::sync::Arc<str>),
    /// The rule's delegate (named) denied.
    DelegateDenied(std::sync::Arc<str>),
    /// The rule's delegate (named) gave no answer; its failure mode decided.
    DelegateFailed(std::sync::Arc<str>),
    /// Allowed on the canonical path, but the door's peer forwards the path as sent.
    ForwardedAsSent,
    /// Allowed on the decoded path, but read with its escapes as sent (`/%40x`, not `/@x`)
    /// the path meets another rule (named, or none).
    ReadsTwoWays(Option<std::sync::Arc<str>>),
    /// Allowed on the decoded path, but read with its escapes as sent the rule's condition
    /// does not hold.
    ConditionReadsTwoWays,
}

/// Receives the steps of a decision.
pub trait Trace {
    /// Records one step.
    fn record(&mut self, event: TraceEvent);

    /// Whether the decision changes state (spends rate-limit budgets): serving does; a
    /// recorded decision (`explain`, `portcullis test`) only says which limit applies.
    fn counts(&self) -> bool {
        true
    }

    /// Whether credentials are verified afresh, past the verified-token cache: the re-check
    /// of a live tunnel (`reauthorize_every`), which must see a revoked token as revoked.
    fn revalidates(&self) -> bool {
        false
    }
}

/// The trace of a live tunnel's re-check: records nothing, spends no rate-limit budget (the
/// tunnel is not a new request) and verifies its credential afresh.
#[derive(Debug, Default, Clone, Copy)]
pub struct Recheck;

impl Trace for Recheck {
    #[inline]
    fn record(&mut self, _event: TraceEvent) {}

    fn counts(&self) -> bool {
        false
    }

    fn revalidates(&self) -> bool {
        true
    }
}

/// The serving path's trace: records nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoTrace;

impl Trace for NoTrace {
    #[inline]
    fn record(&mut self, _event: TraceEvent) {}
}

impl Trace for Vec<TraceEvent> {
    fn record(&mut self, event: TraceEvent) {
        self.push(event);
    }

    fn counts(&self) -> bool {
        false
    }
}

/// Decides one request against one snapshot. Default deny: a request no rule matches is refused.
pub async fn decide(
    snapshot: &Snapshot,
    facts: &RequestFacts<'_>,
    trace: &mut impl Trace,
) -> Decision {
    let Some(rule) = snapshot.routes.find(facts) else {
        trace.record(TraceEvent::NoRuleMatched);
        // Only a rule naming them matches TRACE, TRACK and CONNECT: say so (405) rather than
        // that no rule matched.
        if crate::authz::route::is_explicit_only(facts.method) {
            return Decision::Deny(Deny::method_not_allowed());
        }
        return Decision::Deny(Deny::no_rule());
    };
    trace.record(TraceEvent::RuleMatched(rule.id.clone()));
    // A deny rule needs no identity: refusing before verifying costs nothing. Nor does a
    // path an allow rule matches only by a wide case fold ([`Rule::matches_only_widely`]).
    if rule.effect == Effect::Deny || rule.matches_only_widely(&facts.path) {
        return deny(rule, DenyKind::Forbidden, None);
    }
    let Some(guard) = rule.guard.as_ref().filter(|_| trace.counts()) else {
        if let Some(guard) = &rule.guard {
            // A recorded decision says the guard applies; it neither looks nor spends.
            trace.record(TraceEvent::RateLimitApplies(guard.name.clone()));
        }
        return decide_rule(snapshot, rule, facts, trace).await;
    };
    // Why: a client that keeps failing is refused before any credential is verified, so
    // guessing keys or passwords costs it a 429 per try and the gateway nothing.
    // Regression: tests (it) ratelimit::brute_force_guard_refuses_before_verifying
    //
    // Why each attempt spends first: the guard only looked, and spent after a failure, so
    // every attempt sent before the first failure was counted went through (100 concurrent
    // wrong keys: 80 checked against a budget of 3; with a slow authenticator, all of them).
    // An attempt that does not fail gives its request back.
    // Regression: tests (it) credentials::concurrent_attempts_spend_the_guard
    //
    // Why a refusal waits for the attempts still being checked: held budget looked spent, so
    // valid requests sent together from one address (an office behind NAT) got 429 with a
    // `Retry-After` of a whole interval, though the budget came back milliseconds later.
    // Regression: tests (it) credentials::valid_requests_sent_together_pass_the_guard
    let (checked, attempt) = guard.attempt(facts, &rule.id.0).await;
    let spent = match checked {
        Checked::Limited(t) => {
            trace.record(TraceEvent::RateLimited(guard.name.clone()));
            return deny(rule, DenyKind::RateLimited(t), None);
        }
        Checked::Unavailable => return deny(rule, DenyKind::RateLimitUnavailable, None),
        Checked::Allowed(_) => true,
        // Over a shadow guard: let through, nothing spent to give back.
        Checked::ShadowLimited => false,
    };
    let mut decision = decide_rule(snapshot, rule, facts, trace).await;
    if let (Checked::Allowed(None), Decision::Allow(a)) = (&checked, &mut decision)
        && !guard.shadow
    {
        a.failed_open = a.failed_open.or(Some(FailedOpen::RateLimit));
    }
    // Why: a shadow-mode guard counted the requests it would have refused but never named
    // itself on them, where a shadow rate limit does (`shadow_header`): an operator trying a
    // guard could not see which clients it would have locked out. (A denial keeps its own
    // answer: the header goes with an allowed request.)
    // Regression: tests (it) ratelimit::a_shadow_guard_names_itself_on_what_it_would_refuse
    if let (Checked::ShadowLimited, Decision::Allow(a)) = (&checked, &mut decision)
        && let Some(header) = &guard.shadow_header
        && let Ok(v) = http::HeaderValue::from_str(&guard.name)
    {
        a.mutation.response.push((header.clone(), v));
    }
    if matches!(&decision, Decision::Deny(d) if counts_as_failure(d.kind)) {
        guard.failed(facts.conn.door);
    } else if spent {
        let mut attempt = attempt;
        if let Some(a) = &mut attempt {
            a.giving_back();
        }
        let _ = guard.check(facts, None, &rule.id.0, Mode::Refund).await;
        // Settled once the request is back: a waiter woken now finds it.
        drop(attempt);
    }
    decision
}

/// Whether a denial is the client's failure (a guard counts it): not an outage, not a limit.
fn counts_as_failure(kind: DenyKind) -> bool {
    !matches!(
        kind,
        DenyKind::RateLimited(_)
            | DenyKind::RateLimitUnavailable
            | DenyKind::AuthnUnavailable
            | DenyKind::AuthnBusy
            | DenyKind::DelegateUnavailable
            | DenyKind::AssertionUnavailable
    )
}

/// Decides a request the allow rule `rule` matched.
async fn decide_rule(
    snapshot: &Snapshot,
    rule: &Rule,
    facts: &RequestFacts<'_>,
    trace: &mut impl Trace,
) -> Decision {
    if let Err(unmet) = rule.require.check_request(facts) {
        // Before any credential is verified: an address or a missing certificate decides.
        let kind = DenyKind::Unmet(unmet);
        trace.record(TraceEvent::RequirementFailed(unmet));
        return deny(rule, kind, None);
    }
    let now = snapshot.clock.unix_secs();
    let (principal, authenticator) = match snapshot
        .authn
        .authenticate(
            &rule.authenticators,
            rule.anonymous,
            facts,
            now,
            trace.revalidates(),
        )
        .await
    {
        authn::Outcome::Authenticated {
            principal,
            authenticator,
        } => {
            if let Some(a) = snapshot.authn.at(authenticator) {
                trace.record(TraceEvent::Authenticated(a.name.clone()));
            }
            (Some(principal), Some(authenticator))
        }
        authn::Outcome::Anonymous => {
            trace.record(TraceEvent::Anonymous);
            (None, None)
        }
        authn::Outcome::Failed(f, by) => {
            let kind = match f {
                Failure::Missing => DenyKind::MissingCredential,
                Failure::Ambiguous => DenyKind::AmbiguousCredential,
                Failure::Invalid(e) => DenyKind::InvalidToken(e),
                Failure::Unavailable => DenyKind::AuthnUnavailable,
                Failure::Shed => DenyKind::AuthnBusy,
            };
            trace.record(TraceEvent::AuthnFailed(kind));
            // A browser without a valid credential is sent to log in, when the rule says where.
            // Why: the return address cut only this rule's query credentials, so another
            // authenticator's (`?api_key=` beside a JWT rule) went to the login host and its
            // logs. Every configured one is cut. Regression: tests (it)
            // policy::explain_never_echoes_a_query_credential
            let redirect = match kind {
                DenyKind::MissingCredential | DenyKind::InvalidToken(_) => rule
                    .denial
                    .as_ref()
                    .and_then(|d| d.login.as_ref())
                    .and_then(|l| l.location(facts, Some(snapshot.authn.query_credentials()))),
                _ => None,
            };
            let challenge = api_key_challenge(snapshot, rule, kind, by);
            return deny_with(rule, kind, redirect, challenge);
        }
    };
    if let Some(p) = &principal
        && let Err(unmet) = rule.require.check_principal(p)
    {
        trace.record(TraceEvent::RequirementFailed(unmet));
        let mut denied = deny_principal(rule, DenyKind::Unmet(unmet), principal.as_ref());
        // Why: a valid API key short of a scope was challenged `Bearer`, a scheme its client
        // never sent. Regression: tests (it)
        // credentials::api_key_challenges_name_their_scheme_and_keys_are_stripped_by_default
        let by_api_key = authenticator
            .and_then(|i| snapshot.authn.at(i))
            .is_some_and(crate::authn::Authenticator::challenges_api_key);
        if let (Decision::Deny(d), Unmet::Scope, true) = (&mut denied, unmet, by_api_key) {
            d.challenge = Some(rule.require.api_key_scope_challenge().map_or_else(
                || snapshot.challenges.api_key_insufficient_scope.clone(),
                Clone::clone,
            ));
        }
        return denied;
    }
    if !rule.require.is_empty() {
        trace.record(TraceEvent::RequirementsMet);
    }
    // The path parameters a condition reads, taken once: the path read as sent below reuses
    // them (decoded, as the upstream's handler reads them).
    let params = match &rule.when {
        Some(when) if when.uses_params() => rule.params(&facts.path),
        _ => Vec::new(),
    };
    if let Some(when) = &rule.when {
        match when.eval(facts, principal.as_deref(), &params, &snapshot.spoofable) {
            Ok(()) => trace.record(TraceEvent::ConditionHeld),
            Err(e) => {
                let (why, unmet) = match e {
                    ConditionError::False => ("false".to_owned(), Unmet::Condition),
                    ConditionError::Error(m) => (m, Unmet::Condition),
                    ConditionError::BudgetExceeded => (
                        "its evaluation ran past policies.conditions (max_list_size or \
                         max_steps) and was cut short"
                            .to_owned(),
                        Unmet::ConditionBudget,
                    ),
                };
                // Why `?`: a CEL error repeats a client's value (`No such key: …` of a map
                // indexed by a query parameter); displayed raw, a CR/LF in it forged a log
                // line in the human format. Debug escapes it, as the access log's fields are.
                tracing::debug!(rule = &*rule.id.0, reason = ?why, "Condition did not hold");
                trace.record(TraceEvent::ConditionFailed(why));
                return deny_principal(rule, DenyKind::Unmet(unmet), principal.as_ref());
            }
        }
    }
    // Why: a decision door's peer forwards the path as sent, and an upstream that does not
    // resolve `..` itself would serve `/admin/../public/x` from another handler than the one
    // allowed. Refused only here, once everything else allowed it: a request the canonical
    // path denies gets the proxy's own answer (403 for `/public/../admin/x`) at every door.
    // Before the limit and the delegate, which it never reaches.
    // Regression: tests (it) conformance::every_door_gives_the_same_decision (`deny rule
    // dots`, `public canonical`)
    if facts.forwarded_as_sent {
        trace.record(TraceEvent::ForwardedAsSent);
        return deny_principal(rule, DenyKind::NonCanonicalPath, principal.as_ref());
    }
    // Why: an escaped sub-delimiter, `:` or `@` is decided decoded, as nginx, Caddy and Go route
    // it; an upstream routing on the raw path (Envoy's route table, Express) reads `/%40public`
    // as another name than `/@public`, and the escape was forwarded as sent. An allow holds
    // only if the path read as sent meets the same rule; otherwise the two readings may be
    // two decisions, and the request is refused as the other unclear paths are.
    // Regression: tests (it) paths::an_escaped_delimiter_is_decided_as_the_upstream_routes_it
    if let Some(sent) = &facts.path_as_sent {
        let as_sent = RequestFacts {
            path: std::borrow::Cow::Borrowed(sent),
            path_as_sent: None,
            host: std::borrow::Cow::Borrowed(&facts.host),
            ..*facts
        };
        let other = snapshot.routes.find(&as_sent);
        if other.map(|r| &r.id) != Some(&rule.id) {
            trace.record(TraceEvent::ReadsTwoWays(other.map(|r| r.id.0.clone())));
            return deny_principal(rule, DenyKind::NonCanonicalPath, principal.as_ref());
        }
        // Why: a condition on the path's spelling (`request.path.startsWith('/@team/')`) held
        // on `/%40team/docs/x` decoded, while an upstream routing on the raw path served it
        // from another handler than `/@team/...`'s. It must hold read as sent too. Its path
        // parameters stay decoded: such an upstream decodes a parameter before its handler
        // reads it (Express's `req.params`), so `/users/alice%40example.com` is still
        // `alice@example.com` to `params.email.endsWith('@example.com')`.
        // Regression: tests (it) paths::an_escaped_delimiter_is_decided_as_the_upstream_routes_it
        if let Some(when) = rule.when.as_ref().filter(|w| w.reads_path())
            && when
                .eval(&as_sent, principal.as_deref(), &params, &snapshot.spoofable)
                .is_err()
        {
            trace.record(TraceEvent::ConditionReadsTwoWays);
            return deny_principal(rule, DenyKind::NonCanonicalPath, principal.as_ref());
        }
    }
    // Why: the limit comes before the delegate, so a throttled request never reaches it; after
    // it, every request over the limit to a path or query the cache has not seen was a
    // delegate call nothing counted. A request the delegate then denies has spent its budget,
    // as any request that gets this far does.
    // Regression: tests (it) delegate::rate_limited_request_never_reaches_the_delegate
    let mut shadowed = None;
    let mut room = None;
    let mut failed_open = None;
    if let Some(limit) = &rule.rate_limit {
        if !trace.counts() {
            trace.record(TraceEvent::RateLimitApplies(limit.name.clone()));
        } else {
            match limit
                .check(facts, principal.as_deref(), &rule.id.0, Mode::Spend)
                .await
            {
                Checked::Allowed(left) => {
                    // No budget read: Redis could not answer and the limit fails open (a
                    // shadow-mode one never refuses: nothing was let through).
                    if left.is_none() && !limit.shadow {
                        failed_open = Some(FailedOpen::RateLimit);
                    }
                    room = left.filter(|_| limit.headers);
                }
                Checked::ShadowLimited => {
                    shadowed = limit.shadow_header.as_ref().map(|h| (h, limit))
                }
                Checked::Limited(throttle) => {
                    trace.record(TraceEvent::RateLimited(limit.name.clone()));
                    return deny_principal(
                        rule,
                        DenyKind::RateLimited(throttle),
                        principal.as_ref(),
                    );
                }
                Checked::Unavailable => {
                    trace.record(TraceEvent::RateLimited(limit.name.clone()));
                    return deny_principal(
                        rule,
                        DenyKind::RateLimitUnavailable,
                        principal.as_ref(),
                    );
                }
            }
        }
    }
    let cx = Context {
        principal: principal.as_deref(),
        client_ip: facts.client_ip,
        rule: &rule.id.0,
    };
    // Room for what is added to the list below (the assertion, a decision door's forwarding
    // headers), so that it is not regrown on the way: a realloc per request.
    let headroom =
        super::HeaderMutation::set_headroom(facts) + usize::from(snapshot.assertion.is_some());
    let (mut identity, identity_refused) = if rule.identity.is_empty() {
        (Vec::with_capacity(headroom), 0)
    } else {
        rule.identity.render(&cx, headroom)
    };
    if let Some(delegate) = &rule.delegate {
        use crate::authz::delegate::{UpstreamHeaders, Verdict};
        // Why: the identity headers are rendered first so the delegate sees the request as the
        // upstream will (the gateway's identity, not the client's spoofed one).
        // Regression: tests (it) delegate::spoofed_identity_headers_never_reach_the_delegate
        let upstream = UpstreamHeaders {
            spoofable: &snapshot.spoofable,
            identity: &identity,
            request_id: &snapshot.server.request_id_header,
        };
        match Box::pin(delegate.check(
            facts,
            principal.as_deref(),
            &rule.id.0,
            upstream,
            now,
            trace.revalidates(),
        ))
        .await
        {
            Ok(Verdict::Allow(headers)) => {
                trace.record(TraceEvent::DelegateAllowed(delegate.name.clone()));
                identity.extend(headers.iter().cloned());
            }
            Ok(Verdict::Deny) => {
                trace.record(TraceEvent::DelegateDenied(delegate.name.clone()));
                return deny_principal(rule, DenyKind::DelegateDenied, principal.as_ref());
            }
            Err(e) => {
                tracing::warn!(delegate = &*delegate.name, rule = &*rule.id.0, path = &*facts.path, error = %e, fails_open = delegate.fails_open(), "Delegate gave no answer");
                trace.record(TraceEvent::DelegateFailed(delegate.name.clone()));
                if !delegate.fails_open() {
                    return deny_principal(rule, DenyKind::DelegateUnavailable, principal.as_ref());
                }
                failed_open = Some(FailedOpen::Delegate);
            }
        }
    }
    if let Some(a) = &snapshot.assertion {
        // Why: with one audience for all, an upstream could replay the assertion it was
        // handed to every other upstream within its life. Regression: tests (it)
        // assertion::each_upstream_gets_its_own_audience
        let audience = rule
            .upstream
            .and_then(|i| snapshot.upstreams.get(i))
            .and_then(|u| u.assertion_audience.as_deref());
        match a.mint(&cx, now, audience) {
            Ok(Some(signed)) => identity.push((a.header.clone(), signed)),
            Ok(None) => {}
            // Fail closed: an upstream relying on the assertion must never see the request
            // without it. Why its own kind: as `AuthnUnavailable` the gRPC door answered a
            // gRPC error, which Envoy's `failure_mode_allow` turns into an allow, without the
            // assertion. (No test makes a loaded key fail to sign; the gRPC door's match on
            // `AuthnUnavailable` alone is what keeps this a denied response.)
            Err(_) => {
                return deny_principal(rule, DenyKind::AssertionUnavailable, principal.as_ref());
            }
        }
    }
    let mut mutation = super::HeaderMutation::compute(
        snapshot,
        facts,
        authenticator.and_then(|i| snapshot.authn.at(i)),
        rule.query_credentials.as_deref(),
        identity,
    );
    // Shadow mode tells the client (and the operator's logs downstream) which limit it would
    // have hit; the name is the config's, never the key's value.
    if let Some((header, limit)) = shadowed
        && let Ok(v) = http::HeaderValue::from_str(&limit.name)
    {
        mutation.response.push((header.clone(), v));
    }
    // Why: a client told how much is left slows down before it is refused; every door hands
    // these to the client's response. Regression: tests (it) ratelimit::allowed_answers_say_what_is_left
    if let Some(room) = room {
        mutation.response.extend(room_headers(&room));
    }
    // Why: behind Envoy the upstream's answer never passes the gateway, so a rule's CORS
    // headers go back for the peer to add to it (the proxy door adds them as it answers).
    // Regression: tests (it) grpc::cors_preflight_and_answers_at_the_grpc_door
    if facts.conn.door != crate::request::facts::Door::Proxy
        && let Some(cors) = rule.edge.as_ref().and_then(|e| e.cors.as_ref())
    {
        mutation
            .response
            .extend(cors.response_headers(crate::authz::edge::sole_origin(facts.headers)));
    }
    Decision::Allow(Allow {
        rule: rule.id.clone(),
        upstream: rule.upstream,
        principal,
        authenticator,
        query_credentials: rule.query_credentials.clone(),
        mutation,
        identity_refused: u32::try_from(identity_refused).unwrap_or(u32::MAX),
        timeouts: rule.timeouts.clone(),
        edge: rule.edge.clone(),
        failed_open,
    })
}

/// `RateLimit-Limit`, `-Remaining` and `-Reset` (whole seconds, rounded up) of an allowed
/// request, as a 429 carries them (draft-ietf-httpapi-ratelimit-headers).
fn room_headers(room: &crate::ratelimit::gcra::Room) -> [(http::HeaderName, http::HeaderValue); 3] {
    [
        (
            http::HeaderName::from_static("ratelimit-limit"),
            http::HeaderValue::from(room.requests),
        ),
        (
            http::HeaderName::from_static("ratelimit-remaining"),
            http::HeaderValue::from(room.remaining),
        ),
        (
            http::HeaderName::from_static("ratelimit-reset"),
            http::HeaderValue::from(room.reset.div_ceil(1_000_000_000)),
        ),
    ]
}

/// A denial by a rule, in the rule's shape.
fn deny(rule: &Rule, kind: DenyKind, redirect: Option<http::HeaderValue>) -> Decision {
    deny_with(rule, kind, redirect, None)
}

/// A denial of an authenticated principal (named in the access log).
fn deny_principal(rule: &Rule, kind: DenyKind, principal: Option<&Arc<Principal>>) -> Decision {
    let mut d = deny(rule, kind, None);
    if let Decision::Deny(d) = &mut d {
        d.principal = principal.cloned();
    }
    d
}

fn deny_with(
    rule: &Rule,
    kind: DenyKind,
    redirect: Option<http::HeaderValue>,
    challenge: Option<http::HeaderValue>,
) -> Decision {
    let challenge = match kind {
        DenyKind::Unmet(Unmet::Scope) => rule.require.scope_challenge().cloned(),
        _ => challenge,
    };
    Decision::Deny(Deny {
        rule: Some(rule.id.clone()),
        kind,
        shape: rule.denial.clone(),
        redirect,
        principal: None,
        challenge,
        edge: rule.edge.clone(),
    })
}

/// The 401's (and the two-credential 400's) challenge when API keys are involved: an invalid
/// or doubled API key gets `ApiKey`, not a `Bearer` challenge about tokens; a missing
/// credential names every scheme the rule accepts. `None`: the kind's usual `Bearer`
/// challenge.
fn api_key_challenge(
    snapshot: &Snapshot,
    rule: &Rule,
    kind: DenyKind,
    by: Option<usize>,
) -> Option<http::HeaderValue> {
    let api_key = |i: usize| {
        snapshot
            .authn
            .at(i)
            .is_some_and(crate::authn::Authenticator::challenges_api_key)
    };
    let c = &snapshot.challenges;
    match kind {
        DenyKind::InvalidToken(_) if by.is_some_and(api_key) => Some(c.api_key_invalid.clone()),
        DenyKind::AmbiguousCredential if by.is_some_and(api_key) => {
            Some(c.api_key_invalid_request.clone())
        }
        DenyKind::MissingCredential => {
            let keys = rule.authenticators.iter().filter(|&&i| api_key(i)).count();
            if keys == 0 {
                None
            } else if keys == rule.authenticators.len() {
                Some(c.api_key_missing.clone())
            } else {
                Some(c.missing_any.clone())
            }
        }
        _ => None,
    }
}
