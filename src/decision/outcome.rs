//! Decisions. A denial is a value, not an error: its [`DenyKind`] and the rule's denial shape
//! decide the status, the reason code for logs and metrics and the short body, and
//! [`Deny::refusal`] turns them into the one answer every door gives.

use std::sync::Arc;

use http::{HeaderValue, StatusCode};

use crate::authn::jwt::verify::TokenError;
use crate::authn::principal::Principal;
use crate::authz::denial::Denial;
use crate::authz::require::Unmet;
use crate::authz::route::RuleId;
use crate::ratelimit::Throttle;
use crate::snapshot::Challenges;

use super::refusal::Refusal;

/// The answer for one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Let it through.
    Allow(Allow),
    /// Refuse it.
    Deny(Deny),
}

/// What an allowed request needs downstream.
#[derive(Debug, Clone, PartialEq)]
pub struct Allow {
    /// The rule that allowed it.
    pub rule: RuleId,
    /// Index of the upstream in the snapshot (proxy door).
    pub upstream: Option<usize>,
    /// Who is calling; `None` for anonymous access.
    pub principal: Option<Arc<Principal>>,
    /// Index of the authenticator that verified the principal.
    pub authenticator: Option<usize>,
    /// Query parameters holding credentials, removed before forwarding.
    pub query_credentials: Option<Arc<[Box<str>]>>,
    /// What the request's headers become upstream: spoofed and credential headers removed,
    /// identity headers set; the same for every door.
    pub mutation: super::HeaderMutation,
    /// Identity header values refused (CR, LF, non-visible characters): left out.
    pub identity_refused: u32,
    /// The rule's upstream timeouts, when it overrides the upstream's.
    pub timeouts: Option<Arc<crate::authz::route::RouteTimeouts>>,
    /// The rule's upgrades, tunnel re-checks and CORS (proxy door).
    pub edge: Option<Arc<crate::authz::edge::Edge>>,
    /// The refusal a fail-open setting turned into this allow, logged as the allow's reason
    /// so that an audit tells it from a checked one.
    pub failed_open: Option<FailedOpen>,
}

/// A check that could not be made, let through by its fail-open setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailedOpen {
    /// A delegate gave no answer (`failure_mode: allow`).
    Delegate,
    /// Redis could not answer (`on_redis_failure: allow`).
    RateLimit,
}

impl FailedOpen {
    /// The reason code of the refusal it would have been.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delegate => DenyKind::DelegateUnavailable.as_str(),
            Self::RateLimit => DenyKind::RateLimitUnavailable.as_str(),
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Deny {
    /// The rule that decided, if one matched.
    pub rule: Option<RuleId>,
    /// The closed set of reasons.
    pub kind: DenyKind,
    /// The rule's denial shape, if it has one.
    pub shape: Option<Arc<Denial>>,
    /// A browser without a valid credential is sent here instead of getting a 401.
    pub redirect: Option<HeaderValue>,
    /// Who was refused, when the credential verified (a missing scope, a failed condition, a
    /// rate limit): for the access log, never for the response.
    pub principal: Option<Arc<Principal>>,
    /// A challenge chosen by the rule or the authenticator instead of the kind's usual one:
    /// for a missing scope, the rule's naming its scopes; for API keys, the `ApiKey` scheme.
    pub challenge: Option<HeaderValue>,
    /// The deciding rule's CORS and upgrade settings, so a browser can read the denial.
    pub edge: Option<Arc<crate::authz::edge::Edge>>,
}

/// Every way a request is denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyKind {
    /// No rule matched: default deny.
    NoRule,
    /// A rule with `effect: deny` matched.
    Forbidden,
    /// No credential where the rule needs one (401).
    MissingCredential,
    /// A credential that does not verify (401, `invalid_token`).
    InvalidToken(TokenError),
    /// More than one credential, or a repeated `Authorization` header (400, `invalid_request`).
    AmbiguousCredential,
    /// The keys needed to verify are unavailable (503).
    AuthnUnavailable,
    /// The credential's verification was shed: its client's share of introspection calls, or
    /// every slot, was taken (503, `authentication_busy`). A refusal the gateway made, never
    /// "could not decide": a client's own flood must not become Envoy's failure mode.
    AuthnBusy,
    /// A requirement of the rule does not hold (403; `insufficient_scope` for scopes).
    Unmet(Unmet),
    /// Over the rule's rate limit (429), and when to come back.
    RateLimited(Throttle),
    /// `TRACE`, `TRACK` or `CONNECT` that no rule names (405).
    MethodNotAllowed,
    /// The rule's delegate said no (403).
    DelegateDenied,
    /// The rule's delegate failed and fails closed (503).
    DelegateUnavailable,
    /// The rule's rate limit could not ask Redis and fails closed (503).
    RateLimitUnavailable,
    /// The identity assertion an upstream may rely on could not be signed (503). A denial
    /// the gateway made, never "could not decide": at the gRPC door Envoy's
    /// `failure_mode_allow` must not let the request on without it.
    AssertionUnavailable,
    /// Allowed on its canonical path at a decision door whose peer forwards the path as sent,
    /// with `.`, `..` or empty segments (400, `non_canonical_path`): the upstream would get
    /// another path than the one decided on.
    NonCanonicalPath,
}

// === impl Decision ===

impl Decision {
    /// `allow` or `deny`, for logs and metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Allow(_) => "allow",
            Self::Deny(_) => "deny",
        }
    }

    /// The deciding rule's name, if any.
    pub fn rule(&self) -> Option<&str> {
        match self {
            Self::Allow(a) => Some(&a.rule.0),
            Self::Deny(d) => d.rule.as_ref().map(|r| &*r.0),
        }
    }
}

// === impl Deny ===

impl Deny {
    /// A denial by the default (no rule matched).
    pub fn no_rule() -> Self {
        Self {
            rule: None,
            kind: DenyKind::NoRule,
            shape: None,
            redirect: None,
            principal: None,
            challenge: None,
            edge: None,
        }
    }

    /// A `TRACE`, `TRACK` or `CONNECT` no rule names.
    pub fn method_not_allowed() -> Self {
        Self {
            rule: None,
            kind: DenyKind::MethodNotAllowed,
            shape: None,
            redirect: None,
            principal: None,
            challenge: None,
            edge: None,
        }
    }

    /// The status the client gets: a login redirect is a 302, a rule's own status replaces
    /// 403 for policy denials.
    pub fn status(&self) -> StatusCode {
        if self.redirect.is_some() {
            return StatusCode::FOUND;
        }
        match (self.kind, self.shape.as_deref().and_then(|s| s.status)) {
            (DenyKind::Forbidden | DenyKind::Unmet(_) | DenyKind::DelegateDenied, Some(s)) => s,
            (kind, _) => kind.status(),
        }
    }

    /// The reason code the client sees. A rule's own status speaks for itself: a route
    /// hidden behind 404 must not say `insufficient_scope`. The access log and metrics keep
    /// the real reason ([`DenyKind::as_str`]).
    pub fn public_code(&self) -> &'static str {
        let status = self.status();
        if self.redirect.is_some() || status == self.kind.status() {
            self.kind.public_code()
        } else {
            status_code_name(status)
        }
    }

    /// What the door answers: status, challenge, redirect and a body naming the reason code
    /// and the request id (and the rule's extra members), never policy internals.
    pub fn refusal(&self, challenges: &Challenges, request_id: &HeaderValue) -> Refusal {
        let status = self.status();
        if let Some(location) = &self.redirect {
            return Refusal {
                status,
                challenge: None,
                location: Some(location.clone()),
                body: None,
                code: self.public_code(),
                throttle: None,
                cors: Vec::new(),
            };
        }
        // A rule that hides the route (say 404) does not announce a scope it lacks.
        let challenge = match self.kind {
            DenyKind::Unmet(Unmet::Scope) if status != StatusCode::FORBIDDEN => None,
            // RFC 6750 §3: the challenge names the scope the rule requires; API keys get
            // their own scheme.
            DenyKind::Unmet(Unmet::Scope)
            | DenyKind::MissingCredential
            | DenyKind::InvalidToken(_)
            | DenyKind::AmbiguousCredential
                if self.challenge.is_some() =>
            {
                self.challenge.clone()
            }
            kind => kind.challenge(challenges).cloned(),
        };
        let extra = self.shape.as_deref().and_then(|s| s.extra.as_deref());
        let code = self.public_code();
        Refusal {
            status,
            challenge,
            location: None,
            body: Some(error_body(code, request_id, extra)),
            code,
            throttle: match self.kind {
                DenyKind::RateLimited(t) => Some(t),
                _ => None,
            },
            cors: Vec::new(),
        }
    }
}

/// The reason code of a status a rule chose: its reason phrase in snake case.
fn status_code_name(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        409 => "conflict",
        410 => "gone",
        451 => "unavailable_for_legal_reasons",
        _ => "denied",
    }
}

/// `{"error":CODE,"request_id":ID[,EXTRA]}` and a newline. The request id is the gateway's
/// own or a propagated one, which is a visible-ASCII header value; it is escaped anyway.
pub fn error_body(code: &str, request_id: &HeaderValue, extra: Option<&str>) -> String {
    let id = request_id.to_str().unwrap_or("-");
    let mut out = String::with_capacity(48 + code.len() + id.len() + extra.map_or(0, str::len));
    out.push_str("{\"error\":\"");
    out.push_str(code);
    out.push_str("\",\"request_id\":");
    if id.bytes().any(|b| b == b'"' || b == b'\\') {
        out.push_str(&serde_json::Value::String(id.to_owned()).to_string());
    } else {
        out.push('"');
        out.push_str(id);
        out.push('"');
    }
    if let Some(extra) = extra {
        out.push(',');
        out.push_str(extra);
    }
    out.push_str("}\n");
    out
}

// === impl DenyKind ===

impl DenyKind {
    /// HTTP status of the denial.
    pub fn status(self) -> StatusCode {
        match self {
            Self::NoRule | Self::Forbidden | Self::Unmet(_) | Self::DelegateDenied => {
                StatusCode::FORBIDDEN
            }
            Self::DelegateUnavailable | Self::RateLimitUnavailable | Self::AssertionUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::MissingCredential | Self::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            Self::AmbiguousCredential | Self::NonCanonicalPath => StatusCode::BAD_REQUEST,
            Self::AuthnUnavailable | Self::AuthnBusy => StatusCode::SERVICE_UNAVAILABLE,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// Whether the gateway could not know the answer (keys never fetched, introspection
    /// down), rather than refusing: logged and counted as `error`, not as a denial, at every
    /// door, as the Envoy doors answer it with a failed call (Envoy's failure mode decides).
    /// A limit, delegate or assertion configured to fail closed is a refusal the gateway
    /// chose.
    pub fn undecided(self) -> bool {
        matches!(self, Self::AuthnUnavailable)
    }

    /// Low-cardinality reason code for logs and metrics (token failures name their cause).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidToken(e) => e.as_str(),
            other => other.public_code(),
        }
    }

    /// The reason code the client sees: never why a token failed.
    pub fn public_code(self) -> &'static str {
        match self {
            Self::NoRule => "no_matching_rule",
            Self::Forbidden => "forbidden",
            Self::MissingCredential => "missing_credential",
            Self::InvalidToken(_) => "invalid_token",
            Self::AmbiguousCredential => "invalid_request",
            Self::AuthnUnavailable => "authentication_unavailable",
            Self::AuthnBusy => "authentication_busy",
            Self::Unmet(u) => u.as_str(),
            Self::RateLimited(_) => "rate_limited",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::DelegateDenied => "delegate_denied",
            Self::DelegateUnavailable => "delegate_unavailable",
            Self::RateLimitUnavailable => "rate_limit_unavailable",
            Self::AssertionUnavailable => "assertion_unavailable",
            Self::NonCanonicalPath => "non_canonical_path",
        }
    }

    /// The `WWW-Authenticate` challenge: 401s, the ambiguous-credential 400 and the missing
    /// scope 403.
    pub fn challenge(self, challenges: &Challenges) -> Option<&HeaderValue> {
        match self {
            Self::MissingCredential => Some(&challenges.missing),
            Self::InvalidToken(_) => Some(&challenges.invalid_token),
            Self::AmbiguousCredential => Some(&challenges.invalid_request),
            Self::Unmet(Unmet::Scope) => Some(&challenges.insufficient_scope),
            Self::NoRule
            | Self::Forbidden
            | Self::AuthnUnavailable
            | Self::AuthnBusy
            | Self::Unmet(_)
            | Self::RateLimited(_)
            | Self::MethodNotAllowed
            | Self::DelegateDenied
            | Self::DelegateUnavailable
            | Self::RateLimitUnavailable
            | Self::AssertionUnavailable
            | Self::NonCanonicalPath => None,
        }
    }
}
